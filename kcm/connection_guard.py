"""What a KCM process does with a connection before it knows who is on the other end.

One :class:`ConnectionGuard` per process guards its KMIP listener (kcm-gateway's, kcm-core's);
kcm-core's gateway-link listener has a guard of its own, reserved from it
(:meth:`ConnectionGuard.reserve`), so that KMIP clients (one tenant's idle connections, or
unauthenticated clients reopening theirs) can never take the slots the gateways link on, nor
gateways a KMIP client's. A guard wraps its listeners' TLS layer
(:class:`kcm.tls.TLSListener`) and promises:

* **caps**: at most ``max_connections`` connections at once on its listeners (a reserved
  guard: its own cap, kcm-core's ``max_link_connections``), and at most
  ``max_connections_per_address`` from one client IP address on them (an IPv6 client: from
  its network of ``ipv6_address_prefix`` bits, its address by default;
  :func:`kcm.peer_address.address_group`). A connection over
  either cap is closed as soon as it is accepted, before any TLS work (its socket is closed
  by the listening port, so it costs one ``accept``); keep ``max_connections`` and the
  reserved caps together below ``ulimit -n`` minus the descriptors the process needs for
  itself (about 100: database, log, listening sockets, the reactor's own), so that the
  process never runs out of them;
* **a handshake deadline**: a connection whose application protocol has not been told who
  the peer is (``identified``) within ``handshake_timeout`` of its acceptance is aborted,
  so a client that opens TCP and never finishes TLS holds a descriptor for that long only;
* **a bound on unsent output** (KMIP listeners): each connection's transport considers its
  buffer full above ``max_unsent_output`` bytes (``bufferSize``), which is when a producer
  registered on it (:class:`kcm.kmip_protocol.KmipServerProtocol`) is paused (its reads
  keep their own size: :mod:`kcm.tcp_reads`). The link
  listener keeps Twisted's own buffer size: its protocol has its own bound on what a slow
  gateway may hold (``max_queued_events``).

Refusals, expired handshakes and failed handshakes (a client certificate TLS did not verify:
expired, of another CA, not for client use, none at all; or a client that did not take this
server's certificate) are logged at most once per ``LOG_INTERVAL`` seconds per kind, with
the number of connections since the previous line, the last one's address and, for a failed
handshake, why (OpenSSL's verify reason, e.g. ``certificate has expired``, or its error), so
a flood does not flood the log. Each is also counted, by reason (``limit``, ``timeout``,
``handshake``, ``revoked``: :mod:`kcm.connection_refusals`), in the guard's
:attr:`ConnectionGuard.refusals`, which its reserved guards share.
"""

from __future__ import annotations

import resource
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from OpenSSL import SSL
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure

from kcm.connection_refusals import ConnectionRefusals
from kcm.eager_tls import EagerTLSFactory, EagerTLSProtocol
from kcm.peer_address import address_group, peer_host
from kcm.tcp_reads import read_into_shared_buffer

__all__ = ["DESCRIPTORS_KEPT", "LOG_INTERVAL", "ConnectionGuard", "DescriptorBudget",
           "GuardLimits", "descriptor_budget", "handshake_failure_kind",
           "handshake_failure_reason"]

log = Logger()

try:  # pyOpenSSL's own binding: why OpenSSL did not verify the peer's certificate
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib

    _VERIFY_RESULT = _lib.SSL_get_verify_result
    _VERIFY_ERROR_STRING = _lib.X509_verify_cert_error_string
except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
    _VERIFY_RESULT = None

#: OpenSSL's X509_V_ERR_CERT_REVOKED: a certificate of the peer's chain is on a CRL.
_CERT_REVOKED = 23

#: Seconds between two log lines about refused or expired connections.
LOG_INTERVAL = 10.0
#: File descriptors a process needs besides its connections (database, logs, listening
#: sockets, the reactor's own): ``max_connections`` should leave at least these free.
DESCRIPTORS_KEPT = 100


@dataclass(frozen=True, slots=True)
class DescriptorBudget:
    """Connection caps against the process's open-file limit (``ulimit -n``)."""

    #: The caps' settings, as the log names them (``limits.max_connections + ...``).
    settings: str
    #: The caps added up.
    total: int
    #: The soft open-file limit; None: unlimited.
    soft: int | None

    @property
    def short(self) -> bool:
        """Whether the caps leave fewer than :data:`DESCRIPTORS_KEPT` descriptors free."""
        return self.soft is not None and self.total > self.soft - DESCRIPTORS_KEPT


def descriptor_budget(caps: Sequence[tuple[str, int]]) -> DescriptorBudget:
    """The budget of a process whose listeners hold at most ``caps`` connections (each a
    setting under ``limits`` and its value), against this process's open-file limit: the
    one rule of :meth:`ConnectionGuard.check_descriptors` and of ``kcm config check``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return DescriptorBudget(" + ".join(f"limits.{name}" for name, _ in caps),
                            sum(cap for _, cap in caps),
                            None if soft == resource.RLIM_INFINITY else soft)


class GuardLimits(Protocol):
    """The settings the guard reads (:class:`kcm.kmip_protocol.ConnectionLimits` has them)."""

    handshake_timeout: float
    max_connections: int
    max_connections_per_address: int
    ipv6_address_prefix: int
    max_unsent_output: int


class ConnectionGuard:
    """Caps, handshake deadline and send-buffer size for the connections of a process's
    listeners (those of a reserved guard apart)."""

    def __init__(self, limits: GuardLimits, clock: IReactorTime, *,
                 max_connections: int | None = None,
                 setting: str = "max_connections",
                 refusals: ConnectionRefusals | None = None) -> None:
        """``refusals``: where refused connections are counted (the process's; None: a
        count of this guard's own)."""
        self.limits = limits
        self.clock = clock
        self.refusals = refusals if refusals is not None else ConnectionRefusals()
        #: The connections this guard's listeners may hold at once, and its setting's name.
        self.max_connections = limits.max_connections if max_connections is None \
            else max_connections
        self.setting = setting
        #: Connections open now on this guard's listeners, and with its reserved guards'.
        self.held = 0
        self.connections = 0
        #: Guards reserved from this one (:meth:`reserve`), whose caps are their own.
        self.reserved: list[ConnectionGuard] = []
        self._reserved_from: ConnectionGuard | None = None
        #: Open connections by client address (an IPv6 client's network, with
        #: ``ipv6_address_prefix`` below 128: :meth:`group`).
        self.by_address: Counter[str] = Counter()
        #: Each open connection's client address (as :attr:`by_address` counts it) and
        #: handshake deadline.
        self._open: dict[TLSMemoryBIOProtocol, tuple[str, IDelayedCall]] = {}
        self._summaries: dict[str, _Summary] = {}
        self._descriptors_checked = False

    def reserve(self, setting: str, max_connections: int) -> ConnectionGuard:
        """A guard for other listeners (kcm-core's gateway link), with ``max_connections``
        of their own (named ``setting`` in the log): neither guard's connections count
        against the other's caps, the per-address cap included. Its connections count in
        :attr:`connections`, and its cap in :meth:`check_descriptors`."""
        guard = ConnectionGuard(self.limits, self.clock, max_connections=max_connections,
                                setting=setting, refusals=self.refusals)
        guard._descriptors_checked = True  # (this guard checks for both)
        guard._reserved_from = self
        self.reserved.append(guard)
        return guard

    def tls_factory(self, options: Any, factory: Any, *,
                    bound_output: bool = True) -> TLSMemoryBIOFactory:
        """The server-side TLS factory over ``factory``, guarded; with ``bound_output``, its
        connections' send buffers are ``max_unsent_output`` bytes."""
        return _GuardedTLSFactory(self, options, factory, bound_output)

    def check_descriptors(self) -> None:
        """Warn (once) when ``max_connections`` (with the reserved guards' caps) does not
        leave ``DESCRIPTORS_KEPT`` of the process's open-file limit free: the caps would not
        keep it from running out."""
        if self._descriptors_checked:
            return
        self._descriptors_checked = True
        budget = descriptor_budget([(self.setting, self.max_connections)] + [
            (guard.setting, guard.max_connections) for guard in self.reserved])
        if budget.short:
            log.warn("{settings} ({limit}) leaves fewer than {kept} of the {soft} file "
                     "descriptors this process may open (ulimit -n): lower it or raise the "
                     "limit", settings=budget.settings, limit=budget.total,
                     kept=DESCRIPTORS_KEPT, soft=budget.soft)

    # Admission --------------------------------------------------------------------------
    def group(self, host: str) -> str:
        """What ``max_connections_per_address`` counts ``host`` under: an IPv6 address by its
        network of ``ipv6_address_prefix`` bits (``2001:db8:1:2::/64``), else the address."""
        return address_group(host, self.limits.ipv6_address_prefix)

    def admit(self, host: str) -> bool:
        """Whether a new connection from ``host`` may be accepted now (logged and counted
        if not)."""
        if self.held >= self.max_connections:
            self.refusals.refused("limit")
            self._note(self.setting, host, "refused {count} connection(s) over "
                       f"limits.{self.setting} ({{limit}}) in the last {{interval}}s; last "
                       "from {host}", self.max_connections)
            return False
        group = self.group(host)
        if self.by_address[group] >= self.limits.max_connections_per_address:
            self.refusals.refused("limit")
            self._note("max_connections_per_address", group, "refused {count} connection(s) "
                       "over limits.max_connections_per_address ({limit}) in the last "
                       "{interval}s; last from {host}", self.limits.max_connections_per_address)
            return False
        return True

    def opened(self, protocol: TLSMemoryBIOProtocol, *, bound_output: bool = True) -> None:
        if protocol in self._open:  # TLSMemoryBIOProtocol registers itself twice
            return
        transport = protocol.transport
        host = _host(transport)
        group = self.group(host)
        self._count(1)
        self.by_address[group] += 1
        if bound_output and hasattr(transport, "bufferSize"):
            # bufferSize is also Twisted's read size: reads keep theirs (kcm.tcp_reads).
            read_into_shared_buffer(transport)
            transport.bufferSize = self.limits.max_unsent_output
        self._open[protocol] = (group, self.clock.callLater(
            self.limits.handshake_timeout, self._handshake_expired, protocol, host))

    def closed(self, protocol: TLSMemoryBIOProtocol) -> None:
        opened = self._open.pop(protocol, None)
        if opened is None:
            return
        group, deadline = opened
        self._count(-1)
        self.by_address[group] -= 1
        if self.by_address[group] <= 0:
            del self.by_address[group]
        if deadline.active():
            deadline.cancel()

    def _count(self, change: int) -> None:
        self.held += change
        self.connections += change
        if self._reserved_from is not None:
            self._reserved_from.connections += change

    def _handshake_expired(self, protocol: TLSMemoryBIOProtocol, host: str) -> None:
        if getattr(protocol.wrappedProtocol, "identified", False):
            return
        if not getattr(protocol, "_handshakeDone", False):
            # (a handshake done without an identity was counted as refused for it)
            self.refusals.refused("timeout")
        self._note("handshake_timeout", host, "closed {count} "
                   "connection(s) without a TLS handshake within limits.handshake_timeout "
                   "({limit}s) in the last {interval}s; last from {host}",
                   self.limits.handshake_timeout)
        protocol.abortConnection()

    def handshake_failed(self, host: str, reason: str, kind: str = "handshake") -> None:
        """A TLS handshake with ``host`` failed for ``reason`` (short ASCII); logged in
        summary, counted as ``kind`` (:func:`handshake_failure_kind`)."""
        self.refusals.refused(kind)
        self._note("handshake_failed", host, "{count} TLS handshake(s) failed in the last "
                   "{interval}s; last from {host}: {reason}", 0, reason=reason)

    # Rate-limited log -------------------------------------------------------------------
    def _note(self, kind: str, host: str, message: str, limit: float,
              reason: str = "") -> None:
        summary = self._summaries.get(kind)
        if summary is None:
            summary = self._summaries[kind] = _Summary(message, limit)
        summary.count += 1
        summary.host = host
        summary.reason = reason
        now = self.clock.seconds()
        if summary.logged_at is None or now - summary.logged_at >= LOG_INTERVAL:
            summary.flush(now)
        elif summary.pending is None:
            summary.pending = self.clock.callLater(
                summary.logged_at + LOG_INTERVAL - now, lambda: summary.flush(
                    self.clock.seconds()))


class _Summary:
    """One kind of refusal: how many since its last log line."""

    __slots__ = ("count", "host", "limit", "logged_at", "message", "pending", "reason")

    def __init__(self, message: str, limit: float) -> None:
        self.message = message
        self.limit = limit
        self.count = 0
        self.host = ""
        self.reason = ""
        self.logged_at: float | None = None
        self.pending: IDelayedCall | None = None

    def flush(self, now: float) -> None:
        if self.pending is not None and self.pending.active():
            self.pending.cancel()
        self.pending = None
        if self.count:
            log.warn(self.message, count=self.count, limit=self.limit, host=self.host,
                     reason=self.reason, interval=f"{LOG_INTERVAL:g}")
        self.count = 0
        self.logged_at = now


def _host(transport: Any) -> str:
    return peer_host(transport.getPeer())


#: The most characters of a failed handshake's reason that are logged.
_REASON_LENGTH = 120


def handshake_failure_kind(connection: Any) -> str:
    """How a failed TLS handshake of ``connection`` (a pyOpenSSL ``Connection``) is counted:
    ``revoked`` when OpenSSL did not verify the peer's chain because a CRL lists one of its
    certificates, else ``handshake``."""
    ssl = getattr(connection, "_ssl", None)
    if _VERIFY_RESULT is not None and ssl is not None and _VERIFY_RESULT(ssl) == _CERT_REVOKED:
        return "revoked"
    return "handshake"


#: The alerts a client sends when it does not take the server's certificate (OpenSSL's
#: reason strings, ``sslv3 alert ...``, ``tlsv1 alert ...``, ``tls alert ...``).
_CERTIFICATE_ALERTS = ("bad certificate", "unsupported certificate", "certificate revoked",
                       "certificate expired", "certificate unknown", "unknown ca")


def handshake_failure_reason(connection: Any, failure: Failure) -> str:
    """Why the TLS handshake of ``connection`` (a pyOpenSSL ``Connection``) failed with
    ``failure`` (an ``SSL.Error``), in short ASCII: OpenSSL's verify reason when it did not
    verify the peer's certificate (``certificate verify failed: certificate has expired``),
    else OpenSSL's errors; an alert of the client's about this server's certificate says
    so (``the client refused this server's certificate (tlsv1 alert unknown ca)``)."""
    verify_error = ""
    ssl = getattr(connection, "_ssl", None)
    if _VERIFY_RESULT is not None and ssl is not None:
        code = _VERIFY_RESULT(ssl)
        if code != 0:  # X509_V_OK
            verify_error = _ffi.string(_VERIFY_ERROR_STRING(code)).decode("ascii", "replace")
    errors = failure.value.args[0] if failure.value.args else None
    if isinstance(errors, list) and errors:
        # [(library, function, reason), ...]: the reasons say it.
        said = "; ".join(str(error[-1]) for error in errors
                         if isinstance(error, tuple) and error)
    else:
        said = str(failure.value)
    said = said or type(failure.value).__name__
    if verify_error:
        said = (f"{said}: {verify_error}" if "verify failed" in said
                else f"certificate verify failed: {verify_error}")
    elif "alert" in said and any(alert in said for alert in _CERTIFICATE_ALERTS):
        # The client's alert, about this server's certificate: "tls alert certificate
        # expired" alone read as if the client's had expired.
        said = f"the client refused this server's certificate ({said})"
    text = "".join(c if " " <= c <= "~" else "?" for c in said)
    return text[:_REASON_LENGTH]


class _GuardedTLSProtocol(EagerTLSProtocol):
    """A guarded server-side TLS connection: one whose handshake fails is told to the
    guard (:meth:`ConnectionGuard.handshake_failed`)."""

    factory: _GuardedTLSFactory

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        # Twisted ends the TLS connection here on an OpenSSL error, the Connection still
        # at hand. Not this kind of failure: a handshake that completed, and a connection
        # closed or reset before its handshake ended (SysCallError: a TCP health check, a
        # client that gave up), which the handshake deadline and Twisted's log cover.
        if (reason is not None and reason.check(SSL.Error)
                and not reason.check(SSL.SysCallError)
                and not getattr(self, "_handshakeDone", False)):
            self.factory.guard.handshake_failed(
                _host(self.transport), handshake_failure_reason(self._tlsConnection, reason),
                handshake_failure_kind(self._tlsConnection))
        super()._tlsShutdownFinished(reason)


class _GuardedTLSFactory(EagerTLSFactory):
    """Server-side TLS whose connections the guard admits, counts and times."""

    protocol = _GuardedTLSProtocol

    def __init__(self, guard: ConnectionGuard, options: Any, factory: Any,
                 bound_output: bool) -> None:
        super().__init__(options, False, factory)
        self.guard = guard
        self.bound_output = bound_output

    def buildProtocol(self, addr: Any) -> TLSMemoryBIOProtocol | None:
        # None makes the listening port close the socket at once, before any TLS work.
        # (Counted under the name opened() counts it by: an IPv4 client of a dual-stack
        # listener, ::ffff:192.0.2.7, by its IPv4 address.)
        if not self.guard.admit(peer_host(addr)):
            return None
        return super().buildProtocol(addr)

    def registerProtocol(self, p: TLSMemoryBIOProtocol) -> None:
        super().registerProtocol(p)
        self.guard.opened(p, bound_output=self.bound_output)

    def unregisterProtocol(self, p: TLSMemoryBIOProtocol) -> None:
        super().unregisterProtocol(p)
        self.guard.closed(p)
