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


_FAKE_PYTHON = """#!/bin/sh
# `python -m venv DIR`: a virtualenv whose pip freezes one package and whose pip-compile
# fails (PyPI unreachable halfway, a conflict), as `make constraints` may meet.
[ "$1 $2" = "-m venv" ] || exit 2
mkdir -p "$3/bin"
printf '#!/bin/sh\\n[ "$1" = freeze ] && echo "newer==9.9"\\nexit 0\\n' > "$3/bin/pip"
printf '#!/bin/sh\\nexit 1\\n' > "$3/bin/pip-compile"
chmod +x "$3/bin/pip" "$3/bin/pip-compile"
"""


def test_make_constraints_that_fails_halfway_leaves_both_files_as_they_were(
        tmp_path: Path) -> None:
    """Else constraints.txt held pins no test had run and requirements-deploy.txt was gone:
    `make` would install those pins, and production had no lock."""
    if shutil.which("make") is None:
        pytest.skip("no make")
    checkout = tmp_path / "kcm"
    checkout.mkdir()
    for name in ("Makefile", "constraints.txt", "requirements-deploy.txt"):
        shutil.copy(REPO / name, checkout / name)
    python = tmp_path / "python"
    python.write_text(_FAKE_PYTHON)
    python.chmod(0o755)
    ran = subprocess.run(["make", "constraints", f"PYTHON={python}"], cwd=checkout,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode != 0, ran.stdout + ran.stderr
    for name in ("constraints.txt", "requirements-deploy.txt"):
        assert (checkout / name).read_text() == (REPO / name).read_text(), name
    assert not (checkout / "constraints.txt.new").exists()
