"""What a scoped gateway is sent on its link (kcm.core.gateway_views, link version 6): another
tenant's events as ``redacted`` ones (their number alone), a policy document of the subjects
it may assert only, and VIEW, the digest of its scope; a reload that changes its scope closes
its link. The core's end over StringTransport, then both ends in memory (iosim)."""

from __future__ import annotations

import json

import pytest
from twisted.logger import capturedLogs, formatEvent

from kcm.core import gateway_views
from kcm.core.event_fanout import EncodedEvent, encode_event
from kcm.core.gateway_scopes import GatewayScope, GatewayScopes
from kcm.core.gateway_views import (
    GatewayViews,
    event_digest,
    redacted_event,
    scoped_document,
    view_digest,
)
from kcm.core.keyring import Keyring
from kcm.core.link_server import SCOPE_CHANGED, LinkServerFactory
from kcm.core.store.repository import OutboxRecord
from kcm.gateway.l3_cache import L3Cache
from kcm.identity import SubjectMap, parse_spiffe_id
from kcm.link.events import EventKind
from kcm.link.frames import (
    TOMBSTONES_VERSION,
    VIEW_VERSION,
    Frame,
    FrameType,
    decode_frame,
    encode_frame,
    encode_payload,
)
from tests.unit.test_link_cancel import core_factory, frames_in, hello
from tests.unit.test_link_session import World

DEMO_ONLY = GatewayScope(frozenset({"demo"}))
DEMO_WITH_ADMINS = GatewayScope(frozenset({"demo"}), admins=True)
EVERY_TENANT = GatewayScope(None)
POLICY = {
    "CN=db,O=Demo": "tenant/demo/service/db",
    "CN=alice,O=Demo": "tenant/demo/admin/alice",
    "CN=db,O=Other": "tenant/other/service/db",
    "CN=bob,O=Other": "tenant/other/admin/bob",
    "CN=ops,O=Example": "operator/ops",
}
DOCUMENT = SubjectMap.from_mapping(POLICY).document()


def scoped(factory: LinkServerFactory, scope: GatewayScope | None) -> None:
    factory.set_gateway_scopes(GatewayScopes({} if scope is None else {"gateway/gw1": scope}))


def records() -> list[OutboxRecord]:
    """One event of each kind: demo's, other's, and the policy (every tenant's subjects)."""
    def record(seq: int, tenant: str | None, kind: EventKind, payload: dict) -> OutboxRecord:
        return OutboxRecord(seq, 0, tenant, kind.value, encode_payload(payload))

    return [
        record(1, "demo", EventKind.L3_ROTATED,
               {"unique_identifier": "l3-demo", "service": "db", "key_version": 2}),
        record(2, "other", EventKind.L3_ROTATED,
               {"unique_identifier": "l3-other", "service": "secret-svc", "key_version": 2}),
        record(3, "other", EventKind.L3_STATE,
               {"unique_identifier": "l3-other", "service": "secret-svc", "state": 3}),
        record(4, "other", EventKind.L4_TOMBSTONE,
               {"token_id": "tok-other", "unique_identifier": "l3-other"}),
        record(5, None, EventKind.POLICY, {"policy": DOCUMENT}),
        record(6, "other", EventKind.TENANT_REMOVED, {}),
        record(7, "demo", EventKind.L4_TOMBSTONE,
               {"token_id": "tok-demo", "unique_identifier": "l3-demo"}),
    ]


def delivered(scope: GatewayScope | None) -> tuple[Frame, list[Frame], bytes]:
    """The WELCOME and the events a gateway of ``scope`` is sent, and the bytes of both."""
    factory, _, _ = core_factory()
    factory.set_subject_map(SubjectMap.from_mapping(POLICY))
    scoped(factory, scope)
    protocol, transport = hello(factory)
    protocol.deliver([encode_event(r) for r in records()])
    wire = transport.value()
    [welcome, *events] = frames_in(transport)
    return welcome, events, wire


# The policy document --------------------------------------------------------------------------

def test_a_scoped_gateways_document_maps_only_whom_it_may_assert() -> None:
    assert json.loads(scoped_document(DOCUMENT, DEMO_ONLY)) == {
        "CN=db,O=Demo": "tenant/demo/service/db"}
    assert json.loads(scoped_document(DOCUMENT, DEMO_WITH_ADMINS)) == {
        "CN=db,O=Demo": "tenant/demo/service/db", "CN=alice,O=Demo": "tenant/demo/admin/alice"}
    # Every tenant: every application, never an operator; administrators with admins only.
    assert json.loads(scoped_document(DOCUMENT, EVERY_TENANT)) == {
        "CN=db,O=Demo": "tenant/demo/service/db", "CN=db,O=Other": "tenant/other/service/db"}
    assert json.loads(scoped_document(DOCUMENT, GatewayScope(frozenset()))) == {}
    # The canonical form a gateway compares documents in (SubjectMap.document).
    kept = {k: v for k, v in POLICY.items() if v.startswith("tenant/demo/")}
    assert scoped_document(DOCUMENT, DEMO_WITH_ADMINS) == SubjectMap.from_mapping(
        kept).document()


def test_a_policy_of_many_subjects_is_read_once_for_every_scope(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A policy event reaches the links of many scopes at once, on the reactor: the document
    is read once, each scope looks at its own tenants' subjects (it was read again for each
    scope: 44 ms a scope at 10,000 subjects, 4.4 s for 100 scopes)."""
    mapping = {f"CN=app{i},O=T{i % 50}": f"tenant/t{i % 50}/service/s{i}" for i in range(2000)}
    mapping.update({f"CN=admin{i},O=T{i}": f"tenant/t{i}/admin/a{i}" for i in range(50)})
    mapping["CN=ops,O=Example"] = "operator/ops"
    document = SubjectMap.from_mapping(mapping).document()
    parsed: list[str] = []
    parse = gateway_views.parse_principal_path

    def counted(path: str, **kwargs: object) -> object:
        parsed.append(path)
        return parse(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(gateway_views, "parse_principal_path", counted)
    views = GatewayViews()
    for j in range(50):
        for scope in (GatewayScope(frozenset({f"t{j}"})),
                      GatewayScope(frozenset({f"t{j}"}), admins=True)):
            kept = json.loads(views.document(document, scope))
            assert set(kept.values()) == {path for path in mapping.values()
                                          if path.startswith(f"tenant/t{j}/") and (
                                              scope.admins or "/admin/" not in path)}
    assert json.loads(views.document(document, EVERY_TENANT)) == {
        subject: path for subject, path in mapping.items() if "/service/" in path}
    assert len(parsed) == len(mapping)


def test_the_view_digest_tells_scopes_apart() -> None:
    digests = {view_digest(scope) for scope in (
        None, DEMO_ONLY, DEMO_WITH_ADMINS, EVERY_TENANT, GatewayScope(frozenset()),
        GatewayScope(frozenset({"demo", "other"})))}
    assert len(digests) == 6
    assert view_digest(GatewayScope(frozenset({"demo"}))) == view_digest(DEMO_ONLY)
    assert b"demo" not in view_digest(DEMO_ONLY)


# The core's end -------------------------------------------------------------------------------

def test_a_scoped_gateway_is_sent_another_tenants_events_redacted() -> None:
    welcome, events, wire = delivered(DEMO_ONLY)
    assert json.loads(welcome.policy) == {"CN=db,O=Demo": "tenant/demo/service/db"}
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5, 6, 7]  # gapless
    assert [(e.kind, e.tenant) for e in events] == [
        ("l3.rotated", "demo"), ("redacted", None), ("redacted", None), ("redacted", None),
        ("policy", None), ("redacted", None), ("l4.tombstone", "demo")]
    assert events[0].payload["unique_identifier"] == "l3-demo"
    assert all(e.payload == {} for e in events if e.kind == "redacted")
    assert json.loads(events[4].payload["policy"]) == {"CN=db,O=Demo": "tenant/demo/service/db"}
    # Nothing of the other tenant, its clients or the operator is on the wire.
    for secret in (b"other", b"Other", b"secret-svc", b"tok-other", b"bob", b"ops"):
        assert secret not in wire
    # (A core without L1, as here, sends the number alone.)
    assert encode_frame(events[1]) == redacted_event(2)


def test_a_redacted_event_carries_a_digest_of_the_event_keyed_by_the_cores_l1() -> None:
    """The same event is redacted the same at every core of the database (they share L1),
    another under the same number (a restored database's) otherwise; the digest tells
    nothing of the event to whoever lacks the key."""
    def redacted(views: GatewayViews, record: OutboxRecord) -> Frame:
        return decode_frame(views.event(encode_event(record), DEMO_ONLY))

    def views(l1: bytes) -> GatewayViews:
        keyring = Keyring(l1)
        return GatewayViews(lambda: keyring.audit_key)

    event = records()[3]  # other's tombstone
    restored = OutboxRecord(event.seq, 0, "other", EventKind.L4_TOMBSTONE.value,
                            encode_payload({"token_id": "tok-restored",
                                            "unique_identifier": "l3-other"}))
    core_1, core_2, elsewhere = views(b"1" * 32), views(b"1" * 32), views(b"2" * 32)
    frame = redacted(core_1, event)
    assert (frame.kind, frame.tenant, list(frame.payload)) == (
        "redacted", None, ["unique_identifier"])
    assert redacted(core_2, event) == frame  # another core, the same event
    assert redacted(core_1, restored) != frame  # another event under its number
    assert redacted(elsewhere, event) != frame
    keyring = Keyring(b"1" * 32)
    key = GatewayViews(lambda: keyring.audit_key)._key()
    assert key is not None and key != keyring.audit_key
    assert frame.payload["unique_identifier"] == event_digest(
        key, encode_event(event).wire).hex()
    # No L1 yet (a core starting): the number alone, and the digest once L1 is loaded.
    late = Keyring()
    starting = GatewayViews(lambda: late.audit_key)
    assert redacted(starting, event).payload == {}
    late.load(b"1" * 32)
    assert redacted(starting, records()[1]).payload["unique_identifier"]


def test_unscoped_gateways_get_every_frame_as_encoded_and_every_tenant_none_redacted() -> None:
    welcome, events, _ = delivered(None)
    assert welcome.policy == DOCUMENT
    assert [encode_frame(e) for e in events] == [encode_event(r).wire for r in records()]
    welcome, events, _ = delivered(EVERY_TENANT)
    assert "redacted" not in [e.kind for e in events]
    assert [e.tenant for e in events] == ["demo", "other", "other", "other", None, "other",
                                          "demo"]
    # Its policy: applications only (admins = false), never the operator.
    for document in (welcome.policy, events[4].payload["policy"]):
        assert set(json.loads(document).values()) == {"tenant/demo/service/db",
                                                      "tenant/other/service/db"}


def test_the_fan_out_carries_each_events_tenant_and_policy_beside_its_frame() -> None:
    encoded = [encode_event(r) for r in records()]
    assert [(e.seq, e.tenant) for e in encoded] == [(r.seq, r.tenant) for r in records()]
    assert [e.policy for e in encoded] == [None] * 4 + [DOCUMENT, None, None]
    assert all(isinstance(e, EncodedEvent) and e[0] == e.seq for e in encoded)


def test_a_policy_event_under_a_number_already_sent_is_sent_its_own_document() -> None:
    """A database restored under the core puts another policy event under a number it has
    sent a scoped gateway already: that gateway is sent the new event's document."""
    views = GatewayViews()

    def sent(mapping: dict[str, str]) -> str:
        record = OutboxRecord(9, 0, None, EventKind.POLICY.value, encode_payload(
            {"policy": SubjectMap.from_mapping(mapping).document()}))
        return decode_frame(views.event(encode_event(record), DEMO_ONLY)).payload["policy"]

    assert json.loads(sent(POLICY)) == {"CN=db,O=Demo": "tenant/demo/service/db"}
    assert json.loads(sent({"CN=db2,O=Demo": "tenant/demo/service/db2"})) == {
        "CN=db2,O=Demo": "tenant/demo/service/db2"}


def test_one_policy_event_is_sent_each_scope_its_own_document() -> None:
    """The frames a policy event is made into are kept per scope: a gateway of one scope is
    never sent the frame made for another's (the same event, the same number)."""
    views = GatewayViews()
    event = encode_event(OutboxRecord(5, 0, None, EventKind.POLICY.value,
                                      encode_payload({"policy": DOCUMENT})))
    other_only = GatewayScope(frozenset({"other"}))
    for _ in range(2):  # made, then taken from what the views keep
        sent = {scope: json.loads(decode_frame(views.event(event, scope)).payload["policy"])
                for scope in (DEMO_ONLY, other_only, DEMO_WITH_ADMINS)}
        assert sent == {
            DEMO_ONLY: {"CN=db,O=Demo": "tenant/demo/service/db"},
            other_only: {"CN=db,O=Other": "tenant/other/service/db"},
            DEMO_WITH_ADMINS: {"CN=db,O=Demo": "tenant/demo/service/db",
                               "CN=alice,O=Demo": "tenant/demo/admin/alice"}}
        assert {scope: json.loads(views.document(DOCUMENT, scope))
                for scope in (DEMO_ONLY, other_only, DEMO_WITH_ADMINS)} == sent


def test_whom_a_gateway_may_assert_is_decided_for_that_gateway() -> None:
    """What the core resolved for one gateway's assertion is never another's answer: the
    same caller asserted by a gateway scoped elsewhere is refused, asked first or second."""
    td = "kcm.test"
    gw1, gw2, gw3 = (parse_spiffe_id(f"spiffe://{td}/gateway/{name}", trust_domain=td)
                     for name in ("gw1", "gw2", "gw3"))
    demo_app = f"spiffe://{td}/tenant/demo/service/db"
    for first, second in ((gw1, gw2), (gw2, gw1), (gw3, gw2)):
        factory, _, _ = core_factory()
        factory.set_gateway_scopes(GatewayScopes({
            "gateway/gw1": DEMO_ONLY, "gateway/gw2": GatewayScope(frozenset({"other"}))}))
        for _ in range(2):  # resolved, then as the core kept it
            answers = {gw.path: factory.asserted_principal(demo_app, None, gw)
                       for gw in (first, second)}
            mine = first if first is not gw2 else second  # gw1 (demo) or gw3 (unscoped)
            assert answers["gateway/gw2"] is None and answers[mine.path] is not None


def test_a_reload_that_changes_a_gateways_scope_closes_its_link_only() -> None:
    factory, _, _ = core_factory()
    scoped(factory, DEMO_ONLY)
    protocol, transport = hello(factory)
    frames_in(transport)
    scoped(factory, DEMO_ONLY)  # the same scope (another reload): the link stays
    assert frames_in(transport) == [] and not protocol.closing
    scoped(factory, DEMO_WITH_ADMINS)
    [goaway] = frames_in(transport)
    assert (goaway.type, goaway.error) == (FrameType.GOAWAY, SCOPE_CHANGED)
    assert transport.disconnecting
    # Linked again, it is sent its view under the new scope.
    protocol, transport = hello(factory)
    assert protocol.scope == DEMO_WITH_ADMINS
    # Unscoped to scoped closes too.
    scoped(factory, None)
    protocol, transport = hello(factory)
    frames_in(transport)
    scoped(factory, DEMO_ONLY)
    assert [f.error for f in frames_in(transport)] == [SCOPE_CHANGED]


def test_a_gateway_of_link_version_6_is_sent_its_view_digest() -> None:
    factory, _, _ = core_factory()
    scoped(factory, DEMO_ONLY)

    def version(named: int) -> list[Frame]:
        protocol, transport = hello(factory)
        frames_in(transport)
        protocol.dataReceived(encode_frame(Frame(FrameType.VERSION, link_version=named)))
        return frames_in(transport)

    [view] = version(VIEW_VERSION)
    assert (view.type, view.view) == (FrameType.VIEW, view_digest(DEMO_ONLY))
    assert version(TOMBSTONES_VERSION) == []  # a gateway of version 5 would end the link


# Both ends --------------------------------------------------------------------------------

def _other_tenants_events(world: World, *seqs: int) -> None:
    for seq in seqs:
        world.fanout.records.append(OutboxRecord(seq, 0, "other", "l4.tombstone", encode_payload(
            {"token_id": f"tok-{seq}", "unique_identifier": "l3-other"})))
    world.fanout.committed_seq = seqs[-1]
    world.fanout.poll()


def test_a_gateway_skips_redacted_events_silently_and_resumes_across_them() -> None:
    world = World()
    scoped(world.factory, DEMO_ONLY)
    cache = L3Cache(world.client.fetch_service_keys, connected=lambda: True,
                    clock=world.clock.seconds)
    world.client.on_event = cache.apply_event
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.connect()
    with capturedLogs() as logs:
        world.fanout.commit(1)  # demo's, 1
        _other_tenants_events(world, 2, 3)
        world.flush()
    assert world.client.last_sequence == 3 and cache.last_event_sequence == 3
    text = "\n".join(formatEvent(e) for e in logs)
    assert "applied event 1" in text and "redacted" not in text and "other" not in text
    assert cache.tombstone_count == 0  # other's tombstones: never learnt
    # The last event applied is a redacted one: the next link sends it again, the same.
    world.drop()
    assert world.client._resume_after() == 2
    world.connect()
    _other_tenants_events(world, 4)
    world.fanout.commit(1)  # demo's, 5
    world.fanout.poll()
    world.flush()
    assert resyncs == [] and world.client.last_sequence == 5
    assert cache.last_event_sequence == 5


def test_a_restore_is_noticed_when_the_event_compared_is_redacted_on_both_links() -> None:
    """The gateway's last event applied is another tenant's (redacted); the database is
    restored from a backup taken before it, and another event of another tenant takes its
    number: the redacted forms differ (their digests), so the gateway resynchronises."""
    world = World()
    keyring = Keyring(b"1" * 32)
    world.factory.views = GatewayViews(lambda: keyring.audit_key)
    scoped(world.factory, DEMO_ONLY)
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.connect()
    world.fanout.commit(1)  # demo's, 1
    _other_tenants_events(world, 2, 3)
    world.flush()
    world.drop()
    world.connect()  # the same database: event 3 compares the same
    world.flush()
    assert resyncs == [] and world.client.last_sequence == 3
    world.drop()
    del world.fanout.records[2:]  # restored from a backup taken at event 2...
    for seq in (3, 4):  # ... and other's events committed since
        world.fanout.records.append(OutboxRecord(seq, 0, "other", "l4.tombstone", encode_payload(
            {"token_id": f"tok-restored-{seq}", "unique_identifier": "l3-other"})))
    world.fanout.committed_seq = 4
    with capturedLogs() as logs:
        world.connect()
        world.flush()
    assert resyncs == [True] and world.client.last_sequence == 4
    assert "is not the one applied" in "\n".join(formatEvent(e) for e in logs)


def test_a_gateway_whose_view_changed_drops_what_it_holds() -> None:
    world = World()
    scoped(world.factory, GatewayScope(frozenset({"demo", "other"})))
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.connect()
    world.flush()
    assert world.client.view == view_digest(GatewayScope(frozenset({"demo", "other"})))
    world.fanout.commit(1)
    _other_tenants_events(world, 2)
    world.flush()
    assert [e[1] for e in world.events] == ["l3.rotated", "l4.tombstone"]
    with capturedLogs() as logs:
        scoped(world.factory, DEMO_ONLY)  # narrowed: the core closes the link
        world.flush()
        assert not world.client.connected
        world.connect()
        world.flush()
    # It held keys of a tenant it is no longer sent events of: they go.
    assert resyncs and world.client.view == view_digest(DEMO_ONLY)
    text = "\n".join(formatEvent(e) for e in logs)
    assert "under another scope" in text
    # (Its last event, other's 2, now comes redacted: told apart from a restore in the log.)
    assert "redacted on one link only" in text
    # (Also what a gateway moving from a core of an earlier release, which redacts nothing,
    # to one of this release sees in a rolling upgrade: the warning names that too.)
    assert "a release before link version 6" in text
    # The same view on the next link: nothing dropped.
    count = len(resyncs)
    world.drop()
    world.connect()
    world.flush()
    assert len(resyncs) == count and world.client.connected


def test_the_redacted_frame_decodes_as_an_event_of_no_tenant() -> None:
    frame = decode_frame(redacted_event(42))
    assert (frame.type, frame.sequence, frame.kind, frame.tenant, frame.payload) == (
        FrameType.EVENT, 42, "redacted", None, {})


def test_a_reload_that_unscopes_a_gateway_closes_its_link_and_it_is_sent_every_event() -> None:
    """Widened to unscoped, a link kept open would go on redacting the tenants it may now
    act for: the keys it then fetches would never hear of their rotations."""
    factory, _, _ = core_factory()
    scoped(factory, DEMO_ONLY)
    protocol, transport = hello(factory)
    frames_in(transport)
    scoped(factory, None)
    assert [f.error for f in frames_in(transport)] == [SCOPE_CHANGED]
    assert transport.disconnecting
    protocol, transport = hello(factory)
    assert protocol.scope is None
    protocol.deliver([encode_event(r) for r in records()])
    assert "redacted" not in [f.kind for f in frames_in(transport)]


def test_a_view_that_changed_drops_the_keys_held_even_when_the_last_event_compares_the_same(
        ) -> None:
    """The view alone tells the change: the last event applied is one the gateway is sent
    the same under both scopes, so the resumed stream's check finds nothing amiss."""
    world = World()
    scoped(world.factory, DEMO_ONLY)
    resyncs: list[bool] = []
    world.client.on_resync = lambda: resyncs.append(True)
    world.connect()
    world.fanout.commit(1)  # demo's, sent as it is under both scopes
    world.flush()
    assert world.client.view == view_digest(DEMO_ONLY)
    with capturedLogs() as logs:
        scoped(world.factory, DEMO_WITH_ADMINS)  # the core closes the link
        world.flush()
        assert not world.client.connected
        world.connect()
        world.flush()
    text = "\n".join(formatEvent(e) for e in logs)
    assert "is not the one applied" not in text  # not the restore path's resync
    assert "under another scope" in text
    assert resyncs == [True] and world.client.view == view_digest(DEMO_WITH_ADMINS)
