"""Two kcm-cores on one PostgreSQL database whose rows are changed behind their backs: a
row MACed at one core is taken at the other (one key for the database, derived from L1);
the tenant key (L2) revoked as compromised at one core and made Active again in the
database is used to wrap nothing at either (kcm.core.store.row_seal,
Keyring.check_row on each look-up of a tenant's current L2)."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy

from kcm.core.store.schema import STATE_ACTIVE
from kcm.kmip.enums import Operation, ResultReason, ResultStatus, RevocationReasonCode
from kcm.kmip.payloads import RevocationReason, RevokeRequest
from kcm.testing.requests import activate, create_managed, encrypt, get, item, request, response
from tests.pg_cores_support import active_l2, two_cores


def _one(client, batch_item):  # noqa: ANN001, ANN202
    return response(client.send(request(batch_item))).batch_items[0]


def test_a_compromised_tenant_key_made_active_in_the_database_wraps_nothing(
        tmp_path: Path, postgres_url: str) -> None:
    with two_cores(tmp_path, postgres_url, "kcm_row_mac") as (cores, engine):
        l2 = active_l2(engine)
        with cores[0].client("app") as app1, cores[1].client("app") as app2, \
                cores[0].client("admin") as admin:
            made = _one(app1, create_managed())
            assert made.result_status == ResultStatus.SUCCESS, made.result_message
            uid = made.response_payload.unique_identifier
            # Made and MACed at the first core, used at the second.
            for answer in (_one(app2, activate(uid)), _one(app2, get(uid)),
                           _one(app1, encrypt(uid))):
                assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
            # The second core has the L2 in memory (it wrapped under it just now).
            assert _one(app2, create_managed()).result_status == ResultStatus.SUCCESS
            revoked = _one(admin, item(Operation.REVOKE, RevokeRequest(
                unique_identifier=l2, revocation_reason=RevocationReason(
                    code=RevocationReasonCode.KEY_COMPROMISE))))
            assert revoked.result_status == ResultStatus.SUCCESS, revoked.result_message
            with engine.begin() as connection:
                connection.execute(sqlalchemy.text(
                    "UPDATE managed_objects SET state = :active, revision = revision + 1 "
                    "WHERE uid = :uid"), {"active": STATE_ACTIVE, "uid": l2})
            for app in (app1, app2):
                answer = _one(app, create_managed())
                assert answer.result_status == ResultStatus.OPERATION_FAILED
                assert answer.result_reason == ResultReason.GENERAL_FAILURE, \
                    answer.result_message
                assert "failed its integrity check" in answer.result_message
        with engine.connect() as connection:
            wrapped = connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM managed_objects WHERE wrapped_by = :l2"),
                {"l2": l2}).scalar_one()
        assert wrapped == 3  # the two Creates before the Revoke, and the service key
        for core in cores:
            assert re.search(rf"object {l2} of tenant demo refused: its row does not match "
                             r"its wrapping \(its row MAC does not match\)",
                             core.log.read_text())
