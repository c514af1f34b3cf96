"""
A link to another server: what a route, a gateway and a leaf connection
share.

All are put together from the client connection's parts: a framing loop
(a verb table's parser) read within the same per-turn budget as a client's
(L{eventsvc.nats.framing.ReadTurns}: a trusted peer can send a million
lines too), the outbound part (cut off at C{max_pending}, never stalling
anyone: a peer is not a consumer to wait for) and the pinger (every
interval, busy or not).  This module holds that plumbing once; the
protocols (L{eventsvc.nats.links.route}, L{eventsvc.nats.links.gateway},
L{eventsvc.nats.links.leaf}) hold only their handshakes, interest and messages.

A peer's interest is held to a cap per link (C{max_link_subscriptions},
L{PeerConnection.keeps_interest}), and a closed link's interest is let go
of in slices across turns (L{PeerConnection.let_go}): neither a flood of
C{RS+} nor the end of a link that held a million entries holds the reactor
for longer than a turn's budget.

On CPython one more thing would: the cyclic garbage collector.  Every
time the objects that survive grow by a quarter, it walks all of them at
once, and a link's interest is some seven of them an entry: with 200,000
entries one walk took 370 ms, several times over during a flood.  So a
link whose interest grows by L{FREEZE_STEP} entries moves what the process
holds into the collector's permanent generation (C{gc.freeze}), where it is
still freed by reference counting (entries let go of are) but not walked;
when such a link's interest has all gone, it is handed back
(C{gc.unfreeze}).  PyPy's collector is incremental and has neither.
"""

from __future__ import annotations

import gc
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from eventsvc import wirejson
from eventsvc.nats import timers
from eventsvc.nats.errors import failure_reason
from eventsvc.nats.framing import ReadTurns
from eventsvc.nats.frames import err_line
from eventsvc.nats.gojson import BOOL, STRING, GoStruct
from eventsvc.nats.greeting import CLIENT_OPTS
from eventsvc.nats.kinds import Kind
from eventsvc.nats.liveness import PONG, Pinger
from eventsvc.nats.outbound import Outbound
from eventsvc.nats.parser import ProtocolViolation
from eventsvc.nats.server import Broker
from eventsvc.nats.subjects import Subscription
from eventsvc.nats.tcp import no_delay
from eventsvc.nats.upgrade import free_at_close

#: What a peer past its link's cap is told before the close (nats-server's
#: words for a client past max_subscriptions).
MAX_SUBSCRIPTIONS = "maximum subscriptions exceeded"
#: Subscriptions of a closed link let go of between two looks at the clock.
LET_GO_SLICE = 256
#: Entries a link's interest grows by before what the process holds is moved
#: out of the cyclic collector's way (CPython: some 140,000 objects, a walk
#: of a few tens of milliseconds).
FREEZE_STEP = 20000
#: nats-server's connectInfo (route.go; gateway.go reads it too): what it
#: reads from a route's or a gateway's CONNECT after ClientOpts (a second
#: decode of the same bytes, L{PeerConnection.read_connect}).
PEER_CONNECT = GoStruct({
    "echo": BOOL,
    "verbose": BOOL,
    "pedantic": BOOL,
    "user": STRING,
    "pass": STRING,
    "tls_required": BOOL,
    "headers": BOOL,
    "name": STRING,
    "cluster": STRING,
    "cluster_dynamic": BOOL,
    "lnoc": BOOL,
    "gateway": STRING,
})
_freeze: Optional[Callable[[], None]] = getattr(gc, "freeze", None)
_unfreeze: Optional[Callable[[], None]] = getattr(gc, "unfreeze", None)


@implementer(IHandshakeListener)
class PeerConnection(Protocol):
    """
    One link to a peer server, dialled or accepted.  A subclass names its
    C{kind} ("route", "gateway") for the log, says whether it was
    C{dialled}, and implements the operations its parser calls and
    L{lost} (what its manager must hear when it ends).

    @ivar manager: the subclass's manager: C{broker}, C{clock} and
        C{settings} (C{limits}, C{tls_name}, C{parse_budget},
        C{handshake_timeout}).
    """

    log = Logger()
    #: The subclass's L{Kind}; its C{label} names the link in the log.
    kind: Kind
    #: Gateways and leafs number themselves for monitoring; routes do not.
    cid = 0
    cluster_origin = b""
    message_origin: Optional[bytes] = None
    frame_head = b""
    may_receive: Optional[Callable[[bytes], bool]] = None
    #: TCP or TLS: more than ITransport says (producers, TLS, abort).
    transport: Any
    echo = True
    headers = True
    #: For the framing loop: a peer's messages take its plain path, unchecked.
    plain = True
    may_publish = None

    #: The framing loop with the protocol's verb table.
    parser: Any
    #: The cut of a close behind a backlog (L{close}), while it waits.
    _overdue: Any = None
    #: The link as a bad INFO or CONNECT names it ("route", "leaf node link").
    speaks = ""

    def __init__(self, manager: Any, ping_interval: float, parser: Callable[..., Any]) -> None:
        """
        @param parser: the protocol's framer class, made with the settings'
            limits and budget.
        """
        self.manager = manager
        self.broker: Broker = manager.broker
        settings = manager.settings
        self.remote_id = ""
        self.remote_info: Dict[str, Any] = {}
        self.registered = False
        self.closed = False
        self.outbound = Outbound(manager.clock, settings.limits.max_pending, self._slow, stalls=False)
        self.out = self.outbound.out
        self.flush: Callable[[], bool] = self.outbound.flush
        self.dirty = False
        self.parser = parser(self, settings.limits.max_control_line, settings.limits.max_payload, settings.parse_budget)
        #: Reads parsed within the budget, the rest on later turns (as a client's).
        self.turns = ReadTurns(self.parser, manager.clock, self.outbound.gate, self._violated, self.broker.flush)
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0
        self.pinger = Pinger(manager.clock, ping_interval, settings.limits.ping_max, self._send_now, self._stale)
        self.host, self.port = "", 0
        #: When it connected, and when it last sent anything (monitoring).
        self.start = self.last_activity = 0.0
        self._first_ping: Any = None
        self._handshake_clock: Any = None
        #: The size of the peer's interest when it last froze the heap (0: never).
        self._frozen_at = 0
        #: The peer's interest, one subscription per (subject, queue), for the
        #: protocols that keep it so (routes, leafs; a gateway keeps modes).
        self.subs: Dict[Tuple[bytes, Optional[bytes]], Subscription] = {}

    @property
    def dialled(self) -> bool:
        """Whether we dialled the link (else the peer dialled us)."""
        raise NotImplementedError

    def describe(self) -> str:
        """The peer, for the log."""
        return self.remote_id or self.host

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        """
        The link is up: TCP_NODELAY, OpenSSL's side of a TLS link freed at
        its close (L{free_at_close}), the clocks, the peer's address, and
        the output attached.
        """
        no_delay(self.transport)
        free_at_close(self.transport)
        self.start = self.last_activity = self.manager.clock.seconds()
        peer = self.transport.getPeer()
        self.host, self.port = getattr(peer, "host", ""), getattr(peer, "port", 0)
        self.outbound.attach(self.transport)

    def handshakeCompleted(self) -> None:
        """TLS: an accepted peer's certificate must carry the name we expect."""
        name = self.manager.settings.tls_name
        if not name or self.dialled:
            return  # dialled peers were checked by the client TLS options
        try:
            from service_identity.cryptography import verify_certificate_hostname

            verify_certificate_hostname(self.transport.getPeerCertificate().to_cryptography(), name)
        except Exception as e:
            self.log.warn(
                "{kind} from {host}:{port} refused: its certificate is not for {name} ({why})",
                kind=self.kind.label, host=self.host, port=self.port, name=name, why=e,
            )
            self.close(None, "certificate name")

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the peer, parsed within the per-turn budget (L{ReadTurns})."""
        if self.closed:
            return
        self.last_activity = self.manager.clock.seconds()
        self.turns.feed(data)

    def parse_later(self) -> None:
        """The parser used its budget for this read: the rest waits for the next turns (L{ReadTurns})."""
        if not self.closed:
            self.turns.later()

    def _violated(self, v: ProtocolViolation) -> None:
        self.close(v.error, v.detail or v.error or "protocol violation")

    def connectionLost(self, reason: Any = None) -> None:
        """The transport closed: the link ends, saying why (loudly when it was never up)."""
        self._overdue = timers.cancel(self._overdue)
        if not self.closed:
            why = "connection lost: {}".format(failure_reason(reason) if reason is not None else "closed")
            if not self.registered and self.warn_unregistered():
                # Never up: a refused TLS handshake (a certificate from
                # another CA) must not pass in silence.
                self.log.warn(
                    "{kind} {way} {host}:{port} failed before it was up: {why}",
                    kind=self.kind.label, way="to" if self.dialled else "from", host=self.host, port=self.port, why=why,
                )
            self._teardown(why)

    def warn_unregistered(self) -> bool:
        """Whether a link lost before it was up is worth a warning (no redial will say so)."""
        return True

    def close(self, error: Optional[str], why: str) -> None:
        """End the link: C{-ERR 'error'} after what is already queued (none when C{error} is None), logged as C{why}."""
        if self.closed:
            return
        self.outbound.write_all(err_line(error) if error else b"")
        self._teardown(why)
        if self.outbound.close_transport(self.transport) and self._overdue is None:
            # A peer that was not reading has write_deadline to take what
            # it is owed (write_all hands it what was held), then is cut.
            self._overdue = self.manager.clock.callLater(
                self.manager.settings.limits.write_deadline, self.transport.abortConnection)

    def start_handshake_clock(self) -> None:
        """The handshake must be done (L{handshake_done}) within the settings' C{handshake_timeout}, or the link closes."""
        timeout = self.manager.settings.handshake_timeout
        self._handshake_clock = self.manager.clock.callLater(timeout, self._too_slow, timeout)

    def handshake_done(self) -> None:
        """The handshake finished in time: its clock stops."""
        self._handshake_clock = timers.cancel(self._handshake_clock)

    def _too_slow(self, timeout: float) -> None:
        self._handshake_clock = None
        if not self.registered and not self.closed:
            self.log.warn(
                "{kind} {way} {host}:{port} did not complete its handshake in {t}s: closing it",
                kind=self.kind.label, way="to" if self.dialled else "from", host=self.host, port=self.port, t=timeout,
            )
            self.close("Authentication Timeout", "handshake timeout")

    def _teardown(self, why: str) -> None:
        self.closed = True
        self.turns.stop()
        # Interest being let go of (let_go) may still be delivered to: dropped.
        self.flush = self._dropped
        self.handshake_done()
        self._first_ping = timers.cancel(self._first_ping)
        self.pinger.stop()
        self.outbound.close()
        self.lost(why)

    def lost(self, why: str) -> None:
        """It has ended: tell the manager (and let go of its interest)."""
        raise NotImplementedError

    def _dropped(self) -> bool:
        del self.out[:]
        return False

    # -- the peer's interest: capped, and let go of in slices ----------------------

    def keeps_interest(self, held: int) -> bool:
        """
        Whether the link may keep the peer's interest at C{held} entries
        (subject and queue pairs, or what the protocol keeps instead): not
        once it has closed (the rest of a read is still parsed, and its
        interest was let go of), nor past the settings'
        C{max_link_subscriptions} (0: no cap).

        @raise ProtocolViolation: past the cap: the link closes, with
            L{MAX_SUBSCRIPTIONS}, and says why in the log.
        """
        if self.closed:
            return False
        cap = self.manager.settings.limits.max_link_subscriptions
        if cap and held > cap:
            self.log.warn(
                "{kind} {peer}: its interest passed {cap} subscriptions (the cap per link, [limits] "
                "max_link_subscriptions): closing it",
                kind=self.kind.label, peer=self.describe(), cap=cap,
            )
            raise ProtocolViolation(MAX_SUBSCRIPTIONS, "over max_link_subscriptions ({})".format(cap))
        if held >= self._frozen_at + FREEZE_STEP and _freeze is not None:
            self._frozen_at = held
            _freeze()
        return True

    def new_interest(self, subject: bytes, queue: Optional[bytes], origin: Optional[bytes]) -> Optional[Subscription]:
        """
        The peer's interest in C{subject} (and C{queue}), kept once per
        link: its new subscription (coming from C{origin}, a leaf cluster,
        or None), or None when it is held already (a queue weight update)
        or the link may not keep it (L{keeps_interest}).
        """
        key = (subject, queue)
        if key in self.subs or not self.keeps_interest(len(self.subs) + 1):
            return None
        sub = Subscription(self, subject, queue, b"")
        sub.origin = origin
        self.subs[key] = sub
        return sub

    def let_go(self, subs: List[Subscription], remove: Callable[[List[Subscription]], None]) -> None:
        """
        Remove a closed link's interest, C{subs}, with C{remove} (a few at
        a time): as much as one turn's budget (the settings'
        C{parse_budget}) allows now, the rest on later reactor turns, so
        that letting go of a million entries never holds the reactor.  What
        is delivered to them meanwhile is dropped (the link is closed).
        """
        budget = self.manager.settings.parse_budget
        started = perf_counter()
        while subs:
            remove(subs[-LET_GO_SLICE:])
            del subs[-LET_GO_SLICE:]
            if subs and budget is not None and perf_counter() - started > budget:
                self.manager.clock.callLater(0, self.let_go, subs, remove)
                break
        else:
            self.interest_gone()
        # (Other links hear of what went: RS-, LS-.)
        self.broker.flush()

    def interest_gone(self) -> None:
        """All of a closed link's interest has gone: what was frozen while it grew is the collector's again."""
        if self._frozen_at and _unfreeze is not None:
            self._frozen_at = 0
            _unfreeze()

    # -- output and liveness: the outbound part and the pinger ------------------

    def send(self, data: bytes) -> None:
        """Queue C{data} (whole lines) for the next flush."""
        self.out.append(data)
        self.broker.mark_dirty(self)

    @property
    def pending_bytes(self) -> int:
        """Bytes owed to the peer and not yet handed to the transport."""
        return self.outbound.pending_bytes

    @property
    def pings_out(self) -> int:
        """PINGs sent that no PONG answered yet (for monitoring)."""
        return self.pinger.pings_out

    def first_ping(self) -> None:
        """
        The link is up: a PING once this turn's handshake output is out, so
        that its round trip is known from the start (nats-server's first
        PING), not only after the first ping interval.
        """
        def ping() -> None:
            self._first_ping = None
            if not self.closed:
                self.pinger.ping_now()

        self._first_ping = self.manager.clock.callLater(0, ping)

    @property
    def rtt(self) -> float:
        """Seconds from a PING to its PONG, last measured (0: not yet)."""
        return self.pinger.rtt

    def stall(self, consumer: Any) -> None:
        """Never stalled: a peer's reads do not wait for a slow client (a slow peer is cut off instead)."""
        pass  # a peer's reads are never stalled for a slow client

    def _slow(self, why: str) -> None:
        self.log.warn(
            "{kind} to {peer} cannot keep up ({n} bytes held): closing it",
            kind=self.kind.label, peer=self.describe(), n=self.outbound.held_bytes,
        )
        self.close(None, "slow " + self.kind.label)

    def _send_now(self, data: bytes) -> None:
        self.send(data)
        self.broker.flush()

    def _stale(self) -> None:
        self.close("Stale Connection", "stale " + self.kind.label)

    # -- what every peer protocol answers the same way ----------------------------

    def json_object(self, arg: bytes, verb: str) -> Dict[str, Any]:
        """
        The JSON object an C{INFO} or C{CONNECT} (C{verb}) carries.

        @raise ProtocolViolation: not a JSON object (C{bad <verb> on
            <speaks>}): the link closes.
        """
        try:
            value = wirejson.loads(arg)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ProtocolViolation(None, "bad {} on {}".format(verb, self.speaks))
        return value

    def read_connect(self, arg: bytes, struct: GoStruct = CLIENT_OPTS) -> Dict[str, Any]:
        """
        The peer's C{CONNECT} as nats-server reads it into C{struct}: with
        Go's encoding/json (L{GoStruct.decode}: field names in any case, a
        C{null} leaving a field as it was, types checked).  nats-server
        reads every CONNECT into ClientOpts first (L{CLIENT_OPTS}: the
        credentials, C{lang}) and checks the credentials, then reads it
        again into the link's own struct: a link does the same, in the
        same order, so a wrong type in a field of the second is found
        after the credentials, as there.

        @raise ProtocolViolation: not a JSON object, or a field of the
            wrong type (C{bad CONNECT on <speaks>}): the link closes
            without a word, as nats-server's.
        """
        try:
            return struct.decode(arg)
        except ValueError:
            raise ProtocolViolation(None, "bad CONNECT on {}".format(self.speaks))

    def op_ping(self) -> None:
        """C{PING}: answered C{PONG}."""
        self.send(PONG)

    def op_pong(self) -> None:
        """C{PONG}: the peer is alive."""
        self.pinger.pong_received()

    def op_err(self, arg: bytes) -> None:
        """C{-ERR} from the peer: logged, and the link closes (one we closed already says why itself)."""
        if self.closed:
            return
        self.log.warn("{kind} {peer} says: {error}", kind=self.kind.label, peer=self.describe(), error=arg.decode("utf-8", "replace"))
        self.close(None, "peer sent -ERR")

    def op_no_responders(self, reply: bytes) -> None:
        """Nothing to do: the requester's server answers for its own clients."""
        pass  # the requester's server answers for its own clients

    def remove_subscription(self, sub: Subscription) -> None:
        """Nothing to do: a peer's interest has no auto-unsubscribe maximum."""
        pass  # remote interest has no auto-unsubscribe

