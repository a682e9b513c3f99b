"""The row MAC in the store (kcm.core.store.row_seal, kcm.core.row_mac_upgrade), SQLite and
PostgreSQL: every write checks the row as read before it MACs the new one, through the
Core statements and through the ORM alike; the state sweeper's walk gives the rows of
earlier releases their MAC in bounded batches, once, and none while they are refused."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from kcm.core.keyring import WrappingMismatch
from kcm.core.row_mac_upgrade import RowMacUpgrade, Sealed, rows_without_mac
from kcm.core.store import repository
from kcm.core.store.schema import ManagedObject
from tests.core_support import CoreHarness, demo_app_harness, own_store
from tests.integration.test_core_objects import register


@pytest.fixture(params=["sqlite", "postgresql"])
def core(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CoreHarness]:
    with demo_app_harness(own_store(request, tmp_path, "row_seal")) as harness:
        yield harness


def _tamper(core: CoreHarness, uid: str) -> None:
    """``uid`` made Active in the database, its MAC as it was."""
    core.store.run_sync(lambda s: s.execute(text(
        "UPDATE managed_objects SET state = 2, revision = revision + 1 WHERE uid = :uid"),
        {"uid": uid}))


def _macs(core: CoreHarness) -> dict[str, bytes | None]:
    return dict(core.store.run_sync(lambda s: s.execute(
        select(ManagedObject.uid, ManagedObject.row_mac)).all()))


def test_every_row_written_has_its_mac(core: CoreHarness) -> None:
    uid = register(core)
    macs = _macs(core)
    assert macs and None not in macs.values()
    stored = core.store.run_sync(lambda s: repository.object_columns(s, "demo", uid))
    assert core.keyring.row_seal is not None
    assert core.keyring.row_seal.why_refused(stored) is None


def test_a_write_over_a_changed_row_is_refused_not_macd(core: CoreHarness) -> None:
    first, second = register(core), register(core)
    _tamper(core, first)
    _tamper(core, second)
    before = core.keyring.mismatches

    def with_core_statement(session) -> None:  # noqa: ANN001
        columns = repository.object_columns(session, "demo", first)
        repository.update_columns(session, columns, last_change_date=1)

    def through_the_orm(session) -> None:  # noqa: ANN001
        row = session.scalars(select(ManagedObject).where(ManagedObject.uid == second)).one()
        repository.update_object(session, row, last_change_date=1)

    for write in (with_core_statement, through_the_orm):
        with pytest.raises(WrappingMismatch, match="row MAC does not match"):
            core.store.run_sync(write)
    assert core.keyring.mismatches == before + 2
    # Nothing was written: each still refused.
    for uid in (first, second):
        stored = core.store.run_sync(lambda s, uid=uid: repository.object_columns(
            s, "demo", uid))
        assert stored.last_change_date != 1
        assert core.keyring.row_seal.why_refused(stored) is not None


def test_the_walk_macs_the_rows_of_an_earlier_release_in_bounded_batches_once(
        core: CoreHarness) -> None:
    for _ in range(6):
        register(core)
    total = core.store.run_sync(lambda s: s.execute(
        update(ManagedObject).values(row_mac=None)).rowcount)
    assert total >= 8 and core.store.run_sync(rows_without_mac) == total
    upgrade = RowMacUpgrade(core.keyring, window=4, batch=2, pause=60.0)
    now, done, steps = time.time(), [], 0
    while True:
        outcome = core.store.run_sync(lambda s: upgrade.step(s, now))
        steps += 1
        done += outcome
        assert all(isinstance(o, Sealed) and o.count <= 2 for o in outcome)
        if upgrade._cursor is None:
            break
        assert steps < 100
    assert sum(o.count for o in done) == total and upgrade.left == 0
    assert core.store.run_sync(rows_without_mac) == 0
    seal = core.keyring.row_seal
    rows = core.store.run_sync(lambda s: [repository.ObjectColumns(*r) for r in s.execute(
        select(*ManagedObject.__table__.columns))])
    assert all(seal.why_refused(r) is None for r in rows)
    # Once: the next walk (after its pause) finds nothing to do.
    assert core.store.run_sync(lambda s: upgrade.step(s, now + 61)) == []
    assert core.store.run_sync(lambda s: s.scalar(select(func.count()).select_from(
        ManagedObject))) == total


def test_no_row_is_macd_while_rows_without_one_are_refused(core: CoreHarness) -> None:
    uid = register(core)
    core.store.run_sync(lambda s: s.execute(update(ManagedObject).where(
        ManagedObject.uid == uid).values(row_mac=None)))
    core.keyring.accept_unsealed = False
    try:
        upgrade = RowMacUpgrade(core.keyring, window=100, batch=10)
        assert core.store.run_sync(lambda s: upgrade.step(s, time.time())) == []
        assert core.store.run_sync(rows_without_mac) == 1
        with pytest.raises(WrappingMismatch, match="accept_rows_without_mac is false"):
            core.store.run_sync(lambda s: repository.update_columns(
                s, repository.object_columns(s, "demo", uid), last_change_date=1))
    finally:
        core.keyring.accept_unsealed = True


def test_a_row_the_groups_session_holds_is_checked_when_a_request_reads_it(
        core: CoreHarness) -> None:
    """A group commit's requests share its session with the state sweeper's job, whose
    steps read rows by their columns (the managed rotation's by the ``rotate_due`` the MAC
    leaves out): a row such a step holds, unchecked, is checked when a request after it
    reads the object, not served as the database writer left it (a revoked key made Active
    again, its material still held unwrapped here: an Encrypt with it succeeded)."""
    from kcm.core.attribute_blob import decode_attributes, encode_attributes
    from kcm.core.audit import savepoint
    from kcm.kmip.attributes import Attribute
    from kcm.kmip.enums import Operation, ResultStatus, RevocationReasonCode, State
    from kcm.kmip.payloads.lifecycle import RevocationReason, RevokeRequest
    from kcm.kmip.tags import Tag
    from kcm.testing.requests import activate, create_managed, encrypt, item, request, response
    from tests.e2e_support import send_v21, succeeded_v21

    app = core.client()
    uid = succeeded_v21(app, create_managed())[0].unique_identifier
    succeeded_v21(app, activate(uid), encrypt(uid))  # (unwrapped: kept in the clear)
    succeeded_v21(app, item(Operation.REVOKE, RevokeRequest(
        unique_identifier=uid, revocation_reason=RevocationReason(
            code=RevocationReasonCode.CESSATION_OF_OPERATION))))

    def tamper(session) -> None:  # noqa: ANN001
        blob = session.scalar(select(ManagedObject.attributes).where(ManagedObject.uid == uid))
        attributes = [a for a in decode_attributes(blob)
                      if a.tag not in (Tag.STATE, Tag.DEACTIVATION_DATE)]
        session.execute(text(
            "UPDATE managed_objects SET state = 2, deactivation_date = NULL, rotate_due = 0, "
            "attributes = :blob WHERE uid = :uid"), {"uid": uid, "blob": encode_attributes(
                [*attributes, Attribute.of(Tag.STATE, State.ACTIVE)])})

    core.store.run_sync(tamper)
    [alone] = send_v21(app, encrypt(uid))
    assert alone.result_status == ResultStatus.OPERATION_FAILED
    now = int(time.time())

    def group(session) -> bytes:  # noqa: ANN001
        """Two jobs of one group, each in its savepoint: a step that reads the row by its
        columns (and holds it), then the request."""
        with savepoint(session):
            held = session.scalars(select(ManagedObject).where(
                ManagedObject.rotate_due <= now, ManagedObject.state == 2,
                ManagedObject.level.is_(None))).all()
            assert [row.uid for row in held] == [uid]
        with savepoint(session):
            return core.handler._respond_in(session, request(encrypt(uid), version=(2, 1)),
                                            core.caller(), now, None)

    before = core.keyring.mismatches
    [answer] = response(core.store.run_sync(group)).batch_items
    assert answer.result_status == ResultStatus.OPERATION_FAILED, answer
    assert answer.result_message.startswith("the stored object failed its integrity check")
    assert core.keyring.mismatches == before + 1


def test_a_revision_put_back_does_not_serve_another_cores_cached_object(
        core: CoreHarness) -> None:
    """Two cores on one database: a key one has cached, revoked at the other, then only its
    revision put back in the database (a column the row MAC leaves out). The first core's
    object cache is stamped with the row MAC too: it reads the row again, and the key is
    Deactivated there as well (an Encrypt with it succeeded from the cache)."""
    from kcm.core.request_handler import CoreRequestHandler
    from kcm.core.store.engine import Store
    from kcm.kmip.enums import Operation, ResultStatus, RevocationReasonCode
    from kcm.kmip.payloads.lifecycle import RevocationReason, RevokeRequest
    from kcm.testing.requests import activate, create_managed, encrypt, item
    from tests.core_support import InProcessClient
    from tests.e2e_support import send_v21, succeeded_v21

    other = Store(core.store.url, threads=2)
    other.audit_key, other.row_seal = core.store.audit_key, core.keyring.row_seal
    other.startService()
    try:
        here = core.client()
        there = InProcessClient(CoreHarness(other, core.keyring, CoreRequestHandler(
            other, core.keyring, clock=time.time)), core.caller())
        uid = succeeded_v21(here, create_managed())[0].unique_identifier
        succeeded_v21(here, activate(uid))
        succeeded_v21(there, encrypt(uid))  # (cached there)
        succeeded_v21(here, item(Operation.REVOKE, RevokeRequest(
            unique_identifier=uid, revocation_reason=RevocationReason(
                code=RevocationReasonCode.CESSATION_OF_OPERATION))))
        core.store.run_sync(lambda s: s.execute(text(
            "UPDATE managed_objects SET revision = revision - 1 WHERE uid = :uid"),
            {"uid": uid}))
        [answer] = send_v21(there, encrypt(uid))
        assert answer.result_status == ResultStatus.OPERATION_FAILED
        assert "DEACTIVATED" in answer.result_message
    finally:
        other.stopService()


def test_a_column_set_on_an_expired_row_is_checked_against_the_row_as_stored(
        core: CoreHarness) -> None:
    """A row expired in the session (as a savepoint's rollback leaves it), then a column
    set without reading it: the ORM holds no value of that column as read. The flush checks
    the row as the database holds it, so it does not MAC what a database writer put in its
    other columns (it did: the check was skipped)."""
    uid = register(core)
    before = core.keyring.mismatches

    def write(session) -> None:  # noqa: ANN001
        row = session.scalars(select(ManagedObject).where(ManagedObject.uid == uid)).one()
        session.expire(row)
        session.execute(text("UPDATE managed_objects SET cryptographic_usage_mask = 65535 "
                             "WHERE uid = :uid"), {"uid": uid})
        row.last_change_date = 1
        session.flush()

    with pytest.raises(WrappingMismatch, match="row MAC does not match"):
        core.store.run_sync(write)
    assert core.keyring.mismatches == before + 1
    stored = core.store.run_sync(lambda s: repository.object_columns(s, "demo", uid))
    assert stored.last_change_date != 1
