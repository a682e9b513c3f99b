"""`make` with no target, as docs/operations.md ("Install", "Upgrades") tells an operator to
run it on a checkout: it installs the checkout (again), not only the virtualenv."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The checkout's editable install, every package (build dependencies too) as pinned.
INSTALL = "pip install --quiet -c constraints.txt --build-constraint constraints.txt"


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
    assert INSTALL in plan, plan
    assert "compileall" in plan


def test_make_on_a_fresh_checkout_makes_the_virtualenv_and_installs(tmp_path: Path) -> None:
    plan = planned(tmp_path / "venv")
    assert "-m venv" in plan and INSTALL in plan, plan


def test_make_installs_what_constraints_txt_pins_and_pip_first(tmp_path: Path) -> None:
    # Not the newest releases on PyPI on the day: a release could break main with no commit.
    plan = planned(tmp_path / "venv")
    assert plan.index("pip install --quiet -c constraints.txt pip\n") < plan.index(INSTALL)
    assert "--upgrade" not in plan, plan
