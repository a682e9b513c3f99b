"""A real kcm-core: a refused attempt on an object names the object asked for and why in its
audit record, while the client's answer stays that of a missing object; a refused certificate
is logged with its names; an access policy change on SIGHUP is audited."""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections.abc import Iterator

import pytest
import sqlalchemy

from kcm.conformance.client import KmipClient
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.pki import CertKeyPaths, issue_certificate, load_ca, write_certificate
from kcm.testing.processes import CoreProcess, deploy
from kcm.testing.requests import activate, create_managed, get, request, response
from tests.e2e_support import wait_until


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """kcm-core with tenants demo (services app and legacy) and other (service app)."""
    root = tmp_path_factory.mktemp("hp-refusals")
    core = deploy(root / "core", f"sqlite:///{root / 'core' / 'kcm.db'}")
    core.kcm("core", "service", "add", "demo", "legacy")
    core.start()
    try:
        yield core
    finally:
        core.stop()


def records(core: CoreProcess, after: int) -> list[dict]:
    """The audit records after ``after``, with their principal, tenant and object ids."""
    engine = sqlalchemy.create_engine(core.database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sqlalchemy.text(
                "SELECT seq, principal, tenant, source, operation, object_ids, result_reason, "
                "detail FROM audit_log WHERE seq > :after ORDER BY seq"),
                {"after": after}).mappings().all()
    finally:
        engine.dispose()
    return [dict(row, object_ids=json.loads(row["object_ids"]),
                 detail=json.loads(row["detail"]) if row["detail"] else None) for row in rows]


def newest(core: CoreProcess) -> int:
    rows = records(core, 0)
    return rows[-1]["seq"] if rows else 0


def client_of(core: CoreProcess, name: str, path: str) -> KmipClient:
    """A client whose certificate (of the deployment's CA) carries the SPIFFE ID ``path``."""
    issued = issue_certificate(load_ca(core.pki.ca), name, now=dt.datetime.now(dt.UTC),
                               uris=[f"spiffe://{path}"])
    paths = CertKeyPaths(core.root / f"{name}.pem", core.root / f"{name}.key")
    write_certificate(paths, issued.cert, issued.key)
    return KmipClient("127.0.0.1", core.port, cert=paths.cert, key=paths.key,
                      ca=core.pki.ca.cert)


def answer(client: KmipClient, item) -> tuple[int, ResultReason | None, str | None]:
    [reply] = response(client.send(request(item))).batch_items
    return reply.result_status, reply.result_reason, reply.result_message


def test_refused_attempts_name_the_object_and_why_and_answer_as_missing(
        core: CoreProcess) -> None:
    with core.client("app") as app:
        [created] = response(app.send(request(create_managed()))).batch_items
    uid = created.response_payload.unique_identifier
    # A missing identifier of the same first 16 characters: the answer must not tell them
    # apart (its message names an identifier by those).
    missing = uid[:16] + "-missing"
    mark = newest(core)
    with core.client("other_app") as other:
        foreign = answer(other, get(uid))
        absent = answer(other, get(missing))
    with core.client("legacy") as legacy:
        another_service = answer(legacy, activate(uid))
    with client_of(core, "ghost", "kcm.test/tenant/demo/service/ghost") as ghost:
        unprovisioned_get = answer(ghost, get(uid))
        unprovisioned_create = answer(ghost, create_managed())
    assert foreign == absent
    assert foreign[:2] == (ResultStatus.OPERATION_FAILED, ResultReason.ITEM_NOT_FOUND)
    assert another_service[1] == ResultReason.PERMISSION_DENIED
    assert unprovisioned_get[1] == ResultReason.ITEM_NOT_FOUND
    assert unprovisioned_create[1] == ResultReason.PERMISSION_DENIED

    wait_until(lambda: len(records(core, mark)) >= 5, "the audit records of the refusals")
    rows = records(core, mark)
    assert [(r["tenant"], r["operation"], r["object_ids"], r["detail"]) for r in rows] == [
        ("other", "GET", [], {"requested": uid, "denied": "another tenant's object"}),
        ("other", "GET", [], {"requested": missing}),
        ("demo", "ACTIVATE", [], {"requested": uid, "denied": "another service's object"}),
        ("demo", "GET", [], {"requested": uid,
                             "denied": "service demo/ghost is not provisioned"}),
        ("demo", "CREATE", [], {"denied": "service demo/ghost is not provisioned"}),
    ]


def test_a_refused_identifier_is_recorded_bounded(core: CoreProcess) -> None:
    mark = newest(core)
    asked = "\u00e9" + "x" * 500
    with core.client("app") as app:
        assert answer(app, get(asked))[1] == ResultReason.ITEM_NOT_FOUND
    wait_until(lambda: records(core, mark), "the audit record")
    [row] = records(core, mark)
    assert row["detail"] == {"requested": "?" + "x" * 63 + "..."}


def test_a_refused_certificate_is_logged_with_its_subject_san_and_serial(
        core: CoreProcess) -> None:
    with client_of(core, "intruder", "elsewhere.test/tenant/demo/service/app") as intruder:
        status, reason, _ = answer(intruder, get("x"))
    assert reason == ResultReason.PERMISSION_DENIED
    lines = [json.loads(line) for line in core.log.read_text().splitlines()
             if "refused connection" in line]
    assert lines, "no refusal logged"
    text = lines[-1]["text"]
    assert "subject CN=intruder,O=KCM Dev" in text
    assert "SAN spiffe://elsewhere.test/tenant/demo/service/app" in text
    assert "serial " in text and text.isascii()


def test_an_access_policy_change_on_sighup_is_audited(core: CoreProcess) -> None:
    policy = core.root / "policy.toml"
    original = policy.read_text()
    granted = '"CN=contractor,O=Elsewhere" = "tenant/demo/admin/contractor"\n'
    mark = newest(core)
    policy.write_text(original + granted)
    core.process.send_signal(signal.SIGHUP)
    wait_until(lambda: records(core, mark), "the audit record of the policy change")
    [added] = records(core, mark)
    assert (added["principal"], added["tenant"], added["source"], added["operation"]) == (
        "kcm-core", "demo", "sighup", "SetAccessPolicy")
    assert added["detail"] == {
        "added": ["CN=contractor,O=Elsewhere -> tenant/demo/admin/contractor"],
        "removed": [], "mappings": 2}
    mark = added["seq"]
    policy.write_text(original)
    core.process.send_signal(signal.SIGHUP)
    wait_until(lambda: records(core, mark), "the audit record of the policy change back")
    [removed] = records(core, mark)
    assert removed["detail"] == {
        "added": [], "removed": ["CN=contractor,O=Elsewhere -> tenant/demo/admin/contractor"],
        "mappings": 1}
