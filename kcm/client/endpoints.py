"""Where a client connects: endpoints, the TLS files, and a blocking connection that fails
over along a list of endpoints.

An :class:`Endpoint` is a host and port. :class:`TlsFiles` are the client's certificate,
key and CA bundle (PEM); :func:`parse_endpoint` reads ``HOST:PORT`` (``[v6]:PORT`` too).
:class:`FailoverConnection` is the blocking transport of
:class:`~kcm.client.session.Session`: one mutual-TLS connection at a time, to the first
endpoint of the list that accepts it, kept open across requests (persistent). When the
connection cannot be made it tries the next endpoint, in order, wrapping around once; when a
connection that was kept open has been closed by the server meanwhile (an idle timeout, a
restarted server, a gateway that went away), that is found before the request is sent, and
the request goes on a fresh connection, to the next endpoint if need be. A connection that
breaks after the request was sent (or whose answer does not come within ``timeout``) may
have been read, and the request run: its endpoint gives way to the next in the list, which
is tried first from then on, and the request is sent again once, on a fresh connection, only
when the caller says it is repeatable (reads, Encrypt, Decrypt, ...:
:data:`kcm.client.pool.IDEMPOTENT`); otherwise the error goes to the caller, who knows
whether a second Create is wanted.

``timeout`` bounds a whole :meth:`FailoverConnection.send`: every connection attempt along
the list, sending, the answer, and the resend, all by one deadline; what is left when it
passes fails with :class:`KmipClientError`. Each connection attempt (TCP and the TLS
handshake) is also bounded by ``connect_timeout`` (default: 10 s, or the endpoint's share of
``timeout`` if less, ``timeout`` divided by the number of endpoints), so that an endpoint
that takes TCP connections and never answers leaves time for the next ones.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kcm.client.errors import KmipClientError
from kcm.client.wire import positive_timeout
from kcm.conformance.client import DEFAULT_TIMEOUT, KmipClient, temporary

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "Endpoint", "FailoverConnection", "TlsFiles",
           "connect_timeout_for", "parse_endpoint"]

#: Seconds one connection attempt (TCP, then the TLS handshake) may take, unless less is
#: left of the call (or of ``timeout``).
DEFAULT_CONNECT_TIMEOUT = 10.0


def connect_timeout_for(timeout: float, endpoints: int,
                        connect_timeout: float | None = None) -> float:
    """The seconds each connection attempt may take: ``connect_timeout`` if given (a
    positive number, else ValueError), by default 10 s, or the endpoint's share of
    ``timeout`` (``timeout`` / ``endpoints``) if less, so that endpoints that take TCP
    connections and never answer leave the next ones time within one call. The same for
    the blocking and the Twisted client."""
    if connect_timeout is not None:
        return positive_timeout(connect_timeout, "connect_timeout")
    return min(positive_timeout(timeout) / max(endpoints, 1), DEFAULT_CONNECT_TIMEOUT)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A KMIP server's host and port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The client's certificate and key and the CA bundle that issued the servers' (PEM)."""

    cert: str | Path
    key: str | Path
    ca: str | Path


def parse_endpoint(text: str | Endpoint, default_port: int = 5696) -> Endpoint:
    """``HOST:PORT``, ``[V6]:PORT`` or ``HOST`` (port ``default_port``) as an Endpoint. An
    IPv6 address is written in brackets: bare (``::1:5696``) it was taken whole as the host,
    with the default port."""
    if isinstance(text, Endpoint):
        return text
    text = text.strip()
    if text.startswith("["):
        host, closed, rest = text[1:].partition("]")
        if not closed or (rest and not rest.startswith(":")):
            raise ValueError(f"{text!r} is not [V6]:PORT")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") > 1 or "]" in text:
        raise ValueError(f"{text!r} is not HOST:PORT (IPv6: [ADDRESS]:PORT)")
    else:
        host, _, port = text.partition(":")
        if _ and not port:
            raise ValueError(f"{text!r}: no port after the colon")
    if not host:
        raise ValueError(f"{text!r} names no host")
    if port and not (port.isascii() and port.isdigit()):  # (int() takes "+1", "5_696")
        raise ValueError(f"{text!r}: the port is not a number")
    number = int(port) if port else default_port
    if not 0 < number < 65536:
        raise ValueError(f"{text!r}: port {number} is out of range")
    return Endpoint(host, number)


class FailoverConnection:
    """A blocking, persistent mutual-TLS connection to the first of ``endpoints`` that
    answers (see the module's docstring). ``send(bytes) -> bytes``; not thread-safe.
    ``clock`` (seconds, monotonic) is what deadlines are measured on."""

    def __init__(self, endpoints: Sequence[Endpoint | str], tls: TlsFiles, *,
                 timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not endpoints:
            raise ValueError("no endpoint to connect to")
        self.timeout = positive_timeout(timeout)
        self.endpoints = [parse_endpoint(e) for e in endpoints]
        self.connect_timeout = connect_timeout_for(self.timeout, len(self.endpoints),
                                                   connect_timeout)
        self.clock = clock
        try:
            self._clients = [KmipClient(e.host, e.port, cert=tls.cert, key=tls.key, ca=tls.ca,
                                        timeout=self.timeout, check_hostname=True,
                                        clock=clock)
                             for e in self.endpoints]
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            raise KmipClientError(
                f"cannot load the client's certificate, key or CA: {e}") from e
        self._current = 0
        self._open = False

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint in use (or to be tried first)."""
        return self.endpoints[self._current]

    def deadline(self) -> float:
        """When a call that starts now must end (on ``clock``)."""
        return self.clock() + self.timeout

    def _late(self, errors: list[str]) -> KmipClientError:
        return temporary(KmipClientError(
            f"no answer within {self.timeout:g} s (the call's timeout)"
            + (": " + "; ".join(errors) if errors else "")))

    def _connect(self, deadline: float) -> KmipClient:
        errors = []
        # (temporary if every endpoint's failure was: one that refused the client for good
        # refuses it again)
        passing = True
        for step in range(len(self._clients)):
            now = self.clock()
            if now >= deadline:
                raise self._late(errors)
            index = (self._current + step) % len(self._clients)
            client = self._clients[index]
            try:
                client.connect(min(deadline, now + self.connect_timeout))
            except KmipClientError as e:
                errors.append(str(e))
                passing = passing and e.temporary
                continue
            self._current = index
            self._open = True
            return client
        failed = KmipClientError(errors[0] if len(errors) == 1 else
                                 "no endpoint answered: " + "; ".join(errors))
        raise temporary(failed) if passing else failed

    def send(self, request: bytes, *, repeatable: bool = False,
             deadline: float | None = None) -> bytes:
        """Send one request message; its response message, by ``deadline`` (default:
        ``timeout`` from now). ``repeatable``: the request may run twice harmlessly, so it
        is sent again once if its connection breaks under it, time allowing."""
        if deadline is None:
            deadline = self.deadline()
        if self._open and self._clients[self._current].closed_by_peer():
            self._open = False
        client = self._connect(deadline)
        try:
            return client.send(request, deadline)
        except KmipClientError as e:
            self._give_up()
            if not repeatable:
                raise
            if self.clock() >= deadline:
                raise self._late([str(e)]) from e
        client = self._connect(deadline)
        try:
            return client.send(request, deadline)
        except KmipClientError:
            self._give_up()
            raise

    def _give_up(self) -> None:
        """The connection failed a request without answering it (it broke, or ``timeout``
        passed): its endpoint gives way to the next, which the resend and later requests
        try first (as the Twisted client does). A hung server still takes TCP connections:
        trying it first again would cost each of them a handshake's ``timeout``."""
        self._open = False
        self._current = (self._current + 1) % len(self._clients)

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self._open = False
