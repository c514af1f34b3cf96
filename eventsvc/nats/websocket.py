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

What this module must hold, whatever the peer sends:
  - a close we begin is a close: our close frame, then the socket is let
    go at once (and aborted CLOSE_TIMEOUT later if it has not gone), for
    the client connection's reasons (1008, 1009, 1001, ...) and for
    autobahn's (a protocol error, 1002; a message over the cap, 1009).
    Nothing more is read from it;
  - a frame whose header declares more than a message may hold
    (C{max_pending}) is refused at its header, before its payload is read;
  - a compressed message is inflated here, a slice at a time, under the
    parse budget of a reactor turn (as the framing loop parses), and cut
    with 1009 once it inflates past the cap: a deflate bomb neither holds
    up the other connections nor fills memory.
"""

from __future__ import annotations

import zlib
from collections import deque
from time import perf_counter
from typing import Any, Deque, Optional, Set, Tuple

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.compress import PerMessageDeflateOffer, PerMessageDeflateOfferAccept
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure

from eventsvc.nats.client import ClientConnection
from eventsvc.nats.origins import OriginPolicy
from eventsvc.nats.timers import cancel
from eventsvc.nats.upgrade import free_at_close

#: Close codes by nats-server's reason (client.go's ClosedState strings),
#: as its wsEnqueueCloseMessage chooses them.
NORMAL, GOING_AWAY, PROTOCOL_ERROR, POLICY_VIOLATION = 1000, 1001, 1002, 1008
INVALID_PAYLOAD, MESSAGE_TOO_BIG, ABNORMAL, INTERNAL_ERROR = 1007, 1009, 1006, 1011
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
#: Seconds a socket we closed may take to go (its close frame and what was
#: owed before it written out) before it is aborted.
CLOSE_TIMEOUT = 1.0
#: nats-server's reason (as /connz shows it) for a close autobahn begins, by close code.
FAILURE_REASONS = {PROTOCOL_ERROR: "Protocol Violation", MESSAGE_TOO_BIG: "Maximum Message Payload Exceeded"}
#: Bytes of a compressed message inflated in one go: between two slices the
#: parse budget is looked at, and the client may hold its reads.
INFLATE_SLICE = 64 * 1024
#: RFC 7692 7.2.2: the end of a message's deflate stream, which the sender strips.
_DEFLATE_TAIL = b"\x00\x00\xff\xff"
# What waits in NATSOverWebSocket's backlog: frame data as it came, deflated
# data, the end of a deflated message.
_PLAIN, _DEFLATED, _END = 0, 1, 2
# Why the socket under a WebSocket is not being read.
_CLIENT_HOLDS, _INFLATING = "client", "inflating"


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
        """The client holds its reads (its parser's budget is spent, or it waits for a slow consumer)."""
        self.websocket.hold(_CLIENT_HOLDS)

    def resumeProducing(self) -> None:
        self.websocket.release(_CLIENT_HOLDS)


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
        #: What came in and is not yet handed to the client, in order (see
        #: L{_work}): a compressed message is inflated from here a slice at
        #: a time, and what follows it waits behind it.
        self._backlog: Deque[Tuple[int, bytes]] = deque()
        #: The compressed message being inflated (kept across messages when
        #: the client keeps its deflate context), and how much of it so far.
        self._inflater: Any = None
        self._inflated = 0
        #: The next slice of the backlog, a reactor turn later.
        self._turn: Any = None
        #: Why the socket is not being read (_CLIENT_HOLDS, _INFLATING).
        self._held: Set[str] = set()
        #: The close code and text of a failure autobahn found (see _fail_connection).
        self._failure: Optional[Tuple[int, str]] = None
        #: The socket is gone (connectionLost).
        self._lost = False

    # -- the upgrade ------------------------------------------------------------

    def connectionMade(self) -> None:
        # Under TLS (wss://): OpenSSL's side freed at the close, as a client's.
        free_at_close(self.transport)
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
        if client is None or not payload or self.failedByMe:
            return
        if self._backlog:
            self._backlog.append((_PLAIN, payload))  # behind a message still inflating
        else:
            client.dataReceived(payload)

    def onMessageFrameEnd(self) -> None:
        self.frame_data = None  # type: ignore[assignment]

    def _compressed(self) -> bool:
        """Whether the message coming in is compressed (autobahn's flag, set at its first frame)."""
        return bool(getattr(self, "_isMessageCompressed", False))

    def onMessageEnd(self) -> None:
        if self._compressed() and not self.failedByMe:
            self._backlog.append((_DEFLATED, _DEFLATE_TAIL))
            self._backlog.append((_END, b""))
            self._work()

    def onFrameData(self, payload: bytes) -> Optional[bool]:
        """
        A compressed message's data goes to the backlog, to be inflated a
        slice at a time (autobahn would inflate a frame in one go, up to
        the cap: 64 MiB in one reactor turn).
        """
        if self.current_frame.opcode > 7 or not self._compressed():
            return super().onFrameData(payload)  # type: ignore[no-any-return]
        if self.failedByMe:
            return False
        if payload:
            self._backlog.append((_DEFLATED, payload))
            self._work()
        return False if self.state == self.STATE_CLOSED else None

    def _work(self) -> None:
        """
        Hand the backlog to the client, in order: plain data as it came,
        deflated data inflated INFLATE_SLICE at a time, until the backlog
        is empty, the client holds its reads, or the turn's parse budget is
        spent (then the rest goes on a turn later, and the socket is not
        read meanwhile).  A message inflating past the cap is cut (1009),
        one that does not inflate is refused (1007).
        """
        self._turn = cancel(self._turn)
        client, backlog = self.client, self._backlog
        deflate: Any = self._perMessageCompress  # (the negotiated parameters)
        budget = self.factory.inflate_budget
        cap = self.factory.max_message
        started = perf_counter()
        while backlog and self.state == self.STATE_OPEN and _CLIENT_HOLDS not in self._held:
            if client is None or client.closed:
                backlog.clear()
                break
            kind, data = backlog[0]
            if kind == _PLAIN:
                backlog.popleft()
                client.dataReceived(data)
            elif kind == _END:
                backlog.popleft()
                self._inflated = 0
                if deflate.client_no_context_takeover:
                    self._inflater = None
            else:
                if self._inflater is None:
                    self._inflater = zlib.decompressobj(-deflate.client_max_window_bits)
                # One byte over the cap is enough to know it is over.
                limit = min(INFLATE_SLICE, cap - self._inflated + 1)
                try:
                    out = self._inflater.decompress(data, limit)
                except zlib.error as e:
                    self._fail_connection(INVALID_PAYLOAD, "invalid permessage-deflate data: {}".format(e))
                    return
                rest = self._inflater.unconsumed_tail
                if rest or len(out) == limit:
                    backlog[0] = (_DEFLATED, rest)  # (a full slice may leave output inside zlib)
                else:
                    backlog.popleft()
                self._inflated += len(out)
                if self._inflated > cap:
                    self._fail_connection(
                        MESSAGE_TOO_BIG, "a compressed message inflates past the limit of {} bytes".format(cap)
                    )
                    return
                if out:
                    client.dataReceived(out)
            if budget is not None and perf_counter() - started > budget:
                break
        if backlog and self.state == self.STATE_OPEN:
            self.hold(_INFLATING)
            if _CLIENT_HOLDS not in self._held:
                self._turn = self.factory.clock.callLater(0, self._work)
        else:
            self.release(_INFLATING)

    def hold(self, why: str) -> None:
        """Stop reading the socket for C{why} (until L{release})."""
        if not self._held and self.state == self.STATE_OPEN:
            self.transport.pauseProducing()
        self._held.add(why)

    def release(self, why: str) -> None:
        """C{why} no longer holds: the socket is read again once nothing else does."""
        if why not in self._held:
            return
        self._held.discard(why)
        if self.state != self.STATE_OPEN:
            return
        if why == _CLIENT_HOLDS and self._backlog and self._turn is None:
            # The client reads again: the backlog first, a turn later (not
            # from inside the client's own call).
            self._turn = self.factory.clock.callLater(0, self._work)
        if not self._held:
            self.transport.resumeProducing()

    # -- output -------------------------------------------------------------------

    def send_binary(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True, doNotCompress=not self._compress or len(data) <= COMPRESS_THRESHOLD)

    def close_with(self, reason: str) -> None:
        """
        The client connection closed for C{reason} (nats-server's words):
        a close frame with nats-server's code for it, or with autobahn's
        code and words when it was autobahn that failed the connection.
        """
        code, text = self._failure or (CLOSE_CODES.get(reason, INTERNAL_ERROR), reason)
        self._close(code, text)

    def _close(self, code: int, text: str) -> None:
        """
        Our close frame, then the socket is let go at once: written out and
        closed, nothing more read; aborted if it has not gone CLOSE_TIMEOUT
        later (a peer that does not read).  We do not wait for the peer's
        answering close frame (nats-server does not either).
        """
        if self.state == self.STATE_OPEN:
            self.sendCloseFrame(code=code, reasonUtf8=encode_truncate(text, 123))
        self._backlog.clear()
        self._turn = cancel(self._turn)
        self.data = b""  # autobahn's unread input
        if self.state != self.STATE_CLOSED:
            self.dropConnection(abort=False)
        if self._timer is None and not self._lost:
            self._timer = self.factory.clock.callLater(CLOSE_TIMEOUT, self.transport.abortConnection)

    def _fail_connection(self, code: int = GOING_AWAY, reason: str = "going away") -> None:
        """
        autobahn found the peer at fault (a protocol error, a message over
        the cap, a payload it cannot read): the client connection closes
        for nats-server's reason, and the socket goes as for every close we
        begin (autobahn's own way would wait for ever, its close handshake
        timer being off).
        """
        if self.state == self.STATE_CLOSED or self.failedByMe:
            return
        self.failedByMe = True
        self._failure = (code, reason)
        client = self.client
        self.log.info(
            "WebSocket client {cid} from {host}: {reason}; closing ({code})",
            cid=client.cid if client is not None else 0, host=getattr(self.transport.getPeer(), "host", ""),
            reason=reason, code=code,
        )
        if client is not None and not client.closed:
            client.close(None, FAILURE_REASONS.get(code, "Protocol Violation"), reason)  # (and so close_with)
        else:
            self._close(code, reason)

    def drop(self) -> None:
        self._backlog.clear()
        self.transport.abortConnection()

    # -- the end --------------------------------------------------------------------

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self._lost = True
        self._timer = cancel(self._timer)
        self._turn = cancel(self._turn)
        self._backlog.clear()
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
        #: The most a message may hold, as it arrives and as it inflates:
        #: no client sends more in one write than it may have pending.
        self.max_message = clients.settings.max_pending
        #: Seconds of inflating per reactor turn (the framing loop's parse budget).
        self.inflate_budget = clients.settings.parse_budget
        #: For the listener's "listening" line.
        self.description = "WebSocket over TLS (wss://)" if secure else "WebSocket in plaintext (ws://)"
        self.setProtocolOptions(
            # Messages are streamed to the parser, which has the protocol's
            # limits (max_payload, max_control_line).  A message is refused
            # at the frame header that takes it past max_message (autobahn
            # checks the declared length there); what a compressed one may
            # inflate to is checked as it inflates (_work).
            maxFramePayloadSize=0,
            maxMessagePayloadSize=self.max_message,
            openHandshakeTimeout=0,
            closeHandshakeTimeout=0,
            autoPingInterval=0,
            # A protocol error stops the reading of the offending frame at
            # once (autobahn's "fail by drop"); the close frame and the drop
            # are NATSOverWebSocket._fail_connection's.
            failByDrop=True,
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
    # (Its layer joins small writes on the reactor's next turn: this one's.)
    wrapped = TLSMemoryBIOFactory(tls, False, factory, clock=reactor)
    wrapped.noisy = False
    wrapped.description = factory.description  # type: ignore[attr-defined]
    return wrapped
