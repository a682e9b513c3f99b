"""Link frames and their TTLV encoding (docs/link-protocol.md §2). Pure: no I/O.

Every frame is one ``LinkFrame`` Structure. :class:`Frame` is the whole model: a frame type
and the optional fields the type uses. :func:`encode_frame` and :func:`decode_frame` are exact
inverses for every frame :func:`decode_frame` accepts; anything else raises
:class:`FrameError`, the one error of this module.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from kcm.l4.service_key import ServiceKey
from kcm.ttlv import Item, ItemType, TtlvError, decode, decode_item, encode

#: The link version this end speaks: 2 is version 1 with CANCEL, 3 adds USAGE_REPORT, 4 adds
#: VERSION and DRAIN, 5 the tombstones of a ServiceKey, 6 the ``redacted`` event kind and the
#: VIEW frame, 7 the ORIGIN frame, 8 the KeysDigest of a conditional fetch. A core names its
#: version in WELCOME, and a gateway sends a frame (or field) only to a core whose version
#: has it; a gateway names its own in VERSION (to a core of version 4 or later), and a core
#: sends DRAIN only to a gateway that named 4 or later, a ServiceKey's tombstones only to
#: one that named 5 or later, VIEW only to one that named 6 or later, ORIGIN only to one
#: that named 7 or later, and an "unchanged" SERVICE_KEYS only to one that named 8 or later;
#: 9 the FETCH_TOMBSTONES and TOMBSTONES frames (a version's tombstones in pages), 10 the
#: CRLS frame (the core's CRLs, sent only to a gateway that named 10 or later).
LINK_VERSION = 10
#: The version a gateway's HELLO names: the first, which every core takes (a version-1 core
#: refuses any other with GOAWAY), so a gateway links to a core of any release and learns
#: the core's own version from WELCOME.
HELLO_VERSION = 1
#: The first link version with the CANCEL frame.
CANCEL_VERSION = 2
#: The first link version with the USAGE_REPORT frame.
USAGE_VERSION = 3
#: The first link version with the VERSION and DRAIN frames.
DRAIN_VERSION = 4
#: The first link version whose ServiceKey carries its tombstones (TombstoneCount, TokenId*).
TOMBSTONES_VERSION = 5
#: The first link version with the ``redacted`` event kind and the VIEW frame.
VIEW_VERSION = 6
#: The first link version with the ORIGIN frame (the core's database: its deployment id and
#: restore generation), which a gateway of that version waits for before it counts itself
#: welcomed.
ORIGIN_VERSION = 7
#: The first link version with conditional fetches: a FETCH_SERVICE_KEY carrying the
#: KeysDigest of what the gateway holds, answered by a SERVICE_KEYS of that digest alone
#: when the full answer would carry exactly that (:mod:`kcm.link.keys_digest`).
REFRESH_VERSION = 8
#: The first link version with paged tombstones: FETCH_TOMBSTONES, answered TOMBSTONES (a
#: version sent without its tombstones is then asked for them, a page at a time).
PAGES_VERSION = 9
#: The first link version with the CRLS frame: the CRLs of the core's ``tls.crl``, which a
#: gateway checks its clients' certificates against besides its own.
CRLS_VERSION = 10
#: The largest CRLS frame: a core sends none larger (it logs why), and a gateway takes one
#: up to this size whatever its ``limits.max_message_size`` (its other frames' limit).
MAX_CRLS_FRAME_SIZE = 8 << 20
#: Usage entries one USAGE_REPORT carries at most (a longer report is sent as several).
MAX_USAGE_ENTRIES = 1000
#: TokenIds one SERVICE_KEYS carries at most, over all its ServiceKeys (40 bytes each: well
#: inside FRAME_OVERHEAD, so they never make the frame too large for a gateway of any
#: ``max_message_size``). A version whose tombstones do not all fit is sent without them.
MAX_SENT_TOMBSTONES = 1000

#: Room a frame takes beside the one KMIP message it may carry: the LinkFrame, FrameType,
#: StreamId and KmipMessage headers (56 bytes) and, in a REQUEST, the caller's identity,
#: subject and source (a SPIFFE ID is at most 2 KiB; a subject is a certificate's).
FRAME_OVERHEAD = 64 << 10


def frame_size_limit(max_message_size: int) -> int:
    """The largest frame an end of the link sends or accepts, given that end's
    ``limits.max_message_size``: a whole KMIP message of that size plus
    :data:`FRAME_OVERHEAD`. An answer the core may send always fits its frame."""
    return max_message_size + FRAME_OVERHEAD


#: The frame size limit at the default maximum message size (1 MiB).
DEFAULT_MAX_FRAME_SIZE = frame_size_limit(1 << 20)
#: The first bytes of an encoded frame, which name its type and stream: the LinkFrame
#: header, then FrameType and StreamId (16 bytes each), the order :func:`encode_frame` writes.
FRAME_HEAD_SIZE = 40
_MAX_DEPTH = 4  # LinkFrame > ServiceKey / EventPayload / Usage > field
#: The largest StreamId (docs/link-protocol.md: unsigned 31-bit; 0 = none).
MAX_STREAM_ID = (1 << 31) - 1


class Tag(enum.IntEnum):
    """The link's TTLV tags (extension range 0x54B0xx, plus four of KMIP's own)."""

    LINK_FRAME = 0x54B001
    FRAME_TYPE = 0x54B002
    STREAM_ID = 0x54B003
    LINK_VERSION = 0x54B004
    PEER_NAME = 0x54B005
    EVENT_SEQUENCE = 0x54B006
    KMIP_MESSAGE = 0x54B007
    CALLER_IDENTITY = 0x54B008
    CALLER_SUBJECT = 0x54B009
    CALLER_SOURCE = 0x54B00A
    TENANT = 0x54B00B
    SERVICE = 0x54B00C
    SERVICE_KEY = 0x54B00D
    KEY_VERSION = 0x54B00E
    EVENT_KIND = 0x54B00F
    EVENT_PAYLOAD = 0x54B010
    ERROR_MESSAGE = 0x54B011
    HEARTBEAT_INTERVAL = 0x54B012
    TOKEN_ID = 0x54B013
    POLICY = 0x54B014
    USAGE = 0x54B015
    USAGE_COUNT = 0x54B016
    TOMBSTONE_COUNT = 0x54B017
    VIEW_DIGEST = 0x54B018
    DEPLOYMENT = 0x54B019
    RESTORE_GENERATION = 0x54B01A
    KEYS_DIGEST = 0x54B01B
    MORE_TOMBSTONES = 0x54B01C
    CRL = 0x54B01D
    KEY_MATERIAL = 0x420043
    RESULT_REASON = 0x42007E
    STATE = 0x42008D
    UNIQUE_IDENTIFIER = 0x420094


class FrameType(enum.IntEnum):
    """FrameType values."""

    HELLO = 1
    WELCOME = 2
    REQUEST = 3
    RESPONSE = 4
    FETCH_SERVICE_KEY = 5
    SERVICE_KEYS = 6
    EVENT = 7
    PING = 8
    PONG = 9
    GOAWAY = 10
    CANCEL = 11  # link version 2
    USAGE_REPORT = 12  # link version 3
    VERSION = 13  # link version 4
    DRAIN = 14  # link version 4
    VIEW = 15  # link version 6
    ORIGIN = 16  # link version 7
    FETCH_TOMBSTONES = 17  # link version 9
    TOMBSTONES = 18  # link version 9
    CRLS = 19  # link version 10


#: KMIP's Response Message tag: what a KMIP server answers a link's HELLO with.
KMIP_RESPONSE_MESSAGE = 0x42007B
#: Why a link ends whose peer answered in KMIP (a gateway's ``core`` naming a KMIP port).
KMIP_ANSWERED = ("it answered in KMIP: that is a KMIP port, not a core's link port; set the "
                 "gateway's core to the core's link_listen port (5697 by default)")


class FrameError(ValueError):
    """Bytes that are not a valid link frame, or a frame that cannot be encoded."""


class FrameTooLarge(FrameError):
    """A frame over an end's size limit: ``size`` bytes of a ``frame_type`` frame
    (None: unknown) on ``stream_id`` (0: none), where at most ``limit`` go."""

    def __init__(self, frame_type: FrameType | None, stream_id: int, size: int,
                 limit: int) -> None:
        name = frame_type.name if frame_type is not None else "link"
        super().__init__(f"a {name} frame of {size} bytes exceeds the maximum of {limit}")
        self.frame_type = frame_type
        self.stream_id = stream_id
        self.size = size
        self.limit = limit


#: An event's payload: field name -> value (see :data:`PAYLOAD_FIELDS`).
Payload = dict[str, str | int]


@dataclass(slots=True)
class Frame:
    """One link frame. Which fields a type needs is :data:`REQUIRED`'s business."""

    type: FrameType
    stream_id: int = 0
    link_version: int | None = None
    peer_name: str | None = None
    sequence: int | None = None
    message: bytes | None = None
    caller_identity: str | None = None
    caller_subject: str | None = None
    caller_source: str | None = None
    tenant: str | None = None
    service: str | None = None
    unique_identifier: str | None = None
    service_keys: list[ServiceKey] = field(default_factory=list)
    kind: str | None = None  # an EVENT's kind: a kcm.link.events.EventKind value
    payload: Payload | None = None
    error: str | None = None
    result_reason: int | None = None
    heartbeat_interval: int | None = None
    policy: str | None = None
    #: A USAGE_REPORT's (L3 uid, encryptions since the last report) entries.
    usage: list[tuple[str, int]] = field(default_factory=list)
    #: A VIEW's digest of what the core sends this gateway (its scope).
    view: bytes | None = None
    #: An ORIGIN's deployment id and restore generation (the core's database).
    deployment: str | None = None
    restore_generation: int | None = None
    #: A FETCH_SERVICE_KEY's digest of what the gateway holds of what it asks for, or a
    #: SERVICE_KEYS's that says it is unchanged (link version 8; :mod:`kcm.link.keys_digest`).
    keys_digest: bytes | None = None
    #: A FETCH_TOMBSTONES's cursor: the last TokenId of the page before (None: the first
    #: page; link version 9). Sent as a TokenId.
    after: str | None = None
    #: A TOMBSTONES's TokenIds, in increasing order (at most MAX_SENT_TOMBSTONES).
    token_ids: list[str] = field(default_factory=list)
    #: A TOMBSTONES's MoreTombstones: whether pages follow this one (None: absent, false).
    more: bool | None = None
    #: A CRLS's CRLs, each DER (link version 10).
    crls: list[bytes] = field(default_factory=list)


# (attribute, tag, type) of every scalar field of a LinkFrame, in wire order.
_FIELDS: tuple[tuple[str, int, ItemType], ...] = (
    ("link_version", Tag.LINK_VERSION, ItemType.INTEGER),
    ("peer_name", Tag.PEER_NAME, ItemType.TEXT_STRING),
    ("sequence", Tag.EVENT_SEQUENCE, ItemType.LONG_INTEGER),
    ("heartbeat_interval", Tag.HEARTBEAT_INTERVAL, ItemType.INTERVAL),
    ("policy", Tag.POLICY, ItemType.TEXT_STRING),
    ("caller_identity", Tag.CALLER_IDENTITY, ItemType.TEXT_STRING),
    ("caller_subject", Tag.CALLER_SUBJECT, ItemType.TEXT_STRING),
    ("caller_source", Tag.CALLER_SOURCE, ItemType.TEXT_STRING),
    ("tenant", Tag.TENANT, ItemType.TEXT_STRING),
    ("service", Tag.SERVICE, ItemType.TEXT_STRING),
    ("unique_identifier", Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING),
    ("kind", Tag.EVENT_KIND, ItemType.TEXT_STRING),
    ("error", Tag.ERROR_MESSAGE, ItemType.TEXT_STRING),
    ("result_reason", Tag.RESULT_REASON, ItemType.ENUMERATION),
    ("message", Tag.KMIP_MESSAGE, ItemType.BYTE_STRING),
    ("view", Tag.VIEW_DIGEST, ItemType.BYTE_STRING),
    ("deployment", Tag.DEPLOYMENT, ItemType.TEXT_STRING),
    ("restore_generation", Tag.RESTORE_GENERATION, ItemType.INTEGER),
    ("keys_digest", Tag.KEYS_DIGEST, ItemType.BYTE_STRING),
)
_FIELD_BY_TAG = {tag: (name, item_type) for name, tag, item_type in _FIELDS}

#: Fields a frame of each type must carry (StreamId > 0 where listed).
REQUIRED: dict[FrameType, tuple[str, ...]] = {
    FrameType.HELLO: ("link_version", "peer_name", "sequence"),
    FrameType.WELCOME: ("link_version", "peer_name", "sequence", "heartbeat_interval"),
    FrameType.REQUEST: ("stream_id", "caller_identity", "caller_source", "message"),
    FrameType.RESPONSE: ("stream_id", "message"),
    FrameType.FETCH_SERVICE_KEY: ("stream_id", "caller_identity", "tenant", "service"),
    FrameType.SERVICE_KEYS: ("stream_id",),
    FrameType.EVENT: ("sequence", "kind", "payload"),
    FrameType.PING: (),
    FrameType.PONG: (),
    FrameType.GOAWAY: (),
    FrameType.CANCEL: ("stream_id",),
    FrameType.USAGE_REPORT: ("usage",),
    FrameType.VERSION: ("link_version",),
    FrameType.DRAIN: (),
    FrameType.VIEW: ("view",),
    FrameType.ORIGIN: ("deployment", "restore_generation"),
    FrameType.FETCH_TOMBSTONES: ("stream_id", "caller_identity", "unique_identifier"),
    FrameType.TOMBSTONES: ("stream_id",),
    FrameType.CRLS: (),
}

#: The fields a frame of these types may carry besides FrameType and StreamId (its row of
#: the table, docs/link-protocol.md §2); any other is refused, as an unknown one is. A
#: field a later link version adds to them is sent only to a peer that named that version
#: (as KeysDigest is, version 8), so strictness never breaks an older peer.
ALLOWED: dict[FrameType, frozenset[str]] = {
    FrameType.FETCH_SERVICE_KEY: frozenset({"caller_identity", "caller_subject", "tenant",
                                            "service", "unique_identifier", "keys_digest"}),
    FrameType.FETCH_TOMBSTONES: frozenset({"caller_identity", "caller_subject",
                                           "unique_identifier", "after"}),
    FrameType.CRLS: frozenset({"crls"}),
}

#: EventPayload fields: name -> (tag, type).
PAYLOAD_FIELDS: dict[str, tuple[int, ItemType]] = {
    "unique_identifier": (Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING),
    "service": (Tag.SERVICE, ItemType.TEXT_STRING),
    "key_version": (Tag.KEY_VERSION, ItemType.INTEGER),
    "state": (Tag.STATE, ItemType.ENUMERATION),
    "token_id": (Tag.TOKEN_ID, ItemType.TEXT_STRING),
    "policy": (Tag.POLICY, ItemType.TEXT_STRING),
}
_PAYLOAD_BY_TAG = {tag: (name, item_type) for name, (tag, item_type) in PAYLOAD_FIELDS.items()}

_KEY_FIELDS: tuple[tuple[str, int, ItemType], ...] = (
    ("uid", Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING),
    ("version", Tag.KEY_VERSION, ItemType.INTEGER),
    ("state", Tag.STATE, ItemType.ENUMERATION),
    ("key", Tag.KEY_MATERIAL, ItemType.BYTE_STRING),
    ("tenant", Tag.TENANT, ItemType.TEXT_STRING),
    ("service", Tag.SERVICE, ItemType.TEXT_STRING),
)
_KEY_FIELD_BY_TAG = {tag: (name, item_type) for name, tag, item_type in _KEY_FIELDS}


# --- encoding --------------------------------------------------------------------------------


def encode_frame(frame: Frame) -> bytes:
    """The TTLV bytes of ``frame``; FrameError if a field has a value of the wrong kind."""
    if not frame.service_keys and frame.payload is None and not frame.usage \
            and not frame.token_ids and frame.after is None and frame.more is None \
            and not frame.crls:
        wire = _encode_scalar_frame(frame)
        if wire is not None:
            return wire
    try:
        return encode(frame_item(frame))
    except TtlvError as e:
        raise FrameError(f"cannot encode {frame.type.name}: {e.reason}") from None


# Every request and answer crosses the link as a frame of scalar fields only; those are
# written and read here straight with struct (no Item tree), and the general codec above and
# below stays the reference: the two give the same bytes and the same frames (a property
# test holds them to it, tests/unit/test_link_frames.py).
_HEAD = struct.Struct(">II")
_U32_PAD = struct.Struct(">II")
_I32_PAD = struct.Struct(">iI")
_I64 = struct.Struct(">q")
_FRAME_HEAD = Tag.LINK_FRAME << 8 | ItemType.STRUCTURE
_TYPE_HEAD = Tag.FRAME_TYPE << 8 | ItemType.ENUMERATION
_STREAM_HEAD = Tag.STREAM_ID << 8 | ItemType.INTEGER
_SCALAR_FIELDS = tuple((name, tag << 8 | item_type, item_type) for name, tag, item_type in _FIELDS)
_SCALAR_BY_HEAD = {head: (name, item_type) for name, head, item_type in _SCALAR_FIELDS}
_PAD = bytes(8)


def _encode_scalar_frame(frame: Frame) -> bytes | None:
    """``frame`` (no service keys, no payload) as TTLV; None to leave a value of the wrong
    kind to the general encoder (which raises FrameError for it)."""
    parts = [_HEAD.pack(_TYPE_HEAD, 4), _U32_PAD.pack(int(frame.type), 0)]
    stream_id = frame.stream_id
    if stream_id:
        if type(stream_id) is not int or not -(1 << 31) <= stream_id < 1 << 31:
            return None
        parts += (_HEAD.pack(_STREAM_HEAD, 4), _I32_PAD.pack(stream_id, 0))
    for name, head, item_type in _SCALAR_FIELDS:
        value = getattr(frame, name)
        if value is None:
            continue
        if item_type is ItemType.TEXT_STRING or item_type is ItemType.BYTE_STRING:
            if item_type is ItemType.TEXT_STRING:
                if type(value) is not str:
                    return None
                try:
                    value = value.encode()
                except UnicodeEncodeError:
                    return None
            elif type(value) is not bytes:
                return None
            parts += (_HEAD.pack(head, len(value)), value, _PAD[:-len(value) & 7])
        elif type(value) is not int:
            return None
        elif item_type is ItemType.LONG_INTEGER:
            if not -(1 << 63) <= value < 1 << 63:
                return None
            parts += (_HEAD.pack(head, 8), _I64.pack(value))
        elif item_type is ItemType.INTEGER:
            if not -(1 << 31) <= value < 1 << 31:
                return None
            parts += (_HEAD.pack(head, 4), _I32_PAD.pack(value, 0))
        else:  # Enumeration, Interval: unsigned 32 bits
            if not 0 <= value < 1 << 32:
                return None
            parts += (_HEAD.pack(head, 4), _U32_PAD.pack(value, 0))
    body = b"".join(parts)
    return _HEAD.pack(_FRAME_HEAD, len(body)) + body


def frame_item(frame: Frame) -> Item:
    """``frame`` as a LinkFrame Item tree."""
    children = [Item(Tag.FRAME_TYPE, ItemType.ENUMERATION, int(frame.type))]
    if frame.stream_id:
        children.append(Item(Tag.STREAM_ID, ItemType.INTEGER, frame.stream_id))
    for name, tag, item_type in _FIELDS:
        value = getattr(frame, name)
        if value is not None:
            children.append(Item(tag, item_type, value))
    children.extend(service_key_item(key) for key in frame.service_keys)
    children.extend(Item(Tag.USAGE, ItemType.STRUCTURE, [
        Item(Tag.UNIQUE_IDENTIFIER, ItemType.TEXT_STRING, uid),
        Item(Tag.USAGE_COUNT, ItemType.LONG_INTEGER, count)]) for uid, count in frame.usage)
    if frame.payload is not None:
        children.append(payload_item(frame.payload))
    if frame.after is not None:
        children.append(Item(Tag.TOKEN_ID, ItemType.TEXT_STRING, frame.after))
    children.extend(Item(Tag.TOKEN_ID, ItemType.TEXT_STRING, token_id)
                    for token_id in frame.token_ids)
    if frame.more is not None:
        children.append(Item(Tag.MORE_TOMBSTONES, ItemType.BOOLEAN, frame.more))
    children.extend(Item(Tag.CRL, ItemType.BYTE_STRING, crl) for crl in frame.crls)
    return Item(Tag.LINK_FRAME, ItemType.STRUCTURE, children)


def payload_item(payload: Payload) -> Item:
    """An EventPayload Structure; FrameError for an unknown field."""
    children = []
    for name, value in payload.items():
        spec = PAYLOAD_FIELDS.get(name)
        if spec is None:
            raise FrameError(f"unknown event payload field {name!r}")
        children.append(Item(spec[0], spec[1], value))
    return Item(Tag.EVENT_PAYLOAD, ItemType.STRUCTURE, children)


def encode_payload(payload: Payload) -> bytes:
    """The TTLV bytes of an EventPayload (what the core's outbox stores)."""
    try:
        return encode(payload_item(payload))
    except TtlvError as e:
        raise FrameError(f"cannot encode event payload: {e.reason}") from None


def service_key_item(key: ServiceKey) -> Item:
    """One ServiceKey Structure, as SERVICE_KEYS carries it."""
    fields = [Item(tag, item_type, getattr(key, name)) for name, tag, item_type in _KEY_FIELDS]
    if key.tombstones is not None:  # all of them, after how many (link version 5)
        fields.append(Item(Tag.TOMBSTONE_COUNT, ItemType.INTEGER, len(key.tombstones)))
        fields.extend(Item(Tag.TOKEN_ID, ItemType.TEXT_STRING, token_id)
                      for token_id in sorted(key.tombstones))
    return Item(Tag.SERVICE_KEY, ItemType.STRUCTURE, fields)


# --- decoding --------------------------------------------------------------------------------


_LINK_FRAME_HEAD = (Tag.LINK_FRAME << 8 | ItemType.STRUCTURE).to_bytes(4, "big")


def peek_frame_head(head: bytes) -> tuple[FrameType | None, int]:
    """The FrameType and StreamId of a frame read from its first :data:`FRAME_HEAD_SIZE`
    bytes alone (a frame too large to be read whole): None for a type that cannot be read
    there, 0 for a stream that cannot."""
    if head[:4] != _LINK_FRAME_HEAD:
        return None, 0
    try:
        type_item, end = decode_item(head, 8, max_depth=0)
        if type_item.tag != Tag.FRAME_TYPE or type_item.type is not ItemType.ENUMERATION:
            return None, 0
        frame_type = FrameType(type_item.value)
    except (TtlvError, ValueError):
        return None, 0
    try:
        stream_item, _ = decode_item(head, end, max_depth=0)
    except TtlvError:
        return frame_type, 0
    if stream_item.tag != Tag.STREAM_ID or stream_item.type is not ItemType.INTEGER \
            or not 0 < stream_item.value <= MAX_STREAM_ID:
        return frame_type, 0
    return frame_type, stream_item.value


def decode_frame(data: bytes, *, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> Frame:
    """Decode one whole frame; FrameError for bad TTLV, unknown fields, missing fields."""
    if len(data) <= max_size:
        frame = _decode_scalar_frame(data)
        if frame is not None:
            return frame
    return decode_frame_tree(data, max_size=max_size)


def decode_frame_tree(data: bytes, *, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> Frame:
    """:func:`decode_frame` by way of the whole Item tree: the reference the scalar-frame
    reader is held to."""
    try:
        item = decode(data, max_depth=_MAX_DEPTH, max_size=max_size)
    except TtlvError as e:
        raise FrameError(f"malformed frame: {e}") from None
    if item.tag != Tag.LINK_FRAME or item.type is not ItemType.STRUCTURE:
        if item.tag == KMIP_RESPONSE_MESSAGE:
            raise FrameError(KMIP_ANSWERED)
        raise FrameError(f"not a LinkFrame: tag 0x{item.tag:06X}")
    return _frame_from(item)


def _decode_scalar_frame(data: bytes) -> Frame | None:
    """The frame ``data`` holds if it is a well-formed frame of scalar fields only, in the
    order :func:`encode_frame` writes them, each at most once, with every field its type
    requires; None for anything else, which the general decoder then reads (and refuses
    with the precise reason where it must)."""
    size = len(data)
    if size < 24:
        return None
    head, length = _HEAD.unpack_from(data, 0)
    if head != _FRAME_HEAD or 8 + length != size:
        return None
    head, length = _HEAD.unpack_from(data, 8)
    frame_type, padding = _U32_PAD.unpack_from(data, 16)
    if head != _TYPE_HEAD or length != 4 or padding:
        return None
    try:
        frame = Frame(FrameType(frame_type))
    except ValueError:
        return None
    pos = 24
    if pos + 16 <= size and _HEAD.unpack_from(data, pos) == (_STREAM_HEAD, 4):
        stream_id, padding = _I32_PAD.unpack_from(data, pos + 8)
        if padding or not 0 <= stream_id <= MAX_STREAM_ID:
            return None
        frame.stream_id = stream_id
        pos += 16
    index = 0
    fields = _SCALAR_FIELDS
    while pos < size:
        if pos + 8 > size:
            return None
        head, length = _HEAD.unpack_from(data, pos)
        while index < len(fields) and fields[index][1] != head:
            index += 1
        if index == len(fields):
            return None  # unknown, repeated, out of order, or not scalar
        name, _, item_type = fields[index]
        index += 1
        value_at = pos + 8
        if item_type is ItemType.TEXT_STRING or item_type is ItemType.BYTE_STRING:
            end = value_at + length
            pos = value_at + ((length + 7) & ~7)
            if pos > size or data[end:pos] != _PAD[:pos - end]:
                return None
            if item_type is ItemType.TEXT_STRING:
                try:
                    value: object = data[value_at:end].decode()
                except UnicodeDecodeError:
                    return None
            else:
                value = data[value_at:end]
        else:
            pos = value_at + 8
            if pos > size:
                return None
            if item_type is ItemType.LONG_INTEGER:
                if length != 8:
                    return None
                value = _I64.unpack_from(data, value_at)[0]
            else:
                if length != 4:
                    return None
                value, padding = (_I32_PAD if item_type is ItemType.INTEGER
                                  else _U32_PAD).unpack_from(data, value_at)
                if padding:
                    return None
        setattr(frame, name, value)
    for name in REQUIRED[frame.type]:
        value = getattr(frame, name)
        if value is None or value == [] or (name == "stream_id" and value == 0):
            return None
    if frame.keys_digest is not None and _digest_misplaced(frame) is not None:
        return None
    if frame.type is FrameType.TOMBSTONES and _page_misplaced(frame) is not None:
        return None
    if frame.type in ALLOWED and _fetch_misplaced(frame) is not None:
        return None
    return frame


def _frame_from(item: Item) -> Frame:
    children = item.value
    if not children or children[0].tag != Tag.FRAME_TYPE \
            or children[0].type is not ItemType.ENUMERATION:
        raise FrameError("a LinkFrame starts with its FrameType")
    try:
        frame = Frame(FrameType(children[0].value))
    except ValueError:
        raise FrameError(f"unknown FrameType {children[0].value}") from None
    seen: set[int] = set()
    for child in children[1:]:
        tag = child.tag
        if tag == Tag.SERVICE_KEY:
            frame.service_keys.append(_service_key_from(child))
            continue
        if tag == Tag.USAGE:
            frame.usage.append(_usage_from(child))
            continue
        if tag == Tag.TOKEN_ID and frame.type is FrameType.TOMBSTONES:
            frame.token_ids.append(str(_checked(child, ItemType.TEXT_STRING)))
            continue
        if tag == Tag.CRL and frame.type is FrameType.CRLS:
            frame.crls.append(bytes(_checked(child, ItemType.BYTE_STRING)))  # type: ignore[arg-type]
            continue
        if tag in seen:
            raise FrameError(f"field 0x{tag:06X} appears twice")
        seen.add(tag)
        if tag == Tag.STREAM_ID:
            frame.stream_id = _checked(child, ItemType.INTEGER)
            if not 0 <= frame.stream_id <= MAX_STREAM_ID:
                raise FrameError(f"StreamId {frame.stream_id} out of range")
        elif tag == Tag.EVENT_PAYLOAD:
            frame.payload = decode_payload_item(child)
        elif tag == Tag.TOKEN_ID and frame.type is FrameType.FETCH_TOMBSTONES:
            frame.after = str(_checked(child, ItemType.TEXT_STRING))
        elif tag == Tag.MORE_TOMBSTONES and frame.type is FrameType.TOMBSTONES:
            frame.more = bool(_checked(child, ItemType.BOOLEAN))
        else:
            spec = _FIELD_BY_TAG.get(tag)
            if spec is None:
                raise FrameError(f"unknown field 0x{tag:06X} in a LinkFrame")
            setattr(frame, spec[0], _checked(child, spec[1]))
    for name in REQUIRED[frame.type]:
        value = getattr(frame, name)
        if value is None or value == [] or (name == "stream_id" and value == 0):
            raise FrameError(f"{frame.type.name} without {name}")
    if frame.usage and frame.type is not FrameType.USAGE_REPORT:
        raise FrameError(f"Usage in a {frame.type.name} frame")
    if frame.keys_digest is not None:
        misplaced = _digest_misplaced(frame)
        if misplaced is not None:
            raise FrameError(misplaced)
    if len(frame.usage) > MAX_USAGE_ENTRIES:
        raise FrameError(f"a USAGE_REPORT of more than {MAX_USAGE_ENTRIES} entries")
    if frame.type is FrameType.TOMBSTONES:
        misplaced = _page_misplaced(frame)
        if misplaced is not None:
            raise FrameError(misplaced)
    if frame.type in ALLOWED:
        misplaced = _fetch_misplaced(frame)
        if misplaced is not None:
            raise FrameError(misplaced)
    return frame


#: Every field of a :class:`Frame` but its type and stream, with the value it has when
#: absent.
_ABSENT: tuple[tuple[str, object], ...] = (
    *((name, None) for name, _, _ in _FIELDS),
    ("service_keys", []), ("payload", None), ("usage", []), ("after", None),
    ("token_ids", []), ("more", None), ("crls", []))
#: The fields each type of :data:`ALLOWED` may not carry.
_NOT_ALLOWED: dict[FrameType, tuple[tuple[str, object], ...]] = {
    frame_type: tuple(entry for entry in _ABSENT if entry[0] not in allowed)
    for frame_type, allowed in ALLOWED.items()}
#: A TokenId: 32 lowercase hex digits (docs/link-protocol.md §3).
_TOKEN_ID_LENGTH = 32
_HEX_DIGITS = frozenset("0123456789abcdef")


def _fetch_misplaced(frame: Frame) -> str | None:
    """Why a FETCH_SERVICE_KEY or FETCH_TOMBSTONES breaks the rules (None: it does not): a
    field outside its row of the table; in a FETCH_TOMBSTONES, a cursor that is not a TokenId
    (the last one of the page before, as the core sent it). (An identifier or a service is
    answered by the core, as a missing one where none has it: docs/link-protocol.md §2.)"""
    for name, absent in _NOT_ALLOWED[frame.type]:
        if getattr(frame, name) != absent:
            return f"a {frame.type.name} carries no {name}"
    if frame.type is FrameType.FETCH_TOMBSTONES:
        after = frame.after
        if after is not None and (len(after) != _TOKEN_ID_LENGTH
                                  or not _HEX_DIGITS.issuperset(after)):
            return "a FETCH_TOMBSTONES's cursor is not a TokenId (32 lowercase hex digits)"
    return None


def _page_misplaced(frame: Frame) -> str | None:
    """Why a TOMBSTONES breaks the rules (None: it does not): at most
    :data:`MAX_SENT_TOMBSTONES` TokenIds, each greater than the one before, at least one
    when MoreTombstones is true (the next page is asked after the last: one without would be
    asked again and again), and either a page (TokenIds, MoreTombstones) or a refusal
    (ErrorMessage and ResultReason), never both."""
    if len(frame.token_ids) > MAX_SENT_TOMBSTONES:
        return f"a TOMBSTONES of more than {MAX_SENT_TOMBSTONES} TokenIds"
    if frame.more and not frame.token_ids:
        return "a TOMBSTONES with MoreTombstones true carries TokenIds"
    if any(a >= b for a, b in zip(frame.token_ids, frame.token_ids[1:], strict=False)):
        return "a TOMBSTONES's TokenIds are not in increasing order"
    refused = frame.error is not None or frame.result_reason is not None
    if refused and (frame.token_ids or frame.more is not None
                    or frame.error is None or frame.result_reason is None):
        return "a refused TOMBSTONES carries ErrorMessage and ResultReason, and nothing else"
    if frame.tenant is not None or frame.service is not None or frame.keys_digest is not None:
        return "a TOMBSTONES carries TokenIds and MoreTombstones, or a refusal"
    return None


#: The size of a KeysDigest (:mod:`kcm.link.keys_digest`: SHA-256).
KEYS_DIGEST_SIZE = 32


def _digest_misplaced(frame: Frame) -> str | None:
    """Why a frame's KeysDigest breaks the rules (None: it does not): only in a
    FETCH_SERVICE_KEY or a SERVICE_KEYS, of :data:`KEYS_DIGEST_SIZE` bytes, and in a
    SERVICE_KEYS alone (no ServiceKey, no refusal, no Tenant or Service: it says
    "unchanged")."""
    if frame.type not in (FrameType.FETCH_SERVICE_KEY, FrameType.SERVICE_KEYS):
        return f"KeysDigest in a {frame.type.name} frame"
    if len(frame.keys_digest or b"") != KEYS_DIGEST_SIZE:
        return f"a KeysDigest of {len(frame.keys_digest or b'')} bytes"
    if frame.type is FrameType.SERVICE_KEYS and (
            frame.service_keys or frame.error is not None or frame.result_reason is not None
            or frame.tenant is not None or frame.service is not None):
        return "a SERVICE_KEYS with a KeysDigest carries nothing else"
    return None


def _usage_from(item: Item) -> tuple[str, int]:
    """One Usage Structure: (UniqueIdentifier, UsageCount >= 0), in that order."""
    if item.type is not ItemType.STRUCTURE or [child.tag for child in item.value] != [
            Tag.UNIQUE_IDENTIFIER, Tag.USAGE_COUNT]:
        raise FrameError("a Usage is a Structure of UniqueIdentifier and UsageCount")
    uid = _checked(item.value[0], ItemType.TEXT_STRING)
    count = _checked(item.value[1], ItemType.LONG_INTEGER)
    if int(count) < 0:  # type: ignore[call-overload]
        raise FrameError("a negative UsageCount")
    return str(uid), int(count)  # type: ignore[call-overload]


def decode_payload_item(item: Item) -> Payload:
    """An EventPayload Structure as a dict; FrameError for unknown or repeated fields."""
    if item.type is not ItemType.STRUCTURE:
        raise FrameError("EventPayload must be a Structure")
    payload: Payload = {}
    for child in item.value:
        spec = _PAYLOAD_BY_TAG.get(child.tag)
        if spec is None:
            raise FrameError(f"unknown field 0x{child.tag:06X} in an EventPayload")
        if spec[0] in payload:
            raise FrameError(f"EventPayload field {spec[0]} appears twice")
        payload[spec[0]] = _checked(child, spec[1])
    return payload


def decode_payload(data: bytes) -> Payload:
    """The dict of an EventPayload's TTLV bytes (as the outbox stores them)."""
    try:
        item = decode(data, max_depth=2)
    except TtlvError as e:
        raise FrameError(f"malformed event payload: {e}") from None
    if item.tag != Tag.EVENT_PAYLOAD:
        raise FrameError(f"not an EventPayload: tag 0x{item.tag:06X}")
    return decode_payload_item(item)


def _service_key_from(item: Item) -> ServiceKey:
    """One ServiceKey; its tombstones None when it has no TombstoneCount (a core of link
    version 4 or earlier, or too many to send: the gateway leaves its L4s to the core)."""
    if item.type is not ItemType.STRUCTURE:
        raise FrameError("ServiceKey must be a Structure")
    values: dict[str, object] = {}
    count: object = None
    token_ids: set[str] = set()
    for child in item.value:
        if child.tag == Tag.TOMBSTONE_COUNT and count is None:
            count = _checked(child, ItemType.INTEGER)
            continue
        if child.tag == Tag.TOKEN_ID and count is not None:
            token_id = str(_checked(child, ItemType.TEXT_STRING))
            if token_id in token_ids:
                raise FrameError("a TokenId appears twice in a ServiceKey")
            token_ids.add(token_id)
            continue
        spec = _KEY_FIELD_BY_TAG.get(child.tag)
        if spec is None or spec[0] in values:
            raise FrameError(f"unexpected field 0x{child.tag:06X} in a ServiceKey")
        values[spec[0]] = _checked(child, spec[1])
    missing = [name for name, _, _ in _KEY_FIELDS if name not in values]
    if missing:
        raise FrameError(f"ServiceKey without {', '.join(missing)}")
    if count is not None and count != len(token_ids):
        raise FrameError(f"a ServiceKey's TombstoneCount is {count}, with {len(token_ids)} "
                         "TokenIds")
    return ServiceKey(**values,  # type: ignore[arg-type]
                      tombstones=frozenset(token_ids) if count is not None else None)


def _checked(item: Item, expected: ItemType) -> object:
    if item.type is not expected:
        raise FrameError(f"field 0x{item.tag:06X} must be {expected.name}, not {item.type.name}")
    return item.value
