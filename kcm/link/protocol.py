"""One end of a link connection: framing, dispatch, heartbeats, GOAWAY (docs/link-protocol.md).

:class:`LinkProtocol` is what the gateway's and the core's ends share. It frames the byte
stream with :class:`kcm.ttlv.framer.Framer`, decodes each frame and calls the subclass's
``frame_<TYPE>`` method (``frame_REQUEST``, ``frame_EVENT``, ...), or :meth:`frame_unexpected`
when there is none. It answers PING with PONG, sends a PING every heartbeat interval and
declares the link dead when nothing at all arrived for :data:`MISSED_HEARTBEATS` intervals.
Time comes from an injected ``IReactorTime``.

A malformed frame ends the connection with a GOAWAY naming the reason: after one the byte
stream cannot be trusted any more. Frames are bounded by ``max_frame_size`` (from the end's
``limits.max_message_size``, :func:`kcm.link.frames.frame_size_limit`) both ways, and a frame
over it never ends the link by itself: :meth:`LinkProtocol.send` refuses to write one
(:class:`FrameTooLarge`, so that the caller answers its stream some other way), and one
received is skipped unread and handed to :meth:`LinkProtocol.frame_oversized`, where an end
fails the stream it belongs to; only a frame that belongs to no stream the end can fail ends
the link.
"""

from __future__ import annotations

import itertools

from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from kcm.link.framer import LinkFramer, OversizedFrame
from kcm.link.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    FRAME_HEAD_SIZE,
    Frame,
    FrameError,
    FrameTooLarge,
    FrameType,
    decode_frame,
    encode_frame,
    peek_frame_head,
)
from kcm.peer_address import peer_label
from kcm.ttlv.errors import TtlvError

log = Logger()

#: A link with nothing received for this many heartbeat intervals is dead.
MISSED_HEARTBEATS = 3
#: FETCH_SERVICE_KEYs one link may have waiting at the core (kcm-core refuses one more at
#: once); a gateway never has more in flight on a link, whatever its ``max_in_flight``.
MAX_LINK_FETCHES = 1024
#: FETCH_TOMBSTONES a gateway has in flight on one link at most (one per version at a time;
#: link version 9); the core refuses one beyond (General Failure, busy).
MAX_LINK_PAGES = 4
DEFAULT_HEARTBEAT_INTERVAL = 1.0


class LinkProtocol(Protocol):
    """The machinery of one link connection; subclasses add ``frame_<TYPE>`` handlers."""

    #: A frame type this end takes larger than ``max_frame_size``, and up to what size
    #: (:class:`~kcm.link.framer.LinkFramer`'s ``big``: a gateway's CRLS); None: none.
    big_frame: tuple[FrameType, int] | None = None

    def __init__(self, clock: IReactorTime, *, heartbeat_interval: float =
                 DEFAULT_HEARTBEAT_INTERVAL, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        #: Whether the link was closed because the peer went silent (missed heartbeats).
        self.went_silent = False
        self.max_frame_size = max_frame_size
        #: Whether this end stopped reading the connection (silence then proves nothing).
        self.reading_paused = False
        self._framer = LinkFramer(max_frame_size, self.big_frame)
        self._heartbeat: LoopingCall | None = None
        self._ping_ids = itertools.count(1)
        self._last_received = 0.0
        self.closing = False
        self.peer = "?"
        #: Whether this end sends its PINGs yet. Both ends send none before WELCOME (the
        #: gateway's answer to WELCOME, VERSION, is then the first frame the core reads
        #: after it: the core holds its event stream until then, kcm.core.link_server);
        #: silence is still judged, and the gateway gives up a link not welcomed in time.
        self.pinging = True

    # Connection life ----------------------------------------------------------------------
    def connectionMade(self) -> None:
        self.peer = peer_label(self.transport.getPeer())
        self._last_received = self.clock.seconds()
        self.start_heartbeat(self.heartbeat_interval)

    def start_heartbeat(self, interval: float) -> None:
        """(Re)start heartbeats every ``interval`` seconds; dead after 3 silent intervals."""
        self.heartbeat_interval = interval
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = self.clock
        self._heartbeat.start(interval, now=False)

    def connectionLost(self, reason: Failure) -> None:
        self.closing = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        self.link_lost(reason)

    def link_lost(self, reason: Failure) -> None:
        """Called once when the connection is gone, whatever the cause."""

    # Input ----------------------------------------------------------------------------------
    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self._last_received = self.clock.seconds()
        try:
            messages = self._framer.feed(data)
        except TtlvError as e:
            self.go_away(f"unreadable frame: {e.reason}")
            return
        for wire in messages:
            if self.closing:
                return
            if isinstance(wire, OversizedFrame):
                self.frame_oversized(wire)
            else:
                self.frame_received(wire)
        broken = self._framer.error
        if broken is not None:  # after the frames that came whole before it
            self.go_away(f"unreadable frame: {broken.reason}")

    def frame_received(self, wire: bytes) -> None:
        """One whole frame of at most :attr:`max_frame_size` bytes: decoded and handed to
        its ``frame_<TYPE>`` method (a malformed one ends the link). An end may read the
        frames it relays straight from ``wire`` first, and leave the rest to this."""
        try:
            # (only the framer's big frame type is handed out larger than the limit)
            frame = decode_frame(wire, max_size=max(self.max_frame_size, len(wire)))
        except FrameError as e:
            self.go_away(str(e))
            return
        handler = getattr(self, "frame_" + frame.type.name, None)
        if handler is None:
            self.frame_unexpected(frame)
        else:
            handler(frame)

    def frame_oversized(self, frame: OversizedFrame) -> None:
        """A frame over :attr:`max_frame_size` arrived and was skipped. Subclasses fail the
        stream it belongs to where they can; here, it ends the link."""
        kind = frame.frame_type.name if frame.frame_type is not None else "link"
        self.go_away(f"a {kind} frame of {frame.size} bytes exceeds the maximum of "
                     f"{self.max_frame_size}")

    def frame_unexpected(self, frame: Frame) -> None:
        """A frame this end does not take: a protocol error that ends the link."""
        self.go_away(f"unexpected {frame.type.name} frame")

    def frame_PING(self, frame: Frame) -> None:
        self.send(Frame(FrameType.PONG, stream_id=frame.stream_id))

    def frame_PONG(self, frame: Frame) -> None:
        """Liveness is any received byte; a PONG needs nothing more."""

    def frame_GOAWAY(self, frame: Frame) -> None:
        log.info("link peer {peer} went away: {reason}", peer=self.peer,
                 reason=frame.error or "no reason given")
        self.close()

    # Output ---------------------------------------------------------------------------------
    def send(self, frame: Frame) -> None:
        """Write one frame (dropped once the link is closing). A frame over
        :attr:`max_frame_size` is not written: :class:`FrameTooLarge` is raised instead, for
        the caller to answer its stream otherwise (the peer would not take it)."""
        if not self.closing:
            wire = encode_frame(frame)
            if len(wire) > self.max_frame_size:
                raise FrameTooLarge(frame.type, frame.stream_id, len(wire), self.max_frame_size)
            self.transport.write(wire)

    def send_wire(self, wire: bytes) -> None:
        """Write an already encoded frame (one encoding fanned out to many links); over
        :attr:`max_frame_size`, :class:`FrameTooLarge` as :meth:`send`."""
        if not self.closing:
            if len(wire) > self.max_frame_size:
                frame_type, stream_id = peek_frame_head(wire[:FRAME_HEAD_SIZE])
                raise FrameTooLarge(frame_type, stream_id, len(wire), self.max_frame_size)
            self.transport.write(wire)

    def go_away(self, reason: str) -> None:
        """Tell the peer why, then close."""
        if self.closing:
            return
        log.info("closing link {peer}: {reason}", peer=self.peer, reason=reason)
        self.send(Frame(FrameType.GOAWAY, error=reason))
        self.close()

    def close(self, *, abort: bool = False) -> None:
        """Close the connection (``abort``: without flushing what is still buffered)."""
        if self.closing:
            return
        self.closing = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if abort:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    # Heartbeats -----------------------------------------------------------------------------
    def _beat(self) -> None:
        now = self.clock.seconds()
        if self.reading_paused:  # nothing is read: silence says nothing of the peer
            self._last_received = now
        silent = now - self._last_received
        if silent >= MISSED_HEARTBEATS * self.heartbeat_interval:
            log.warn("link {peer} is dead: nothing received for {silent:.1f}s",
                     peer=self.peer, silent=silent)
            self.went_silent = True
            self.close(abort=True)
            return
        if self.pinging:
            self.send(Frame(FrameType.PING, stream_id=next(self._ping_ids) & 0x7FFFFFFF or 1))
        self.heartbeat_tick()

    def heartbeat_tick(self) -> None:
        """Called every heartbeat interval while the link lives (for periodic checks)."""
