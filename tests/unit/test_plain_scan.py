"""The compiled scan of plain requests (kcm/kernel/_plain_scan.c) reads as the Python reader
it stands in for (kcm.kernel.plain_messages.read_request_python): the same result for
every plain request generated, and a refusal for every request the Python reader refuses,
whatever was changed in it (a byte, a length, a cut, bytes appended). It is built by the
install (setup.py), so the suite always has it."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kcm.gateway.fast_path import _create_request
from kcm.kernel import plain_messages
from kcm.kernel.plain_messages import (
    NOT_PLAIN,
    PLAIN_VERSIONS,
    READABLE_VERSIONS,
    read_request,
    read_request_python,
)
from kcm.kmip.enums import Operation
from kcm.kmip.payloads import EncryptRequest
from kcm.testing.requests import create_l4, item, request
from tests.unit.test_plain_messages import VERSIONS, decrypts, encrypts, gets

_HEADER = struct.Struct(">II")
creates = st.builds(lambda: create_l4())


def _outcome(reader, wire: bytes, create, versions) -> tuple:
    """("read", what was read) or ("refused",): every refusal alike, as the callers (the
    gateway's fast path, kcm-core's plain decoder) take any exception as "not plain"."""
    try:
        return ("read", reader(wire, create, versions))
    except Exception:
        NOT_PLAIN.__traceback__ = None
        return ("refused",)


def _same(wire: bytes, create=_create_request, versions=READABLE_VERSIONS) -> tuple:
    scanned = _outcome(read_request, wire, create, versions)
    assert scanned == _outcome(read_request_python, wire, create, versions)
    return scanned


def test_the_compiled_scan_is_built() -> None:
    assert plain_messages._scan is not None, "setup.py builds kcm/kernel/_plain_scan.c"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(encrypts, decrypts, gets, creates), min_size=1, max_size=4),
       VERSIONS, st.one_of(st.none(), st.integers(1, 1 << 20)))
def test_a_plain_request_is_read_alike(items: list, version: tuple[int, int],
                                       maximum_response_size: int | None) -> None:
    wire = request(*items, version=version, maximum_response_size=maximum_response_size)
    has_create = any(i.operation == Operation.CREATE for i in items)
    # (the fast path's Create reader reads KMIP 1.4 to 2.1 only)
    assert _same(wire)[0] == ("refused" if has_create and version not in PLAIN_VERSIONS
                              else "read")
    _same(wire, create=None)  # a Create without a reader is refused by both
    _same(wire, versions=PLAIN_VERSIONS)


_mutations = st.one_of(
    st.tuples(st.just("byte"), st.integers(0, 1 << 16), st.integers(0, 255)),
    st.tuples(st.just("length"), st.integers(0, 1 << 16), st.sampled_from(
        [0, 1, 4, 7, 8, 9, 16, 0x7FFFFFFF, 0xFFFFFFF8, 0xFFFFFFFF])),
    st.tuples(st.just("cut"), st.integers(0, 1 << 16), st.just(0)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=24), st.just(0)))


def _mutated(wire: bytes, mutation: tuple) -> bytes:
    kind, where, value = mutation
    if kind == "append":
        return wire + where
    if len(wire) < 8:
        return wire
    at = where % len(wire)
    if kind == "byte":
        return wire[:at] + bytes([value]) + wire[at + 1:]
    if kind == "cut":
        return wire[:at]
    at -= at % 8  # a length field: the second word of an item header, on a multiple of 8
    at = min(at + 4, len(wire) - 4)
    return wire[:at] + value.to_bytes(4, "big") + wire[at + 4:]


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(encrypts, decrypts, gets, creates), min_size=1, max_size=3),
       VERSIONS, st.one_of(st.none(), st.integers(1, 1 << 20)),
       st.lists(_mutations, min_size=1, max_size=3))
def test_a_changed_request_is_read_or_refused_alike(
        items: list, version: tuple[int, int], maximum_response_size: int | None,
        mutations: list) -> None:
    wire = request(*items, version=version, maximum_response_size=maximum_response_size)
    for mutation in mutations:
        wire = _mutated(wire, mutation)
    _same(wire)


@given(st.binary(max_size=400))
def test_any_bytes_are_read_or_refused_alike(wire: bytes) -> None:
    _same(wire)


@pytest.mark.parametrize("head", [b"", b"\x42\x00\x78\x01", b"\x42\x00\x78\x01\x00\x00\x00"])
def test_a_header_shorter_than_eight_bytes_is_refused(head: bytes) -> None:
    assert _same(head) == ("refused",)


def test_a_text_that_is_not_utf_8_is_refused_alike() -> None:
    wire = request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier="kk", data=b"x")))
    at = wire.index(b"kk")
    assert _same(wire[:at] + b"\xff\xfe" + wire[at + 2:]) == ("refused",)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(encrypts, decrypts, gets, creates), min_size=1, max_size=6),
       st.integers(0, 7), st.integers(0, 8))
def test_a_batch_count_over_max_items_or_items_past_the_count_are_refused_alike(
        items: list, max_items: int, count: int) -> None:
    wire = request(*items)
    # The Batch Count said otherwise (its value is the last Integer of the header).
    at = wire.index((0x42000D02).to_bytes(4, "big")) + 8
    wire = wire[:at] + count.to_bytes(4, "big") + wire[at + 4:]

    def outcome(reader):
        try:
            return ("read", reader(wire, _create_request, READABLE_VERSIONS,
                                   max_items=max_items))
        except Exception:
            NOT_PLAIN.__traceback__ = None
            return ("refused",)

    expected = "read" if count == len(items) <= max_items else "refused"
    assert outcome(read_request)[0] == expected
    assert outcome(read_request) == outcome(read_request_python)


def test_a_negative_max_items_is_refused() -> None:
    """The scan takes -1 for "no bound": a negative max_items read any batch where the
    Python reader refused every one."""
    wire = request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier="k", data=b"x")))
    with pytest.raises(ValueError, match="max_items must not be negative"):
        read_request(wire, max_items=-3)


def test_only_bytes_are_scanned() -> None:
    wire = request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier="k", data=b"x")))
    assert read_request(bytearray(wire)) == read_request(wire)  # (the Python reader's)


@pytest.mark.parametrize("reader", [read_request, read_request_python])
def test_a_negative_maximum_response_size_is_not_plain(reader) -> None:
    """The general decoder refuses it whole (Invalid Field): read as a bound, a plain
    request's successes were answered Response Too Large instead. Zero and positive sizes
    stay plain."""
    def wire(size: int) -> bytes:
        return request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier="t",
                                                              data=b"x")),
                       version=(2, 1), maximum_response_size=size)

    for size in (-1, -(2**31)):
        with pytest.raises(type(NOT_PLAIN)):
            reader(wire(size), None, PLAIN_VERSIONS)
        NOT_PLAIN.__traceback__ = None
    for size in (0, 1 << 20):
        version, maximum, _ = reader(wire(size), None, PLAIN_VERSIONS)
        assert (version, maximum) == ((2, 1), size)


def test_a_negative_maximum_response_size_is_refused_whole_by_the_decoder() -> None:
    from kcm.kmip.enums import ResultReason
    from kcm.kmip.errors import KmipError
    from kcm.kmip.messages import decode_request
    from kcm.ttlv import decode

    for version in ((1, 0), (1, 4), (2, 1)):
        def wire(size: int, version: tuple[int, int] = version) -> bytes:
            return request(item(Operation.ENCRYPT, EncryptRequest(unique_identifier="t",
                                                                  data=b"x")),
                           version=version, maximum_response_size=size)

        with pytest.raises(KmipError) as refused:
            decode_request(decode(wire(-5)))
        assert (refused.value.reason, refused.value.message) == (
            ResultReason.INVALID_FIELD, "Maximum Response Size -5 is negative")
        assert decode_request(decode(wire(0))).header.maximum_response_size == 0
