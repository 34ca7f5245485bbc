"""The project's import structure: serving imports nothing of training, and no module imports itself in a circle.

Imports are read from the source (imports inside functions count too), and the app's real import closure is
checked in a fresh interpreter.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVING = {"app", "catsdogs.inference", "catsdogs.model", "catsdogs.preprocess", "catsdogs.explain", "catsdogs.hub",
           "catsdogs.serving", "catsdogs.device", "catsdogs.autotune", "catsdogs.notpet", "catsdogs.predict",
           "catsdogs.components", "catsdogs.page_text"}
TRAINING = {"catsdogs.config", "catsdogs.loader", "catsdogs.cache", "catsdogs.data", "catsdogs.hub_data",
            "catsdogs.training", "catsdogs.calibrate", "catsdogs.outputs", "catsdogs.evaluate", "catsdogs.metrics",
            "catsdogs.checkpoint", "catsdogs.plots", "catsdogs.allocator", "catsdogs.fit_notpet", "catsdogs.export"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [ROOT / "app.py", ROOT / "train.py", *sorted((ROOT / "catsdogs").glob("*.py"))]
    return {module_name(path): path for path in files}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # from catsdogs import plots
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, set(modules)) - {name} for name, path in modules.items()}


def closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += graph.get(name, ())
    return seen


def test_every_module_is_on_one_side():
    assert set(project_modules()) - {"train", "catsdogs"} == SERVING | TRAINING


def test_serving_imports_nothing_of_training():
    graph = import_graph()
    for module in SERVING:
        assert not closure(graph, module) & TRAINING, f"{module} reaches {sorted(closure(graph, module) & TRAINING)}"


def test_no_import_cycles():
    graph = import_graph()
    cycles = [(a, b) for a in graph for b in closure(graph, a) if b != a and a in closure(graph, b)]
    assert not cycles, f"modules that import each other, directly or through others: {sorted(cycles)[:5]}"


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}}
    assert closure(graph, "a") == {"a", "b", "c"} and "a" in closure(graph, "c")


def test_the_app_loads_no_training_module():
    """Nor torchvision or torch._dynamo, which add seconds to its start (docs/performance.md#start-up)."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, app; print(' '.join(m for m in sys.modules "
                               "if m.startswith(('catsdogs', 'torchvision', 'torch._dynamo'))))"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=True).stdout.split()
    assert "catsdogs.inference" in loaded and not set(loaded) & TRAINING, sorted(set(loaded) & TRAINING)
    assert not [m for m in loaded if not m.startswith("catsdogs")], loaded
