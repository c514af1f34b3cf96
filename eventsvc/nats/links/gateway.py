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

Replies to requests cross as C{_GR_.<cluster hash>.<server hash>.<reply>}
(L{eventsvc.nats.links.replies}), so the answer comes straight back.

This module is the manager: dialling and accepting, the handshakes' end,
this cluster's interest told to the peers, and which gateways a message
goes to.  The connection is L{eventsvc.nats.links.gateway_connection}, the
peer's interest modes L{eventsvc.nats.links.interest_modes}, the reply
mapping L{eventsvc.nats.links.replies}.

What it must not do: know about events, tokens or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from eventsvc.nats.limits import PARSE_BUDGET, Limits
from eventsvc.nats.delivery import PLAN_CACHE_SIZE
from eventsvc.nats.frames import gateway_info_line, rs_line
from eventsvc.nats.links.gateway_connection import GLOBAL, GatewayConnection, RemoteGateway
from eventsvc.nats.links.gateway_messages import GatewayMessages, ReplySource
from eventsvc.nats.links.jsdomain import DENY_ALL_CLIENT_JS, DENY_ALL_CLIENT_JS_PREFIXES
from eventsvc.nats.links.interest_modes import CMD_ALL_SUBS_COMPLETE, CMD_ALL_SUBS_START, CMD_GOSSIP, command_info
from eventsvc.nats.links.manager import DialTarget, LinkManager
from eventsvc.nats.links.replies import ReplyMap
from eventsvc.nats.server import Broker
from eventsvc.nats.subjects import SubjectCache

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
    #: [limits] as the links run with them (max_payload, max_control_line:
    #: nats-server sets none on links, we keep one for memory's sake;
    #: max_pending, ping_interval, ping_max, listen_backlog,
    #: max_link_subscriptions: the entries of a peer's interest one link
    #: may hold, 0 for no cap).
    limits: Limits = Limits()
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
    #: Gateway permissions (IPermissions, or None for everything), as the
    #: cluster's: C{imports} decides which of our interest peers hear of
    #: (may_subscribe) and which of their messages we take (may_publish);
    #: C{exports}, which of their interest we accept and which of our
    #: messages may go (a routed reply is judged by the reply it carries).
    imports: Any = None
    exports: Any = None
    #: Seconds of parsing one read may take before the rest waits a
    #: reactor turn (None: no bound; see Framer.budget), as for clients.
    parse_budget: Optional[float] = PARSE_BUDGET
    #: Whether this server runs JetStream for clients ([jetstream]), and
    #: its domain: INFO says them, and a gateway whose INFO says it runs
    #: JetStream too is not sent our clients' plain API (L{jetstream_fence}).
    jetstream: bool = False
    jetstream_domain: str = ""


class GatewayManager(GatewayMessages, LinkManager):
    """The gateways of one server: the listener, the dialled gateways, interest, replies."""

    listen_what = "gateways ([supercluster] host and port)"

    def __init__(self, broker: Broker, reactor: Any, settings: GatewaySettings) -> None:
        super().__init__(broker, reactor, settings, "supercluster")
        #: The reply mapping (C{_GR_}): recent subscriptions, routed replies.
        self.reply_map = ReplyMap(reactor, settings.name, broker.server_id)
        self.cluster_hash, self.server_hash = self.reply_map.cluster_hash, self.reply_map.server_hash
        self.reply_prefix = self.reply_map.prefix
        #: (The map's own, for the forwarding paths: no lookup per message.)
        self.recent, self.replies = self.reply_map.recent, self.reply_map.replies
        self._reply, self.strip = self.reply_map.outgoing, self.reply_map.strip
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
        #: The routes of this cluster (a RouteManager), for replies meant for
        #: another server of ours; set by whoever composes the two.
        self.routes: Any = None
        self.source = ReplySource()
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
            max_payload=self.settings.limits.max_payload, gateway=self.settings.name, gateway_urls=self.cluster_urls(),
            gateway_url=self.url, gateway_nrp=True, gateway_iom=True,
        )
        if self.settings.jetstream:
            # (nats-server's gateway INFO does not say it: it runs JetStream
            # with gateways only clustered, one JetStream for the supercluster.)
            info["jetstream"] = True
            if self.settings.jetstream_domain:
                info["domain"] = self.settings.jetstream_domain
        return info

    def cluster_runs_jetstream(self) -> bool:
        """
        Whether our cluster runs JetStream for clients: this server, or a
        server our routes reach (its route INFO says C{"jetstream": true};
        one per cluster, L{eventsvc.nats.links.route.RouteManager.jetstream_conflict}).
        """
        if self.settings.jetstream:
            return True
        routes = self.routes
        return routes is not None and any(r.remote_info.get("jetstream") is True for r in list(routes.routes.values()))

    def jetstream_fence(self, conn: Any, info: Dict[str, Any]) -> Tuple[bytes, ...]:
        """
        What of the peer's interest a dialled gateway does not keep, when
        our cluster runs JetStream (this server or a routed one: a
        gateway does not take C{$JS.API} across when its own cluster runs
        JetStream, nats-server's rule): the plain C{$JS.API}, C{$KV} and
        C{$OBJ}, as on a leaf link (L{eventsvc.nats.links.jsdomain}).  Our
        clients' plain API is ours to answer; a cluster's interest there is
        its own JetStream's (eventsvc has no JetStream for a supercluster,
        and nats-server, which runs one only clustered, does not say so in
        its gateway INFO), and a client's request was answered by both
        clusters.  C{$JS.<domain>.API} crosses: the other cluster's streams
        are reached by its domain (mirrors and sources by C{external.api}).
        A cluster without JetStream keeps our API's interest, and its
        clients use our streams.
        """
        if not self.cluster_runs_jetstream():
            return ()
        if not self.settings.jetstream:
            self.log.info("gateway {name}: a server of our cluster runs JetStream: {denied} from {name} stay there",
                          name=conn.describe(), denied=" ".join(DENY_ALL_CLIENT_JS))
        elif info.get("jetstream") is True:
            domain = info.get("domain") if isinstance(info.get("domain"), str) else ""
            self.log.info(
                "gateway {name} runs JetStream too: {denied} stay on each side; its streams are at {api}",
                name=conn.describe(), denied=" ".join(DENY_ALL_CLIENT_JS),
                api="$JS.{}.API".format(domain) if domain else "no domain (give its [jetstream] a domain to reach them)",
            )
            if domain and domain == self.settings.jetstream_domain:
                self.log.warn("gateway {name} runs JetStream in our domain ({domain}) too: neither can reach the "
                              "other's streams; give each cluster its own [jetstream] domain", name=conn.describe(), domain=domain)
        return DENY_ALL_CLIENT_JS_PREFIXES

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
        if route.remote_info.get("jetstream") is True:
            # Our cluster's JetStream is on that server: the gateways
            # dialled before it came keep the other clusters' plain API no
            # longer (their clients' requests were answered twice).
            for conn in list(self.outbound.values()):
                if not conn.js_fence and not conn.closed:
                    conn.js_fence = self.jetstream_fence(conn, conn.remote_info)
                    conn.drop_fenced_interest()

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
        self.reply_map.stop()
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
            self.reply_map.subscribed(self, subject, queue)
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
