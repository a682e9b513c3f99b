"""kcm.no_core_dumps: a process that holds keys writes no core file and is not dumpable."""

from __future__ import annotations

import subprocess
import sys


def test_a_process_forbids_core_dumps_and_ptrace() -> None:
    probe = ("import resource; from kcm.no_core_dumps import forbid_core_dumps, dumpable; "
             "before = dumpable(); forbid_core_dumps(); "
             "print(before, dumpable(), resource.getrlimit(resource.RLIMIT_CORE))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True).stdout.split(maxsplit=2)
    assert out == ["True", "False", "(0, 0)\n"]


def test_the_cli_never_prints_a_database_password() -> None:
    from kcm.cli.core_cmd import shown_url

    assert "SEKRIT" not in shown_url("postgresql+psycopg://kcm:SEKRIT@127.0.0.1:5/kcm")
    shown = shown_url("postgresql+psycopg://kcm@127.0.0.1:5/kcm?password=SEKRIT"
                      "&sslmode=require&sslpassword=SEKRIT2")
    assert "SEKRIT" not in shown and "sslmode=require" in shown
    assert shown_url("sqlite:////var/lib/kcm/kcm.db") == "sqlite:////var/lib/kcm/kcm.db"


def test_a_malformed_database_url_is_not_echoed() -> None:
    import pytest

    from kcm.cli import CommandError
    from kcm.cli.core_cmd import existing_database
    from kcm.core.config import CoreConfig

    config = CoreConfig(database="postgresql+psycopg:/kcm:SEKRIT@db.example/kcm")
    with pytest.raises(CommandError) as refused:
        existing_database(config)
    assert "SEKRIT" not in str(refused.value)
    assert "postgresql+psycopg:..." in str(refused.value)
