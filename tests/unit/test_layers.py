"""The layering of docs/architecture.md holds: the import contracts in setup.cfg
([importlinter]) are kept, transitive imports included, and the gateway runs without the
core's store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.vectors import REPO_ROOT

BIN = Path(sys.executable).parent


def test_import_contracts_are_kept() -> None:
    result = subprocess.run([str(BIN / "lint-imports"), "--config", "setup.cfg"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_the_gateway_service_does_not_load_the_store() -> None:
    probe = ("import sys, kcm.gateway.service, kcm.gateway.tap; "
             "loaded = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('sqlalchemy', 'alembic', 'psycopg') or m.startswith('kcm.core')); "
             "print(loaded); sys.exit(1 if loaded else 0)")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
