"""ruff over the code (its settings in pyproject.toml): the suite is what CI runs, so the lint runs here."""

import importlib.util
import subprocess
import sys

import pytest

from conftest import ROOT


def test_ruff_finds_nothing():
    if importlib.util.find_spec("ruff") is None:
        pytest.fail("ruff is not installed: pip install -e '.[test]'")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "detector", "tools", "tests", "benchmarks"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]


def test_test_files_have_unique_names():
    # The tests are not packages (pytest's default "prepend" import): two test_x.py in different folders
    # collide on a clean checkout ("import file mismatch") while a warm __pycache__ can hide it.
    names = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert not {n: p for n, p in names.items() if len(p) > 1}
