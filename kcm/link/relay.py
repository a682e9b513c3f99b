"""The link's REQUEST and RESPONSE frames as bytes: a forwarded KMIP message spliced in and
out of its frame with no Frame object and no second copy. Pure: no I/O.

A forwarded request costs the gateway a frame around the client's bytes, and its answer a
look at the frame around the core's; both are on every forwarded request's path. This module
writes and reads exactly the bytes :func:`kcm.link.frames.encode_frame` writes for those
frames (a property test holds it to that, tests/unit/test_link_relay.py):

* :func:`caller_fields` — a REQUEST's CallerIdentity, CallerSubject and CallerSource, encoded
  once per caller and connection (the same for each of its requests);
* :func:`request_frame` — a REQUEST frame: a fixed head, the stream, the caller's fields and
  the KMIP message;
* :func:`response_frame` — a RESPONSE frame (the core's answer);
* :func:`read_response` — the stream and the KMIP message of a RESPONSE frame laid out as
  :func:`response_frame` writes it, read at fixed offsets; None for any other frame, which
  :func:`kcm.link.frames.decode_frame` then reads (and refuses where it must);
* :func:`read_request` — the same for a REQUEST laid out as :func:`request_frame` writes it
  (the core's end), in two steps a caller can take apart: :func:`split_request` finds the
  stream, the caller's fields (as bytes) and the KMIP message, and :func:`read_caller`
  reads the fields. A gateway sends the same fields with every request of a connection,
  so the core reads them once per connection and keeps what they name.
"""

from __future__ import annotations

import struct

from kcm.link.frames import MAX_STREAM_ID, FrameType, Tag
from kcm.ttlv import ItemType

__all__ = ["CallerFields", "ForwardedRequest", "caller_fields", "read_caller", "read_request",
           "read_response", "request_frame", "response_frame", "split_request"]

#: A REQUEST read by :func:`read_request`: stream id, CallerIdentity, CallerSubject (or
#: None), CallerSource and the KMIP message.
ForwardedRequest = tuple[int, str, "str | None", str, bytes]
#: What a REQUEST's caller fields say: CallerIdentity, CallerSubject (or None), CallerSource.
CallerFields = tuple[str, "str | None", str]

_HEAD = struct.Struct(">II")
_PAD = bytes(8)
_FRAME_HEAD = Tag.LINK_FRAME << 8 | ItemType.STRUCTURE
_MESSAGE_HEAD = Tag.KMIP_MESSAGE << 8 | ItemType.BYTE_STRING
# FrameType, then the StreamId item's head: the 24 bytes after the LinkFrame header that
# every REQUEST (RESPONSE) frame starts with; the stream id and its padding follow.
_TYPE_AND_STREAM = struct.Struct(">IIII II")
_REQUEST_START = _TYPE_AND_STREAM.pack(Tag.FRAME_TYPE << 8 | ItemType.ENUMERATION, 4,
                                       FrameType.REQUEST, 0,
                                       Tag.STREAM_ID << 8 | ItemType.INTEGER, 4)
_RESPONSE_START = _TYPE_AND_STREAM.pack(Tag.FRAME_TYPE << 8 | ItemType.ENUMERATION, 4,
                                        FrameType.RESPONSE, 0,
                                        Tag.STREAM_ID << 8 | ItemType.INTEGER, 4)
# LinkFrame header (8) + FrameType (16) + StreamId (16) + KmipMessage header (8).
_RESPONSE_MESSAGE_AT = 48
_STREAM_AT = 32  # the stream id's four bytes, then four of padding
_STREAM = struct.Struct(">iI")
_FIELD_HEADS = (Tag.CALLER_IDENTITY << 8 | ItemType.TEXT_STRING,
                Tag.CALLER_SUBJECT << 8 | ItemType.TEXT_STRING,
                Tag.CALLER_SOURCE << 8 | ItemType.TEXT_STRING)


def _text(head: int, value: str) -> bytes:
    data = value.encode()
    return _HEAD.pack(head, len(data)) + data + _PAD[:-len(data) & 7]


def caller_fields(identity: str, subject: str | None, source: str) -> bytes:
    """The CallerIdentity, [CallerSubject] and CallerSource items of a REQUEST, in the
    order :func:`kcm.link.frames.encode_frame` writes them. Raises UnicodeEncodeError for
    a string that is not valid text (a lone surrogate)."""
    identity_head, subject_head, source_head = _FIELD_HEADS
    return b"".join((_text(identity_head, identity),
                     _text(subject_head, subject) if subject is not None else b"",
                     _text(source_head, source)))


def _stream_bytes(stream_id: int) -> bytes:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"StreamId {stream_id} out of range")
    return _STREAM.pack(stream_id, 0)


def request_frame(stream_id: int, caller: bytes, message: bytes) -> bytes:
    """The REQUEST frame carrying ``message`` on ``stream_id`` (1 to 2**31 - 1) for the
    caller whose :func:`caller_fields` are ``caller``."""
    size = len(message)
    pad = -size & 7
    body = 32 + len(caller) + 8 + size + pad
    return b"".join((_HEAD.pack(_FRAME_HEAD, body), _REQUEST_START, _stream_bytes(stream_id),
                     caller, _HEAD.pack(_MESSAGE_HEAD, size), message, _PAD[:pad]))


def response_frame(stream_id: int, message: bytes) -> bytes:
    """The RESPONSE frame carrying ``message`` on ``stream_id`` (1 to 2**31 - 1)."""
    size = len(message)
    pad = -size & 7
    return b"".join((_HEAD.pack(_FRAME_HEAD, 40 + size + pad), _RESPONSE_START,
                     _stream_bytes(stream_id), _HEAD.pack(_MESSAGE_HEAD, size), message,
                     _PAD[:pad]))


def _stream_of(frame: bytes, minimum: int, start: bytes) -> int | None:
    """The stream id of a frame at least ``minimum`` bytes long, whose LinkFrame header
    covers it exactly and whose FrameType and StreamId head are ``start``; else None."""
    size = len(frame)
    if size < minimum or frame[8:_STREAM_AT] != start:
        return None
    head, length = _HEAD.unpack_from(frame, 0)
    if head != _FRAME_HEAD or length + 8 != size:
        return None
    stream_id, padding = _STREAM.unpack_from(frame, _STREAM_AT)
    if padding or stream_id <= 0:
        return None
    return stream_id  # type: ignore[no-any-return]


def read_response(frame: bytes) -> tuple[int, bytes] | None:
    """``(stream id, KMIP message)`` of a RESPONSE frame of FrameType, StreamId (non-zero)
    and KmipMessage alone, each well formed, as :func:`response_frame` writes it; None for
    any other bytes."""
    size = len(frame)
    stream_id = _stream_of(frame, _RESPONSE_MESSAGE_AT, _RESPONSE_START)
    if stream_id is None:
        return None
    head, length = _HEAD.unpack_from(frame, _STREAM_AT + 8)
    end = _RESPONSE_MESSAGE_AT + length
    if head != _MESSAGE_HEAD or end + (-length & 7) != size \
            or frame[end:] != _PAD[:size - end]:
        return None
    return stream_id, frame[_RESPONSE_MESSAGE_AT:end]


def split_request(frame: bytes) -> tuple[int, bytes, bytes] | None:
    """``(stream id, caller fields, KMIP message)`` of a REQUEST frame laid out as
    :func:`request_frame` writes it: FrameType, StreamId (non-zero), the items
    CallerIdentity, [CallerSubject] and CallerSource (returned as their bytes, unread:
    :func:`read_caller`) and KmipMessage, in that order, with nothing else; None for any
    other bytes."""
    size = len(frame)
    stream_id = _stream_of(frame, 40, _REQUEST_START)
    if stream_id is None:
        return None
    pos = 40
    for expected in _FIELD_HEADS:
        if pos + 8 > size:
            return None
        head, length = _HEAD.unpack_from(frame, pos)
        if head != expected:
            if expected == _FIELD_HEADS[1]:  # CallerSubject is optional
                continue
            return None
        pos += 8 + ((length + 7) & ~7)
    if pos + 8 > size:
        return None
    head, length = _HEAD.unpack_from(frame, pos)
    end = pos + 8 + length
    if head != _MESSAGE_HEAD or end + (-length & 7) != size or frame[end:] != _PAD[:size - end]:
        return None
    return stream_id, frame[40:pos], frame[pos + 8:end]  # type: ignore[return-value]


def read_caller(fields: bytes) -> CallerFields | None:
    """What the caller fields :func:`split_request` found say, each item well formed (its
    padding zero, its text valid UTF-8); None otherwise."""
    size = len(fields)
    pos = 0
    texts: list[str | None] = []
    for expected in _FIELD_HEADS:
        if pos + 8 > size:
            return None
        head, length = _HEAD.unpack_from(fields, pos)
        if head != expected:
            if expected == _FIELD_HEADS[1]:  # CallerSubject is optional
                texts.append(None)
                continue
            return None
        end = pos + 8 + length
        after = pos + 8 + ((length + 7) & ~7)
        if after > size or fields[end:after] != _PAD[:after - end]:
            return None
        try:
            texts.append(fields[pos + 8:end].decode())
        except UnicodeDecodeError:
            return None
        pos = after
    if pos != size:
        return None
    identity, subject, source = texts
    return identity, subject, source  # type: ignore[return-value]


def read_request(frame: bytes) -> ForwardedRequest | None:
    """The fields of a REQUEST frame of FrameType, StreamId (non-zero), CallerIdentity,
    [CallerSubject], CallerSource and KmipMessage alone, each well formed, as
    :func:`request_frame` writes it; None for any other bytes."""
    split = split_request(frame)
    if split is None:
        return None
    stream_id, fields, message = split
    caller = read_caller(fields)
    if caller is None:
        return None
    return (stream_id, *caller, message)
