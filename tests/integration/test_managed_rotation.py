"""Managed keys that rotate by themselves, by their KMIP 2.1 rotation attributes (Rotate
Automatic, Rotate Interval, Rotate Offset; Rotate Date, Rotate Generation and Rotate Latest
kept by the server): :mod:`kcm.core.managed_rotation`, in one process."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select, text

from kcm.core.managed_rotation import rotate_managed_due
from kcm.core.store.schema import AuditLog, Tenant
from kcm.kmip.attributes import Attribute, Link
from kcm.kmip.enums import LinkType, Operation, ResultReason, State
from kcm.kmip.payloads import (
    AddAttributeRequest,
    GetAttributesRequest,
    LocateRequest,
    ModifyAttributeRequest,
)
from kcm.kmip.tags import Tag
from tests.core_support import CoreHarness
from tests.integration.test_core_objects import (
    PAST,
    attributes_of,
    failed,
    name,
    ok,
    register,
    row,
)

ROTATION_TAGS = (Tag.ROTATE_AUTOMATIC, Tag.ROTATE_INTERVAL, Tag.ROTATE_OFFSET,
                 Tag.ROTATE_DATE, Tag.ROTATE_GENERATION, Tag.ROTATE_LATEST)


def automatic(interval: int, **extra: int) -> list[Attribute]:
    attributes = [Attribute.of(Tag.ROTATE_AUTOMATIC, True),
                  Attribute.of(Tag.ROTATE_INTERVAL, interval)]
    if "offset" in extra:
        attributes.append(Attribute.of(Tag.ROTATE_OFFSET, extra["offset"]))
    return attributes


def sweep(core: CoreHarness, now: float):
    return core.store.run_sync(lambda s: rotate_managed_due(s, core.keyring, now))


def test_a_key_with_rotate_automatic_is_re_keyed_when_its_interval_passes(
        core: CoreHarness) -> None:
    old = register(core, attributes=[name("rotating"), PAST, *automatic(3600)])
    assert row(core, old).rotate_due == 946_684_800 + 3600
    plain = register(core, attributes=[name("plain"), PAST])
    assert row(core, plain).rotate_due is None
    assert sweep(core, 946_684_800 + 3599) == []
    now = int(time.time())
    [rotation] = sweep(core, now)
    assert rotation.uid == old and rotation.error is None
    new = rotation.replacement
    got = attributes_of(core, new, Tag.NAME, Tag.LINK, Tag.STATE, *ROTATION_TAGS)
    assert [n.value for n in got[Tag.NAME]] == ["rotating"]
    assert got[Tag.LINK] == [Link(link_type=LinkType.REPLACED_OBJECT_LINK,
                                  linked_object_identifier=old)]
    assert got[Tag.STATE] == [State.ACTIVE]  # Rotate Offset unset: active at once
    assert got[Tag.ROTATE_AUTOMATIC] == [True] and got[Tag.ROTATE_INTERVAL] == [3600]
    assert got[Tag.ROTATE_DATE] == [now]
    assert got[Tag.ROTATE_GENERATION] == [1]
    assert got[Tag.ROTATE_LATEST] == [True]
    assert row(core, new).rotate_due == now + 3600
    previous = attributes_of(core, old, Tag.LINK, Tag.ROTATE_LATEST, Tag.STATE)
    assert previous[Tag.ROTATE_LATEST] == [False]
    assert previous[Tag.LINK] == [Link(link_type=LinkType.REPLACEMENT_OBJECT_LINK,
                                       linked_object_identifier=new)]
    assert row(core, old).rotate_due is None  # not the latest any more: never again
    # The next rotation counts on.
    [again] = sweep(core, now + 3600)
    assert attributes_of(core, again.replacement, Tag.ROTATE_GENERATION)[
        Tag.ROTATE_GENERATION] == [2]
    assert sweep(core, now + 3601) == []

    records = core.store.run_sync(lambda s: [
        (r.principal, json.loads(r.object_ids), json.loads(r.detail))
        for r in s.scalars(select(AuditLog).where(AuditLog.operation == "AutoRotate"))])
    assert records[0] == ("kcm-core/rotation", [new, old], {
        "policy": f"Rotate Interval of {old}", "trigger": "rotate_interval",
        "rotate_interval": 3600, "rotate_offset": 0, "rotate_generation": 1})


def test_rotate_offset_delays_the_replacement(core: CoreHarness) -> None:
    old = register(core, attributes=[PAST, *automatic(3600, offset=600)])
    now = int(time.time())
    [rotation] = sweep(core, now)
    got = attributes_of(core, rotation.replacement, Tag.ACTIVATION_DATE, Tag.STATE)
    assert got[Tag.ACTIVATION_DATE] == [now + 600]
    assert got[Tag.STATE] == [State.PRE_ACTIVE]
    assert row(core, old).rotate_due is None


def test_turning_rotate_automatic_on_and_off_with_attribute_operations(
        core: CoreHarness) -> None:
    uid = register(core, attributes=[PAST, Attribute.of(Tag.ROTATE_INTERVAL, 3600)])
    assert row(core, uid).rotate_due is None  # an interval alone does not rotate
    ok(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=Attribute.of(Tag.ROTATE_AUTOMATIC, True)))
    assert row(core, uid).rotate_due == 946_684_800 + 3600
    ok(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=uid, attribute=Attribute.of(Tag.ROTATE_AUTOMATIC, False)))
    assert row(core, uid).rotate_due is None
    assert sweep(core, time.time()) == []


def test_rotation_attributes_are_answered_only_in_2_x(core: CoreHarness) -> None:
    uid = register(core, attributes=[PAST, *automatic(3600)])
    sweep(core, time.time())
    answer = ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid, attribute_references=[]), version=(1, 4))
    assert not {a.tag for a in answer.attributes or []} & set(ROTATION_TAGS)
    found = ok(core, Operation.LOCATE, LocateRequest(attributes=[
        Attribute.of(Tag.ROTATE_LATEST, False)]))
    assert found.unique_identifiers == [uid]




def test_a_policy_gives_new_managed_keys_their_rotate_interval(core: CoreHarness) -> None:
    from kcm.core.rotation_policy import PolicySettings, set_policy
    from kcm.kmip.payloads import CreateRequest
    from kcm.testing.requests import aes256

    def create(*extra: Attribute) -> str:
        return ok(core, Operation.CREATE, CreateRequest(
            object_type=1 + 1, attributes=aes256(list(extra)))).unique_identifier

    before = create()
    core.store.run_sync(lambda s: set_policy(s, "demo", "", PolicySettings(
        managed_interval=86400), now=0))
    after = create()
    own = create(Attribute.of(Tag.ROTATE_INTERVAL, 7200))
    assert Tag.ROTATE_INTERVAL not in attributes_of(core, before, Tag.ROTATE_INTERVAL)
    got = attributes_of(core, after, Tag.ROTATE_INTERVAL, Tag.ROTATE_AUTOMATIC)
    assert got == {Tag.ROTATE_INTERVAL: [86400], Tag.ROTATE_AUTOMATIC: [True]}
    assert attributes_of(core, own, Tag.ROTATE_INTERVAL, Tag.ROTATE_AUTOMATIC) == {
        Tag.ROTATE_INTERVAL: [7200]}


def test_a_key_that_cannot_be_rotated_does_not_stop_the_others(
        core: CoreHarness, monkeypatch) -> None:
    """Any error rotating one key (here a ValueError, as a stored value of the wrong type
    gave before values were checked on the way in) is that key's alone: it is audited and
    no longer due, and the other keys of the sweep rotate."""
    from kcm.core import managed_rotation

    broken = register(core, attributes=[PAST, *automatic(3600)])
    fine = register(core, attributes=[PAST, *automatic(7200)])
    real = managed_rotation.re_key

    def re_key(ctx, request):
        if request.unique_identifier == broken:
            raise ValueError("invalid literal for int() with base 10: 'x'")
        return real(ctx, request)

    monkeypatch.setattr(managed_rotation, "re_key", re_key)
    first, second = sweep(core, int(time.time()))
    assert (first.uid, first.replacement, first.error) == (
        broken, None, "internal error (ValueError)")
    assert second.uid == fine and second.replacement and second.error is None
    assert row(core, broken).rotate_due is None
    assert sweep(core, int(time.time()) + 60) == []


def test_a_key_changed_in_the_database_is_refused_and_does_not_stop_the_others(
        core: CoreHarness) -> None:
    """A key whose row was changed in the database (its usage mask; the row MAC refuses
    it) is reported and left as it is, refused again at each sweep: nothing of it is
    written, and the other keys of the sweep rotate (writing its ``rotate_due`` was
    refused too, and failed the whole step at every sweep)."""
    changed = register(core, attributes=[PAST, *automatic(3600)])
    fine = register(core, attributes=[PAST, *automatic(7200)])
    core.store.run_sync(lambda s: s.execute(text(
        "UPDATE managed_objects SET cryptographic_usage_mask = 0xFFFF WHERE uid = :uid"),
        {"uid": changed}))
    before = core.keyring.mismatches
    first, second = sweep(core, int(time.time()))
    assert (first.uid, first.replacement) == (changed, None)
    assert first.error and "integrity check" in first.error
    assert second.uid == fine and second.replacement and second.error is None
    assert row(core, changed).rotate_due == 946_684_800 + 3600
    assert core.keyring.mismatches > before
    [again] = sweep(core, int(time.time()) + 60)
    assert (again.uid, again.replacement) == (changed, None)


def _stored(core: CoreHarness, tenant: str = "demo") -> int:
    return core.store.run_sync(lambda s: s.scalar(select(Tenant.stored).where(
        Tenant.name == tenant)), write=False)


def test_the_keys_of_a_tenant_at_its_bound_wait_for_room_and_take_no_turn(
        core: CoreHarness) -> None:
    """A tenant at its bound of stored objects (kcm.core.store.quota) is a state the
    operator ends (a higher bound, a purge), not its keys' fault: they stay due, untried
    (no failure, no audit record), without holding back another tenant's keys, and rotate
    at the first sweep once there is room. (They were tried, refused and left out of
    rotation for good.)"""
    from tests.core_support import service_principal

    waiting = register(core, attributes=[PAST, *automatic(3600)])
    other = register(core, attributes=[PAST, *automatic(3600)],
                     principal=service_principal("other", "app"))
    due = row(core, waiting).rotate_due
    bound = core.store.max_objects_per_tenant = _stored(core)
    [rotated] = core.store.run_sync(lambda s: rotate_managed_due(
        s, core.keyring, time.time(), limit=1))
    assert (rotated.uid, rotated.error) == (other, None)
    assert row(core, waiting).rotate_due == due
    assert sweep(core, int(time.time())) == []
    core.store.max_objects_per_tenant = bound + 1
    [done] = sweep(core, int(time.time()))
    assert done.uid == waiting and done.replacement and done.error is None


def test_a_key_refused_at_the_bound_in_its_sweep_is_tried_again_an_hour_later(
        core: CoreHarness) -> None:
    """Room for fewer replacements than keys due: the key past the bound is refused in
    the sweep (audited), and tried again an hour later, not left out of rotation."""
    from kcm.core.managed_rotation import AT_BOUND_RETRY_S

    keys = {register(core, attributes=[PAST, *automatic(3600)]) for _ in range(2)}
    core.store.max_objects_per_tenant = _stored(core) + 1
    now = int(time.time())
    done, refused = sweep(core, now)  # (the two equally due: either first)
    assert {done.uid, refused.uid} == keys and done.error is None
    assert refused.replacement is None
    second = refused.uid
    assert refused.error == f"tenant demo is at its bound of {_stored(core)} stored " \
        "objects (max_objects_per_tenant)"
    assert row(core, second).rotate_due == now + AT_BOUND_RETRY_S
    core.store.max_objects_per_tenant += 2
    assert sweep(core, now + AT_BOUND_RETRY_S - 1) == []
    # (done's replacement, of a Rotate Interval of an hour, is due then too)
    again = {r.uid: r for r in sweep(core, now + AT_BOUND_RETRY_S)}
    assert again[second].replacement and again[second].error is None


def test_another_server_limit_leaves_the_key_out_of_rotation(core: CoreHarness,
                                                             monkeypatch) -> None:
    """Only the tenant's bound is waited out: another limit (an object's attributes) is
    the key's own, and retrying it would fail alike."""
    from kcm.core import managed_rotation
    from kcm.kmip.errors import KmipError

    uid = register(core, attributes=[PAST, *automatic(3600)])

    def re_key(ctx, request):
        raise KmipError(ResultReason.SERVER_LIMIT_EXCEEDED,
                        "an object keeps at most 1088 attributes")

    monkeypatch.setattr(managed_rotation, "re_key", re_key)
    [refused] = sweep(core, int(time.time()))
    assert refused.error == "an object keeps at most 1088 attributes"
    assert row(core, uid).rotate_due is None


def test_a_key_not_rotated_for_want_of_l1_stays_due(core: CoreHarness, monkeypatch) -> None:
    """L1 that cannot be used now (its token's session lost) is not the key's fault: the
    sweep's step fails, to be retried, and the key is still due."""
    from kcm.core import managed_rotation
    from kcm.core.keys import L1Error

    uid = register(core, attributes=[PAST, *automatic(3600)])

    def re_key(ctx, request):
        raise L1Error("L1 key 'kcm-l1' in PKCS#11 token 'kcm' is unavailable")

    monkeypatch.setattr(managed_rotation, "re_key", re_key)
    with pytest.raises(L1Error):
        sweep(core, int(time.time()))
    assert row(core, uid).rotate_due is not None
    monkeypatch.undo()
    [done] = sweep(core, int(time.time()))
    assert done.uid == uid and done.replacement and done.error is None


def _core_with_minimum(core: CoreHarness, minimum: int) -> CoreHarness:
    """The same store and keyring behind a handler configured with ``minimum`` as its
    ``limits.min_rotate_interval``."""
    from kcm.core.request_handler import CoreRequestHandler
    from kcm.core.server_info import ServerInfo

    return CoreHarness(core.store, core.keyring, CoreRequestHandler(
        core.store, core.keyring, clock=time.time,
        server_info=ServerInfo(min_rotate_interval=minimum)))


def test_a_rotate_interval_below_the_minimum_is_refused_everywhere(core: CoreHarness) -> None:
    """Each rotation makes a new object: a Rotate Interval below the configured minimum
    (default 1 hour) is Invalid Field in Create, Register, Re-key (the replacement
    inherits it) and the attribute operations; 0 (never) and the minimum itself pass."""
    from kcm.kmip.payloads import CreateRequest, ReKeyRequest, SetAttributeRequest
    from kcm.testing.requests import aes256

    message = "the Rotate Interval must be at least 3600 s"
    assert failed(core, Operation.CREATE, CreateRequest(object_type=1 + 1, attributes=aes256(
        automatic(3599))), ResultReason.INVALID_FIELD) == message
    assert failed(core, Operation.REGISTER, register_request([PAST, *automatic(1)]),
                  ResultReason.INVALID_FIELD) == message
    uid = register(core, attributes=[PAST, *automatic(3600)])
    register(core, attributes=[PAST, Attribute.of(Tag.ROTATE_INTERVAL, 0)])
    plain = register(core, attributes=[PAST])
    low = Attribute.of(Tag.ROTATE_INTERVAL, 1)
    for op, payload in (
            (Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(unique_identifier=uid,
                                                                attribute=low)),
            (Operation.SET_ATTRIBUTE, SetAttributeRequest(unique_identifier=uid,
                                                          attribute=low)),
            (Operation.ADD_ATTRIBUTE, AddAttributeRequest(unique_identifier=plain,
                                                          attribute=low))):
        assert failed(core, op, payload, ResultReason.INVALID_FIELD) == message
    assert attributes_of(core, uid, Tag.ROTATE_INTERVAL) == {Tag.ROTATE_INTERVAL: [3600]}
    # A key stored with a short one (by a core configured lower, or before the minimum)
    # is not re-keyed with it, by a client or by the sweeper (which stops rotating it).
    lower = _core_with_minimum(core, 1)
    short = register(lower, attributes=[PAST, *automatic(1)])
    assert failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=short),
                  ResultReason.INVALID_FIELD) == message
    done = {rotation.uid: rotation for rotation in sweep(core, time.time())}
    assert (done[short].replacement, done[short].error) == (None, message)
    assert done[uid].error is None  # the other keys of the sweep rotate
    assert row(core, short).rotate_due is None
    assert rotate_managed_due_with(core, 0) == []  # and it is no longer due


def register_request(attributes: list[Attribute]):
    from kcm.kmip.enums import ObjectType
    from kcm.kmip.payloads import RegisterRequest
    from tests.integration.test_core_objects import aes_key

    return RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=attributes,
                           object=aes_key())


def rotate_managed_due_with(core: CoreHarness, minimum: int):
    return core.store.run_sync(lambda s: rotate_managed_due(
        s, core.keyring, time.time() + 10, min_rotate_interval=minimum))


def test_the_minimum_rotate_interval_is_configurable(core: CoreHarness, tmp_path) -> None:
    from kcm.core.config import load_config
    from kcm.core.rotation_policy import PolicySettings, set_policy
    from kcm.kmip.payloads import CreateRequest
    from kcm.testing.requests import aes256

    assert load_config(None).limits.min_rotate_interval == 3600
    path = tmp_path / "core.toml"
    path.write_text("[core.limits]\nmin_rotate_interval = 60\n")
    assert load_config(path).limits.min_rotate_interval == 60
    lower = _core_with_minimum(core, 60)
    uid = register(lower, attributes=[PAST, *automatic(60)])
    [rotation] = rotate_managed_due_with(core, 60)
    assert rotation.uid == uid and rotation.error is None
    # A policy's managed_interval below the minimum gives new keys the minimum.
    core.store.run_sync(lambda s: set_policy(s, "demo", "", PolicySettings(
        managed_interval=10), now=0))
    made = ok(core, Operation.CREATE, CreateRequest(
        object_type=1 + 1, attributes=aes256([]))).unique_identifier
    assert attributes_of(core, made, Tag.ROTATE_INTERVAL) == {Tag.ROTATE_INTERVAL: [3600]}


def test_a_sweep_shares_its_limit_among_the_tenants_with_keys_due(core: CoreHarness) -> None:
    """One tenant with many keys due takes no more of a sweep than its share while another
    tenant has keys due: the tenants take turns, each oldest first."""
    from tests.core_support import service_principal

    other = service_principal("other", "app")
    hoarder = [register(core, attributes=[PAST, *automatic(3600)]) for _ in range(12)]
    modest = [register(core, attributes=[PAST, *automatic(3600)], principal=other)
              for _ in range(3)]

    def rotated(limit: int) -> list[str]:
        done = core.store.run_sync(lambda s: rotate_managed_due(
            s, core.keyring, time.time(), limit=limit))
        assert all(r.error is None for r in done)
        return [r.uid for r in done]

    def split(uids: list[str]) -> tuple[int, int]:
        return len(set(uids) & set(hoarder)), len(set(uids) & set(modest))

    assert split(rotated(4)) == (2, 2)  # two each, in turn
    assert split(rotated(4)) == (3, 1)  # the other tenant's last; the rest to demo
    assert split(rotated(100)) == (7, 0)


def test_a_sweep_reads_only_the_keys_due_longest(core: CoreHarness,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog of keys due is not read whole at each sweep (every key due was read and
    sorted: 0.45 s of the writer a sweep with 256,000 due): only the window of those due
    longest, the turns taken among them; a tenant whose keys came due after the window's
    waits for them to be rotated."""
    from kcm.core import managed_rotation
    from tests.core_support import service_principal

    monkeypatch.setattr(managed_rotation, "WINDOW_LIMITS", 2)
    hoarder = [register(core, attributes=[PAST, *automatic(3600)]) for _ in range(5)]
    activated_later = Attribute.of(Tag.ACTIVATION_DATE, PAST.value.value + 600)
    later = register(core, attributes=[activated_later, *automatic(3600)],
                     principal=service_principal("other", "app"))  # due 600 s after them

    def rotated(limit: int) -> list[str]:
        done = core.store.run_sync(lambda s: rotate_managed_due(
            s, core.keyring, time.time() + 7200, limit=limit))
        return [r.uid for r in done]

    # the window (2 limits of 2) holds 4 of demo's keys, none of the other tenant's: both
    # of the sweep's go to demo, where the turns would have given the other tenant one
    assert len(first := rotated(2)) == 2 and set(first) <= set(hoarder)
    # 3 of demo's left, and the other tenant's key now in the window: one each, in turn
    second = rotated(2)
    assert later in second and len(set(second) & set(hoarder)) == 1


def test_a_revoked_key_is_no_longer_due(core: CoreHarness) -> None:
    """A key revoked (or destroyed) is never rotated: it does not stay due, for every sweep
    to read it again."""
    from tests.integration.test_core_crypto import revoke

    uid = register(core, attributes=[PAST, *automatic(3600)])
    assert row(core, uid).rotate_due is not None
    revoke(core, uid)
    assert row(core, uid).rotate_due is None
    assert sweep(core, int(time.time())) == []


def test_a_clients_re_key_hands_the_rotation_line_on(core: CoreHarness) -> None:
    """A client's Re-key of a key that rotates by itself makes the replacement the latest of
    the line (Rotate Latest, the next Rotate Generation, Rotate Date now) and the existing
    key no longer due: the next sweep rotates the replacement alone. (Before, both stayed
    due and the sweep re-keyed both, forking the line and overwriting the old key's
    Replacement Object Link.) A key of no line gets none of these attributes."""
    from kcm.kmip.enums import Operation
    from kcm.kmip.payloads import ReKeyRequest
    from tests.integration.test_core_objects import ok

    old = register(core, attributes=[name("rotating"), PAST, *automatic(3600)])
    first = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old)).unique_identifier
    now = int(time.time())
    assert row(core, old).rotate_due is None
    got = attributes_of(core, first, Tag.ROTATE_LATEST, Tag.ROTATE_GENERATION, Tag.ROTATE_DATE)
    assert (got[Tag.ROTATE_LATEST], got[Tag.ROTATE_GENERATION]) == ([True], [1])
    assert now - 5 <= got[Tag.ROTATE_DATE][0] <= now
    assert attributes_of(core, old, Tag.ROTATE_LATEST)[Tag.ROTATE_LATEST] == [False]
    [rotation] = sweep(core, now + 3600)
    assert rotation.uid == first
    assert attributes_of(core, rotation.replacement, Tag.ROTATE_GENERATION)[
        Tag.ROTATE_GENERATION] == [2]
    assert attributes_of(core, old, Tag.LINK)[Tag.LINK] == [Link(
        link_type=LinkType.REPLACEMENT_OBJECT_LINK, linked_object_identifier=first)]

    plain = register(core, attributes=[name("plain"), PAST])
    replaced = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=plain)
                  ).unique_identifier
    assert attributes_of(core, replaced, *ROTATION_TAGS) == {}


def test_a_key_deactivated_by_its_date_since_its_last_write_is_not_rotated(
        core: CoreHarness) -> None:
    """Its row still said Active (a state moved by a date is written at the object's next
    write): the sweeper re-keyed it, continuing the line of a Deactivated key, where a key
    written after its date (the row saying Deactivated) was not."""
    now = int(time.time())
    uid = register(core, attributes=[name("retiring"), PAST, *automatic(3600),
                                     Attribute.of(Tag.ROTATE_DATE, now),
                                     Attribute.of(Tag.DEACTIVATION_DATE, now + 1)])
    assert row(core, uid).state == State.ACTIVE
    assert sweep(core, now + 4000) == []
    stored = row(core, uid)
    assert stored.state == State.DEACTIVATED and stored.rotate_due is None
    assert sweep(core, now + 8000) == []


NEVER = (1 << 63) - 1


def test_dates_at_the_end_of_time_rotate_never_and_do_not_stop_a_line(
        core: CoreHarness) -> None:
    """The latest Date-Time (what clients give for "never") made the due date overflow
    the column (General Failure at Register), and a Re-key shifting a Deactivation Date of
    "never" overflow the Date-Time (the sweeper then ended the line for good)."""
    far = register(core, attributes=[name("far"), Attribute.of(Tag.ACTIVATION_DATE, NEVER - 10),
                                     *automatic(3600)])
    assert row(core, far).rotate_due == NEVER
    forever = register(core, attributes=[name("forever"), PAST, *automatic(3600),
                                         Attribute.of(Tag.DEACTIVATION_DATE, NEVER)])
    [rotation] = sweep(core, time.time())
    assert rotation.uid == forever and rotation.error is None
    assert attributes_of(core, rotation.replacement, Tag.DEACTIVATION_DATE) == {
        Tag.DEACTIVATION_DATE: [NEVER]}
    assert row(core, rotation.replacement).rotate_due is not None  # the line goes on


def test_a_key_of_a_rotation_line_is_re_keyed_once(core: CoreHarness) -> None:
    """Two Re-keys of one key of a line (two clients or cores at once, or a client's
    Re-key of a key the sweeper rotated) both answered Success and forked the line: two
    keys Rotate Latest, both rotated at every interval. The second is refused, naming
    the replacement to re-key."""
    from kcm.kmip.payloads import ReKeyRequest

    old = register(core, attributes=[name("line"), PAST, *automatic(3600)])
    first = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old)).unique_identifier
    message = failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=old),
                     ResultReason.WRONG_KEY_LIFECYCLE_STATE)
    assert first in message
    [rotation] = sweep(core, int(time.time()) + 7200)  # only the line's latest is due
    assert rotation.uid == first
    failed(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=first),
           ResultReason.WRONG_KEY_LIFECYCLE_STATE)  # the sweeper re-keyed it meanwhile


def test_a_rotate_due_moved_in_the_database_rotates_nothing_early(core: CoreHarness) -> None:
    """``rotate_due`` is a schedule the row MAC leaves out: a key whose stored one was
    made due is judged by its attributes, not rotated, and given its own back."""
    uid = register(core, attributes=[PAST, *automatic(100 * 365 * 86400)])
    due = row(core, uid).rotate_due
    assert due is not None and due > time.time()
    core.store.run_sync(lambda s: s.execute(text(
        "UPDATE managed_objects SET rotate_due = 0 WHERE uid = :uid"), {"uid": uid}))
    assert sweep(core, time.time()) == []
    assert row(core, uid).rotate_due == due
    assert attributes_of(core, uid, Tag.ROTATE_LATEST).get(Tag.ROTATE_LATEST) != [False]
