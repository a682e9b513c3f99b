"""Conditional fetches over the link (link version 8): a gateway's refresh of an unchanged
service key is answered "unchanged" from a read, with no FetchServiceKey audit record; a
change, and a caller or tenant the core no longer accepts, are answered as every fetch is
(a write, audited). Mixed releases: a gateway of version 8 sends a core of version 7 plain
fetches, and a core of version 8 answers a gateway that named 7 as before."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select
from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.test import iosim

from kcm.core.gateway_scopes import GatewayScope, GatewayScopes
from kcm.core.link_server import LinkServerFactory
from kcm.core.service_keys import AUDIT_OPERATION
from kcm.core.store import repository
from kcm.core.store.schema import AuditLog
from kcm.gateway.l3_cache import L3Cache
from kcm.gateway.link_client import LinkClient, LinkClientProtocol, LinkError
from kcm.kmip.enums import ResultReason, State
from kcm.l4.service_key import ServiceKey
from kcm.link.events import EventKind
from kcm.link.frames import (
    LINK_VERSION,
    MAX_SENT_TOMBSTONES,
    ORIGIN_VERSION,
    PAGES_VERSION,
    REFRESH_VERSION,
    Frame,
    FrameError,
    FrameType,
    decode_frame,
    decode_frame_tree,
    encode_frame,
)
from kcm.link.keys_digest import Unchanged, keys_digest
from tests.core_support import LINEAGE, TRUST_DOMAIN, CoreHarness, service_principal
from tests.unit.test_gateway_core_session import GATEWAY, _NoEvents
from tests.unit.test_link_cancel import core_factory, frames_in
from tests.unit.test_link_drain import gateway_link, welcomed
from tests.unit.test_link_drain import linked as link_of_version

APP = service_principal()
KEY = ServiceKey("l3-00000000-0000-4000-8000-000000000001", "demo", "app", 1, State.ACTIVE,
                 bytes(32))
HELD = keys_digest([KEY])
TTL = 60.0


def test_link_version_8_is_the_conditional_fetch() -> None:
    assert REFRESH_VERSION == 8 and LINK_VERSION >= REFRESH_VERSION


# The core's end ---------------------------------------------------------------------------


def fetch_frame(held: bytes | None) -> bytes:
    return encode_frame(Frame(FrameType.FETCH_SERVICE_KEY, stream_id=1,
                              caller_identity=APP.spiffe_id, tenant="demo", service="app",
                              keys_digest=held))


@pytest.mark.parametrize("version", [PAGES_VERSION, REFRESH_VERSION, ORIGIN_VERSION, None])
def test_the_core_answers_unchanged_only_to_a_gateway_that_named_8(version) -> None:
    factory, _, _ = core_factory()
    asked: list[str] = []

    def fetch_keys(*args):
        asked.append("fetch")
        return succeed([KEY])

    def refresh_keys(caller, tenant, service, uid, held, now):
        asked.append("refresh")
        return succeed(Unchanged(held))

    factory.fetch_keys = fetch_keys  # type: ignore[method-assign]
    factory.refresh_keys = refresh_keys  # type: ignore[method-assign]
    protocol, transport = link_of_version(factory, version)
    protocol.dataReceived(fetch_frame(HELD))
    [answer] = frames_in(transport)
    if version in (REFRESH_VERSION, PAGES_VERSION):
        assert asked == ["refresh"]
        assert (answer.keys_digest, answer.service_keys) == (HELD, [])
    else:  # (a digest it could not have meant: a plain fetch, answered as ever)
        assert asked == ["fetch"]
        assert answer.keys_digest is None and answer.service_keys == [KEY]


# The gateway's end ------------------------------------------------------------------------


@pytest.mark.parametrize("core_version", [ORIGIN_VERSION, REFRESH_VERSION])
def test_the_gateway_says_what_it_holds_only_to_a_core_of_version_8(core_version) -> None:
    client = gateway_link(Clock())
    protocol, transport = welcomed(client, core_version)  # (ORIGIN included)
    frames_in(transport)
    got: list = []
    client.fetch_service_keys(APP, "demo", "app", held=HELD).addBoth(got.append)
    [fetch] = frames_in(transport)
    if core_version < REFRESH_VERSION:
        assert fetch.keys_digest is None
        protocol.dataReceived(encode_frame(Frame(FrameType.SERVICE_KEYS,
                                                 stream_id=fetch.stream_id,
                                                 service_keys=[KEY])))
        assert got == [[KEY]]
        # Sent no digest, it takes no "unchanged", even one of the digest it holds.
        client.fetch_service_keys(APP, "demo", "app", held=HELD).addBoth(got.append)
        [fetch] = frames_in(transport)
        protocol.dataReceived(encode_frame(Frame(FrameType.SERVICE_KEYS,
                                                 stream_id=fetch.stream_id,
                                                 keys_digest=HELD)))
        assert isinstance(got[-1].value, LinkError)
    else:
        assert fetch.keys_digest == HELD
        protocol.dataReceived(encode_frame(Frame(FrameType.SERVICE_KEYS,
                                                 stream_id=fetch.stream_id,
                                                 keys_digest=HELD)))
        assert got == [Unchanged(HELD)]
        # An "unchanged" of another digest than the one sent is not taken.
        client.fetch_service_keys(APP, "demo", "app", held=HELD).addBoth(got.append)
        [fetch] = frames_in(transport)
        protocol.dataReceived(encode_frame(Frame(FrameType.SERVICE_KEYS,
                                                 stream_id=fetch.stream_id,
                                                 keys_digest=bytes(32))))
        assert isinstance(got[-1].value, LinkError)
    client.stopService()


# Both ends, over a real store ---------------------------------------------------------------


class _SyncStore:
    """The core's store as the link server uses it, run in the calling thread (iosim has no
    reactor): reads read-only, fetches in a write transaction, as kcm-core runs them."""

    def __init__(self, core: CoreHarness) -> None:
        self.core = core
        #: How each transaction ran: ("run", write) or ("run_answer", True).
        self.calls: list[tuple[str, bool]] = []

    def run(self, fn, *, write: bool = True):
        self.calls.append(("run", write))
        return succeed(self.core.store.run_sync(fn, write=write))

    def run_answer(self, fn):
        self.calls.append(("run_answer", True))
        return succeed(self.core.store.run_sync(fn))


class Linked:
    """A gateway's L3 cache (conditional fetches) linked in memory to the core's link
    server over the ``core`` fixture's store."""

    def __init__(self, core: CoreHarness, scopes: GatewayScopes | None = None) -> None:
        self.core = core
        self.clock = Clock()
        self.clock.advance(time.time())
        self.store = _SyncStore(core)
        self.factory = LinkServerFactory(
            handler=core.handler, store=self.store,  # type: ignore[arg-type]
            keyring=core.keyring, fanout=_NoEvents(self.clock),
            resolve_peer=lambda transport: GATEWAY, trust_domain=TRUST_DOMAIN,
            subject_map=None, clock=self.clock, lineage=lambda: LINEAGE)
        if scopes is not None:
            self.factory.set_gateway_scopes(scopes)
        self.link = LinkClient(None, clock=self.clock)  # type: ignore[arg-type]
        self.cache = L3Cache(self.link.fetch_service_keys, connected=lambda: True,
                             clock=self.clock.seconds, ttl=TTL, random=lambda: 0.0,
                             conditional=True)
        self.relink()

    def relink(self) -> None:
        server = self.factory.buildProtocol(None)
        gateway_end = LinkClientProtocol(self.link)
        self.pump = iosim.connect(server, iosim.FakeTransport(server, True),
                                  gateway_end, iosim.FakeTransport(gateway_end, False),
                                  greet=False, clock=self.clock)
        server.handshakeCompleted()
        self.pump.flush()
        assert self.link.connected

    def refresh(self) -> None:
        for _ in range(int(TTL) + 1):  # a second at a time: the link's heartbeats go on
            self.clock.advance(1)
            self.pump.flush()
        assert self.link.connected
        self.cache.refresh_due()
        self.pump.flush()

    def audited(self) -> list[AuditLog]:
        return self.core.store.run_sync(lambda session: list(session.scalars(
            select(AuditLog).where(AuditLog.operation == AUDIT_OPERATION)
            .order_by(AuditLog.seq))), write=False)


def test_an_unchanged_refresh_writes_no_audit_record_and_a_change_is_fetched(
        core: CoreHarness) -> None:
    linked = Linked(core)
    done: list = []
    linked.cache.prewarm("demo", "app", APP).addCallback(done.append)
    linked.pump.flush()
    assert done == [None] and len(linked.audited()) == 1
    key = linked.cache.current("demo", "app")
    for _ in range(3):
        linked.refresh()
    assert len(linked.audited()) == 1
    assert linked.factory.refreshes == {"unchanged": 3, "changed": 0}
    assert linked.cache.refreshes_unchanged.value == 3
    assert linked.cache.current("demo", "app") == key
    # A change no event told the gateway of (none here): the next refresh fetches it, audited.
    core.store.run_sync(lambda session: repository.add_tombstone(
        session, token_id="ab" * 16, tenant="demo", l3_uid=key.uid, reason="revoked"))
    linked.refresh()
    assert linked.cache.is_tombstoned("ab" * 16)
    assert [row.result_status for row in linked.audited()] == ["SUCCESS", "SUCCESS"]
    assert linked.factory.refreshes == {"unchanged": 3, "changed": 1}
    linked.refresh()  # and then it is unchanged again
    assert linked.factory.refreshes == {"unchanged": 4, "changed": 1}
    assert len(linked.audited()) == 2


def test_an_unchanged_refresh_is_a_read_and_a_change_is_fetched_ordered_with_the_events(
        core: CoreHarness) -> None:
    """The judgement takes no writers' lock (a read transaction); a change is fetched as
    every fetch is, handed over before any event committed after it (Store.run_answer)."""
    linked = Linked(core)
    linked.cache.prewarm("demo", "app", APP)
    linked.pump.flush()
    assert linked.store.calls == [("run_answer", True)]
    linked.refresh()
    assert linked.store.calls[1:] == [("run", False)]
    key = linked.cache.current("demo", "app")
    core.store.run_sync(lambda session: repository.add_tombstone(
        session, token_id="ab" * 16, tenant="demo", l3_uid=key.uid, reason="revoked"))
    linked.refresh()
    assert linked.store.calls[2:] == [("run", False), ("run_answer", True)]
    assert linked.cache.is_tombstoned("ab" * 16)


def test_a_version_held_as_its_tombstones_outgrow_an_answer_is_still_unchanged(
        core: CoreHarness) -> None:
    """Past MAX_SENT_TOMBSTONES the core sends the version without them; the gateway, which
    holds it and learnt each from its event, says so too (the core's rule, its own words)."""
    linked = Linked(core)
    linked.cache.prewarm("demo", "app", APP)
    linked.pump.flush()
    key = linked.cache.current("demo", "app")
    tokens = [f"{n:032x}" for n in range(MAX_SENT_TOMBSTONES + 1)]

    def revoke(session) -> None:
        for token in tokens:
            repository.add_tombstone(session, token_id=token, tenant="demo",
                                     l3_uid=key.uid, reason="revoked")

    core.store.run_sync(revoke)
    for seq, token in enumerate(tokens, start=1):  # (the events of the revocations)
        linked.cache.apply_event(seq, EventKind.L4_TOMBSTONE.value, "demo",
                                 {"token_id": token, "unique_identifier": key.uid})
    linked.refresh()
    assert linked.factory.refreshes == {"unchanged": 1, "changed": 0}
    assert linked.cache.overflowed == set() and linked.cache.is_tombstoned(tokens[-1])
    assert len(linked.audited()) == 1


def test_a_gateway_whose_tenant_was_taken_out_of_its_scope_is_refused_at_its_refresh(
        core: CoreHarness) -> None:
    linked = Linked(core)
    linked.cache.prewarm("demo", "app", APP)
    linked.pump.flush()
    # The gateway's scope no longer has demo: its link is closed; the gateway (one that
    # keeps its keys, as before link version 6) links again and refreshes what it holds.
    linked.factory.set_gateway_scopes(GatewayScopes({
        "gateway/gw1": GatewayScope(frozenset({"other"}))}))
    linked.pump.flush()
    linked.relink()
    linked.refresh()
    assert linked.factory.refreshes == {"unchanged": 0, "changed": 0}  # never judged
    assert linked.cache.fetch_failures["refused"].value == 1
    deadline = time.monotonic() + 5  # (the refusal's record is written off the link's turn)
    while True:
        rows = core.store.run_sync(lambda session: list(session.scalars(
            select(AuditLog).order_by(AuditLog.seq))), write=False)
        if rows[-1].principal == "unidentified" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [(row.principal, row.result_status) for row in rows[-2:]] == [
        (APP.spiffe_id, "SUCCESS"), ("unidentified", "OPERATION_FAILED")]
    assert rows[-1].gateway == GATEWAY.spiffe_id  # audited as such a refusal is


def test_a_caller_no_longer_allowed_is_refused_and_audited(core: CoreHarness) -> None:
    """The same digest, asked for by a caller the core refuses: the refusal is audited as
    every refusal is (who asks is decided before anything about the key)."""
    linked = Linked(core)
    linked.cache.prewarm("demo", "app", APP)
    linked.pump.flush()
    key = linked.cache.current("demo", "app")
    got: list = []
    held = keys_digest([key.__class__(key.uid, key.tenant, key.service, key.version,
                                      key.state, key.key)])
    linked.link.fetch_service_keys(service_principal("demo", "billing"), "", "", key.uid,
                                   held=held).addBoth(got.append)
    linked.pump.flush()
    assert got[0].value.reason == ResultReason.PERMISSION_DENIED
    rows = linked.audited()
    assert [row.result_status for row in rows] == ["SUCCESS", "OPERATION_FAILED"]
    assert linked.factory.refreshes == {"unchanged": 0, "changed": 1}
    assert core.store.run_sync(lambda session: session.scalar(
        select(func.count()).select_from(AuditLog).where(
            AuditLog.operation == AUDIT_OPERATION)), write=False) == 2


@pytest.mark.parametrize("frame, why", [
    (Frame(FrameType.PING, keys_digest=HELD), "KeysDigest in a PING frame"),
    (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD[:16]),
     "a KeysDigest of 16 bytes"),
    (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD, service_keys=[KEY]),
     "carries nothing else"),
    (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD, error="no",
           result_reason=1), "carries nothing else"),
    (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD, error="no"),
     "carries nothing else"),
    (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD, result_reason=1),
     "carries nothing else"),
    # "Unchanged" is the KeysDigest alone: not a refusal's Tenant and Service beside it.
    (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD, tenant="demo"),
     "carries nothing else"),
    (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD, service="app"),
     "carries nothing else"),
])
def test_a_keys_digest_out_of_place_is_a_broken_frame(frame: Frame, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        decode_frame(encode_frame(frame))


def test_a_keys_digest_where_it_belongs_decodes_both_ways() -> None:
    for frame in (Frame(FrameType.SERVICE_KEYS, stream_id=1, keys_digest=HELD),
                  Frame(FrameType.FETCH_SERVICE_KEY, stream_id=2, caller_identity="i",
                        tenant="demo", service="app", keys_digest=HELD)):
        wire = encode_frame(frame)
        assert decode_frame(wire) == decode_frame_tree(wire) == frame
