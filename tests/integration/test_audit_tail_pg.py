"""Two stores (two kcm-cores) appending to one PostgreSQL audit chain at once: each append
holds the head marker to the newest record under the writers' lock, and the other core's
commits never trip it; a tail cut meanwhile is refused by both (review 6, helper "ha")."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import delete, func, select

from kcm.core.audit import AuditChainError, AuditEvent, append_audit, append_records, verify_chain
from kcm.core.keys import derive_audit_key
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from kcm.core.store.schema import AuditLog
from kcm.testing.postgres import fresh_database

_databases = itertools.count()


@pytest.fixture
def two_cores(postgres_url: str) -> Iterator[tuple[Store, Store]]:
    url = fresh_database(postgres_url, f"kcm_ha_audit_{next(_databases)}")
    upgrade(url)
    stores = (Store(url, threads=2), Store(url, threads=2))
    for store in stores:
        store.audit_key = derive_audit_key(bytes(32))
    yield stores
    for store in stores:
        store.engine.dispose()


def _event(core: int, n: int) -> AuditEvent:
    return AuditEvent(principal=f"core{core}", operation="Get", result_status="SUCCESS",
                      correlation_id=f"{core}-{n}")


def test_two_cores_appending_at_once_keep_one_chain(two_cores: tuple[Store, Store]) -> None:
    errors: list[BaseException] = []

    def appender(core: int, store: Store, lean: bool) -> None:
        # (lean transactions on the store's one writer connection: from one thread only)
        try:
            for n in range(40):
                if lean and n % 2:
                    store._write_lean_sync(lambda t, n=n: append_records(
                        t, [_event(core, n), _event(core, n + 1000)]))
                else:
                    store.run_sync(lambda s, n=n: append_audit(s, _event(core, n)))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=appender, args=(index, store, lean))
               for index, store in enumerate(two_cores) for lean in (True, False)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    first = two_cores[0]
    assert first.run_sync(lambda s: s.scalar(select(func.count()).select_from(AuditLog))) == 200
    result = first.run_sync(verify_chain)
    assert (result.ok, result.records_checked) == (True, 200)

    # The newest records deleted, the head kept: neither core appends over the cut.
    first.run_sync(lambda s: s.execute(delete(AuditLog).where(AuditLog.seq > 190)))
    for store in two_cores:
        with pytest.raises(AuditChainError, match="names record 200, but the newest record is "
                                                  "190"):
            store.run_sync(lambda s: append_audit(s, _event(9, 0)))
        with pytest.raises(AuditChainError, match="names record 200"):
            store._write_lean_sync(lambda t: append_records(t, [_event(9, 1)]))
    assert first.run_sync(lambda s: s.scalar(select(func.max(AuditLog.seq)))) == 190
