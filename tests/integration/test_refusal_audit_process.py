"""A real kcm-core: a request the KMIP protocol refuses whole before the core reads it (a
client certificate of the CA that names no accepted identity, a request declared larger
than ``max_message_size``) leaves one audit record, operation ``?``, committed before the
client's answer, which is the one it always was; the chain still verifies. A certificate
refused again and again within the interval (a client reconnecting in a loop) leaves one
record more at its end, with their count, not one per refusal."""

from __future__ import annotations

import datetime as dt
import json
import struct
import time
from collections.abc import Iterator

import pytest
import sqlalchemy

from kcm.conformance.client import KmipClient
from kcm.kernel.responses import failure_response
from kcm.kmip_protocol import (
    IDENTITY_REFUSED,
    RESULT_REASON_INVALID_MESSAGE,
    RESULT_REASON_PERMISSION_DENIED,
)
from kcm.pki import CertKeyPaths, issue_certificate, load_ca, write_certificate
from kcm.testing.processes import CoreProcess, deploy
from kcm.testing.requests import get, request, response

MAX_MESSAGE_SIZE = 8192


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    root = tmp_path_factory.mktemp("hr-refusals")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}",
                  max_message_size=MAX_MESSAGE_SIZE)
    core.start()
    try:
        yield core
    finally:
        core.stop()


def records(core: CoreProcess, after: int = 0) -> list[dict]:
    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT seq, principal, tenant, gateway, source, operation, result_status, "
                "result_reason, detail FROM audit_log WHERE seq > :after ORDER BY seq"),
                {"after": after}).mappings().all()
    finally:
        engine.dispose()
    return [dict(row, detail=json.loads(row["detail"]) if row["detail"] else None)
            for row in rows]


def newest(core: CoreProcess) -> int:
    rows = records(core)
    return rows[-1]["seq"] if rows else 0


def intruder(core: CoreProcess, name: str = "intruder") -> KmipClient:
    """A client whose certificate, of the deployment's CA, names another trust domain."""
    issued = issue_certificate(load_ca(core.pki.ca), name, now=dt.datetime.now(dt.UTC),
                               uris=["spiffe://elsewhere.test/tenant/demo/service/app"])
    paths = CertKeyPaths(core.root / f"{name}.pem", core.root / f"{name}.key")
    write_certificate(paths, issued.cert, issued.key)
    return KmipClient("127.0.0.1", core.port, cert=paths.cert, key=paths.key,
                      ca=core.pki.ca.cert)


def local_port(client: KmipClient) -> int:
    assert client._socket is not None
    return client._socket.getsockname()[1]


def as_always(wire: bytes, reason: int, message: str) -> None:
    """``wire`` is the answer the protocol wrote before the core recorded refusals: a KMIP
    1.0 message of one failed item, no Server Correlation Value (its time stamp aside)."""
    stamp = response(wire).header.time_stamp
    assert wire == failure_response((1, 0), reason, message, stamp)


def test_a_certificate_naming_nobody_leaves_one_record_before_its_answer(
        core: CoreProcess) -> None:
    mark = newest(core)
    with intruder(core) as client:
        client.connect()
        port = local_port(client)
        answer = client.send(request(get("x")))
        [row] = records(core, mark)  # already committed: the answer waited for it
    as_always(answer, RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED)
    assert (row["principal"], row["tenant"], row["gateway"], row["source"], row["operation"],
            row["result_status"], row["result_reason"]) == (
        "unidentified", None, None, f"127.0.0.1:{port}", "?", "OPERATION_FAILED",
        "PERMISSION_DENIED")
    assert row["detail"]["refused"] == IDENTITY_REFUSED
    certificate = row["detail"]["certificate"]
    assert certificate.startswith("subject CN=intruder,O=KCM Dev, ")
    assert "SAN spiffe://elsewhere.test/tenant/demo/service/app" in certificate
    assert "serial " in certificate and certificate.isascii()
    assert core.kcm("audit", "verify").returncode == 0


def test_an_oversized_request_leaves_one_record_of_its_principal(core: CoreProcess) -> None:
    mark = newest(core)
    declared = MAX_MESSAGE_SIZE * 4
    with core.client("app") as client:
        client.connect()
        port = local_port(client)
        answer = client.send(struct.pack(">II", 0x42007801, declared))
        [row] = records(core, mark)
    [item] = response(answer).batch_items
    as_always(answer, RESULT_REASON_INVALID_MESSAGE, item.result_message)
    assert item.result_message.startswith("request too large: ")
    assert (row["principal"], row["tenant"], row["gateway"], row["source"], row["operation"],
            row["result_status"], row["result_reason"]) == (
        "spiffe://kcm.test/tenant/demo/service/app", "demo", None, f"127.0.0.1:{port}", "?",
        "OPERATION_FAILED", "INVALID_MESSAGE")
    assert row["detail"] == {"refused": item.result_message}
    assert core.kcm("audit", "verify").returncode == 0


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_a_certificate_refused_in_a_loop_leaves_one_record_per_interval(
        core: CoreProcess) -> None:
    mark = newest(core)
    wire = request(get("x"))
    with intruder(core, "flooder") as client:
        first = client.send(wire)
        [row] = records(core, mark)  # the first: committed before its answer
    as_always(first, RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED)
    assert "count" not in row["detail"]
    for _ in range(20):  # reconnecting with the same certificate, from new ports
        with KmipClient("127.0.0.1", core.port, cert=core.root / "flooder.pem",
                        key=core.root / "flooder.key", ca=core.pki.ca.cert) as client:
            as_always(client.send(wire), RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED)

    def counted() -> list[dict]:
        return [r for r in records(core, mark) if "count" in r["detail"]]

    deadline = time.monotonic() + 60  # the interval (10 s) ends on the core's timer
    while sum(r["detail"]["count"] for r in counted()) < 20 and time.monotonic() < deadline:
        time.sleep(0.5)
    summaries = counted()
    assert 1 <= len(summaries) <= 2  # one per interval (two if the loop spanned two)
    assert len(records(core, mark)) == 1 + len(summaries)  # not one per refusal
    assert sum(r["detail"]["count"] for r in summaries) == 20
    for summary in summaries:
        assert (summary["principal"], summary["operation"], summary["result_reason"]) == (
            "unidentified", "?", "PERMISSION_DENIED")
        assert summary["detail"]["certificate"] == row["detail"]["certificate"]
        assert summary["detail"]["first"] <= summary["detail"]["last"]
    assert core.kcm("audit", "verify").returncode == 0


def test_refusals_counted_when_the_core_stops_are_recorded(tmp_path) -> None:
    """A SIGTERM within a sender's interval: its refusals counted so far get their record
    before the store closes (they were lost), and the chain still verifies."""
    core = deploy(tmp_path / "core", f"sqlite:///{tmp_path / 'core' / 'kcm.db'}")
    core.start()
    try:
        wire = request(get("x"))
        with intruder(core, "quitter") as client:
            as_always(client.send(wire), RESULT_REASON_PERMISSION_DENIED, IDENTITY_REFUSED)
        for _ in range(5):  # within the first's interval (10 s): counted, not yet recorded
            with KmipClient("127.0.0.1", core.port, cert=core.root / "quitter.pem",
                            key=core.root / "quitter.key", ca=core.pki.ca.cert) as client:
                as_always(client.send(wire), RESULT_REASON_PERMISSION_DENIED,
                          IDENTITY_REFUSED)
        assert [r for r in records(core) if "count" in (r["detail"] or {})] == []
    finally:
        core.stop()
    refused = [r for r in records(core) if r["operation"] == "?"]
    assert [r["detail"].get("count") for r in refused] == [None, 5]
    assert refused[1]["detail"]["certificate"] == refused[0]["detail"]["certificate"]
    assert core.kcm("audit", "verify").returncode == 0
