"""A tenant key (L2) that stops being Active stops wrapping at every core at once: two real
kcm-cores on one PostgreSQL database; the tenant's L2 is revoked (Key Compromise) at the
first, and a Create at the second right after is refused, although the second looked the
L2 up as current less than CURRENT_L2_TTL before (each write transaction reads the count
of tenant keys retired with the number a Create reads anyway). So too after a rotation:
the Create is wrapped under the new L2."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy

from kcm.core.keyring import CURRENT_L2_TTL
from kcm.kmip.enums import Operation, ResultReason, ResultStatus, RevocationReasonCode
from kcm.kmip.payloads import RevocationReason, RevokeRequest
from kcm.testing.requests import create_managed, item, request, response
from tests.pg_cores_support import active_l2, two_cores

V21 = (2, 1)


def _one(client, batch_item):
    [answer] = response(client.send(request(batch_item, version=V21))).batch_items
    return answer


def test_a_create_at_another_core_right_after_a_key_compromise_is_not_wrapped_under_it(
        tmp_path: Path, postgres_url: str) -> None:
    with two_cores(tmp_path, postgres_url, "kcm_l2_compromise") as (cores, engine):
        l2 = active_l2(engine)
        with cores[1].client("app") as app, cores[0].client("admin") as admin:
            # The second core looks the L2 up as current (and would keep it for 5 s).
            assert _one(app, create_managed()).result_status == ResultStatus.SUCCESS
            looked_up = time.monotonic()
            revoked = _one(admin, item(Operation.REVOKE, RevokeRequest(
                unique_identifier=l2, revocation_reason=RevocationReason(
                    code=RevocationReasonCode.KEY_COMPROMISE))))
            assert revoked.result_status == ResultStatus.SUCCESS, revoked.result_message

            answer = _one(app, create_managed())
            elapsed = time.monotonic() - looked_up

        assert elapsed < CURRENT_L2_TTL / 5  # well within the look-up's lifetime
        assert answer.result_reason == ResultReason.PERMISSION_DENIED, answer.result_message
        assert "no active tenant key" in answer.result_message
        with engine.connect() as connection:
            wrapped_after = connection.execute(sqlalchemy.text(
                "SELECT count(*) FROM managed_objects WHERE tenant = 'demo' AND level IS NULL"
            )).scalar_one()
        assert wrapped_after == 1  # the Create before the Revoke only


def test_a_create_at_another_core_right_after_a_rotation_is_wrapped_under_the_new_key(
        tmp_path: Path, postgres_url: str) -> None:
    with two_cores(tmp_path, postgres_url, "kcm_l2_rotation") as (cores, engine):
        old = active_l2(engine)
        with cores[1].client("app") as app:
            # The second core looks the L2 up as current (and would keep it for 5 s).
            assert _one(app, create_managed()).result_status == ResultStatus.SUCCESS
            looked_up = time.monotonic()
            # The command (not a core), in this process: it acts within the 5 s even on a
            # loaded machine, where an interpreter's start alone can take that long.
            cores[0].kcm_here("core", "tenant", "rotate", "demo")
            answer = _one(app, create_managed())
            elapsed = time.monotonic() - looked_up
        assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
        assert elapsed < CURRENT_L2_TTL, elapsed  # within the look-up's lifetime
        new = active_l2(engine)
        assert new != old
        with engine.connect() as connection:
            wrapped_by = connection.execute(sqlalchemy.text(
                "SELECT wrapped_by FROM managed_objects WHERE uid = :uid"),
                {"uid": answer.response_payload.unique_identifier}).scalar_one()
        assert wrapped_by == new
