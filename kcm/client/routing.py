"""Split-horizon routing: L4 operations to the nearest gateway, everything else to the
endpoint the configuration names, so an application keeps working on L4 keys while the core
is away.

:func:`is_l4_request` is the client's one decision, the same one kcm-gateway's classifier
makes (docs/architecture.md, "Classifier"): the Create of an L4 (the ``x-kcm-level`` = L4
attribute, :func:`~kcm.client.operations.l4_marker`), and Get, Encrypt or Decrypt of an
``l4.`` token. Revoke and Destroy of an L4 are control operations: they go to the control
endpoint (the gateway would forward them to the core anyway).

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
from kcm.kmip.attributes import VENDOR_TAG
from kcm.kmip.enums import Operation
from kcm.l4.identifiers import is_l4

__all__ = ["L4_OPERATIONS", "SplitHorizon", "is_l4_request"]

#: Operations the gateway answers itself for an ``l4.`` token.
L4_OPERATIONS = frozenset({Operation.GET, Operation.ENCRYPT, Operation.DECRYPT})


def _is_l4_marker(attribute: Any) -> bool:
    if attribute.tag != VENDOR_TAG or attribute.value is None:
        return False
    name = (attribute.name or "").lower()
    return name in ("x-kcm-level", "kcm-level") and str(attribute.value.value).upper() == "L4"


def is_l4_request(operation: Operation | int, payload: Any) -> bool:
    """Whether the gateway answers ``operation`` with ``payload`` itself (an L4 operation)."""
    if operation == Operation.CREATE:
        return any(_is_l4_marker(a) for a in getattr(payload, "attributes", None) or ())
    return operation in L4_OPERATIONS and is_l4(getattr(payload, "unique_identifier", None))


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
