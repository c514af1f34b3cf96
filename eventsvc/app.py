"""
Composition: turn a L{Config} into the running service.

C{make_service(config, reactor)} is the embedding API: it returns an
L{EventService} (a C{MultiService}) that any Twisted application can
parent.  This module only decides which parts a configuration asks for and
wires them together, translating [cluster], [supercluster] and
[leafnodes] into the link managers' settings.  The parts live below it:
the lifecycle in L{eventsvc.service}, the client listeners and their
logins in L{eventsvc.listeners}, the event handlers and the gRPC API in
L{eventsvc.targets}.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from eventsvc.config import Config, address_keys
from eventsvc.listeners import agent_listener, console_settings, service_listener, websocket_listener
from eventsvc.nats.server import Broker
from eventsvc.security.permissions import Permissions
from eventsvc.security import TLSFilesError
from eventsvc.service import DataDirLock, EventService, StartupError
from eventsvc.targets import add_events, grpc_listener

if TYPE_CHECKING:  # imported where they are used: start-up pays only for what runs
    from eventsvc.nats.links.route import RouteManager

#: What this module offers an embedding application (and the process shell).
__all__ = ["make_service", "EventService", "StartupError"]


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
    service = config.service
    try:
        context = None
        if config.tls.enabled:
            from eventsvc.security.tls import mutual_tls_server

            context = mutual_tls_server(config.tls.cert_path, config.tls.key_path, config.tls.root_ca_path)
        if service.enabled and service.data_dir:
            # First of all: started before any listener or the spool, stopped
            # (MultiService stops in reverse) after the spool is closed.
            DataDirLock(service.data_dir).setServiceParent(top)
        if config.jetstream.enabled:
            # Started before the listeners and stopped after them (a
            # MultiService stops in reverse): no message arrives for a
            # stream whose store is closing.
            from eventsvc.jetstream.engine import JetStreamService

            top.jetstream = jetstream(config, broker, reactor)
            JetStreamService(top.jetstream).setServiceParent(top)
        if service.enabled:
            service_listener(config, broker, reactor, context).setServiceParent(top)
        if config.gateway.enabled:
            agent_listener(config, broker, reactor).setServiceParent(top)
        if service.enabled:
            add_events(config, broker, reactor, top)
        if config.grpc.enabled:
            grpc_listener(config, broker, reactor).setServiceParent(top)
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
            websocket_listener(config, broker, reactor).setServiceParent(top)
        if config.monitor.enabled:
            from eventsvc.ops.monitor import MonitorService

            MonitorService(
                top, config.monitor.host, config.monitor.port, reactor, address_keys("monitor", config),
                config.limits.listen_backlog, console_settings(config),
            ).setServiceParent(top)
    except TLSFilesError as e:
        raise StartupError(str(e))
    return top


def jetstream(config: Config, broker: Broker, reactor: Any) -> Any:
    """
    [jetstream] as the engine's settings: the sizes left to the machine
    (-1) are nats-server's, 75% of the memory and of the disk free under
    store_dir (256 MiB and 1 TiB when they cannot be read).
    """
    from eventsvc.config import parse_duration
    from eventsvc.jetstream.engine import JetStream, JetStreamSettings
    from eventsvc.jetstream.limits import AccountLimits

    js = config.jetstream
    max_memory = js.max_memory_store
    if max_memory < 0:
        try:
            max_memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4 * 3
        except (ValueError, OSError, AttributeError):
            max_memory = 256 * 1024 * 1024
    max_file = js.max_file_store
    if max_file < 0:
        folder = js.store_dir or os.getcwd()
        while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        try:
            fs = os.statvfs(folder)
            max_file = fs.f_bavail * fs.f_frsize // 4 * 3
        except OSError:
            max_file = 1024 ** 4
    interval = 0.0 if js.sync_interval == "always" else (parse_duration(js.sync_interval) or 120.0)
    limits = AccountLimits(js.max_memory_store, js.max_file_store, js.max_streams, js.max_consumers, js.max_ack_pending,
                           js.memory_max_stream_bytes, js.storage_max_stream_bytes, js.max_bytes_required)
    # (Acks are subscribed per consumer, as nats-server: JetStreamSettings.per_consumer_acks.)
    settings = JetStreamSettings(js.store_dir or None, max_memory, max_file, js.domain, interval, limits)
    return JetStream(broker, settings, reactor)


def _peer_tls(config: Config) -> "tuple[Any, Callable[[str], Any]]":
    """Mutual TLS for links to other servers with the [tls] identity and CA (L{peer_tls})."""
    from eventsvc.security.tls import peer_tls

    return peer_tls(config.tls.cert_path, config.tls.key_path, config.tls.root_ca_path)


def _cluster(config: Config, broker: Broker, reactor: Any) -> RouteManager:
    from eventsvc.nats.links.route import RouteManager, RouteSettings

    cl = config.cluster
    tls_server, tls_client = _peer_tls(config) if cl.tls else (None, None)
    return RouteManager(broker, reactor, RouteSettings(
        cluster_name=cl.name, host=cl.host, port=cl.port, routes=tuple(cl.routes), no_advertise=cl.no_advertise,
        imports=_route_permissions(cl.permissions.import_allow, cl.permissions.import_deny),
        exports=_route_permissions(cl.permissions.export_allow, cl.permissions.export_deny),
        user=cl.user, password=cl.password, limits=config.limits, accept=cl.listen,
        tls_server=tls_server, tls_client=tls_client, tls_name=cl.tls_name,
        jetstream=config.jetstream.enabled, jetstream_domain=config.jetstream.domain if config.jetstream.enabled else "",
    ))


def _supercluster(config: Config, broker: Broker, reactor: Any) -> Any:
    from eventsvc.nats.links.gateway import GatewayManager, GatewaySettings

    sc = config.supercluster
    tls_server, tls_client = _peer_tls(config) if sc.tls else (None, None)
    return GatewayManager(broker, reactor, GatewaySettings(
        name=sc.name, host=sc.host, port=sc.port, advertise=sc.advertise,
        gateways=tuple((g.name, tuple(g.urls)) for g in sc.gateways),
        imports=_route_permissions(sc.permissions.import_allow, sc.permissions.import_deny),
        exports=_route_permissions(sc.permissions.export_allow, sc.permissions.export_deny),
        user=sc.user, password=sc.password, limits=config.limits,
        tls_server=tls_server, tls_client=tls_client, tls_name=sc.tls_name,
        jetstream=config.jetstream.enabled, jetstream_domain=config.jetstream.domain if config.jetstream.enabled else "",
    ))


def _leafnodes(config: Config, broker: Broker, reactor: Any) -> Any:
    from eventsvc.nats.links.leaf import LeafManager, LeafRemote, LeafSettings

    from eventsvc.security.creds import CredentialsError, nonce_signer

    ln = config.leafnodes
    try:
        remotes = tuple(
            LeafRemote(
                urls=r.all_urls(), user=r.token or r.user, password="" if r.token else r.password, tls=r.tls,
                tls_name=r.tls_name, deny_imports=tuple(r.deny_imports), deny_exports=tuple(r.deny_exports),
                signer=nonce_signer(r.credentials) if r.credentials else None,
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
        remotes=remotes, limits=config.limits,
        jetstream=config.jetstream.enabled, jetstream_domain=config.jetstream.domain if config.jetstream.enabled else "",
    ))


def _route_permissions(allow: Sequence[str], deny: Sequence[str]) -> Optional[Permissions]:
    """One direction of [cluster.permissions]; None when it lets everything through."""
    if not allow and not deny:
        return None
    # Literal subjects of messages are checked as publishes, interest (which
    # may hold wildcards) as subscriptions: the same lists both ways.
    return Permissions(publish_allow=allow, publish_deny=deny, subscribe_allow=allow, subscribe_deny=deny)
