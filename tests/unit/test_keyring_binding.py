"""The keyring binds what it wraps to the row's level, service, key version and object type,
and to the object's effective Extractable and Sensitive (wrap format version 2), checks it
from the row as read on every unwrap, cached or not, and opens a version 1 blob only while
``accept_v1`` (kcm.core.keyring)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from kcm.core import keyring, keys, server_info
from kcm.core.attribute_blob import decode_attributes, encode_attributes
from kcm.core.keyring import (
    DEFAULT_FLAGS,
    Binding,
    Flags,
    Keyring,
    WrappingMismatch,
    flags_of,
    row_flags,
)
from kcm.core.store.schema import LEVEL_SERVICE_KEY, LEVEL_TENANT_KEY, WRAPPED_BY_L1
from kcm.kmip.attributes import Attribute, Name
from kcm.kmip.enums import NameType, ResultReason
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType

L2_UID = "l2-uid"
L2_KEY = bytes(range(32))


def _ring(**kwargs: object) -> Keyring:
    ring = Keyring(os.urandom(32), clock=lambda: 0.0, **kwargs)  # type: ignore[arg-type]
    ring._l2_by_uid[L2_UID] = L2_KEY  # (as if read from its row: no store needed)
    ring._l2_read_at[L2_UID] = 0.0
    return ring


def _l3_row(ring: Keyring, material: bytes = b"service key") -> SimpleNamespace:
    binding = Binding("demo", "l3-1", 2, LEVEL_SERVICE_KEY, "billing", 1, True, False)
    blob = keys.wrap(L2_KEY, material, aad=binding.aad())
    return SimpleNamespace(attributes=None, tenant="demo", uid="l3-1", object_type=2,
                           level=LEVEL_SERVICE_KEY,
                           service="billing", key_version=1, material=blob,
                           wrapped_by=L2_UID)


def test_a_row_changed_after_its_wrap_is_refused_and_counted() -> None:
    ring = _ring()
    for change in ({"level": None}, {"service": "payroll"}, {"service": None},
                   {"key_version": 2}, {"object_type": 7}):
        row = _l3_row(ring)
        assert ring.unwrap(None, row) == b"service key"  # type: ignore[arg-type]
        before = ring.mismatches
        for column, value in change.items():
            setattr(row, column, value)
        # Unwrapped and cached before the change: the cache does not answer for it.
        with pytest.raises(WrappingMismatch) as caught:
            ring.unwrap(None, row)  # type: ignore[arg-type]
        assert caught.value.reason == ResultReason.GENERAL_FAILURE
        assert caught.value.message == "the stored object failed its integrity check"
        assert "its row does not match its wrapping" in str(caught.value)
        assert "'l3-1'" in str(caught.value) and "'demo'" in str(caught.value)
        assert ring.mismatches == before + 1


def test_the_cache_is_keyed_by_the_binding() -> None:
    ring = _ring()
    row = _l3_row(ring)
    ring.unwrap(None, row)  # type: ignore[arg-type]
    ((tenant, uid, material, binding),) = ring._unwrapped
    assert binding == Binding.of(row) and material == row.material


def test_an_l1_wrapped_row_must_be_a_tenant_key() -> None:
    ring = _ring()
    row = SimpleNamespace(attributes=None, tenant="demo", uid="l2-b", object_type=2,
                          level=LEVEL_TENANT_KEY,
                          service=None, key_version=None, wrapped_by=WRAPPED_BY_L1,
                          material=ring.wrap_tenant_key("demo", "l2-b", b"K" * 32, DEFAULT_FLAGS))
    assert ring.unwrap(None, row) == b"K" * 32  # type: ignore[arg-type]
    row.level, row.service = None, "billing"  # an L2 made to look like an application's key
    with pytest.raises(WrappingMismatch):
        ring.unwrap(None, row)  # type: ignore[arg-type]


def _v1_row(ring: Keyring) -> SimpleNamespace:
    blob = keys.wrap(L2_KEY, b"old key", aad=keys.object_aad("demo", "obj-1"), version=1)
    return SimpleNamespace(attributes=None, tenant="demo", uid="obj-1", object_type=2, level=None,
                           service="billing", key_version=None, material=blob,
                           wrapped_by=L2_UID)


def test_a_v1_blob_opens_while_accepted_and_is_rewrapped_as_v2() -> None:
    ring = _ring()
    row = _v1_row(ring)
    assert ring.unwrap(None, row) == b"old key"  # type: ignore[arg-type]
    blob = ring.rewrap(None, row)  # type: ignore[arg-type]
    assert blob[0] == keys.WRAP_VERSION
    row.material = blob
    assert ring.unwrap(None, row) == b"old key"  # type: ignore[arg-type]
    row.service = "payroll"
    with pytest.raises(WrappingMismatch):
        ring.unwrap(None, row)  # type: ignore[arg-type]


def test_a_v1_blob_is_refused_when_not_accepted() -> None:
    ring = _ring(accept_v1=False)
    row = _v1_row(ring)
    with pytest.raises(WrappingMismatch, match="version 1"):
        ring.unwrap(None, row)  # type: ignore[arg-type]
    with pytest.raises(WrappingMismatch):
        ring.rewrap(None, row)  # type: ignore[arg-type]
    assert ring.mismatches == 2 and not ring._unwrapped


def test_every_wrap_writes_v2_bound_to_its_binding() -> None:
    ring = _ring()
    blob = ring.wrap_tenant_key("demo", "l2-c", b"K" * 32, DEFAULT_FLAGS)
    assert blob[0] == 2
    binding = Binding("demo", "l2-c", 2, LEVEL_TENANT_KEY, None, None, True, False)
    assert ring._master().unwrap(blob, aad=binding.aad()) == b"K" * 32
    with pytest.raises(ValueError, match="another object"):
        ring.wrap_for_tenant(None, "demo", "x", b"k",  # type: ignore[arg-type]
                             binding=Binding("demo", "y", 2, None, None, None, True, False))


def _v1_l3_row() -> SimpleNamespace:
    """A service key as the previous release wrote it (version 1: tenant and uid only)."""
    blob = keys.wrap(L2_KEY, b"service key", aad=keys.object_aad("demo", "l3-1"), version=1)
    return SimpleNamespace(attributes=None, tenant="demo", uid="l3-1", object_type=2,
                           level=LEVEL_SERVICE_KEY,
                           service="billing", key_version=1, material=blob,
                           wrapped_by=L2_UID)


@pytest.mark.parametrize("change", [
    {"level": None, "key_version": None},  # a service key made an application's object
    {"level": None, "key_version": None, "service": None},  # ... of no service
    {"level": None},
    {"key_version": None}, {"service": None}, {"object_type": 7}, {"level": 4},
    {"level": LEVEL_TENANT_KEY, "service": None, "key_version": None},
])
def test_a_v1_row_no_release_writes_is_refused_not_laundered(change: dict) -> None:
    """A version 1 blob binds tenant and uid only: a row whose columns are those of no row
    kcm-core writes (a service key's uid without its level, service and version; a level
    unknown; a tenant key not wrapped by L1) is refused when read and never re-wrapped as
    version 2 bound to what the database writer wrote."""
    ring = _ring()
    row = _v1_l3_row()
    assert ring.unwrap(None, row) == b"service key"  # type: ignore[arg-type]
    for column, value in change.items():
        setattr(row, column, value)
    with pytest.raises(WrappingMismatch, match="version 1"):
        ring.unwrap(None, row)  # type: ignore[arg-type]
    with pytest.raises(WrappingMismatch, match="version 1"):
        ring.rewrap(None, row)  # type: ignore[arg-type]
    assert ring.mismatches == 2


def test_an_ordinary_v1_row_given_a_service_key_uid_shape_is_refused() -> None:
    ring = _ring()
    row = _v1_row(ring)
    row.level, row.key_version = LEVEL_SERVICE_KEY, 1  # an application's key made an L3
    with pytest.raises(WrappingMismatch, match="version 1"):
        ring.unwrap(None, row)  # type: ignore[arg-type]
    row = _v1_row(ring)
    row.key_version = 3  # (an ordinary object has no key version)
    with pytest.raises(WrappingMismatch, match="version 1"):
        ring.rewrap(None, row)  # type: ignore[arg-type]


def test_legitimate_v1_rows_of_every_level_open_and_rewrap() -> None:
    ring = _ring()
    l2 = SimpleNamespace(attributes=None, tenant="demo", uid="l2-b", object_type=2,
                         level=LEVEL_TENANT_KEY,
                         service=None, key_version=None, wrapped_by=WRAPPED_BY_L1,
                         material=ring._master().wrap(
                             b"K" * 32, aad=keys.object_aad("demo", "l2-b"),
                             random_bytes=os.urandom, version=1))
    for row in (l2, _v1_l3_row(), _v1_row(ring)):
        plain = ring.unwrap(None, row)  # type: ignore[arg-type]
        row.material = ring.rewrap(None, row)  # type: ignore[arg-type]
        assert row.material[0] == 2
        assert ring.unwrap(None, row) == plain  # type: ignore[arg-type]
    assert ring.mismatches == 0


def _v1_l2_row(ring: Keyring, **columns: object) -> SimpleNamespace:
    row = SimpleNamespace(attributes=None, tenant="demo", uid="l2-b", object_type=2,
                          level=LEVEL_TENANT_KEY,
                          service=None, key_version=None, wrapped_by=WRAPPED_BY_L1,
                          material=ring._master().wrap(
                              b"K" * 32, aad=keys.object_aad("demo", "l2-b"),
                              random_bytes=os.urandom, version=1))
    for column, value in columns.items():
        setattr(row, column, value)
    return row


@pytest.mark.parametrize(("columns", "why"), [
    # A tenant key made to look like an application's object, or given a service.
    ({"level": None, "service": "app"}, "wrapped by L1 but not a tenant key"),
    ({"service": "app"}, "a tenant key with a service or version"),
    ({"key_version": 1}, "a tenant key with a service or version"),
])
def test_a_v1_tenant_key_row_changed_is_refused(columns: dict, why: str) -> None:
    ring = _ring()
    row = _v1_l2_row(ring, **columns)
    with pytest.raises(WrappingMismatch, match=why):
        ring.unwrap(None, row)  # type: ignore[arg-type]
    assert ring.mismatches == 1


@pytest.mark.parametrize(("columns", "why"), [
    ({"level": LEVEL_TENANT_KEY}, "a tenant key not wrapped by L1"),  # made the tenant's key
    ({"level": 4}, "an unknown level 4"),
    ({"level": 0}, "an unknown level 0"),
])
def test_an_ordinary_v1_row_given_another_level_is_refused(columns: dict, why: str) -> None:
    ring = _ring()
    row = _v1_row(ring)
    row.service = None
    for column, value in columns.items():
        setattr(row, column, value)
    with pytest.raises(WrappingMismatch, match=why):
        ring.unwrap(None, row)  # type: ignore[arg-type]


@pytest.mark.parametrize("material", [b"", b"\x03" + bytes(40), b"\x00" + bytes(40)])
def test_a_blob_of_no_known_version_is_a_mismatch(material: bytes) -> None:
    """Empty (not NULL) material, or a version byte no release writes: refused, logged and
    counted like a changed row, whether version 1 is accepted or not."""
    for accept_v1 in (True, False):
        ring = _ring(accept_v1=accept_v1)
        row = _v1_row(ring)
        row.material = material
        with pytest.raises(WrappingMismatch, match="unknown blob version"):
            ring.unwrap(None, row)  # type: ignore[arg-type]
        assert ring.mismatches == 1


def _flagged_row(ring: Keyring, *flags: Attribute) -> SimpleNamespace:
    """An application's key whose stored attributes carry ``flags``, wrapped as kcm-core
    wraps it (bound to their effective values)."""
    attributes = [Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256), *flags]
    binding = Binding("demo", "obj-f", 2, None, "app", None, *flags_of(attributes))
    return SimpleNamespace(attributes=encode_attributes(attributes), tenant="demo",
                           uid="obj-f", object_type=2, level=None, service="app",
                           key_version=None, wrapped_by=L2_UID,
                           material=keys.wrap(L2_KEY, b"the key", aad=binding.aad()))


def test_the_effective_flags_are_read_as_get_reads_them() -> None:
    """Absent: the server's defaults (Extractable True, Sensitive False); the first of
    each counts (StoredObject.value)."""
    assert DEFAULT_FLAGS == Flags(True, False) == flags_of([])
    assert server_info.DEFAULT_ATTRIBUTES[Tag.EXTRACTABLE][1] is DEFAULT_FLAGS.extractable
    assert server_info.DEFAULT_ATTRIBUTES[Tag.SENSITIVE][1] is DEFAULT_FLAGS.sensitive
    ext, sens = Tag.EXTRACTABLE, Tag.SENSITIVE
    assert flags_of([Attribute.of(ext, False)]) == Flags(False, False)
    assert flags_of([Attribute.of(sens, True)]) == Flags(True, True)
    assert flags_of([Attribute.of(sens, True), Attribute.of(ext, False),
                     Attribute.of(sens, False), Attribute.of(ext, True)]) == Flags(False, True)
    assert row_flags(SimpleNamespace(attributes=None)) == DEFAULT_FLAGS
    assert row_flags(SimpleNamespace(attributes=encode_attributes(
        [Attribute.of(ext, False), Attribute.of(sens, True)]))) == Flags(False, True)


@pytest.mark.parametrize(("stored", "edited"), [
    (Attribute.of(Tag.EXTRACTABLE, False), Attribute.of(Tag.EXTRACTABLE, True)),
    (Attribute.of(Tag.SENSITIVE, True), Attribute.of(Tag.SENSITIVE, False)),
    (Attribute.of(Tag.EXTRACTABLE, False), None),  # (removed: the default, True)
    (Attribute.of(Tag.SENSITIVE, True), None),
    # Another type: Get reads an Extractable that is not the Boolean False as extractable,
    # a Sensitive that is not the Boolean True as not sensitive; so do the flags.
    (Attribute.of(Tag.EXTRACTABLE, False), Attribute(Tag.EXTRACTABLE, Item(
        Tag.EXTRACTABLE, ItemType.INTEGER, 0))),
    (Attribute.of(Tag.SENSITIVE, True), Attribute(Tag.SENSITIVE, Item(
        Tag.SENSITIVE, ItemType.INTEGER, 1))),
])
def test_a_flag_changed_in_the_attribute_blob_is_refused_even_after_use(
        stored: Attribute, edited: Attribute | None) -> None:
    ring = _ring()
    row = _flagged_row(ring, stored)
    assert ring.unwrap(None, row) == b"the key"  # type: ignore[arg-type]
    assert ring.unwrap(None, row, row_flags(row)) == b"the key"  # type: ignore[arg-type]
    attributes = [a for a in decode_attributes(row.attributes) if a.tag != stored.tag]
    row.attributes = encode_attributes(attributes + ([edited] if edited else []))
    with pytest.raises(WrappingMismatch, match="fails authentication"):
        ring.unwrap(None, row)  # type: ignore[arg-type]
    with pytest.raises(WrappingMismatch):
        ring.unwrap(None, row, row_flags(row))  # type: ignore[arg-type]
    with pytest.raises(WrappingMismatch):
        ring.rewrap(None, row)  # type: ignore[arg-type]
    assert ring.mismatches == 3


def test_rewrap_with_new_flags_opens_under_the_old_and_binds_the_new() -> None:
    ring = _ring()
    row = _flagged_row(ring, Attribute.of(Tag.SENSITIVE, True))
    old = Flags(True, True)
    with pytest.raises(WrappingMismatch):  # (opened bound to the flags as read only)
        ring.rewrap(None, row, DEFAULT_FLAGS, old)  # type: ignore[arg-type]
    row.material = ring.rewrap(None, row, old, DEFAULT_FLAGS)  # type: ignore[arg-type]
    assert row.material[0] == keys.WRAP_VERSION
    assert ring.unwrap(None, row, DEFAULT_FLAGS) == b"the key"  # type: ignore[arg-type]
    with pytest.raises(WrappingMismatch):
        ring.unwrap(None, row, old)  # type: ignore[arg-type]


def test_a_v1_blob_is_rewrapped_bound_to_the_flags_its_row_says() -> None:
    ring = _ring()
    row = _v1_row(ring)
    row.attributes = encode_attributes([Attribute.of(Tag.EXTRACTABLE, False)])
    row.material = ring.rewrap(None, row)  # type: ignore[arg-type]
    assert ring.unwrap(None, row, Flags(False, False)) == b"old key"  # type: ignore[arg-type]
    with pytest.raises(WrappingMismatch):
        ring.unwrap(None, row, DEFAULT_FLAGS)  # type: ignore[arg-type]


def test_an_attribute_blob_that_does_not_decode_is_a_mismatch() -> None:
    """Not an error that would fail the re-wrap walk's step at every sweep."""
    ring = _ring()
    row = _flagged_row(ring, Attribute.of(Tag.SENSITIVE, True))
    row.attributes = row.attributes[:-3]
    with pytest.raises(WrappingMismatch, match="its attributes do not decode"):
        ring.unwrap(None, row)  # type: ignore[arg-type]
    v1 = _v1_row(ring)
    v1.attributes = b"\x42\x00"
    with pytest.raises(WrappingMismatch, match="its attributes do not decode"):
        ring.rewrap(None, v1)  # type: ignore[arg-type]
    assert ring.mismatches == 2


def test_a_large_attribute_blob_is_decoded_once_per_content(monkeypatch) -> None:  # noqa: ANN001
    """A service key's blob is read at every L4 request: one over the small memo's bound
    (an administrator's many Names) is not decoded again while its content is the same,
    and a change of it, of the same length, is read anew."""
    decoded = []
    monkeypatch.setattr(keyring, "decode_attributes",
                        lambda blob: decoded.append(len(blob)) or decode_attributes(blob))
    names = [Attribute.of(Tag.NAME, Name(value=f"n{i:03}" + "x" * 60,
                                         type=NameType.UNINTERPRETED_TEXT_STRING))
             for i in range(80)]
    row = SimpleNamespace(attributes=encode_attributes([Attribute.of(Tag.EXTRACTABLE, False),
                                                        *names]))
    assert len(row.attributes) > keyring.FLAGS_MEMO_BLOB_BYTES
    for _ in range(3):
        assert row_flags(row) == Flags(False, False)
    assert len(decoded) == 1
    row.attributes = encode_attributes([Attribute.of(Tag.EXTRACTABLE, True), *names])
    assert row_flags(row) == Flags(True, False)
    assert len(decoded) == 2
