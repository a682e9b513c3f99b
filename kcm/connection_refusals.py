"""Connections a KCM process refused or cut before serving them, counted by reason for the
metrics (``kcm_core_connections_refused_total``, ``kcm_gateway_connections_refused_total``:
docs/operations.md, "Metrics and health").

What it promises:

* The reasons are the few of :data:`REASONS`, fixed here: whoever connects cannot make
  more series (a reason not listed is a bug, KeyError).
* One :class:`ConnectionRefusals` per process, shared by the parts that refuse: the
  connection guard (``limit``, ``timeout``, ``handshake``, ``revoked``), the KMIP and link
  protocols (``identity``, ``unreadable``, ``too_large``; the KMIP factory ``limit`` too, over
  ``max_connections_per_tenant``), each listener's CRL watch
  (``revoked``: an open connection cut by a new CRL). Counted on the reactor thread, read
  when scraped; a connection is counted once, by the first reason that ends it.
"""

from __future__ import annotations

from collections.abc import Iterator

__all__ = ["REASONS", "ConnectionRefusals"]

#: Why a connection was refused or cut:
#: ``limit``: over ``max_connections`` or ``max_connections_per_address`` (closed at accept),
#: or ``max_connections_per_tenant`` (cut when the TLS handshake names the tenant);
#: ``timeout``: no TLS handshake within ``handshake_timeout``;
#: ``handshake``: the TLS handshake failed (a client certificate not verified, none, or a
#: client that did not take ours);
#: ``revoked``: a certificate of the client's chain is on a CRL (at the handshake, or cut
#: when a new CRL lists it);
#: ``identity``: a verified certificate that names nobody this listener serves;
#: ``unreadable``: a message header that cannot be read (not KMIP);
#: ``too_large``: a request over ``max_message_size`` (answered, then closed).
REASONS = ("limit", "timeout", "handshake", "revoked", "identity", "unreadable", "too_large")


class ConnectionRefusals:
    """Connections refused, by reason (see the module docstring)."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)

    def refused(self, reason: str) -> None:
        """One connection refused or cut for ``reason`` (one of :data:`REASONS`)."""
        self.counts[reason] += 1

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """(reason, count), every reason, in :data:`REASONS` order."""
        return iter(list(self.counts.items()))
