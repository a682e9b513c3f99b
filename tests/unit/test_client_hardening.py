"""The SDK against a misbehaving server or careless use: answers for another request or
object are refused, a session shared by threads serializes its requests, a connection
given up is aborted, and a stream's kept AES-GCM object outlives the cache's zeroizing."""

from __future__ import annotations

import threading
import time

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import task
from twisted.internet.testing import StringTransport

from kcm.client.data_key_cache import DataKey
from kcm.client.errors import EnvelopeError, KmipClientError, KmipOperationFailed
from kcm.client.protocol import KmipClientProtocol
from kcm.client.sealer import material_of
from kcm.client.session import Session
from kcm.client.wire import result_of
from kcm.kmip.enums import Operation, ResultStatus
from kcm.kmip.messages import ResponseBatchItem
from kcm.kmip.objects import KeyBlock, KeyValue, SymmetricKey
from kcm.kmip.payloads import CreateResponse, GetResponse
from tests.unit.test_client_protocol import get


def test_an_answer_for_another_operation_is_refused() -> None:
    item = ResponseBatchItem(operation=Operation.CREATE, result_status=ResultStatus.SUCCESS,
                             response_payload=CreateResponse(object_type=2,
                                                             unique_identifier="x"))
    with pytest.raises(KmipClientError, match="answered CREATE to a request of GET"):
        result_of(Operation.GET, item)


def _get_answer(uid: str, material: bytes) -> GetResponse:
    return GetResponse(object_type=2, unique_identifier=uid, object=SymmetricKey(
        key_block=KeyBlock(key_format_type=1, key_value=KeyValue(key_material=material),
                           cryptographic_algorithm=3, cryptographic_length=8 * len(material))))


def test_a_get_answer_for_another_object_or_not_aes_256_is_no_data_key() -> None:
    assert material_of(_get_answer("l4.a", bytes(32)), "l4.a") == bytes(32)
    with pytest.raises(EnvelopeError, match="names another object"):
        material_of(_get_answer("l4.b", bytes(32)), "l4.a")
    with pytest.raises(EnvelopeError, match="not an AES-256 data key"):
        material_of(_get_answer("l4.a", bytes(16)), "l4.a")


def test_a_kept_aes_gcm_object_still_holds_the_key_after_the_cache_zeroizes_it() -> None:
    key = bytes(range(32))
    cached = DataKey("l4.a", key, b"prefix", expires=1e12)
    kept = cached.aead
    cached.zeroize()
    sealed = kept.encrypt(bytes(12), b"a chunk", b"")
    assert AESGCM(key).decrypt(bytes(12), sealed, b"") == b"a chunk"


class _SlowTransport:
    """Answers each request after a while, and notes two requests on the wire at once."""

    def __init__(self) -> None:
        self.busy = False
        self.overlapped = False

    def send(self, wire: bytes) -> bytes:
        if self.busy:
            self.overlapped = True
        self.busy = True
        time.sleep(0.005)
        self.busy = False
        from kcm.kmip.messages import decode_request
        from kcm.ttlv import decode
        from tests.unit.test_client_protocol import answer, echo_item
        request = decode_request(decode(wire))
        return answer([echo_item(request.batch_items[0])], version=request.header.version)

    def close(self) -> None:
        pass


def test_threads_sharing_a_session_take_turns_on_its_connection() -> None:
    transport = _SlowTransport()
    session = Session(transport)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(10):
                with pytest.raises(KmipOperationFailed, match="k"):  # (the echo's answer)
                    session.call(Operation.GET, get("k").request_payload)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and not transport.overlapped


class _Recording(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


def test_a_connection_given_up_for_a_late_answer_is_aborted_not_closed_politely() -> None:
    clock = task.Clock()
    protocol = KmipClientProtocol(clock, timeout=5.0)
    transport = _Recording()
    protocol.makeConnection(transport)
    protocol.send((1, 4), [get("slow")]).addErrback(lambda failure: None)
    clock.advance(5.0)
    assert transport.aborted
