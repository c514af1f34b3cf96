"""
Leaf nodes: nats-server 2.9's leafnode protocol, as hub and as spoke.

A leaf link joins a server to a hub it dials (a I{remote}: we are its
spoke, the link is our I{uplink}) or a spoke that dialled us (we are its
hub, the link is a I{downleaf}).  Each side tells the other its interest
(C{LS+}/C{LS-}, queue groups with their member count), per link: a
downleaf is told every subscription this server knows of but its own; an
uplink only those of our clients and our downleafs (the hub hears of our
cluster's other servers from their own uplinks).  Messages cross as
C{LMSG} (or C{HMSG}) without an account, naming the queue groups they are
meant for.  The broker's delivery rules for leafs are in
L{eventsvc.nats.delivery} (C{reaches}); this module holds the handshake,
interest and loop detection: each server subscribes its leafs to its own
C{$LDS.<id>} subject, and a link that brings that interest back is a loop,
closed with nats-server's error (the spoke waits 30 s before dialling again).

What it must not do: know about events, tokens of the event gateway, or HTTP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from eventsvc.nats.limits import PARSE_BUDGET, Limits
from eventsvc.nats.frames import LMSG, connect_line, info_line, ls_line
from eventsvc.nats.kinds import Kind
from eventsvc.nats.parser import AUTHORIZATION_VIOLATION, LeafParser, ProtocolViolation
from eventsvc.nats.links.connection import PeerConnection
from eventsvc.nats.links.manager import DialTarget, LinkManager, host_port
from eventsvc.nats.server import Broker
from eventsvc.nats.subjects import Subscription, valid_subject

#: The prefix of the loop-detection subjects (nats-server's).
LDS_PREFIX = b"$LDS."
#: How long a spoke waits before dialling again after a loop or a cluster
#: name clash (nats-server's leafNodeReconnectDelayAfterLoopDetected).
LOOP_DELAY = 30.0
LOOP_ERROR = 'Loop detected for leafnode account="$G". Delaying attempt to reconnect for 30s'
SAME_CLUSTER_ERROR = "remote leafnode has same cluster name"
DUPLICATE_ERROR = "Duplicate Remote LeafNode Connection"

_NUID = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def loop_subject() -> bytes:
    """A fresh C{$LDS.<nuid>} subject (22 base-62 characters, as nats-server's nuid)."""
    return LDS_PREFIX + "".join(_NUID[b % 62] for b in os.urandom(22)).encode("ascii")


def interest_key(sub: Subscription) -> bytes:
    """How interest is keyed on a leaf link: C{subject} or C{subject queue}."""
    return sub.subject if sub.queue is None else sub.subject + b" " + sub.queue


class LeafConnection(PeerConnection):
    """
    One leaf link: dialled (C{remote} given, an uplink to a hub) or
    accepted (a downleaf).  An uplink is also a C{route} for the broker:
    what it brings goes to our clients and downleafs, never on to a route
    or a gateway.  A downleaf is a source like a client (its messages go to
    routes and gateways too), but never gets its own messages back.
    """

    kind = Kind.LEAF
    speaks = "leaf node link"
    echo = False
    frame_head = LMSG

    def __init__(self, manager: "LeafManager", remote: Optional["RemoteLeaf"] = None) -> None:
        settings = manager.settings
        super().__init__(manager, settings.limits.ping_interval, LeafParser)
        self.remote = remote
        if remote is not None:
            #: An uplink: what our hub brings goes to our clients and leafs only.
            self.kind = Kind.HUB
        #: What we take from the hub (IPermissions over our deny_imports;
        #: None: everything).  What the other side is not to get (our
        #: deny_exports, a spoke's deny_pub) is its may_receive.
        self.imports: Any = None
        if remote is not None:
            self.imports = remote.imports
            if remote.exports is not None:
                self.may_receive = remote.exports.may_publish
        #: The other side's interest: one subscription per (subject, queue).
        self.subs: Dict[Tuple[bytes, Optional[bytes]], Subscription] = {}
        #: What we told the other side: interest key -> count (nats-server's smap).
        self.smap: Dict[bytes, int] = {}
        #: The other side's server name and cluster, and that cluster as the
        #: origin of its subscriptions and messages (b"": none).
        self.remote_name = ""
        self.remote_cluster = ""
        self.cluster_origin = b""
        #: The handshake is done: interest and messages may flow.
        self.up = False
        self.cid = manager.next_cid()

    @property
    def dialled(self) -> bool:
        """Whether we dialled the link (an uplink to our hub)."""
        return self.remote is not None

    def describe(self) -> str:
        """The other side's name for the log: its server name, its id, or its address."""
        return self.remote_name or self.remote_id or "{}:{}".format(self.host, self.port)

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        """The link is up: an accepted one sends INFO (and starts TLS when the listener has it); the handshake clock starts."""
        super().connectionMade()
        if not self.dialled:
            self.send(self.manager.info_line(self))
            self.flush()
            tls = self.manager.settings.tls_accept
            if tls is not None:
                # INFO in plaintext, then TLS on the same socket (2.9's leaf
                # links): what the spoke writes next is its handshake.
                self.transport.startTLS(tls)
        self.start_handshake_clock()

    def warn_unregistered(self) -> bool:
        # A remote that fails is dialled again, and that says why.
        """Whether a link that ends before it was up warns: an accepted one (a remote is dialled again, and that says why)."""
        return not self.dialled

    def lost(self, why: str) -> None:
        """The link ended: its interest is let go of in slices, and the manager hears of it."""
        subs = list(self.subs.values())
        self.subs.clear()
        self.let_go(subs, self._remove_remote if self.kind is Kind.HUB else self.broker.remove_subscriptions)
        self.manager.leaf_lost(self, why)

    def _remove_remote(self, subs: List[Subscription]) -> None:
        for sub in subs:
            self.broker.remove_remote_subscription(sub, gateways=False)

    # -- the handshake ---------------------------------------------------------------

    def op_info(self, arg: bytes) -> None:
        """C{INFO} from the other side: on an uplink the hub's (we answer CONNECT), later ones update it."""
        info = self.json_object(arg, "INFO")
        remote = self.remote
        if remote is None:
            return  # a spoke has nothing to tell us by INFO
        if not self.remote_id:
            if not info.get("client_id") or not isinstance(info.get("leafnode_urls"), list):
                # (A client, route or gateway port answers without these.)
                self.log.warn("leaf node remote {url}: that is not a leaf node port", url=remote.url)
                self.close(None, "attempted to connect to wrong port")
                return
            if info.get("server_id") == self.broker.server_id:
                self.close(None, "connected to ourselves")
                return
            tls = self.manager.settings.tls_dial
            if info.get("tls_required") or remote.tls:
                if tls is None:
                    self.log.warn("leaf node remote {url} requires TLS: give [tls] and tls = true for it", url=remote.url)
                    self.close(None, "hub requires TLS")
                    return
                if not info.get("tls_required"):
                    self.log.warn("leaf node remote {url} does not speak TLS: not sending it our credentials", url=remote.url)
                    self.close(None, "hub without TLS")
                    return
                # The hub's certificate must carry its name (tls_name, or the host dialled).
                self.transport.startTLS(tls(remote.tls_name or urlsplit(remote.url).hostname or self.host))
                secure = True
            else:
                secure = False
            self._met(info, info.get("server_id"), info.get("server_name"), info.get("cluster"))
            nonce = info.get("nonce")
            try:
                options = self.manager.connect_options(remote, secure, nonce.encode("utf-8") if isinstance(nonce, str) else b"")
            except Exception as e:
                # (A credentials file gone bad since start-up: said, and dialled again.)
                self.log.error("leaf node remote {url}: cannot sign in: {why}", url=remote.url, why=e)
                self.close(None, "credentials: {}".format(e))
                return
            self.send(connect_line(options))
            if not info.get("info_on_connect"):
                self._bound()  # (an older hub says nothing more)
            return
        if info.get("connect_info") and not self.up:
            self._bound()

    def op_connect(self, arg: bytes) -> None:
        """C{CONNECT} from a spoke: its credentials and cluster checked; the link is up."""
        if self.dialled or self.up:
            return
        options = self.json_object(arg, "CONNECT")
        if "lang" in options:
            self.log.warn("{host}:{port}: a client dialled the leaf node port", host=self.host, port=self.port)
            raise ProtocolViolation("attempted to connect to leaf node port", "a client dialled the leaf node port")
        if options.get("gateway"):
            raise ProtocolViolation(
                "Rejecting connection from gateway {!r} on the leafnode port".format(options["gateway"]), "a gateway dialled the leaf node port",
            )
        if not self.manager.check_credentials(options):
            self.log.warn("leaf node from {host}:{port} refused: wrong credentials", host=self.host, port=self.port)
            raise ProtocolViolation(AUTHORIZATION_VIOLATION, "leaf node credentials refused")
        cluster = options.get("cluster") or ""
        if cluster and cluster == self.broker.cluster_name:
            self.log.warn("leaf node from {host}:{port} refused: its cluster is ours ({name})", host=self.host, port=self.port, name=cluster)
            raise ProtocolViolation(SAME_CLUSTER_ERROR, "leaf node of our own cluster")
        if options.get("is_hub"):
            # (It would make us its spoke: not supported.)
            raise ProtocolViolation(None, "a hub dialled us as its spoke")
        self._met(options, options.get("server_id"), options.get("name"), cluster)
        deny = options.get("deny_pub")
        denied = self.manager.settings.denied
        if isinstance(deny, list) and deny and denied is not None:
            # What the spoke does not import: not sent it, as nats-server does.
            try:
                self.may_receive = denied([s for s in deny if isinstance(s, str)]).may_publish
            except ValueError:
                raise ProtocolViolation(None, "bad deny_pub in leaf CONNECT")
        info = self.manager.info(self)
        info.update(connect_info=True, remote_account="$G")
        self.send(info_line(info))
        self._bound()

    def _met(self, said: Dict[str, Any], server_id: Any, name: Any, cluster: Any) -> None:
        """Who the other side is, from its INFO (a hub) or CONNECT (a spoke)."""
        self.remote_info = said
        self.remote_id = str(server_id or "")
        self.remote_name = str(name or self.remote_id)
        self.remote_cluster = cluster if isinstance(cluster, str) else ""
        self.cluster_origin = self.remote_cluster.encode("utf-8")
        self.headers = bool(said.get("headers"))

    def _bound(self) -> None:
        """The handshake is done: register, and tell the other side our interest."""
        self.up = self.registered = True
        self.handshake_done()
        self.pinger.start()
        self.manager.leaf_up(self)
        self.first_ping()

    # -- interest ------------------------------------------------------------------

    def _bound_only(self, verb: str) -> None:
        if not self.up:
            raise ProtocolViolation(AUTHORIZATION_VIOLATION, "{} before the leaf node handshake".format(verb))

    def op_ls_plus(self, subject: bytes, queue: Optional[bytes], weight: int) -> None:
        """C{LS+}: the other side's interest (our own loop-detection subject coming back is a loop)."""
        self._bound_only("LS+")
        if subject == self.manager.lds:
            self.manager.loop_detected(self)
            return
        if not valid_subject(subject):
            return
        key = (subject, queue)
        if key in self.subs:
            return  # a queue weight update: one entry per link is enough
        if not self.keeps_interest(len(self.subs) + 1):
            return
        sub = Subscription(self, subject, queue, b"")
        sub.origin = self.cluster_origin or None
        self.subs[key] = sub
        if self.kind is Kind.HUB:
            self.broker.add_remote_subscription(sub, gateways=False)
        else:
            self.broker.add_subscription(sub)

    def op_ls_minus(self, subject: bytes, queue: Optional[bytes]) -> None:
        """C{LS-}: the other side's interest ends."""
        self._bound_only("LS-")
        sub = self.subs.pop((subject, queue), None)
        if sub is None:
            return
        if self.kind is Kind.HUB:
            self.broker.remove_remote_subscription(sub, gateways=False)
        else:
            self.broker.remove_subscription(sub)

    def tell(self, sub: Subscription, delta: int) -> None:
        """Another owner's subscription came or went: the other side hears when its count for the key changes as it must."""
        key = interest_key(sub)
        n = self.smap.get(key, 0)
        update = sub.queue is not None or n == 0 or n + delta <= 0
        n += delta
        if n > 0:
            self.smap[key] = n
        else:
            self.smap.pop(key, None)
        if update:
            self.send(ls_line(key, max(n, 0)))

    # -- messages ------------------------------------------------------------------

    def _takes(self, verb: str, subject: bytes) -> bool:
        """Whether a message on C{subject} is delivered: the link must be up, and a subject we do not import is dropped."""
        self._bound_only(verb)
        return self.imports is None or self.imports.may_publish(subject)

    def publish(self, src: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        """An LMSG without queue names (the framing loop counts it)."""
        return self.broker.deliver(self, subject, reply, size, tail) if self._takes("LMSG", subject) else 0

    def publish_batch(self, src: Any, subject: bytes, tails: List[bytes], size: int) -> None:
        """Several LMSGs to one subject without a reply or queue names, in order."""
        if self._takes("LMSG", subject):
            self.broker.deliver_batch(self, subject, tails, size)

    def op_pub(self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> None:
        """An LMSG without queue names (what the framing loop's fast branch hands over)."""
        self.publish(self, subject, reply, size, tail)

    def op_lmsg(self, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes) -> None:
        """An LMSG naming queue groups: one member of each named group here."""
        if self._takes("LMSG", subject):
            self.broker.deliver(self, subject, reply, size, tail, queues=queues)

    def op_lhmsg(self, subject: bytes, reply: Optional[bytes], queues: List[bytes], hdr_len: int, total: int, body: bytes) -> None:
        """An HMSG (with headers), naming queue groups or not."""
        takes = self._takes("HMSG", subject)
        self.in_msgs += 1
        self.in_bytes += total
        if takes:
            self.broker.deliver_message(self, subject, reply, total, b"", hdr_len, body, queues)

    def op_err(self, arg: bytes) -> None:
        """C{-ERR} from the other side: a loop or same-cluster error delays our next dial; the link closes."""
        text = arg.decode("utf-8", "replace")
        if self.dialled and ("Loop detected" in text or SAME_CLUSTER_ERROR in text):
            self.manager.delay(self.remote, LOOP_DELAY)
        super().op_err(arg)


class RemoteLeaf(DialTarget):
    """A hub to dial ([[leafnodes.remotes]]): its URLs, tried in turn, and our credentials."""

    def __init__(
        self, urls: Tuple[str, ...], user: str = "", password: str = "", tls: bool = False, tls_name: str = "",
        deny_imports: Tuple[str, ...] = (), imports: Any = None, exports: Any = None, signer: Any = None,
    ) -> None:
        super().__init__()
        self.urls = urls
        #: None, or a function of the hub's nonce giving (user JWT,
        #: signature): credentials for a hub in operator mode.
        self.signer = signer
        #: What not to take from the hub (its subjects, and IPermissions over
        #: them), and what not to send it (IPermissions): None lets all through.
        self.deny_imports = deny_imports
        self.imports, self.exports = imports, exports
        self.user, self.password = user, password
        #: Whether the link must be TLS (a tls:// URL, or tls = true).
        self.tls = tls or any(u.startswith("tls://") for u in urls)
        self.tls_name = tls_name
        self.index = 0
        #: Its link, while up.
        self.conn: Optional[LeafConnection] = None

    @property
    def url(self) -> str:
        """The URL the next dial uses (the remote's URLs in turn)."""
        return self.urls[self.index % len(self.urls)]

    def address(self) -> Tuple[str, int]:
        """The hub's host and port (7422 when the URL has none)."""
        return host_port(self.url, "nats-leaf", 7422)

    def label(self) -> str:
        """C{leaf node remote <url>}, for the log."""
        return "leaf node remote " + self.url

    def failed(self) -> None:
        """A dial or link failed: the next dial tries the hub's next URL."""
        if len(self.urls) > 1:
            self.index += 1

    def credentials(self) -> Tuple[str, str]:
        """The URL's user and password if it has them, else the configured ones."""
        parts = urlsplit(self.url)
        if parts.username:
            return unquote(parts.username), unquote(parts.password or "")
        return self.user, self.password


@dataclass(frozen=True)
class LeafRemote:
    """
    One [[leafnodes.remotes]] entry, as the leaf manager takes it: a hub to
    dial and our credentials there.
    """

    #: The hub's URLs, tried in turn.
    urls: Tuple[str, ...]
    #: The CONNECT user: the user, or a token (as nats-leaf://TOKEN@host sends it).
    user: str = ""
    password: str = ""
    #: Whether the link must be TLS (tls = true; a tls:// URL says so too).
    tls: bool = False
    #: The name the hub's certificate must carry.
    tls_name: str = ""
    #: Subjects not taken from the hub, and not sent to it.
    deny_imports: Tuple[str, ...] = ()
    deny_exports: Tuple[str, ...] = ()
    #: None, or a function of the hub's nonce giving (user JWT, signature):
    #: a .creds file's credentials, for a hub in operator mode.
    signer: Optional[Callable[[bytes], Tuple[str, str]]] = None


@dataclass(frozen=True)
class LeafSettings:
    """The leaf nodes' settings, built once from [leafnodes] and [limits]."""

    host: str = "0.0.0.0"
    port: int = 7422
    #: Whether to accept leaf nodes (a spoke may only dial).
    accept: bool = True
    #: Credentials leafs must present: a user and password, or a token
    #: (presented as the CONNECT user, as nats-server's nats-leaf://TOKEN@host sends it).
    user: str = ""
    password: str = ""
    token: str = ""
    #: Hubs to dial ([[leafnodes.remotes]]).
    remotes: Tuple["LeafRemote", ...] = ()
    #: IPermissions denying the given subjects (a remote's deny lists, a
    #: spoke's deny_pub), or None when none are given.
    denied: Any = None
    #: [limits] as the links run with them (max_payload, max_control_line:
    #: nats-server sets none on links, we keep one for memory's sake;
    #: max_pending, ping_interval, ping_max, listen_backlog,
    #: max_link_subscriptions: the entries of a peer's interest one link
    #: may hold, 0 for no cap).
    limits: Limits = Limits()
    #: Redial: 1 s at first (nats-server's reconnect interval), doubling up to this.
    retry_initial: float = 1.0
    retry_max: float = 10.0
    handshake_timeout: float = 2.0
    #: TLS after INFO, as 2.9's leaf links: the server context spokes must
    #: handshake with (mutual), and a function of the name the hub's
    #: certificate must carry giving client options; C{tls_name}, the name
    #: accepted spokes' certificates must carry ("" for any the CA signed).
    tls_accept: Any = None
    tls_dial: Any = None
    tls_name: str = ""
    #: (Always None: the manager would listen and dial with TLS first.)
    tls_server: Any = None
    tls_client: Any = None
    #: Seconds of parsing one read may take before the rest waits a
    #: reactor turn (None: no bound; see Framer.budget), as for clients.
    parse_budget: Optional[float] = PARSE_BUDGET


class LeafManager(LinkManager):
    """The leaf links of one server: the leaf node listener, the remotes dialled, interest per link."""

    listen_what = "leaf nodes ([leafnodes] host and port)"

    def __init__(self, broker: Broker, reactor: Any, settings: LeafSettings) -> None:
        super().__init__(broker, reactor, settings, "leafnodes")
        self.remotes: List[RemoteLeaf] = []
        #: Every link whose handshake is done, by connection id.
        self.leafs: Dict[int, LeafConnection] = {}
        #: Our loop-detection subject: a link that brings it back is a loop.
        self.lds = loop_subject()
        self._cids = 0
        #: Links refused or closed for a loop (for /varz-like counts and the log).
        self.loops = 0
        for remote in settings.remotes:
            self.add_remote(self._remote(remote))

    def add_remote(self, remote: RemoteLeaf) -> None:
        """A hub to keep a link to: dialled (now, when running) and again whenever the link drops."""
        self.remotes.append(remote)
        self.keep_dialling(remote)

    def accepted(self) -> LeafConnection:
        """A leaf node that dialled us."""
        return LeafConnection(self)

    def dialled(self, target: DialTarget) -> LeafConnection:
        """Our uplink to C{target}'s hub (a L{RemoteLeaf})."""
        assert isinstance(target, RemoteLeaf)
        return LeafConnection(self, target)

    def _remote(self, r: "LeafRemote") -> RemoteLeaf:
        """The hub C{r} as we dial it: its deny lists made permissions."""
        def denied(subjects: Tuple[str, ...]) -> Any:
            return self.settings.denied(subjects) if subjects and self.settings.denied is not None else None

        return RemoteLeaf(
            r.urls, r.user, r.password, r.tls, r.tls_name, r.deny_imports, denied(r.deny_imports), denied(r.deny_exports), r.signer,
        )

    def next_cid(self) -> int:
        """A new leaf link id (for /leafz; leaf links are numbered apart from clients)."""
        self._cids += 1
        return self._cids

    # -- what we say -----------------------------------------------------------

    @property
    def advertise_host(self) -> str:
        """The host our leaf listener is advertised as (127.0.0.1 when we listen on every address)."""
        return "127.0.0.1" if self.settings.host in ("", "0.0.0.0") else self.settings.host

    def info(self, conn: LeafConnection) -> Dict[str, Any]:
        """The hub's INFO for C{conn}, in nats-server's field order."""
        b = self.broker
        info: Dict[str, Any] = {
            "server_id": b.server_id,
            "server_name": b.server_name,
            "version": b.version,
            "proto": 1,
            "go": b.implementation,
            "host": self.advertise_host,
            "port": self.port,
            "headers": True,
            "auth_required": True,
        }
        if self.settings.tls_accept is not None:
            info.update(tls_required=True, tls_verify=True)
        info.update({
            "max_payload": self.settings.limits.max_payload,
            "client_id": conn.cid,
            "nonce": "".join(_NUID[c % 62] for c in os.urandom(11)),
            "info_on_connect": True,
            "leafnode_urls": ["{}:{}".format(self.advertise_host, self.port)],
        })
        if b.cluster_name:
            info["cluster"] = b.cluster_name
        return info

    def info_line(self, conn: LeafConnection) -> bytes:
        """Our INFO to C{conn}, as a line."""
        return info_line(self.info(conn))

    def connect_options(self, remote: RemoteLeaf, tls: bool = False, nonce: bytes = b"") -> Dict[str, Any]:
        """A spoke's CONNECT, as nats-server's sendLeafConnect."""
        options: Dict[str, Any] = {
            "version": self.broker.version, "tls_required": tls, "server_id": self.broker.server_id,
            "name": self.broker.server_name, "headers": True,
        }
        if self.broker.cluster_name:
            options["cluster"] = self.broker.cluster_name
        user, password = remote.credentials()
        if remote.signer is not None:
            # Credentials first, as nats-server: the JWT, and the nonce signed.
            options["jwt"], options["sig"] = remote.signer(nonce)
        elif user:
            options["user"] = user
            if password:
                options["pass"] = password
        if remote.deny_imports:
            # (The hub is asked not to send them: nats-server's deny_pub.)
            options["deny_pub"] = list(remote.deny_imports)
        return options

    def check_credentials(self, options: Dict[str, Any]) -> bool:
        """Whether a spoke's CONNECT carries the listener's token or user and password (any, when it has none)."""
        s = self.settings
        if s.token:
            return options.get("user") == s.token and not options.get("pass")
        if s.user:
            return options.get("user") == s.user and options.get("pass") == s.password
        return True

    # -- lifecycle ---------------------------------------------------------------

    def startService(self) -> None:
        """Listen for leaf nodes (when accepting), dial the remotes, and hear of every subscription."""
        if self.settings.accept:
            self.listen()
            self.log.info("listening for leaf nodes on {host}:{port}", host=self.settings.host, port=self.port)
        self.broker.subscription_listeners.append(self._subscription)
        super().startService()

    def stopService(self) -> Any:
        """Stop redialling and close every leaf link."""
        if self._subscription in self.broker.subscription_listeners:
            self.broker.subscription_listeners.remove(self._subscription)
        # (A remote's link is one of the leafs once up.)
        return self.stop_links(list(self.leafs.values()))

    # -- dialling ----------------------------------------------------------------

    def delay(self, remote: Optional[RemoteLeaf], seconds: float) -> None:
        """Dial C{remote} again no sooner than C{seconds} from now."""
        if remote is not None:
            remote.not_before = self.clock.seconds() + seconds

    # -- links ------------------------------------------------------------------------

    def leaf_up(self, conn: LeafConnection) -> None:
        """A link finished its handshake: it is registered (a spoke's older link closed) and told our interest."""
        if conn.remote is not None:
            conn.remote.up()
            conn.remote.conn = conn
        elif conn.remote_name:
            # The same spoke again (it lost its link before we noticed, a
            # kill -9 or a cut cable): the old link is stale, and its
            # interest would have messages sent into the void. As nats-server.
            for old in list(self.leafs.values()):
                if not old.dialled and (old.remote_name, old.remote_cluster) == (conn.remote_name, conn.remote_cluster):
                    self.log.warn("leaf node {name}: a new link from it replaces the old one", name=conn.describe())
                    old.close(DUPLICATE_ERROR, "replaced by a new link from the same server")
        self.leafs[conn.cid] = conn
        self.log.info(
            "leaf node {how} {name} up ({host}:{port})",
            how="hub" if conn.dialled else "spoke", name=conn.describe(), host=conn.host, port=conn.port,
        )
        # Tell it everything it is to hear of, and our loop-detection subject.
        smap: Dict[bytes, int] = {}
        for sub in self.broker.sublist.all():
            if self._tells(conn, sub):
                key = interest_key(sub)
                smap[key] = smap.get(key, 0) + 1
        smap[self.lds] = 1
        conn.smap = smap
        conn.send(b"".join(ls_line(key, n) for key, n in smap.items()))
        self.broker.flush()

    def leaf_lost(self, conn: LeafConnection, why: str) -> None:
        """A link ended: forget it and, when it was an uplink, dial again."""
        remote = conn.remote
        if remote is not None:
            remote.why = why  # (its service dials again, and says why)
            if remote.conn is conn:
                remote.conn = None
        if self.leafs.get(conn.cid) is conn:
            del self.leafs[conn.cid]
            self.log.info("leaf node {name} down: {why}", name=conn.describe(), why=why)

    def loop_detected(self, conn: LeafConnection) -> None:
        """A link brought our own loop-detection subject back."""
        self.loops += 1
        self.log.error("leaf node {name}: {error}", name=conn.describe(), error=LOOP_ERROR)
        self.delay(conn.remote, LOOP_DELAY)
        conn.close(LOOP_ERROR, "leaf node loop")

    def _tells(self, conn: LeafConnection, sub: Subscription) -> bool:
        """
        Whether C{conn} hears of C{sub}: never its own; an uplink only our
        clients' and downleafs'; a downleaf everything but what a leaf of
        its own cluster subscribed to, here or behind a route (bar loop
        detection's).
        """
        owner = sub.owner
        if owner is conn:
            return False
        if conn.kind is Kind.HUB:
            if conn.imports is not None and not conn.imports.may_subscribe(sub.subject, sub.queue):
                return False  # (interest in what we do not import: not asked for)
            return not owner.kind.one_hop
        if sub.origin and sub.origin == conn.cluster_origin:
            # (A leaf of its cluster's, here or behind a route.)
            return sub.subject.startswith(LDS_PREFIX)
        return True

    def _subscription(self, sub: Subscription, delta: int) -> None:
        for conn in self.leafs.values():
            if self._tells(conn, sub):
                conn.tell(sub, delta)

    # -- monitoring ---------------------------------------------------------------------

    def down(self) -> List[str]:
        """The remotes without a link up (for /healthz)."""
        return [r.url for r in self.remotes if r.conn is None]
