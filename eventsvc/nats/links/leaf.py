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
L{eventsvc.nats.delivery} (C{reaches}); the link itself (handshake,
interest, messages) is L{eventsvc.nats.links.leaf_connection}; this module
is the manager: the remotes, who hears of what, and loop detection: each
server subscribes its leafs to its own
C{$LDS.<id>} subject, and a link that brings that interest back is a loop,
closed with nats-server's error (the spoke waits 30 s before dialling again).
Each link also takes L{eventsvc.nats.links.jsdomain}'s rule when it comes
up: which JetStream subjects it carries, by the two sides' domains.

What it must not do: know about events, tokens of the event gateway, or HTTP.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from eventsvc.nats.frames import info_line, ls_line
from eventsvc.nats.kinds import Kind
from eventsvc.nats.limits import PARSE_BUDGET, Limits
from eventsvc.nats.links.jsdomain import leaf_rule
from eventsvc.nats.links.leaf_connection import (
    DUPLICATE_ERROR, LDS_PREFIX, LOOP_DELAY, LOOP_ERROR, LeafConnection, RemoteLeaf, NUID_ALPHABET,
    interest_key, loop_subject,
)
from eventsvc.nats.links.manager import DialTarget, LinkManager
from eventsvc.nats.server import Broker
from eventsvc.nats.subjects import Subscription


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
    #: Whether this server runs JetStream ([jetstream]), and its domain
    #: ("": none): said in INFO and CONNECT, and the links' JetStream rule.
    jetstream: bool = False
    jetstream_domain: str = ""


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
        info["max_payload"] = self.settings.limits.max_payload
        if self.settings.jetstream:
            info["jetstream"] = True
        info.update({
            "client_id": conn.cid,
            "nonce": "".join(NUID_ALPHABET[c % 62] for c in os.urandom(11)),
        })
        if self.settings.jetstream_domain:
            info["domain"] = self.settings.jetstream_domain
        info.update({
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
        options: Dict[str, Any] = {"version": self.broker.version, "tls_required": tls, "server_id": self.broker.server_id}
        if self.settings.jetstream_domain:
            options["domain"] = self.settings.jetstream_domain
        options.update(name=self.broker.server_name, headers=True)
        if self.settings.jetstream:
            options["jetstream"] = True
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
        self.broker.leafnodes_enabled = True
        super().startService()

    def stopService(self) -> Any:
        """Stop redialling and close every leaf link."""
        self.broker.leafnodes_enabled = False
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
        self._jetstream_rule(conn)
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

    def _jetstream_rule(self, conn: LeafConnection) -> None:
        """C{conn} takes the JetStream rule for its two domains (before it is told any interest), and the log says it."""
        s = self.settings
        rule = leaf_rule(s.jetstream, s.jetstream_domain, conn.remote_domain, conn.remote_jetstream)
        conn.fence(rule)
        self.log.info("leaf node {name}: {notice}", name=conn.describe(), notice=rule.notice)
        if rule.same_domain:
            self.log.warn(
                "leaf node {name} runs JetStream in our domain ({domain}) too: each side answers the "
                "JetStream requests made on it and neither can reach the other's streams; give each "
                "side its own [jetstream] domain", name=conn.describe(), domain=s.jetstream_domain or "none",
            )

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
        Whether C{conn} hears of C{sub}: never its own, nor interest its
        JetStream rule keeps on our side ($JS.API, $KV, $OBJ); an uplink
        only our clients' and downleafs'; a downleaf everything but what a
        leaf of its own cluster subscribed to, here or behind a route (bar
        loop detection's).
        """
        owner = sub.owner
        if owner is conn or conn.js_rule.blocks(sub.subject):
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
