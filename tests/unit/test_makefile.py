"""`make` with no target, as docs/operations.md ("Install", "Upgrades") tells an operator to
run it on a checkout: it installs the checkout (again), not only the virtualenv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def planned(venv: Path) -> str:
    """What `make` with no target would run (``make -n``) with the virtualenv ``venv``."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    return subprocess.run(["make", "-n", f"VENV={venv}"], cwd=REPO, capture_output=True,
                          text=True, check=True, timeout=30).stdout


def test_make_installs_a_checkout_into_its_existing_virtualenv(tmp_path: Path) -> None:
    # A checkout pulled to a new release: its virtualenv exists, its install is behind.
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    plan = planned(venv)
    assert "pip install --quiet -e" in plan, plan
    assert "compileall" in plan


def test_make_on_a_fresh_checkout_makes_the_virtualenv_and_installs(tmp_path: Path) -> None:
    plan = planned(tmp_path / "venv")
    assert "-m venv" in plan and "pip install --quiet -e" in plan, plan
