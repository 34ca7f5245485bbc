"""CI cannot quietly skip: any usual truthy CI value counts, and under CI a skip fails unless it is allowed by name."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, running_in_ci


@pytest.mark.parametrize("value, expected", [
    ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True), ("Yes", True), ("on", True),
    ("ON", True), (" true ", True), ("", False), ("0", False), ("false", False), ("no", False), ("off", False),
    (None, False),
])
def test_usual_truthy_values_of_ci_count(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    assert running_in_ci() is expected


SKIPPING_TESTS = '''
import pytest
import conftest

conftest.ALLOWED_SKIPS_IN_CI["test_skips.py::test_allowed"] = "the reason it may skip"


def test_passes():
    pass


def test_skips():
    pytest.skip("no photos here")


@pytest.fixture
def needs_data():
    pytest.skip("the fixture found no data")


def test_skips_in_a_fixture(needs_data):
    pass


def test_allowed():
    pytest.skip("allowed to skip")
'''


def run_pytest(tmp_path, ci: str | None) -> subprocess.CompletedProcess:
    """A separate pytest run over test files that skip, with this suite's conftest.py loaded as a plugin."""
    (tmp_path / "test_skips.py").write_text(SKIPPING_TESTS)
    (tmp_path / "test_importorskip.py").write_text('import pytest\npytest.importorskip("no_such_module_here")\n')
    env = {k: v for k, v in os.environ.items() if k != "CI"} | {"PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider", "-rA",
                           "--continue-on-collection-errors", "test_skips.py", "test_importorskip.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_outside_ci_skips_are_skips(tmp_path):
    result = run_pytest(tmp_path, ci="false")
    assert result.returncode == 0, result.stdout
    assert "1 passed, 4 skipped" in result.stdout.splitlines()[-1]


def test_under_ci_every_skip_fails_unless_allowed(tmp_path):
    result = run_pytest(tmp_path, ci="1")
    assert result.returncode == 1, result.stdout
    summary = result.stdout.splitlines()[-1]
    assert "1 passed" in summary and "1 skipped" in summary and "1 failed" in summary and "2 errors" in summary
    assert "FAILED test_skips.py::test_skips" in result.stdout
    assert "ERROR test_skips.py::test_skips_in_a_fixture" in result.stdout  # a skip in setup
    assert "ERROR test_importorskip.py" in result.stdout  # a whole module skipped at import
    assert "SKIPPED [1] test_skips.py" in result.stdout and "allowed to skip" in result.stdout
    assert "skipped under CI=1" in result.stdout
