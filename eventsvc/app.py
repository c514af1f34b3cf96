"""
Composition: turn a L{Config} into the running service.

C{make_service(config, reactor)} is the embedding API: it returns a
C{MultiService} holding the listeners (and, as they land, routes, handlers
and monitoring) that any Twisted application can parent.  Nothing here
parses protocol or formats logs; it only wires parts together.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Sequence, runtime_checkable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, DeferredSemaphore, ensureDeferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from eventsvc import __version__
from eventsvc import config as config_module
from eventsvc.config import HANDLER_NAMES, Config, handler_address
from eventsvc.dotted import load_object
from eventsvc.files import FileLock, Locked
from eventsvc.nats.advertise import client_urls
from eventsvc.nats.settings import ClientSettings
from eventsvc.nats.listener import ClientFactory, ListenError, ListenerService
from eventsvc.nats.server import Broker
from eventsvc.nats.throttle import AuthThrottle
from eventsvc.ops.logs import make_observer
from eventsvc.security.permissions import Permissions
from eventsvc.security.tls import (
    MutualTLSPolicy,
    SNIServerContexts,
    TLSFilesError,
    load_certificate,
    load_identity,
    mutual_tls_server,
    server_options,
)

if TYPE_CHECKING:  # imported where they are used: start-up pays only for what runs
    from eventsvc.nats.route import RouteManager
    from eventsvc.security.auth import ChainAuthenticator, HealthToken


class EventService(MultiService):
    """
    The whole of eventsvc for one configuration.

    @ivar broker: the NATS broker, whose C{subscribe}/C{publish} is the
        in-process API.

    It never ends the process: a failure to start raises L{ListenError}
    (or L{StartupError} from L{make_service}), and L{shutdown} returns a
    Deferred that fires once everything is drained and closed.  Signals,
    exit statuses and stopping the reactor are the process shell's
    (L{eventsvc.runner}), for twistd and twist.
    """

    log = Logger()

    def __init__(self, config: Config, broker: Broker, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.broker = broker
        self.reactor = reactor
        self.log_observer = make_observer(config.log.format, config.log.level)
        #: The event dispatcher (its counters and queue depth).
        self.events: Any = None
        #: "starting", "running", "lame duck" or "stopping" (what /healthz reports).
        self.state = "starting"
        self.config_loaded = time.time()
        self._told_lame_duck = False
        self._random = random.Random()
        self._health_subscription: Any = None
        self._shutting_down: Optional[Deferred] = None
        self._shut_down: List[Deferred] = []

    def startService(self) -> None:
        self.log.info("eventsvc {version} starting (config: {source})", version=__version__, source=self.config.source or "defaults")
        if self.config.service.enabled:
            self.log.info("{where}", where=config_module.where_events_are_kept(self.config))
        for warning in config_module.warnings(self.config):
            self.log.warn("{problem}", problem=warning)
        try:
            super().startService()
            self.state = "running"
            # Asked through the gateway (the health-check token) or, on a node
            # without one, through the service listener (its certificate).
            self._health_subscription = self.broker.subscribe(self.health_subject(), self._answer_health)
        except ListenError:
            self.stopService()
            raise

    def stopService(self) -> Any:
        self.state = "stopping"
        if self._health_subscription is not None:
            self._health_subscription.unsubscribe()
            self._health_subscription = None
        return super().stopService()

    # -- health -------------------------------------------------------------

    def health(self) -> "tuple[bool, str]":
        """
        Whether this process is fit to serve, and why not: running (not
        starting, in lame duck mode or shutting down) and every configured
        route up, and the event store taking writes.  /healthz and C{eventsvc
        health-check} both report this.
        """
        if self.state != "running":
            return False, "eventsvc is {}".format(_STATE_WORDS.get(self.state, self.state))
        store = self.events.store if self.events is not None else None
        if store is not None and store["state"] != "ok":
            # ("store full: no space left on device in <data_dir>"): delivering, not accepting.
            return False, store["error"]
        cluster = self._named("cluster")
        if cluster is not None:
            up = {r.solicited for r in cluster.routes.values() if r.solicited}
            down = [url for url in cluster.configured if url not in up]
            if down:
                return False, "route down: {}".format(", ".join(down))
        supercluster = self._named("supercluster")
        if supercluster is not None:
            down = supercluster.down()
            if down:
                return False, "gateway down: {}".format(", ".join(down))
        leafnodes = self._named("leafnodes")
        if leafnodes is not None:
            down = leafnodes.down()
            if down:
                return False, "leaf node remote down: {}".format(", ".join(down))
        down_after = self.config.events.down_after
        if self.events is not None and down_after:
            now = self.reactor.seconds()
            down = [
                "{} ({}) for {:.0f}s: {}".format(name, h.target, h.down_for(now), h.last_error)
                for name, h in sorted(self.events.handlers.items()) if h.down_for(now) >= down_after
            ]
            if down:
                return False, "handler down: {}".format("; ".join(down))
        return True, ""

    def health_subject(self) -> str:
        """Where the health check asks (the health-check identity may): this server's own subject."""
        return "healthcheck.status." + self.broker.server_id

    def _answer_health(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        if reply:
            ok, why = self.health()
            body = {"status": "ok"} if ok else {"status": "unavailable", "error": why}
            self.broker.publish(reply, json.dumps(body).encode("utf-8"))

    # -- reload -------------------------------------------------------------

    def reload(self, new: Optional[Config] = None) -> bool:
        """
        Apply what can change while running of C{new} (by default, the
        configuration file read again): tokens, users, authenticators and
        permissions, the log level, handler addresses, routing, batching and
        event_limit.  Anything else is reported as needing a restart.  An
        invalid configuration changes nothing.  Each service takes its own
        part (L{IReloadable}).
        """
        source = new.source if new is not None else self.config.source
        try:
            if new is None:
                new = config_module.load(source)
            # Every service works out its part first: a bad one refuses the
            # whole reload before anything has changed.
            apply = [service.prepare_reload(new) for service in self if isinstance(service, IReloadable)]
        except (config_module.ConfigError, StartupError, ValueError) as e:
            self.log.error("reload refused, the running configuration stays: {error}", error=str(e))
            return False
        for step in apply:
            step()
        self.log_observer.set_level(new.log.level)
        restart = _needs_restart(self.config, new)
        self.config = new
        self.config_loaded = time.time()
        self.log.info(
            "configuration reloaded from {source}{restart}",
            source=source,
            restart="; these need a restart to change: " + ", ".join(restart) if restart else "",
        )
        return True

    # -- graceful shutdown and lame duck ------------------------------------

    def shutdown(self) -> Any:
        """
        Stop taking connections, tell clients (INFO with ldm), give handlers
        up to [service] shutdown_timeout to deliver what they hold (with a
        spool, what is not delivered stays there), close the clients once
        what they are owed is written.  Returns a Deferred that fires then
        (the same one if a shutdown is already under way); the process shell
        stops the reactor when it does.
        """
        if self._shutting_down is not None:
            return self._shutting_down
        self.state = "stopping"
        timeout = self.config.service.shutdown_timeout
        self.log.info("shutting down: no new connections, up to {timeout}s to finish", timeout=timeout)
        self._shutting_down = ensureDeferred(self._shutdown(timeout))
        self._shutting_down.addBoth(self._finished_shutdown)
        return self._shutting_down

    def when_shut_down(self) -> Deferred:
        """A Deferred that fires when a shutdown (L{shutdown}, or the end of L{lame_duck}) has finished."""
        d: Deferred = Deferred()
        self._shut_down.append(d)
        return d

    def _finished_shutdown(self, result: Any) -> Any:
        waiting, self._shut_down = self._shut_down, []
        for d in waiting:
            d.callback(None)
        return result

    def lame_duck(self) -> Any:
        """
        nats-server's lame duck mode (SIGUSR2): stop taking connections, tell
        clients and routes (INFO with ldm), wait [service]
        lame_duck_grace_period, then close the clients spread over the rest
        of lame_duck_duration, so that a fleet reconnects elsewhere over
        time and not all at once; then shut down as on SIGTERM.
        """
        if self.state != "running":
            return None
        self.state = "lame duck"
        return ensureDeferred(self._lame_duck())

    async def _lame_duck(self) -> None:
        s = self.config.service
        grace, duration = s.lame_duck_grace_period, s.lame_duck_duration
        self.log.info(
            "entering lame duck mode: no new connections; closing clients in {grace}s, spread over {spread}s",
            grace=grace, spread=max(duration - grace, 0.0),
        )
        await self._stop_accepting_and_tell()
        await deferLater(self.reactor, grace, lambda: None)
        clients = self._client_connections()
        if clients and self.state == "lame duck":
            self.log.info("lame duck: closing {count} clients", count=len(clients))
        interval, batch = lame_duck_pace(len(clients), duration - grace)
        for i, conn in enumerate(clients):
            if self.state != "lame duck":
                return  # SIGTERM came: the shutdown closes the rest
            conn.close(None, "Server Shutdown")  # type: ignore[attr-defined]
            if i < len(clients) - 1 and (i + 1) % batch == 0:
                # As nats-server: a random pause of at least half the interval.
                pause = interval * (0.5 + 0.5 * self._random.random())
                await deferLater(self.reactor, pause, lambda: None)
        if self.state == "lame duck":
            self.shutdown()

    async def _stop_accepting_and_tell(self) -> None:
        """Stop every client listener, then INFO with ldm to clients and routes (once)."""
        for service in self:
            if isinstance(service, ListenerService):
                await maybeDeferred(service.stop_accepting)
        if self._told_lame_duck:
            return
        self._told_lame_duck = True
        for conn in self._client_connections():
            conn.lame_duck()  # type: ignore[attr-defined]
        cluster = self._named("cluster")
        if cluster is not None:
            cluster.lame_duck()
        self.broker.flush()

    def _client_connections(self) -> List[Any]:
        return [c for c in self.broker.clients.values() if hasattr(c, "lame_duck")]

    async def _shutdown(self, timeout: float) -> None:
        deadline = self.reactor.seconds() + timeout
        await self._stop_accepting_and_tell()
        handlers = list(self.events.handlers.values()) if self.events is not None else []
        durable = self.events is not None and self.events.spool is not None
        while self.reactor.seconds() < deadline:
            # With a spool only what is in flight is waited for; without
            # one, everything held is delivered or lost.
            owed = sum(h.in_flight if durable else h.backlog_size for h in handlers)
            if not owed:
                break
            await deferLater(self.reactor, 0.05, lambda: None)
        left = sum(h.backlog_size for h in handlers)
        if left:
            self.log.warn(
                "{count} events not yet delivered at shutdown: {fate}",
                count=left, fate="kept in the spool" if durable else "lost (no [service] data_dir)",
            )
        # Close the clients ourselves, and give the kernel a moment to take
        # what they are owed (the ldm INFO above all): stopping the reactor
        # at once would drop bytes still in the transports' buffers.
        closing = self._client_connections()
        for conn in closing:
            conn.close(None, "Server Shutdown")
        linger = self.reactor.seconds() + min(2.0, max(deadline - self.reactor.seconds(), 0.5))
        while any(not c.lost for c in closing) and self.reactor.seconds() < linger:
            await deferLater(self.reactor, 0.01, lambda: None)

    def _named(self, name: str) -> Any:
        try:
            return self.getServiceNamed(name)
        except KeyError:
            return None


_STATE_WORDS = {"starting": "starting", "stopping": "shutting down", "lame duck": "in lame duck mode"}

_RELOADABLE = {
    ("log", "level"), ("handlers", "feed"), ("handlers", "cfgingest"), ("handlers", "event_feed"),
    ("events", "routing"), ("service", "event_limit"),
    ("events", "batch_max"), ("events", "batch_wait"),
} | {("events", name) for name in HANDLER_NAMES} | {
    # How clients log in, on both listeners that share those keys (AuthenticatedListener).
    (section, f.name) for section in ("gateway", "websocket") for f in dataclass_fields(config_module.ListenerAuthConfig)
}


def _needs_restart(old: Config, new: Config) -> List[str]:
    changed = []
    for section in ("service", "tls", "gateway", "log", "handlers", "events", "cluster", "supercluster", "leafnodes", "websocket", "console", "grpc", "monitor", "limits"):
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclass_fields(before):
            if getattr(before, f.name) != getattr(after, f.name) and (section, f.name) not in _RELOADABLE:
                changed.append("[{}] {}".format(section, f.name))
    for section, key in (("handlers", n) for n in HANDLER_NAMES):
        if bool(getattr(old.handlers, key)) != bool(getattr(new.handlers, key)):
            changed.append("[handlers] {} (added or removed)".format(key))
    return changed


def lame_duck_pace(clients: int, spread: float) -> "tuple[float, int]":
    """
    nats-server's pace for closing C{clients} over C{spread} seconds: the
    pause between closes (at most 1 s), and how many close per pause (more
    than one only when there are more clients than milliseconds).
    """
    if clients <= 0:
        return 0.0, 1
    if spread <= 0:
        spread = 1.0
    interval = spread / clients
    if interval < 0.001:
        return 0.001, max(1, int(clients / (spread * 1000)))
    return min(interval, 1.0), 1


class StartupError(Exception):
    """Something the configuration names cannot be used (one line, for the operator)."""


def make_service(config: Config, reactor: Optional[Any] = None) -> EventService:
    """
    Build the service for C{config}.  C{reactor} defaults to the global one;
    pass another (or a fake) to embed or test.

    @raise StartupError: a file or plug-in the configuration names cannot
        be used; the message names the key.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    broker = Broker()
    top = EventService(config, broker, reactor)
    service, limits = config.service, config.limits
    try:
        context = None
        if config.tls.enabled:
            context = mutual_tls_server(config.tls.cert_path, config.tls.key_path, config.tls.root_ca_path)
        if service.enabled and service.data_dir:
            # First of all: started before any listener or the spool, stopped
            # (MultiService stops in reverse) after the spool is closed.
            DataDirLock(service.data_dir).setServiceParent(top)
        if service.enabled:
            settings = _client_settings(
                limits, host=service.host, port=service.port, max_connections=service.listener_limit, name="service",
                advertise=config.cluster.enabled and not config.cluster.no_advertise,
                tls=context, tls_verify=context is not None,
            )
            factory = ClientFactory(broker, settings, reactor)
            if config.cluster.enabled:
                broker.connect_urls.own = _own_urls(settings.host, factory.state, config.cluster.client_advertise)
            where = _where("service", config)
            ListenerService("service", factory, service.host, service.port, reactor, where).setServiceParent(top)
        if config.gateway.enabled:
            _gateway(config, broker, reactor).setServiceParent(top)
        if service.enabled:
            _events(config, broker, reactor, top)
        if config.grpc.enabled:
            _grpc(config, broker, reactor).setServiceParent(top)
        routes = None
        if config.cluster.enabled:
            routes = _cluster(config, broker, reactor)
            routes.setServiceParent(top)
        if config.supercluster.enabled:
            gateways = _supercluster(config, broker, reactor)
            gateways.routes = routes
            gateways.setServiceParent(top)
        if config.leafnodes.enabled:
            _leafnodes(config, broker, reactor).setServiceParent(top)
        if config.websocket.enabled:
            _websocket(config, broker, reactor).setServiceParent(top)
        if config.monitor.enabled:
            where = _where("monitor", config)
            from eventsvc.ops.monitor import MonitorService

            MonitorService(
                top, config.monitor.host, config.monitor.port, reactor, where, config.limits.listen_backlog, _console(config),
            ).setServiceParent(top)
    except TLSFilesError as e:
        raise StartupError(str(e))
    return top


def _events(config: Config, broker: Broker, reactor: Any, top: EventService) -> None:
    from eventsvc.events.dispatch import EventDispatcher
    from eventsvc.events.handlers import BacklogWatch, DeadLetters, HandlerService
    from eventsvc.events.spool import Spool
    from eventsvc.events.types import Registry

    ev = config.events
    data_dir = config.service.data_dir
    dead_letters = DeadLetters(ev.dead_letter_file)
    handlers: Dict[str, HandlerService] = {}
    agents: List[Any] = []
    # Stopped after the handlers (a MultiService stops in reverse order).
    _TargetConnections(handlers).setServiceParent(top)
    for name in HANDLER_NAMES:
        address = getattr(config.handlers, name)
        if not address:
            continue
        target = _handler_target(name, address, config, reactor, agents)
        batch_max, batch_wait = ev.batching(name)
        handler = HandlerService(
            name, target, reactor, dead_letters,
            concurrency=ev.handler_concurrency, retry_initial=ev.retry_initial,
            retry_max=ev.retry_max, max_age=ev.max_age, batch_max=batch_max, batch_wait=batch_wait,
        )
        handler.setServiceParent(top)
        handlers[name] = handler
    spool = Spool(data_dir) if data_dir else None
    def make_targets(new: Config) -> Dict[str, Any]:
        """The delivery targets of a new configuration, for the handlers that run."""
        shared: List[Any] = []
        return {
            name: _handler_target(name, getattr(new.handlers, name), new, reactor, shared)
            for name in handlers if getattr(new.handlers, name)
        }

    dispatcher = EventDispatcher(
        broker, Registry(ev.routing), handlers, config.service.event_limit, reactor,
        spool=spool, prefix=ev.subject_prefix, queue_group=ev.queue_group, make_targets=make_targets,
    )
    dispatcher.setServiceParent(top)
    BacklogWatch(list(handlers.values()), reactor).setServiceParent(top)
    top.events = dispatcher


class _TargetConnections(Service):
    """At a stop, once the handlers have stopped, close what their targets keep open (gRPC connections)."""

    def __init__(self, handlers: Dict[str, Any]) -> None:
        self.setName("target-connections")
        self.handlers = handlers

    def stopService(self) -> Any:
        super().stopService()
        for handler in self.handlers.values():
            close = getattr(handler.target, "close", None)
            if close is not None:
                close()


def _handler_target(name: str, address: str, config: Config, reactor: Any, agents: List[Any]) -> Any:
    """The delivery target for a [handlers] address (one HTTP agent shared, made on first use)."""
    from eventsvc.events.handlers import CallableTarget, HTTPTarget

    if address.startswith("python:"):
        try:
            return CallableTarget(load_object(address[len("python:"):]), address)
        except ValueError as e:
            raise StartupError("{}[handlers] {}: {}".format(_in(config), name, e))
    if address.startswith("grpc://"):
        from eventsvc.grpc.target import grpc_target

        _, host, port = handler_address(address)  # type: ignore[misc]
        _, tls_client = _peer_tls(config, alpn=(b"h2",))
        return grpc_target(name, host, port, getattr(config.events, name).tls_name, reactor, tls_client, config.events.delivery_timeout)
    if not agents:
        agents.append(_handler_agent(config, reactor))
    scheme, host, port = handler_address(address)  # type: ignore[misc]
    url = address if address.startswith(("http://", "https://")) else "https://{}:{}/events".format(host, port)
    return HTTPTarget(url, agents[0], reactor, config.events.delivery_timeout)


def _handler_agent(config: Config, reactor: Any) -> Any:
    """An HTTP client; HTTPS with the service's mutual-TLS identity when [tls] is set."""
    from twisted.web.client import Agent, HTTPConnectionPool

    from eventsvc.events.handlers import NoDelayEndpoints

    pool = HTTPConnectionPool(reactor, persistent=True)
    # Twisted keeps 2 idle connections per host by default: with more
    # deliveries in flight, every extra one opened (and, with TLS,
    # handshook) a connection per event.
    pool.maxPersistentPerHost = config.events.handler_concurrency
    if config.tls.enabled:
        policy = MutualTLSPolicy(
            load_certificate(config.tls.root_ca_path, "[tls] root_ca_path"),
            load_identity(config.tls.cert_path, config.tls.key_path, "[tls]"),
        )
        return Agent.usingEndpointFactory(reactor, NoDelayEndpoints(reactor, policy), pool=pool)
    return Agent.usingEndpointFactory(reactor, NoDelayEndpoints(reactor), pool=pool)


def _peer_tls(config: Config, alpn: Sequence[bytes] = ()) -> "tuple[Any, Callable[[str], Any]]":
    """
    Mutual TLS for links to other servers (routes, gateways, gRPC targets)
    with the [tls] identity and CA: the server context, and client options
    by the name the peer's certificate must carry (offering C{alpn}).
    """
    from twisted.internet import ssl

    tls_server = mutual_tls_server(config.tls.cert_path, config.tls.key_path, config.tls.root_ca_path)
    trust = ssl.trustRootFromCertificates([load_certificate(config.tls.root_ca_path, "[tls] root_ca_path")])
    identity = load_identity(config.tls.cert_path, config.tls.key_path, "[tls]")

    def tls_client(name: str) -> Any:
        if alpn:
            return ssl.optionsForClientTLS(name, trustRoot=trust, clientCertificate=identity, acceptableProtocols=list(alpn))
        return ssl.optionsForClientTLS(name, trustRoot=trust, clientCertificate=identity)

    return tls_server, tls_client


def _grpc(config: Config, broker: Broker, reactor: Any) -> Any:
    """The [grpc] listener: Chef Automate's EventService API, mutual TLS with the [tls] identity, h2 by ALPN."""
    from twisted.internet import ssl

    from eventsvc.grpc.publish import EventAPI, GRPCListener

    identity = load_identity(config.tls.cert_path, config.tls.key_path, "[tls]")
    ca = load_certificate(config.tls.root_ca_path, "[tls] root_ca_path")
    # Twisted's own ALPN choice: a client that offers ALPN without h2 is not
    # a gRPC client, and its handshake fails.
    options = ssl.CertificateOptions(
        privateKey=identity.privateKey.original, certificate=identity.original,
        trustRoot=ssl.trustRootFromCertificates([ca]), raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=[b"h2"],
    )
    api = EventAPI(broker, reactor, config.events.subject_prefix, config.events.delivery_timeout)
    return GRPCListener(api, config.grpc.host, config.grpc.port, options, reactor, _where("grpc", config),
                        max_message=config.limits.max_payload + 65536)


def _cluster(config: Config, broker: Broker, reactor: Any) -> RouteManager:
    from eventsvc.nats.route import RouteManager, RouteSettings

    cl, limits = config.cluster, config.limits
    tls_server, tls_client = _peer_tls(config) if cl.tls else (None, None)
    return RouteManager(broker, reactor, RouteSettings(
        cluster_name=cl.name, host=cl.host, port=cl.port, routes=tuple(cl.routes), no_advertise=cl.no_advertise,
        imports=_route_permissions(cl.permissions.import_allow, cl.permissions.import_deny),
        exports=_route_permissions(cl.permissions.export_allow, cl.permissions.export_deny),
        user=cl.user, password=cl.password, max_payload=limits.max_payload,
        max_control_line=limits.max_control_line, max_pending=limits.max_pending,
        ping_interval=limits.ping_interval, ping_max=limits.ping_max, accept=cl.listen,
        tls_server=tls_server, tls_client=tls_client, tls_name=cl.tls_name, listen_backlog=limits.listen_backlog,
        max_link_subscriptions=limits.max_link_subscriptions,
    ))


def _supercluster(config: Config, broker: Broker, reactor: Any) -> Any:
    from eventsvc.nats.gateway import GatewayManager, GatewaySettings

    sc, limits = config.supercluster, config.limits
    tls_server, tls_client = _peer_tls(config) if sc.tls else (None, None)
    return GatewayManager(broker, reactor, GatewaySettings(
        name=sc.name, host=sc.host, port=sc.port, advertise=sc.advertise,
        gateways=tuple((g.name, tuple(g.urls)) for g in sc.gateways),
        imports=_route_permissions(sc.permissions.import_allow, sc.permissions.import_deny),
        exports=_route_permissions(sc.permissions.export_allow, sc.permissions.export_deny),
        user=sc.user, password=sc.password, max_payload=limits.max_payload,
        max_control_line=limits.max_control_line, max_pending=limits.max_pending,
        ping_interval=limits.ping_interval, ping_max=limits.ping_max,
        tls_server=tls_server, tls_client=tls_client, tls_name=sc.tls_name, listen_backlog=limits.listen_backlog,
        max_link_subscriptions=limits.max_link_subscriptions,
    ))


def _leafnodes(config: Config, broker: Broker, reactor: Any) -> Any:
    from eventsvc.nats.leaf import LeafManager, LeafSettings

    from eventsvc.security.creds import CredentialsError, nonce_signer

    ln, limits = config.leafnodes, config.limits
    try:
        remotes = tuple(
            (
                r.all_urls(), r.token or r.user, "" if r.token else r.password, r.tls, r.tls_name,
                tuple(r.deny_imports), tuple(r.deny_exports), nonce_signer(r.credentials) if r.credentials else None,
            )
            for r in ln.remotes
        )
    except CredentialsError as e:
        raise StartupError("[[leafnodes.remotes]] credentials: {}".format(e))
    # (TLS after INFO: the contexts are used by the leaf links, not the listener.)
    tls_accept, tls_dial = _peer_tls(config) if config.tls.enabled else (None, None)
    return LeafManager(broker, reactor, LeafSettings(
        host=ln.host, port=ln.port, accept=ln.listen, user=ln.user, password=ln.password, token=ln.token,
        tls_accept=tls_accept if ln.tls else None, tls_dial=tls_dial, tls_name=ln.tls_name,
        denied=lambda subjects: _route_permissions((), subjects),
        remotes=remotes, max_payload=limits.max_payload, max_control_line=limits.max_control_line,
        max_pending=limits.max_pending, ping_interval=limits.ping_interval, ping_max=limits.ping_max,
        listen_backlog=limits.listen_backlog, max_link_subscriptions=limits.max_link_subscriptions,
    ))


def _own_urls(host: str, state: Any, advertise: str) -> Any:
    """
    Our service listener's URLs, as peers tell their clients: asked for in
    every client's INFO, so worked out once (a wildcard host means looking
    up this machine's addresses), when the port is known, that is once
    listening.
    """
    known: List[List[str]] = []

    def own() -> List[str]:
        if not known:
            urls = client_urls(host, state.port, advertise)
            if not state.port:
                return urls
            known.append(urls)
        return known[0]

    return own


def _route_permissions(allow: Sequence[str], deny: Sequence[str]) -> Optional[Permissions]:
    """One direction of [cluster.permissions]; None when it lets everything through."""
    if not allow and not deny:
        return None
    # Literal subjects of messages are checked as publishes, interest (which
    # may hold wildcards) as subscriptions: the same lists both ways.
    return Permissions(publish_allow=allow, publish_deny=deny, subscribe_allow=allow, subscribe_deny=deny)


def _in(config: Config) -> str:
    """The configuration file, as the start of an error line naming one of its keys."""
    return "{}: ".format(config.source) if config.source else ""


def _where(section: str, config: Config) -> str:
    """Which keys set a listening address, for a "cannot listen" line."""
    keys = "[{}] host and port".format(section)
    return "{} in {}".format(keys, config.source) if config.source else keys


def _client_settings(limits: Any, **kwargs: Any) -> ClientSettings:
    """A listener's settings: [limits], then what is the listener's own (C{kwargs} win)."""
    values = dict(
        max_payload=limits.max_payload,
        max_control_line=limits.max_control_line,
        max_pending=limits.max_pending,
        max_subscriptions=limits.max_subscriptions,
        ping_interval=limits.ping_interval,
        ping_max=limits.ping_max,
        write_deadline=limits.write_deadline,
        auth_timeout=limits.auth_timeout,
        listen_backlog=limits.listen_backlog,
    )
    values.update(kwargs)
    return ClientSettings(**values)


@runtime_checkable
class IReloadable(Protocol):
    """
    A service that takes what it can of a new configuration (SIGHUP).
    C{prepare_reload} works everything out and raises (ConfigError,
    StartupError, ValueError) on a bad configuration, changing nothing;
    the callable it returns applies it.
    """

    def prepare_reload(self, config: Config) -> Callable[[], None]:
        ...


class AuthenticatedListener(ListenerService):
    """
    A listener whose clients log in with the gateway's keys (C{section}:
    [gateway] or [websocket]); it takes new tokens, users, authenticators
    and permissions on reload.
    """

    section = "gateway"
    health: Optional[HealthToken] = None

    def __init__(self, current: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The section it runs with.
        self.current = current

    def prepare_reload(self, config: Config) -> Callable[[], None]:
        new = getattr(config, self.section)
        if not new.enabled:
            return lambda: None  # (reported as needing a restart)
        authenticator = _listener_authenticator(config, self.section, self.health, self.reactor)
        # (A tokens file may have changed under the same name.)
        check_again = new != self.current or bool(new.tokens_file)

        def apply() -> None:
            self.factory.state.authenticator = authenticator
            self.current = new
            if check_again:
                self.reauthorize(authenticator)

        return apply

    def reauthorize(self, authenticator: Any) -> Any:
        """
        Ask the new authenticators about every connection, as nats-server
        does on reload: a revoked token's client is closed, the others get
        their new permissions now (not when they reconnect).  At most 16 at
        a time, for authenticators that ask a service.
        """
        connections = [c for c in self.factory.live if not c.closed]
        if not connections:
            return None
        limit = DeferredSemaphore(16)

        def check(connection: Any) -> Any:
            return connection.reauthorize(authenticator)

        done = [limit.run(check, c) for c in connections]

        def report(results: List[Any]) -> None:
            outcomes = [r for ok, r in results if ok]
            self.log.info(
                "reload: {count} {section} connections checked again: {closed} closed, {subs} subscriptions removed",
                count=len(connections), section=self.section, closed=sum(1 for r in outcomes if r < 0),
                subs=sum(r for r in outcomes if r > 0),
            )

        return DeferredList(done, consumeErrors=True).addCallback(report)


class GatewayListener(AuthenticatedListener):
    """The gateway's listener; it writes the health-check token while it runs."""

    def __init__(self, health: HealthToken, gateway: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(gateway, *args, **kwargs)
        self.health: HealthToken = health

    def startService(self) -> None:
        try:
            self.health.write()
        except Locked as e:
            raise ListenError(
                "{} ([gateway] health_token_file) is in use by another eventsvc gateway ({}); "
                "give each gateway its own health_token_file".format(self.health.path, _holder(e))
            )
        except OSError as e:
            raise ListenError(
                "cannot write the health-check token to {} ([gateway] health_token_file): {}".format(self.health.path, e.strerror)
            )
        super().startService()

    def stopService(self) -> Any:
        self.health.remove()
        return super().stopService()


def _holder(e: Locked) -> str:
    return "PID {}".format(e.pid) if e.pid else "its PID unknown"


class DataDirLock(Service):
    """
    Holds C{data_dir}/eventsvc.lock while the service runs: a second process
    on the same data_dir would replace the spool the first still writes to.
    Started before the spool is opened, stopped after it is closed.
    """

    def __init__(self, data_dir: str) -> None:
        self.setName("data_dir")
        self.data_dir = data_dir
        self.lock = FileLock(os.path.join(data_dir, "eventsvc.lock"))

    def startService(self) -> None:
        try:
            os.makedirs(self.data_dir, exist_ok=True)
        except OSError as e:
            raise ListenError("{} ([service] data_dir): cannot create: {}".format(self.data_dir, e.strerror))
        try:
            self.lock.acquire()
        except Locked as e:
            raise ListenError(
                "{} ([service] data_dir) is in use by another eventsvc process ({}); "
                "stop it, or give this one its own data_dir".format(self.data_dir, _holder(e))
            )
        except OSError as e:
            raise ListenError("{} ([service] data_dir): cannot lock: {}".format(self.data_dir, e.strerror))
        super().startService()

    def stopService(self) -> Any:
        super().stopService()
        self.lock.release()


def _listener_authenticator(config: Config, name: str, health: Optional[HealthToken], reactor: Any) -> ChainAuthenticator:
    """
    The authenticators of a client listener with the gateway's keys
    ([gateway], [websocket]) in order: the health token (the gateway's
    only), named identities, tokens, users, an HTTP check, Python.
    """
    from eventsvc.security.auth import (
        ChainAuthenticator,
        HTTPAuthenticator,
        NamedIdentities,
        TokenAuthenticator,
        UserPasswordAuthenticator,
        load_python_authenticator,
        read_tokens_file,
    )

    gw = getattr(config, name)
    keys = ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny")
    agents = Permissions(**{k: list(getattr(gw.permissions, k)) for k in keys})
    chain: List[Any] = [health.authenticator] if health is not None else []
    if gw.identities:
        chain.append(NamedIdentities([
            (i.name, i.token, i.user, i.password, Permissions(**identity_permissions(i, gw.permissions)))
            for i in gw.identities
        ]))
    tokens = list(gw.tokens)
    if gw.tokens_file:
        try:
            tokens += read_tokens_file(gw.tokens_file)
        except OSError as e:
            raise StartupError("{} ([{}] tokens_file): cannot read: {}".format(gw.tokens_file, name, e.strerror))
    try:
        if tokens:
            chain.append(TokenAuthenticator(tokens, agents))
    except ValueError as e:
        raise StartupError("{} ([{}] tokens_file): {}".format(gw.tokens_file, name, e))
    if gw.users:
        chain.append(UserPasswordAuthenticator(gw.users, agents))
    if gw.http_auth_url:
        from twisted.web.client import Agent

        chain.append(HTTPAuthenticator(gw.http_auth_url, gw.http_auth_ttl, agents, Agent(reactor), reactor))
    if gw.python_authenticator:
        try:
            chain.append(load_python_authenticator(gw.python_authenticator, agents))
        except ValueError as e:
            raise StartupError("{}[{}] python_authenticator: {}".format(_in(config), name, e))
    return ChainAuthenticator(chain)


def identity_permissions(identity: Any, agents: Any) -> Dict[str, List[str]]:
    """
    A named identity's lists.  Per direction (publish, subscribe) the two
    lists go together: an identity that sets neither takes the agents'
    pair ([gateway.permissions]), one that sets either has its own (the
    other empty).  With private_inbox it may also subscribe to, and ask for
    replies on, _INBOX.<name>.>.
    """
    out: Dict[str, List[str]] = {}
    for direction in ("publish", "subscribe"):
        allow, deny = direction + "_allow", direction + "_deny"
        own = getattr(identity, allow) is not None or getattr(identity, deny) is not None
        if direction == "subscribe" and identity.private_inbox:
            own = True
        source = identity if own else agents
        out[allow] = list(getattr(source, allow) or ())
        out[deny] = list(getattr(source, deny) or ())
    if identity.private_inbox:
        out["subscribe_allow"].append("_INBOX.{}.>".format(identity.name))
    return out


def _gateway(config: Config, broker: Broker, reactor: Any) -> GatewayListener:
    from eventsvc.security.auth import HealthToken

    gw = config.gateway
    health = HealthToken(gw.health_token_file)
    authenticator = _listener_authenticator(config, "gateway", health, reactor)
    context = None
    if not gw.disable_frontend_tls:
        entries = [
            (e.server_name, server_options(load_identity(e.cert_path, e.key_path, "[gateway.frontend_tls {}]".format(e.server_name))))
            for e in gw.frontend_tls
        ]
        context = SNIServerContexts(entries)
    settings = _client_settings(
        config.limits,
        host=gw.host,
        port=gw.port,
        max_connections=gw.max_connections,
        authenticator=authenticator,
        tls=context,
        name="gateway",
        # Failed logins per address (the gateway faces the outside).
        auth_throttle=AuthThrottle(),
        auth_timeout=gw.auth_timeout,
    )
    where = _where("gateway", config)
    return GatewayListener(health, gw, "gateway", ClientFactory(broker, settings, reactor), gw.host, gw.port, reactor, where)


class WebSocketListener(AuthenticatedListener):
    """The [websocket] listener: NATS over WebSocket for browsers."""

    section = "websocket"


def _websocket(config: Config, broker: Broker, reactor: Any) -> WebSocketListener:
    from eventsvc.nats.origins import OriginPolicy
    from eventsvc.nats.websocket import websocket_wire

    ws = config.websocket
    context = None
    if not ws.no_tls:
        context = server_options(load_identity(ws.cert_path, ws.key_path, "[websocket]"), alpn=(b"http/1.1",))
    settings = _client_settings(
        config.limits,
        host=ws.host,
        port=ws.port,
        max_connections=ws.max_connections,
        authenticator=_listener_authenticator(config, "websocket", None, reactor),
        name="websocket",
        auth_throttle=AuthThrottle(),
        auth_timeout=ws.auth_timeout,
    )
    clients = ClientFactory(broker, settings, reactor)
    wire = websocket_wire(
        clients, OriginPolicy.from_urls(ws.same_origin, ws.allowed_origins), ws.compression, ws.handshake_timeout, context, reactor
    )
    return WebSocketListener(ws, "websocket", clients, ws.host, ws.port, reactor, _where("websocket", config), wire=wire)


def _console(config: Config) -> Any:
    """The console's settings ([console], its [[websocket.identities]] entry), or None when it is off."""
    if not config.console.enabled:
        return None
    from eventsvc.nats.origins import origin_of
    from eventsvc.ops.console import ConsoleSettings

    ws = config.websocket
    identity = next(i for i in ws.identities if i.name == config.console.identity)
    credentials = {"auth_token": identity.token} if identity.token else {"user": identity.user, "pass": identity.password}
    return ConsoleSettings(
        identity=identity.name,
        credentials=credentials,
        permissions=Permissions(**identity_permissions(identity, ws.permissions)),
        websocket_url=config.console.websocket_url,
        websocket_secure=not ws.no_tls,
        dead_letter_file=config.events.dead_letter_file if config.service.enabled else "",
        hosts=tuple(origin_of(o)[1] for o in ws.allowed_origins),
    )
