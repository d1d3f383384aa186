"""The package stays type-clean: mypy (pyproject's [tool.mypy]) runs in the suite, as in CI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Half a minute to a minute without a cache: out of the fast subset.
pytestmark = pytest.mark.integration


def test_mypy() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
