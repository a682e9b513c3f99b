"""kcm-core's metrics: requests, transactions and audit records counted; outbox lag and
connections read when scraped; the database readiness check (a SQLite file locked by
another process is not ready); the metrics_listen setting."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from kcm.core import tap
from kcm.core.config import load_config
from kcm.core.metrics import CoreMetrics, DatabaseReadiness, database_state
from kcm.core.request_handler import CoreRequestHandler
from kcm.core.store.migrate import HEAD_REVISION, upgrade
from kcm.metrics import Readiness
from tests.core_support import CoreHarness
from tests.gateway_support import create_managed, get, locate, request, response
from tests.unit.test_metrics import samples


@pytest.fixture
def measured(core: CoreHarness) -> tuple[CoreHarness, CoreMetrics, CoreRequestHandler]:
    metrics = CoreMetrics()
    core.store.on_transaction = metrics.transaction
    core.store.on_audit_written = metrics.audit_written
    handler = CoreRequestHandler(core.store, core.keyring, clock=time.time, metrics=metrics)
    return core, metrics, handler


def test_items_are_counted_by_operation_and_result(measured) -> None:
    core, metrics, handler = measured
    caller = core.caller()
    answer = response(handler.respond(request(create_managed(), locate(), get("nothing")),
                                      caller, int(time.time())))
    assert len(answer.batch_items) == 3
    handler.respond(b"\x42\x00\x78\x01\x00\x00\x00\x08garbage!", caller, int(time.time()))
    got = samples(metrics.registry)

    def requests(operation: str, result: str) -> float:
        return got.get(("kcm_core_requests_total",
                        (("operation", operation), ("result", result))), 0)

    assert requests("CREATE", "success") == 1
    assert requests("LOCATE", "success") == 1
    assert requests("GET", "operation_failed") == 1
    assert requests("unknown", "operation_failed") == 1  # refused whole
    # One audit record per item, and one for the refused request.
    assert got[("kcm_core_audit_records_total", ())] == 4
    assert got[("kcm_core_db_transaction_duration_seconds_count", (("kind", "write"),))] >= 2


def test_operations_kmip_does_not_define_share_one_label(measured) -> None:
    """A client picks the Operation's value: values KMIP does not define are counted as
    ``unknown``, so no client can make series (or kept children) without bound."""
    _, metrics, _ = measured
    for value in range(0x7F000001, 0x7F000033):
        metrics.item(value)
    metrics.item(0x0000000A)  # Get
    got = samples(metrics.registry)
    labels = {dict(key[1])["operation"] for key in got
              if key[0] == "kcm_core_requests_total"}
    assert labels == {"unknown", "GET"}
    assert got[("kcm_core_requests_total", (("operation", "unknown"),
                                            ("result", "operation_failed")))] == 50
    assert len(metrics._items) == 2


def test_only_the_documented_series_are_exported(measured) -> None:
    core, metrics, handler = measured
    handler.respond(request(create_managed()), core.caller(), int(time.time()))
    names = {name for name, _ in samples(metrics.registry)}
    assert names, "nothing was exported"
    assert not [name for name in names if name.endswith("_created")]


def test_the_counters_alerted_on_any_increase_start_at_zero() -> None:
    """``increase()`` of a series that first appears at 1 is nothing: the first time the
    store is unavailable (or a request expires) in a process's life must be a rise from 0."""
    got = samples(CoreMetrics().registry)
    for kind in ("database", "l1", "stopped"):
        assert got[("kcm_core_store_unavailable_total", (("kind", kind),))] == 0
    for ran in ("false", "true"):
        assert got[("kcm_core_requests_expired_total", (("ran", ran),))] == 0


def test_read_only_batches_time_a_read_transaction(measured) -> None:
    core, metrics, handler = measured
    handler.respond(request(locate()), core.caller(), int(time.time()))
    got = samples(metrics.registry)
    assert got[("kcm_core_db_transaction_duration_seconds_count", (("kind", "read"),))] == 1
    assert got[("kcm_core_audit_records_total", ())] == 1


def test_connections_outbox_head_and_lag_per_gateway_are_read_when_scraped() -> None:
    metrics = CoreMetrics()
    guard = SimpleNamespace(connections=3)
    fanout = SimpleNamespace(head=40)

    def link(name: str | None, delivered: int) -> SimpleNamespace:
        gateway = None if name is None else SimpleNamespace(id=name)
        return SimpleNamespace(gateway=gateway, delivered_seq=delivered)

    links = SimpleNamespace(links=[link("spiffe://kcm.test/gateway/a", 40),
                                   link("spiffe://kcm.test/gateway/b", 31),
                                   link("spiffe://kcm.test/gateway/b", 38)],
                            refreshes={"unchanged": 7, "changed": 2})
    metrics.watch(guard=guard, fanout=fanout, links=links)
    got = samples(metrics.registry)
    assert got[("kcm_core_open_connections", ())] == 3
    assert got[("kcm_core_outbox_head", ())] == 40
    lag = "kcm_core_outbox_lag_events"
    assert got[(lag, (("gateway", "spiffe://kcm.test/gateway/a"),))] == 0
    assert got[(lag, (("gateway", "spiffe://kcm.test/gateway/b"),))] == 9  # its worst link
    assert got[("kcm_core_gateway_links", (("gateway", "spiffe://kcm.test/gateway/b"),))] == 2
    refreshes = "kcm_core_service_key_refreshes_total"
    assert got[(refreshes, (("outcome", "unchanged"),))] == 7
    assert got[(refreshes, (("outcome", "changed"),))] == 2
    links.links.clear()
    assert not [key for key in samples(metrics.registry) if key[0] == lag]


# The database check ---------------------------------------------------------------------------

def test_database_state_of_a_migrated_database_is_ok(core: CoreHarness) -> None:
    state = database_state(core.store.url)
    assert state["database"] == "ok" and state["revision"]


def test_database_state_of_a_moved_file_is_unreachable_and_creates_nothing(
        core: CoreHarness, tmp_path: Path) -> None:
    path = Path(core.store.url.removeprefix("sqlite:///"))
    path.rename(tmp_path / "moved.db")
    state = database_state(core.store.url)
    assert state["database"].startswith("unreachable: ")
    assert not path.exists()


def test_database_state_of_an_unmigrated_database_says_so(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    sqlite3.connect(path).execute("CREATE TABLE alembic_version (version_num TEXT)")
    state = database_state(f"sqlite:///{path}")
    assert state["database"].startswith("not migrated: at no revision")


def test_database_state_of_a_database_a_later_release_upgraded_says_to_restart_on_it(
        tmp_path: Path) -> None:
    # (a core of this release left running in the next release's upgrade: its kcm core
    # init and its restart would both refuse the database)
    path = tmp_path / "newer.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE alembic_version (version_num TEXT)")
    connection.execute("INSERT INTO alembic_version VALUES ('9999')")
    connection.commit()
    connection.close()
    state = database_state(f"sqlite:///{path}")
    assert state == {"database": f"newer than this kcm-core: at 9999, the code writes "
                                 f"{HEAD_REVISION} (restart it on the release that upgraded "
                                 f"the database)", "revision": "9999"}


class Threads:
    """A fake ``run_in_thread``: each call's Deferred, to be fired by the test."""

    def __init__(self) -> None:
        self.calls: list[Deferred] = []

    def __call__(self, fn, *args) -> Deferred:
        self.calls.append(Deferred())
        return self.calls[-1]


def answers(d: Deferred) -> list[Readiness]:
    got: list[Readiness] = []
    d.addCallback(got.append)
    return got


def test_readiness_follows_the_check_and_shares_one_running_check() -> None:
    clock, threads = Clock(), Threads()
    ready = DatabaseReadiness("sqlite:///x.db", clock, timeout=2.0, run_in_thread=threads)
    first, second = answers(ready()), answers(ready())
    assert len(threads.calls) == 1 and not first
    threads.calls[0].callback({"database": "ok", "revision": "0005"})
    assert first == second == [Readiness(True, {"database": "ok", "revision": "0005"})]
    assert clock.getDelayedCalls() == []
    third = answers(ready())
    threads.calls[1].callback({"database": "unreachable: disk I/O error"})
    assert not third[0].ready and third[0].details["database"].startswith("unreachable")


def test_a_check_has_its_timeout_for_each_host_of_the_url() -> None:
    # libpq tries the hosts in turn, each within the check's connect timeout: a first host
    # that did not answer at all (a former primary, powered off) took all of the 2 s, and
    # every check answered 503 while the core's connections to the second one served.
    clock, threads = Clock(), Threads()
    url = ("postgresql+psycopg://kcm@/kcm?host=10.0.0.1:5432&host=10.0.0.2:5432"
           "&target_session_attrs=read-write")
    ready = DatabaseReadiness(url, clock, timeout=2.0, run_in_thread=threads)
    first = answers(ready())
    clock.advance(3.0)
    assert not first
    threads.calls[0].callback({"database": "ok", "revision": "0005"})
    assert first == [Readiness(True, {"database": "ok", "revision": "0005"})]
    assert DatabaseReadiness("postgresql://kcm@/kcm?host=a,b,c", clock).budget == 6.0
    assert DatabaseReadiness("postgresql://kcm@db:5432/kcm", clock).budget == 2.0
    second = answers(ready())
    clock.advance(4.0)
    assert second == [Readiness(False, {"database": "unreachable: no answer in 4 s"})]


def test_a_check_that_fails_answers_not_ready() -> None:
    clock = Clock()
    ready = DatabaseReadiness("sqlite:///x.db", clock,
                              run_in_thread=lambda fn, *a: fail(RuntimeError("no threads")))
    [readiness] = answers(ready())
    assert not readiness.ready and "no threads" in readiness.details["database"]


def test_a_check_that_hangs_answers_not_ready_at_its_timeout_and_is_not_repeated() -> None:
    clock, threads = Clock(), Threads()
    ready = DatabaseReadiness("sqlite:///x.db", clock, timeout=2.0, run_in_thread=threads)
    first = answers(ready())
    clock.advance(2.0)
    assert first == [Readiness(False, {"database": "unreachable: no answer in 2 s"})]
    # The hung thread is not joined by another one while it has not come back.
    second = answers(ready())
    assert len(threads.calls) == 1 and not second[0].ready
    threads.calls[0].callback({"database": "ok"})  # late: answers nobody
    third = answers(ready())
    assert len(threads.calls) == 2 and not third


# Configuration --------------------------------------------------------------------------------

def test_metrics_listen_is_off_by_default_and_set_by_file_or_option(tmp_path: Path) -> None:
    assert load_config(None).metrics_listen == ""
    config = tmp_path / "core.toml"
    config.write_text('[core]\nmetrics_listen = "tcp:9696:interface=127.0.0.1"\n')
    assert load_config(config).metrics_listen == "tcp:9696:interface=127.0.0.1"
    options = tap.Options()
    options.parseOptions(["-c", str(config), "--metrics-listen", ""])
    assert options["core_config"].metrics_listen == ""


def test_make_service_adds_the_listener_last_only_when_asked() -> None:
    def names(*args: str) -> list[str]:
        options = tap.Options()
        options.parseOptions(list(args))
        return [child.name for child in tap.makeService(options, Clock())]

    assert "kcm-metrics-listener" not in names()
    assert names("--metrics-listen", "tcp:0:interface=127.0.0.1")[-1] == "kcm-metrics-listener"


def test_database_state_of_a_sqlite_file_another_process_locks_is_not_writable(
        tmp_path: Path) -> None:
    """Reads go on in WAL mode while a ``sqlite3`` shell holds ``BEGIN EXCLUSIVE``, and every
    write fails: the check's write probe says so, within its timeout, and writes nothing."""
    path = tmp_path / "kcm.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    head = database_state(url)["revision"]
    shell = sqlite3.connect(path, isolation_level=None)
    shell.execute("BEGIN EXCLUSIVE")
    try:
        contents = path.read_bytes()
        started = time.monotonic()
        state = database_state(url, timeout=0.4)
        assert time.monotonic() - started < 0.4
        assert state == {"database": "not writable: database is locked", "revision": head}
        assert path.read_bytes() == contents
    finally:
        shell.execute("ROLLBACK")
        shell.close()
    assert database_state(url, timeout=0.4) == {"database": "ok", "revision": head}


def test_database_state_is_writable_between_this_cores_own_busy_writes(
        tmp_path: Path) -> None:
    """A core busy committing holds SQLite's write lock almost all the time, letting go for
    a moment between groups. The check waits for that moment on the core's own writers'
    lock (``write_lock``), as the core's writes do, instead of polling the file's lock on
    SQLite's back-off schedule (1, 2, 5 ... 100 ms), which missed the moments and answered
    "not writable: database is locked" to a load balancer under a normal write load."""
    import threading

    path = tmp_path / "kcm.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    head = database_state(url)["revision"]
    own_writers = threading.Lock()
    stop = threading.Event()

    def busy_core() -> None:  # groups of 50 ms, 1 ms apart (the reactor's turn between)
        writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            while not stop.is_set():
                with own_writers:
                    writer.execute("BEGIN IMMEDIATE")
                    time.sleep(0.05)
                    writer.execute("ROLLBACK")
                time.sleep(0.001)
        finally:
            writer.close()

    core = threading.Thread(target=busy_core)
    core.start()
    try:
        time.sleep(0.05)
        states = [database_state(url, timeout=0.4, write_lock=own_writers)
                  for _ in range(20)]
    finally:
        stop.set()
        core.join()
    assert states == [{"database": "ok", "revision": head}] * 20


def test_database_state_waits_for_this_cores_writers_at_most_half_its_timeout(
        tmp_path: Path) -> None:
    """A core whose own write holds its writers' lock past half the timeout (it waits for
    a file another process locked, say) is not writable for the check either."""
    import threading

    path = tmp_path / "kcm.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    own_writers = threading.Lock()
    with own_writers:
        started = time.monotonic()
        state = database_state(url, timeout=0.4, write_lock=own_writers)
        assert 0.2 <= time.monotonic() - started < 0.4
    assert state["database"] == "not writable: database is locked"


def test_database_state_is_writable_while_this_cores_own_long_write_holds_the_lock(
        tmp_path: Path) -> None:
    """A write transaction of the core itself that holds the file's write lock past the
    check's wait (a long batch) leaves the file writable, by the core: the check does not
    read it as another process's lock, and a load balancer keeps the busy core; held past
    the request deadline (a write stuck in the disk), it is not writable. A write of the
    core that waits for the lock another process holds is not writable."""
    import threading

    from kcm.core.store.engine import Store

    path = tmp_path / "kcm.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    head = database_state(url)["revision"]
    store = Store(url, threads=1)
    began, end = threading.Event(), threading.Event()

    def long_write(session: object) -> None:
        began.set()
        end.wait(5)

    def check(limit: float = 10.0) -> dict:
        return database_state(url, timeout=0.4, write_lock=store.writers_lock,
                              own_writer=store.file_write_lock_held_for,
                              own_write_limit=limit)

    writer = threading.Thread(target=store.run_sync, args=(long_write,))
    writer.start()
    try:
        assert began.wait(5)
        assert store.file_write_lock_held_for() is not None
        assert check() == {"database": "ok", "revision": head}
        stuck = check(limit=0.2)
        assert stuck["revision"] == head
        assert re.fullmatch(r"not writable: database is locked: this core's own write has "
                            r"held it for \d+\.\d s \(more than the request deadline, "
                            r"0\.2 s\)", stuck["database"])
    finally:
        end.set()
        writer.join()
    assert store.file_write_lock_held_for() is None
    shell = sqlite3.connect(path, isolation_level=None)
    shell.execute("BEGIN EXCLUSIVE")  # another process's lock: the core's write waits
    began.clear()
    writer = threading.Thread(target=store.run_sync, args=(long_write,))  # (begins later)
    writer.start()
    try:
        time.sleep(0.1)
        assert not began.is_set() and store.file_write_lock_held_for() is None
        assert check() == {"database": "not writable: database is locked", "revision": head}
    finally:
        shell.execute("ROLLBACK")
        shell.close()
        end.set()
        writer.join()
        store.stopService()


def test_the_own_write_lock_is_timed_for_a_lean_group_too_and_cleared_after_it_fails(
        tmp_path: Path) -> None:
    """(review39's mutation round) The writer thread's lean groups hold the file's lock as
    its ORM ones do: timed from their BEGIN, the time cleared when they end, failed too."""
    import threading

    from kcm.core.store.engine import Store

    url = f"sqlite:///{tmp_path / 'kcm.db'}"
    upgrade(url)
    store = Store(url, threads=1)
    began, end, seen = threading.Event(), threading.Event(), []

    def long_lean(transaction: object) -> None:
        began.set()
        end.wait(5)
        seen.append(store.file_write_lock_held_for())
        raise RuntimeError("the group failed")

    def write() -> None:
        with pytest.raises(RuntimeError):
            store._write_lean_sync(long_lean)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert began.wait(5)
        time.sleep(0.05)
        held = store.file_write_lock_held_for()
        assert held is not None and 0.04 <= held < 5
    finally:
        end.set()
        writer.join()
        store.stopService()
    assert seen[0] is not None and store.file_write_lock_held_for() is None


def test_the_readiness_check_is_given_the_own_write_and_the_request_deadline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checks: list = []

    class Recorded(DatabaseReadiness):
        def __init__(self, url: str, reactor: object, **kw: object) -> None:
            checks.append(kw["check"])
            super().__init__(url, reactor, **kw)

    monkeypatch.setattr(tap, "DatabaseReadiness", Recorded)
    path = tmp_path / "core.toml"
    path.write_text('[core]\nmetrics_listen = "tcp:0:interface=127.0.0.1"\n'
                    "[core.limits]\nrequest_deadline = 2.5\n")
    options = tap.Options()
    options.parseOptions(["-c", str(path)])
    core = tap.makeService(options, Clock())
    (check,) = checks
    store = core.getServiceNamed("kcm-store")
    assert check.keywords["own_writer"] == store.file_write_lock_held_for
    assert check.keywords["own_write_limit"] == 2.5
    assert check.keywords["write_lock"] is store.writers_lock


def test_database_state_of_a_database_on_a_full_disk_is_not_writable(
        core: CoreHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk takes BEGIN IMMEDIATE (it writes nothing), and fails every commit."""
    from kcm.core.store import disk_space

    directory = str(Path(core.store.url.removeprefix("sqlite:///")).parent)
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: 4096 if path == directory
                        else 1 << 30)
    assert database_state(core.store.url)["database"] == (
        f"not writable: the disk is full ({directory}: 4096 bytes free)")
    monkeypatch.setattr(disk_space, "free_bytes", lambda path: disk_space.DISK_FULL_BELOW)
    assert database_state(core.store.url)["database"] == "ok"


def test_readiness_shares_the_log_line_s_disk_and_its_hysteresis(
        core: CoreHarness) -> None:
    """kcm-core's readiness asks the request handler's DiskSpace (kcm.core.tap): once
    the disk counts as full, /readyz stays 503 until 2 MiB are free, not at 1 MiB and a
    byte."""
    from kcm.core.store import disk_space

    free = {"bytes": 4096}
    now = [0.0]
    disk = disk_space.DiskSpace.of(core.store.url, clock=lambda: now[0],
                                   free=lambda path: free["bytes"])
    assert disk is not None

    def state(value: int) -> str:
        free["bytes"] = value
        now[0] += disk_space.READ_EVERY
        return database_state(core.store.url, disk=disk)["database"]

    assert state(4096).startswith("not writable: the disk is full")
    assert state(disk_space.DISK_FULL_BELOW + 1).startswith("not writable: the disk is full")
    assert state(disk_space.DISK_FREE_AGAIN) == "ok"
    assert state(disk_space.DISK_FULL_BELOW + 1) == "ok"
    assert core.handler.disk_space is not None  # (what kcm.core.tap gives the check)
