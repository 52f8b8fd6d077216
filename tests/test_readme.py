"""The README documents what the code does: its commands match CI, its variables match env.py."""
from __future__ import annotations

from pathlib import Path

from affaccel import env

ROOT = Path(__file__).resolve().parents[1]


def test_readme_lists_every_environment_variable():
    readme = (ROOT / "README.md").read_text()
    for name, (default, _meaning) in env.VARIABLES.items():
        assert f"| `{name}` | `{default}` |" in readme, f"README is missing {name}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_cmd = 'pip install ".[test]" && pytest -q'
    assert test_cmd in readme
    assert test_cmd in ci
    assert "python3 -m venv" in ci


def test_ci_runs_the_linter_configured_in_pyproject():
    ci = (ROOT / ".ci" / "run").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "ruff check ." in ci and "[tool.ruff" in pyproject
    assert '"ruff' in pyproject.split("[project.optional-dependencies]")[1].split("[tool")[0]
