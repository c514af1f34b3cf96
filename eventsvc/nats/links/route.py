"""
Routes: the cluster protocol of nats-server 2.9, both ways.

A route joins this server to another one (eventsvc or nats-server) in a
full mesh.  Each side tells the other its interest (C{RS+}/C{RS-}, queue
groups with their weight), and a message goes to a route at most once, as
C{RMSG} (or C{HMSG}) naming the queue groups it is meant for.  A message
that came from a route never goes to another one (one hop).  The manager
accepts routes, dials the configured ones (again and again, with backoff
and jitter, when they drop), drops duplicates, forwards a new peer's INFO to
the others (gossip) and dials peers it hears of (implicit routes).

What it must not do: know about events, tokens or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from eventsvc.nats.limits import PARSE_BUDGET, Limits
from eventsvc.nats.frames import RMSG, connect_line, info_line, rs_line
from eventsvc.nats.greeting import names_account
from eventsvc.nats.kinds import Kind
from eventsvc.nats.parser import ProtocolViolation, RouteParser
from eventsvc.nats.gojson import go_quote
from eventsvc.nats.links.connection import PEER_CONNECT, PeerConnection
from eventsvc.nats.links.jsdomain import ACK_PREFIX
from eventsvc.nats.links.manager import DialTarget, LinkManager, host_port
from eventsvc.nats.links.replies import GR_PREFIX as GR
from eventsvc.nats.server import Broker
from eventsvc.nats.subjects import Subscription, valid_subject

GLOBAL = b"$G"


class RouteConnection(PeerConnection):
    """
    One route, dialled (C{solicited}) or accepted: a L{PeerConnection}
    speaking the route protocol (L{RouteParser}).
    """

    kind = Kind.ROUTE
    speaks = "route"
    frame_head = RMSG
    #: While an C{LMSG <origin>} is delivered: its leaf cluster (the broker
    #: keeps the message from that cluster's links).
    message_origin: Optional[bytes] = None

    def __init__(self, manager: "RouteManager", solicited: Optional[str] = None) -> None:
        settings = manager.settings
        super().__init__(manager, settings.limits.ping_interval, RouteParser)
        self.solicited = solicited
        #: A duplicate of this route was dropped: if it ends, dial its peer
        #: again (nats-server's C{route.retry}: when two servers dial each
        #: other and each keeps the other connection, both are closed).
        self.retry = False

    @property
    def dialled(self) -> bool:
        """Whether we dialled the route (it was solicited)."""
        return bool(self.solicited)

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        """The route is up: a dialled one sends CONNECT, both send INFO, and pinging starts."""
        super().connectionMade()
        if self.solicited:
            self.send(connect_line(self.manager.connect_options(), compact=False))
        self.send(self.manager.info_line())
        self.flush()
        self.pinger.start()

    def warn_unregistered(self) -> bool:
        # A configured route that fails is redialled, and that says why.
        """Whether a route that ends before it was up warns: not a configured one, whose redial says why."""
        return not (self.solicited and self.solicited in self.manager.configured)

    def lost(self, why: str) -> None:
        """The route ended: its interest is let go of in slices, and the manager hears of it."""
        subs = list(self.subs.values())
        self.subs.clear()
        self.let_go(subs, self._remove)
        self.manager.route_lost(self, why)

    def _remove(self, subs: List[Subscription]) -> None:
        for sub in subs:
            self.broker.remove_remote_subscription(sub)

    # -- operations ------------------------------------------------------------

    def op_connect(self, arg: bytes) -> None:
        """C{CONNECT} from the peer: its credentials checked against the cluster's."""
        # (nats-server's order: ClientOpts and the credentials, lang, then
        # its own struct: processConnect, processRouteConnect.)
        said = self.read_connect(arg)
        if not self.manager.check_credentials(said) or names_account(said):
            raise ProtocolViolation("Authorization Violation", "route credentials refused")
        if said.get("lang"):
            raise ProtocolViolation("attempted to connect to route port", "a client dialled the route port")
        options = self.read_connect(arg, PEER_CONNECT)
        if options.get("gateway"):
            raise ProtocolViolation(
                "Rejecting connection from gateway {} on the Route port".format(go_quote(options["gateway"])),
                "a gateway dialled the route port",
            )
        cluster, ours = options.get("cluster") or "", self.manager.settings.cluster_name
        if cluster != ours:
            # (A nameless nats-server, whose name is its own dynamic one,
            # takes ours from our INFO and comes back with it.)
            raise ProtocolViolation(
                "Rejecting connection, cluster name {} does not match {}".format(go_quote(cluster), go_quote(ours)),
                "cluster name {!r} is not ours".format(cluster),
            )

    def op_info(self, arg: bytes) -> None:
        """C{INFO} from the peer: the first registers the route (or closes a duplicate), later ones update what it advertises."""
        info = self.json_object(arg, "INFO")
        server_id = info.get("server_id", "")
        if not self.remote_id:
            if server_id == self.broker.server_id:
                self.close(None, "connected to ourselves")
                return
            if info.get("cluster") and info["cluster"] != self.manager.settings.cluster_name:
                self.close(None, "cluster name {!r} is not ours".format(info["cluster"]))
                return
            self.remote_id, self.remote_info = server_id, info
            if not self.manager.register(self):
                self.close(None, "duplicate route to {}".format(server_id))
            return
        if info.get("gateway"):
            # A peer's news of a gateway (nats-server forwards what its
            # gateways gossip): ours to dial, if we are in a supercluster.
            heard_of = getattr(self.broker.gateways, "heard_of", None)
            if heard_of is not None:
                heard_of(info)
            return
        if server_id == self.remote_id:
            if info.get("ldm") and self.registered and not self.manager.settings.no_advertise:
                # The peer is going away: our clients should not go there.
                self.manager.broker.connect_urls.remove(self.remote_urls())
                self.remote_info = dict(self.remote_info, connect_urls=[])
            return
        if server_id:
            # Gossip: a server our peer knows about.
            self.manager.heard_of(info)

    def remote_urls(self) -> List[str]:
        """The client URLs the peer told us (its INFO connect_urls)."""
        urls = self.remote_info.get("connect_urls")
        return [u for u in urls if isinstance(u, str)] if isinstance(urls, list) else []

    @property
    def lnoc(self) -> bool:
        """Whether the peer reads leaf origins (LS+ <origin>, LMSG <origin>), as nats-server 2.9 and we do."""
        return bool(self.remote_info.get("lnoc"))

    def op_rs_plus(self, account: bytes, subject: bytes, queue: Optional[bytes], weight: int, origin: Optional[bytes] = None) -> None:
        """C{RS+} (or C{LS+ origin}): the peer's interest in C{$G}, unless we do not export it."""
        if account != GLOBAL or not valid_subject(subject):
            return
        exports = self.manager.settings.exports
        if exports is not None and not exports.may_subscribe(subject, queue):
            # Not ours to export: as nats-server, the interest is ignored, so
            # nothing on that subject is ever sent down this route.
            self.log.debug("route {peer}: not exporting {subject}", peer=self.remote_id, subject=subject)
            return
        sub = self.new_interest(subject, queue, origin)
        if sub is not None:
            self.broker.add_remote_subscription(sub)

    def op_rs_minus(self, account: bytes, subject: bytes, queue: Optional[bytes]) -> None:
        """C{RS-} (or C{LS-}): the peer's interest ends."""
        if account != GLOBAL:
            return
        sub = self.subs.pop((subject, queue), None)
        if sub is not None:
            self.broker.remove_remote_subscription(sub)

    def publish(self, src: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        """An RMSG in C{$G} without queue names (the framing loop counts it)."""
        if self._importable(subject):
            gateways = self.broker.gateways
            if gateways is not None and (subject[:5] == GR or (reply is not None and reply[:5] == GR)):
                return gateways.from_route(self, subject, reply, (), size, tail, -1, b"")  # type: ignore[attr-defined]
            if reply is not None and reply[:8] == ACK_PREFIX:
                count = self.broker.deliver_crossed(self, subject, reply, (), size, tail, -1, b"")
                if count is not None:
                    return count
            return self.broker.deliver(self, subject, reply, size, tail)
        return 0

    def publish_batch(self, src: Any, subject: bytes, tails: List[bytes], size: int) -> None:
        """Such RMSGs to one subject without a reply, in order."""
        if self._importable(subject):
            if self.broker.gateways is not None and subject[:5] == GR:
                for tail in tails:
                    self.publish(self, subject, None, len(tail) - tail.index(b"\n") - 3, tail)
                return
            self.broker.deliver_batch(self, subject, tails, size)

    def op_pub(self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> None:
        """A message without queue names (what the framing loop's fast branch hands over)."""
        self.publish(self, subject, reply, size, tail)

    def op_rmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes) -> None:
        """An RMSG naming queue groups, or in another account (ignored)."""
        if account == GLOBAL and self._importable(subject):
            self._routed(subject, reply, queues, size, tail, -1, b"")

    def op_rhmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], hdr_len: int, total: int, body: bytes) -> None:
        """C{HMSG $G}: a message with headers, naming queue groups or not."""
        self.in_msgs += 1
        self.in_bytes += total
        if account == GLOBAL and self._importable(subject):
            self._routed(subject, reply, queues, total, b"", hdr_len, body)

    def _routed(self, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes, hdr_len: int, body: bytes) -> None:
        gateways = self.broker.gateways
        if gateways is not None and (subject[:5] == GR or (reply is not None and reply[:5] == GR)):
            # A reply routed across gateways: theirs to unwrap.
            gateways.from_route(self, subject, reply, queues, size, tail, hdr_len, body)  # type: ignore[attr-defined]
        elif reply is None or reply[:8] != ACK_PREFIX or self.broker.deliver_crossed(
                self, subject, reply, queues, size, tail, hdr_len, body) is None:
            self.broker.deliver_message(self, subject, reply, size, tail, hdr_len, body, queues)

    def _importable(self, subject: bytes) -> bool:
        """
        A message the peer sends on a subject we do not import is dropped
        (we never told it of such interest; nats-server 2.9 relies on that
        alone, we do not).
        """
        imports = self.manager.settings.imports
        if imports is None or imports.may_publish(subject):
            return True
        self.manager.dropped += 1
        return False


def _server_label(name: str, server_id: str) -> str:
    """A server in the log: its name and id, or its id when it has no other name."""
    return server_id if name in ("", server_id) else "{} ({})".format(name, server_id)


def _nats_server(info: Dict[str, Any]) -> bool:
    """Whether a route INFO is nats-server's ("go" says its Go version; eventsvc's says "eventsvc/...")."""
    go = info.get("go")
    return isinstance(go, str) and go.startswith("go")


class RouteTarget(DialTarget):
    """A configured route (nats-route://host:port), dialled again whenever it drops."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        #: The server this route's dial found connected by another route
        #: (its dial was a duplicate): not dialled again until that ends.
        self.parked_on = ""

    @property
    def url(self) -> str:
        """The route's URL, as configured (or gossiped)."""
        return self._url

    def address(self) -> Tuple[str, int]:
        """The host and port of the URL."""
        return host_port(self._url, "nats-route")

    def label(self) -> str:
        """C{route <url>}, for the log."""
        return "route " + self._url


@dataclass(frozen=True)
class RouteSettings:
    """A cluster's settings, built once from [cluster] and [limits]."""

    cluster_name: str
    host: str = "0.0.0.0"
    #: The port configured (0: any); the manager's C{port} is the one bound.
    port: int = 6222
    #: Routes to dial (nats-route://host:port).
    routes: Tuple[str, ...] = ()
    user: str = ""
    password: str = ""
    #: [limits] as the links run with them (max_payload, max_control_line:
    #: nats-server sets none on links, we keep one for memory's sake;
    #: max_pending, ping_interval, ping_max, listen_backlog,
    #: max_link_subscriptions: the entries of a peer's interest one link
    #: may hold, 0 for no cap).
    limits: Limits = Limits()
    retry_initial: float = 0.5
    retry_max: float = 10.0
    #: Whether to listen for routes, or only dial.
    accept: bool = True
    #: TLS: server options (mutual) for accepted routes, a function of the
    #: host name giving client options for dialled ones, and the name
    #: peers' certificates must carry.
    tls_server: Any = None
    tls_client: Any = None
    tls_name: str = ""
    #: Neither tell peers our client URLs nor tell our clients theirs.
    no_advertise: bool = False
    #: Route permissions (IPermissions, or None for everything), as
    #: nats-server's cluster permissions: C{imports} decides which of our
    #: interest peers hear of (may_subscribe) and which of their messages
    #: we take (may_publish); C{exports}, which of their interest we
    #: accept, and so what we send them (may_subscribe).
    imports: Any = None
    exports: Any = None
    #: Seconds of parsing one read may take before the rest waits a
    #: reactor turn (None: no bound; see Framer.budget), as for clients.
    parse_budget: Optional[float] = PARSE_BUDGET
    #: Whether this server runs JetStream for clients ([jetstream]), and
    #: its domain: route INFO says them, as nats-server's, and a route
    #: that would put a second JetStream in the cluster is refused
    #: (L{RouteManager.jetstream_conflict}).
    jetstream: bool = False
    jetstream_domain: str = ""


class RouteManager(LinkManager):
    """The routes of one server: the cluster listener, the dialled routes, interest."""

    listen_what = "routes ([cluster] host and port)"

    def __init__(self, broker: Broker, reactor: Any, settings: RouteSettings) -> None:
        super().__init__(broker, reactor, settings, "cluster")
        #: The routes dialled again when they drop (their URLs, and each one's dialling).
        self.configured: List[str] = []
        self.targets: Dict[str, RouteTarget] = {}
        #: Messages dropped because their subject is not imported.
        self.dropped = 0
        self.routes: Dict[str, RouteConnection] = {}
        #: Gossiped routes being dialled (once each).
        self._dialling: Set[str] = set()
        #: Servers whose route was refused for a second JetStream (logged as an error once).
        self._refused: Set[str] = set()
        for url in settings.routes:
            self.add_route(url)

    def accepted(self) -> RouteConnection:
        """A route that dialled us."""
        return RouteConnection(self)

    def dialled(self, target: DialTarget) -> RouteConnection:
        """The route we dialled to C{target}'s URL."""
        return RouteConnection(self, solicited=target.url)

    def add_route(self, url: str) -> None:
        """A route to keep: dialled (now, when running) and again whenever it drops."""
        if url in self.targets:
            return
        self.configured.append(url)
        target = self.targets[url] = RouteTarget(url)
        self.keep_dialling(target)

    # -- what we say -----------------------------------------------------------

    def info(self) -> Dict[str, Any]:
        """Our route INFO: who we are, our cluster, our client URLs and, in a supercluster, our gateway URL."""
        b = self.broker
        info = {
            "server_id": b.server_id,
            "server_name": b.server_name,
            "version": b.version,
            "proto": 2,
            "go": b.implementation,
            "host": self.advertise_host,
            "port": self.port,
            "headers": True,
            "max_payload": self.settings.limits.max_payload,
            "cluster": self.settings.cluster_name,
        }
        if self.settings.jetstream:
            info["jetstream"] = True
            if self.settings.jetstream_domain:
                info["domain"] = self.settings.jetstream_domain
        urls = [] if self.settings.no_advertise else self.broker.connect_urls.own()
        if urls:
            info["connect_urls"] = urls
        gateways = self.broker.gateways
        if gateways is not None:
            # (so the cluster's gateways learn every server's gateway URL)
            info["gateway_url"] = gateways.url  # type: ignore[attr-defined]
        info["lnoc"] = True
        if self.settings.tls_server is not None:
            info.update(tls_required=True, tls_verify=True)
        return info

    @property
    def advertise_host(self) -> str:
        """The host our routes are told to dial (127.0.0.1 when we listen on every address)."""
        return "127.0.0.1" if self.settings.host in ("", "0.0.0.0") else self.settings.host

    def info_line(self, info: Optional[Dict[str, Any]] = None) -> bytes:
        """C{info} (default: L{info}) as an INFO line."""
        return info_line(info or self.info())

    def connect_options(self) -> Dict[str, Any]:
        """What our CONNECT on a route we dial says (credentials when the cluster has some)."""
        options = {
            "echo": True, "verbose": False, "pedantic": False, "tls_required": False, "headers": True,
            "name": self.broker.server_id, "cluster": self.settings.cluster_name, "lnoc": True,
        }
        options["tls_required"] = self.settings.tls_client is not None
        if self.settings.user:
            options.update(user=self.settings.user, **{"pass": self.settings.password})
        return options

    # -- lifecycle ---------------------------------------------------------------

    def lame_duck(self) -> None:
        """Tell every peer we are going away (route INFO with ldm), as nats-server does."""
        info = self.info()
        info["ldm"] = True
        line = self.info_line(info)
        for route in self.routes.values():
            route.send(line)
        self.broker.flush()

    def startService(self) -> None:
        """Listen for routes (when accepting), then dial the configured ones."""
        self.broker.cluster_name = self.settings.cluster_name
        if self.settings.accept:
            self.listen()
            self.log.info("cluster {name} listening for routes on {host}:{port}", name=self.settings.cluster_name, host=self.settings.host, port=self.port)
        self.broker.interest_listeners.append(self._interest)
        super().startService()

    def stopService(self) -> Any:
        """Stop redialling and close every route."""
        if self._interest in self.broker.interest_listeners:
            self.broker.interest_listeners.remove(self._interest)
        return self.stop_links(list(self.routes.values()))

    # -- dialling ----------------------------------------------------------------

    def dial(self, url: str) -> None:
        """Dial C{url}, a gossiped route, once (unless it is configured or a dial to it is under way)."""
        if not self.running or url in self._dialling or url in self.targets:
            return
        try:
            host_port(url, "nats-route")
        except ValueError:
            self.log.error("route {url} is not nats-route://host:port", url=url)
            return
        self._dialling.add(url)
        self.dial_once(RouteTarget(url))

    def redial_delay(self, target: DialTarget) -> Optional[float]:
        """The backoff, or None (dial it no more for now) for a configured route whose server another route connects."""
        if isinstance(target, RouteTarget) and target.parked_on:
            if target.parked_on in self.routes:
                return None
            target.parked_on = ""
        return super().redial_delay(target)

    def dial_failed(self, target: DialTarget, url: str, why: str) -> None:
        """A dial to C{url} failed: a configured route is dialled again later (with backoff), a gossiped one not."""
        super().dial_failed(target, url, why)
        self._dialling.discard(url)

    # -- the mesh ------------------------------------------------------------------

    def register(self, route: RouteConnection) -> bool:
        """
        A route said who it is: keep it unless we already have one to that
        server, or it would bring a second JetStream into the cluster
        (L{jetstream_conflict}: then it is closed, and dialled again with
        a backoff that grows, as a route that fails before it is up).
        """
        target = self.targets.get(route.solicited) if route.solicited else None
        if route.solicited:
            self._dialling.discard(route.solicited)
        conflict = self.jetstream_conflict(route)
        if conflict is not None:
            error, why = conflict
            # Loudly the first time, then as each redial's line (its
            # backoff grows to retry_max): the log is not flooded.
            log = self.log.info if route.remote_id in self._refused else self.log.error
            self._refused.add(route.remote_id)
            log("route {how}: {why}", how="to " + route.solicited if route.solicited else
                "from {}:{}".format(route.host, route.port), why=why)
            if target is not None:
                target.why = why
            route.close(error, why)
            return True  # (closed here: not a duplicate)
        if target is not None:
            target.up()
        existing = self.routes.get(route.remote_id)
        if existing is not None and existing is not route and not existing.closed:
            existing.retry = True
            if target is not None:
                # As nats-server (which does not reconnect a solicited
                # route to a server it is connected to): dialled again
                # when the route we keep ends, not every half second.
                target.parked_on = route.remote_id
                self.log.info("{target}: {peer} is connected by another route; dialling it again when that ends", target=target.label(), peer=route.remote_id)
            return False
        self.routes[route.remote_id] = route
        route.registered = True
        route.first_ping()
        if not self.settings.no_advertise:
            # Our clients learn where else they can go.
            self.broker.connect_urls.add(route.remote_urls())
        name = route.remote_info.get("server_name") or ""
        self.log.info(
            "route to {peer} up, {how}",
            # (A server's name is its id unless it was given one: say it once.)
            peer=route.remote_id if name in ("", route.remote_id) else "{} ({})".format(name, route.remote_id),
            how="dialled " + route.solicited if route.solicited else "accepted from {}:{}".format(route.host, route.port),
        )
        # Tell it everything we are interested in (and import).
        lines = []
        for subject, queue, n in self.broker.local_interest():
            if self.settings.imports is not None and not self.settings.imports.may_subscribe(subject, queue):
                continue
            origin = self.broker.interest_origin(subject, queue) if route.lnoc else None
            lines.append(rs_line(subject, queue, n, origin))
        if lines:
            route.send(b"".join(lines))
        gateways = self.broker.gateways
        if gateways is not None:
            gateways.route_up(route)  # type: ignore[attr-defined]
        if len(self.routes) > 1:
            self._forward(route)
        self.broker.flush()
        return True

    def jetstream_conflict(self, route: RouteConnection) -> Optional[Tuple[str, str]]:
        """
        Whether C{route} would make two servers of the cluster answer
        JetStream's API: its peer says C{"jetstream": true} in its INFO
        (eventsvc and nats-server both do) and so do we, or a route we
        already have.  eventsvc runs no JetStream cluster (nats-server's
        meta group and stream replication), so two such servers would each
        answer every C{$JS.API} request a client of the cluster makes, with
        streams that disagree.  Two nats-servers are one JetStream cluster:
        a server without JetStream keeps a route to each.  Returns the
        C{-ERR} for the peer and the
        line for our log, each naming both servers; None when the route
        may come up.
        """
        if route.remote_info.get("jetstream") is not True:
            return None
        if self.settings.jetstream:
            other_name, other_id, where = self.broker.server_name, self.broker.server_id, "this server"
        else:
            # Two nats-servers are one JetStream (their meta group answers
            # once): a server joining their cluster keeps a route to each.
            clustered = _nats_server(route.remote_info)
            routed = [r for r in self.routes.values() if r is not route and r.remote_info.get("jetstream") is True
                      and not (clustered and _nats_server(r.remote_info))]
            if not routed:
                return None
            other_name, other_id, where = routed[0].remote_info.get("server_name", ""), routed[0].remote_id, "by route"
        peer_name = route.remote_info.get("server_name", "")
        peer = _server_label(peer_name, route.remote_id)
        other = "{} ({})".format(_server_label(other_name, other_id), where)
        error = "JetStream is on at {} and at {}: one JetStream server per cluster".format(
            peer_name or route.remote_id, other_name or other_id)
        why = (
            "refused: JetStream is on at {peer} and at {other}, and eventsvc keeps no JetStream cluster, so "
            "both would answer every $JS.API request with streams that disagree. Keep [jetstream] on one "
            "server of cluster {cluster} (its streams are reachable from every server), or link the servers "
            "as leaf nodes of a nats-server JetStream cluster (docs/clustering.md, JetStream in a cluster)"
        ).format(peer=peer, other=other, cluster=self.settings.cluster_name)
        return error, why

    def _forward(self, route: RouteConnection) -> None:
        """
        Gossip: tell our other routes of C{route}'s peer (its INFO, with
        where to dial it as C{ip}), so they dial it (an implicit route).

        As nats-server 2.9 (forwardNewRouteInfoToKnownServers), for every
        route that registers, accepted I{or dialled}: were a dialled one
        left out, a peer whose accepted route registered before it would
        never hear of the one we dialled, and the mesh would stay open.
        The C{ip} is the peer's own (its cluster advertise), else its
        address on this connection and the cluster port it told us.
        """
        info = dict(route.remote_info)
        info.pop("nonce", None)
        if not isinstance(info.get("ip"), str) or not info["ip"]:
            info["ip"] = "nats-route://{}:{}/".format(route.host, info.get("port", 0))
        line = self.info_line(info)
        for other in self.routes.values():
            if other is not route:
                other.send(line)

    def heard_of(self, info: Dict[str, Any]) -> None:
        """
        An implicit route: dial a server a peer told us about (at its
        C{ip}), unless it is us, we have a route to it, or it is one of
        our configured routes (dialled already, and again when it drops),
        as nats-server's processImplicitRoute.
        """
        server_id = info.get("server_id", "")
        if not server_id or server_id == self.broker.server_id or server_id in self.routes:
            return
        url = info.get("ip") or "nats-route://{}:{}/".format(info.get("host", ""), info.get("port", 0))
        if self._configured("{}:{}".format(info.get("host", ""), info.get("port", 0))) or self._configured(url):
            return
        self.log.info("heard of {peer} at {url}: dialling it", peer=server_id, url=url)
        self.dial(url)

    def _configured(self, url: str) -> bool:
        """Whether C{url} names the host and port of a configured route."""
        try:
            address = host_port(url, "nats-route")
        except ValueError:
            return False
        return any(target.address() == address for target in self.targets.values())

    def route_lost(self, route: RouteConnection, why: str) -> None:
        """A route ended: forget it, its client URLs and, when we dialled it, dial again."""
        if route.solicited:
            self._dialling.discard(route.solicited)
            target = self.targets.get(route.solicited)
            if target is not None:
                target.why = why  # (its service dials again, and says why)
        if self.routes.get(route.remote_id) is route:
            del self.routes[route.remote_id]
            self.log.info("route to {peer} down: {why}", peer=route.remote_id, why=why)
            if not self.settings.no_advertise:
                self.broker.connect_urls.remove(route.remote_urls())
            parked = [t for t in self.targets.values() if t.parked_on == route.remote_id]
            for target in parked:
                target.parked_on = ""
                self.keep_dialling(target)  # (again, if it stopped: see redial_delay)
            if self.running and route.retry and not parked and not (route.solicited and route.solicited in self.targets):
                # Its duplicate was dropped here, so the peer may have
                # dropped this one for ours: dial it again, after a random
                # pause of up to 0.1s (as nats-server's reConnectToRoute),
                # so that two servers doing the same do not cross again.
                url = route.solicited or "nats-route://{}:{}/".format(route.host, route.remote_info.get("port", 0))
                self.clock.callLater(0.1 * self.random.random(), self._redial, route.remote_id, url)

    def _redial(self, server_id: str, url: str) -> None:
        """Dial C{url} once more (an implicit route that had a duplicate dropped), unless its server is back."""
        if server_id not in self.routes:
            self.log.info("route to {peer} had a duplicate dropped: dialling {url} once more", peer=server_id, url=url)
            self.dial(url)

    def _interest(self, subject: bytes, queue: Optional[bytes], before: int, after: int) -> None:
        if not self.routes or (self.settings.imports is not None and not self.settings.imports.may_subscribe(subject, queue)):
            return
        if queue is None and not (before == 0 and after > 0) and after != 0:
            return  # a plain subject is told once
        origin = self.broker.interest_origin(subject, queue)
        line = rs_line(subject, queue, after)
        leafed = rs_line(subject, queue, after, origin) if origin else line
        for route in self.routes.values():
            route.send(leafed if route.lnoc else line)
