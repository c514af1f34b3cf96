"""
Chef Automate's C{EventService} API ([grpc] section): C{Publish} takes an
C{EventMsg} the way a NATS producer's C{event.<type>} publish is taken.

L{ServerConnection} is the server half of unary gRPC on h2: one request
message per stream, answered with one message or a status.
L{EventAPI} answers the four calls.  A published event is converted to
the JSON envelope and published on the broker's in-process API to
C{<prefix>.<type>} with a reply subject: the dispatcher validates it,
bounds the queue, spools it and acknowledges it, and C{Publish} answers
C{success: true} only then.  A refusal is a status with the dispatcher's
reason.  Nothing here touches the event layer's objects, and nothing
blocks.

The listener requires a client certificate from the [tls] CA, as
Automate's does; a client refused at the handshake is logged.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from h2 import events as h2events
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import H2Error
from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from eventsvc import wirejson
from eventsvc.events import types
from eventsvc.grpc import wire
from eventsvc.grpc.convert import to_event
from eventsvc.grpc.generated import event_pb2
from eventsvc.grpc.wire import GRPCError
from eventsvc.nats import limits
from eventsvc.nats.tcp import no_delay
from eventsvc.nats.timers import cancel

#: A unary method: the request message in, a Deferred (or value) of the response message out.
Method = Callable[[bytes], Any]


class _Stream:
    __slots__ = ("path", "reader", "messages", "answering")

    def __init__(self, path: str, limit: int) -> None:
        self.path = path
        self.reader = wire.MessageReader(limit)
        self.messages: List[bytes] = []
        self.answering: Optional[Deferred] = None


@implementer(IHandshakeListener)
class ServerConnection(Protocol):
    """One HTTP/2 connection from a gRPC client; each stream a unary call to one of C{methods}, by path."""

    log = Logger()
    transport: Any

    def __init__(self, methods: Dict[str, Method], max_message: int = wire.MAX_MESSAGE, clock: Any = None,
                 handshake_timeout: float = limits.TLS_TIMEOUT) -> None:
        self.methods = methods
        self.max_message = max_message
        self.clock = clock
        self.handshake_timeout = handshake_timeout
        self._handshake_deadline: Any = None
        self.handshaken = False
        self._h2 = H2Connection(H2Configuration(
            client_side=False, header_encoding=None,
            # What we send is built in wire.py, lowercase and valid: checking and
            # normalizing it again per call cost about a tenth of the CPU per
            # event (bench/grpc_events.py: 796 to 700 us with Publish).
            # What we receive is still checked.
            validate_outbound_headers=False, normalize_outbound_headers=False,
        ))
        self._streams: Dict[int, _Stream] = {}
        #: Answers not yet sent whole (flow control), by stream.
        self._sending: Dict[int, bytes] = {}
        self._closed = False

    def connectionMade(self) -> None:
        no_delay(self.transport)
        factory = getattr(self, "factory", None)
        if factory is not None:
            factory.live.add(self)
        if self.clock is not None and _is_tls(self.transport):
            # A client that never finishes its handshake holds a socket for nothing.
            self._handshake_deadline = self.clock.callLater(self.handshake_timeout, self._handshake_too_slow)
        self._h2.initiate_connection()
        self._flush()

    def _handshake_too_slow(self) -> None:
        self._handshake_deadline = None
        self.log.info("gRPC client {peer}: no TLS handshake in {seconds:g}s; closed", peer=_peer(self.transport),
                      seconds=self.handshake_timeout)
        self.transport.abortConnection()

    def handshakeCompleted(self) -> None:
        self.handshaken = True
        self._handshake_deadline = cancel(self._handshake_deadline)

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except H2Error as e:
            self.log.info("gRPC client {peer}: HTTP/2 protocol error: {error}", peer=_peer(self.transport), error=e)
            self._flush()
            self.transport.loseConnection()
            return
        for event in events:
            self._event(event)
        self._flush()

    def _event(self, event: Any) -> None:
        if isinstance(event, h2events.RequestReceived):
            headers = dict(wire.decode_headers(event.headers))
            path = headers.get(":path", "")
            if headers.get(":method") != "POST" or not headers.get("content-type", "").startswith("application/grpc"):
                try:
                    self._h2.send_headers(event.stream_id, [(":status", "415")], end_stream=True)
                except H2Error:
                    pass
                return
            if path not in self.methods:
                self._status(event.stream_id, wire.UNIMPLEMENTED, "unknown method {}".format(path))
                return
            if headers.get("grpc-encoding", "identity") != "identity":
                self._status(event.stream_id, wire.UNIMPLEMENTED, "grpc-encoding {} is not supported".format(headers["grpc-encoding"]))
                return
            self._streams[event.stream_id] = _Stream(path, self.max_message)
        elif isinstance(event, h2events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.answering is None:
                try:
                    stream.messages.extend(stream.reader.feed(event.data))
                except GRPCError as e:
                    del self._streams[event.stream_id]
                    self._status(event.stream_id, e.code, e.message)
        elif isinstance(event, h2events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.answering is None:
                if len(stream.messages) != 1 or stream.reader.partial:
                    del self._streams[event.stream_id]
                    self._status(event.stream_id, wire.INTERNAL, "a unary call takes one request message")
                    return
                self._call(event.stream_id, stream)
        elif isinstance(event, h2events.WindowUpdated):
            for stream_id in [event.stream_id] if event.stream_id else list(self._sending):
                if stream_id in self._sending:
                    self._send_pending(stream_id)
        elif isinstance(event, h2events.StreamReset):
            self._sending.pop(event.stream_id, None)
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None and stream.answering is not None:
                stream.answering.cancel()
        elif isinstance(event, h2events.ConnectionTerminated):
            self.transport.loseConnection()

    def _call(self, stream_id: int, stream: _Stream) -> None:
        d = stream.answering = maybeDeferred(self.methods[stream.path], stream.messages[0])
        d.addCallbacks(self._answer, self._refuse, callbackArgs=(stream_id,), errbackArgs=(stream_id,))

    def _answer(self, response: bytes, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is None or self._closed:
            return
        try:
            self._h2.send_headers(stream_id, wire.response_headers())
        except H2Error:
            # The client reset the stream meanwhile; no one to answer.
            return
        self._sending[stream_id] = wire.frame(response)
        self._send_pending(stream_id)
        self._flush()

    def _send_pending(self, stream_id: int) -> None:
        """The answer as flow control lets it through, then the trailers; the rest waits for a WINDOW_UPDATE."""
        h2 = self._h2
        pending = self._sending.get(stream_id)
        try:
            while pending:
                room = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
                if room <= 0:
                    self._sending[stream_id] = pending
                    return
                h2.send_data(stream_id, pending[:room])
                pending = pending[room:]
            del self._sending[stream_id]
            h2.send_headers(stream_id, wire.trailers(wire.OK), end_stream=True)
        except H2Error:
            self._sending.pop(stream_id, None)

    def _refuse(self, failure: Failure, stream_id: int) -> None:
        if self._streams.pop(stream_id, None) is None or self._closed:
            return
        if failure.check(GRPCError):
            error = failure.value
        else:
            self.log.failure("gRPC call failed", failure)
            error = GRPCError(wire.INTERNAL, "{}: {}".format(failure.type.__name__, failure.getErrorMessage()))
        self._status(stream_id, error.code, error.message)
        self._flush()

    def _status(self, stream_id: int, code: int, message: str) -> None:
        """A trailers-only answer: the status, and no message."""
        try:
            self._h2.send_headers(stream_id, wire.response_headers() + wire.trailers(code, message), end_stream=True)
        except H2Error:
            pass

    def _flush(self) -> None:
        if self._closed:
            return
        data = self._h2.data_to_send()
        if data:
            self.transport.write(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._closed = True
        factory = getattr(self, "factory", None)
        if factory is not None:
            factory.lost(self)
        self._handshake_deadline = cancel(self._handshake_deadline)
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            if stream.answering is not None:
                stream.answering.cancel()
        if not self.handshaken and _is_tls(self.transport):
            self.log.warn(
                "gRPC client {peer} refused: TLS handshake failed ({reason}); the [grpc] API requires a client "
                "certificate from the [tls] CA",
                peer=_peer(self.transport), reason=reason.getErrorMessage() if reason is not None else "closed",
            )


def _peer(transport: Any) -> str:
    try:
        address = transport.getPeer()
        return "{}:{}".format(address.host, address.port)
    except Exception:
        return "?"


def _is_tls(transport: Any) -> bool:
    from twisted.protocols.tls import TLSMemoryBIOProtocol

    return isinstance(transport, TLSMemoryBIOProtocol)


#: How a refusal from the dispatcher maps to a status, by its C{reason}
#: (anything else, "invalid" above all, is INVALID_ARGUMENT).
_REFUSALS: Dict[str, int] = {
    "queue_full": wire.RESOURCE_EXHAUSTED,
    # The spool's disk is full: room comes back as events are delivered.
    "store_full": wire.RESOURCE_EXHAUSTED,
    "store_read_only": wire.UNAVAILABLE,
    "no_handler": wire.FAILED_PRECONDITION,
}

SERVICE = "chef.automate.domain.event.api.EventService"


class EventAPI:
    """
    The four calls of Automate's C{EventService}.  C{Publish} goes through
    the broker as described above; C{Subscribe}, C{Start} and C{Stop}
    answer an empty response and change nothing, as Automate's do in
    effect (its Subscribe does nothing; Start and Stop restart or stop an
    internal loop that here is always running and that no caller should
    be able to stop).
    """

    log = Logger()

    def __init__(self, broker: Any, clock: Any, prefix: str = "event", timeout: float = 30.0) -> None:
        self.broker = broker
        self.clock = clock
        self.prefix = prefix
        self.timeout = timeout
        self._inbox = "_INBOX.grpc-{}".format(id(self))
        self._sequence = 0
        self._waiting: Dict[str, Tuple[Deferred, Any]] = {}
        self._subscription: Any = None
        #: Publish calls acknowledged, and refused.
        self.published = self.refused = 0

    def methods(self) -> Dict[str, Method]:
        return {
            "/{}/Publish".format(SERVICE): self.publish,
            "/{}/Subscribe".format(SERVICE): lambda request: event_pb2.SubscribeResponse().SerializeToString(),
            "/{}/Start".format(SERVICE): lambda request: event_pb2.StartResponse().SerializeToString(),
            "/{}/Stop".format(SERVICE): lambda request: event_pb2.StopResponse().SerializeToString(),
        }

    def start(self) -> None:
        self._subscription = self.broker.subscribe(self._inbox + ".*", self._acknowledged)

    def stop(self) -> None:
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
        waiting, self._waiting = self._waiting, {}
        for d, timer in waiting.values():
            if timer.active():
                timer.cancel()
            d.errback(GRPCError(wire.UNAVAILABLE, "the service is stopping"))

    def publish(self, request: bytes) -> Deferred:
        """
        C{Publish(PublishRequest)}: C{success: true} once the event is
        kept; a request with no message is answered C{success: false}, as
        Automate does.
        """
        try:
            msg = event_pb2.PublishRequest.FromString(request)
        except Exception as e:  # protobuf's DecodeError, or worse on a hostile message
            raise GRPCError(wire.INVALID_ARGUMENT, "not a PublishRequest: {}".format(e))
        if not msg.HasField("msg"):
            return _done(event_pb2.PublishResponse(success=False).SerializeToString())
        try:
            event = types.validate(to_event(msg.msg))
        except types.EventError as e:
            self.refused += 1
            raise GRPCError(wire.INVALID_ARGUMENT, str(e))
        payload = json.dumps(event, separators=(",", ":")).encode("utf-8")
        self._sequence += 1
        reply = "{}.{}".format(self._inbox, self._sequence)
        d: Deferred = Deferred(lambda _: self._drop(reply))
        timer = self.clock.callLater(self.timeout, self._timed_out, reply)
        self._waiting[reply] = (d, timer)
        subject = "{}.{}".format(self.prefix, event["type"]["name"])
        if not self.broker.publish(subject, payload, reply=reply):
            self._forget(reply)
            raise GRPCError(wire.UNAVAILABLE, "no event service is taking {} events (is the service starting or stopping?)".format(subject))
        return d

    def _drop(self, reply: str) -> None:
        self._forget(reply)

    def _forget(self, reply: str) -> Optional[Deferred]:
        entry = self._waiting.pop(reply, None)
        if entry is None:
            return None
        d, timer = entry
        if timer.active():
            timer.cancel()
        return d

    def _timed_out(self, reply: str) -> None:
        d = self._forget(reply)
        if d is not None:
            d.errback(GRPCError(wire.DEADLINE_EXCEEDED, "the event was not acknowledged in {:g}s; it may still be kept".format(self.timeout)))

    def _acknowledged(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        d = self._forget(subject)
        if d is None:
            return
        try:
            answer = wirejson.loads(payload)
        except ValueError:
            answer = {}
        if isinstance(answer, dict) and answer.get("success") is True:
            self.published += 1
            d.callback(event_pb2.PublishResponse(success=True).SerializeToString())
            return
        self.refused += 1
        if not isinstance(answer, dict):
            answer = {}
        error = str(answer.get("error", "refused"))
        code = _REFUSALS.get(str(answer.get("reason")), wire.INVALID_ARGUMENT)
        d.errback(GRPCError(code, error))


def _done(value: bytes) -> Deferred:
    d: Deferred = Deferred()
    d.callback(value)
    return d


class _ServerFactory(Factory):
    noisy = False

    def __init__(self, methods: Dict[str, Method], max_message: int, clock: Any, handshake_timeout: float = limits.TLS_TIMEOUT) -> None:
        self.methods = methods
        self.max_message = max_message
        self.clock = clock
        #: Seconds a client has to finish its TLS handshake ([tls] timeout).
        self.handshake_timeout = handshake_timeout
        #: Connections open now.
        self.live: Set[ServerConnection] = set()
        self._all_lost: List[Deferred] = []

    def lost(self, connection: ServerConnection) -> None:
        self.live.discard(connection)
        if not self.live:
            waiting, self._all_lost = self._all_lost, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> Deferred:
        """Close every connection; fires once they are all gone."""
        d: Deferred = Deferred()
        if not self.live:
            d.callback(None)
            return d
        self._all_lost.append(d)
        for connection in list(self.live):
            connection.transport.loseConnection()
        return d

    def buildProtocol(self, addr: Any) -> ServerConnection:
        protocol = ServerConnection(self.methods, self.max_message, self.clock, self.handshake_timeout)
        protocol.factory = self
        return protocol


class GRPCListener(Service):
    """The [grpc] listener: C{EventService} over mutual TLS (C{tls}: server options that require a client certificate)."""

    log = Logger()

    def __init__(self, api: EventAPI, host: str, port: int, tls: Any, reactor: Any, where: str, max_message: int = wire.MAX_MESSAGE,
                 handshake_timeout: float = limits.TLS_TIMEOUT) -> None:
        self.setName("grpc")
        self.api = api
        self.host = host
        self.port = port
        self.tls = tls
        self.reactor = reactor
        self.where = where
        self.max_message = max_message
        self.handshake_timeout = handshake_timeout
        self.listening: Any = None
        self.connections: Optional[_ServerFactory] = None

    def startService(self) -> None:
        from twisted.internet.error import CannotListenError
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from eventsvc.nats.listener import ListenError

        self.connections = _ServerFactory(self.api.methods(), self.max_message, self.reactor, self.handshake_timeout)
        factory = TLSMemoryBIOFactory(self.tls, False, self.connections)
        try:
            self.listening = self.reactor.listenTCP(self.port, factory, interface=self.host)
        except CannotListenError as e:
            raise ListenError("cannot listen on {}:{} (set by {}): {}".format(self.host, self.port, self.where, e.socketError))
        super().startService()
        self.api.start()
        address = self.listening.getHost()
        self.log.info(
            "grpc listening for Chef Automate's EventService (Publish) on {host}:{port}: mutual TLS, client certificates "
            "from the [tls] CA", host=address.host, port=address.port,
        )

    def stopService(self) -> Any:
        from twisted.internet.defer import DeferredList

        super().stopService()
        self.api.stop()
        waits = []
        if self.listening is not None:
            port, self.listening = self.listening, None
            waits.append(port.stopListening())
        if self.connections is not None:
            # Publish calls in flight were just answered UNAVAILABLE; the
            # clients redial the next start.
            connections = self.connections
            closed = connections.close_all()
            closed.addTimeout(2.0, self.reactor)
            # A client that does not finish the TLS goodbye is cut off.
            closed.addErrback(lambda _: [c.transport.abortConnection() for c in list(connections.live)] and None)
            waits.append(closed)
        return DeferredList([d for d in waits if d is not None])
