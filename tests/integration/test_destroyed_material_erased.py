"""A destroyed key's wrapped material leaves the files of a SQLite store: the database
file's free space is zeroed (``secure_delete``) and the WAL, which kept the page images
written before the Destroy, is checkpointed and truncated after it. Before, anyone with
the files (a snapshot, a file-level backup) and L1 unwrapped the destroyed key. A real
kcm-core; the files read as bytes."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kcm.kmip.enums import ObjectType, Operation, ResultStatus
from kcm.kmip.payloads import RegisterRequest
from kcm.kmip.payloads.lifecycle import DestroyRequest
from kcm.testing.requests import item, request, response
from tests.e2e_support import deploy, wait_until
from tests.integration.test_core_objects import aes_key


def _files_hold(db: Path, blob: bytes) -> list[str]:
    return [path.name for path in (db, db.with_name(db.name + "-wal"))
            if path.exists() and blob in path.read_bytes()]


def _registered(app, reader: sqlite3.Connection, key: bytes) -> tuple[str, bytes]:
    """A key registered by ``app``: its uid, and its wrapped material as stored."""
    [registered] = response(app.send(request(item(Operation.REGISTER, RegisterRequest(
        object_type=ObjectType.SYMMETRIC_KEY, attributes=[], object=aes_key(key)))))
                            ).batch_items
    assert registered.result_status == ResultStatus.SUCCESS
    uid = registered.response_payload.unique_identifier
    [(blob,)] = reader.execute(
        "SELECT material FROM managed_objects WHERE uid = ?", (uid,)).fetchall()
    return uid, bytes(blob)


def _destroy(app, uid: str) -> None:
    [destroyed] = response(app.send(request(item(
        Operation.DESTROY, DestroyRequest(unique_identifier=uid))))).batch_items
    assert destroyed.result_status == ResultStatus.SUCCESS, destroyed.result_message


def test_a_destroyed_keys_material_leaves_the_sqlite_files(tmp_path: Path) -> None:
    db = tmp_path / "core" / "kcm.db"
    core = deploy(tmp_path / "core", f"sqlite:///{db}")
    core.start()
    try:
        with core.client("app") as app:
            reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                uid, blob = _registered(app, reader, bytes(range(32)))
            finally:
                reader.close()
            assert len(blob) >= 32 and _files_hold(db, blob)  # (what the test looks for)
            _destroy(app, uid)
        wait_until(lambda: not _files_hold(db, blob),
                   "the destroyed material to leave kcm.db and its WAL", timeout=10)
        assert core.process.poll() is None
    finally:
        core.stop()
    assert not _files_hold(db, blob)


def test_a_reader_in_the_way_delays_the_erasure_only_until_it_ends(tmp_path: Path) -> None:
    db = tmp_path / "core" / "kcm.db"
    core = deploy(tmp_path / "core", f"sqlite:///{db}")
    core.start()
    try:
        with core.client("app") as app:
            reader = sqlite3.connect(str(db), isolation_level=None)
            try:
                uid, blob = _registered(app, reader, bytes(range(32, 64)))
                reader.execute("BEGIN")  # a snapshot from before the Destroy, held
                reader.execute("SELECT count(*) FROM managed_objects").fetchall()
                _destroy(app, uid)
                wait_until(lambda: "kcm.db" not in _files_hold(db, blob),
                           "secure_delete to zero the database file's copy", timeout=10)
                assert _files_hold(db, blob) == ["kcm.db-wal"]  # the reader needs it still
                reader.execute("COMMIT")
            finally:
                reader.close()
        wait_until(lambda: not _files_hold(db, blob),
                   "the WAL to be truncated once the reader is gone", timeout=5)
    finally:
        core.stop()
