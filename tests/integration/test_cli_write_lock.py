"""The operator commands that write import nothing while their write transaction holds
SQLite's lock: a running kcm-core's writers wait for that lock, so an import there (tenths
of a second for the store, hierarchy and audit modules) stalls every tenant's writes. Each
command runs in a fresh interpreter (the test process has those modules imported long
since), with SQLite's trace noting which modules were loaded between ``BEGIN IMMEDIATE``
and ``COMMIT``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kcm.testing.processes import CoreProcess, deploy, process_env

#: Runs `kcm ARGS...` in process and prints the modules (of kcm, cryptography and
#: SQLAlchemy) first imported inside a write transaction, as JSON.
TRACED = """
import json, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine

inside, seen = [], set()

@event.listens_for(Engine, "connect")
def trace(connection, record):
    def statement(sql):
        words = sql.split()[:2]
        if words == ["BEGIN", "IMMEDIATE"]:
            seen.clear(); seen.update(sys.modules); inside.append(True)
        elif words[:1] == ["COMMIT"] and inside:
            inside.pop()
            new.extend(m for m in set(sys.modules) - seen
                       if m.startswith(("kcm", "cryptography", "sqlalchemy")))
    connection.set_trace_callback(statement)

new = []
from kcm.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    if e.code not in (0, None):
        raise
print(json.dumps(sorted(set(new))))
"""


def _imported_inside(core: CoreProcess, *args: str) -> list[str]:
    run = subprocess.run([sys.executable, "-c", TRACED, *args, "-c", str(core.config)],
                         env=process_env(), capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> CoreProcess:
    root = tmp_path_factory.mktemp("cli-lock")
    return deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")


@pytest.mark.parametrize("args", [
    ("core", "tenant", "add", "acme"),
    ("core", "service", "add", "demo", "billing"),
    ("core", "service", "rotate", "demo", "app"),
    ("core", "tenant", "rotate", "demo"),
    ("core", "tenant", "policy", "demo", "--service-key-interval", "30d"),
    ("core", "tenant", "remove", "other", "--yes"),
], ids=lambda args: " ".join(args[1:3]))
def test_a_write_command_imports_nothing_while_it_holds_the_lock(
        core: CoreProcess, args: tuple[str, ...]) -> None:
    assert _imported_inside(core, *args) == []
