"""``kcm core tenant remove`` of a large tenant (SQLite): the removal takes effect in one
short transaction, then what is left (destroyed objects with their names and groups, L4
tombstones) goes in batches of :data:`kcm.cli.core_inventory.REMOVAL_BATCH`, each a
transaction of its own, so another writer gets the lock between two; an interrupted
removal is finished by running the command again; a tenant added again meanwhile keeps
what it got since."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from kcm.cli import core_inventory, main

OBJECTS = 2_500  # destroyed objects of tenant other, beside its keys
TOMBSTONES = 1_200  # its L4 tombstones


@pytest.fixture
def deployment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Tenants demo (service app) and other (service billing), other with OBJECTS destroyed
    objects (every tenth with a name and a group) and TOMBSTONES L4 tombstones under its
    service key, made in SQL (cheap), and a usage count of that key."""
    root = tmp_path / "core"
    root.mkdir(mode=0o700)
    config = root / "core.toml"
    config.write_text(f'[core]\ndatabase = "sqlite:///{root / "kcm.db"}"\n'
                      f'l1_key_file = "{root / "l1.key"}"\n')
    for argv in (["core", "init"], ["core", "bootstrap", "demo", "app"],
                 ["core", "bootstrap", "other", "billing"]):
        assert main([*argv, "-c", str(config)]) == 0
    capsys.readouterr()
    with closing(database(config)) as db:
        columns = ", ".join(row[1] for row in db.execute("PRAGMA table_info(managed_objects)")
                            if row[1] not in ("uid", "created_seq", "level", "service",
                                              "key_version", "state", "material"))
        (top,) = db.execute("SELECT max(created_seq) FROM managed_objects").fetchone()
        (l3,) = db.execute("SELECT uid FROM managed_objects WHERE tenant = 'other' "
                           "AND level = 3").fetchone()
        db.execute(
            f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < {OBJECTS}) "
            f"INSERT INTO managed_objects (uid, created_seq, level, service, key_version, state, "
            f"material, {columns}) SELECT 'gone-' || i, {top} + i, NULL, 'billing', NULL, 5, "
            f"NULL, {columns} FROM managed_objects, g WHERE tenant = 'other' AND level = 2")
        db.execute("INSERT INTO object_names (uid, name, tenant, name_type) SELECT uid, "
                   "'name-' || uid, tenant, 1 FROM managed_objects WHERE uid LIKE 'gone-%0'")
        db.execute("INSERT INTO object_groups (uid, group_name, tenant) SELECT uid, 'g', "
                   "tenant FROM managed_objects WHERE uid LIKE 'gone-%0'")
        db.execute(
            f"WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < "
            f"{TOMBSTONES}) INSERT INTO l4_tombstones (token_id, tenant, l3_uid, at, reason) "
            f"SELECT 'token-' || i, 'other', ?, 0, 'revoked' FROM g", (l3,))
        db.execute("INSERT INTO l3_usage (uid, uses, reported_at) VALUES (?, 7, 0)", (l3,))
        # What the core's inserts would have counted (kcm.core.store.quota).
        db.execute("UPDATE tenants SET stored = stored + ? WHERE name = 'other'",
                   (OBJECTS + TOMBSTONES,))
        db.commit()
    return config


def database(config: Path) -> sqlite3.Connection:
    """Another connection to the deployment's database, as another process has it."""
    return sqlite3.connect(config.parent / "kcm.db", timeout=0, isolation_level=None)


class closing:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *_: object) -> None:
        self.db.close()


def rows_of(config: Path, tenant: str) -> dict[str, int]:
    with closing(database(config)) as db:
        return {table: db.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?",
                                  (tenant,)).fetchone()[0]
                for table, column in (("managed_objects", "tenant"), ("object_names", "tenant"),
                                      ("object_groups", "tenant"), ("l4_tombstones", "tenant"),
                                      ("rotation_policies", "tenant"), ("tenants", "name"))}


def kcm(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def watch_batches(monkeypatch: pytest.MonkeyPatch,
                  watch: Callable[[int], None]) -> list[int]:
    """Call ``watch(n)`` between the removal's transactions (n: 0, 1, ...) instead of the
    pause; the calls made."""
    calls: list[int] = []

    def between(_seconds: float) -> None:
        calls.append(len(calls))
        watch(calls[-1])

    monkeypatch.setattr(core_inventory, "_between_batches", between, raising=False)
    return calls


def test_a_large_tenant_goes_in_batches_and_other_writers_get_in_between(
        deployment: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = rows_of(deployment, "demo")
    seen: list[dict[str, int]] = []

    def another_writer(n: int) -> None:
        seen.append(rows_of(deployment, "other"))
        with closing(database(deployment)) as db:  # timeout 0: fails if the lock is held
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO meta (key, value) VALUES (?, 'x')", (f"test.{n}",))
            db.execute("COMMIT")

    calls = watch_batches(monkeypatch, another_writer)
    status, out, err = kcm(capsys, "core", "tenant", "remove", "other", "--yes", "-c",
                           str(deployment))
    total = OBJECTS + 2  # with its tenant key and its service key
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "tenant other removed (its keys deleted, gateways told); deleting its destroyed "
        "objects and L4 tombstones, 1000 a transaction",
        f"tenant other removed with its {total} keys and objects"]
    # The first transaction: the keys, and the first batch (1,000 tombstones); then 200
    # tombstones and 1,000 objects; 1,000 objects; the last 501 and the tenant.
    assert len(calls) == 3
    assert [(s["l4_tombstones"], s["managed_objects"]) for s in seen] == [
        (200, OBJECTS + 1), (0, OBJECTS + 1 - 1000), (0, OBJECTS + 1 - 2000)]
    assert seen[0]["tenants"] == 1 and seen[0]["object_names"] == OBJECTS // 10
    assert rows_of(deployment, "other") == dict.fromkeys(rows_of(deployment, "other"), 0)
    assert rows_of(deployment, "demo") == demo
    with closing(database(deployment)) as db:
        assert db.execute("SELECT count(*) FROM l3_usage").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'tenant.removing:%'"
                          ).fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM meta WHERE key LIKE 'test.%'").fetchone() == (3,)
        assert [kind for (kind,) in db.execute(
            "SELECT kind FROM outbox WHERE tenant = 'other' ORDER BY seq")][-2:] == [
            "l3.state", "tenant.removed"]
    status, out, _ = kcm(capsys, "audit", "tail", "-n", "1", "-c", str(deployment))
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert (record["operation"], record["tenant"], record["detail"]) == (
        "RemoveTenant", "other", {"objects": total})
    assert len(record["object_ids"]) == 2  # the keys: its tenant key and service key
    assert kcm(capsys, "audit", "verify", "-c", str(deployment))[0] == 0


def test_a_tenant_with_an_object_not_destroyed_is_not_removed(
        deployment: Path, capsys) -> None:
    with closing(database(deployment)) as db:
        db.execute("UPDATE managed_objects SET state = 2 WHERE uid = 'gone-77'")
    before = rows_of(deployment, "other")
    assert kcm(capsys, "core", "tenant", "remove", "other", "--yes", "-c",
               str(deployment)) == (
        2, "", "kcm core tenant remove: error: tenant other still holds 1 objects that are "
               "not destroyed (e.g. gone-77); destroy them first\n")
    assert rows_of(deployment, "other") == before


def test_an_interrupted_removal_is_finished_by_running_it_again(
        deployment: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupt(n: int) -> None:
        if n == 1:
            raise KeyboardInterrupt

    calls = watch_batches(monkeypatch, interrupt)
    c = ("-c", str(deployment))
    status, out, err = kcm(capsys, "core", "tenant", "remove", "other", "--yes", *c)
    assert (status, len(calls)) == (130, 2)
    assert err == ("kcm core tenant remove: tenant other is removed, but some of its destroyed "
                   "objects or L4 tombstones are left: run `kcm core tenant remove other --yes` "
                   "again to delete them\nkcm core tenant remove: interrupted\n")
    left = rows_of(deployment, "other")
    assert (left["tenants"], left["l4_tombstones"], left["managed_objects"]) == (
        1, 0, OBJECTS + 1 - 1000)
    # Removed all the same: no key, no service; listed as unfinished.
    with closing(database(deployment)) as db:
        assert db.execute("SELECT count(*) FROM managed_objects WHERE tenant = 'other' AND "
                          "(level IS NOT NULL OR material IS NOT NULL OR state NOT IN (5, 6))"
                          ).fetchone() == (0,)
    status, out, _ = kcm(capsys, "core", "tenant", "list", *c)
    assert out.splitlines()[1].endswith(
        "  removal unfinished (kcm core tenant remove other --yes finishes it)")
    status, out, _ = kcm(capsys, "core", "tenant", "show", "other", "--json", *c)
    shown = json.loads(out)
    assert (shown["removal_unfinished"], shown["tenant_keys"], shown["service_keys"]) == (
        True, [], [])
    assert not json.loads(kcm(capsys, "core", "tenant", "show", "demo", "--json", *c)[1])[
        "removal_unfinished"]
    status, _, err = kcm(capsys, "core", "tenant", "remove", "other", *c)
    assert status == 2 and "did not finish deleting its destroyed objects; run again with " \
                           "--yes to finish it" in err
    calls = watch_batches(monkeypatch, lambda n: None)
    status, out, err = kcm(capsys, "core", "tenant", "remove", "other", "--yes", *c)
    assert len(calls) == 2
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "tenant other: finishing its interrupted removal",
        f"tenant other removed: its interrupted removal finished ({OBJECTS + 1 - 1000} "
        "destroyed objects and 0 L4 tombstones deleted now)"]
    assert rows_of(deployment, "other") == dict.fromkeys(left, 0)
    assert kcm(capsys, "core", "tenant", "list", *c)[1].count("\n") == 1
    with closing(database(deployment)) as db:  # one removal: one event, one record
        assert db.execute("SELECT count(*) FROM outbox WHERE kind = 'tenant.removed'"
                          ).fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM audit_log WHERE operation = 'RemoveTenant'"
                          ).fetchone() == (1,)
        assert db.execute("SELECT value FROM meta WHERE key = 'tenants.removed'"
                          ).fetchone() == ("1",)
    assert kcm(capsys, "audit", "verify", *c)[0] == 0


def test_a_tenant_added_again_meanwhile_keeps_what_it_got_since(
        deployment: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    c = ("-c", str(deployment))

    def add_again(n: int) -> None:
        if n == 0:
            assert main(["core", "bootstrap", "other", "billing", *c]) == 0

    watch_batches(monkeypatch, add_again)
    status, out, _ = kcm(capsys, "core", "tenant", "remove", "other", "--yes", *c)
    assert status == 0 and out.endswith(
        f"tenant other removed with its {OBJECTS + 2} keys and objects\n")
    status, out, _ = kcm(capsys, "core", "tenant", "show", "other", "--json", *c)
    shown = json.loads(out)
    assert (len(shown["tenant_keys"]), [k["version"] for k in shown["service_keys"]],
            shown["objects"], shown["removal_unfinished"]) == (1, [1], {}, False)
    assert rows_of(deployment, "other")["managed_objects"] == 2


def test_finishing_an_interrupted_removal_keeps_the_tenant_added_again_since(
        deployment: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenant list` says `kcm core tenant remove other --yes` finishes an interrupted
    removal; run after the tenant was added again, it only finishes it: the new tenant and
    service keys stay, and no second removal is announced."""
    config = ("-c", str(deployment))

    def interrupt(n: int) -> None:
        if n == 1:
            raise KeyboardInterrupt

    watch_batches(monkeypatch, interrupt)
    assert kcm(capsys, "core", "tenant", "remove", "other", "--yes", *config)[0] == 130
    assert main(["core", "bootstrap", "other", "billing", *config]) == 0
    capsys.readouterr()
    assert "removal unfinished (kcm core tenant remove other --yes finishes it)" in kcm(
        capsys, "core", "tenant", "list", *config)[1]

    def keys_and_removals() -> tuple[list[tuple[str]], int]:
        with closing(database(deployment)) as db:
            return (db.execute("SELECT uid FROM managed_objects WHERE tenant = 'other' "
                               "AND level IS NOT NULL ORDER BY level").fetchall(),
                    db.execute("SELECT count(*) FROM outbox WHERE kind = 'tenant.removed'"
                               ).fetchone()[0])

    before = keys_and_removals()
    assert len(before[0]) == 2
    watch_batches(monkeypatch, lambda n: None)
    assert kcm(capsys, "core", "tenant", "remove", "other", "--yes", *config)[0] == 0
    assert keys_and_removals() == before
    assert "removal unfinished" not in kcm(capsys, "core", "tenant", "list", *config)[1]
    # Its count went down with each batch: the tenant added again holds its two new keys.
    with closing(database(deployment)) as db:
        assert db.execute("SELECT stored FROM tenants WHERE name = 'other'").fetchone() == (2,)
