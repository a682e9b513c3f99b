"""The typed model is lossless on every OASIS vector message.

(a) Each of the 520 TTLV hex messages of the KMIP 1.1 test-case text decodes to the
model and re-encodes byte for byte. (b) Each request and response of every XML test
case goes Item -> model -> Item with an equal tree. Every batch item of a modelled
operation that carries a payload must have gone through its typed payload class.
"""

from __future__ import annotations

from kcm.kmip.fields import Struct
from kcm.kmip.messages import decode_request, decode_response, encode_request, encode_response
from kcm.kmip.payloads import PAYLOADS
from kcm.kmip.tags import Tag
from kcm.ttlv.codec import decode, encode
from kcm.ttlv.types import Item
from tests.vectors import iter_v11_hex_messages, iter_vector_messages


class _Tally:
    """Counts messages and batch items, and collects failures with their location."""

    def __init__(self) -> None:
        self.messages = 0
        self.modelled = 0
        self.typed = 0
        self.failures: list[str] = []

    def round_trip(self, where: str, item: Item) -> Item | None:
        self.messages += 1
        try:
            if item.tag == Tag.REQUEST_MESSAGE:
                message = decode_request(item)
                payloads = [(b.operation, True, b.request_payload) for b in message.batch_items]
                out = encode_request(message)
            else:
                message = decode_response(item)
                payloads = [(b.operation, False, b.response_payload)
                            for b in message.batch_items]
                out = encode_response(message)
        except Exception as error:  # noqa: BLE001 - every failure is reported with its place
            self.failures.append(f"{where}: {type(error).__name__}: {error}")
            return None
        for operation, is_request, payload in payloads:
            if (operation, is_request) in PAYLOADS and payload is not None:
                self.modelled += 1
                if isinstance(payload, Struct):
                    self.typed += 1
                else:
                    self.failures.append(f"{where}: {operation!r} payload stayed raw")
        return out

    def report(self, label: str) -> None:
        print(f"\n{label}: {self.messages} messages checked; {self.modelled} batch items of "
              f"modelled operations, {self.typed} through typed payloads; "
              f"{len(self.failures)} failures")
        assert not self.failures, "\n".join(self.failures[:20])
        assert self.typed == self.modelled


def test_v11_hex_messages_round_trip_byte_exact():
    tally = _Tally()
    for line, data in iter_v11_hex_messages():
        out = tally.round_trip(f"line {line}", decode(data))
        if out is not None and encode(out) != data:
            tally.failures.append(f"line {line}: re-encoding differs")
    tally.report("KMIP 1.1 test-case text")
    assert tally.messages == 520
    assert tally.modelled > 400


def test_xml_vector_messages_round_trip_tree_equal():
    tally = _Tally()
    for path, index, item in iter_vector_messages():
        where = f"{path.parent.name}/{path.name} message {index}"
        out = tally.round_trip(where, item)
        if out is not None and out != item:
            tally.failures.append(f"{where}: re-encoded tree differs")
    tally.report("XML test cases")
    assert tally.messages > 5000
    assert tally.modelled > 4000
