"""Conditional fetches (link version 8) over a PostgreSQL store: the core's judgement runs in
a real read-only transaction there (SET TRANSACTION READ ONLY: a rule that wrote would
fail), an unchanged refresh writes no FetchServiceKey record, and a change no event told
the gateway of is fetched in full, audited. The gateway's L3 cache is linked to the core's
link server in memory (tests/unit/test_link_conditional_fetch.py)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from kcm.core.store import repository
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.testing.postgres import fresh_database
from tests.core_support import CoreHarness, demo_app_harness, service_principal
from tests.unit.test_link_conditional_fetch import Linked

_databases = itertools.count()
APP = service_principal()


@pytest.fixture
def pg_core(postgres_url: str) -> Iterator[CoreHarness]:
    """The ``core`` fixture's harness (demo/app provisioned) on a fresh PostgreSQL database."""
    url = fresh_database(postgres_url, f"kcm_refresh_{os.getpid()}_{next(_databases)}")
    upgrade(url)
    store = Store(url)
    store.startService()
    try:
        with demo_app_harness(store) as harness:
            yield harness
    finally:
        store.engine.dispose()


def test_an_unchanged_refresh_is_a_read_and_a_change_is_fetched_audited(
        pg_core: CoreHarness) -> None:
    linked = Linked(pg_core)
    linked.cache.prewarm("demo", "app", APP)
    linked.pump.flush()
    key = linked.cache.current("demo", "app")
    linked.refresh()
    linked.refresh()
    assert linked.factory.refreshes == {"unchanged": 2, "changed": 0}
    assert linked.store.calls[1:] == [("run", False), ("run", False)]
    assert len(linked.audited()) == 1
    pg_core.store.run_sync(lambda session: repository.add_tombstone(
        session, token_id="ab" * 16, tenant="demo", l3_uid=key.uid, reason="revoked"))
    linked.refresh()
    assert linked.cache.is_tombstoned("ab" * 16)
    assert linked.factory.refreshes == {"unchanged": 2, "changed": 1}
    assert [row.result_status for row in linked.audited()] == ["SUCCESS", "SUCCESS"]
    linked.refresh()
    assert linked.factory.refreshes == {"unchanged": 3, "changed": 1}
    assert linked.cache.current("demo", "app") == key


def test_a_standby_never_answers_unchanged(pg_core: CoreHarness, monkeypatch) -> None:
    """A core on a PostgreSQL standby (a demoted primary that no longer replicates, or one
    reached after a failover without ``target_session_attrs``) may read what the primary
    has since changed: its refreshes are fetched in full (a write, which a standby refuses,
    so the gateway stops using the key at ``max_stale``, as before conditional fetches).
    The standby is stood for by the judgement's own question answered true: this server
    is the primary, as the first refresh shows."""
    from sqlalchemy import text

    from kcm.core import service_keys

    linked = Linked(pg_core)
    linked.cache.prewarm("demo", "app", APP)
    linked.pump.flush()
    linked.refresh()
    assert linked.factory.refreshes == {"unchanged": 1, "changed": 0}
    monkeypatch.setattr(service_keys, "_IN_RECOVERY", text("SELECT true"))
    linked.refresh()
    assert linked.factory.refreshes == {"unchanged": 1, "changed": 1}
    assert [row.result_status for row in linked.audited()] == ["SUCCESS", "SUCCESS"]
