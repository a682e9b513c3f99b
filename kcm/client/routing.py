"""Split-horizon routing: L4 operations to the nearest gateway, everything else to the
endpoint the configuration names, so an application keeps working on L4 keys while the core
is away.

:func:`is_l4_request` is the client's one decision, the rule kcm-gateway's classifier
applies to a request of one item (docs/architecture.md, "Classifier"; both ask
:mod:`kcm.l4`): a Create that :func:`kcm.l4.marking.is_l4_create` marks as an L4 (the
``x-kcm-level`` = L4 attribute, :func:`~kcm.client.operations.l4_marker`, or a Parent Link
to an ``l3-`` service key), a Get, Encrypt or Decrypt of an ``l4.`` token, and an Encrypt or
Decrypt with an ``l3-`` service key (a DEK wrapped at the gateway). Revoke and Destroy of an
L4 are control operations: they go to the control endpoint (the gateway would forward them
to the core anyway).

:class:`SplitHorizon` wraps two clients of the same kind — two blocking
:class:`~kcm.client.session.Session` objects, or two Twisted
:class:`~kcm.client.pool.KmipClient` objects — and offers every operation of
:class:`~kcm.client.operations.Operations`: ``gateway`` (a list of gateways with failover
is one client) answers L4 operations, ``control`` (the core, or the gateway itself, which
forwards) the rest. Without a core, everything goes to the gateway.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kcm.client.operations import Operations
from kcm.kmip.enums import Operation
from kcm.l4.identifiers import is_l3, is_l4
from kcm.l4.marking import is_l4_create

__all__ = ["L3_OPERATIONS", "L4_OPERATIONS", "SplitHorizon", "is_l4_request"]

#: Operations the gateway answers itself for an ``l4.`` token.
L4_OPERATIONS = frozenset({Operation.GET, Operation.ENCRYPT, Operation.DECRYPT})
#: Operations the gateway answers itself for an ``l3-`` service key (from its L3 cache).
L3_OPERATIONS = frozenset({Operation.ENCRYPT, Operation.DECRYPT})


def is_l4_request(operation: Operation | int, payload: Any) -> bool:
    """Whether the gateway answers ``operation`` with ``payload`` itself: an L4 Create, or
    a use of an L4 token or of a service key the gateway holds."""
    if operation == Operation.CREATE:
        return is_l4_create(getattr(payload, "attributes", None))
    uid = getattr(payload, "unique_identifier", None)
    return ((operation in L4_OPERATIONS and is_l4(uid))
            or (operation in L3_OPERATIONS and is_l3(uid)))


class SplitHorizon(Operations):
    """L4 operations to ``gateway``, others to ``control`` (``gateway`` when None)."""

    def __init__(self, gateway: Any, control: Any | None = None) -> None:
        self.gateway = gateway
        self.control = control if control is not None else gateway

    def route(self, operation: Operation | int, payload: Any) -> Any:
        """The client that gets ``operation`` with ``payload``."""
        return self.gateway if is_l4_request(operation, payload) else self.control

    def call(self, operation: Operation, payload: Any) -> Any:
        return self.route(operation, payload).call(operation, payload)

    def _run(self, operation: Operation, payload: Any, shape: Callable[[Any], Any]) -> Any:
        return self.route(operation, payload)._run(operation, payload, shape)

    def close(self) -> Any:
        """Close both clients; with Twisted clients, a Deferred firing when both are."""
        closing = [self.gateway.close()]
        if self.control is not self.gateway:
            closing.append(self.control.close())
        pending = [c for c in closing if c is not None]
        if not pending:
            return None
        from twisted.internet.defer import DeferredList

        return DeferredList(pending, consumeErrors=True)
