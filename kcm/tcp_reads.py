"""TCP and Unix stream transports whose reads do not depend on their ``bufferSize``.

Twisted's TCP transport uses ``bufferSize`` twice: as the size of every ``recv`` and as
the amount of unsent output above which it pauses its producer. kcm's KMIP listeners set
it to ``max_unsent_output`` (4 MiB by default, :mod:`kcm.connection_guard`) for the
second meaning, which also made every read ask the kernel for 4 MiB. Python allocates
that much for each ``recv`` and shrinks it to what arrived. Whether glibc serves such an
allocation from the heap or with ``mmap`` depends on what the process freed before, so
some processes paid an ``mmap``, an ``mremap`` and a ``munmap`` (and a page fault) on
every request, and others of the same program did not: 20–30 µs per request, at random
per process (measured on two gateway workers of one run, ``strace -c``).

:func:`read_into_shared_buffer` gives a connected transport a read that takes at most
:data:`READ_SIZE` bytes into one buffer the reactor's thread shares between all such
transports, and copies out only what arrived. Flow control keeps its ``bufferSize``.

A Unix stream connection of Twisted's (``unix.Server``, a ``tcp.Connection`` too: a
``unix:`` or ``fd:`` Unix KMIP listener's, handed to a worker or not) reads with
``recvmsg`` of ``bufferSize`` bytes, for the descriptors a peer may send along: the same
4 MiB allocation, the same ``mmap``/``mremap``/``munmap`` on every request (measured:
kcm-gateway's workers on a Unix socket spent twice their CPU per request over TCP). It
gets the same read, unless its protocol takes descriptors (``IFileDescriptorReceiver``):
a plain read has the kernel discard any descriptor sent, as Twisted closed them for such
a protocol.
"""

from __future__ import annotations

from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import main, tcp, unix
from twisted.internet.interfaces import IFileDescriptorReceiver

__all__ = ["READ_SIZE", "read_into_shared_buffer"]

#: The most a transport reads at once (Twisted's own default read size).
READ_SIZE = 1 << 16

# One buffer for every transport: reads happen on the reactor's thread only, and each
# read's bytes are copied out before the next read.
_BUFFER = bytearray(READ_SIZE)
_VIEW = memoryview(_BUFFER)

_CLASSES: dict[type, type] = {}
#: The reads replaced: a TCP connection's, and a Unix stream connection's (recvmsg).
_REPLACED = (tcp.Connection.doRead, unix._SendmsgMixin.doRead)


def _read_into_buffer(self: Any) -> Any:
    """``tcp.Connection.doRead``, reading into the shared buffer."""
    try:
        got = self.socket.recv_into(_BUFFER)
    except OSError as error:
        if error.args[0] == EWOULDBLOCK:
            return None
        return main.CONNECTION_LOST
    return self._dataReceived(_VIEW[:got].tobytes() if got else b"")


def _reading_class(base: type) -> type:
    cls = _CLASSES.get(base)
    if cls is None:
        cls = _CLASSES[base] = type(base.__name__, (base,), {
            "doRead": _read_into_buffer, "__module__": base.__module__,
            "__doc__": base.__doc__})
    return cls


def read_into_shared_buffer(transport: object) -> bool:
    """Make ``transport`` (a connected Twisted TCP or Unix stream transport) read at most
    :data:`READ_SIZE` bytes at a time into the shared buffer, whatever its
    ``bufferSize``. Returns whether it does. Any other transport is left as it is
    (False), and so is a Unix one whose protocol receives file descriptors."""
    base = type(transport)
    if base in _CLASSES.values():
        return True
    if not isinstance(transport, tcp.Connection) or base.doRead not in _REPLACED:
        return False
    if IFileDescriptorReceiver.providedBy(getattr(transport, "protocol", None)):
        return False
    transport.__class__ = _reading_class(base)
    return True
