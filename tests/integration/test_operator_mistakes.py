"""Operator mistakes a running deployment must refuse clearly or survive (real processes)."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from pathlib import Path

import pytest

from kcm.testing.processes import GatewayProcess
from kcm.testing.requests import request
from tests.e2e_support import (
    CoreProcess,
    deploy,
    refusals,
    send_v21,
    wait_until,
)
from tests.gateway_support import create_managed


def test_a_second_core_on_one_sqlite_file_does_not_start_and_the_first_serves_on(
        tmp_path: Path) -> None:
    """A manual run beside the service (or two replicas on one volume): the second kcm-core
    exits at once saying which process serves the file; the first serves on, the `kcm`
    commands keep working beside it, and once it is killed the file is free again."""
    first = deploy(tmp_path / "core1", f"sqlite:///{tmp_path / 'core1' / 'kcm.db'}")
    second = first.replica(tmp_path / "core2")
    third: CoreProcess | None = None
    try:
        first.start()
        assert first.process is not None
        second.spawn()
        assert second.process is not None
        assert second.process.wait(timeout=30) == 1
        database = os.path.realpath(tmp_path / "core1" / "kcm.db")
        assert (f"kcm-core did not start: kcm-sqlite-owner: another kcm-core (pid "
                f"{first.process.pid}) serves {database}: stop it first; one kcm-core per "
                "SQLite file (several cores need PostgreSQL, docs/deploy.md)"
                ) in second.log.read_text()
        first.kcm("core", "tenant", "add", "third")
        assert "audit log intact" in first.kcm("audit", "verify").stdout
        with first.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
        first.stop(signal.SIGKILL)  # the kernel drops the lock with the process
        third = first.replica(tmp_path / "core3")
        third.start()
        with third.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
    finally:
        for core in (first, second, third):
            if core is not None:
                core.stop()


def test_a_sqlite_file_of_two_names_is_served_by_no_core_and_opened_by_no_command(
        tmp_path: Path) -> None:
    """A hard link to the database is another path: a second core on it took another lock
    file and served the same database, each name with its own WAL (which corrupts it), and
    a `kcm` command or a backup on it read the database without the first name's WAL. Now
    no core starts on either name and every command that opens it refuses, saying what to
    do; once the other name is gone, the core starts."""
    first = deploy(tmp_path / "core1", f"sqlite:///{tmp_path / 'core1' / 'kcm.db'}")
    (tmp_path / "other").mkdir(mode=0o700)
    os.link(tmp_path / "core1" / "kcm.db", tmp_path / "other" / "kcm.db")
    second = first.replica(tmp_path / "core2")
    second.database = f"sqlite:///{tmp_path / 'other' / 'kcm.db'}"
    second.write_config()
    real = os.path.realpath(tmp_path / "other" / "kcm.db")  # (the name the commands use)
    try:
        for core in (first, second):
            core.spawn()
            assert core.process is not None
            assert core.process.wait(timeout=30) == 1
            name = core.database.removeprefix("sqlite:///")
            assert ("kcm-core did not start: kcm-sqlite-owner: the SQLite database file "
                    "has 2 names (hard links), and SQLite keeps a WAL per name, which "
                    "corrupts it: with kcm-core stopped, remove the other names (find "
                    f"-samefile) or replace it by a copy: {os.path.realpath(name)}"
                    ) in core.log.read_text()
            core.process = None
        for prog, command in (("kcm core tenant list", ("core", "tenant", "list")),
                              ("kcm audit verify", ("audit", "verify")),
                              ("kcm core backup", ("core", "backup", str(tmp_path / "copy.db"))),
                              ("kcm core init", ("core", "init", "--restored"))):
            done = second.kcm(*command, check=False)
            assert done.returncode == 2, (command, done.stderr)
            line = (f"{prog}: error: the SQLite database file has 2 names (hard links), and "
                    "SQLite keeps a WAL per name, which corrupts it: with kcm-core stopped, "
                    f"remove the other names (find -samefile) or replace it by a copy: {real}")
            # (the one line is cut at 300 characters: a long path loses its end, not the advice)
            assert done.stderr == (line if len(line) <= 300 + len(f"{prog}: error: ")
                                   else line[:len(f"{prog}: error: ") + 297] + "...") + "\n", \
                done.stderr
        assert not (tmp_path / "copy.db").exists()
        assert not (tmp_path / "other" / "kcm.db-wal").exists()
        os.unlink(tmp_path / "other" / "kcm.db")
        first.start()
        with first.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
    finally:
        for core in (first, second):
            core.stop()


def test_a_second_name_given_to_a_served_sqlite_file_makes_it_not_ready_with_one_line(
        tmp_path: Path) -> None:
    """A hard link made while the core runs (the start's refusal does not see it): within
    the owner's interval (5 s) one error line says so and /readyz answers 503 saying why,
    however often it is probed; the core serves on (its writes use its own name); the name
    removed, /readyz is 200 again."""
    import json

    from kcm.testing.processes import free_port, scrape

    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.metrics_port = free_port()
    core.write_config()
    (tmp_path / "other").mkdir(mode=0o700)
    other = tmp_path / "other" / "kcm.db"
    core.start()
    try:
        assert scrape(core.metrics_port, "/readyz")[0] == 200
        os.link(tmp_path / "core" / "kcm.db", other)
        status, body = scrape(core.metrics_port, "/readyz")
        assert status == 503, body
        assert json.loads(body)["database"].startswith(
            "refused: the SQLite database file has 2 names (hard links)"), body

        def lines() -> list[str]:
            return [line for line in core.log.read_text().splitlines()
                    if "a second name was given to the database file" in line]
        wait_until(lambda: lines(), "the line", timeout=8, interval=0.2)
        with core.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
        for _ in range(5):
            assert scrape(core.metrics_port, "/readyz")[0] == 503
        time.sleep(5.5)  # (another look by the owner: no second line)
        assert len(lines()) == 1, lines()
        assert "/readyz answers 503 until it is gone" in lines()[0]
        os.unlink(other)
        assert scrape(core.metrics_port, "/readyz")[0] == 200
        wait_until(lambda: "has one name again" in core.log.read_text(), "the name gone",
                   timeout=8, interval=0.2)
    finally:
        core.stop()


def test_a_served_sqlite_file_moved_away_makes_it_not_ready_with_one_line(
        tmp_path: Path) -> None:
    """The database file moved away while the core runs (a restore made without stopping
    it would put another file at its path): within the owner's interval one error line
    says so and /readyz answers 503 saying why; the file put back, /readyz is 200 again
    and the log says so."""
    import json

    from kcm.testing.processes import free_port, scrape

    database = tmp_path / "core" / "kcm.db"
    core = deploy(tmp_path / "core", f"sqlite:///{database}")
    core.metrics_port = free_port()
    core.write_config()
    core.start()
    try:
        assert scrape(core.metrics_port, "/readyz")[0] == 200
        os.rename(database, tmp_path / "core" / "moved.db")
        status, body = scrape(core.metrics_port, "/readyz")
        assert status == 503, body
        assert json.loads(body)["database"].startswith(
            "refused: the SQLite database file was moved, replaced or removed while "
            "kcm-core runs"), body

        def lines() -> list[str]:
            return [line for line in core.log.read_text().splitlines()
                    if "is not the one kcm-core opened" in line]
        wait_until(lambda: lines(), "the line", timeout=8, interval=0.2)
        time.sleep(5.5)  # (another look by the owner: no second line)
        assert len(lines()) == 1, lines()
        os.rename(tmp_path / "core" / "moved.db", database)
        assert scrape(core.metrics_port, "/readyz")[0] == 200
        wait_until(lambda: "is the one kcm-core opened again" in core.log.read_text(),
                   "the file back", timeout=8, interval=0.2)
        with core.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
    finally:
        core.stop()


def test_a_gateway_pointed_at_a_cores_kmip_port_says_so_and_the_core_serves_on(
        core_process: CoreProcess, tmp_path: Path) -> None:
    """The gateway's core names the core's KMIP port (5696), not its link port: the core
    answers the HELLO in KMIP. The gateway's warning says which port to give; it sends no
    GOAWAY there (one more invalid request, audited), and the core serves on."""
    core = core_process
    kmip_port = dataclasses.replace(core, link_port=core.port)
    gateway = GatewayProcess(tmp_path / "gateway", core, cores=[kmip_port])
    try:
        gateway.start()
        wait_until(lambda: "cannot link to core" in gateway.log.read_text(), "the warning")
        assert (f"cannot link to core tcp:127.0.0.1:{core.port}: it answered in KMIP: that is "
                "a KMIP port, not a core's link port; set the gateway's core to the core's "
                "link_listen port (5697 by default)") in gateway.log.read_text()
        with core.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
    finally:
        gateway.stop()
    # One invalid request a connection (the HELLO), not two (a GOAWAY after it).
    sources = [row["source"] for row in audit_rows_with_source(core)
               if row["result_reason"] == "INVALID_MESSAGE"]
    assert sources and len(sources) == len(set(sources))


def audit_rows_with_source(core: CoreProcess) -> list[dict]:
    """Every audit record's reason and source, read from the core's database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            return [dict(row) for row in connection.execute(sqlalchemy.text(
                "SELECT result_reason, source FROM audit_log ORDER BY seq")).mappings()]
    finally:
        engine.dispose()


def test_a_kmip_client_at_the_metrics_port_is_closed_at_once_and_logged(
        core_process_with_metrics: CoreProcess) -> None:
    """A KMIP client given the metrics port (plain HTTP) fails at once, not after the
    request's 10 s deadline; the core says what it was; the listener serves on."""
    from kcm.conformance.client import KmipClient, KmipClientError
    from kcm.testing.processes import scrape

    core = core_process_with_metrics
    assert core.metrics_port is not None
    started = time.monotonic()
    with pytest.raises(KmipClientError), KmipClient(
            "127.0.0.1", core.metrics_port, cert=core.pki.app.cert, key=core.pki.app.key,
            ca=core.pki.ca.cert) as client:
        client.send(request(create_managed(), version=(2, 1)))
    assert time.monotonic() - started < 3
    wait_until(lambda: "metrics listener: a TLS client" in core.log.read_text(), "the line")
    assert ("metrics listener: a TLS client from 127.0.0.1:" in core.log.read_text())
    assert "(a KMIP client given the metrics port?): this port is plain HTTP; give KMIP " \
           "clients the KMIP port; 1 such connection(s) in the last 10 s" in core.log.read_text()
    assert scrape(core.metrics_port, "/healthz")[0] == 200


def test_another_l1_key_stops_the_start_before_an_older_schema_is_upgraded(
        tmp_path: Path) -> None:
    """A new release pointed at another deployment's L1 key file (or the right key and
    another database): the database at an older revision was upgraded, then the start was
    refused. The start is refused before any migration: the file's revision and bytes are
    as they were; with the right key the same start upgrades it and serves."""
    import base64

    from kcm.core.store.migrate import current_revision, head_revision
    from tests.migration_support import downgrade

    database = f"sqlite:///{tmp_path / 'core' / 'kcm.db'}"
    core = deploy(tmp_path / "core", database)
    downgrade(database, "0008")
    key = tmp_path / "core" / "l1.key"
    kept = key.read_bytes()
    key.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    files = sorted((tmp_path / "core").glob("kcm.db*"))
    before = {path.name: path.read_bytes() for path in files}
    try:
        core.spawn()
        assert core.process is not None
        assert core.process.wait(timeout=30) == 1
        core.process = None
        assert current_revision(database) == "0008"
        assert {path.name: path.read_bytes() for path in files} == before
        assert ("kcm-core did not start: kcm-l1-before-migration: the L1 key file "
                f"{key} is not the L1 key of this database (its schema, at revision 0008, "
                "was not upgraded)") in core.log.read_text()
        key.write_bytes(kept)
        core.start()
        with core.client("app") as client:
            assert refusals(send_v21(client, create_managed())) == [None]
    finally:
        core.stop()
    assert current_revision(database) == head_revision()
