"""
The server side of one client connection: the operations a client sends,
and the permission checks on them.

The connection is put together from parts, each in its own module:

  - L{eventsvc.nats.parser.ClientParser}: bytes to operations (the framing
    loop of L{eventsvc.nats.framing});
  - L{eventsvc.nats.session.Session}: greeting, TLS, CONNECT and
    authentication, as a state machine with the session's clocks;
  - L{eventsvc.nats.login.Login}: credentials checked (throttled per
    address), and checked again on reload;
  - L{eventsvc.nats.greeting}: the INFOs it is sent, and CONNECT read;
  - L{eventsvc.nats.outbound.Outbound}: output held back, slow consumers,
    publisher stalls (the transport's producer);
  - L{eventsvc.nats.liveness.Pinger}: PING/PONG.

What it must not do: look inside messages, or know what a listener is for.
"""

from __future__ import annotations

from functools import partial
from time import time
from typing import Any, Callable, Dict, Optional

from twisted.internet.error import ConnectionDone
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from eventsvc import wirejson
from eventsvc.nats.framing import ReadTurns
from eventsvc.nats.errors import failure_reason
from eventsvc.nats.frames import err_line, info_line, no_responders
from eventsvc.nats.greeting import DEFAULT_CONNECT, ConnectOptions, client_info, lame_duck_info, names_account, read_connect
from eventsvc.nats.interfaces import IAuthenticator, Identity, PeerInfo
from eventsvc.nats.kinds import Kind
from eventsvc.nats.liveness import PONG, Pinger
from eventsvc.nats.login import Login
from eventsvc.nats.outbound import Outbound, ReadGate
from eventsvc.nats.parser import AUTHORIZATION_VIOLATION, ClientParser, ProtocolViolation
from eventsvc.nats.server import NO_RESPONDERS_STATUS, Broker
from eventsvc.nats.session import HANDSHAKE, Session
from eventsvc.nats.settings import ClientSettings, ListenerState
from eventsvc.nats.subjects import Subscription, valid_literal_subject, valid_subject
from eventsvc.nats.tcp import set_up
from eventsvc.nats.timers import cancel

OK = b"+OK\r\n"

#: Why a connection's reads are held (ReadGate reasons besides a stall).
AUTHENTICATING = "authenticating"

STALE_CONNECTION = "Stale Connection"
AUTHENTICATION_TIMEOUT = "Authentication Timeout"
MAX_CONNECTIONS = "maximum connections exceeded"
MAX_SUBSCRIPTIONS = "maximum subscriptions exceeded"
INVALID_SUBJECT = "Invalid Subject"
INVALID_PUBLISH_SUBJECT = "Invalid Publish Subject"
BAD_PROTOCOL = "invalid client protocol"
NO_RESPONDERS_NEEDS_HEADERS = "no responders requires headers support"


_CLOSED = "client {cid} from {host}:{port} on {listener} closed: {reason}"
_CLOSED_WITH_DETAIL = "client {cid} from {host}:{port} on {listener} closed: {reason} ({detail})"


#: Every level there is.
_LEVELS = frozenset(LogLevel.iterconstants())


class _Logger(Logger):
    """
    Twisted's L{Logger}, emitting the same events to the same observers: a
    client connection writes one line at its close, a fleet one a
    connection, and Twisted's C{emit} first checks the level against
    C{LogLevel.iterconstants()}, which sorts every level there is each time
    (a fifth of the line's cost, the line a third of a close's).
    """

    def emit(self, level: LogLevel, format: Optional[str] = None, **kwargs: object) -> None:
        if level not in _LEVELS:
            # (Twisted's own report of a level that is none.)
            Logger.emit(self, level, format, **kwargs)
            return
        kwargs.update(
            log_logger=self,
            log_level=level,
            log_namespace=self.namespace,
            log_source=self.source,
            log_format=format,
            log_time=time(),
        )
        if "log_trace" in kwargs:
            kwargs["log_trace"].append((self, self.observer))  # type: ignore[attr-defined]
        self.observer(kwargs)


@implementer(IHandshakeListener)
class ClientConnection(Protocol):
    """
    One client.  Created by the listener's factory with the broker, the
    listener's settings and a clock (an C{IReactorTime}); C{on_closed} is
    called with it once it has closed (the listener counts its live ones).
    """

    log = _Logger()
    kind = Kind.CLIENT
    #: A client names no leaf cluster, and its frames are MSG, not a link's.
    cluster_origin = b""
    message_origin: Optional[bytes] = None
    frame_head = b""
    #: Whether it came over a WebSocket (L{eventsvc.nats.websocket}): its
    #: transport, not its kind (a WebSocket client is a client).
    websocket = False
    #: TCP or TLS: more than ITransport says (producers, TLS, abort).
    transport: Any

    def __init__(
        self, broker: Broker, settings: ClientSettings, clock: Any, at_capacity: bool = False,
        on_closed: Optional[Callable[["ClientConnection"], None]] = None, state: Optional[ListenerState] = None,
    ) -> None:
        self.broker = broker
        self.settings = settings
        self.state = state if state is not None else ListenerState(settings)
        self.clock = clock
        self._at_capacity = at_capacity
        self._on_closed = on_closed
        self.parser = ClientParser(self, settings.max_control_line, settings.max_payload, settings.parse_budget)
        self.session = Session(
            clock, self.state.authenticator is not None, settings.auth_timeout, settings.tls_timeout, self._timed_out
        )
        self.gate = ReadGate()
        #: Reads parsed within the budget, the rest on later turns.
        # (A partial, not a lambda: one Python call fewer per read.)
        self.turns = ReadTurns(self.parser, clock, self.gate, self._violated, partial(broker.flush, self))
        self.outbound = Outbound(clock, settings.max_pending, self._slow_consumer, settings.write_deadline, gate=self.gate)
        #: The broker appends frames here, and flushes through the outbound part.
        self.out = self.outbound.out
        self.flush = self.outbound.flush
        self.dirty = False
        self.pinger = Pinger(clock, settings.ping_interval, settings.ping_max, self._send_now, self._stale, self._last_heard)
        self.subs: Dict[bytes, Subscription] = {}
        self.cid = 0
        #: Closed (by either side): nothing more is read or written.
        self.closed = False
        #: The transport is gone (connectionLost): everything written was
        #: sent, or never will be.
        self.lost = False
        #: Why it closed, in nats-server's words ("Client Closed", ...), and ours.
        self.close_reason = ""
        self.close_detail = ""
        self.stopped = 0.0
        self.rtt = 0.0
        #: Which listener it came in on (for monitoring).
        self.listener = getattr(settings, "name", "")
        # CONNECT options, nats-server's defaults until CONNECT: attributes
        # of their own, since the broker reads echo and headers per message.
        self._take(DEFAULT_CONNECT)
        self.identity: Optional[Identity] = None
        self.login = Login(self, clock, settings.auth_throttle, settings.auth_timeout)
        self.permissions: Any = None
        #: PUBs go straight from the parser to the broker (see the parser).
        self.plain = False
        #: The permissions' publish check, or None: the parser asks it on the fast path.
        self.may_publish: Any = None
        #: The permissions' delivery check, or None: the broker asks it per subject.
        self.may_receive: Any = None
        self.publish = broker.deliver
        self.publish_batch = broker.deliver_batch
        self.publish_run = broker.deliver_run
        # Counters.
        self.in_msgs = 0
        self.in_bytes = 0
        self.out_msgs = 0
        self.out_bytes = 0
        self.start = 0.0
        self.last_activity = 0.0
        self.peer = PeerInfo("", 0)

    @property
    def connect_accepted(self) -> bool:
        """Whether the client's CONNECT was accepted (it is logged in)."""
        return self.session.connected

    @property
    def pending_bytes(self) -> int:
        """Bytes owed to the client and not yet handed to the transport."""
        return self.outbound.pending_bytes

    # -- connection lifecycle ----------------------------------------------

    def connectionMade(self) -> None:
        """The socket is up (or, after a plaintext greeting, its TLS layer): the client is greeted with INFO, or refused when the listener is full."""
        if self.session.handshaking:
            # Greeted in plaintext already; this transport is the TLS layer,
            # and the session starts when its handshake completes.
            self.outbound.attach(self.transport)
            return
        if self.greet(self.transport):
            self.outbound.attach(self.transport)
            self.start_session()

    def greet(self, transport: Any) -> bool:
        """
        Register with the broker and write INFO on C{transport} (in
        plaintext, before any TLS).  Returns False when the connection was
        refused (the listener is full).
        """
        # TCP_NODELAY, and the INFO goes out with the turn's one send.
        set_up(transport)
        now = self.clock.seconds()
        self.start = self.last_activity = now
        self.cid = self.broker.register(self)
        address = transport.getPeer()
        self.peer = PeerInfo(getattr(address, "host", ""), getattr(address, "port", 0))
        transport.write(self.state.greeting.line(self.broker, self.settings, self.state, self.cid, self.peer.host))
        if self._at_capacity:
            transport.write(err_line(MAX_CONNECTIONS))
            self.close_reason = "Maximum Connections Exceeded"
            self._teardown()
            transport.loseConnection()
            return False
        # Nothing logged here: a connection's one line is written when it
        # closes (_teardown), with everything this one said.
        return True

    def tls_begun(self) -> None:
        """Greeted; the TLS layer now waits for the client's handshake (the upgrade says so)."""
        self.session.tls_begun()

    def start_session(self) -> None:
        """Start the clocks: authentication (if required) and liveness."""
        if self.closed:
            return
        self.session.start()
        self.parser.awaiting_connect = self.session.auth_required
        self.pinger.start()

    def handshakeCompleted(self) -> None:
        """The TLS handshake is done: note who the peer is, then begin."""
        if not self.session.handshaking:
            return
        self.peer.certificate = self.transport.getPeerCertificate()
        self.start_session()

    def _timed_out(self, which: str) -> None:
        """One of the session's clocks ran out (the session is closed already)."""
        if which == HANDSHAKE:
            self.log.info("TLS handshake with {host}:{port} timed out", host=self.peer.host, port=self.peer.port)
            self.close_reason, self.close_detail = "TLS Handshake Failure", "handshake timeout"
            self._teardown()
            self.transport.abortConnection()
        else:
            self.log.info("client {cid} from {host}: authentication timeout", cid=self.cid, host=self.peer.host)
            self.close(AUTHENTICATION_TIMEOUT, "Authentication Timeout")

    def info(self) -> Dict[str, Any]:
        """The INFO this connection is greeted with (L{greeting.client_info})."""
        return client_info(self.broker, self.settings, self.state, self.cid, self.peer.host)

    def info_line(self, **extra: Any) -> bytes:
        """Our INFO to this client, with C{extra} fields, as a line."""
        info = self.info()
        info.update(extra)
        return info_line(info)

    def lame_duck(self) -> None:
        """
        Tell a client that understands async INFO that this server is going
        away, and (as nats-server) where else it can go: the other nodes only.
        """
        if not self.closed and self.connect_accepted and self.protocol >= 1:
            others = self.broker.connect_urls.others() if self.settings.advertise else []
            self.send(info_line(lame_duck_info(self.info(), others)))

    def cluster_changed(self) -> None:
        """The cluster's client URLs changed: an async INFO, as nats-server sends."""
        if self.settings.advertise and not self.closed and self.connect_accepted and self.protocol >= 1:
            self.send(self.info_line())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """The socket closed: the connection ends, its subscriptions go, and monitoring keeps its figures."""
        if self.lost:
            return
        self.lost = True
        self._overdue = cancel(self._overdue)
        if self.session.handshaking:
            self.close_reason, self.close_detail = "TLS Handshake Failure", failure_reason(reason)
            self.log.info(
                "TLS handshake with {host}:{port} failed: {why}", host=self.peer.host, port=self.peer.port, why=failure_reason(reason)
            )
            self._teardown()
        if not self.closed:
            # As nats-server: a clean close is the client's, a reset a read error.
            clean = reason is None or isinstance(reason.value, ConnectionDone)
            self.close_reason = "Client Closed" if clean else "Read Error"
            self._teardown()
        self._let_go()

    #: The cut of a close behind a backlog (L{close}), while it waits.
    _overdue: Any = None

    #: The parts that hold the connection (its methods, or itself as their
    #: owner), let go of once its transport is gone (L{_let_go}).
    _PARTS = ("parser", "turns", "outbound", "gate", "pinger", "login", "transport")

    def _let_go(self) -> None:
        """
        The transport is gone, and the connection with it: it lets go of its
        parts, which hold it, so that it and they are freed by reference
        counting as soon as the last holder lets go, not left in reference
        cycles for the cycle collector (44 objects a connection, and the
        collections of them and of the heap were a fifth of a plaintext
        connection's CPU).  Nothing reads a part of a closed connection:
        every way in asks C{closed} first, and monitoring keeps a copy of
        its figures (L{ClosedConnection}).
        """
        for name in self._PARTS:
            setattr(self, name, None)
        # (The broker may still hold it among this turn's written-to.)
        self.flush = _nothing_to_flush

    def _teardown(self) -> None:
        if self.closed:
            return
        if self.cid:
            self.stopped = self.clock.seconds()
            # A connection's one line at info, with what it was (the listener,
            # TLS, how long it lasted) and why it ended: a fleet connecting
            # and closing writes one event per connection, and nothing is
            # formatted here that the log level leaves out.
            self.log.info(
                _CLOSED_WITH_DETAIL if self.close_detail else _CLOSED,
                cid=self.cid, host=self.peer.host, port=self.peer.port, listener=self.listener or "-",
                tls=self.settings.tls_required,
                seconds=self.stopped - self.start, reason=self.close_reason or "Client Closed", detail=self.close_detail,
            )
        self.closed = True
        self.session.close()
        self.pinger.stop()
        self.outbound.close()
        self.login.cancel()
        self.turns.stop()
        if self.subs:
            self.broker.remove_subscriptions(list(self.subs.values()))
            self.subs.clear()
        self.broker.unregister(self)
        if self._on_closed is not None:
            self._on_closed(self)

    def close(self, error: Optional[str], reason: str, detail: str = "", abort: bool = False) -> None:
        """
        End the connection: send C{-ERR '<error>'} after what is already
        owed (unless C{error} is None), then close.  C{reason} is
        nats-server's name for it (as /connz shows), C{detail} ours.
        """
        if self.closed:
            return
        self.close_reason = reason
        self.close_detail = detail
        if not abort:
            self.outbound.write_all(err_line(error) if error is not None else b"")
        self._teardown()
        if abort:
            self.transport.abortConnection()
        elif self.outbound.close_transport(self.transport) and not self.lost:
            # The close waits for a peer that was not reading: it has
            # write_deadline to take what it is owed, as nats-server's final
            # flush has, and is cut then.
            self._overdue = self.clock.callLater(self.settings.write_deadline, self._close_overdue)

    def _close_overdue(self) -> None:
        self._overdue = None
        if not self.lost:
            self.log.info("client {cid} from {host}: closed, and not reading what it is owed: cut", cid=self.cid, host=self.peer.host)
            self.transport.abortConnection()

    # -- input --------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client, parsed within the per-turn budget (L{ReadTurns})."""
        if self.closed:
            return
        self.last_activity = self.clock.seconds()
        self.turns.feed(data)

    def parse_later(self) -> None:
        """The parser used its budget for this read: read nothing more until it has gone on."""
        if not self.closed:
            self.turns.later()

    def _violated(self, violation: ProtocolViolation) -> None:
        self.close(violation.error, _violation_reason(violation.error), violation.detail)

    def send(self, data: bytes) -> None:
        """Queue C{data} for this client; written at the next flush."""
        self.out.append(data)
        if not self.dirty:
            self.broker.mark_dirty(self)

    def stall(self, consumer: "ClientConnection") -> None:
        """Stop reading from this (publishing) connection until C{consumer} drains, or for a while."""
        self.outbound.stall(consumer.outbound)

    def _admit(self, subject: bytes, size: int, reply: Optional[bytes] = None) -> bool:
        """
        The checks a non-plain connection's publish goes through, in
        nats-server's order; False when it must not be delivered.
        """
        self.in_msgs += 1
        self.in_bytes += size
        permissions = self.permissions
        if permissions is not None and not permissions.may_publish(subject):
            self.send(err_line('Permissions Violation for Publish to "%s"' % subject.decode("utf-8", "replace")))
            return False
        if reply is not None and permissions is not None and not permissions.may_subscribe(reply, None):
            # A reply subject it could not subscribe to can only steer
            # someone's answer elsewhere (a forged reply): refused.  (nats-
            # server does not check; its error has the same prefix, which
            # clients treat as not fatal.)
            self.send(err_line('Permissions Violation for Publish to "%s" with reply "%s"' % (
                subject.decode("utf-8", "replace"), reply.decode("utf-8", "replace"))))
            return False
        if self.pedantic and not valid_literal_subject(subject):
            # Reported, and still delivered, as nats-server does.
            self.send(err_line(INVALID_PUBLISH_SUBJECT))
        if self.verbose:
            self.send(OK)
        return True

    # -- operations ---------------------------------------------------------

    def op_pub(self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> None:
        """C{PUB}, checked (permissions, subject, size) and delivered; a request nobody hears may be told so."""
        if self._admit(subject, size, reply):
            if not self.broker.deliver(self, subject, reply, size, tail) and reply is not None:
                self.op_no_responders(reply)

    def op_hpub(self, subject: bytes, reply: Optional[bytes], hdr_len: int, total: int, body: bytes) -> None:
        """C{HPUB} (headers negotiated only), checked and delivered as L{op_pub}."""
        if not self.headers:
            raise ProtocolViolation(None, "HPUB without headers support")
        if self._admit(subject, total, reply):
            if not self.broker.deliver_message(self, subject, reply, total, b"", hdr_len, body) and reply is not None:
                self.op_no_responders(reply)

    def _update_plain(self) -> None:
        self.plain = not self.verbose and not self.pedantic
        self.may_publish = self.permissions.may_publish if self.permissions is not None else None
        # (An operator's IPermissions written before may_receive existed has none.)
        self.may_receive = getattr(self.permissions, "may_receive", None)

    def op_no_responders(self, reply: bytes) -> None:
        """A request reached nobody: a client that asked for it gets the 503 status message."""
        if self.no_responders:
            self._no_responders(reply)

    def _no_responders(self, reply: bytes) -> None:
        # Only to this client's own plain subscription on the reply subject.
        for sub in self.broker.sublist.match(reply).plain:
            if sub.owner is self:
                self.send(no_responders(reply, sub.sid, NO_RESPONDERS_STATUS))
                return

    def op_sub(self, subject: bytes, queue: Optional[bytes], sid: bytes) -> None:
        """C{SUB}, checked (permissions, the subscription cap, the subject) and added to the index."""
        if self.permissions is not None and not self.permissions.may_subscribe(subject, queue):
            self.send(err_line('Permissions Violation for Subscription to "%s"' % subject.decode("utf-8", "replace")))
            return
        limit = self.settings.max_subscriptions
        if limit and len(self.subs) >= limit and sid not in self.subs:
            self.send(err_line(MAX_SUBSCRIPTIONS))
            return
        if sid not in self.subs:
            if not valid_subject(subject) or (queue is not None and not valid_subject(queue)):
                self.send(err_line(INVALID_SUBJECT))
                return
            sub = Subscription(self, subject, queue, sid)
            self.subs[sid] = sub
            self.broker.add_subscription(sub)
        if self.verbose:
            self.send(OK)

    def op_unsub(self, sid: bytes, max_msgs: int) -> None:
        """C{UNSUB}: now, or after C{max_msgs} deliveries in all."""
        sub = self.subs.get(sid)
        if sub is not None:
            if max_msgs > 0 and max_msgs > sub.delivered:
                sub.max = max_msgs
                self.broker.limit_changed(sub.subject)
            else:
                self.remove_subscription(sub)
        if self.verbose:
            self.send(OK)

    def remove_subscription(self, sub: Subscription) -> None:
        """End C{sub} (its auto-unsubscribe maximum was reached)."""
        if self.subs.get(sub.sid) is sub:
            del self.subs[sub.sid]
            self.broker.remove_subscription(sub)

    def op_ping(self) -> None:
        """C{PING}: answered C{PONG}."""
        self.pinger.ping_received()
        self.send(PONG)

    def op_pong(self) -> None:
        """C{PONG}: the client is alive."""
        self.pinger.pong_received()

    def op_info(self, arg: bytes) -> None:
        """C{INFO} from a client: checked to be JSON, otherwise ignored (as nats-server)."""
        try:
            wirejson.loads(arg)
        except ValueError:
            raise ProtocolViolation(None, "bad INFO from client")

    def op_connect(self, arg: bytes) -> bool:
        """
        Apply CONNECT.  Returns True when parsing must pause until an
        asynchronous authenticator answers.
        """
        try:
            options, taken = read_connect(arg)
        except ValueError as e:
            raise ProtocolViolation(None, "bad CONNECT: {}".format(e))
        if names_account(options):
            raise ProtocolViolation(AUTHORIZATION_VIOLATION, "CONNECT names an account")
        self._take(taken)
        self._update_plain()
        authenticator = self.state.authenticator
        if authenticator is None or not self.login.needed(authenticator, options, self.connect_accepted):
            self._connect_accepted()
            return False
        # The first CONNECT, or a later one with other credentials: they are
        # checked (nats-server closes on a bad token in a second CONNECT).
        self.session.checking()
        self.login.check(authenticator, options)
        if self.closed:
            raise ProtocolViolation(None, "connection refused")
        if self.connect_accepted:
            return False
        # The answer comes later: nothing more is read or parsed until then.
        self.gate.hold(AUTHENTICATING)
        return True

    def _take(self, options: ConnectOptions) -> None:
        (self.verbose, self.pedantic, self.echo, self.headers, self.no_responders, self.protocol,
         self.name, self.lang, self.client_version) = options

    def _connect_accepted(self) -> None:
        if not self.rtt:
            # As nats-server: from INFO sent to CONNECT received.
            self.rtt = max(self.clock.seconds() - self.start, 0.0)
        if self.protocol not in (0, 1):
            raise ProtocolViolation(BAD_PROTOCOL)
        if self.no_responders and not self.headers:
            raise ProtocolViolation(NO_RESPONDERS_NEEDS_HEADERS)
        self.session.connect_accepted()
        self.parser.awaiting_connect = False
        if self.verbose:
            self.send(OK)

    # -- what the login part tells -------------------------------------------

    @property
    def connect_options(self) -> Optional[Dict[str, Any]]:
        """The CONNECT options an authenticator accepted (None where there is none)."""
        return self.login.options

    def logged_in(self, identity: Identity) -> None:
        """The authenticator accepted the CONNECT as C{identity}: its permissions apply from now on."""
        self.identity = identity
        self.permissions = identity.permissions
        self._update_plain()
        try:
            self._connect_accepted()
            if self.gate.holding(AUTHENTICATING):
                self.gate.release(AUTHENTICATING)
                self.parser.resume()
        except ProtocolViolation as violation:
            self.close(violation.error, _violation_reason(violation.error), violation.detail)
        self.broker.flush()

    def login_refused(self, why: str) -> None:
        """The authenticator refused the CONNECT: C{Authorization Violation}, and the connection closes."""
        self.close(AUTHORIZATION_VIOLATION, "Authentication Failure", why)

    def reauthorize(self, authenticator: IAuthenticator) -> Deferred:
        """
        Check this connection's CONNECT again (the configuration was
        reloaded; L{Login.check_again}).  Fires with how many subscriptions
        were removed (-1: closed).
        """
        return self.login.check_again(authenticator)

    def identity_changed(self, identity: Identity) -> int:
        """
        Accepted again after a reload: the new permissions apply at once, and
        every subscription they no longer allow is removed, with
        nats-server's error naming it.
        """
        self.identity = identity
        self.permissions = identity.permissions
        self._update_plain()
        # Deliveries are planned per subject with the old may_receive.
        self.broker.limit_changed()
        removed = 0
        if self.permissions is not None:
            for sub in list(self.subs.values()):
                if not self.permissions.may_subscribe(sub.subject, sub.queue):
                    self.remove_subscription(sub)
                    removed += 1
                    subject, sid = sub.subject.decode("utf-8", "replace"), sub.sid.decode("utf-8", "replace")
                    self.send(err_line('Permissions Violation for Subscription to "%s" (sid "%s")' % (subject, sid)))
                    self.log.info(
                        "client {cid}: removed subscription {subject} (sid {sid}): no longer allowed for {who}",
                        cid=self.cid, subject=subject, sid=sid, who=identity.name,
                    )
        self.broker.flush()
        return removed

    # -- liveness and slow consumers -------------------------------------------

    def _send_now(self, data: bytes) -> None:
        self.send(data)
        self.broker.flush()

    def _last_heard(self) -> float:
        return self.last_activity

    def _stale(self) -> None:
        self.close(STALE_CONNECTION, "Stale Connection")

    def _slow_consumer(self, why: str) -> None:
        self.broker.slow_consumers += 1
        self.log.warn("slow consumer: client {cid} from {host}:{port} cut off ({why})", cid=self.cid, host=self.peer.host, port=self.peer.port, why=why)
        self.close(None, why, abort=True)


_VIOLATION_REASONS = {
    "Unknown Protocol Operation": "Protocol Violation",
    "maximum control line exceeded": "Maximum Control Line Exceeded",
    "Maximum Payload Violation": "Maximum Message Payload Exceeded",
    AUTHORIZATION_VIOLATION: "Authentication Failure",
    BAD_PROTOCOL: "Bad Client Protocol Version",
    NO_RESPONDERS_NEEDS_HEADERS: "No Responders Requires Headers",
}


def _nothing_to_flush() -> bool:
    """A closed connection's C{flush}: nothing is written."""
    return False


def _violation_reason(error: Optional[str]) -> str:
    return _VIOLATION_REASONS.get(error or "", "Protocol Violation")

