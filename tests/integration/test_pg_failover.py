"""A PostgreSQL failover under running cores, with real processes: a primary and a
synchronous streaming standby (``pg_basebackup -R``), two kcm-cores on a libpq multi-host
URL with ``target_session_attrs=read-write``. The primary's postmaster is killed (SIGKILL)
and the standby promoted: while only the standby answers, writes fail "try again" and
``/readyz`` says the database is read-only; after the promotion both cores write again
without a restart, every write acknowledged before (and during) the kill is on the new
primary, ``kcm audit verify`` passes there, one core holds the sweeper's lease, and a
gateway of two workers listing both cores applies an event committed after the failover."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from kmip.core import enums
from kmip.pie.exceptions import KmipOperationFailure

from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.payloads.lifecycle import DestroyRequest
from kcm.testing.postgres import Cluster
from kcm.testing.processes import (
    CoreProcess,
    GatewayProcess,
    deploy,
    free_port,
    scrape,
    start_together,
)
from tests.e2e_support import wait_until
from tests.gateway_support import create_l4, get, item, request, response
from tests.pg import own_cluster  # noqa: F401  (fixture)


@contextlib.contextmanager
def _standby(primary: Cluster) -> Iterator[Cluster]:
    """A synchronous streaming standby of ``primary`` (``pg_basebackup -R``), started."""
    standby = Cluster(primary.bin_dir)
    standby.password = primary.password
    try:
        shutil.rmtree(standby.data, ignore_errors=True)
        standby.run("pg_basebackup", "-D", str(standby.data), "-h", str(primary.socket_dir),
                    "-p", str(primary.port), "-U", "kcm", "-R", "-X", "stream", "-c", "fast")
        standby.port = free_port()
        conf = (standby.data / "postgresql.auto.conf").read_text()
        conf = conf.replace(f"port = {primary.port}", f"port = {standby.port}").replace(
            f"unix_socket_directories = '{primary.socket_dir}'",
            f"unix_socket_directories = '{standby.socket_dir}'")
        conf = conf.replace("primary_conninfo = '",
                            "primary_conninfo = 'application_name=standby ")
        (standby.data / "postgresql.auto.conf").write_text(conf)
        standby.run("pg_ctl", "-D", str(standby.data), "-l", str(standby.log), "-w", "-t", "60",
                    "start")
        with (primary.data / "postgresql.auto.conf").open("a") as auto:
            auto.write("synchronous_standby_names = 'standby'\n")
        primary.run("pg_ctl", "-D", str(primary.data), "reload")
        engine = sqlalchemy.create_engine(primary.url)
        try:
            deadline = time.monotonic() + 15
            with engine.connect() as connection:
                while connection.execute(sqlalchemy.text(
                        "SELECT sync_state FROM pg_stat_replication")).scalar() != "sync":
                    connection.rollback()
                    assert time.monotonic() < deadline, "the standby is not synchronous"
                    time.sleep(0.2)
        finally:
            engine.dispose()
        yield standby
    finally:
        standby.stop()
        standby.remove()


def status(client, wire: bytes) -> tuple[int, int | None]:
    [answer] = response(client.send(wire)).batch_items
    return answer.result_status, answer.result_reason


def _ready(core: CoreProcess) -> tuple[int, str]:
    status, body = scrape(core.metrics_port, "/readyz")
    return status, body.decode()


def _create(core: CoreProcess) -> str | None:
    client = core.pykmip()
    try:
        return client.create(enums.CryptographicAlgorithm.AES, 128)
    except KmipOperationFailure as failure:
        assert "the key store is unavailable; try again" in str(failure)
        return None
    finally:
        client.close()


def test_cores_write_again_after_a_failover_and_keep_every_acknowledged_write(
        own_cluster: Cluster, tmp_path: Path) -> None:  # noqa: F811
    primary = own_cluster
    with _standby(primary) as standby:
        url = (f"postgresql+psycopg://kcm:{primary.password}@/kcm?host=127.0.0.1:{primary.port}"
               f"&host=127.0.0.1:{standby.port}&target_session_attrs=read-write")
        one = deploy(tmp_path / "one", url)
        one.metrics_port = free_port()
        one.write_config()
        two = one.replica(tmp_path / "two")
        two.metrics_port = free_port()
        two.write_config()
        gateway = GatewayProcess(tmp_path / "gateway", one, workers=2, cores=[one, two])
        start_together([one, two, gateway])
        try:
            gateway.wait_linked()
            with gateway.client("app") as app:
                [created] = response(app.send(request(create_l4()))).batch_items
                token = created.response_payload.unique_identifier
            acked = [_create(core) for core in (one, two) for _ in range(5)]
            assert None not in acked

            os.kill(int((primary.data / "postmaster.pid").read_text().split()[0]),
                    signal.SIGKILL)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                uid = _create(one)
                if uid is None:
                    break
                acked.append(uid)  # (a backend outliving its postmaster may still commit)
            else:
                pytest.fail("writes went on after the primary's kill")
            for core in (one, two):
                readiness, body = _ready(core)
                assert readiness == 503, body
                assert "session is read-only" in body, body

            standby.run("pg_ctl", "-D", str(standby.data), "-w", "promote")
            for core in (one, two):  # no restart
                deadline = time.monotonic() + 15
                while (uid := _create(core)) is None:
                    assert time.monotonic() < deadline, "no write after the promotion"
                    time.sleep(0.2)
                acked.append(uid)
                assert _ready(core)[0] == 200

            # An event committed after the failover reaches the gateway's workers (each
            # connection goes to one of them: several are tried).
            with one.client("app") as direct:
                assert status(direct, request(item(Operation.DESTROY, DestroyRequest(
                    unique_identifier=token)))) == (ResultStatus.SUCCESS, None)
            for _ in range(6):
                with gateway.client("app") as app:
                    wait_until(lambda app=app: status(app, request(get(token), version=(2, 1)))
                               == (ResultStatus.OPERATION_FAILED, ResultReason.OBJECT_NOT_FOUND),
                               "the gateway to refuse the token destroyed after the failover",
                               timeout=10)

            engine = sqlalchemy.create_engine(
                f"postgresql+psycopg://kcm:{primary.password}@127.0.0.1:{standby.port}/kcm")
            try:
                with engine.connect() as connection:
                    stored = {row[0] for row in connection.execute(
                        sqlalchemy.text("SELECT uid FROM managed_objects"))}
                    deadline = time.monotonic() + 15
                    while True:  # the lease is asked for every few seconds
                        holders = connection.execute(sqlalchemy.text(
                            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'"
                            " AND granted")).scalar()
                        connection.rollback()
                        if holders == 1 or time.monotonic() > deadline:
                            break
                        time.sleep(0.5)
            finally:
                engine.dispose()
            assert [uid for uid in acked if uid not in stored] == []
            assert holders == 1
            verified = one.kcm("audit", "verify")
            assert "audit log intact" in verified.stdout
        finally:
            gateway.stop()
            one.stop()
            two.stop()
