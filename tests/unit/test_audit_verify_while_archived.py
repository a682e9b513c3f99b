"""A paged verify that runs while an archive moves the base and deletes records behind it
does not take the gap for tampering: it walks the chain again from the new base."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from kcm.core.audit import append_audit, verify_chain_paged
from kcm.core.audit_archive import archive_end, delete_below_base, mark_base
from kcm.core.store.engine import Store
from kcm.core.store.migrate import upgrade
from tests.unit.test_audit import AUDIT_KEY, _event


def _store(tmp_path: Path, records: int) -> Store:
    url = f"sqlite:///{tmp_path / 'v.db'}"
    upgrade(url)
    store = Store(url)
    store.audit_key = AUDIT_KEY
    store.run_sync(lambda s: [append_audit(s, _event(correlation_id=f"c-{n}"))
                              for n in range(records)])
    return store


def test_a_verify_during_an_archive_walks_again_from_the_new_base(tmp_path: Path) -> None:
    store = _store(tmp_path, 100)
    reads = [0]

    def read(fn: Any) -> Any:
        reads[0] += 1
        if reads[0] == 3:  # between verify's pages, an archive up to 50 completes
            end = store.run_sync(lambda s: archive_end(s, 50), write=False)
            assert store.run_sync(lambda s: mark_base(s, end))
            while store.run_sync(lambda s: delete_below_base(s)):
                pass
        return store.run_sync(fn, write=False)

    try:
        result = verify_chain_paged(read, page=10)
    finally:
        store.stopService()
    assert result.ok, result
    assert result.base_seq == 50
