"""
Composition: turn a L{Config} into the running service.

C{make_service(config, reactor)} is the embedding API: it returns a
C{MultiService} holding the listeners (and, as they land, routes, handlers
and monitoring) that any Twisted application can parent.  Nothing here
parses protocol or formats logs; it only wires parts together.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Optional

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from eventsvc import __version__
from eventsvc.config import HANDLER_NAMES, Config, handler_address
from eventsvc.dotted import load_object
from eventsvc.events.dispatch import EventDispatcher
from eventsvc.events.handlers import CallableTarget, DeadLetters, HandlerService, HTTPTarget
from eventsvc.events.spool import Spool
from eventsvc.events.types import Registry
from eventsvc.nats.client import ClientSettings
from eventsvc.nats.listener import ClientFactory, ListenError, ListenerService
from eventsvc.nats.server import Broker
from eventsvc.ops.logs import make_observer
from eventsvc.ops.monitor import MonitorService
from eventsvc.security.auth import (
    ChainAuthenticator,
    HealthToken,
    HTTPAuthenticator,
    TokenAuthenticator,
    UserPasswordAuthenticator,
    load_python_authenticator,
    read_tokens_file,
)
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


class EventService(MultiService):
    """
    The whole of eventsvc for one configuration.

    @ivar broker: the NATS broker, whose C{subscribe}/C{publish} is the
        in-process API.
    @ivar exit_on_error: turn a failure to start (a port in use) into a
        one-line C{SystemExit}, as a command-line program should; embedders
        leave it false and get the L{ListenError}.
    """

    log = Logger()

    def __init__(self, config: Config, broker: Broker) -> None:
        super().__init__()
        self.config = config
        self.broker = broker
        #: The event dispatcher (its counters and queue depth).
        self.events: Any = None
        #: "starting", "running" or "stopping" (what /healthz reports).
        self.state = "starting"
        self.config_loaded = time.time()
        self.exit_on_error = False
        self.log_observer = make_observer(config.log.format, config.log.level)

    def setServiceParent(self, parent: Any) -> None:
        # Under twistd the parent is the Application: offer it our observer,
        # so that [log] format and level decide what twistd writes.
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        self.log.info("eventsvc {version} starting (config: {source})", version=__version__, source=self.config.source or "defaults")
        try:
            super().startService()
            self.state = "running"
        except ListenError as e:
            self.stopService()
            if self.exit_on_error:
                # The real stderr: twistd has redirected sys.stderr into the
                # log by now, and twist has not started logging yet.
                stream = sys.__stderr__ or sys.stderr
                stream.write("eventsvc: {}\n".format(e))
                stream.flush()
                raise SystemExit(1)
            raise


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
    top = EventService(config, broker)
    service, limits = config.service, config.limits
    try:
        context = None
        if config.tls.enabled:
            context = mutual_tls_server(config.tls.cert_path, config.tls.key_path, config.tls.root_ca_path)
        settings = _client_settings(limits, host=service.host, port=service.port, max_connections=service.listener_limit, name="service")
        settings.tls, settings.tls_required, settings.tls_verify = context, context is not None, context is not None
        where = "[service] host and port in {}".format(config.source) if config.source else "[service] host and port"
        ListenerService("service", ClientFactory(broker, settings, reactor), service.host, service.port, reactor, where).setServiceParent(top)
        if config.gateway.enabled:
            _gateway(config, broker, reactor).setServiceParent(top)
        _events(config, broker, reactor, top)
        if config.monitor.enabled:
            where = "[monitor] host and port in {}".format(config.source) if config.source else "[monitor] host and port"
            MonitorService(top, config.monitor.host, config.monitor.port, reactor, where).setServiceParent(top)
    except TLSFilesError as e:
        raise StartupError(str(e))
    return top


def _events(config: Config, broker: Broker, reactor: Any, top: EventService) -> None:
    ev = config.events
    data_dir = config.service.data_dir
    if data_dir:
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as e:
            raise StartupError("{} ([service] data_dir): cannot create: {}".format(data_dir, e.strerror))
    dead_letters = DeadLetters(ev.dead_letter_file)
    handlers: Dict[str, HandlerService] = {}
    agent = None
    for name in HANDLER_NAMES:
        address = getattr(config.handlers, name)
        if not address:
            continue
        if address.startswith("python:"):
            try:
                target: Any = CallableTarget(load_object(address[len("python:"):]), address)
            except ValueError as e:
                raise StartupError("[handlers] {}: {}".format(name, e))
        else:
            if agent is None:
                agent = _handler_agent(config, reactor)
            scheme, host, port = handler_address(address)  # type: ignore[misc]
            url = address if address.startswith(("http://", "https://")) else "https://{}:{}/events".format(host, port)
            target = HTTPTarget(url, agent, reactor, ev.delivery_timeout)
        handler = HandlerService(
            name, target, reactor, dead_letters,
            concurrency=ev.handler_concurrency, retry_initial=ev.retry_initial,
            retry_max=ev.retry_max, max_age=ev.max_age,
        )
        handler.setServiceParent(top)
        handlers[name] = handler
    spool = Spool(os.path.join(data_dir, "events.spool")) if data_dir else None
    dispatcher = EventDispatcher(
        broker, Registry(ev.routing), handlers, config.service.event_limit, reactor,
        spool=spool, prefix=ev.subject_prefix, queue_group=ev.queue_group,
    )
    dispatcher.setServiceParent(top)
    top.events = dispatcher


def _handler_agent(config: Config, reactor: Any) -> Any:
    """An HTTP client; HTTPS with the service's mutual-TLS identity when [tls] is set."""
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=True)
    if config.tls.enabled:
        policy = MutualTLSPolicy(
            load_certificate(config.tls.root_ca_path, "[tls] root_ca_path"),
            load_identity(config.tls.cert_path, config.tls.key_path, "[tls]"),
        )
        return Agent(reactor, contextFactory=policy, pool=pool)
    return Agent(reactor, pool=pool)


def _client_settings(limits: Any, **kwargs: Any) -> ClientSettings:
    return ClientSettings(
        max_payload=limits.max_payload,
        max_control_line=limits.max_control_line,
        max_pending=limits.max_pending,
        max_subscriptions=limits.max_subscriptions,
        ping_interval=limits.ping_interval,
        ping_max=limits.ping_max,
        write_deadline=limits.write_deadline,
        auth_timeout=limits.auth_timeout,
        **kwargs,
    )


class GatewayListener(ListenerService):
    """The gateway's listener; it writes the health-check token while it runs."""

    def __init__(self, health: HealthToken, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.health = health

    def startService(self) -> None:
        try:
            self.health.write()
        except OSError as e:
            raise ListenError(
                "cannot write the health-check token to {} ([gateway] health_token_file): {}".format(self.health.path, e.strerror)
            )
        super().startService()

    def stopService(self) -> Any:
        self.health.remove()
        return super().stopService()


def _gateway(config: Config, broker: Broker, reactor: Any) -> GatewayListener:
    gw = config.gateway
    agents = Permissions(**{k: list(getattr(gw.permissions, k)) for k in ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny")})
    health = HealthToken(gw.health_token_file)
    chain: List[Any] = [health.authenticator]
    tokens = list(gw.tokens)
    if gw.tokens_file:
        try:
            tokens += read_tokens_file(gw.tokens_file)
        except OSError as e:
            raise StartupError("{} ([gateway] tokens_file): cannot read: {}".format(gw.tokens_file, e.strerror))
    try:
        if tokens:
            chain.append(TokenAuthenticator(tokens, agents))
    except ValueError as e:
        raise StartupError("{} ([gateway] tokens_file): {}".format(gw.tokens_file, e))
    if gw.users:
        chain.append(UserPasswordAuthenticator(gw.users, agents))
    if gw.http_auth_url:
        from twisted.web.client import Agent

        chain.append(HTTPAuthenticator(gw.http_auth_url, gw.http_auth_ttl, agents, Agent(reactor), reactor))
    if gw.python_authenticator:
        try:
            chain.append(load_python_authenticator(gw.python_authenticator, agents))
        except ValueError as e:
            raise StartupError("[gateway] python_authenticator: {}".format(e))
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
        authenticator=ChainAuthenticator(chain),
        tls=context,
        name="gateway",
    )
    settings.auth_timeout = gw.auth_timeout
    where = "[gateway] host and port in {}".format(config.source) if config.source else "[gateway] host and port"
    return GatewayListener(health, "gateway", ClientFactory(broker, settings, reactor), gw.host, gw.port, reactor, where)
