"""A database's deployment id and restore generation (kcm.core.lineage)."""

from __future__ import annotations

import shutil
from pathlib import Path

from kcm.core.l1 import L1_CHECK_META
from kcm.core.lineage import (
    GENERATION_META,
    Lineage,
    deployment_id,
    ensure_lineage,
    mark_restored,
    read_lineage,
)
from kcm.core.store.engine import Store
from kcm.core.store.repository import set_meta
from tests.core_support import _migrated_schema


def _store(tmp_path: Path, name: str = "kcm.db") -> Store:
    shutil.copy2(_migrated_schema(), tmp_path / name)
    return Store(f"sqlite:///{tmp_path / name}")


def test_a_database_gets_one_deployment_id_which_stays(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        assert store.run_sync(read_lineage, write=False) is None
        first = store.run_sync(ensure_lineage)
        assert len(first.deployment) == 32 and first.generation == 0
        assert store.run_sync(ensure_lineage) == first
        assert store.run_sync(read_lineage, write=False) == first
    finally:
        store.stopService()


def test_a_restore_raises_the_generation_of_the_copy_only(tmp_path: Path) -> None:
    original = _store(tmp_path)
    try:
        lineage = original.run_sync(ensure_lineage)
    finally:
        original.stopService()
    shutil.copy2(tmp_path / "kcm.db", tmp_path / "copy.db")
    copy = Store(f"sqlite:///{tmp_path / 'copy.db'}")
    original = Store(f"sqlite:///{tmp_path / 'kcm.db'}")
    try:
        assert copy.run_sync(mark_restored) == Lineage(lineage.deployment, 1)
        assert copy.run_sync(mark_restored) == Lineage(lineage.deployment, 2)
        assert copy.run_sync(read_lineage) == Lineage(lineage.deployment, 2)
        assert original.run_sync(read_lineage) == lineage
    finally:
        copy.stopService()
        original.stopService()


def test_a_generation_that_is_not_a_number_counts_as_none(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        store.run_sync(ensure_lineage)
        store.run_sync(lambda s: set_meta(s, GENERATION_META, "x"))
        assert store.run_sync(read_lineage).generation == 0
        assert str(store.run_sync(mark_restored)).endswith("restore generation 1")
    finally:
        store.stopService()


def test_the_deployment_id_is_the_l1_keys_so_a_copy_without_one_gets_the_originals(
        tmp_path: Path) -> None:
    """Two databases of one L1 key (an original and a copy backed up before it had an id)
    are given one deployment id; another L1 key's database another; a database with no L1
    check value yet a random one."""
    stores = [_store(tmp_path, f"{name}.db") for name in ("original", "copy", "other", "new")]
    try:
        for store, kcv in zip(stores, ("abc123", "abc123", "def456"), strict=False):
            store.run_sync(lambda s, kcv=kcv: set_meta(s, L1_CHECK_META, kcv))
        ids = [store.run_sync(ensure_lineage).deployment for store in stores]
        assert ids[0] == ids[1] == deployment_id("abc123")
        assert len({ids[0], ids[2], ids[3]}) == 3
        assert deployment_id(None) != deployment_id(None)
    finally:
        for store in stores:
            store.stopService()


def test_a_negative_generation_counts_as_none(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        store.run_sync(ensure_lineage)
        store.run_sync(lambda s: set_meta(s, GENERATION_META, "-3"))
        assert store.run_sync(read_lineage).generation == 0
    finally:
        store.stopService()
