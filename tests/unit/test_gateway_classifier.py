"""The gateway's classifier: local or forward, per batch item and per request, from the peek."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kcm.gateway.classifier import Route, classify, may_run_here
from kcm.kmip.enums import Operation
from kcm.kmip.tags import Tag
from kcm.ttlv import TtlvError
from kcm.ttlv.peek import operation_values
from tests.gateway_support import (
    L3_UID,
    activate,
    create_l4,
    create_managed,
    decrypt,
    encrypt,
    get,
    locate,
    request,
)

TOKEN = "l4.1.AAAA"


@pytest.mark.parametrize("version", [(1, 0), (1, 2), (1, 4), (2, 0), (2, 1)])
def test_l4_create_by_custom_attribute_is_local_in_every_version(version) -> None:
    classified = classify(request(create_l4(), version=version))
    assert classified.local == (True,)
    assert classified.route is Route.ALL_LOCAL


def test_l4_create_by_parent_link_to_an_l3_is_local() -> None:
    assert classify(request(create_l4(via_link=L3_UID))).local == (True,)


def test_parent_link_to_a_managed_object_is_not_an_l4() -> None:
    assert classify(request(create_l4(via_link="1234"))).local == (False,)


def test_create_of_a_managed_key_is_forwarded() -> None:
    classified = classify(request(create_managed()))
    assert classified.local == (False,)
    assert classified.route is Route.ALL_REMOTE


@pytest.mark.parametrize(("batch_item", "local"), [
    (get(TOKEN), True),
    (get(L3_UID), False),  # L3 material is the core's to refuse
    (get("42"), False),
    (encrypt(TOKEN), True),
    (encrypt(L3_UID), True),
    (encrypt("42"), False),
    (decrypt(TOKEN, b"x"), True),
    (decrypt(L3_UID, b"x"), True),
    (decrypt("42", b"x"), False),
    (activate(TOKEN), False),  # lifecycle of anything is the core's
    (locate(), False),
])
def test_items_by_operation_and_identifier(batch_item, local: bool) -> None:
    assert classify(request(batch_item)).local == (local,)


def test_placeholder_after_a_local_create_is_local_after_a_remote_item_remote() -> None:
    classified = classify(request(create_l4(), get(None), encrypt(None),
                                  create_managed(), get(None), encrypt(None)))
    # The remote items' placeholder might have been set before their run: the whole
    # request goes to the core, whose placeholder is the request's.
    assert classified.local == (False,) * 6
    assert classified.route is Route.ALL_REMOTE
    classified = classify(request(create_l4(), get(None), encrypt(None),
                                  create_managed(), locate()))
    assert classified.local == (True, True, True, False, False)
    assert classified.route is Route.MIXED


@pytest.mark.parametrize("reader", [get(None), encrypt(None), decrypt(None, b"x")])
@pytest.mark.parametrize("setter", [create_l4(), get(TOKEN)])
def test_a_local_placeholder_item_after_a_remote_item_sends_the_request_whole(
        setter, reader) -> None:
    # A failed item sets no placeholder, and a Get sets none: after a local Get, or a local
    # Create that fails, the reader means what the remote item set, at the core.
    for remote in (create_managed(), activate("7"), locate()):
        classified = classify(request(remote, setter, reader))
        assert classified.local == (False, False, False)
        assert classified.route is Route.ALL_REMOTE
    # With a named identifier, nothing hangs on the local item's success.
    classified = classify(request(create_managed(), setter, encrypt(TOKEN)))
    assert classified.local == (False, True, True)
    assert classified.route is Route.MIXED


def test_an_encrypt_or_decrypt_sets_no_placeholder() -> None:
    # As at the core: the Get after a local Encrypt means the Create's token.
    classified = classify(request(create_l4(), encrypt(TOKEN), decrypt(L3_UID, b"x"),
                                  get(None)))
    assert classified.route is Route.ALL_LOCAL
    # The Get after a local Encrypt means the managed key the core created: the core's.
    classified = classify(request(create_managed(), encrypt(TOKEN), get(None)))
    assert classified.route is Route.ALL_REMOTE


@pytest.mark.parametrize("remote", [activate(None), get(None)])
def test_a_remote_item_that_may_mean_a_local_placeholder_sends_the_request_whole(
        remote) -> None:
    classified = classify(request(encrypt(TOKEN), create_managed(), remote))
    assert classified.route is Route.ALL_REMOTE
    classified = classify(request(create_l4(), activate(None)))
    assert classified.route is Route.ALL_REMOTE


def test_remote_items_that_take_no_identifier_keep_a_request_mixed() -> None:
    classified = classify(request(create_l4(), locate(), create_managed()))
    assert classified.local == (True, False, False)
    assert classified.route is Route.MIXED


def test_a_request_without_an_identifier_on_its_own_is_forwarded() -> None:
    assert classify(request(encrypt(None))).route is Route.ALL_REMOTE


def test_mixed_request_keeps_peeked_facts() -> None:
    classified = classify(request(create_l4(b"a"), activate("7", b"b"), locate(b"c")))
    assert classified.local == (True, False, False)
    assert classified.route is Route.MIXED
    assert [i.unique_batch_item_id for i in classified.request.items] == [b"a", b"b", b"c"]


def test_unreadable_request_raises() -> None:
    with pytest.raises(TtlvError):
        classify(b"\x42\x00\x78\x01\x00\x00\x00\x10garbage")


def _with_unreadable_attributes(wire: bytes) -> bytes:
    """``wire`` with the type byte of the first attribute of its Create made invalid."""
    from kcm.ttlv.peek import peek_request

    start = peek_request(wire, create_attributes=True).items[0].attributes_start
    assert start > 0
    corrupt = bytearray(wire)
    corrupt[start + 8 + 3] = 0xEE  # the first child's type byte
    return bytes(corrupt)


def test_a_forwarded_create_s_attributes_are_not_decoded() -> None:
    # Unreadable attributes without an L4 marker: the gateway routes without decoding them
    # (the core, which executes the request, answers it).
    classified = classify(_with_unreadable_attributes(request(create_managed())))
    assert classified.route is Route.ALL_REMOTE


def test_a_create_with_an_l4_marker_has_its_attributes_decoded() -> None:
    with pytest.raises(TtlvError):
        classify(_with_unreadable_attributes(request(create_l4())))
    classified = classify(request(create_l4()))
    assert classified.create_attributes[0] is not None


# Forwarded without a peek -----------------------------------------------------------------
_MAY_RUN_HERE = {Operation.CREATE, Operation.GET, Operation.ENCRYPT, Operation.DECRYPT}
_ITEMS = [create_l4(), create_managed(), get(TOKEN), get("42"), encrypt(TOKEN),
          encrypt(L3_UID), encrypt("42"), decrypt(TOKEN, b"x"), activate(TOKEN), activate(None),
          locate(), locate(b"b")]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_ITEMS), max_size=4),
       st.sampled_from([(1, 0), (1, 2), (1, 4), (2, 0), (2, 1), (3, 0)]),
       st.one_of(st.none(), st.tuples(st.integers(0, 10_000), st.integers(0, 255))))
def test_a_request_that_may_not_run_here_is_one_the_classifier_forwards_whole(
        items: list, version: tuple[int, int], flip: tuple[int, int] | None) -> None:
    """What :func:`may_run_here` declines, the peek would route ALL_REMOTE, could not read,
    or finds no batch item in (a flipped byte can turn a Batch Item's tag into another):
    either way the core gets it whole and answers it (bytes changed at random included).
    A request without a batch item the peek can see is answered Invalid Message wherever it
    runs, so which end answers it does not matter."""
    wire = bytearray(request(*items, version=version))
    if flip is not None:
        wire[flip[0] % len(wire)] = flip[1]
    wire = bytes(wire)
    found = operation_values(wire)  # may_run_here reads them one by one, stopping early
    assert may_run_here(wire) == (not found or any(
        int.from_bytes(value, "big") in _MAY_RUN_HERE for value in found))
    if flip is None:  # bounded, it reads a well-formed request alike
        assert may_run_here(wire, 1) == may_run_here(wire)
    if may_run_here(wire):
        return
    try:
        classified = classify(wire)
    except TtlvError:
        return
    assert classified.route is Route.ALL_REMOTE or not classified.request.items


def test_a_request_whose_batch_item_tag_is_damaged_has_no_item_for_the_peek() -> None:
    """The case hypothesis found: the one Batch Item's tag changed, the peek sees no item
    (the request would be answered Invalid Message), while the Operation inside it is still
    found by the scan, which declines it."""
    wire = bytearray(request(activate(TOKEN)))
    at = wire.index(int(Tag.BATCH_ITEM).to_bytes(3, "big"))
    wire[at + 2] ^= 0x01  # another tag
    wire = bytes(wire)
    assert not may_run_here(wire)
    classified = classify(wire)
    assert classified.request.items == [] and classified.request.batch_count == 1


def test_past_its_bound_the_scan_finds_a_local_item_however_far_it_is() -> None:
    remote = [locate()] * 50
    for item in (create_l4(), get("42"), encrypt(TOKEN), decrypt("42", b"x")):
        assert may_run_here(request(*remote, item), 3)
    assert not may_run_here(request(*remote), 3)
    assert not may_run_here(request(*remote, activate(TOKEN)), 3)


def test_a_request_with_an_item_that_may_run_here_is_peeked() -> None:
    for item in (create_l4(), create_managed(), get("42"), encrypt(TOKEN), decrypt("42", b"x")):
        assert may_run_here(request(activate("7"), item))
    assert not may_run_here(request(activate(TOKEN), locate()))
