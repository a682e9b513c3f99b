"""A running kcm-core with ``destroyed_retention`` (here 2 s) deletes the objects destroyed
longer ago: Get, Get Attributes and Locate then answer as for an object that never was,
younger and live ones stay, the purge is audited; and the L4 tombstones of a destroyed
service key are deleted while every token under it is still refused, at the core and
through a gateway."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kcm.kmip.enums import Operation, ResultReason, RevocationReasonCode
from kcm.kmip.payloads import DestroyRequest, LocateRequest, RevocationReason, RevokeRequest
from kcm.kmip.tags import Tag
from kcm.testing.requests import create_managed, get, get_attributes
from tests.core_support import swept_core
from tests.e2e_support import (
    GatewayProcess,
    audit_rows,
    refusals,
    send_v21,
    succeeded_v21,
    wait_until,
)
from tests.gateway_support import create_l4, encrypt, item

RETENTION = 2


def _destroy(uid: str) -> object:
    return item(Operation.DESTROY, DestroyRequest(unique_identifier=uid))


def _revoke(uid: str) -> object:
    return item(Operation.REVOKE, RevokeRequest(
        unique_identifier=uid,
        revocation_reason=RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION)))


def _rows(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db) as connection:
        return connection.execute(sql, args).fetchall()


@pytest.mark.long  # ten seconds or more
def test_old_destroyed_objects_are_purged_and_tokens_under_a_destroyed_l3_stay_refused(
        tmp_path: Path) -> None:
    core = swept_core(tmp_path / "core", f"destroyed_retention = {RETENTION}")
    db = tmp_path / "core" / "kcm.db"
    core.start()
    gateway = GatewayProcess(tmp_path / "gateway", core)
    try:
        gateway.start()
        gateway.wait_linked()
        with gateway.client("app") as app:
            [revoked, other] = succeeded_v21(app, create_l4(), create_l4())
            succeeded_v21(app, _revoke(revoked.unique_identifier))
        [(l3,)] = _rows(db, "SELECT l3_uid FROM l4_tombstones")
        with core.client("admin") as admin:
            [old, live, missing_probe] = succeeded_v21(
                admin, create_managed(), create_managed(), create_managed())
            succeeded_v21(admin, _destroy(old.unique_identifier),
                          _destroy(missing_probe.unique_identifier))
            succeeded_v21(admin, _revoke(l3), _destroy(l3))
        wait_until(lambda: not _rows(db, "SELECT 1 FROM l4_tombstones"),
                   "the tombstones of the destroyed L3 to be deleted", timeout=5)
        wait_until(lambda: not _rows(db, "SELECT 1 FROM managed_objects WHERE uid = ?",
                                     old.unique_identifier),
                   "the object destroyed first to be purged", timeout=10)
        with core.client("admin") as admin:
            [young] = succeeded_v21(admin, create_managed())
            succeeded_v21(admin, _destroy(young.unique_identifier))
            for uid in (old.unique_identifier, "never-was"):
                answers = send_v21(admin, get(uid), get_attributes(uid, Tag.STATE))
                assert refusals(answers) == refusals(send_v21(
                    admin, get("never-was"), get_attributes("never-was", Tag.STATE)))
                assert refusals(answers)[0] is not None
            [found] = succeeded_v21(admin, item(Operation.LOCATE, LocateRequest()))
            assert old.unique_identifier not in found.unique_identifiers
            assert live.unique_identifier in found.unique_identifiers, "live"
            # Destroyed lately: still described (not past the retention).
            succeeded_v21(admin, get_attributes(young.unique_identifier, Tag.STATE))
        for table in ("object_names", "object_groups", "object_attribute_keys"):
            assert not _rows(db, f"SELECT 1 FROM {table} WHERE uid = ?", old.unique_identifier)
        purges = [row for row in audit_rows(core) if row["operation"] == "PurgeDestroyed"]
        assert purges and purges[0]["result_status"] == "SUCCESS"
        assert "destroyed_retention) deleted" in core.log.read_text()
        # Tokens under the destroyed L3, revoked or not, are refused alike everywhere.
        for client in (core.client("app"), gateway.client("app")):
            with client as c:
                assert refusals(send_v21(c, encrypt(revoked.unique_identifier),
                                         encrypt(other.unique_identifier))) == [
                    ResultReason.OBJECT_DESTROYED] * 2
    finally:
        gateway.stop()
        core.stop()
