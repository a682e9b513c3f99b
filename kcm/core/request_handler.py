"""kcm-core's answer to one KMIP request: decode, execute in the store, encode.

Plugged into :class:`kcm.kmip_protocol.KmipServerProtocol` for direct clients, and
(through :meth:`CoreRequestHandler.handle_as`) into the gateway link, where the
caller's identity is asserted by a gateway.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from twisted.internet.defer import Deferred

from kcm.core.audit import append_audit
from kcm.core.batch import audit_event, execute, response_header
from kcm.core.context import Caller
from kcm.core.keyring import Keyring
from kcm.core.server_info import ServerInfo
from kcm.core.store.engine import Store
from kcm.kernel.versions import answer_version, is_supported, unsupported_reason
from kcm.kmip.enums import ResultReason, ResultStatus
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import (
    ProtocolVersion,
    RequestHeader,
    ResponseBatchItem,
    ResponseHeader,
    ResponseMessage,
    decode_request,
    encode_response,
)
from kcm.kmip.versions import Version
from kcm.kmip_protocol import ConnectionInfo
from kcm.ttlv import TtlvError, decode, encode
from kcm.ttlv.peek import peek_request

log = logging.getLogger(__name__)



class CoreRequestHandler:
    """Answers whole request messages with whole response messages."""

    def __init__(self, store: Store, keyring: Keyring, *, clock: Callable[[], float],
                 server_info: ServerInfo | None = None, max_message_size: int = 1 << 20) -> None:
        self._store = store
        self._keyring = keyring
        self._clock = clock
        self._server_info = server_info or ServerInfo()
        self._max_message_size = max_message_size

    # RequestHandler ---------------------------------------------------------
    def handle_request(self, wire: bytes, connection: ConnectionInfo) -> Deferred[bytes]:
        return self.handle_as(wire, Caller(connection.principal, connection.peer))

    def failure_response(self, reason: int, message: str) -> bytes:
        return encode(encode_response(
            failure_message((1, 0), reason, message, int(self._clock()))))

    # ------------------------------------------------------------------------
    def handle_as(self, wire: bytes, caller: Caller) -> Deferred[bytes]:
        """Answer ``wire`` on behalf of ``caller`` on a store worker thread; never fails
        (errors are answers)."""
        return self._store.defer(self.respond, wire, caller, int(self._clock()))

    def respond(self, wire: bytes, caller: Caller, now: int) -> bytes:
        """Decode, execute in one transaction, encode. Blocking: never on the reactor."""
        correlation_id = uuid.uuid4().hex[:16]
        try:
            request = decode_request(decode(wire, max_size=self._max_message_size))
            version = request.header.version
            if not is_supported(version):
                answer = answer_version(version)
                return self._refuse(caller, answer, unsupported_reason(answer),
                                    f"protocol version {version[0]}.{version[1]} is not "
                                    "supported", correlation_id, now)
        except (TtlvError, KmipError) as e:
            reason = e.reason if isinstance(e, KmipError) else ResultReason.INVALID_MESSAGE
            text = e.message if isinstance(e, KmipError) else f"malformed TTLV: {e}"
            return self._refuse(caller, _version_of(wire), reason, text, correlation_id, now)
        try:
            response = self._store.run_sync(lambda session: execute(
                session, request, caller, now=now, keyring=self._keyring,
                server_info=self._server_info, correlation_id=correlation_id))
            return self._encode(response, request.header)
        except Exception:
            return self._general_failure(version, correlation_id, now)

    def _encode(self, response: ResponseMessage, request_header: RequestHeader) -> bytes:
        wire = encode(encode_response(response))
        limit = request_header.maximum_response_size
        if limit is not None and len(wire) > limit:
            for item in response.batch_items:
                if item.result_status == ResultStatus.SUCCESS:
                    item.result_status = ResultStatus.OPERATION_FAILED
                    item.result_reason = ResultReason.RESPONSE_TOO_LARGE
                    item.result_message = (f"the response exceeds the Maximum Response Size "
                                           f"of {limit} bytes")
                    item.response_payload = None
            wire = encode(encode_response(response))
        return wire

    def _refuse(self, caller: Caller, version: Version, reason: int, message: str,
                correlation_id: str, now: int) -> bytes:
        response = failure_message(version, reason, message, now, correlation_id)
        try:
            self._store.run_sync(lambda session: append_audit(session, audit_event(
                caller, response.batch_items[0], correlation_id, [])))
        except Exception:
            return self._general_failure(version, correlation_id, now)
        return encode(encode_response(response))

    def _general_failure(self, version: Version, correlation_id: str, now: int) -> bytes:
        log.exception("request failed [correlation id %s]", correlation_id)
        return encode(encode_response(failure_message(
            version, ResultReason.GENERAL_FAILURE,
            f"internal error (correlation id {correlation_id})", now, correlation_id)))


def _version_of(wire: bytes) -> Version:
    """The request's version if its header can be read and we speak it, else 1.0."""
    try:
        return answer_version(peek_request(wire).version)
    except TtlvError:
        return (1, 0)


def failure_message(version: Version, reason: int, message: str, now: int,
                    correlation_id: str | None = None) -> ResponseMessage:
    """A response with one failed batch item (for a request that could not be read)."""
    item = ResponseBatchItem(result_status=ResultStatus.OPERATION_FAILED, result_reason=reason,
                             result_message=message)
    if correlation_id is None:
        header = ResponseHeader(protocol_version=ProtocolVersion.of(version), time_stamp=now,
                                batch_count=1)
    else:
        header = response_header(version, now, correlation_id, 1)
    return ResponseMessage(header, [item])
