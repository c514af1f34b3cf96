"""
Gateways: the supercluster protocol of nats-server 2.9, both ways.

A gateway joins this server's cluster to another cluster (eventsvc or
nats-server).  Each server dials one connection to every remote gateway
(I{outbound}: our messages go out on it, the peer's interest comes back on
it) and accepts one from every server of the remote clusters (I{inbound}:
their messages come in on it, our cluster's interest goes out on it).

Interest, as 2.9 does it:
  - an outbound connection starts I{optimistic}: everything goes, except
    subjects the peer said it has no interest in (C{RS-}) and accounts it
    has none in at all (C{A-});
  - the peer switches it to I{interest-only} (C{INFO} with C{gateway_cmd}
    2, every C{RS+}, C{gateway_cmd} 3), after which only what it asked
    for goes;
  - we switch every inbound connection to interest-only as soon as it
    registers, as 2.9 does, so we never need to send C{RS-} for a message
    nobody here wanted.
Queue groups are served once in the whole supercluster: in this cluster
when any member is here, else by the first gateway with members, told the
group's name in its C{RMSG}.

Replies: a request whose reply subject one of our subscriptions made in
the last two seconds gets the reply C{_GR_.<cluster hash>.<server
hash>.<reply>}, so the answer comes straight back to this server whatever
interest has or has not crossed yet.  A message arriving with such a reply
is given to our subscribers with the plain reply, and for two seconds a
publish to that reply goes straight back to the cluster it names.

What it must not do: know about events, tokens or HTTP.
"""

from __future__ import annotations

import base64
import hashlib
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet.task import LoopingCall

from eventsvc import wirejson
from eventsvc.nats import limits, timers
from eventsvc.nats.frames import RMSG, account_line, connect_line, gateway_info_line, link_message, rmsg_head, rs_line
from eventsvc.nats.kinds import Kind
from eventsvc.nats.parser import GatewayParser, ProtocolViolation
from eventsvc.nats.links.connection import PeerConnection
from eventsvc.nats.links.manager import DialTarget, LinkManager, host_port
from eventsvc.nats.delivery import PLAN_CACHE_SIZE
from eventsvc.nats.server import Broker
from eventsvc.nats.subjects import SubjectCache, Sublist, Subscription, subject_matches, valid_subject

GLOBAL = b"$G"
#: Routed replies: C{_GR_.<cluster hash>.<server hash>.<reply>}.
GR_PREFIX = b"_GR_."
HASH_LEN = 6
_CLUSTER_AT = len(GR_PREFIX)
_SERVER_AT = _CLUSTER_AT + HASH_LEN + 1
SUBJECT_AT = _SERVER_AT + HASH_LEN + 1
#: How long a subscription counts as recent (its requests' replies are
#: routed), and how long a routed reply is remembered: nats-server's 2 s.
RECENT = 2.0
#: Gateways ping at least this often, busy or not (nats-server's rule).
MAX_PING_INTERVAL = 15.0
#: INFO gateway_cmd values.
CMD_GOSSIP, CMD_ALL_SUBS_START, CMD_ALL_SUBS_COMPLETE = 1, 2, 3
OPTIMISTIC, TRANSITIONING, INTEREST_ONLY = "Optimistic", "Transitioning", "Interest-Only"

#: A gateway plan saying "take the general path".
GENERAL = object()

_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def gateway_hash(name: str) -> bytes:
    """nats-server's getHashSize(name, 6): the name in a routed reply."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return bytes(_DIGITS[b % 62] for b in digest[:HASH_LEN])


def routed(subject: bytes) -> bool:
    """Whether C{subject} is a routed reply (C{_GR_.} with both hashes and more)."""
    return len(subject) > SUBJECT_AT and subject[:_CLUSTER_AT] == GR_PREFIX


def command_info(gateway: str, cmd: int, account: bytes) -> bytes:
    """An interest-mode command, in nats-server's shape (its Info with zero values)."""
    return gateway_info_line({
        "server_id": "", "server_name": "", "version": "", "proto": 0, "go": "", "host": "", "port": 0,
        "headers": False, "max_payload": 0, "gateway": gateway, "gateway_cmd": cmd,
        "gateway_cmd_payload": base64.b64encode(account).decode("ascii"),
    })


class RemoteInterest:
    """
    What the peer of an outbound connection wants of the C{$G} account,
    as nats-server's C{outsie}: unknown (nothing heard yet), none (C{A-}),
    or an entry with a mode, the subjects it has no interest in
    (optimistic) and a sublist of what it asked for.  Pure bookkeeping.
    """

    def __init__(self, owner: Any, interest_only: bool = False, changed: Optional[Callable[[Optional[bytes]], None]] = None) -> None:
        self.owner = owner
        #: Told what changed: the subject or pattern, or None for anything.
        self.changed: Callable[[Optional[bytes]], None] = changed or (lambda pattern: None)
        #: The peer said every account is switched to interest-only at once
        #: (INFO gateway_iom): until it says so for an account, nothing goes.
        self.interest_only = interest_only
        self.state = "unknown"  # or "none" (A-), or "entry"
        self.mode = OPTIMISTIC
        self.ni: Set[bytes] = set()
        self.sublist = Sublist()
        self.subs: Dict[Tuple[bytes, Optional[bytes]], Subscription] = {}
        self.queue_subs = 0

    def _entry(self) -> None:
        if self.state != "entry":
            self.state, self.mode, self.ni = "entry", OPTIMISTIC, set()
            self.changed(None)

    def wants(self, subject: bytes) -> Tuple[bool, List[bytes]]:
        """(plain interest, the queue groups with members there) for a message on C{subject}."""
        if self.state == "none":
            return False, []
        if self.state == "unknown":
            return not self.interest_only, []
        plain = self.mode != INTEREST_ONLY and subject not in self.ni
        result = self.sublist.match(subject)
        if result.plain:
            plain = True
        return plain, [group[0].queue for group in result.queues if group and group[0].queue is not None]

    def rs_plus(self, subject: bytes, queue: Optional[bytes]) -> None:
        """C{RS+} from the peer: interest where the mode keeps it (a queue group's always; a plain subject's in interest-only mode, or it ends a no-interest entry)."""
        if self.state == "entry":
            use_sublist = queue is not None or self.mode != OPTIMISTIC
        elif queue is None:
            return
        else:
            self._entry()
            use_sublist = True
        if not use_sublist:
            if b"*" in subject or b">" in subject:
                self.ni = {s for s in self.ni if not subject_matches(subject, s)}
            else:
                self.ni.discard(subject)
            self.changed(subject)
            return
        key = (subject, queue)
        if key in self.subs:
            return
        sub = Subscription(self.owner, subject, queue, b"")
        self.subs[key] = sub
        self.sublist.insert(sub)
        if queue is not None:
            self.queue_subs += 1
        self.changed(subject)

    def rs_minus(self, subject: bytes, queue: Optional[bytes]) -> None:
        """C{RS-} from the peer: no interest in a subject (optimistic mode), or interest that ends (interest-only mode, queue groups)."""
        if self.state == "entry":
            use_sublist = queue is not None or self.mode != OPTIMISTIC
        elif queue is not None:
            return
        else:
            self._entry()
            use_sublist = False
        if not use_sublist:
            self.ni.add(subject)
            self.changed(subject)
            return
        sub = self.subs.pop((subject, queue), None)
        if sub is None:
            return
        self.sublist.remove(sub)
        if queue is not None:
            self.queue_subs -= 1
        self.changed(subject)
        if not self.subs and self.mode == OPTIMISTIC and not self.ni:
            self.state = "unknown"
            self.changed(None)

    def account(self, interested: bool) -> None:
        """C{A+} (True) or C{A-} (False) for the account."""
        if interested:
            if self.state == "none" or (self.state == "entry" and self.queue_subs == 0):
                self._forget()
        elif self.state == "entry" and self.queue_subs > 0:
            self.ni = set()  # (nats-server keeps the queue members and clears the rest)
        else:
            self._forget()
            self.state = "none"
        self.changed(None)

    @property
    def held(self) -> int:
        """How many entries it keeps: subscriptions, and subjects of no interest (what the cap per link counts)."""
        return len(self.subs) + len(self.ni)

    def _forget(self) -> None:
        self.changed(None)
        self.state, self.mode, self.ni = "unknown", OPTIMISTIC, set()
        # (A new index, not a million removals in one turn.)
        self.sublist = Sublist()
        self.subs = {}
        self.queue_subs = 0

    def start(self) -> None:
        """The peer starts sending all its interest (gateway_cmd 2)."""
        self._entry()
        self.mode = TRANSITIONING
        self.changed(None)

    def complete(self) -> None:
        """All its interest has been sent (gateway_cmd 3): only that goes from now on."""
        if self.state == "entry":
            self.ni = set()
            self.mode = INTEREST_ONLY
            self.changed(None)


class GatewayConnection(PeerConnection):
    """
    One gateway connection, dialled (C{remote} given: it carries our
    messages and brings back the peer's interest) or accepted (it brings
    the peer's messages and carries our cluster's interest): a
    L{PeerConnection} speaking the gateway protocol (L{GatewayParser}).
    """

    kind = Kind.GATEWAY

    def __init__(self, manager: "GatewayManager", remote: Optional["RemoteGateway"] = None) -> None:
        settings = manager.settings
        super().__init__(manager, min(settings.ping_interval, MAX_PING_INTERVAL), GatewayParser)
        self.remote = remote
        #: The remote gateway's (cluster's) name, and its hash in routed replies.
        self.name = remote.name if remote is not None else ""
        self.hash = remote.hash if remote is not None else b""
        self.connect_seen = False  # accepted: its CONNECT came
        self.interest = RemoteInterest(self, changed=manager.forget_plans)
        #: Whether the peer takes HMSG (else headers are dropped, as nats-server does).
        self.peer_headers = True
        #: Accounts we told the peer (A-) we have no interest in.
        self.refused_accounts: Set[bytes] = set()
        #: For /gatewayz (its own numbering: gateways are not clients).
        self.cid = manager.next_cid()

    @property
    def dialled(self) -> bool:
        """Whether we dialled the gateway (it carries our messages)."""
        return self.remote is not None

    def describe(self) -> str:
        """The remote gateway's name for the log, or its host."""
        return self.name or self.host

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        """The connection is up: an accepted one sends INFO; the handshake clock starts."""
        super().connectionMade()
        if not self.dialled:
            self.send(self.manager.info_line())
            self.flush()
        self.start_handshake_clock()

    def lost(self, why: str) -> None:
        """The connection ended: the manager hears of it, and the peer's interest goes."""
        self.manager.lost(self, why)
        # (Its RemoteInterest goes with it, by the cyclic collector.)
        self.interest_gone()

    # -- output ------------------------------------------------------------------

    def send_message(
        self, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes], size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> None:
        """An RMSG (or HMSG) in C{$G} to the peer, naming C{queues} if any."""
        self.out.append(link_message(RMSG, subject, reply, queues, size, tail, hdr_len, body, headers=self.peer_headers))
        self.out_msgs += 1
        self.out_bytes += size
        self.broker.mark_dirty(self)

    # -- the handshake -------------------------------------------------------------

    def op_connect(self, arg: bytes) -> None:
        """C{CONNECT} on an accepted gateway: it must be a gateway, with our credentials."""
        if self.dialled:
            return  # (nats-server's dialled side ignores one too)
        try:
            options = wirejson.loads(arg)
        except ValueError:
            raise ProtocolViolation(None, "bad CONNECT on gateway")
        if not isinstance(options, dict):
            raise ProtocolViolation(None, "bad CONNECT on gateway")
        if not options.get("gateway") or not isinstance(options.get("gateway"), str):
            self.log.warn("{host}:{port} dialled the gateway port without being a gateway", host=self.host, port=self.port)
            raise ProtocolViolation("attempted to connect to gateway port", "not a gateway")
        if not self.manager.check_credentials(options):
            self.log.warn("gateway {name} from {host}:{port} refused: wrong credentials", name=options["gateway"], host=self.host, port=self.port)
            raise ProtocolViolation("Authorization Violation", "gateway credentials refused")
        self.connect_seen = True

    def op_info(self, arg: bytes) -> None:
        """C{INFO}: the peer's (registering the connection), or an interest-mode command or gossip."""
        try:
            info = wirejson.loads(arg)
        except ValueError:
            raise ProtocolViolation(None, "bad INFO on gateway")
        if not isinstance(info, dict):
            raise ProtocolViolation(None, "bad INFO on gateway")
        if self.dialled:
            self._info_from_peer(info)
        elif not self.connect_seen:
            raise ProtocolViolation("Authorization Violation", "INFO before CONNECT on gateway")
        elif not self.registered:
            name = info.get("gateway")
            if not isinstance(name, str) or not name:
                raise ProtocolViolation(None, "gateway INFO without a gateway name")
            if info.get("server_id") == self.broker.server_id or name == self.manager.settings.name:
                self.close(None, "connected to ourselves")
                return
            self.name, self.hash = name, gateway_hash(name)
            self.remote_id, self.remote_info = str(info.get("server_id", "")), info
            self.manager.inbound_up(self)

    def _info_from_peer(self, info: Dict[str, Any]) -> None:
        first = not self.remote_id
        name = info.get("gateway")
        if not name:
            self.log.warn("gateway {name} at {host}:{port} is not a gateway port", name=self.name, host=self.host, port=self.port)
            self.close('Attempt to connect to gateway "{}" using wrong port'.format(self.name), "wrong port")
            return
        if name != self.name:
            if not first and info.get("gateway_cmd") == CMD_GOSSIP:
                self.manager.heard_of(info)
                return
            self.log.warn("gateway {name} at {host}:{port} says it is {other}: closing it", name=self.name, host=self.host, port=self.port, other=name)
            self.close(
                'Connection from "{}" rejected, wanted to connect to "{}", this is "{}"'.format(self.manager.settings.name, self.name, name),
                "wrong gateway",
            )
            return
        urls = info.get("gateway_urls")
        if isinstance(urls, list):
            self.manager.learn_urls(self.name, [u for u in urls if isinstance(u, str)])
        if first:
            server_id = str(info.get("server_id", ""))
            if server_id == self.broker.server_id:
                self.close(None, "connected to ourselves")
                return
            self.remote_id, self.remote_info = server_id, info
            self.interest.interest_only = bool(info.get("gateway_iom"))
            self.manager.forget_plans(None)
            self.peer_headers = bool(info.get("headers"))
            self.send(connect_line(self.manager.connect_options()))
            self.send(self.manager.info_line())
            if not self.manager.outbound_up(self):
                self.close(None, "duplicate gateway to {}".format(self.name))
            return
        cmd = info.get("gateway_cmd")
        if cmd in (CMD_ALL_SUBS_START, CMD_ALL_SUBS_COMPLETE):
            payload = info.get("gateway_cmd_payload")
            try:
                account = base64.b64decode(payload, validate=True) if isinstance(payload, str) else b""
            except ValueError:
                account = b""
            if not account:
                raise ProtocolViolation(
                    "Account absent from receive-all-subscriptions-{} command".format("start" if cmd == CMD_ALL_SUBS_START else "complete"),
                    "gateway command without an account",
                )
            if account == GLOBAL:
                if cmd == CMD_ALL_SUBS_START:
                    self.interest.start()
                else:
                    self.interest.complete()
                    self.log.info("gateway {name}: interest-only mode", name=self.name)

    # -- interest (the peer's, on a dialled connection) -------------------------------

    def _outbound_only(self, verb: str) -> None:
        if not self.dialled:
            raise ProtocolViolation(None, "{} from gateway on inbound connection".format(verb))

    def op_rs_plus(self, account: bytes, subject: bytes, queue: Optional[bytes], weight: int) -> None:
        """C{RS+} on a dialled gateway: the peer's interest (unless we do not export it)."""
        self._outbound_only("RS+")
        if account == GLOBAL and valid_subject(subject):
            exports = self.manager.settings.exports
            if exports is not None and not exports.may_subscribe(subject, queue):
                self.log.debug("gateway {name}: not exporting {subject}", name=self.name, subject=subject)
                return
            self.interest.rs_plus(subject, queue)
            self.keeps_interest(self.interest.held)

    def op_rs_minus(self, account: bytes, subject: bytes, queue: Optional[bytes]) -> None:
        """C{RS-} on a dialled gateway: no interest (optimistic mode) or interest that ends."""
        self._outbound_only("RS-")
        if account == GLOBAL:
            # (In optimistic mode an RS- is kept: the subjects of no interest count too.)
            self.interest.rs_minus(subject, queue)
            self.keeps_interest(self.interest.held)

    def op_account(self, account: bytes, interested: bool) -> None:
        """C{A+}/C{A-} on a dialled gateway: the peer's interest in the whole account."""
        self._outbound_only("A+" if interested else "A-")
        if account == GLOBAL:
            self.interest.account(interested)

    # -- messages (the peer's, on an accepted connection) -------------------------------

    def _take(self, account: bytes, subject: bytes) -> bool:
        if self.dialled or not self.registered:
            return False
        if account != GLOBAL:
            if account not in self.refused_accounts:
                # As nats-server: tell it once that we have nobody there.
                self.refused_accounts.add(account)
                self.send(account_line(account, False))
            return False
        return True

    def publish(self, src: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        """An RMSG in C{$G} without queue names (the framing loop counts it)."""
        if self._take(GLOBAL, subject):
            return self.manager.received(self, subject, reply, (), size, tail, -1, b"")
        return 0

    def publish_batch(self, src: Any, subject: bytes, tails: List[bytes], size: int) -> None:
        """Such RMSGs to one subject without a reply, in order."""
        if self._take(GLOBAL, subject):
            self.manager.received_batch(self, subject, tails, size)

    def op_pub(self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> None:
        """A message without queue names (what the framing loop's fast branch hands over)."""
        self.publish(self, subject, reply, size, tail)

    def op_rmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes) -> None:
        """An RMSG from another cluster, naming queue groups or not."""
        if self._take(account, subject):
            self.manager.received(self, subject, reply, queues, size, tail, -1, b"")

    def op_rhmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], hdr_len: int, total: int, body: bytes) -> None:
        """An HMSG (with headers) from another cluster."""
        self.in_msgs += 1
        self.in_bytes += total
        if self._take(account, subject):
            self.manager.received(self, subject, reply, queues, total, b"", hdr_len, body)


class RemoteGateway(DialTarget):
    """A gateway we dial: configured, or implicit (heard of, dialled until it fails)."""

    def __init__(self, name: str, urls: Sequence[str], implicit: bool = False) -> None:
        super().__init__()
        self.name = name
        self.hash = gateway_hash(name)
        self.urls: List[str] = []
        self.implicit = implicit
        self.add(urls)

    def add(self, urls: Sequence[str]) -> None:
        """URLs heard of for this gateway (gossip, INFO), kept once each."""
        for url in urls:
            url = url if "://" in url else "nats://" + url
            if url not in self.urls:
                self.urls.append(url)

    @property
    def url(self) -> str:
        """The URL the next dial uses: its URLs in turn, one more at each failure."""
        return self.urls[self.attempts % len(self.urls)] if self.urls else ""

    def address(self) -> Tuple[str, int]:
        """The host and port of the next dial."""
        return host_port(self.url, "nats")

    def label(self) -> str:
        """C{gateway <name>}, for the log."""
        return "gateway " + self.name


@dataclass(frozen=True)
class GatewaySettings:
    """A supercluster's settings, built once from [supercluster] and [limits]."""

    name: str
    host: str = "0.0.0.0"
    #: The port configured (0: any); the manager's C{port} is the one bound.
    port: int = 7222
    #: The gateways to dial: (name, (url, ...)).
    gateways: Tuple[Tuple[str, Tuple[str, ...]], ...] = ()
    user: str = ""
    password: str = ""
    #: host:port other gateways are told to dial for this server (default: host and port).
    advertise: str = ""
    max_payload: int = limits.MAX_PAYLOAD
    max_control_line: int = limits.MAX_CONTROL_LINE
    max_pending: int = limits.MAX_PENDING
    ping_interval: float = limits.PING_INTERVAL
    ping_max: int = limits.PING_MAX
    #: Seconds a gateway connection has to be up (TLS, INFO, CONNECT).
    handshake_timeout: float = 5.0
    retry_initial: float = 0.5
    retry_max: float = 10.0
    #: TLS: server options (mutual) for accepted gateways, a function of the
    #: host name giving client options for dialled ones, and the name
    #: peers' certificates must carry.
    tls_server: Any = None
    tls_client: Any = None
    tls_name: str = ""
    listen_backlog: int = limits.LISTEN_BACKLOG
    #: Gateway permissions (IPermissions, or None for everything), as the
    #: cluster's: C{imports} decides which of our interest peers hear of
    #: (may_subscribe) and which of their messages we take (may_publish);
    #: C{exports}, which of their interest we accept and which of our
    #: messages may go (a routed reply is judged by the reply it carries).
    imports: Any = None
    exports: Any = None
    #: Seconds of parsing one read may take before the rest waits a
    #: reactor turn (None: no bound; see Framer.budget), as for clients.
    parse_budget: Optional[float] = limits.PARSE_BUDGET
    #: Entries of the peer's interest one link may hold (0: no cap): its
    #: subscriptions, and the subjects it said it has no interest in.
    max_link_subscriptions: int = limits.MAX_LINK_SUBSCRIPTIONS


def _unwrapped(subject: bytes) -> bytes:
    return subject[SUBJECT_AT:] if routed(subject) else subject


class _ReplySource:
    """The source of a routed reply that reached its cluster: delivered as a client's publish is."""

    kind = Kind.CLIENT
    cid = 0
    cluster_origin = b""
    message_origin: Optional[bytes] = None
    echo = True
    headers = True


class GatewayManager(LinkManager):
    """The gateways of one server: the listener, the dialled gateways, interest, replies."""

    listen_what = "gateways ([supercluster] host and port)"

    def __init__(self, broker: Broker, reactor: Any, settings: GatewaySettings) -> None:
        super().__init__(broker, reactor, settings, "supercluster")
        self.cluster_hash = gateway_hash(settings.name)
        self.server_hash = gateway_hash(broker.server_id)
        self.reply_prefix = GR_PREFIX + self.cluster_hash + b"." + self.server_hash + b"."
        self.remotes: Dict[str, RemoteGateway] = {name: RemoteGateway(name, urls) for name, urls in settings.gateways}
        #: The gateways the configuration names (the others are implicit).
        self.settings_names = {name for name, _ in settings.gateways}
        self._cids = 0
        #: Registered connections: dialled by remote name, accepted ones.
        self.outbound: Dict[str, GatewayConnection] = {}
        self.inbound: List[GatewayConnection] = []
        self._outbound_list: List[GatewayConnection] = []
        #: This cluster's interest (local and routes'), as the peers are told it.
        self.interest: Dict[Tuple[bytes, Optional[bytes]], int] = {}
        #: Subscriptions made in the last RECENT seconds (replies to them are
        #: routed), and when each stops being recent, oldest first: one timer
        #: for them all (a burst of 10,000 subscriptions is not 10,000 timers).
        self.recent = Sublist()
        self._recent_until: Deque[Tuple[float, Subscription]] = deque()
        self._recent_timer: Any = None
        #: Routed replies we gave our subscribers: plain reply -> (routed, until).
        self.replies: Dict[bytes, Tuple[bytes, float]] = {}
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = reactor
        #: The routes of this cluster (a RouteManager), for replies meant for
        #: another server of ours; set by whoever composes the two.
        self.routes: Any = None
        self.source = _ReplySource()
        #: Per subject, the gateways a message goes to and their frames'
        #: start (C{RMSG $G <subject> }), or GENERAL when queue groups or a
        #: routed subject need the general path; kept until the interest
        #: it was made from changes.
        self._plans = SubjectCache(PLAN_CACHE_SIZE)
        self._plan_entries = self._plans.entries
        #: Messages dropped: a routed reply for another cluster, or not imported.
        self.dropped = 0
        for remote in list(self.remotes.values()):
            self.dial(remote)

    def forget_plans(self, pattern: Optional[bytes]) -> None:
        """A peer's interest on C{pattern} changed (None: in a way that may touch any subject)."""
        if pattern is None:
            self._plans.clear()
        else:
            self._plans.forget(pattern)

    def next_cid(self) -> int:
        """A new gateway connection id (for /gatewayz; gateways are numbered apart from clients)."""
        self._cids += 1
        return self._cids

    # -- what we say ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """Our gateway URL (host:port), as the peers are told it."""
        if self.settings.advertise:
            return self.settings.advertise
        host = "127.0.0.1" if self.settings.host in ("", "0.0.0.0", "::") else self.settings.host
        return "{}:{}".format(host, self.port)

    def info(self) -> Dict[str, Any]:
        """Our gateway INFO: who we are, our cluster's name and gateway URLs."""
        b = self.broker
        host, _, port = self.url.rpartition(":")
        info: Dict[str, Any] = {
            "server_id": b.server_id,
            "server_name": b.server_name,
            "version": b.version,
            "proto": 0,
            "go": b.implementation,
            "host": host,
            "port": int(port) if port.isdigit() else self.port,
            "headers": True,
        }
        if self.settings.user:
            info["auth_required"] = True
        if self.settings.tls_server is not None:
            info.update(tls_required=True, tls_verify=True)
        info.update(
            max_payload=self.settings.max_payload, gateway=self.settings.name, gateway_urls=self.cluster_urls(),
            gateway_url=self.url, gateway_nrp=True, gateway_iom=True,
        )
        return info

    def cluster_urls(self) -> List[str]:
        """Our gateway URL and those of the servers our routes reach (their route INFO's gateway_url)."""
        urls = [self.url]
        for route in list(self.routes.routes.values()) if self.routes is not None else ():
            url = route.remote_info.get("gateway_url")
            if isinstance(url, str) and url and url not in urls:
                urls.append(url)
        return urls

    def gossip_line(self, name: str, urls: Sequence[str]) -> bytes:
        """What our routes are told of a gateway we reach, as nats-server's forwardNewGatewayToLocalCluster."""
        return gateway_info_line({
            "server_id": "GW" + self.broker.server_id, "server_name": self.broker.server_name, "gateway": name,
            "gateway_urls": [u.split("://", 1)[-1] for u in urls], "gateway_cmd": CMD_GOSSIP,
        })

    def route_up(self, route: Any) -> None:
        """
        A route came up (the route manager's hook): its server hears of
        the gateways we reach, and the gateways of its gateway URL.
        """
        lines = [self.gossip_line(name, self.remotes[name].urls) for name in self.outbound if name in self.remotes]
        if lines:
            route.send(b"".join(lines))
        url = route.remote_info.get("gateway_url")
        if isinstance(url, str) and url:
            line = self.info_line()
            for conn in self.inbound:
                conn.send(line)

    def info_line(self) -> bytes:
        """Our gateway INFO, as a line."""
        return gateway_info_line(self.info())

    def connect_options(self) -> Dict[str, Any]:
        """What our CONNECT on a gateway we dial says."""
        options: Dict[str, Any] = {"echo": False, "verbose": False, "pedantic": False}
        if self.settings.user:
            options.update(user=self.settings.user, **{"pass": self.settings.password})
        options.update(
            tls_required=self.settings.tls_client is not None, headers=True, name=self.broker.server_id,
            cluster=self.broker.cluster_name, gateway=self.settings.name,
        )
        return options

    def check_credentials(self, options: Dict[str, Any]) -> bool:
        """Whether a peer's CONNECT carries the supercluster's credentials (any, when it has none)."""
        if not self.settings.user:
            return True
        return options.get("user") == self.settings.user and options.get("pass") == self.settings.password

    # -- lifecycle ---------------------------------------------------------------------

    def startService(self) -> None:
        """Listen for gateways, count the interest already here, offer ourselves to the broker and dial the remotes."""
        self.listen()
        self.log.info("supercluster gateway {name} listening on {host}:{port}", name=self.settings.name, host=self.settings.host, port=self.port)
        for sub in self.broker.sublist.all():
            self._count(sub.subject, sub.queue, 1)
        self.broker.gateways = self
        self.broker.interest_listeners.append(self._local_interest)
        self.broker.remote_interest_listeners.append(self._route_interest)
        super().startService()

    def stopService(self) -> Any:
        """Stop redialling and sweeping, close every gateway connection and stop listening."""
        if self.broker.gateways is self:
            self.broker.gateways = None
        if self._local_interest in self.broker.interest_listeners:
            self.broker.interest_listeners.remove(self._local_interest)
        if self._route_interest in self.broker.remote_interest_listeners:
            self.broker.remote_interest_listeners.remove(self._route_interest)
        if self._sweeper.running:
            self._sweeper.stop()
        self._recent_timer = timers.cancel(self._recent_timer)
        return self.stop_links(list(self.outbound.values()) + list(self.inbound))

    # -- dialling ------------------------------------------------------------------------

    def accepted(self) -> GatewayConnection:
        """A gateway that dialled us."""
        return GatewayConnection(self)

    def dialled(self, target: DialTarget) -> GatewayConnection:
        """The connection we dialled to C{target} (a L{RemoteGateway})."""
        assert isinstance(target, RemoteGateway)
        return GatewayConnection(self, target)

    def dial(self, remote: RemoteGateway) -> None:
        """Keep dialling C{remote} (its URLs in turn) until a link is up, and whenever it drops."""
        if remote.urls:
            self.keep_dialling(remote)

    def dial_failed(self, target: DialTarget, url: str, why: str) -> None:
        """A dial to C{target} at C{url} failed: the log will name the URL."""
        super().dial_failed(target, url, "{}: {}".format(url, why))

    def redial_delay(self, target: DialTarget) -> Optional[float]:
        """The backoff, or None for a gateway we only heard of (or forgot)."""
        assert isinstance(target, RemoteGateway)
        if self.remotes.get(target.name) is not target:
            return None
        if target.implicit:
            # As nats-server: a gateway we only heard of is not chased; it
            # dials us again when it comes back.
            self.log.info("gateway {name}: {why}; it was implicit, not dialling it again", name=target.name, why=target.why)
            del self.remotes[target.name]
            return None
        return super().redial_delay(target)

    def learn_urls(self, name: str, urls: Sequence[str]) -> None:
        """URLs heard of for the gateway C{name}, if we know it."""
        remote = self.remotes.get(name)
        if remote is not None:
            remote.add(urls)

    def heard_of(self, info: Dict[str, Any]) -> None:
        """Gossip or an inbound gateway we do not dial yet: an implicit gateway."""
        name = info.get("gateway")
        urls = info.get("gateway_urls")
        if not isinstance(name, str) or not name or name == self.settings.name:
            return
        urls = [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []
        remote = self.remotes.get(name)
        if remote is not None:
            remote.add(urls)
            return
        if not urls:
            return
        remote = self.remotes[name] = RemoteGateway(name, urls, implicit=True)
        self.log.info("heard of gateway {name} at {urls}: dialling it", name=name, urls=", ".join(remote.urls))
        self.dial(remote)

    # -- the links -------------------------------------------------------------------------

    def _up(self, conn: GatewayConnection) -> None:
        conn.registered = True
        conn.first_ping()
        conn.handshake_done()
        conn.pinger.start()

    def outbound_up(self, conn: GatewayConnection) -> bool:
        """A dialled connection is up: registered unless one to that gateway already is (False: close this one)."""
        remote = conn.remote
        assert remote is not None
        existing = self.outbound.get(remote.name)
        if existing is not None and existing is not conn and not existing.closed:
            return False
        remote.up()
        self.outbound[remote.name] = conn
        self._outbound_list = list(self.outbound.values())
        self._plans.clear()
        self._up(conn)
        self.log.info("gateway to {name} ({peer}) up, dialled {host}:{port}", name=remote.name, peer=conn.remote_id, host=conn.host, port=conn.port)
        if self.routes is not None:
            # The other servers of our cluster dial it too (implicitly).
            line = self.gossip_line(remote.name, remote.urls)
            for route in list(self.routes.routes.values()):
                route.send(line)
        self.broker.flush()
        return True

    def inbound_up(self, conn: GatewayConnection) -> None:
        """An accepted connection is up: it is told this cluster's interest."""
        self.inbound.append(conn)
        self._up(conn)
        self.log.info("gateway from {name} ({peer}) up, accepted from {host}:{port}", name=conn.name, peer=conn.remote_id, host=conn.host, port=conn.port)
        # As 2.9: our queue groups first, then the account switched to
        # interest-only at once (every plain interest between the commands).
        queues = [rs_line(s, q, 1) for (s, q) in self.interest if q is not None]
        plain = [rs_line(s, q, 1) for (s, q) in self.interest if q is None]
        conn.send(b"".join(queues))
        # It may be a gateway we do not dial yet (an implicit one), and it
        # hears of the others we know (gossip), as nats-server does.
        self.heard_of(dict(conn.remote_info, gateway=conn.name))
        for name, remote in self.remotes.items():
            if name != conn.name and remote.urls:
                conn.send(gateway_info_line({
                    "server_id": self.broker.server_id, "gateway": name,
                    "gateway_urls": [u.split("://", 1)[-1] for u in remote.urls], "gateway_cmd": CMD_GOSSIP,
                }))
        conn.send(command_info(self.settings.name, CMD_ALL_SUBS_START, GLOBAL))
        conn.send(b"".join(plain))
        conn.send(command_info(self.settings.name, CMD_ALL_SUBS_COMPLETE, GLOBAL))
        self.broker.flush()

    def lost(self, conn: GatewayConnection, why: str) -> None:
        """A connection ended: forget it and, when we dialled it, dial again."""
        if conn.dialled:
            remote = conn.remote
            assert remote is not None
            remote.why = why  # (its service dials again, and says why)
            if self.outbound.get(remote.name) is conn:
                del self.outbound[remote.name]
                self._outbound_list = list(self.outbound.values())
                self._plans.clear()
                self.log.info("gateway to {name} down: {why}", name=remote.name, why=why)
        elif conn in self.inbound:
            self.inbound.remove(conn)
            self.log.info("gateway from {name} ({peer}) down: {why}", name=conn.name, peer=conn.remote_id, why=why)

    def down(self) -> List[str]:
        """The configured gateways without a link out."""
        return [name for name, remote in self.remotes.items() if not remote.implicit and name not in self.outbound]

    # -- our interest, told to the peers ------------------------------------------------------

    def _local_interest(self, subject: bytes, queue: Optional[bytes], before: int, after: int) -> None:
        self._count(subject, queue, after - before)

    def _route_interest(self, subject: bytes, queue: Optional[bytes], delta: int) -> None:
        self._count(subject, queue, delta)

    def _count(self, subject: bytes, queue: Optional[bytes], delta: int) -> None:
        imports = self.settings.imports
        if imports is not None and not imports.may_subscribe(subject, queue):
            return  # not ours to ask for (nor a reply to route to)
        if delta > 0 and self.running:
            sub = Subscription(self, subject, queue, b"")
            self.recent.insert(sub)
            self._recent_until.append((self.clock.seconds() + RECENT, sub))
            if self._recent_timer is None:
                self._recent_timer = self.clock.callLater(RECENT, self._no_longer_recent)
        key = (subject, queue)
        before = self.interest.get(key, 0)
        after = before + delta
        if after > 0:
            self.interest[key] = after
        else:
            self.interest.pop(key, None)
        if (before > 0) == (after > 0) or not self.inbound:
            return
        line = rs_line(subject, queue, 1 if after > 0 else 0)  # (a gateway's queue weight is always 1)
        for conn in self.inbound:
            conn.send(line)

    # -- messages -------------------------------------------------------------------------------

    def _plan(self, subject: bytes) -> Any:
        plan: Any = []
        exports = self.settings.exports
        if exports is not None and not exports.may_publish(_unwrapped(subject)):
            pass  # nothing goes
        elif subject[:_CLUSTER_AT] == GR_PREFIX:
            plan = GENERAL
        else:
            head = rmsg_head(subject)
            for conn in self._outbound_list:
                plain, queues = conn.interest.wants(subject)
                if queues:
                    plan = GENERAL
                    break
                if plain:
                    plan.append((conn, head))
        self._plans.put(subject, plan)
        return plan

    def forward(
        self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes, targets: Any,
    ) -> int:
        """The broker's hook: a message from this cluster, to the gateways that want it."""
        if not self._outbound_list:
            return 0
        if not (self.replies and subject in self.replies):
            plan = self._plan_entries.get(subject)
            if plan is None:
                plan = self._plan(subject)
            if plan is not GENERAL and hdr_len < 0:
                # The usual case: plain interest only, one frame per gateway.
                frame_tail = tail if reply is None else self._reply(reply) + b" " + tail  # type: ignore[operator]
                for conn, head in plan:
                    conn.out.append(head)
                    conn.out.append(frame_tail)
                    conn.out_msgs += 1
                    conn.out_bytes += size
                    if not conn.dirty:
                        self.broker.mark_dirty(conn)
                return len(plan)
        return self._forward(subject, reply, size, tail, hdr_len, body, targets)

    def forward_batch(self, subject: bytes, tails: List[bytes], size: int, targets: Any) -> None:
        """Several messages to one subject, no reply: one joined frame per gateway when it can."""
        if not self._outbound_list:
            return
        plan = None if self.replies and subject in self.replies else self._plan_entries.get(subject)
        if plan is None and not (self.replies and subject in self.replies):
            plan = self._plan(subject)
        if plan is None or plan is GENERAL:
            for tail in tails:
                self._forward(subject, None, len(tail) - tail.index(b"\n") - 3, tail, -1, b"", targets)
            return
        k = len(tails)
        for conn, head in plan:
            conn.out.append(head + head.join(tails))
            conn.out_msgs += k
            conn.out_bytes += size
            if not conn.dirty:
                self.broker.mark_dirty(conn)

    def _forward(
        self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes, targets: Any,
    ) -> int:
        """The general path: queue groups, routed replies and subjects, headers."""
        outs = self._outbound_list
        exports = self.settings.exports
        if exports is not None and not exports.may_publish(_unwrapped(subject)):
            return 0
        if self.replies:
            known = self.replies.get(subject)
            if known is not None:
                if known[1] >= self.clock.seconds():
                    subject = known[0]  # an answer to a routed request: straight back
                else:
                    del self.replies[subject]
        if subject[:_CLUSTER_AT] == GR_PREFIX and routed(subject):
            wanted = subject[_CLUSTER_AT : _CLUSTER_AT + HASH_LEN]
            for conn in outs:
                if conn.hash == wanted:
                    conn.send_message(subject, self._reply(reply), (), size, tail, hdr_len, body)
                    return 1
            return 0
        served = {name for name, _ in targets.queue_info} if targets.queue_info else set()
        count = 0
        mapped: Optional[bytes] = None
        for conn in outs:
            plain, queues = conn.interest.wants(subject)
            if queues:
                queues = [q for q in queues if q not in served]
                served.update(queues)
            if not plain and not queues:
                continue
            if reply is not None and mapped is None:
                mapped = self._reply(reply)
            conn.send_message(subject, mapped, queues, size, tail, hdr_len, body)
            count += 1
        return count

    def _reply(self, reply: Optional[bytes]) -> Optional[bytes]:
        """The reply as gateways get it: routed when a recent subscription here takes it."""
        if reply is None or not self.recent.count:
            return reply
        found = self.recent.match(reply, False)
        return self.reply_prefix + reply if found.plain or found.queues else reply

    def strip(self, reply: Optional[bytes]) -> Optional[bytes]:
        """A reply as our subscribers see it: a routed one loses its prefix, and is remembered."""
        if reply is None or reply[:_CLUSTER_AT] != GR_PREFIX or not routed(reply):
            return reply
        plain = reply[SUBJECT_AT:]
        self.replies[plain] = (reply, self.clock.seconds() + RECENT)
        if not self._sweeper.running:
            self._sweeper.start(RECENT, now=False)
        return plain

    def _no_longer_recent(self) -> None:
        """The subscriptions made RECENT seconds ago or more leave the recent ones."""
        self._recent_timer = None
        now, until = self.clock.seconds(), self._recent_until
        while until and until[0][0] <= now:
            self.recent.remove(until.popleft()[1])
        if until:
            self._recent_timer = self.clock.callLater(until[0][0] - now, self._no_longer_recent)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for plain in [p for p, (_, until) in self.replies.items() if until < now]:
            del self.replies[plain]
        if not self.replies:
            self._sweeper.stop()

    def received_batch(self, conn: GatewayConnection, subject: bytes, tails: List[bytes], size: int) -> None:
        """Several plain messages from another cluster to one subject, no reply."""
        imports = self.settings.imports
        if subject[:_CLUSTER_AT] == GR_PREFIX or (imports is not None and not imports.may_publish(subject)):
            for tail in tails:
                self.received(conn, subject, None, (), len(tail) - tail.index(b"\n") - 3, tail, -1, b"")
            return
        self.broker.deliver_batch(conn, subject, tails, size)

    def received(
        self, conn: GatewayConnection, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes],
        size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> int:
        """A message from another cluster."""
        imports = self.settings.imports
        if imports is not None and not imports.may_publish(_unwrapped(subject)):
            self.dropped += 1
            return 0
        if subject[:_CLUSTER_AT] == GR_PREFIX and routed(subject):
            return self._routed_reply(conn, subject, reply, size, tail, hdr_len, body)
        return self.broker.deliver_message(
            conn, subject, self.strip(reply), size, tail, hdr_len, body, queues, routed_reply=reply
        )

    def from_route(
        self, route: Any, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes],
        size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> int:
        """A message from a route with a routed subject or reply (a route's hook)."""
        if routed(subject):
            return self._routed_reply(route, subject, reply, size, tail, hdr_len, body)
        return self.broker.deliver_message(route, subject, self.strip(reply), size, tail, hdr_len, body, queues)

    def _routed_reply(
        self, conn: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> int:
        """nats-server's handleGatewayReply: a reply routed to this cluster, perhaps to another server of it."""
        if subject[_CLUSTER_AT : _CLUSTER_AT + HASH_LEN] != self.cluster_hash:
            self.dropped += 1
            return 0
        server = subject[_SERVER_AT : _SERVER_AT + HASH_LEN]
        if conn.kind is Kind.GATEWAY and server != self.server_hash and self.routes is not None:
            for route in list(self.routes.routes.values()):
                if gateway_hash(route.remote_id) == server:
                    route.send(link_message(RMSG, subject, reply, (), size, tail, hdr_len, body))
                    return 1
        plain = subject[SUBJECT_AT:]
        local_reply = self.strip(reply)
        if hdr_len < 0:
            return self.broker.deliver(self.source, plain, local_reply, size, tail)
        return self.broker.deliver_message(self.source, plain, local_reply, size, b"", hdr_len, body)
