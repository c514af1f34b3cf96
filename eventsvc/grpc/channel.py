"""
The client half of gRPC on Twisted: unary calls as HTTP/2 streams (h2), on
one connection per target that many calls share at once.

L{ClientConnection} is the protocol: a call is a stream, its request one
length-prefixed message, its answer a message and a status in the
trailers.  L{Channel} holds at most one connection to a target, dialled
when a call first needs it and again after it is lost; nothing here
retries a call (the handler service does, with its backoff).

What a call can end with: its response message, a L{GRPCError} (the
target's status, or DEADLINE_EXCEEDED when the call's own timeout passed),
or a L{TransportError} (no connection, a TLS handshake refused, the
connection lost or the stream reset before an answer): the call may or may
not have reached the target, and trying again is safe for an
at-least-once delivery.  Nothing here blocks: h2 only turns bytes into
events.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error, NoAvailableStreamIDError
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from eventsvc.grpc import wire
from eventsvc.grpc.wire import GRPCError
from eventsvc.nats.tcp import no_delay


class TransportError(GRPCError):
    """The call got no answer from the target: no connection, or it ended first.  Always worth retrying."""

    def __init__(self, message: str) -> None:
        super().__init__(wire.UNAVAILABLE, message)


#: A reset stream's HTTP/2 error code, as a status (the gRPC document's mapping).
_RESET_STATUS: Dict[int, int] = {
    ErrorCodes.REFUSED_STREAM: wire.UNAVAILABLE,
    ErrorCodes.CANCEL: wire.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: wire.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: wire.PERMISSION_DENIED,
}


class _Call:
    """One unary call in flight: its stream, what is left to send, and what came back."""

    __slots__ = ("deferred", "headers", "trailers", "reader", "messages", "pending", "timer")

    def __init__(self, deferred: Deferred, pending: bytes, limit: int) -> None:
        self.deferred = deferred
        self.pending = pending
        self.headers: List[Tuple[str, str]] = []
        self.trailers: List[Tuple[str, str]] = []
        self.reader = wire.MessageReader(limit)
        self.messages: List[bytes] = []
        self.timer: Any = None


#: A call waiting for a stream: path, request, timeout, its Deferred.
_Queued = Tuple[str, bytes, float, Deferred]


@implementer(IHandshakeListener)
class ClientConnection(Protocol):
    """
    One HTTP/2 connection to a gRPC server, carrying unary calls.

    Its life, in C{state}: C{"open"} takes calls; C{"draining"} (the
    stream ids ran out) finishes the calls it has and takes no new ones;
    C{"closed"} is gone (lost, a protocol error, or a GOAWAY, after which
    h2 takes no frame, so every call in flight fails and is retried).
    Only this class sets it.
    Calls beyond the server's SETTINGS_MAX_CONCURRENT_STREAMS wait here, in
    order, for a stream.
    """

    log = Logger()
    transport: Any

    def __init__(self, authority: str, clock: Any, max_message: int = wire.MAX_MESSAGE,
                 lost: Optional[Callable[["ClientConnection"], None]] = None) -> None:
        self.authority = authority
        self.clock = clock
        self.max_message = max_message
        self.state = "open"
        #: Whether a TLS handshake completed (stays False on a plain connection).
        self.handshaken = False
        self._lost = lost
        self._h2 = H2Connection(H2Configuration(
            client_side=True, header_encoding=None,
            # What we send is built in wire.py, lowercase and valid: checking and
            # normalizing it again per call cost about a tenth of the CPU per
            # event (bench/grpc_events.py: 796 to 700 us with Publish).
            # What we receive is still checked.
            validate_outbound_headers=False, normalize_outbound_headers=False,
        ))
        self._calls: Dict[int, _Call] = {}
        self._queued: Deque[_Queued] = deque()

    @property
    def busy(self) -> int:
        """Calls in flight or waiting for a stream."""
        return len(self._calls) + len(self._queued)

    def connectionMade(self) -> None:
        no_delay(self.transport)
        self._h2.initiate_connection()
        self._flush()

    def handshakeCompleted(self) -> None:
        self.handshaken = True

    def call(self, path: str, request: bytes, timeout: float) -> Deferred:
        """
        Call C{path} (C{/package.Service/Method}) with one serialized
        request message; the Deferred fires with the response message.
        Cancelling it resets the stream.
        """
        d: Deferred = Deferred(self._cancelled)
        if self.state != "open":
            d.errback(TransportError("the connection to {} is {}".format(self.authority, self.state)))
            return d
        if len(self._calls) >= self._h2.remote_settings.max_concurrent_streams:
            self._queued.append((path, request, timeout, d))
            return d
        self._start(path, request, timeout, d)
        self._flush()
        return d

    def _start(self, path: str, request: bytes, timeout: float, d: Deferred) -> None:
        try:
            stream_id = self._h2.get_next_available_stream_id()
        except NoAvailableStreamIDError:
            self._drain("its stream ids are used up")
            d.errback(TransportError("no stream left on the connection to {} (a new one is dialled)".format(self.authority)))
            return
        try:
            self._h2.send_headers(stream_id, wire.request_headers(self.authority, path, timeout))
        except H2Error as e:
            self._drain("h2 refused a new stream ({})".format(e))
            d.errback(TransportError("the connection to {} takes no new call: {}".format(self.authority, e)))
            return
        call = self._calls[stream_id] = _Call(d, wire.frame(request), self.max_message)
        call.timer = self.clock.callLater(timeout, self._timed_out, stream_id, timeout)
        self._send_pending(stream_id, call)

    def _send_pending(self, stream_id: int, call: _Call) -> None:
        """As much of the request as flow control lets through; the rest waits for a WINDOW_UPDATE."""
        h2 = self._h2
        while call.pending:
            room = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
            if room <= 0:
                return
            chunk, call.pending = call.pending[:room], call.pending[room:]
            h2.send_data(stream_id, chunk, end_stream=not call.pending)

    def _cancelled(self, d: Deferred) -> None:
        for stream_id, call in list(self._calls.items()):
            if call.deferred is d:
                self._forget(stream_id)
                self._reset(stream_id, ErrorCodes.CANCEL)
                self._flush()
                return
        for queued in self._queued:
            if queued[3] is d:
                self._queued.remove(queued)
                return

    def _timed_out(self, stream_id: int, timeout: float) -> None:
        call = self._calls.get(stream_id)
        if call is None:
            return
        call.timer = None
        self._forget(stream_id)
        self._reset(stream_id, ErrorCodes.CANCEL)
        self._flush()
        call.deferred.errback(GRPCError(wire.DEADLINE_EXCEEDED, "no answer from {} in {:g}s".format(self.authority, timeout)))

    def _reset(self, stream_id: int, code: int) -> None:
        try:
            self._h2.reset_stream(stream_id, code)
        except H2Error:
            # Already closed on the server's side: nothing to reset.
            pass

    def _forget(self, stream_id: int) -> Optional[_Call]:
        """Take a call off the books, its timer stopped, and let a waiting call have its stream."""
        call = self._calls.pop(stream_id, None)
        if call is not None and call.timer is not None and call.timer.active():
            call.timer.cancel()
        self._start_queued()
        return call

    def _start_queued(self) -> None:
        limit = self._h2.remote_settings.max_concurrent_streams
        while self._queued and self.state == "open" and len(self._calls) < limit:
            self._start(*self._queued.popleft())

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except H2Error as e:
            self.log.warn("gRPC connection to {authority}: protocol error: {error}", authority=self.authority, error=e)
            self._flush()
            self._fail_all("HTTP/2 protocol error from {}: {}".format(self.authority, e))
            self.transport.loseConnection()
            return
        for event in events:
            self._event(event)
        self._flush()
        if self.state != "open" and not self._calls:
            self.transport.loseConnection()

    def _event(self, event: Any) -> None:
        call = self._calls.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if call is not None:
                try:
                    call.messages.extend(call.reader.feed(event.data))
                except GRPCError as e:
                    self._forget(event.stream_id)
                    self._reset(event.stream_id, ErrorCodes.CANCEL)
                    call.deferred.errback(e)
        elif isinstance(event, h2events.ResponseReceived):
            if call is not None:
                call.headers = wire.decode_headers(event.headers)
        elif isinstance(event, h2events.TrailersReceived):
            if call is not None:
                call.trailers = wire.decode_headers(event.headers)
        elif isinstance(event, h2events.StreamEnded):
            if call is not None:
                self._forget(event.stream_id)
                self._answered(call)
        elif isinstance(event, h2events.StreamReset):
            if call is not None:
                self._forget(event.stream_id)
                code = _RESET_STATUS.get(event.error_code, wire.INTERNAL)
                why = "{} reset the stream ({})".format(self.authority, _error_name(event.error_code))
                call.deferred.errback(TransportError(why) if code in (wire.UNAVAILABLE, wire.CANCELLED) else GRPCError(code, why))
        elif isinstance(event, h2events.WindowUpdated):
            targets = [event.stream_id] if event.stream_id else list(self._calls)
            for stream_id in targets:
                pending = self._calls.get(stream_id)
                if pending is not None and pending.pending:
                    self._send_pending(stream_id, pending)
        elif isinstance(event, h2events.RemoteSettingsChanged):
            self._start_queued()
        elif isinstance(event, h2events.ConnectionTerminated):
            # h2 closes its side of the connection on a GOAWAY and takes no
            # frame after it, so even the calls the server says it took
            # (up to last_stream_id) can get no answer here: all of them
            # fail, to be retried (a call the server finished is then
            # delivered twice: at least once), and the next call dials anew.
            self.log.info("gRPC connection to {authority}: the server said GOAWAY ({code}); {calls} calls to retry",
                          authority=self.authority, code=_error_name(event.error_code), calls=self.busy)
            self._fail_all("{} closed the connection (GOAWAY, {})".format(self.authority, _error_name(event.error_code)))

    def _answered(self, call: _Call) -> None:
        code, message = wire.status_of(call.headers, call.trailers)
        if code != wire.OK:
            call.deferred.errback(GRPCError(code, message))
        elif call.reader.partial or len(call.messages) != 1:
            call.deferred.errback(GRPCError(wire.INTERNAL, "{} answered {} messages to a unary call".format(
                self.authority, len(call.messages) + call.reader.partial)))
        else:
            call.deferred.callback(call.messages[0])

    def _drain(self, why: str) -> None:
        if self.state == "open":
            self.state = "draining"
            self.log.info("gRPC connection to {authority} draining: {why}", authority=self.authority, why=why)
            queued, self._queued = self._queued, deque()
            for _, _, _, d in queued:
                d.errback(TransportError("the connection to {} is closing: {}".format(self.authority, why)))

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data:
            self.transport.write(data)

    def _fail_all(self, why: str) -> None:
        self.state = "closed"
        calls, self._calls = self._calls, {}
        queued, self._queued = self._queued, deque()
        for call in calls.values():
            if call.timer is not None and call.timer.active():
                call.timer.cancel()
            call.deferred.errback(TransportError(why))
        for _, _, _, d in queued:
            d.errback(TransportError(why))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.handshaken or not _is_tls(self.transport):
            why = "connection to {} lost: {}".format(self.authority, _reason(reason))
        else:
            why = "TLS handshake with {} failed: {}".format(self.authority, _reason(reason))
        self._fail_all(why)
        if self._lost is not None:
            self._lost(self)


def _is_tls(transport: Any) -> bool:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    return isinstance(transport, TLSMemoryBIOProtocol)


def _reason(reason: Optional[Failure]) -> str:
    if reason is None:
        return "closed"
    return "{}: {}".format(reason.type.__name__, reason.getErrorMessage())


def _error_name(code: Any) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return "error {}".format(code)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, channel: "Channel") -> None:
        self.channel = channel

    def buildProtocol(self, addr: Any) -> ClientConnection:
        channel = self.channel
        protocol = ClientConnection(channel.authority, channel.clock, channel.max_message, channel._connection_lost)
        protocol.factory = self
        return protocol


class Channel:
    """
    At most one connection to one target, dialled through C{endpoint} when
    a call needs it; calls made while it is being dialled wait for it.  A
    connection that has carried no call for L{IDLE} seconds is closed (the
    next call dials again), so a target replaced by a reload, or one that
    gets no events for a long time, holds no socket.
    """

    log = Logger()

    #: Seconds without a call after which the connection is closed.
    IDLE = 300.0

    def __init__(self, endpoint: Any, authority: str, clock: Any, max_message: int = wire.MAX_MESSAGE) -> None:
        self.endpoint = endpoint
        self.authority = authority
        self.clock = clock
        self.max_message = max_message
        self.connection: Optional[ClientConnection] = None
        self._dialling: Optional[Deferred] = None
        self._waiting: List[_Queued] = []
        #: Connections dialled, for the logs and tests.
        self.dialled = 0
        self._last_call = 0.0
        self._idle_check: Any = None
        #: Who waits for the connection to be gone (L{close}).
        self._closing: List[Deferred] = []

    def call(self, path: str, request: bytes, timeout: float) -> Deferred:
        """A unary call on the connection, dialled first if there is none."""
        self._last_call = self.clock.seconds()
        connection = self.connection
        if connection is not None and connection.state == "open":
            return connection.call(path, request, timeout)
        d: Deferred = Deferred(self._cancel_waiting)
        self._waiting.append((path, request, timeout, d))
        if self._dialling is None:
            self.dialled += 1
            self._dialling = self.endpoint.connect(_ConnectionFactory(self))
            self._dialling.addCallbacks(self._connected, self._not_connected)
        return d

    def _cancel_waiting(self, d: Deferred) -> None:
        self._waiting = [w for w in self._waiting if w[3] is not d]

    def _connected(self, protocol: ClientConnection) -> None:
        self._dialling = None
        self.connection = protocol
        if self._idle_check is None:
            self._idle_check = self.clock.callLater(self.IDLE, self._close_if_idle)
        waiting, self._waiting = self._waiting, []
        for path, request, timeout, d in waiting:
            protocol.call(path, request, timeout).chainDeferred(d)

    def _not_connected(self, failure: Failure) -> None:
        self._dialling = None
        waiting, self._waiting = self._waiting, []
        why = "cannot connect to {}: {}".format(self.authority, _reason(failure))
        for _, _, _, d in waiting:
            d.errback(TransportError(why))

    def _close_if_idle(self) -> None:
        self._idle_check = None
        connection = self.connection
        if connection is None:
            return
        quiet = self.clock.seconds() - self._last_call
        if quiet >= self.IDLE and not connection.busy:
            self.log.debug("gRPC connection to {authority} idle for {quiet:.0f}s: closed", authority=self.authority, quiet=quiet)
            connection.transport.loseConnection()
            return
        self._idle_check = self.clock.callLater(max(self.IDLE - quiet, 1.0), self._close_if_idle)

    def _connection_lost(self, protocol: ClientConnection) -> None:
        if self.connection is protocol:
            self.connection = None
            self._stop_idle_check()
            closing, self._closing = self._closing, []
            for d in closing:
                d.callback(None)

    def _stop_idle_check(self) -> None:
        if self._idle_check is not None and self._idle_check.active():
            self._idle_check.cancel()
        self._idle_check = None

    def close(self, grace: float = 5.0) -> Deferred:
        """
        Drop the connection (calls in flight fail); the next call dials
        again.  Fires once the connection is gone (at once when there is
        none), so that a stop leaves no socket or timer behind; a
        connection still there after C{grace} seconds is aborted.
        """
        if self._dialling is not None:
            self._dialling.cancel()
        connection = self.connection
        if connection is None:
            self._stop_idle_check()
            return succeed(None)
        d: Deferred = Deferred()
        self._closing.append(d)
        self._stop_idle_check()
        connection.transport.loseConnection()
        if self.connection is connection:
            # (A TLS close waits on its close_notify being sent; a peer that
            # takes nothing more must not hold the stop.)
            abort = self.clock.callLater(grace, connection.transport.abortConnection)

            def closed(result: Any) -> Any:
                if abort.active():
                    abort.cancel()
                return result

            d.addBoth(closed)
        return d
