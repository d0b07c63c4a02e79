"""ruff and mypy (configured in pyproject.toml) as part of the test command, so a lint or type regression
fails CI as a broken test does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.static


@pytest.mark.parametrize("command", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy"])
def test_the_tree_is_clean(command: list[str]) -> None:
    # mypy writes its cache in .mypy_cache: about 10 s cold on the CI machine, 2 s after.
    done = subprocess.run([sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
