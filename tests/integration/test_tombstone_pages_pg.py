"""Tombstone pages (link version 9) over a PostgreSQL store, where a read transaction is READ
COMMITTED: each statement of a page sees what committed before it, so a version destroyed,
and its tombstones deleted by the state sweeper, between the page's look at the version
and its read of the tombstones must be answered Object Destroyed, never a short last page
(the gateway would hold the version whole without the deleted tombstones until the
version's ``l3.state`` event came)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import create_engine, delete, event, update

from kcm.core.context import Caller
from kcm.core.store.schema import STATE_DESTROYED, L4Tombstone, ManagedObject
from kcm.core.tombstone_pages import TombstonePage, VersionDestroyed, tombstone_page
from kcm.kmip.enums import ResultReason
from tests.core_support import CoreHarness, service_principal
from tests.integration.test_service_key_refresh_pg import pg_core  # noqa: F401  (fixture)
from tests.unit.test_link_tombstone_pages import revoke, uid_of

APP = service_principal()


@pytest.mark.parametrize("removed", [False, True], ids=["destroyed", "tenant removed"])
def test_a_version_destroyed_and_swept_during_a_page_read_is_answered_destroyed(
        pg_core: CoreHarness, removed: bool) -> None:  # noqa: F811
    core = pg_core
    uid = uid_of(core)
    revoke(core, uid, 5)
    engine = core.store.engine
    other_engine = create_engine(engine.url.render_as_string(hide_password=False))
    swept: list[bool] = []

    def destroy_and_sweep() -> None:
        # Another core's destroy, then its state sweeper, committed between two
        # statements of the page's read transaction.
        with other_engine.connect() as other, other.begin():
            other.execute(update(ManagedObject).where(ManagedObject.uid == uid)
                          .values(state=STATE_DESTROYED))
            other.execute(delete(L4Tombstone).where(L4Tombstone.l3_uid == uid))
            if removed:  # (its tenant's removal deletes the version's row too)
                other.execute(delete(ManagedObject).where(ManagedObject.uid == uid))
        swept.append(True)

    def before(conn, cursor, statement, parameters, context, executemany) -> None:
        if not swept and "FROM l4_tombstones" in statement:
            destroy_and_sweep()

    event.listen(engine, "before_cursor_execute", before)
    try:
        answer = core.store.run_sync(lambda session: tombstone_page(
            session, core.keyring, Caller(APP, "gw"), uid, None, now=int(time.time())),
            write=False)
    finally:
        event.remove(engine, "before_cursor_execute", before)
        other_engine.dispose()
    assert swept
    assert not isinstance(answer, TombstonePage), answer
    assert isinstance(answer, VersionDestroyed)
    assert answer.reason == ResultReason.OBJECT_DESTROYED


def test_a_page_on_postgresql_is_in_token_id_order_after_the_cursor(
        pg_core: CoreHarness) -> None:  # noqa: F811
    """The frame's order is the code point order of the TokenIds, which the page's ORDER BY
    and cursor follow in the database's collation: alike for lowercase hex, the only
    TokenIds there are (the test cluster's collation is C; an ICU en-US database orders
    them alike too, where it would not order mixed case or punctuation so)."""
    core = pg_core
    uid = uid_of(core)
    token_ids = sorted(revoke(core, uid, 1500))

    def page(after: str | None) -> TombstonePage:
        answer = core.store.run_sync(lambda session: tombstone_page(
            session, core.keyring, Caller(APP, "gw"), uid, after, now=int(time.time())),
            write=False)
        assert isinstance(answer, TombstonePage)
        return answer

    first = page(None)
    assert first.token_ids == token_ids[:1000] and first.more
    last = page(first.token_ids[-1])
    assert last.token_ids == token_ids[1000:] and not last.more
