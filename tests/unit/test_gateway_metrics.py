"""kcm-gateway's metrics: what its handler, fast path, L3 cache and link count, its
readiness, and the metrics_listen setting."""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from kcm.connection_guard import ConnectionGuard
from kcm.gateway import tap
from kcm.gateway.config import load_config
from kcm.gateway.core_origin import Origin
from kcm.gateway.fast_path import FastPath
from kcm.gateway.handler import GatewayRequestHandler, new_correlation_id
from kcm.gateway.l3_cache import L3Cache, Need, ServiceKeyMissing
from kcm.gateway.local_batch import LocalRunner, l4_engine
from kcm.gateway.metrics import GatewayMetrics
from kcm.kmip.enums import Operation
from kcm.kmip.errors import KmipError
from kcm.kmip.payloads.crypto import DecryptRequest
from kcm.kmip_protocol import ConnectionLimits
from kcm.l4.opened_keys import OpenedKeys
from kcm.link.views import UNSCOPED, scope_digest
from kcm.ttlv.peek import peek_response
from tests.core_support import CoreHarness
from tests.gateway_support import (
    APP,
    CONNECTION,
    L3,
    L3_UID,
    FakeLink,
    create_l4,
    create_managed,
    encrypt,
    get,
    item,
    locate,
    request,
    response,
)
from tests.unit.test_metrics import samples


class Gateway:
    """The handler with its fast path, a real cache, a fake link and the metrics."""

    def __init__(self, link: FakeLink, *, max_stale: float = 3600.0) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.link = link
        self.metrics = GatewayMetrics(timer=self.clock.seconds)
        self.cache = L3Cache(link.fetch_service_keys, connected=lambda: not link.down,
                             clock=self.clock.seconds, ttl=60.0, max_stale=max_stale)
        fast_path = FastPath(cache=self.cache, engine_factory=l4_engine,
                             clock=self.clock.seconds, new_correlation_id=new_correlation_id,
                             max_message_size=1 << 20, max_batch_items=64,
                             served=self.metrics.fast_served)
        self.handler = GatewayRequestHandler(
            runner=LocalRunner(new_correlation_id=new_correlation_id), cache=self.cache,
            link=link, clock=self.clock.seconds, fast_path=fast_path, metrics=self.metrics)
        link.links_made, link.in_flight, link.links_drained = 1, 0, 0
        link.links_renewed = link.links_renew_refused = 0
        self.guard = ConnectionGuard(ConnectionLimits(), self.clock)
        self.metrics.watch(link=link, cache=self.cache, guard=self.guard,
                           clock=self.clock.seconds)

    def send(self, wire: bytes, *, took: float = 0.0):
        answer = self.handler.handle_request(wire, CONNECTION)
        self.clock.advance(took)  # too late for a synchronous answer's time: it is taken
        if isinstance(answer, Deferred):
            results: list[bytes] = []
            answer.addCallback(results.append)
            answer = results[0]
        return response(answer)

    def requests(self, operation: str, result: str, path: str) -> float:
        return self.metrics.requests.value(operation, result, path)

    def scraped(self) -> dict:
        return samples(self.metrics.registry)


@pytest.fixture
def link() -> FakeLink:
    link = FakeLink()
    link.keys[("demo", "app")] = [L3]
    link.keys[L3_UID] = [L3]
    return link


@pytest.fixture
def gateway(link: FakeLink) -> Gateway:
    return Gateway(link)


def test_local_items_are_counted_by_operation_and_result(gateway: Gateway) -> None:
    created = gateway.send(request(create_l4()))  # general path: fetches the L3 first
    token = created.batch_items[0].response_payload.unique_identifier
    assert gateway.requests("CREATE", "success", "local") == 1
    # The fast path: one request of three items, then one of one.
    gateway.send(request(get(token), encrypt(token), encrypt(token)))
    sealed = gateway.send(request(encrypt(token))).batch_items[0].response_payload
    assert gateway.requests("GET", "success", "local") == 1
    assert gateway.requests("ENCRYPT", "success", "local") == 3
    gateway.send(request(item(Operation.DECRYPT, DecryptRequest(
        unique_identifier=token, data=sealed.data, iv_counter_nonce=sealed.iv_counter_nonce,
        authenticated_encryption_tag=sealed.authenticated_encryption_tag))))
    assert gateway.requests("DECRYPT", "success", "local") == 1
    # A refusal (not the fast path's) is counted by its result.
    gateway.send(request(get("l4.1.nonsense")))
    assert gateway.requests("GET", "operation_failed", "local") == 1
    got = gateway.scraped()
    assert got[("kcm_gateway_request_duration_seconds_count", (("path", "local"),))] == 5
    assert got[("kcm_gateway_requests_total", (("operation", "ENCRYPT"),
                                               ("path", "local"), ("result", "success")))] == 3


def test_forwarded_and_mixed_items_are_counted_by_path(gateway: Gateway,
                                                       core: CoreHarness) -> None:
    gateway.link.answer = core.client(APP).send
    gateway.send(request(create_managed(), locate()))
    assert gateway.requests("CREATE", "success", "forwarded") == 1
    assert gateway.requests("LOCATE", "success", "forwarded") == 1
    gateway.send(request(create_l4(), locate()))
    assert gateway.requests("CREATE", "success", "local") == 1
    assert gateway.requests("LOCATE", "success", "forwarded") == 2
    gateway.link.down = True
    gateway.send(request(locate()))
    assert gateway.requests("LOCATE", "operation_failed", "forwarded") == 1
    got = gateway.scraped()
    assert got[("kcm_gateway_request_duration_seconds_count", (("path", "forwarded"),))] == 2
    assert got[("kcm_gateway_request_duration_seconds_count", (("path", "mixed"),))] == 1


def test_a_relayed_answer_is_counted_after_it_is_written(link: FakeLink,
                                                        core: CoreHarness) -> None:
    """With ``later`` (kcm-gateway: the end of the reactor's turn), a request relayed whole
    is answered first and timed and counted when ``later`` runs, with the time it took
    when its answer came back; the answers of one turn are counted by one call."""
    scheduled: list = []
    gateway = Gateway(link)
    gateway.handler = GatewayRequestHandler(
        runner=LocalRunner(new_correlation_id=new_correlation_id), cache=gateway.cache,
        link=link, clock=gateway.clock.seconds, metrics=gateway.metrics,
        later=scheduled.append)
    link.answer = core.client(APP).send
    gateway.send(request(locate()), took=0.5)
    gateway.send(request(locate(), locate()), took=0.5)
    assert gateway.requests("LOCATE", "success", "forwarded") == 0
    assert len(scheduled) == 1
    scheduled.pop()()
    assert gateway.requests("LOCATE", "success", "forwarded") == 3
    got = gateway.scraped()
    assert got[("kcm_gateway_request_duration_seconds_count", (("path", "forwarded"),))] == 2
    assert got[("kcm_gateway_request_duration_seconds_sum", (("path", "forwarded"),))] == 0
    gateway.send(request(locate()))  # a later turn: scheduled anew
    assert len(scheduled) == 1
    scheduled.pop()()
    assert gateway.requests("LOCATE", "success", "forwarded") == 4


def test_an_unreadable_request_is_counted_as_forwarded_unknown(gateway: Gateway,
                                                               core: CoreHarness) -> None:
    gateway.link.answer = core.client(APP).send
    wire = bytearray(request(locate()))
    wire[-9:] = b"\xff" * 9  # the last item's end no longer reads
    gateway.send(bytes(wire))
    assert gateway.requests("unknown", "operation_failed", "forwarded") == 1


def test_latency_is_observed_with_the_metrics_timer(gateway: Gateway) -> None:
    gateway.link.hold_fetches = True
    answer = gateway.handler.handle_request(request(create_l4()), CONNECTION)
    gateway.clock.advance(0.003)
    gateway.link.hold_fetches = False
    gateway.link.pending.pop().callback([L3])
    assert isinstance(answer, Deferred) and answer.called
    got = gateway.scraped()
    local = (("le", "0.0025"), ("path", "local"))
    assert got[("kcm_gateway_request_duration_seconds_bucket", local)] == 0
    assert got[("kcm_gateway_request_duration_seconds_bucket",
                (("le", "0.005"), ("path", "local")))] == 1


def test_cache_reads_are_counted_hit_stale_miss_expired(gateway: Gateway) -> None:
    cache = gateway.cache
    cache.store([L3], APP, current_of=("demo", "app"))
    cache.current("demo", "app")
    cache.by_uid(L3_UID, APP)
    gateway.clock.advance(61)  # past the TTL: served and refreshed
    cache.current("demo", "app")
    with pytest.raises(ServiceKeyMissing):
        cache.current("demo", "billing")
    cache.lacks(Need("demo", "other"), APP)  # the handler's look, not a read: not counted
    gateway.link.down = True
    gateway.clock.advance(3601)  # past max-stale since the refresh, unlinked: refused
    with pytest.raises(KmipError, match="refusing to use it"):
        cache.by_uid(L3_UID, APP)
    got = gateway.scraped()

    def lookups(result: str) -> float:
        return got[("kcm_gateway_l3_cache_lookups_total", (("result", result),))]

    assert [lookups(r) for r in ("hit", "stale", "miss", "expired")] == [2, 1, 1, 1]
    assert got[("kcm_gateway_l3_cache_keys", ())] == 1
    assert got[("kcm_gateway_opened_deks", ())] == 0  # this gateway keeps none


def test_a_request_counts_each_key_it_reads_once_however_many_times_it_is_read(
        gateway: Gateway) -> None:
    """A request whose key is not held reads it on the fast path, on the general path's
    first run (a miss: fetched), and again after the fetch: counted once, a miss (it
    counted two misses and a hit). The next request's read is one hit."""
    gateway.link.keys[("demo", "app")] = [L3]
    gateway.link.keys[L3_UID] = [L3]

    def lookups() -> list[float]:
        got = gateway.scraped()
        return [got[("kcm_gateway_l3_cache_lookups_total", (("result", r),))]
                for r in ("hit", "stale", "miss", "expired")]

    assert gateway.send(request(create_l4())).batch_items[0].result_status == 0
    assert lookups() == [0, 0, 1, 0]
    assert gateway.send(request(create_l4())).batch_items[0].result_status == 0
    assert lookups() == [1, 0, 1, 0]



def test_a_request_refused_a_key_past_max_stale_counts_one_expired_read(
        gateway: Gateway) -> None:
    """The fast path's read of a key it may not use (past max-stale, unlinked) is left to
    the general path, which reads it again and refuses: counted once, expired (by service
    for a Create, by uid for an Encrypt)."""
    created = gateway.send(request(create_l4())).batch_items[0]  # fetched: a miss
    token = created.response_payload.unique_identifier

    def lookups() -> list[float]:
        got = gateway.scraped()
        return [got[("kcm_gateway_l3_cache_lookups_total", (("result", r),))]
                for r in ("hit", "stale", "miss", "expired")]

    assert lookups() == [0, 0, 1, 0]
    gateway.link.down = True
    gateway.clock.advance(3601)
    answer = gateway.send(request(create_l4())).batch_items[0]
    assert "refusing to use it" in answer.result_message
    assert lookups() == [0, 0, 1, 1]
    answer = gateway.send(request(encrypt(token))).batch_items[0]
    assert "refusing to use it" in answer.result_message
    assert lookups() == [0, 0, 1, 2]

def test_services_forgotten_as_idle_are_counted_and_leave_the_keys_held(
        gateway: Gateway) -> None:
    cache = gateway.cache
    cache.idle = 600.0
    cache.store([L3], APP, current_of=("demo", "app"))
    got = gateway.scraped()
    assert got[("kcm_gateway_l3_idle_forgotten_total", ())] == 0
    assert got[("kcm_gateway_l3_cache_keys", ())] == 1
    gateway.clock.advance(3600)  # unused for l3_idle, and past max_stale: forgotten
    cache.refresh_due()
    got = gateway.scraped()
    assert got[("kcm_gateway_l3_idle_forgotten_total", ())] == 1
    assert got[("kcm_gateway_l3_cache_keys", ())] == 0


def test_opened_deks_held_are_read_when_scraped(gateway: Gateway) -> None:
    gateway.cache.opened_keys = opened_keys = OpenedKeys(clock=gateway.clock.seconds)
    opened_keys.put("l4.1.A", "a1" * 16, L3, b"a" * 32)
    opened_keys.put("l4.1.B", "b1" * 16, L3, b"b" * 32)
    assert gateway.scraped()[("kcm_gateway_opened_deks", ())] == 2


def test_failed_service_key_fetches_are_counted_by_reason(gateway: Gateway) -> None:
    """Each fetch sent that failed, by why: the core refused it, no link, no answer in
    time, the link or the tenant's queue full, anything else; a fetch that succeeded, and
    a "not found" answered from memory, are not counted."""
    from twisted.internet.defer import fail

    from kcm.gateway.link_client import LinkBusy, LinkDown, LinkTimeout, ServiceKeyRefused
    from kcm.kmip.enums import ResultReason

    failures: dict[str, Exception] = {
        "l3-gone": ServiceKeyRefused(ResultReason.OBJECT_NOT_FOUND, "no such L3"),
        "l3-down": LinkDown("no link to the core"),
        "l3-late": LinkTimeout("the core did not answer within 30s"),
        "l3-busy": LinkBusy("1024 calls in flight to the core"),
        "l3-bug": RuntimeError("unexpected"),
    }
    held: list[Deferred] = []

    def fetch(caller, tenant, service, uid=None) -> Deferred:
        if uid in failures:
            return fail(failures[uid])
        held.append(Deferred())
        return held[-1]

    cache = L3Cache(fetch, connected=lambda: True, clock=gateway.clock.seconds,
                    max_fetches_per_tenant=1, max_waiting_per_tenant=1)
    metrics = GatewayMetrics()
    metrics.watch(link=gateway.link, cache=cache, guard=gateway.guard,
                  clock=gateway.clock.seconds)
    for uid in failures:
        cache.ensure([Need(uid=uid)], APP)
    cache.ensure([Need(uid="l3-gone")], APP)  # remembered "not found": no fetch
    cache.ensure([Need("demo", "a")], APP)  # in flight (held)
    cache.ensure([Need("demo", "b")], APP)  # waits its turn
    cache.ensure([Need("demo", "c")], APP)  # beyond max_waiting_per_tenant: busy
    held[0].callback([L3])
    got = samples(metrics.registry)
    assert {reason: got[("kcm_gateway_l3_fetch_failures_total", (("reason", reason),))]
            for reason in ("refused", "link_down", "timeout", "busy", "error")} == {
        "refused": 1, "link_down": 1, "timeout": 1, "busy": 2, "error": 1}


def test_opened_dek_lookups_are_read_when_scraped(gateway: Gateway) -> None:
    def lookups() -> list[float]:
        got = gateway.scraped()
        return [got[("kcm_gateway_dek_cache_lookups_total", (("result", result),))]
                for result in ("hit", "miss")]

    assert lookups() == [0, 0]  # this gateway keeps none
    gateway.cache.opened_keys = opened_keys = OpenedKeys(clock=gateway.clock.seconds)
    opened_keys.get("l4.1.A", L3)
    opened_keys.put("l4.1.A", "a1" * 16, L3, b"a" * 32)
    opened_keys.get("l4.1.A", L3)
    opened_keys.get("l4.1.A", L3)
    assert lookups() == [2, 1]


def test_link_state_in_flight_reconnects_and_connections_are_read_when_scraped(
        gateway: Gateway) -> None:
    link = gateway.link
    link.connected, link.in_flight, link.links_made, link.links_drained = True, 7, 3, 1
    gateway.guard.connections = 4
    got = gateway.scraped()
    assert got[("kcm_gateway_link_drains_total", ())] == 1
    assert got[("kcm_gateway_link_up", ())] == 1
    assert got[("kcm_gateway_link_in_flight", ())] == 7
    assert got[("kcm_gateway_link_reconnects_total", ())] == 2
    assert got[("kcm_gateway_open_connections", ())] == 4
    assert got[("kcm_gateway_link_renewals_total", (("result", "linked"),))] == 0
    link.links_renewed, link.links_renew_refused = 1, 3
    got = gateway.scraped()
    assert got[("kcm_gateway_link_renewals_total", (("result", "linked"),))] == 1
    assert got[("kcm_gateway_link_renewals_total", (("result", "refused"),))] == 3
    link.connected = False
    assert gateway.scraped()[("kcm_gateway_link_up", ())] == 0


def test_links_refused_for_their_cores_database_are_counted_by_reason(
        gateway: Gateway) -> None:
    followed = gateway.link.followed
    followed.follow(Origin("d1", 2))
    for origin in (Origin("d1", 1), Origin("d1", 0), Origin("d2", 5), Origin("d1", 3)):
        followed.judge(origin)
    got = gateway.scraped()
    assert got[("kcm_gateway_link_lineage_refusals_total", (("reason", "older_copy"),))] == 2
    assert got[("kcm_gateway_link_lineage_refusals_total",
               (("reason", "another_deployment"),))] == 1


# Readiness ------------------------------------------------------------------------------------

def test_ready_while_linked(gateway: Gateway) -> None:
    readiness = gateway.metrics.readiness()
    assert readiness.ready and readiness.details == {"linked": True}


def test_unlinked_without_keys_is_not_ready(gateway: Gateway) -> None:
    gateway.link.connected = False
    readiness = gateway.metrics.readiness()
    assert not readiness.ready and readiness.details["linked"] is False


def test_ready_while_calls_wait_for_the_next_link_after_a_drain(gateway: Gateway) -> None:
    gateway.link.connected, gateway.link.relinking = False, True
    readiness = gateway.metrics.readiness()
    assert readiness.ready and readiness.details == {"linked": False, "relinking": True}


def test_unlinked_ready_until_max_stale_then_not(link: FakeLink) -> None:
    gateway = Gateway(link, max_stale=120.0)
    gateway.cache.store([L3], APP, current_of=("demo", "app"))
    gateway.clock.advance(100)
    link.connected = False
    link.down = True
    readiness = gateway.metrics.readiness()
    assert readiness.ready
    assert readiness.details == {"linked": False, "max_stale_left": 20.0}
    gateway.clock.advance(20.5)
    readiness = gateway.metrics.readiness()
    assert not readiness.ready and readiness.details["linked"] is False
    assert "max_stale" in readiness.details["reason"]
    link.connected = True  # linked again: ready, whatever the cache holds
    assert gateway.metrics.readiness().details == {"linked": True}


def test_not_ready_before_it_is_assembled() -> None:
    assert not GatewayMetrics().readiness().ready


# Configuration --------------------------------------------------------------------------------

def test_metrics_listen_is_off_by_default_and_set_by_file_or_option(tmp_path) -> None:
    assert load_config(None).metrics_listen == ""
    config = tmp_path / "gateway.toml"
    config.write_text('[gateway]\nmetrics_listen = "tcp:9697:interface=127.0.0.1"\n')
    assert load_config(config).metrics_listen == "tcp:9697:interface=127.0.0.1"
    options = tap.Options()
    options.parseOptions(["-c", str(config), "--metrics-listen", "tcp:9800"])
    assert options["gateway_config"].metrics_listen == "tcp:9800"


def test_metrics_listen_goes_with_workers() -> None:
    """The supervisor's listener answers for its workers (kcm.gateway.worker_metrics)."""
    config = load_config(None, {"workers": "2", "metrics_listen": "tcp:9697"})
    assert (config.workers, config.metrics_listen) == (2, "tcp:9697")
    options = tap.Options()
    options.parseOptions(["--workers", "0", "--metrics-listen", "tcp:9697"])
    assert options["gateway_config"].metrics_listen == "tcp:9697"


def test_make_service_adds_the_listener_only_when_asked() -> None:
    def names(*args: str) -> list[str]:
        options = tap.Options()
        options.parseOptions(list(args))
        return [child.name for child in tap.makeService(options, Clock())]

    assert "kcm-metrics-listener" not in names()
    assert names("--metrics-listen", "tcp:0:interface=127.0.0.1")[-1] == "kcm-metrics-listener"


def test_the_peek_reads_each_answer_item_s_operation(core: CoreHarness) -> None:
    client = core.client(APP)
    answer = client.send(request(create_managed(), locate()))
    assert [i.operation for i in peek_response(answer).items] == [
        int(Operation.CREATE), int(Operation.LOCATE)]
    refused = client.send(b"\x42\x00\x78\x01\x00\x00\x00\x08garbage!")
    assert [i.operation for i in peek_response(refused).items] == [None]


def test_a_request_refused_whole_is_counted_as_unknown(gateway: Gateway) -> None:
    wire = bytearray(request(create_l4(), create_l4()))
    wire[wire.index(bytes.fromhex("42000d0200000004")) + 8 + 3] = 3  # Batch Count 3, not 2
    answer = gateway.send(bytes(wire))
    assert len(answer.batch_items) == 1
    assert gateway.requests("unknown", "operation_failed", "local") == 1
    assert gateway.requests("CREATE", "operation_failed", "local") == 0


def test_busy_poll_spins_are_read_when_scraped_and_only_with_busy_poll() -> None:
    from twisted.internet.epollreactor import EPollReactor

    from kcm import reactor_dispatch
    from tests.unit.test_busy_poll import _Kernel

    def parsed(*args: str) -> tap.Options:
        options = tap.Options()
        options.parseOptions(["--listen", "tcp:0", *args])
        return options

    assert not any(name.startswith("kcm_gateway_busy_poll") for name, _ in samples(
        tap.makeService(parsed(), Clock()).metrics.registry))
    reactor = EPollReactor()
    try:
        service = tap.makeService(parsed("--busy-poll-us", "500"), reactor)
        registry = service.metrics.registry
        # Before the process starts (no wait installed yet): zeros.
        got = samples(registry)
        assert got[("kcm_gateway_busy_poll_spins_total", (("ended", "event"),))] == 0
        assert got[("kcm_gateway_busy_poll_seconds_total", ())] == 0
        reactor_dispatch.install(reactor, busy_poll=service.busy_poll)
        wait = reactor_dispatch.spinning_wait(reactor)
        assert wait is not None and wait.window == pytest.approx(500e-6)
        # Spins on a fake kernel (tests/unit/test_busy_poll.py): one that an event ends, one
        # that the window ends.
        kernel = _Kernel()
        wait._now, wait._give_way = kernel.now, kernel.give_way
        kernel.ready_at = kernel.time
        wait.wait(kernel.poll, None, 8)  # (slept: not a spin)
        kernel.ready_at = kernel.time + 100e-6
        wait.wait(kernel.poll, None, 8)
        wait.wait(kernel.poll, 0.01, 8)
        got = samples(registry)
        assert {end: got[("kcm_gateway_busy_poll_spins_total", (("ended", end),))]
                for end in ("event", "window", "ceded")} == {
            "event": 1, "window": 1, "ceded": 0}
        assert got[("kcm_gateway_busy_poll_seconds_total", ())] == pytest.approx(
            600e-6, abs=30e-6)
    finally:
        reactor._poller.close()


def test_not_ready_while_the_core_scopes_it_to_no_tenant(gateway: Gateway) -> None:
    for admins in (False, True):
        gateway.link.view = scope_digest((), admins)
        readiness = gateway.metrics.readiness()
        assert not readiness.ready and readiness.details["linked"] is True
        assert "serve no tenant" in readiness.details["reason"]
    gateway.link.view = scope_digest(["demo"], False)
    assert gateway.metrics.readiness().details == {"linked": True}
    gateway.link.view = UNSCOPED
    assert gateway.metrics.readiness().ready
