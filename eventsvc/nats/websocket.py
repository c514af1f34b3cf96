"""
NATS over WebSocket, as nats-server 2.9's websocket listener speaks it.

Browsers (nats.js's C{wsconnect}, nats.ws) cannot open a TCP socket; they
open a WebSocket and send the NATS protocol in its messages.  autobahn
does the HTTP upgrade and the framing (masking, fragments, control frames,
permessage-deflate); this module only joins it to the connection parts
every listener shares:

  - L{NATSOverWebSocket} is the raw connection.  Once the upgrade is done
    it builds a L{ClientConnection} and hands it a L{MessageTransport}, so
    the client connection sees a transport like any other: what it writes
    goes out as one binary message per write, and each frame's payload is
    fed to its parser as it arrives (a message is never gathered whole);
  - L{OriginPolicy} (L{eventsvc.nats.origins}) is nats-server's origin
    check, made at the upgrade: a refused origin gets 403;
  - L{WebSocketFactory} builds them for one listener, over the listener's
    L{ClientFactory} (its limits, its authenticator, its live set).

Everything else (CONNECT, authentication, permissions, max_payload, slow
consumers, PING/PONG) is the client connection's, as on the TCP listeners.
Timers are the listener's clock, not autobahn's: its own opening and
closing handshake timers are switched off.
"""

from __future__ import annotations

from typing import Any, Optional

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from eventsvc.nats.client import ClientConnection
from eventsvc.nats.origins import OriginPolicy
from eventsvc.nats.timers import cancel

#: Close codes by nats-server's reason (client.go's ClosedState strings),
#: as its wsEnqueueCloseMessage chooses them.
NORMAL, GOING_AWAY, PROTOCOL_ERROR, POLICY_VIOLATION = 1000, 1001, 1002, 1008
MESSAGE_TOO_BIG, ABNORMAL, INTERNAL_ERROR = 1009, 1006, 1011
CLOSE_CODES = {
    "Client Closed": NORMAL,
    "Authentication Timeout": POLICY_VIOLATION,
    "Authentication Failure": POLICY_VIOLATION,
    "Slow Consumer (Pending Bytes)": POLICY_VIOLATION,
    "Slow Consumer (Write Deadline)": POLICY_VIOLATION,
    "Maximum Connections Exceeded": POLICY_VIOLATION,
    "Maximum Control Line Exceeded": POLICY_VIOLATION,
    "Maximum Subscriptions Exceeded": POLICY_VIOLATION,
    "Parse Error": PROTOCOL_ERROR,
    "Protocol Violation": PROTOCOL_ERROR,
    "Bad Client Protocol Version": PROTOCOL_ERROR,
    "Maximum Message Payload Exceeded": MESSAGE_TOO_BIG,
    "Server Shutdown": GOING_AWAY,
    "Stale Connection": ABNORMAL,
    "Read Error": ABNORMAL,
    "Write Error": ABNORMAL,
}

#: nats-server compresses only messages longer than this (wsCompressThreshold).
COMPRESS_THRESHOLD = 64
#: Seconds the peer has to answer our close frame before the socket is dropped.
CLOSE_TIMEOUT = 1.0


def _accept_deflate(offers: Any) -> Any:
    """
    permessage-deflate, as nats-server answers it: no context takeover on
    either side (each message compressed on its own, no window kept per
    connection).
    """
    for offer in offers:
        if isinstance(offer, PerMessageDeflateOffer):
            return PerMessageDeflateOfferAccept(
                offer, request_no_context_takeover=offer.accept_no_context_takeover, no_context_takeover=True
            )
    return None


class MessageTransport:
    """
    What a client connection writes to: each write one binary WebSocket
    message; closing sends a close frame with nats-server's code for the
    reason.  Flow control is the socket's: producers register with, and
    reading pauses on, the transport under the WebSocket.
    """

    def __init__(self, websocket: "NATSOverWebSocket") -> None:
        self.websocket = websocket
        #: The socket (TCP or TLS) under the WebSocket (tcp.no_delay walks down to it).
        self.transport = websocket.transport

    def write(self, data: bytes) -> None:
        if data:
            self.websocket.send_binary(data)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.websocket.close_with(_reason(self.websocket.client))

    def abortConnection(self) -> None:
        self.websocket.drop()

    def getPeer(self) -> Any:
        return self.transport.getPeer()

    def getHost(self) -> Any:
        return self.transport.getHost()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.transport.unregisterProducer()

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()


def _reason(client: Optional[ClientConnection]) -> str:
    return client.close_reason if client is not None and client.close_reason else "Client Closed"


class NATSOverWebSocket(WebSocketServerProtocol):
    """One WebSocket connection carrying one NATS client."""

    log = Logger()
    factory: "WebSocketFactory"
    #: TCP or TLS: more than ITransport says (producers, abort).
    transport: Any

    def __init__(self) -> None:
        super().__init__()
        self.client: Optional[ClientConnection] = None
        self._timer: Any = None
        self._compress = False

    # -- the upgrade ------------------------------------------------------------

    def connectionMade(self) -> None:
        super().connectionMade()
        clock, timeout = self.factory.clock, self.factory.handshake_timeout
        if timeout:
            self._timer = clock.callLater(timeout, self._upgrade_timed_out)

    def _upgrade_timed_out(self) -> None:
        self._timer = None
        if self.client is None:
            peer = self.transport.getPeer()
            self.log.info(
                "WebSocket upgrade from {host}:{port} timed out", host=getattr(peer, "host", ""), port=getattr(peer, "port", 0)
            )
            self.transport.abortConnection()

    def onConnect(self, request: Any) -> Any:
        """The upgrade request: refused (403) from an origin the policy does not allow."""
        headers = request.headers
        origin = headers.get("origin", "") or headers.get("sec-websocket-origin", "")
        why = self.factory.origins.refusal(origin, headers.get("host", ""), self.factory.isSecure)
        if why is not None:
            self.log.info(
                "WebSocket upgrade from {peer} refused: origin {origin!r} not allowed ({why})",
                peer=request.peer, origin=origin, why=why,
            )
            raise ConnectionDeny(403, "origin not allowed: {}".format(why))
        return None

    def onOpen(self) -> None:
        self._timer = cancel(self._timer)
        self._compress = self._perMessageCompress is not None
        client = self.factory.clients.buildProtocol(self.transport.getPeer())
        client.websocket = True
        self.client = client
        client.makeConnection(MessageTransport(self))

    # -- input: each frame's payload to the parser as it comes ------------------

    def onMessageFrameData(self, payload: bytes) -> None:
        client = self.client
        if client is not None and payload and not self.failedByMe:
            client.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        self.frame_data = None  # type: ignore[assignment]

    def onMessageEnd(self) -> None:
        pass

    # -- output -------------------------------------------------------------------

    def send_binary(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True, doNotCompress=not self._compress or len(data) <= COMPRESS_THRESHOLD)

    def close_with(self, reason: str) -> None:
        """A close frame with nats-server's code and reason, then the socket goes after CLOSE_TIMEOUT at most."""
        if self.state != self.STATE_OPEN:
            self.transport.loseConnection()
            return
        self.sendCloseFrame(code=CLOSE_CODES.get(reason, INTERNAL_ERROR), reasonUtf8=reason.encode("utf-8")[:120])
        self._timer = cancel(self._timer)
        self._timer = self.factory.clock.callLater(CLOSE_TIMEOUT, self.transport.loseConnection)

    def drop(self) -> None:
        self.transport.abortConnection()

    # -- the end --------------------------------------------------------------------

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._timer = cancel(self._timer)
        super().connectionLost(reason)
        client, self.client = self.client, None
        if client is not None:
            clean = self.wasClean or reason is None or reason.check(ConnectionDone) is not None
            client.connectionLost(Failure(ConnectionDone()) if clean else reason or Failure(ConnectionLost()))


class WebSocketFactory(WebSocketServerFactory):
    """
    Builds L{NATSOverWebSocket}s for one listener.  C{clients} is the
    listener's L{ClientFactory} (its settings must have no C{tls}: a
    secure WebSocket is TLS under the WebSocket, not after INFO).
    """

    protocol = NATSOverWebSocket  # type: ignore[assignment]
    noisy = False

    def __init__(
        self, clients: Any, origins: OriginPolicy, compression: bool, handshake_timeout: float, secure: bool, reactor: Any,
    ) -> None:
        # No Server header (nats-server sends none), no HTML status page for a plain GET.
        super().__init__(reactor=reactor, server=None)
        self.clients = clients
        self.clock = clients.clock
        self.origins = origins
        self.handshake_timeout = handshake_timeout
        self.isSecure = secure
        #: For the listener's "listening" line.
        self.description = "WebSocket over TLS (wss://)" if secure else "WebSocket in plaintext (ws://)"
        self.setProtocolOptions(
            # Messages are streamed to the parser, which has the protocol's
            # limits (max_payload, max_control_line).  A message is cut off
            # past max_pending: that bounds what a deflated message may
            # inflate to, and no client sends more in one write.
            maxFramePayloadSize=0,
            maxMessagePayloadSize=clients.settings.max_pending,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            failByDrop=False,
            webStatus=False,
            perMessageCompressionAccept=_accept_deflate if compression else (lambda offers: None),
        )


def websocket_wire(
    clients: Any, origins: OriginPolicy, compression: bool, handshake_timeout: float, tls: Any, reactor: Any,
) -> Any:
    """
    What a WebSocket listener listens with: a L{WebSocketFactory} over
    C{clients}, under TLS when C{tls} (a server context factory) is given.
    """
    factory = WebSocketFactory(clients, origins, compression, handshake_timeout, tls is not None, reactor)
    if tls is None:
        return factory
    wrapped = TLSMemoryBIOFactory(tls, False, factory)
    wrapped.noisy = False
    wrapped.description = factory.description  # type: ignore[attr-defined]
    return wrapped
