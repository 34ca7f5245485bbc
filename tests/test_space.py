"""The repository runs as a Hugging Face Space as it stands: README front matter agrees with requirements.txt,
and requirements.txt pins every third-party module the package and the app import."""

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import yaml
from conftest import ROOT


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "README.md must open with the Space's YAML front matter between --- lines"
    return yaml.safe_load(match.group(1))


def canonical(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): PyYAML, pyyaml and py_yaml are one."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins() -> dict[str, str]:
    """requirements.txt's exact pins (`name==version`), by canonical name; other specifiers are not pins."""
    text = (ROOT / "requirements.txt").read_text()
    return {canonical(name): version for name, version in re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", text, re.M)}


def pinned(package: str) -> str:
    return pins()[canonical(package)]


CODE = ["catsdogs/**/*.py", "app.py", "train.py"]  # what the Space (and `pip install -r requirements.txt`) runs


def imported_modules(patterns: list[str]) -> dict[str, set[str]]:
    """Top-level module name -> the files that import it (absolute imports anywhere in the file, read with ast)."""
    found: dict[str, set[str]] = {}
    for path in sorted({p for pattern in patterns for p in ROOT.glob(pattern)}):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def first_party() -> set[str]:
    """Modules this repository provides itself: its top-level .py files and packages."""
    return {p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}


def test_front_matter_describes_a_gradio_space_on_the_pinned_gradio():
    meta = front_matter()
    assert meta["sdk"] == "gradio"
    assert str(meta["sdk_version"]) == pinned("gradio")
    assert (ROOT / meta["app_file"]).is_file() and meta["app_file"] == "app.py"
    assert meta["title"] and meta["emoji"] and meta["license"] == "mit"
    assert 0 < len(meta["short_description"]) <= 60  # the Hub refuses longer ones
    assert str(meta["python_version"]) == "3.11"


def test_requirements_pin_every_third_party_module_the_code_imports():
    imported = imported_modules(CODE)
    third_party = {m: files for m, files in imported.items() if m not in sys.stdlib_module_names | first_party()}
    assert {"torch", "gradio", "PIL", "huggingface_hub"} <= set(third_party), "the import scan found too little"
    distributions = importlib.metadata.packages_distributions()  # import name -> installed distributions
    pinned_names = pins()
    problems = []
    for module, files in sorted(third_party.items()):
        names = distributions.get(module)
        if not names:
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) comes from no installed distribution")
        elif not any(canonical(name) in pinned_names for name in names):
            problems.append(f"{module} (imported by {', '.join(sorted(files))}) is distribution "
                            f"{' or '.join(sorted(set(names)))}, not pinned with == in requirements.txt")
    assert not problems, "\n".join(problems)


def test_the_import_scan_reads_every_kind_of_import(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("import os, numpy.linalg as la\nfrom yaml import safe_load\n"
                                           "from . import b\n\ndef f():\n    import tqdm.auto\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", Path(tmp_path))
    assert imported_modules(["pkg/*.py"]) == {m: {"pkg/a.py"} for m in ("os", "numpy", "yaml", "tqdm")}
