"""A small blocking KMIP client over mutual TLS, for conformance runs, end-to-end tests and
benchmarks. It sends whole TTLV messages and reads back exactly one response each.

The transport is KMIP's (KMIP 2.1 §13, KMIP 1.4 §10): TLS 1.2 or later, the client presents a
certificate, the server's certificate is verified against ``ca``. A response is framed by its
own 8-byte TTLV header (tag, type, length), so exactly ``8 + length`` bytes are read.

``timeout`` bounds each connection attempt (TCP and the TLS handshake) and each request as
a whole: sending it and reading all of its answer, however slowly the server sends it. A
caller with a deadline of its own (a call that may try several servers) passes it to
:meth:`KmipClient.connect` and :meth:`KmipClient.send`, which then end by the earlier of
the two.

A connection belongs to the process that opened it. After ``os.fork`` the child finds the
inherited one on its next use, closes its copy of the socket without writing a byte on it
(no TLS close: the parent's connection goes on untouched) and connects anew; parent and
child never share a TLS stream, so neither can read an answer meant for the other.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["DEFAULT_MAX_RESPONSE", "DEFAULT_TIMEOUT", "KmipClient", "KmipClientError"]

#: Seconds to wait for a connection, and for each request to be sent and answered.
DEFAULT_TIMEOUT = 30.0
#: The largest response accepted, in bytes.
DEFAULT_MAX_RESPONSE = 16 * 1024 * 1024

_HEADER = struct.Struct(">II")
_STRUCTURE = 0x01
#: Request bytes handed to the socket at once (the deadline is checked between them).
_SEND_CHUNK = 1 << 16


class KmipClientError(ConnectionError):
    """The connection failed, closed early, timed out or carried something not TTLV.
    ``temporary``: the server could not be reached or did not answer in time (refused,
    reset, unreachable, a timeout, a resolver down), so the same call may succeed later; not
    so for a name that does not exist, a TLS handshake the server or the client refused, or
    an answer that is not KMIP."""

    temporary = False


def temporary(error: KmipClientError) -> KmipClientError:
    """``error``, marked :attr:`KmipClientError.temporary`."""
    error.temporary = True
    return error


def _handshake_temporary(error: OSError) -> bool:
    """Whether a TLS handshake that failed with ``error`` may succeed later: the connection
    broke or timed out under it; not a certificate or protocol refused by either side."""
    return isinstance(error, (TimeoutError, ConnectionError, ssl.SSLEOFError,
                              ssl.SSLZeroReturnError)) or not isinstance(error, ssl.SSLError)


def _lookup_temporary(error: OSError) -> bool:
    """Whether a host name lookup that failed with ``error`` may succeed later: the resolver
    did not answer (``EAI_AGAIN``, "Temporary failure in name resolution"); not a name that
    does not exist (``EAI_NONAME``)."""
    return isinstance(error, socket.gaierror) and error.errno == socket.EAI_AGAIN


def _encrypted(key: str | Path) -> bytes:
    """What OpenSSL asks of an encrypted ``key``: refused, never a prompt."""
    raise ValueError(f"{key} is encrypted (KCM needs the key unencrypted)")


class KmipClient:
    """One TLS connection to a KMIP server; :meth:`send` is one request and its response.

    ``cert`` / ``key`` are the client's PEM certificate and key, ``ca`` the PEM CA bundle that
    must have issued the server's certificate. ``check_hostname`` also checks ``host`` (or
    ``server_hostname``) against the server certificate's names. Connects lazily on the first
    :meth:`send` (or :meth:`connect`); usable as a context manager. Not thread-safe.
    ``clock`` (seconds, monotonic) is what the request deadline is measured on.
    """

    def __init__(self, host: str, port: int, *, cert: str | Path, key: str | Path,
                 ca: str | Path, check_hostname: bool = False,
                 server_hostname: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_response: int = DEFAULT_MAX_RESPONSE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.max_response = max_response
        self.server_hostname = server_hostname or host
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = check_hostname
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(ca))
        # (A password callback: without one, OpenSSL asks for an encrypted key's pass
        # phrase on the terminal, and a library must never prompt.)
        context.load_cert_chain(certfile=str(cert), keyfile=str(key),
                                password=lambda: _encrypted(key))
        self._context = context
        self._clock = clock
        self._socket: ssl.SSLSocket | None = None
        #: The process that opened ``_socket`` (after a fork, the parent).
        self._pid = 0

    def connect(self, deadline: float | None = None) -> None:
        """Open the TLS connection (done by :meth:`send` when needed), within ``timeout``
        and by ``deadline`` (on ``clock``) if one is given."""
        self._forget_if_inherited()
        if self._socket is not None:
            return
        deadline = self._deadline(deadline)
        raw = self._tcp_connect(deadline)
        try:
            # The socket's timeout bounds the whole handshake (not each of its reads).
            raw.settimeout(self._left(deadline, "connect"))
            self._socket = self._context.wrap_socket(raw, server_hostname=self.server_hostname)
        except OSError as e:  # ssl.SSLError and KmipClientError are OSErrors too
            raw.close()
            if isinstance(e, KmipClientError):
                raise
            failed = KmipClientError(f"TLS handshake with {self.host}:{self.port} failed: {e}")
            raise (temporary(failed) if _handshake_temporary(e) else failed) from e
        self._socket.settimeout(self.timeout)
        self._pid = os.getpid()

    def _tcp_connect(self, deadline: float) -> socket.socket:
        """A TCP connection to the first of the host's addresses that takes one, all of
        them tried by ``deadline`` (``socket.create_connection`` would give each address
        the whole time left: a name of three addresses that drop packets, three times)."""
        try:
            addresses = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)
        except OSError as e:
            failed = KmipClientError(f"cannot connect to {self.host}:{self.port}: {e}")
            # (a resolver down may answer later; a name that does not exist will not)
            raise (temporary(failed) if _lookup_temporary(e) else failed) from e
        error: OSError | None = None
        for family, kind, proto, _, address in addresses:  # (a refusal: try again later)
            raw = socket.socket(family, kind, proto)
            try:
                raw.settimeout(self._left(deadline, "connect"))
                raw.connect(address)
                return raw
            except KmipClientError:
                raw.close()
                raise
            except OSError as e:
                raw.close()
                error = e
        failed = KmipClientError(f"cannot connect to {self.host}:{self.port}: "
                                 f"{error or 'the name has no address'}")
        raise (failed if error is None else temporary(failed)) from error

    def _forget_if_inherited(self) -> None:
        """Drop a connection this process inherited through ``fork``: its file descriptor
        is closed here without a TLS close_notify (which would end the parent's session)."""
        sock = self._socket
        if sock is None or self._pid == os.getpid():
            return
        self._socket = None
        with contextlib.suppress(OSError):
            os.close(sock.detach())

    def closed_by_peer(self) -> bool:
        """Whether an open connection has been closed (or broken) by the server while idle,
        found without blocking and without sending anything (so a request is never sent on
        a connection the server had already given up). Closes it if so."""
        self._forget_if_inherited()
        sock = self._socket
        if sock is None:
            return False
        # poll, not select: select cannot take a descriptor of 1024 or more, which a
        # process with many files or connections open gives its sockets.
        readable = select.poll()
        readable.register(sock, select.POLLIN)
        if not readable.poll(0) and not sock.pending():
            return False  # nothing arrived: open as far as can be known
        sock.setblocking(False)
        try:
            data = sock.recv(1)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False  # TLS records without application data (TLS 1.3 tickets)
        except (OSError, ssl.SSLError):
            data = b""
        finally:
            if self._socket is not None:
                self._socket.settimeout(self.timeout)
        # End of stream, an error, or bytes nobody asked for: not a connection to reuse.
        del data
        self.close()
        return True

    def send(self, request: bytes, deadline: float | None = None) -> bytes:
        """Send one encoded request message; return the one response message, whole.

        Raises :class:`KmipClientError` on any failure, including an answer not whole within
        ``timeout`` of the call (or by ``deadline``, on ``clock``, if that is earlier); the
        connection is closed then, and a later call reconnects.
        """
        deadline = self._deadline(deadline)
        self.connect(deadline)
        assert self._socket is not None
        try:
            self._send_all(request, deadline)
            header = self._read(8, deadline)
            tag_type, length = _HEADER.unpack(header)
            if tag_type & 0xFF != _STRUCTURE or length % 8:
                raise KmipClientError(f"response header {header.hex()} is not a TTLV message")
            if 8 + length > self.max_response:
                raise KmipClientError(f"response of {8 + length} bytes is too large")
            return header + self._read(length, deadline)
        except TimeoutError:
            self.close()
            raise temporary(KmipClientError(self._no_answer())) from None
        except (OSError, ssl.SSLError) as e:
            self.close()
            failed = KmipClientError(f"connection to {self.host}:{self.port} failed: {e}")
            # For good: an answer not KMIP, or a TLS alert (TLS 1.3 sends the server's
            # refusal of the client's certificate, revoked or of another CA, after the
            # handshake, at the first read).
            if not (e.temporary if isinstance(e, KmipClientError) else
                    _handshake_temporary(e)):
                raise failed from e
            raise temporary(failed) from e
        except BaseException:
            # Anything else (KmipClientError, or an exception a signal handler, a timer or
            # Ctrl-C raised in the middle): the request may have gone out and its answer
            # not been read, so this connection's next answer may be this one's.
            self.close()
            raise

    def _deadline(self, deadline: float | None) -> float:
        """The earlier of ``deadline`` and ``timeout`` from now."""
        own = self._clock() + self.timeout
        return own if deadline is None else min(own, deadline)

    def _left(self, deadline: float, what: str) -> float:
        """Seconds until ``deadline``; :class:`KmipClientError` once it has passed."""
        left = deadline - self._clock()
        if left <= 0:
            raise temporary(KmipClientError(
                f"no time left to {what} to {self.host}:{self.port}"))
        return left

    def _limit_to(self, deadline: float) -> None:
        """Set the seconds until ``deadline`` as the socket's timeout for its next call
        (each call is bounded, a request of many calls too); :class:`KmipClientError` once
        it has passed."""
        left = deadline - self._clock()
        if left <= 0:
            raise temporary(KmipClientError(self._no_answer()))
        assert self._socket is not None
        self._socket.settimeout(left)

    def _no_answer(self) -> str:
        return f"no answer from {self.host}:{self.port} within {self.timeout:g} s"

    def _send_all(self, request: bytes, deadline: float) -> None:
        assert self._socket is not None
        view = memoryview(request)
        for start in range(0, len(view), _SEND_CHUNK):
            self._limit_to(deadline)
            self._socket.sendall(view[start:start + _SEND_CHUNK])

    def _read(self, count: int, deadline: float) -> bytes:
        assert self._socket is not None
        chunks = bytearray()
        while len(chunks) < count:
            self._limit_to(deadline)
            chunk = self._socket.recv(count - len(chunks))
            if not chunk:
                raise temporary(KmipClientError(
                    f"server closed the connection after {len(chunks)} of {count} bytes"))
            chunks += chunk
        return bytes(chunks)

    def close(self) -> None:
        """Close the connection, if open."""
        self._forget_if_inherited()
        sock, self._socket = self._socket, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> KmipClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
