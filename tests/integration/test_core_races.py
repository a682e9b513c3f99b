"""Three real kcm-cores on one PostgreSQL database change the same objects at once: 12
clients (4 per core) send random Activate, Revoke and Destroy requests to the same 100
objects (96 managed keys and 4 service keys).

However the requests interleave, the database serializes them: replayed in audit order,
every change that succeeded is a transition of the KMIP state machine from the state the
object was in (Destroyed never becomes Active or Compromised again, Compromised never
becomes Deactivated), every Wrong Key Lifecycle State refusal was right, and the replay
ends in each object's stored state; the audit chain verifies; and the service keys' event
stream (``l3.state``) replays to the same final states.
"""

from __future__ import annotations

import itertools
import json
import random
import threading
from pathlib import Path

import pytest
import sqlalchemy

from kcm.kmip.attributes import Attribute, Name
from kcm.kmip.enums import (
    NameType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
)
from kcm.kmip.payloads.attribute_ops import AddAttributeRequest
from kcm.kmip.payloads.lifecycle import (
    ActivateRequest,
    DestroyRequest,
    RevocationReason,
    RevokeRequest,
)
from kcm.kmip.tags import Tag
from kcm.link.frames import decode_payload
from kcm.testing.postgres import fresh_database
from kcm.testing.processes import deploy
from kcm.testing.requests import UNDO, activate, encrypt, get
from tests.gateway_support import create_managed, item, request, response

V21 = (2, 1)
CLIENTS_PER_CORE = 4
REQUESTS_PER_CLIENT = 60
_databases = itertools.count()

# The KMIP state machine (KMIP 2.1 §3 and the operations' descriptions), written here from
# the specification, not taken from the server.
PA, A, D, C, DS, DC = (State.PRE_ACTIVE, State.ACTIVE, State.DEACTIVATED, State.COMPROMISED,
                       State.DESTROYED, State.DESTROYED_COMPROMISED)


def transition(state: State, operation: str, compromise: bool) -> State | None:
    """The state ``operation`` moves an object in ``state`` to; None: not allowed."""
    if operation == "ACTIVATE":
        return A if state == PA else None
    if operation == "REVOKE":
        if compromise:  # no transition leaves a compromised object where it is
            return {PA: C, A: C, D: C, DS: DC}.get(state)
        return D if state == A else None
    if operation == "DESTROY":
        return {PA: DS, D: DS, C: DC}.get(state)
    raise AssertionError(operation)


def lifecycle_request(uid: str, compromise: bool, rng: random.Random):
    choice = rng.randrange(3)
    if choice == 0:
        return item(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))
    if choice == 1:
        code = (RevocationReasonCode.KEY_COMPROMISE if compromise
                else RevocationReasonCode.CESSATION_OF_OPERATION)
        return item(Operation.REVOKE, RevokeRequest(
            unique_identifier=uid, revocation_reason=RevocationReason(code=code)))
    return item(Operation.DESTROY, DestroyRequest(unique_identifier=uid))


@pytest.mark.long  # ten seconds or more: the parallel part of `make test` starts it first
def test_concurrent_lifecycle_changes_at_three_cores_stay_on_the_state_machine(
        tmp_path: Path, postgres_url: str) -> None:
    url = fresh_database(postgres_url, f"kcm_races_{next(_databases)}")
    first = deploy(tmp_path / "core1", url)
    for service in ("s0", "s1", "s2", "s3"):
        first.kcm("core", "service", "add", "demo", service)
    cores = [first, first.replica(tmp_path / "core2"), first.replica(tmp_path / "core3")]
    engine = sqlalchemy.create_engine(url)
    try:
        for core in cores:
            core.start()
        managed: list[str] = []
        with first.client("admin") as admin:
            for _ in range(2):
                answer = response(admin.send(request(*[create_managed()] * 48, version=V21)))
                assert {b.result_status for b in answer.batch_items} == {ResultStatus.SUCCESS}
                managed += [b.response_payload.unique_identifier for b in answer.batch_items]
        with engine.connect() as connection:
            service_keys = list(connection.execute(sqlalchemy.text(
                "SELECT uid FROM managed_objects WHERE level = 3 AND service LIKE 's_'"
            )).scalars())
        assert len(managed) == 96 and len(service_keys) == 4
        objects = managed + service_keys
        # Half the objects are only ever revoked for compromise, the others only for
        # cessation: the audit record of a Revoke then says which it was.
        compromised_by = {uid: i % 2 == 0 for i, uid in enumerate(objects)}

        failures: list[str] = []

        def client_run(core_index: int, seed: int) -> None:
            rng = random.Random(seed)
            try:
                with cores[core_index].client("admin") as client:
                    for _ in range(REQUESTS_PER_CLIENT):
                        uid = rng.choice(objects)
                        wire = client.send(request(
                            lifecycle_request(uid, compromised_by[uid], rng), version=V21))
                        [answer] = response(wire).batch_items
                        if answer.result_status != ResultStatus.SUCCESS and \
                                answer.result_reason != ResultReason.WRONG_KEY_LIFECYCLE_STATE:
                            failures.append(f"{uid}: {answer.result_reason} "
                                            f"{answer.result_message}")
            except Exception as e:  # noqa: BLE001
                failures.append(f"client {seed}: {type(e).__name__}: {e}")

        threads = [threading.Thread(target=client_run, args=(i % 3, i))
                   for i in range(3 * CLIENTS_PER_CORE)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert failures == []

        with engine.connect() as connection:
            audit = connection.execute(sqlalchemy.text(
                "SELECT seq, operation, object_ids, result_status, result_reason "
                "FROM audit_log WHERE operation IN ('ACTIVATE', 'REVOKE', 'DESTROY') "
                "ORDER BY seq")).all()
            stored = dict(connection.execute(sqlalchemy.text(
                "SELECT uid, state FROM managed_objects")).all())
            events = connection.execute(sqlalchemy.text(
                "SELECT seq, payload FROM outbox WHERE kind = 'l3.state' ORDER BY seq")).all()
    finally:
        engine.dispose()
        for core in cores:
            core.stop()

    assert len(audit) >= 3 * CLIENTS_PER_CORE * REQUESTS_PER_CLIENT
    model = {uid: PA for uid in managed} | {uid: A for uid in service_keys}
    changes = refusals = 0
    for seq, operation, object_ids, status, reason in audit:
        [uid] = json.loads(object_ids)
        after = transition(model[uid], operation, compromised_by[uid])
        if status == "SUCCESS":
            assert after is not None, (seq, operation, uid, model[uid])
            model[uid] = after
            changes += 1
        elif reason == ResultReason.WRONG_KEY_LIFECYCLE_STATE.name:
            assert after is None, (seq, operation, uid, model[uid], reason)
            refusals += 1
    assert changes > 100 and refusals > 100, (changes, refusals)
    assert {uid: State(stored[uid]) for uid in objects} == model

    replayed = {uid: A for uid in service_keys}
    for _, payload in events:
        fields = decode_payload(payload)
        if fields["unique_identifier"] in replayed:
            replayed[fields["unique_identifier"]] = State(fields["state"])
    assert replayed == {uid: model[uid] for uid in service_keys}
    assert cores[2].kcm("audit", "verify").returncode == 0


def test_a_batch_undone_at_one_core_does_not_hide_another_cores_destroy(
        tmp_path: Path, postgres_url: str) -> None:
    """Core 1 loads a key it has just changed, then the batch is undone; core 2 destroys
    the key, which gives the row the revision the undone change had. Core 1 must see the
    Destroy, not serve the key as its undone batch saw it (its object cache keeps only
    committed content)."""
    url = fresh_database(postgres_url, f"kcm_races_{next(_databases)}")
    one = deploy(tmp_path / "core1", url)
    two = one.replica(tmp_path / "core2")
    one.start()
    two.start()
    try:
        with one.client("app") as c1, two.client("app") as c2:
            [made] = response(c1.send(request(create_managed(), version=V21))).batch_items
            uid = made.response_payload.unique_identifier
            name = Attribute.of(Tag.NAME, Name(value="n1",
                                               type=NameType.UNINTERPRETED_TEXT_STRING))
            undone = response(c1.send(request(
                activate(uid),
                item(Operation.ADD_ATTRIBUTE, AddAttributeRequest(unique_identifier=uid,
                                                                  attribute=name)),
                encrypt(uid, b"record"), get("no-such-object"),
                version=V21, continuation=UNDO))).batch_items
            assert [b.result_status for b in undone[:3]] == [ResultStatus.OPERATION_UNDONE] * 3
            [destroyed] = response(c2.send(request(
                item(Operation.DESTROY, DestroyRequest(unique_identifier=uid)),
                version=V21))).batch_items
            assert destroyed.result_status == ResultStatus.SUCCESS, destroyed.result_message
            [got] = response(c1.send(request(get(uid), version=V21))).batch_items
            assert got.result_reason == ResultReason.OBJECT_DESTROYED, got.result_status
    finally:
        one.stop()
        two.stop()
