"""Locate in a large tenant: each page of its search is a range of an index read in order,
never a sort of the tenant's objects, so the search costs one pass however it is paged.

Before migration 0006 every page of 256 objects re-sorted all those left in the tenant
(``USE TEMP B-TREE FOR ORDER BY`` on SQLite): a Locate that counts its matches (Offset
Items), or an application whose few objects sit among another service's, took time
quadratic in the tenant's size, past the request deadline at 50,000 objects. Here every
statement a set of Locates issues is planned (SQLite, ``EXPLAIN QUERY PLAN`` with its
parameters: the plan does not depend on how many rows there are, so a few suffice), and a
real kcm-core answers such Locates in a tenant of 30,000 objects within a deadline the
quadratic search could not meet.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kcm.kmip.attributes import Attribute
from kcm.kmip.enums import (
    CryptographicUsageMask,
    ObjectType,
    Operation,
    ResultStatus,
    StorageStatusMask,
)
from kcm.kmip.payloads import CreateRequest, LocateRequest
from kcm.kmip.tags import Tag
from kcm.testing.processes import CoreProcess, deploy, process_env
from kcm.testing.requests import aes256, item, request, response
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, admin_principal, service_principal
from tests.integration.test_core_objects import V14, locate, name, register
from tests.integration.test_sweep_plans import _plan, _scans, _statements

#: Objects in the large tenant: the first of no service, the rest of service billing.
NO_SERVICE, BILLING = 6_000, 24_000
#: The Cryptographic Usage Mask of every object of the large tenant.
USAGE = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK,
                     CryptographicUsageMask.ENCRYPT | CryptographicUsageMask.DECRYPT)


def test_no_statement_of_a_locate_sorts_or_scans_the_tenant(core: CoreHarness) -> None:
    app, billing = service_principal("demo", "app"), service_principal("demo", "billing")
    admin = admin_principal()
    for principal in (app, billing, app):
        register(core, attributes=[name("k"), Attribute.of(Tag.OBJECT_GROUP, "g")],
                 principal=principal)
    searches = [
        (app, {}), (app, {"maximum_items": 1}), (admin, {}), (billing, {}),
        (app, {"offset_items": 0, "maximum_items": 1}),  # counted by the store
        (app, {"offset_items": 1, "maximum_items": 1, "attributes": [
            Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 1)]}),  # counted by the store too
        (app, {"offset_items": 1, "maximum_items": 1, "attributes": [
            Attribute.of(Tag.CONTACT_INFORMATION, "c")]}),  # counted by the search
        (app, {"attributes": [Attribute.of(Tag.OBJECT_TYPE, ObjectType.SYMMETRIC_KEY)]}),
        (app, {"attributes": [name("k")]}),
        (app, {"attributes": [Attribute.of(Tag.OBJECT_GROUP, "g")]}),
        (app, {"attributes": [Attribute.vendor("x", "colour", Item(
            Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "blue"))]}),  # a key (0008)
        (admin, {"storage_status_mask": StorageStatusMask.DESTROYED_STORAGE}),
    ]
    with _statements(core) as seen:
        for principal, fields in searches:
            fields = dict(fields)
            attributes = fields.pop("attributes", [])
            locate(core, *attributes, principal=principal, version=V14, **fields)
    planned = [(statement, parameters) for statement, parameters in seen
               if "FROM managed_objects" in statement]
    assert len(planned) >= len(searches)
    faults = {}
    for statement, parameters in planned:
        plan = _plan(core, statement, parameters)
        if _scans(plan) or any("TEMP B-TREE" in line for line in plan):
            faults[statement] = plan
    assert faults == {}


def test_a_locate_by_what_few_objects_have_reads_those_objects_by_identifier(
        core: CoreHarness) -> None:
    """A Name, an Object Group or an attribute key (0008) that names few objects: their
    identifiers are read from that criterion's index, and the objects by their primary
    key. Before, each of the tenant's rows was tested against it, along the (tenant,
    created_seq) index: 57 ms for a Name one object has among 50,000 objects."""
    app = service_principal("demo", "app")
    colour = Attribute.vendor("x", "colour", Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING,
                                                  "blue"))
    found = register(core, attributes=[name("n1"), Attribute.of(Tag.OBJECT_GROUP, "g"), colour],
                     principal=app)
    for _ in range(3):
        register(core, principal=app)
    for criterion in (name("n1"), Attribute.of(Tag.OBJECT_GROUP, "g"), colour):
        with _statements(core) as seen:
            answer = locate(core, criterion, principal=app, version=V14)
        assert answer.unique_identifiers == [found]
        [(statement, parameters)] = [(statement, parameters) for statement, parameters in seen
                                     if "FROM managed_objects" in statement]
        plan = _plan(core, statement, parameters)
        assert any("managed_objects USING INDEX sqlite_autoindex_managed_objects_1 (uid=?)"
                   in line for line in plan), plan
    with _statements(core) as seen:  # what no object has: nothing more is read
        assert locate(core, name("none"), principal=app, version=V14).unique_identifiers == []
    assert not [statement for statement, _ in seen if "FROM managed_objects" in statement]


def test_a_locate_by_what_many_objects_have_finds_them_all(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past NARROW_TO objects, a criterion is tested row by row as before; a Locate of
    several criteria is narrowed by the one naming fewest; the answers are the same."""
    from kcm.core.store import repository

    monkeypatch.setattr(repository, "NARROW_TO", 2)
    app = service_principal("demo", "app")
    big = Attribute.of(Tag.OBJECT_GROUP, "big")
    members = [register(core, attributes=[big, name(f"m{n}")], principal=app)
               for n in range(4)]
    register(core, principal=app)
    assert sorted(locate(core, big, principal=app, version=V14).unique_identifiers) == \
        sorted(members)
    assert locate(core, big, name("m2"), principal=app,
                  version=V14).unique_identifiers == [members[2]]
    counted = locate(core, big, principal=app, version=V14, offset_items=1, maximum_items=2)
    assert counted.located_items == 4 and len(counted.unique_identifiers) == 2


def _copy_objects(database: Path, template_uid: str) -> None:
    """NO_SERVICE + BILLING copies of the object ``template_uid`` in its tenant (SQL copies:
    thousands a second), the oldest of no service, the newest of service billing."""
    connection = sqlite3.connect(database)
    try:
        columns = [row[1] for row in connection.execute("PRAGMA table_info(managed_objects)")]
        base = connection.execute("SELECT max(created_seq) FROM managed_objects").fetchone()[0]
        made = {"uid": "'copy-' || n", "created_seq": f"{base} + n",
                "service": f"CASE WHEN n <= {NO_SERVICE} THEN NULL ELSE 'billing' END"}
        selected = ", ".join(made.get(column, column) for column in columns)
        connection.execute(
            f"INSERT INTO managed_objects ({', '.join(columns)}) "
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq "
            f"WHERE n < {NO_SERVICE + BILLING}) "
            f"SELECT {selected} FROM seq, (SELECT * FROM managed_objects WHERE uid = ?)",
            (template_uid,))
        connection.commit()
    finally:
        connection.close()


@pytest.fixture(scope="module")
def large_tenant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoreProcess]:
    """A core whose tenant demo holds app's one object, NO_SERVICE objects of no service
    and, newest, BILLING of service billing; a request deadline of 3 s."""
    root = tmp_path_factory.mktemp("large-tenant")
    core = deploy(root, f"sqlite:///{root / 'kcm.db'}", request_deadline=3)
    core.start()
    try:
        with core.client("app") as kmip:
            [created] = response(kmip.send(request(item(Operation.CREATE, CreateRequest(
                object_type=ObjectType.SYMMETRIC_KEY, attributes=aes256([USAGE])))))).batch_items
            assert created.result_status == ResultStatus.SUCCESS
    finally:
        core.stop()
    _copy_objects(root / "kcm.db", created.response_payload.unique_identifier)
    core.start()
    try:
        yield core
    finally:
        core.stop()


def _located(core: CoreProcess, payload: LocateRequest) -> tuple[list[str], int | None]:
    with core.client("app") as kmip:
        [answer] = response(kmip.send(request(item(Operation.LOCATE, payload)))).batch_items
    assert answer.result_status == ResultStatus.SUCCESS, answer.result_message
    return answer.response_payload.unique_identifiers, answer.response_payload.located_items


def test_a_counted_page_of_a_large_tenant(large_tenant: CoreProcess) -> None:
    """Offset Items 0, Maximum Items 100: the page and how many of the tenant's objects the
    application may see (those of no service and its own, not billing's)."""
    page, located = _located(large_tenant, LocateRequest(maximum_items=100, offset_items=0))
    assert page == [f"copy-{n}" for n in range(NO_SERVICE, NO_SERVICE - 100, -1)]
    assert located == NO_SERVICE + 1


def test_an_applications_objects_among_another_services(large_tenant: CoreProcess) -> None:
    """The newest BILLING objects are billing's: app's newest are found past them."""
    page, located = _located(large_tenant, LocateRequest(maximum_items=10))
    assert page == [f"copy-{n}" for n in range(NO_SERVICE, NO_SERVICE - 10, -1)]
    assert located is None
    last, _ = _located(large_tenant, LocateRequest(
        maximum_items=10, offset_items=NO_SERVICE - 5))
    assert len(last) == 6 and last[:5] == ["copy-5", "copy-4", "copy-3", "copy-2", "copy-1"]


def test_a_counted_locate_by_usage_mask_of_a_large_tenant(large_tenant: CoreProcess) -> None:
    """A Cryptographic Usage Mask criterion is judged and counted by the store (migration
    0007), not by decoding the attributes of every object the application may see."""
    encrypt = Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.ENCRYPT)
    page, located = _located(large_tenant, LocateRequest(
        maximum_items=100, offset_items=0, attributes=[encrypt]))
    assert page == [f"copy-{n}" for n in range(NO_SERVICE, NO_SERVICE - 100, -1)]
    assert located == NO_SERVICE + 1


def test_the_locate_bench_runs() -> None:
    """benchmarks/locate_bench.py end to end on a small tenant: every Locate it times is
    answered (its figures here mean nothing; docs/benchmarks.md holds real ones)."""
    bench = Path(__file__).resolve().parents[2] / "benchmarks" / "locate_bench.py"
    run = subprocess.run([sys.executable, str(bench), "--objects", "500", "--rounds", "1"],
                         env=process_env(), capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("tenant demo: 500 objects")
    assert len(lines) == 11 and all(" s  (" in line for line in lines[1:]), run.stdout
    assert "Located Items 500)" in lines[2] and "Located Items 500)" in lines[3], run.stdout
    assert all("(0 identifiers)" in lines[n] for n in (4, 5, 8, 9, 10)), run.stdout
    assert all("(1 identifiers)" in lines[n] for n in (6, 7)), run.stdout
