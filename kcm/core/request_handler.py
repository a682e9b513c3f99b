"""kcm-core's answer to one KMIP request: decode, execute in the store, encode.

Plugged into :class:`kcm.kmip_protocol.KmipServerProtocol` for direct clients, and
(through :meth:`CoreRequestHandler.handle_as`) into the gateway link, where the
caller's identity is asserted by a gateway.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from kcm.core.audit import append_audit
from kcm.core.batch import audit_event, execute
from kcm.core.context import Caller
from kcm.core.keyring import Keyring
from kcm.core.server_info import ServerInfo
from kcm.core.store.engine import Store
from kcm.kernel.responses import (
    encode_items,
    failed_item,
    failure_response,
    internal_error,
    response_wire,
)
from kcm.kernel.versions import answer_version, is_supported, version_of
from kcm.kmip.enums import ResultReason
from kcm.kmip.errors import KmipError
from kcm.kmip.messages import decode_request
from kcm.kmip.versions import Version
from kcm.kmip_protocol import ConnectionInfo
from kcm.ttlv import TtlvError, decode, encode

log = Logger()


class CoreRequestHandler:
    """Answers whole request messages with whole response messages.

    No answer is longer than ``max_message_size`` (the core's ``limits.max_message_size``,
    which also bounds requests): one that would be has its successful items answer Response
    Too Large (KMIP's word for it), or, when even that is too long, is a single Response Too
    Large item. The client's own Maximum Response Size applies when it is smaller.
    """

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
        return failure_response((1, 0), reason, message, int(self._clock()))

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
                return self._refuse(caller, answer_version(version),
                                    ResultReason.UNSUPPORTED_PROTOCOL_VERSION,
                                    f"protocol version {version[0]}.{version[1]} is not "
                                    "supported", correlation_id, now)
        except KmipError as e:
            return self._refuse(caller, version_of(wire), e.reason, e.message, correlation_id,
                                now)
        except TtlvError as e:
            return self._refuse(caller, version_of(wire), ResultReason.INVALID_MESSAGE,
                                f"malformed TTLV: {e}", correlation_id, now)
        try:
            items = self._store.run_sync(lambda session: execute(
                session, request, caller, now=now, keyring=self._keyring,
                server_info=self._server_info, correlation_id=correlation_id))
            # Never larger than the maximum message size, for a direct client as for a
            # gateway: the link carries answers up to that size and no larger.
            return response_wire(version, now, correlation_id, encode_items(items, version),
                                 request.header.maximum_response_size,
                                 server_limit=self._max_message_size)
        except Exception:
            return self._general_failure(version, correlation_id, now)

    def _refuse(self, caller: Caller, version: Version, reason: int, message: str,
                correlation_id: str, now: int) -> bytes:
        item = failed_item(None, None, version, reason, message)
        try:
            self._store.run_sync(lambda session: append_audit(session, audit_event(
                caller, item, correlation_id, [])))
        except Exception:
            return self._general_failure(version, correlation_id, now)
        return response_wire(version, now, correlation_id, [encode(item.to_item(version))])

    def _general_failure(self, version: Version, correlation_id: str, now: int) -> bytes:
        log.failure("request failed [correlation id {cid}]", cid=correlation_id)
        return failure_response(version, ResultReason.GENERAL_FAILURE,
                                internal_error(correlation_id), now, correlation_id)
