"""The byte bounds of an object's attributes, in process (the ``core`` fixture): one
attribute of at most MAX_ATTRIBUTE_BYTES, an object of at most MAX_OBJECT_ATTRIBUTE_BYTES.
Every change of an object rewrites its whole attribute list in the store's one writer, so
an application adding large x- attributes one request at a time must be stopped there:
refused with Server Limit Exceeded (Feature Not Supported in 1.x), changing nothing."""

from __future__ import annotations

import pytest

from kcm.core.attribute_blob import encode_attributes
from kcm.core.managed import MAX_ATTRIBUTE_BYTES, MAX_OBJECT_ATTRIBUTE_BYTES
from kcm.core.store import repository
from kcm.kmip.attributes import Attribute, AttributeReference
from kcm.kmip.enums import (
    CryptographicAlgorithm,
    ObjectType,
    Operation,
    ResultReason,
    ResultStatus,
    RevocationReasonCode,
    State,
)
from kcm.kmip.payloads import (
    ActivateRequest,
    AddAttributeRequest,
    CreateRequest,
    DestroyRequest,
    GetAttributesRequest,
    ModifyAttributeRequest,
    RegisterRequest,
    ReKeyRequest,
    RevocationReason,
    RevokeRequest,
    SetAttributeRequest,
)
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType
from tests.core_support import CoreHarness, admin_principal
from tests.integration.test_core_objects import V14, V21, aes_key, failed, ok, register, row, send

TOO_LARGE = f"an attribute takes at most {MAX_ATTRIBUTE_BYTES} bytes"
OBJECT_FULL = f"an object keeps at most {MAX_OBJECT_ATTRIBUTE_BYTES} bytes of attributes"
#: 1.x has no Server Limit Exceeded: its stand-in (kcm.kernel.result_reasons).
REASON = {V14: ResultReason.FEATURE_NOT_SUPPORTED, V21: ResultReason.SERVER_LIMIT_EXCEEDED}
BOTH = pytest.mark.parametrize("version", [V14, V21], ids=["1.4", "2.1"])


def blob(name: str, size: int) -> Attribute:
    """An x- attribute whose value is ``size`` bytes of byte string."""
    return Attribute.vendor("x", name, Item(Tag.ATTRIBUTE_VALUE, ItemType.BYTE_STRING,
                                            b"\xa5" * size))


#: An attribute just over the bound (its value alone is 8 bytes of TTLV header more).
OVERSIZED = MAX_ATTRIBUTE_BYTES
#: A large attribute that is allowed, with room for its header, vendor and name.
LARGE = MAX_ATTRIBUTE_BYTES - 64


def stored(core: CoreHarness, uid: str) -> tuple[bytes, int]:
    """The object's stored attribute blob and revision."""
    found = row(core, uid)
    return found.attributes, found.revision


def _count(session) -> int:
    from sqlalchemy import func, select

    from kcm.core.store.schema import ManagedObject
    return session.scalar(select(func.count()).select_from(ManagedObject))


@BOTH
def test_an_oversized_attribute_is_not_added(core: CoreHarness, version) -> None:
    uid = register(core, version=version)
    before = stored(core, uid)
    message = failed(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=blob("big", OVERSIZED)), REASON[version],
        version=version)
    assert message == TOO_LARGE
    assert stored(core, uid) == before


def test_an_oversized_vendor_name_counts_too(core: CoreHarness) -> None:
    """The attribute's name is stored beside its value: a large name is as large."""
    uid = register(core)
    before = stored(core, uid)
    attribute = Attribute.vendor("x", "n" * OVERSIZED,
                                 Item(Tag.ATTRIBUTE_VALUE, ItemType.INTEGER, 1))
    assert failed(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=attribute),
        ResultReason.SERVER_LIMIT_EXCEEDED) == TOO_LARGE
    assert stored(core, uid) == before


@BOTH
def test_an_attribute_is_not_modified_to_an_oversized_value(core: CoreHarness,
                                                              version) -> None:
    uid = register(core, attributes=[blob("b", 16)], version=version)
    before = stored(core, uid)
    message = failed(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=uid, attribute=blob("b", OVERSIZED)), REASON[version],
        version=version)
    assert message == TOO_LARGE
    assert stored(core, uid) == before


def test_an_attribute_is_not_set_to_an_oversized_value(core: CoreHarness) -> None:
    uid = register(core)
    before = stored(core, uid)
    description = Attribute.of(Tag.DESCRIPTION, "d" * OVERSIZED)
    assert failed(core, Operation.SET_ATTRIBUTE, SetAttributeRequest(
        unique_identifier=uid, attribute=description),
        ResultReason.SERVER_LIMIT_EXCEEDED) == TOO_LARGE
    assert stored(core, uid) == before


@BOTH
def test_create_and_register_with_an_oversized_attribute_make_nothing(
        core: CoreHarness, version) -> None:
    count = core.store.run_sync(_count)
    create = CreateRequest(object_type=ObjectType.SYMMETRIC_KEY, attributes=[
        Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
        Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256),
        Attribute.of(Tag.CRYPTOGRAPHIC_USAGE_MASK, 12), blob("big", OVERSIZED)])
    assert failed(core, Operation.CREATE, create, REASON[version],
                  version=version) == TOO_LARGE
    registration = RegisterRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                   attributes=[blob("big", OVERSIZED)], object=aes_key())
    assert failed(core, Operation.REGISTER, registration, REASON[version],
                  version=version) == TOO_LARGE
    assert core.store.run_sync(_count) == count


def test_an_object_stops_growing_at_its_byte_bound(core: CoreHarness) -> None:
    """Attributes each under the bound, added one request at a time: the one that would
    take the object over MAX_OBJECT_ATTRIBUTE_BYTES is refused, and the object stays
    readable whole (Get Attributes) and can still be revoked and destroyed."""
    uid = register(core)
    refused = None
    for n in range(MAX_OBJECT_ATTRIBUTE_BYTES // LARGE + 2):
        before = stored(core, uid)
        answer = send(core, (Operation.ADD_ATTRIBUTE, AddAttributeRequest(
            unique_identifier=uid, attribute=blob(f"b{n}", LARGE)))).batch_items[0]
        if answer.result_status != ResultStatus.SUCCESS:
            refused = answer
            break
    assert refused is not None and n >= MAX_OBJECT_ATTRIBUTE_BYTES // LARGE - 1
    assert (refused.result_reason, refused.result_message) == (
        ResultReason.SERVER_LIMIT_EXCEEDED, OBJECT_FULL)
    assert stored(core, uid) == before
    assert len(before[0]) <= MAX_OBJECT_ATTRIBUTE_BYTES
    everything = ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(unique_identifier=uid))
    assert len(everything.attributes) > n
    # The server's own small changes still pass on a full object.
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION))))
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid))
    assert row(core, uid).state == State.DESTROYED


def test_large_attributes_within_the_bounds_are_kept(core: CoreHarness) -> None:
    """An attribute just under MAX_ATTRIBUTE_BYTES is stored and answered as sent."""
    value = blob("large", LARGE)
    uid = register(core, attributes=[value, Attribute.of(Tag.DESCRIPTION, "d" * LARGE)])
    ok(core, Operation.MODIFY_ATTRIBUTE, ModifyAttributeRequest(
        unique_identifier=uid, attribute=blob("large", LARGE - 1)))
    answer = ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(
        unique_identifier=uid, attribute_references=[AttributeReference(Tag.DESCRIPTION)]))
    assert [a.value.value for a in answer.attributes] == ["d" * LARGE]


def test_an_object_stored_over_the_bound_can_still_be_destroyed(core: CoreHarness) -> None:
    """An object an earlier release let grow over the bounds: small changes (revoke,
    destroy) still pass; another large attribute does not."""
    uid = register(core, attributes=[blob("a", LARGE)])
    legacy = [blob(f"old{n}", 2 * MAX_ATTRIBUTE_BYTES) for n in range(10)]

    def grow(session) -> None:
        found = repository.get_object(session, "demo", uid)
        from kcm.core.attribute_blob import decode_attributes
        repository.update_columns(session, found, attributes=encode_attributes(
            decode_attributes(found.attributes) + legacy))

    core.store.run_sync(grow)
    assert len(row(core, uid).attributes) > MAX_OBJECT_ATTRIBUTE_BYTES
    assert failed(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=blob("more", LARGE)),
        ResultReason.SERVER_LIMIT_EXCEEDED) == OBJECT_FULL
    ok(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
        unique_identifier=uid, attribute=blob("small", 16)))
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))
    ok(core, Operation.REVOKE, RevokeRequest(unique_identifier=uid, revocation_reason=(
        RevocationReason(code=RevocationReasonCode.CESSATION_OF_OPERATION))),
        principal=admin_principal())
    ok(core, Operation.DESTROY, DestroyRequest(unique_identifier=uid))
    assert row(core, uid).state == State.DESTROYED


@BOTH
def test_a_key_at_its_byte_bound_can_be_re_keyed(core: CoreHarness, version) -> None:
    """Re-key's replacement copies the key's attributes: those count as the key stored
    them, so a key grown past the bound (by the small changes a full object still takes)
    is replaced (it was refused: every copied attribute counted as new), and the
    replacement keeps them; a large attribute the Re-key adds is judged as a change would
    be."""
    uid = register(core)
    ok(core, Operation.ACTIVATE, ActivateRequest(unique_identifier=uid))
    n = 0
    while send(core, (Operation.ADD_ATTRIBUTE, AddAttributeRequest(
            unique_identifier=uid, attribute=blob(f"b{n}", LARGE)))).batch_items[
            0].result_status == ResultStatus.SUCCESS:
        n += 1
    small = 0  # then past the bound by the small changes every object may still take
    while len(row(core, uid).attributes) <= MAX_OBJECT_ATTRIBUTE_BYTES:
        ok(core, Operation.ADD_ATTRIBUTE, AddAttributeRequest(
            unique_identifier=uid, attribute=blob(f"s{small}", 960)))
        small += 1
    refused = failed(core, Operation.RE_KEY, ReKeyRequest(
        unique_identifier=uid, attributes=[blob("more", LARGE)]), REASON[version],
        version=version)
    assert refused == OBJECT_FULL
    new = ok(core, Operation.RE_KEY, ReKeyRequest(unique_identifier=uid),
             version=version).unique_identifier
    kept = ok(core, Operation.GET_ATTRIBUTES, GetAttributesRequest(unique_identifier=new))
    assert sum(1 for a in kept.attributes if a.value is not None
               and a.value.value == b"\xa5" * LARGE) == n
