"""KMIP requests and fakes for kcm-gateway unit tests (test support)."""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet.defer import Deferred, fail, succeed

from kcm.gateway.link_client import LinkDown
from kcm.identity import Principal
from kcm.kmip.attributes import Attribute, Link
from kcm.kmip.enums import (
    BatchErrorContinuationOption,
    CryptographicAlgorithm,
    LinkType,
    ObjectType,
    Operation,
)
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestBatchItem,
    RequestHeader,
    RequestMessage,
    decode_response,
    encode_request,
)
from kcm.kmip.payloads.crypto import DecryptRequest, EncryptRequest
from kcm.kmip.payloads.lifecycle import ActivateRequest, CreateRequest, GetRequest
from kcm.kmip.payloads.service import LocateRequest
from kcm.kmip.tags import Tag
from kcm.ttlv import Item, ItemType, decode, encode

L3_UID = "l3-00000000-0000-4000-8000-000000000001"


def request(*items: RequestBatchItem, version: tuple[int, int] = (1, 4),
            continuation: int | None = None) -> bytes:
    """A Request Message of ``items``."""
    header = RequestHeader(protocol_version=ProtocolVersion.of(version),
                           batch_error_continuation_option=continuation,
                           batch_count=len(items))
    return encode(encode_request(RequestMessage(header, list(items))))


def item(operation: Operation, payload, batch_id: bytes | None = None) -> RequestBatchItem:
    return RequestBatchItem(operation=operation, request_payload=payload,
                            unique_batch_item_id=batch_id)


def _aes(extra: Sequence[Attribute]) -> list[Attribute]:
    return [Attribute.of(Tag.CRYPTOGRAPHIC_ALGORITHM, CryptographicAlgorithm.AES),
            Attribute.of(Tag.CRYPTOGRAPHIC_LENGTH, 256), *extra]


def create_l4(batch_id: bytes | None = None, *, via_link: str | None = None) -> RequestBatchItem:
    """Create of an L4: ``x-kcm-level = L4``, or a Parent Link to ``via_link``."""
    if via_link is not None:
        marker = Attribute.of(Tag.LINK, Link(link_type=LinkType.PARENT_LINK,
                                             linked_object_identifier=via_link))
    else:
        marker = Attribute.vendor("x", "kcm-level",
                                  Item(Tag.ATTRIBUTE_VALUE, ItemType.TEXT_STRING, "L4"))
    return item(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                attributes=_aes([marker])), batch_id)


def create_managed(batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.CREATE, CreateRequest(object_type=ObjectType.SYMMETRIC_KEY,
                                                attributes=_aes([])), batch_id)


def get(uid: str | None, batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.GET, GetRequest(unique_identifier=uid), batch_id)


def encrypt(uid: str | None, data: bytes = b"record", batch_id: bytes | None = None
            ) -> RequestBatchItem:
    return item(Operation.ENCRYPT, EncryptRequest(unique_identifier=uid, data=data), batch_id)


def decrypt(uid: str | None, data: bytes, batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.DECRYPT, DecryptRequest(unique_identifier=uid, data=data), batch_id)


def activate(uid: str | None, batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.ACTIVATE, ActivateRequest(unique_identifier=uid), batch_id)


def locate(batch_id: bytes | None = None) -> RequestBatchItem:
    return item(Operation.LOCATE, LocateRequest(), batch_id)


def response(wire: bytes):
    """The decoded Response Message."""
    return decode_response(decode(wire))


STOP = BatchErrorContinuationOption.STOP
CONTINUE = BatchErrorContinuationOption.CONTINUE
UNDO = BatchErrorContinuationOption.UNDO


class FakeLink:
    """A link to a core: records forwarded bytes and answers with ``answer(wire)``."""

    def __init__(self, answer=None) -> None:
        self.forwarded: list[tuple[bytes, Principal, str]] = []
        self.fetches: list[tuple[Principal, str, str, str | None]] = []
        self.connected = True
        self.down = False
        self.answer = answer or (lambda wire: wire)
        self.keys: dict[tuple[str, str] | str, list] = {}
        self.pending: list[Deferred] = []
        self.hold_fetches = False

    def forward(self, wire: bytes, caller: Principal, source: str) -> Deferred[bytes]:
        self.forwarded.append((wire, caller, source))
        if self.down:
            return fail(LinkDown("the link to the core is down"))
        return succeed(self.answer(wire))

    def fetch_service_keys(self, caller: Principal, tenant: str, service: str,
                           uid: str | None = None) -> Deferred[list]:
        self.fetches.append((caller, tenant, service, uid))
        if self.down:
            return fail(LinkDown("the link to the core is down"))
        if self.hold_fetches:
            d: Deferred[list] = Deferred()
            self.pending.append(d)
            return d
        keys = self.keys.get(uid) if uid else self.keys.get((tenant, service))
        return succeed(list(keys or []))
