"""The documentation holds together: every relative link and #anchor in README.md and docs/*.md resolves, and every
--flag of a documented command exists in that command's --help."""

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z0-9][\w-]*")


# ---- the pages' text ----

def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def paragraphs(text: str) -> list[str]:
    """The prose between blank lines, each paragraph on one line: a code span or a link may wrap."""
    return [" ".join(p.split("\n")) for p in re.split(r"\n\s*\n", "\n".join(prose_lines(text)))]


def code_blocks(text: str) -> list[str]:
    """The fenced code blocks' contents, one string per block."""
    blocks, current = [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if current is None:
                current = []
            else:
                blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


# ---- links and anchors ----

def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text lowercased, punctuation but - and _ dropped, spaces to -."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"[`*]|(?<!\w)_|_(?!\w)", "", text)  # code and emphasis markers render as nothing
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(page.read_text()):
        match = HEADING.match(line)
        if not match:
            continue
        base = slug(match[2])
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(page: Path) -> list[str]:
    """Link and image targets that point into the repository (not code, not web addresses)."""
    targets = []
    for paragraph in paragraphs(page.read_text()):
        for target in LINK.findall(INLINE_CODE.sub("", paragraph)):
            if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:, ...
                targets.append(target)
    return targets


def broken_link(page: Path, target: str) -> str | None:
    """Why a link from `page` does not resolve, or None."""
    path, _, anchor = target.partition("#")
    destination = (page.parent / path).resolve() if path else page
    if not destination.exists():
        return f"{target}: no file {destination.relative_to(ROOT) if destination.is_relative_to(ROOT) else path}"
    if not destination.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if anchor:
        if destination.suffix != ".md":
            return f"{target}: an anchor into a file that is not Markdown"
        if anchor not in anchors(destination):
            return f"{target}: no heading with the anchor #{anchor} in {destination.relative_to(ROOT)}"
    return None


def test_slugs_follow_githubs_rules():
    assert slug("The demo: `python app.py`") == "the-demo-python-apppy"
    assert (slug("Calibration: percentages that mean what they say")
            == "calibration-percentages-that-mean-what-they-say")
    assert (slug("Moving average and mirror test-time augmentation")
            == "moving-average-and-mirror-test-time-augmentation")
    assert slug("1. Here: pack the photos") == "1-here-pack-the-photos"
    assert slug("snake_case and **bold** [a link](x.md)") == "snake_case-and-bold-a-link"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n## Set-up\n```\n## not a heading\n```\n## Set-up\n## Set-up\n")
    assert anchors(page) == {"title", "set-up", "set-up-1", "set-up-2"}


def test_a_broken_link_or_anchor_is_found(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("# Here\n[ok](#here) [gone](missing.md) [bad anchor](#there) `[code](nowhere.md)`\n"
                    "![img](page.md) [web](https://example.com/x.md)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert relative_links(page) == ["#here", "missing.md", "#there", "page.md"]
    problems = [broken_link(page, target) for target in relative_links(page)]
    assert problems[0] is None and problems[3] is None
    assert "no file" in problems[1] and "#there" in problems[2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    problems = [problem for target in relative_links(page) if (problem := broken_link(page, target))]
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


# ---- documented commands and their flags ----

@dataclass(frozen=True)
class Command:
    """One documented invocation: which program (a script or a module, with a subcommand where it has them)."""
    program: str  # "train.py", "app.py" or a module such as "catsdogs.evaluate"
    words: tuple[str, ...]  # what follows the program on the command line
    text: str  # as documented, for messages


def command_lines(text: str) -> list[str]:
    """Shell lines of the fenced code blocks (backslash continuations joined) and the inline code spans."""
    lines = []
    for block in code_blocks(text):
        lines += re.sub(r"\\\n\s*", " ", block).splitlines()
    for paragraph in paragraphs(text):
        lines += [re.sub(r"\s+", " ", span.strip("`")) for span in INLINE_CODE.findall(paragraph)]
    return lines


def split_shell(segment: str) -> list[str]:
    try:
        return shlex.split(segment, comments=True)
    except ValueError:  # an unclosed quote in prose: the words are still the words
        return segment.split()


def commands_in(text: str) -> list[Command]:
    """The invocations of train.py, app.py and the project's modules, however they are launched."""
    found = []
    for line in command_lines(text):
        for segment in re.split(r"&&|\|\||;|\|", line):
            words = split_shell(segment)
            while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] in ("env", "sudo")
                             or words[0].startswith("$")):
                words = words[1:]  # VAR=value, env $VARS
            if not words:
                continue
            if words[0] in ("python", "python3") and len(words) > 1 and words[1] in ("train.py", "app.py"):
                found.append(Command(words[1], tuple(words[2:]), line))
            elif words[0] in ("python", "python3") and words[1:2] == ["-m"] and len(words) > 2 \
                    and words[2].split(".")[0] in ("catsdogs", "bench"):
                found.append(Command(words[2], tuple(words[3:]), line))
            elif words[0] == "torchrun" and "train.py" in words:
                found.append(Command("train.py", tuple(words[words.index("train.py") + 1:]), line))
    return found


HELP_SCRIPT = r"""
import contextlib, importlib.util, io, json, os, re, runpy, sys
helps = {}
def exists(program):
    if program.endswith(".py"):
        return os.path.isfile(program)
    try:
        return importlib.util.find_spec(program) is not None
    except ModuleNotFoundError:  # its package is missing too
        return False
def help_of(program, words):
    if not exists(program):
        return None  # the test names it
    sys.argv = [program, *words, "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        if program.endswith(".py"):
            runpy.run_path(program, run_name="__main__")
        else:
            runpy.run_module(program, run_name="__main__", alter_sys=True)
    return out.getvalue()
for program in json.loads(sys.argv[1]):
    text = helps[program] = help_of(program, [])
    subcommands = re.search(r"\{([\w,-]+)\} \.\.\.", text or "")  # argparse's usage for subparsers: {a,b,c} ...
    for sub in subcommands[1].split(",") if subcommands else []:
        helps[program + " " + sub] = help_of(program, [sub])
print("HELP-JSON " + json.dumps(helps))
"""


@cache
def help_texts(programs: tuple[str, ...]) -> dict[str, str | None]:
    """Each program's --help (and each subcommand's), all read in one Python process: PyTorch loads once."""
    env = {"CATSDOGS_ALLOCATOR": "system", "COLUMNS": "200", "PYTHONPATH": str(ROOT)}  # system: no restart
    result = subprocess.run([sys.executable, "-c", HELP_SCRIPT, json.dumps(programs)], cwd=ROOT,
                            env={**os.environ, **env}, capture_output=True, text=True, timeout=240)
    lines = [line for line in result.stdout.splitlines() if line.startswith("HELP-JSON ")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("HELP-JSON "))


def documented_commands() -> list[tuple[Path, Command]]:
    return [(page, command) for page in PAGES for command in commands_in(page.read_text())]


def unknown_flags(command: Command, helps: dict[str, str | None]) -> list[str]:
    """The documented flags that the command's --help does not list (all of them if there is no such program)."""
    program, words = command.program, command.words
    if helps[program] is None:
        return [f"{program} does not exist"]
    if words and f"{program} {words[0]}" in helps:  # a subcommand has flags of its own
        program = f"{program} {words[0]}"
    known = set(FLAG.findall(helps[program]))
    flags = [word.split("=")[0] for word in words if FLAG.fullmatch(word.split("=")[0].strip("[]"))]
    return [flag.strip("[]") for flag in flags if flag.strip("[]") not in known]


def all_helps() -> dict[str, str | None]:
    return help_texts(tuple(sorted({command.program for _, command in documented_commands()})))


def test_commands_are_found_in_blocks_inline_and_across_continuations():
    text = ("Run `python train.py --data X` or `CATSDOGS_ALLOCATOR=system python -m bench.training --seconds 5`.\n\n"
            "```bash\npython -m catsdogs.evaluate --data PATH \\\n    --split validation   # a comment --not-a-flag\n"
            "env $AVX2 python3 -m bench.inference --device cpu && echo --ignored\n"
            "torchrun --standalone --nproc-per-node 2 train.py --data PATH --device cpu\n```\n")
    found = {(c.program, c.words) for c in commands_in(text)}
    assert found == {("train.py", ("--data", "X")), ("bench.training", ("--seconds", "5")),
                     ("catsdogs.evaluate", ("--data", "PATH", "--split", "validation")),
                     ("bench.inference", ("--device", "cpu")),
                     ("train.py", ("--data", "PATH", "--device", "cpu"))}


def test_a_misspelt_flag_is_caught():
    helps = all_helps()
    good, bad = commands_in("```\npython train.py --data P --epochs 3 \\\n  --ema-decay 0.9\n"
                            "python train.py --data P --epoch 3 --ema_decay 0.9\n```\n")
    assert unknown_flags(good, helps) == []
    assert unknown_flags(bad, helps) == ["--epoch", "--ema_decay"]  # argparse would take --epoch; the docs may not
    sweep, = commands_in("`python -m bench.gpu_session sweep --budget 60 --max-mib 3`")
    assert unknown_flags(sweep, helps) == ["--max-mib"]  # pack's flag, not sweep's


def test_every_flag_of_every_documented_command_exists():
    commands = documented_commands()
    programs = {command.program for _, command in commands}
    assert {"train.py", "app.py", "catsdogs.evaluate", "bench.inference", "bench.gpu_session"} <= programs
    helps = all_helps()
    problems = [f"{page.relative_to(ROOT)}: {command.text.strip()}: {', '.join(flags)}"
                for page, command in commands if (flags := unknown_flags(command, helps))]
    assert not problems, "flags that the command's --help does not list:\n" + "\n".join(problems)


def test_every_benchmark_is_documented_with_its_command():
    benchmarks = {f"bench.{path.stem}" for path in (ROOT / "bench").glob("*.py")
                  if 'if __name__ == "__main__":' in path.read_text()}
    documented = {command.program for command in commands_in((ROOT / "docs" / "performance.md").read_text())}
    documented |= {command.program for command in commands_in((ROOT / "docs" / "gpu.md").read_text())}
    assert benchmarks - documented == set()


# ---- the README ----

def test_readme_gives_the_exact_command_ci_runs_and_stays_short():
    ci_command = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert ci_command in [line.strip() for block in code_blocks(readme) for line in block.splitlines()]
    assert len(readme.splitlines()) <= 300
