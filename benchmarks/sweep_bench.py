"""kcm-core's state sweep on a large inventory: what one sweep costs, step by step, and which
of its statements read a growing table whole.

Builds a database of ``--objects`` ordinary objects (default 200,000: one managed key made by
kcm-core's request handler per tenant, then copied in bulk by one ``INSERT ... SELECT`` per
tenant, a recursive CTE on SQLite, ``generate_series`` on PostgreSQL), as many audit records,
outbox events and spent stream parts, four tenants of three services each with their L2 and
L3 keys, a default rotation policy (so the rotation steps read what they would read in a
deployment that rotates) and a retired tenant key (so the re-wrap step looks for work).
Nothing is due: the sweep every 5 s of an idle core.

Then times, in the sweep's own transactions, each step the core runs (``makeService``'s list:
``rotate_due``, ``rotate_managed_due``, ``rotate_tenant_keys_due``, ``rewrap_step``,
``purge_spent``, ``prune_outbox``, then ``sweep_due_states``) and the whole sweep as
:class:`kcm.core.state_sweeper.StateSweeper` runs it (median and maximum of ``--rounds``,
milliseconds); plans every statement of one sweep (``EXPLAIN QUERY PLAN`` on SQLite,
``EXPLAIN`` on PostgreSQL, after ``ANALYZE``, as autovacuum would have run) and prints,
marked ``SCAN``, those that read a growing table (or a whole index of one); last, times the
re-wrap step with work to do (a tenant key retired with a quarter of the objects under it,
a batch of 200 a transaction).

    .venv/bin/python benchmarks/sweep_bench.py [--objects N] [--rounds R]
        [--backend sqlite|postgresql|both] [--revision REV] [--plans]

``--revision`` migrates the database to that revision rather than the newest (``0004``: the
schema before the sweeper's indexes); ``--plans`` prints every statement's plan, not only
the scans.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sqlalchemy import event, func, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from kcm.core.auto_rotation import rotate_due  # noqa: E402
from kcm.core.context import Caller  # noqa: E402
from kcm.core.hierarchy import provision_service, provision_tenant  # noqa: E402
from kcm.core.keyring import Binding, Keyring  # noqa: E402
from kcm.core.managed_rotation import rotate_managed_due  # noqa: E402
from kcm.core.outbox_retention import prune_outbox  # noqa: E402
from kcm.core.request_handler import CoreRequestHandler  # noqa: E402
from kcm.core.rotation_policy import PolicySettings, set_policy  # noqa: E402
from kcm.core.state_sweeper import sweep_due_states  # noqa: E402
from kcm.core.store.engine import Store  # noqa: E402
from kcm.core.store.migrate import upgrade  # noqa: E402
from kcm.core.store.schema import ManagedObject  # noqa: E402
from kcm.core.stream_parts import purge_spent  # noqa: E402
from kcm.core.sweep_steps import run_steps  # noqa: E402
from kcm.core.tenant_rotation import (  # noqa: E402
    rewrap_step,
    rotate_tenant_key,
    rotate_tenant_keys_due,
)
from kcm.identity import Principal, Role  # noqa: E402
from kcm.kmip.attributes import Attribute  # noqa: E402
from kcm.kmip.enums import CryptographicUsageMask, ObjectType, Operation  # noqa: E402
from kcm.kmip.payloads import CreateRequest  # noqa: E402
from kcm.kmip.tags import Tag  # noqa: E402
from kcm.testing.postgres import find_pg_bin, running_cluster  # noqa: E402
from kcm.testing.requests import aes256, item, request, response  # noqa: E402

TENANTS = ("t0", "t1", "t2", "t3")
SERVICES = ("s0", "s1", "s2")
TRUST_DOMAIN = "kcm.test"
#: Tables that grow with use (not with the number of tenants or services).
GROWING = ("managed_objects", "object_names", "object_groups", "l4_tombstones", "audit_log",
           "outbox", "spent_stream_parts")
DAY = 86_400


# --- the database --------------------------------------------------------------------------


def build(url: str, objects: int, revision: str) -> tuple[Store, Keyring]:
    """A store at ``url`` migrated to ``revision`` and filled (see the module's text)."""
    upgrade(url, revision)
    store = Store(url)
    keyring = Keyring(os.urandom(32))
    store.audit_key = keyring.audit_key
    now = int(time.time())

    def hierarchy(session):
        for tenant in TENANTS:
            provision_tenant(session, keyring, tenant, now=now - 400 * DAY)
            for service in SERVICES:
                provision_service(session, keyring, tenant, service, now=now - DAY)
        set_policy(session, "", "", PolicySettings(interval=90 * DAY, max_uses=2 ** 31,
                                                   overlap=3600,
                                                   tenant_key_interval=365 * DAY), now=now)

    store.run_sync(hierarchy)
    # t0's first L2 is retired (its re-wrap long done, its material kept): the re-wrap step
    # looks under it at every sweep. The others' are younger than the tenant key interval.
    store.run_sync(lambda session: rotate_tenant_key(
        session, keyring, "t0", now=now - DAY, by="sweep_bench", reason="the benchmark"))
    for tenant in TENANTS[1:]:
        store.run_sync(partial(_younger_l2, tenant=tenant, now=now - DAY))

    handler = CoreRequestHandler(store, keyring, clock=time.time)
    create = request(item(Operation.CREATE, CreateRequest(
        object_type=ObjectType.SYMMETRIC_KEY,
        attributes=aes256([Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, CryptographicUsageMask.ENCRYPT
                                        | CryptographicUsageMask.DECRYPT)]))),
        version=(2, 1))
    templates = []
    for tenant in TENANTS:
        principal = Principal(Role.SERVICE, TRUST_DOMAIN, tenant=tenant, service="s0",
                              uri=f"spiffe://{TRUST_DOMAIN}/tenant/{tenant}/service/s0")
        answer = response(handler.respond(create, Caller(principal, "127.0.0.1:1"), now))
        templates.append(str(answer.batch_items[0].response_payload.unique_identifier))

    started = time.perf_counter()
    per_tenant = objects // len(templates)
    store.run_sync(partial(_copy_objects, templates=templates, count=per_tenant))
    store.run_sync(partial(_copy_rows, count=objects, now=now))
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as connection:
            connection.execute(text("ANALYZE"))
            connection.commit()
    total = store.run_sync(lambda s: s.scalar(select(func.count()).select_from(ManagedObject)))
    print(f"  {total} managed objects, filled in {time.perf_counter() - started:.1f} s")
    return store, keyring


def _younger_l2(session, *, tenant: str, now: int) -> None:
    """``tenant``'s L2 dated ``now`` (provisioned 400 days ago, it would be due)."""
    session.execute(text("UPDATE managed_objects SET activation_date = :now, "
                         "initial_date = :now WHERE tenant = :tenant AND level = 2"),
                    {"now": now, "tenant": tenant})


def _numbers(session, count: int) -> str:
    """A FROM clause of the numbers 1..count as ``n(i)``."""
    if session.get_bind().dialect.name == "postgresql":
        return f"generate_series(1, {int(count)}) AS n(i)"
    return (f"(WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c "
            f"WHERE i < {int(count)}) SELECT i FROM c) AS n")


def _copy_objects(session, *, templates: Sequence[str], count: int) -> None:
    """``count`` copies of each template row (one per tenant), new uids and sequence numbers."""
    columns = [c.name for c in ManagedObject.__table__.columns]
    base = session.scalar(select(func.max(ManagedObject.created_seq)))
    for k, uid in enumerate(templates):
        values = []
        for name in columns:
            if name == "uid":
                values.append("t.uid || '-' || CAST(n.i AS TEXT)")
            elif name == "created_seq":
                values.append(f"{base + k * count} + n.i")
            else:
                values.append(f"t.{name}")
        session.execute(text(
            f"INSERT INTO managed_objects ({', '.join(columns)}) SELECT {', '.join(values)} "
            f"FROM {_numbers(session, count)} JOIN managed_objects t ON t.uid = :uid"),
            {"uid": uid})


def _copy_rows(session, *, count: int, now: int) -> None:
    """As many audit records and outbox events (copies of the newest, after it), and spent
    stream parts (none expired)."""
    numbers = _numbers(session, count)
    audit = ("at", "principal", "tenant", "gateway", "source", "operation", "object_ids",
             "result_status", "result_reason", "correlation_id", "detail", "prev_digest",
             "digest", "mac")
    session.execute(text(
        f"INSERT INTO audit_log (seq, {', '.join(audit)}) SELECT t.seq + n.i, "
        f"{', '.join('t.' + c for c in audit)} FROM {numbers} "
        "JOIN audit_log t ON t.seq = (SELECT max(seq) FROM audit_log)"))
    session.execute(text(
        f"INSERT INTO outbox (seq, at, tenant, kind, payload) SELECT t.seq + n.i, t.at, "
        f"t.tenant, t.kind, t.payload FROM {numbers} "
        "JOIN outbox t ON t.seq = (SELECT max(seq) FROM outbox)"))
    stream_id = ("CAST(CAST(n.i AS TEXT) AS BYTEA)"
                 if session.get_bind().dialect.name == "postgresql"
                 else "CAST(CAST(n.i AS TEXT) AS BLOB)")
    session.execute(text(
        f"INSERT INTO spent_stream_parts (stream_id, part, expires_at) "
        f"SELECT {stream_id}, 1, {now + 3600} FROM {numbers}"))


# --- the sweep -----------------------------------------------------------------------------


def steps_of(keyring: Keyring) -> list[Callable[[Any, float], Sequence[object]]]:
    """The steps kcm-core's ``makeService`` gives its sweeper, bound as it binds them."""
    def bound(fn, **kwargs):
        def step(session, now):
            return fn(session, now=now, **kwargs)
        step.__name__ = fn.__name__
        return step

    return [bound(rotate_due, keyring=keyring),
            bound(rotate_managed_due, keyring=keyring, trust_domain=TRUST_DOMAIN,
                  min_rotate_interval=3600),
            bound(rotate_tenant_keys_due, keyring=keyring),
            bound(rewrap_step, keyring=keyring),
            bound(purge_spent),
            bound(prune_outbox, retention=7 * DAY)]


def whole_sweep(steps) -> Callable[[Any], object]:
    """One sweep's transaction, as ``StateSweeper`` runs it."""
    def sweep(session):
        at = time.time()
        return run_steps(session, steps, at), sweep_due_states(session, int(at))
    return sweep


def timed(store: Store, fn: Callable[[Any], object], rounds: int) -> tuple[float, float]:
    """Median and maximum milliseconds of ``rounds`` write transactions of ``fn``."""
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        store.run_sync(fn)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds) * 1e3, max(seconds) * 1e3


@contextmanager
def captured(engine: Engine) -> Iterator[list[tuple[str, Any, float]]]:
    """The statements run on ``engine`` meanwhile: (SQL, parameters, seconds)."""
    seen: list[tuple[str, Any, float]] = []

    def before(conn, cursor, statement, parameters, context, executemany):
        conn.info["sweep_bench_started"] = time.perf_counter()

    def after(conn, cursor, statement, parameters, context, executemany):
        took = time.perf_counter() - conn.info.pop("sweep_bench_started", time.perf_counter())
        seen.append((statement, parameters[0] if executemany else parameters, took))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


_PLANNED = re.compile(r"^\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b", re.IGNORECASE)


def plan_of(engine: Engine, statement: str, parameters: Any) -> list[str]:
    """The query plan of ``statement`` with ``parameters`` (rolled back; nothing runs)."""
    postgresql = engine.dialect.name == "postgresql"
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        cursor.execute(("EXPLAIN " if postgresql else "EXPLAIN QUERY PLAN ") + statement,
                       parameters)
        rows = cursor.fetchall()
        connection.rollback()
    finally:
        connection.close()
    return [row[0] for row in rows] if postgresql else [row[-1] for row in rows]


def scans(plan: Sequence[str], first_columns: dict[str, str] | None) -> list[str]:
    """The lines of ``plan`` that read a growing table (or one of its indexes) whole: on
    SQLite a ``SCAN``; on PostgreSQL (``first_columns``: each index's first column) a
    ``Seq Scan``, or an index scan whose ``Index Cond`` leaves the index's first column free
    (PostgreSQL 15 then reads the whole index)."""
    found = []
    if first_columns is None:
        for line in plan:
            match = re.match(r"SCAN (\w+)", line.strip())
            if match and match.group(1) in GROWING:
                found.append(line.strip())
        return found
    for n, line in enumerate(plan):
        node = re.search(r"(Seq Scan|Index Scan|Index Only Scan|Bitmap Index Scan)"
                         r"(?: Backward)?(?: using (\w+))? on (\w+)", line)
        if node is None:
            continue
        kind, index, table = node.groups()
        if kind == "Seq Scan":
            if table in GROWING:
                found.append(line.strip())
            continue
        if index not in first_columns:
            continue
        detail = []
        for following in plan[n + 1:]:
            if "->" in following:
                break
            detail.append(following)
        conditions = " ".join(d for d in detail if "Index Cond" in d)
        if not re.search(rf"\(\(?{first_columns[index]} ", conditions):
            found.append(line.strip())
    return found


def first_index_columns(engine: Engine) -> dict[str, str] | None:
    """PostgreSQL: the first column of each index of a growing table; None on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
            "AND tablename = ANY(:tables)"), {"tables": list(GROWING)}).all()
    found = {}
    for name, definition in rows:
        match = re.search(r"USING \w+ \((\w+)", definition)
        if match:
            found[name] = match.group(1)
    return found


def report_statements(store: Store, steps, plans: bool) -> None:
    with captured(store.engine) as seen:
        store.run_sync(whole_sweep(steps))
    scanning, first_columns = 0, first_index_columns(store.engine)
    for statement, parameters, took in seen:
        if not _PLANNED.match(statement):
            continue
        plan = plan_of(store.engine, statement, parameters)
        full = scans(plan, first_columns)
        scanning += bool(full)
        if full or plans:
            print(f"  {'SCAN' if full else '    '} {took * 1e3:8.2f} ms  {_short(statement)}")
            for line in plan:
                print(f"      {line}")
    print(f"  {len(seen)} statements in one sweep ({scanning} reading a growing table whole; "
          "ms: to the first row)")


def _short(statement: str) -> str:
    """``statement`` on one line, its list of selected columns elided."""
    return re.sub(r"^SELECT (?:(?!\bFROM\b).){80,} FROM ", "SELECT ... FROM ",
                  " ".join(statement.split()))


def run(url: str, args: argparse.Namespace) -> None:
    store, keyring = build(url, args.objects, args.revision)
    try:
        steps = steps_of(keyring)
        for _ in range(3):
            store.run_sync(whole_sweep(steps))  # warm: caches, the first reads
        for step in steps:
            median, worst = timed(store, partial(_one_step, step), args.rounds)
            print(f"  {step.__name__:24} median {median:8.2f} ms  max {worst:8.2f} ms")
        median, worst = timed(store, lambda s: sweep_due_states(s, int(time.time())),
                              args.rounds)
        print(f"  {'sweep_due_states':24} median {median:8.2f} ms  max {worst:8.2f} ms")
        median, worst = timed(store, whole_sweep(steps), args.rounds)
        print(f"  {'whole sweep':24} median {median:8.2f} ms  max {worst:8.2f} ms")
        report_statements(store, steps, args.plans)
        # A re-wrap under way: t1's tenant key retired with a quarter of the objects under it
        # (the copies' material is bound to the template's uid: the first ones the re-wrap
        # takes are wrapped again for their own).
        store.run_sync(partial(_own_material, keyring=keyring, tenant="t1",
                               count=(args.rounds + 1) * 200 + 1))
        now = int(time.time())
        store.run_sync(lambda session: rotate_tenant_key(
            session, keyring, "t1", now=now, by="sweep_bench", reason="the benchmark"))
        median, worst = timed(store, partial(_one_step, steps[3]), args.rounds)
        print(f"  {'rewrap_step, re-wrapping':24} median {median:8.2f} ms  max {worst:8.2f} ms"
              f"  (a batch of 200 of the {args.objects // len(TENANTS)} objects of a tenant)")
    finally:
        store.stopService()


def _own_material(session, *, keyring: Keyring, tenant: str, count: int) -> None:
    """The first ``count`` objects of ``tenant`` in the order the re-wrap takes them (by
    uid; by created_seq before migration 0005) with material wrapped for their own uid."""
    objects = select(ManagedObject).where(ManagedObject.tenant == tenant,
                                          ManagedObject.level.is_(None))
    template = session.scalars(objects.order_by(ManagedObject.created_seq).limit(1)).one()
    plaintext = keyring.unwrap(session, template)  # made before its copies
    rows = {row.uid: row for order in (ManagedObject.uid, ManagedObject.created_seq)
            for row in session.scalars(objects.order_by(order).limit(count)).all()}
    for row in rows.values():
        row.material, row.wrapped_by = keyring.wrap_for_tenant(
            session, tenant, row.uid, plaintext, binding=Binding.of(row))
    session.flush()


def _one_step(step, session):
    return step(session, time.time())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"),
                        default="sqlite")
    parser.add_argument("--revision", default="head",
                        help="the schema revision to migrate to (default: the newest)")
    parser.add_argument("--plans", action="store_true",
                        help="print every statement's plan, not only the scans")
    args = parser.parse_args()
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {args.objects} objects, schema {args.revision}")
    with tempfile.TemporaryDirectory(prefix="kcm-sweep-bench-") as work:
        if args.backend in ("sqlite", "both"):
            print("SQLite")
            run(f"sqlite:///{os.path.join(work, 'kcm.db')}", args)
        if args.backend in ("postgresql", "both"):
            bin_dir = find_pg_bin()
            if bin_dir is None:
                print("no PostgreSQL binaries (apt-get install postgresql-15, "
                      "or set KCM_PG_BIN)")
                return
            print("PostgreSQL")
            with running_cluster(bin_dir) as cluster:
                run(cluster.url, args)


if __name__ == "__main__":
    main()
