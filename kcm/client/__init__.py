"""kcm.client: the application SDK of KCM (docs/sdk.md).

* :class:`Session` — the blocking client (a persistent mutual-TLS connection, failover along
  a list of endpoints); every operation the servers offer (:mod:`kcm.client.operations`).
* :class:`KmipClient` — the Twisted client (methods return Deferreds): a small pool of
  persistent connections with pipelining, answers matched by Unique Batch Item ID, failover.
* :class:`SplitHorizon` — L4 operations to the nearest gateway, the rest where configured.
* :class:`Envelope` — ``seal``/``open`` of records under L4 data keys, cached and bounded
  (:mod:`kcm.client.envelope` is the format), and streams of chunks (:mod:`kcm.client.stream`);
  :class:`DeferredEnvelope` is the same with Deferreds, over the Twisted client.

Modules are imported on first use, so ``from kcm.client import Session`` does not load
Twisted.
"""

from __future__ import annotations

import importlib
from typing import Any

from kcm.client.errors import (
    DataKeyRefused,
    EnvelopeError,
    KmipClientError,
    KmipOperationFailed,
)
from kcm.client.operations import l4_marker, symmetric_attributes
from kcm.client.session import Session

__all__ = ["ClientConfig", "DataKeyCache", "DataKeyRefused", "DeferredEnvelope", "Envelope",
           "EnvelopeError",
           "KmipClient", "KmipClientError", "KmipOperationFailed", "Session", "SplitHorizon",
           "l4_marker", "symmetric_attributes"]

_LAZY = {
    "KmipClient": "kcm.client.pool",
    "SplitHorizon": "kcm.client.routing",
    "Envelope": "kcm.client.sealer",
    "DeferredEnvelope": "kcm.client.deferred_envelope",
    "DataKeyCache": "kcm.client.data_key_cache",
    "ClientConfig": "kcm.client.config",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kcm.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
