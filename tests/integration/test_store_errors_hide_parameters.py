"""A statement the database refuses with an error that is not "unavailable" (a constraint,
a read-only database: InternalError, a bug) is logged by kcm-core with its traceback, and a
``kcm`` command prints its first line: the error's text must not carry the statement's
parameters. They are key material wrapped under L2 (or L1) and attributes, which
PostgreSQL's driver showed as bytes (``Binary(b'...')``): a copy that outlived the key's
Destroy in every log written. Real SQLite and PostgreSQL databases, the fault made by a
trigger."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from kcm.core.store import repository as repo
from kcm.core.store.engine import Store
from tests.core_support import own_store
from tests.pg import postgres_url  # noqa: F401  (fixture)

#: Stands for wrapped key material: what must not reach an error's text.
MATERIAL = bytes.fromhex("5eC7e75eC7e75eC7e75eC7e75eC7e7")
_NUMBERS = itertools.count()

_REFUSING = {
    "sqlite": ("CREATE TRIGGER refuse BEFORE {event} ON managed_objects "
               "BEGIN SELECT RAISE(ABORT, 'injected fault'); END",),
    "postgresql": (
        "CREATE OR REPLACE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'injected fault'; END $$",
        "CREATE TRIGGER refuse BEFORE {event} ON managed_objects FOR EACH ROW "
        "EXECUTE FUNCTION refuse()"),
}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    ksi = own_store(request, tmp_path, "hidden")
    yield ksi
    ksi.stopService()


def _refuse(store: Store, event: str) -> None:
    def install(session) -> None:
        for statement in _REFUSING[store.engine.dialect.name]:
            session.execute(text(statement.format(event=event)))
    store.run_sync(install)


def _insert(session, uid: str, material: bytes) -> repo.ObjectColumns:
    repo.ensure_tenant(session, "t1", clock=lambda: 1.0)
    repo.insert_object(session, uid=uid, tenant="t1", object_type=2, state=1,
                       attributes=b"\x42attrs", material=material, material_format=1,
                       wrapped_by="l2-t1", cryptographic_algorithm=3,
                       cryptographic_length=256, initial_date=1000)
    return repo.object_columns(session, "t1", uid, for_update=True)


def _assert_hidden(error: DBAPIError) -> None:
    said = str(error)
    assert "injected fault" in said
    assert "[parameters:" not in said
    for shown in (repr(MATERIAL), MATERIAL.hex(), "Binary(", "<memory at"):
        assert shown.lower() not in said.lower(), said


def test_a_refused_update_does_not_show_the_material(store: Store) -> None:
    store.run_sync(lambda s: _insert(s, "k1", b"old"))
    _refuse(store, "UPDATE")

    def rewrap(session) -> None:
        row = repo.object_columns(session, "t1", "k1", for_update=True)
        repo.update_columns(session, row, material=MATERIAL, wrapped_by="l2-t1-new")

    with pytest.raises(DBAPIError) as refused:
        store.run_sync(rewrap)
    _assert_hidden(refused.value)


def test_a_refused_insert_does_not_show_the_material(store: Store) -> None:
    _refuse(store, "INSERT")
    with pytest.raises(DBAPIError) as refused:
        store.run_sync(lambda s: _insert(s, "k2", MATERIAL))
    _assert_hidden(refused.value)


def test_a_refused_flush_of_an_attached_row_does_not_show_the_material(store: Store) -> None:
    """An operation changes an object's row through the ORM (ManagedKey.stored_row:
    attach_object, its columns set, flushed as an UPDATE by the engine, not a raw
    statement): the engine's own errors hide their parameters too."""
    store.run_sync(lambda s: _insert(s, "k3", b"old"))
    _refuse(store, "UPDATE")

    def change(session) -> None:
        row = repo.attach_object(session, repo.object_columns(session, "t1", "k3",
                                                              for_update=True))
        row.material, row.attributes = MATERIAL, MATERIAL
        session.flush()

    with pytest.raises(DBAPIError) as refused:
        store.run_sync(change)
    _assert_hidden(refused.value)
