"""Fixtures over real kcm-core and kcm-gateway processes (:mod:`kcm.testing.processes`: a
development PKI, `kcm core init`, a bootstrapped tenant, `twistd -n` on free loopback ports),
and what end-to-end tests read from their logs (test support)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kcm.conformance.client import KmipClient
from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import Operation, ResultReason, ResultStatus
from kcm.kmip.messages import RequestBatchItem, ResponseBatchItem
from kcm.kmip.payloads import LocateRequest
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptResponse
from kcm.kmip.tags import Tag
from kcm.testing.processes import PYKMIP_SERVER, CoreProcess, GatewayProcess, deploy, free_port
from kcm.testing.requests import CONTINUE, create_managed, item, request, response

__all__ = ["PYKMIP_SERVER", "V21", "ClientLoad", "CoreProcess", "GatewayProcess", "applied_events",
           "audit_rows", "core_process", "core_process_pg", "core_process_with_metrics",
           "counting_locate", "dead_links",
           "decrypt_sealed", "deploy", "gateway_process", "last_seq", "populated", "refusals",
           "resumed_after", "send_v21", "succeeded_v21", "wait_until"]

#: The protocol version of the helpers below: refusals carry KMIP 2.x reasons.
V21 = (2, 1)


# KMIP 2.1 requests, each item answered whatever the others do ------------------------------

def send_v21(client: KmipClient, *items: RequestBatchItem) -> list[ResponseBatchItem]:
    """One KMIP 2.1 request of ``items`` (Batch Error Continuation: Continue)."""
    return response(client.send(request(*items, version=V21, continuation=CONTINUE))).batch_items


def succeeded_v21(client: KmipClient, *items: RequestBatchItem) -> list:
    """The response payloads of ``items``, each of which must succeed."""
    answers = send_v21(client, *items)
    assert [a.result_status for a in answers] == [ResultStatus.SUCCESS] * len(items), \
        [a.result_message for a in answers]
    return [a.response_payload for a in answers]


def refusals(answers: list[ResponseBatchItem]) -> list[ResultReason | None]:
    """Each answer's Result Reason, None for one that succeeded."""
    return [None if a.result_status == ResultStatus.SUCCESS else a.result_reason
            for a in answers]


def decrypt_sealed(uid: str, sealed: EncryptResponse) -> RequestBatchItem:
    """Decrypt of what an AES-GCM Encrypt answered (data, IV and tag)."""
    return item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=uid, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag))


@pytest.fixture
def core_process(tmp_path: Path) -> Iterator[CoreProcess]:
    """A running kcm-core on a real SQLite file."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    try:
        yield core
    finally:
        core.stop()


@pytest.fixture
def core_process_with_metrics(tmp_path: Path) -> Iterator[CoreProcess]:
    """A running kcm-core on a real SQLite file, with its metrics and health listener."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.metrics_port = free_port()
    core.write_config()
    core.start()
    try:
        yield core
    finally:
        core.stop()


_pg_databases = iter(range(1, 10_000))


@pytest.fixture
def core_process_pg(tmp_path: Path, postgres_url: str) -> Iterator[CoreProcess]:
    """A running kcm-core on its own database in the suite's PostgreSQL cluster."""
    import sqlalchemy

    name = f"kcm_e2e_{next(_pg_databases)}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = postgres_url.rsplit("/", 1)[0] + f"/{name}"
    core = deploy(tmp_path / "core", url)
    core.start()
    try:
        yield core
    finally:
        core.stop()


# Event stream observations (tests of the gateway's sync with the core) ------------------

_APPLIED = re.compile(r"applied event (\d+): (\S+) ")
_RESUMED = re.compile(r"linked to core .*; events after (-?\d+)")


def applied_events(gateway: GatewayProcess) -> list[tuple[int, str]]:
    """The (sequence, kind) of every event ``gateway`` applied so far, in its log's order."""
    return [(int(seq), kind) for seq, kind in _APPLIED.findall(gateway.log.read_text())]


def resumed_after(gateway: GatewayProcess) -> list[int]:
    """For each link ``gateway`` made so far, the last event it had applied (the sequence its
    HELLO asked to resume after), from its log."""
    return [int(seq) for seq in _RESUMED.findall(gateway.log.read_text())]


def dead_links(core: CoreProcess) -> int:
    """How many links the core has closed as dead (nothing received for 3 heartbeats)."""
    return core.log.read_text().count("is dead: nothing received")


# The core's audit log, read from its database ----------------------------------------------

def audit_rows(core: CoreProcess, after: int = 0) -> list[dict]:
    """The audit records after sequence number ``after``, read from the core's database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT seq, operation, result_status, result_reason, detail FROM audit_log "
                "WHERE seq > :after ORDER BY seq"), {"after": after}).mappings().all()
    finally:
        engine.dispose()
    return [dict(row, detail=json.loads(row["detail"]) if row["detail"] else None)
            for row in rows]


def last_seq(core: CoreProcess) -> int:
    """The sequence number of the core's newest audit record (0: none)."""
    rows = audit_rows(core)
    return rows[-1]["seq"] if rows else 0


# Slow requests ---------------------------------------------------------------------------------

def populated(core: CoreProcess, objects: int) -> CoreProcess:
    """``core`` with ``objects`` more managed keys in tenant demo (a multiple of 50)."""
    with core.client() as client:
        for _ in range(objects // 50):
            answer = response(client.send(request(*[create_managed()] * 50)))
            assert {b.result_status for b in answer.batch_items} == {ResultStatus.SUCCESS}
    return core


def counting_locate() -> RequestBatchItem:
    """A Locate that must judge the attributes of every object of the tenant: it asks for a
    Contact Information (which the store keeps no copy of, and no object has), and counts
    every match (Offset Items asks for Located Items). A batch of them is slow on purpose. (A
    Cryptographic Usage Mask was such a criterion until migration 0007, an ``x-`` attribute
    until 0008.)"""
    return item(Operation.LOCATE, LocateRequest(maximum_items=1, offset_items=0, attributes=[
        Attribute.of(Tag.CONTACT_INFORMATION, "nobody-has-it")]))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0,
               interval: float = 0.02) -> float:
    """Poll ``condition`` every ``interval`` s; the seconds it took, or RuntimeError naming
    ``what`` after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


class ClientLoad(threading.Thread):
    """One client of ``server`` (its ``app`` identity) running ``step(client)`` again and
    again on one connection until :attr:`done` is set. :attr:`steps` counts the steps
    taken; :attr:`failures` keeps what each step that failed returned, and the exception
    that ends the load if one does."""

    def __init__(self, server: CoreProcess | GatewayProcess,
                 step: Callable[[KmipClient], str | None]) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.step = step
        self.done = threading.Event()
        self.steps = 0
        self.failures: list[str] = []

    def run(self) -> None:
        try:
            with self.server.client() as client:
                while not self.done.is_set():
                    problem = self.step(client)
                    if problem is not None:
                        self.failures.append(problem)
                    self.steps += 1
        except BaseException as e:  # noqa: BLE001 - every failure is the test's business
            self.failures.append(f"{type(e).__name__}: {e}")


@pytest.fixture
def gateway_process(core_process: CoreProcess, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A running kcm-gateway linked to the ``core_process`` fixture's core (pre-warmed for
    demo/app)."""
    gateway = GatewayProcess(tmp_path / "gateway", core_process)
    try:
        gateway.start()
        gateway.wait_linked()
        yield gateway
    finally:
        gateway.stop()


def assert_cancelled_in_audit(core: CoreProcess, before: int) -> None:
    """The 64 audit records after ``before`` are those of a Locate batch stopped because its
    client left: some ran, the rest failed as cancelled; the core logged the stop."""
    rows = audit_rows(core, before)
    ran = [r["result_status"] for r in rows].count("SUCCESS")
    assert 0 < ran < 64 and {r["result_status"] for r in rows[:ran]} == {"SUCCESS"}
    assert {(r["operation"], r["result_status"], r["result_reason"], json.dumps(r["detail"]))
            for r in rows[ran:]} == {
        ("LOCATE", "OPERATION_FAILED", "GENERAL_FAILURE",
         json.dumps({"stopped": "request cancelled: the client disconnected"}))}
    assert "request stopped" in core.log.read_text()
