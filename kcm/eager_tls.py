"""TLS connections that put their records on the socket in the reactor turn that wrote them.

Twisted's TLS transport (``BufferingTLSTransport``) holds every application write until the
next reactor turn (``callLater(0)``), encrypts it then, and hands the record to the TCP
transport, which only buffers it and asks the reactor to watch the socket for writability; the
``send`` happens one more turn later. A request-and-answer protocol pays for that on every
answer: a delayed call, two extra reactor turns and two ``epoll_ctl`` calls. Measured on the
gateway, that is a large part of what a request costs beyond its own work.

:class:`EagerTLSProtocol` keeps everything else of ``TLSMemoryBIOProtocol`` (handshake,
shutdown, producers, the factory's bookkeeping) and changes two things:

* writes made while the connection's own received bytes are being handled (an answer
  computed synchronously, or several answers to pipelined requests) are gathered and
  encrypted once, when that handling ends, so they leave as one TLS record; writes made at
  any other time (an answer whose Deferred fired) are encrypted at once;
* the encrypted bytes are sent on the socket at once when nothing is queued before them,
  and queued in the TCP transport as usual otherwise (a partial send, a full socket buffer):
  the order of bytes and the transport's flow control (producers, ``bufferSize``) are the
  TCP transport's, unchanged;
* the records of one write (16 KiB each) leave in one ``send``, and the socket has
  TCP_NODELAY: an answer is never split into a segment that waits for the peer's (delayed)
  ACK of the one before — which cost a bulk answer of 28 KiB 40-90 ms before this;
* it asks OpenSSL's memory buffers how many bytes they hold before reading them, instead of
  reading until pyOpenSSL raises ``WantReadError``: a request and its answer otherwise cost
  two raised exceptions (about 2 µs each) for nothing (a pyOpenSSL without the buffers
  this looks at gets the stock loop);
* once the handshake is done, the four calls on every request's path (into the receive
  buffer, ``SSL_read``, ``SSL_write``, out of the send buffer) go to OpenSSL through
  pyOpenSSL's own binding, without the checks pyOpenSSL's methods wrap around each: those
  cost more than the calls. Whatever does not succeed at once (OpenSSL wanting to read,
  a closed or failed connection) is handed to pyOpenSSL's methods and Twisted's loops, which
  repeat the call and answer it exactly as before: the direct calls only take the path
  where nothing goes wrong.

:class:`EagerTLSClientEndpoint` may also wait for the handshake (``handshake_timeout``): its
connection is then made only once the TLS handshake has completed, and fails when the
handshake fails, the peer closes first, or the time is up (a server that accepts TCP but
does not answer, stopped or overloaded, or a port that is not TLS). A client choosing among
several servers needs that to move on; by default it fires at TCP connect, as
``wrapClientTLS`` does.

The eager send needs a TCP transport of Twisted's (``twisted.internet.tcp.Connection``:
``writeSomeData`` and its write buffer); over anything else (``StringTransport``, ``iosim``)
the records are simply written to the transport.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

from OpenSSL.SSL import Error, WantReadError, ZeroReturnError
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

try:  # pyOpenSSL's own binding of OpenSSL: how many bytes a memory BIO holds, and the calls
    # a request's bytes take once the handshake is done
    from OpenSSL._util import ffi as _ffi
    from OpenSSL._util import lib as _lib
    from OpenSSL._util import no_zero_allocator as _allocate

    _MEM_DATA = _lib.BIO_get_mem_data
    _MEM_POINTER = _ffi.new("char **")
    _BIO_WRITE, _BIO_READ = _lib.BIO_write, _lib.BIO_read
    _SSL_READ, _SSL_WRITE, _SSL_PENDING = _lib.SSL_read, _lib.SSL_write, _lib.SSL_pending
    _FROM_BUFFER, _BUFFER = _ffi.from_buffer, _ffi.buffer
except (ImportError, AttributeError):  # pragma: no cover - another pyOpenSSL
    _MEM_DATA = None

_calls: Any = None
if _MEM_DATA is not None:
    try:  # the same calls, one C call each way (kcm/_tls_calls.c), where it is built
        from kcm import _tls_calls as _calls
    except ImportError:  # a checkout whose extension is not built: the calls through cffi
        pass
    else:
        _IO = "int(*)(void *, void *, int)"
        _calls.configure(*(int(_ffi.cast("uintptr_t", _ffi.cast(kind, function)))
                           for kind, function in ((_IO, _BIO_WRITE), (_IO, _BIO_READ),
                                                  ("long(*)(void *, char **)", _MEM_DATA),
                                                  (_IO, _SSL_READ), (_IO, _SSL_WRITE),
                                                  ("int(*)(void *)", _SSL_PENDING))))


def compiled() -> bool:
    """Whether the OpenSSL calls are made by :mod:`kcm._tls_calls` (else through cffi)."""
    return _calls is not None


def _address(pointer: Any) -> int:
    """A cffi pointer as the integer :mod:`kcm._tls_calls` takes."""
    return int(_ffi.cast("uintptr_t", pointer))

_QUICKACK = getattr(socket, "TCP_QUICKACK", None)
#: Bytes taken from OpenSSL's send buffer at once (the stock transport takes 32 KiB).
_SEND_CHUNK = 1 << 18
#: Gathered writes past this many bytes are sent at once (as the stock transport's
#: aggregation does), so that the TCP transport's flow control sees them and can pause the
#: application before it answers everything one large read asked for.
MAX_GATHERED = 64_000


def _buffered(bio: Any) -> int:
    """Bytes held in the OpenSSL memory BIO ``bio``."""
    return _MEM_DATA(bio, _MEM_POINTER)


def _memory_bios(connection: Any) -> tuple[Any, Any] | tuple[None, None]:
    """(into OpenSSL, out of OpenSSL): the memory BIOs of a pyOpenSSL ``Connection``, or
    Nones where they cannot be looked at."""
    into, out = getattr(connection, "_into_ssl", None), getattr(connection, "_from_ssl", None)
    if _MEM_DATA is None or into is None or out is None:
        return None, None
    return into, out


def _direct_ssl(connection: Any) -> Any:
    """The ``SSL *`` of a pyOpenSSL ``Connection`` whose calls this module may make itself
    (see the module docstring), or None."""
    if _MEM_DATA is None or not all(callable(getattr(connection, name, None)) for name in (
            "_raise_ssl_error", "_handle_bio_errors")):
        return None
    return getattr(connection, "_ssl", None)


#: Plaintext taken out of OpenSSL at once (as Twisted's loop: a TLS record holds 16 KiB).
_RECEIVE_CHUNK = 2**15
#: Plaintext handed to OpenSSL at once (as Twisted's loop: one TLS record).
_RECORD = 2**14


def _can_send_eagerly(transport: Any) -> bool:
    """Whether ``transport`` is a Twisted TCP connection whose buffer we may look at."""
    return all(hasattr(transport, name) for name in (
        "writeSomeData", "dataBuffer", "offset", "_tempDataLen", "socket"))


class EagerTLSProtocol(TLSMemoryBIOProtocol):
    """``TLSMemoryBIOProtocol`` that sends its records without waiting for a reactor turn."""

    _eager = False
    #: Application writes gathered while received bytes are handled; None otherwise.
    _gathered: list[bytes] | None = None
    _gathered_size = 0
    #: While one application write is being encrypted: its records leave together after.
    _holding = False
    #: The connection's memory BIOs, once it has them (None: use the stock loops).
    _into_bio: Any = None
    _out_bio: Any = None
    #: The connection's ``SSL *``, for the direct calls (None: pyOpenSSL's methods only).
    _ssl: Any = None
    #: ``_ssl`` and the two BIOs as :mod:`kcm._tls_calls` takes them (0: the cffi calls).
    _c_ssl = _c_into = _c_out = 0
    #: Who waits for the handshake (:meth:`when_handshake_done`); None: nobody.
    _handshake_waiters: list[Deferred[None]] | None = None
    #: Told of the handshake's end and of the connection's (``handshake_done(protocol)``,
    #: ``lost(protocol)``: a :class:`kcm.tls_crl.RevocationWatch`, which checks the peer's
    #: certificates against each new CRL); None: nobody.
    peer_watch: Any = None

    def makeConnection(self, transport: Any) -> None:
        self._eager = _can_send_eagerly(transport)
        if hasattr(transport, "setTcpNoDelay"):
            # Answers leave whole and at once; Nagle would only hold back their last segment.
            transport.setTcpNoDelay(True)
        super().makeConnection(transport)
        if self._tlsConnection is not None:
            # (the BIOs live as long as the Connection, which outlives them: connectionLost)
            self._into_bio, self._out_bio = _memory_bios(self._tlsConnection)
            if self._into_bio is not None:
                self._ssl = _direct_ssl(self._tlsConnection)
                if self._ssl is not None and _calls is not None:
                    self._c_ssl, self._c_into, self._c_out = (
                        _address(self._ssl), _address(self._into_bio), _address(self._out_bio))

    def when_handshake_done(self) -> Deferred[None]:
        """A Deferred that fires once the TLS handshake has completed, and fails with
        :class:`HandshakeFailed` if the connection ends before; cancelling it aborts the
        connection."""
        if self._handshakeDone:
            return succeed(None)
        if self._lostTLSConnection or not self.connected:
            return fail(HandshakeFailed("TLS handshake failed: the connection closed"))
        waiter: Deferred[None] = Deferred(lambda _: self.abortConnection())
        if self._handshake_waiters is None:
            self._handshake_waiters = []
        self._handshake_waiters.append(waiter)
        return waiter

    def _checkHandshakeStatus(self) -> None:
        done = self._handshakeDone
        super()._checkHandshakeStatus()
        if self._handshakeDone and not done and self.peer_watch is not None:
            self.peer_watch.handshake_done(self)
        if self._handshakeDone and self._handshake_waiters:
            waiters, self._handshake_waiters = self._handshake_waiters, None
            for waiter in waiters:
                if not waiter.called:
                    waiter.callback(None)

    def _handshake_failed(self, reason: Any) -> None:
        waiters, self._handshake_waiters = self._handshake_waiters, None
        why = "the connection closed"
        if isinstance(reason, Failure) and not reason.check(ConnectionClosed):
            why = reason.getErrorMessage()  # (the TLS alert or the verification error)
        refused = isinstance(reason, Failure) and reason.check(Error) is not None
        for waiter in waiters or ():
            if not waiter.called:
                waiter.errback(HandshakeFailed(f"TLS handshake failed: {why}",
                                               temporary=not refused))

    def connectionLost(self, reason: Any) -> None:
        self._into_bio = self._out_bio = self._ssl = None  # the Connection goes: the stock loops
        self._c_ssl = self._c_into = self._c_out = 0
        if self._handshake_waiters:
            self._handshake_failed(self._reason or reason)
        if self.peer_watch is not None:
            self.peer_watch.lost(self)
        super().connectionLost(reason)
        transport = self.transport
        if self._eager and not transport.connected:
            # The answers the peer never took go now, not when the garbage collector finds
            # this protocol and the one it wraps (they refer to each other): a client that
            # never reads leaves up to max_unsent_output behind otherwise.
            transport.dataBuffer = b""
            transport.offset = 0
            transport._tempDataBuffer = []
            transport._tempDataLen = 0

    def _flushReceiveBIO(self) -> None:
        """As Twisted's, but it stops once OpenSSL holds no more bytes to read, rather than
        at the ``WantReadError`` one more read raises."""
        into = self._into_bio
        if into is None:
            super()._flushReceiveBIO()
            return
        if self._c_ssl and self._handshakeDone:
            self._receive(b"")
            return
        connection = self._tlsConnection
        ssl = self._ssl if self._handshakeDone else None
        while not self._lostTLSConnection:
            try:
                if ssl is not None:
                    buffer = _allocate("char[]", _RECEIVE_CHUNK)
                    got = _SSL_READ(ssl, buffer, _RECEIVE_CHUNK)
                    if got <= 0:  # pyOpenSSL says why, as its recv would have
                        connection._raise_ssl_error(ssl, got)
                        break  # (nothing to say: nothing to read)
                    data = _BUFFER(buffer, got)[:]
                else:
                    data = connection.recv(_RECEIVE_CHUNK)
            except Error as error:
                if self._read_failed(error):
                    break
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
                # Nothing decrypted waiting, nothing received unread: a read would only
                # raise WantReadError (OpenSSL reads no further ahead than one record).
                if not (_SSL_PENDING(ssl) if ssl is not None else connection.pending()
                        ) and not _buffered(into):
                    break
        self._flushSendBIO()

    def _read_failed(self, error: Error) -> bool:
        """A read raised ``error`` (pyOpenSSL's): as Twisted's loop takes it (the peer's
        close_notify shuts the connection down, any other error ends it); whether reading
        stops at once (nothing more to read now)."""
        if isinstance(error, WantReadError):
            return True
        if isinstance(error, ZeroReturnError):
            self._shutdownTLS()
            self._tlsShutdownFinished(None)
        else:
            self._tlsShutdownFinished(Failure(error))
        return False

    def _receive(self, data: bytes) -> None:
        """:meth:`_flushReceiveBIO` through :mod:`kcm._tls_calls`, ``data`` (received, not
        yet in OpenSSL) put in first: each call reads one chunk of plaintext and says
        whether more is waiting; a read that gives nothing is explained by pyOpenSSL."""
        # ``owner`` (pyOpenSSL's SSL object, which frees the SSL and its BIOs) is held for
        # the loop: the addresses stay valid whatever the protocol does meanwhile.
        receive, owner, ssl, into = _calls.receive, self._ssl, self._c_ssl, self._c_into
        connection = self._tlsConnection
        while not self._lostTLSConnection:
            plaintext, code = receive(ssl, into, data)
            data = b""
            if code <= 0:  # pyOpenSSL says why, as its recv would have
                try:
                    connection._raise_ssl_error(owner, code)
                except Error as error:
                    if self._read_failed(error):
                        break
                    continue
                break  # (nothing to say: nothing to read)
            if not self._aborted:
                ProtocolWrapper.dataReceived(self, plaintext)
            if code == 1:  # nothing decrypted waiting, nothing received unread
                break
        self._flushSendBIO()

    def dataReceived(self, data: bytes) -> None:
        if self._gathered is not None:  # re-entered (a protocol feeding itself): as is
            super().dataReceived(data)
            return
        self._gathered = []
        self._gathered_size = 0
        try:
            if self._ssl is not None and self._handshakeDone and not self._appSendBuffer:
                # Twisted's dataReceived, for a connection past its handshake with nothing
                # waiting to be written: into OpenSSL, and the plaintext out.
                if self._c_ssl:
                    self._receive(data)
                    return
                with _FROM_BUFFER(data) as view:
                    written = _BIO_WRITE(self._into_bio, view, len(data))
                if written != len(data):  # (a memory BIO takes everything, or fails)
                    self._tlsConnection._handle_bio_errors(self._into_bio, written)
                self._flushReceiveBIO()
            else:
                super().dataReceived(data)
        finally:
            gathered, self._gathered = self._gathered, None
            if gathered:
                self._write_now(gathered[0] if len(gathered) == 1 else b"".join(gathered))

    def write(self, data: bytes) -> None:
        gathered = self._gathered
        if gathered is None:
            self._write_now(data)
            return
        if self.disconnecting and self._producer is None:
            return
        gathered.append(data)
        self._gathered_size += len(data)
        if self._gathered_size > MAX_GATHERED:
            self._gathered = []
            self._gathered_size = 0
            self._write_now(b"".join(gathered))

    def acknowledge_now(self) -> None:
        """Have the kernel acknowledge what was received at once (TCP_QUICKACK, Linux).

        For a protocol holding part of a message: a client that sent the rest as a second
        segment without TCP_NODELAY (most do; Python's ``ssl`` writes each 16 KiB TLS record
        as one) holds it back until this end acknowledges the first (Nagle), and Linux delays
        that acknowledgement by up to 40 ms."""
        tcp_socket = getattr(self.transport, "socket", None)
        if tcp_socket is not None and _QUICKACK is not None:
            with contextlib.suppress(OSError):  # a socket closing meanwhile: nothing to do
                tcp_socket.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)

    def writeSequence(self, sequence: Any) -> None:
        self.write(b"".join(sequence))

    def _write_now(self, data: bytes) -> None:
        # One write may make several TLS records (16 KiB each): they leave in one send. Sent
        # one by one, a short last record would be a segment of its own: without TCP_NODELAY
        # it waits for the ACK of the one before, which the peer may delay by 40 ms.
        ssl = self._ssl
        direct = (ssl is not None and self._handshakeDone and not self._appSendBuffer
                  and not self._lostTLSConnection
                  and not (self.disconnecting and self._producer is None))
        if direct and self._c_ssl:  # one C call: the records of all that was written, sent
            fd = self._send_now_on()
            written, records = _calls.send(self._c_ssl, self._c_out, data, fd)
            if records:  # (what the socket did not take, or all of it when it could not)
                if fd >= 0:
                    self.transport.write(records)
                else:
                    self._send_records(records)
            if written == len(data):
                return
            data, direct = data[written:], False  # the rest: as Twisted writes it
        self._holding = True
        try:
            if direct:
                data = self._write_directly(ssl, data)
            if data:
                TLSMemoryBIOProtocol.write(self, data)
        finally:
            self._holding = False
        self._flushSendBIO()

    def _write_directly(self, ssl: Any, data: bytes) -> bytes:
        """Hand ``data`` to OpenSSL a record at a time; what is left when a call does not
        succeed at once (Twisted's loop repeats that call with the same bytes, as OpenSSL
        requires, and deals with the outcome)."""
        with _FROM_BUFFER(data) as view:
            sent, size = 0, len(data)
            while sent < size:
                chunk = min(size - sent, _RECORD)
                written = _SSL_WRITE(ssl, view + sent, chunk)
                if written <= 0:
                    break
                sent += written
        return data[sent:] if sent else data

    def loseConnection(self) -> None:
        gathered, self._gathered = self._gathered, None
        if gathered:
            self._write_now(b"".join(gathered))
        super().loseConnection()
        if gathered is not None:  # still inside dataReceived: later writes are dropped anyway
            self._gathered = []
            self._gathered_size = 0

    def _flushSendBIO(self) -> None:
        if self._holding:
            return
        out = self._out_bio
        if out is not None:
            if self._c_out:
                records = _calls.take(self._c_out)
                if records:
                    self._send_records(records)
                return
            waiting = _buffered(out)
            if not waiting:
                return
            if self._ssl is not None:  # all of it, in one read of that size
                buffer = _allocate("char[]", waiting)
                got = _BIO_READ(out, buffer, waiting)
                if got != waiting:  # (a memory BIO gives what it says it holds)
                    self._tlsConnection._handle_bio_errors(out, got)
                self._send_records(_BUFFER(buffer, got)[:])
                return
        try:
            records = self._tlsConnection.bio_read(_SEND_CHUNK)
        except WantReadError:
            return
        if len(records) == _SEND_CHUNK:  # more is waiting in OpenSSL's buffer
            chunks = [records]
            while len(chunks[-1]) == _SEND_CHUNK:
                try:
                    chunks.append(self._tlsConnection.bio_read(_SEND_CHUNK))
                except WantReadError:
                    break
            records = b"".join(chunks)
        self._send_records(records)

    def _send_now_on(self) -> int:
        """The descriptor of the socket when what is written may be sent on it now (an open
        Twisted TCP connection with nothing queued), else -1."""
        transport = self.transport
        if (self._eager and not transport._tempDataLen
                and transport.offset == len(transport.dataBuffer)
                and transport.connected and not transport.disconnected):
            return transport.socket.fileno()  # (-1 once closed)
        return -1

    def _send_records(self, records: bytes) -> None:
        """Send ``records`` on the socket now if nothing waits before them, else queue them
        in the TCP transport."""
        transport = self.transport
        if self._send_now_on() >= 0:
            sent = transport.writeSomeData(records)
            if isinstance(sent, int) and sent > 0:
                if sent == len(records):
                    return
                records = records[sent:]
        transport.write(records)


class HandshakeFailed(ConnectionError):
    """The TLS handshake did not complete: the connection failed or closed first.
    ``temporary``: it broke or took too long, and may succeed later; not so when either side
    refused it (a certificate not verified, no common protocol: an OpenSSL error)."""

    def __init__(self, message: str, *, temporary: bool = True) -> None:
        super().__init__(message)
        self.temporary = temporary


class EagerTLSFactory(TLSMemoryBIOFactory):
    """``TLSMemoryBIOFactory`` whose connections are :class:`EagerTLSProtocol`."""

    protocol = EagerTLSProtocol


@implementer(IStreamClientEndpoint)
class EagerTLSClientEndpoint:
    """TLS (:class:`EagerTLSProtocol`) over the connections of another client endpoint; like
    ``twisted.internet.endpoints.wrapClientTLS``.

    With ``handshake_timeout`` (seconds on ``clock``), :meth:`connect` fires only once the
    handshake has completed, and fails with :class:`HandshakeFailed` when it fails or does
    not complete in time (the connection is aborted then)."""

    def __init__(self, options: IOpenSSLClientConnectionCreator,
                 inner: IStreamClientEndpoint, *, handshake_timeout: float | None = None,
                 clock: IReactorTime | None = None) -> None:
        if handshake_timeout is not None and clock is None:
            raise ValueError("a handshake timeout needs a clock")
        self._options = options
        self._inner = inner
        self._handshake_timeout = handshake_timeout
        self._clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self._inner.connect(EagerTLSFactory(self._options, True, protocolFactory))
        if self._handshake_timeout is not None:
            connecting.addCallback(self._handshake_in_time)
        return connecting.addCallback(lambda tls: tls.wrappedProtocol)

    def _handshake_in_time(self, tls: EagerTLSProtocol) -> Deferred[EagerTLSProtocol]:
        """``tls`` once its handshake is done; aborted when that takes too long."""
        timeout = self._handshake_timeout
        assert self._clock is not None and timeout is not None
        done = tls.when_handshake_done()
        timed_out: list[bool] = []

        def give_up() -> None:
            timed_out.append(True)
            done.cancel()

        timer = self._clock.callLater(timeout, give_up)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            if timed_out and isinstance(result, Failure) and result.check(CancelledError):
                return Failure(HandshakeFailed(f"no TLS handshake within {timeout:g} s"))
            return result

        return done.addBoth(settled).addCallback(lambda _: tls)
