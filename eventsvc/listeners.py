"""
The client listeners and how their clients log in.

The [service] listener (agents and services inside, mutual TLS), the
agent listener ([gateway]: agents outside, with tokens, users, named
identities, the health-check token) and the [websocket] listener (browsers) are built
here, with the chain of authenticators that [gateway] and [websocket]
share and take again on reload (L{AuthenticatedListener}).  The console's
login ([console] identity) is worked out here too.  L{eventsvc.app}
composes them; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from twisted.internet.defer import DeferredList, DeferredSemaphore

from eventsvc.config import Config, address_keys, in_file
from eventsvc.files import Locked
from eventsvc.nats.advertise import client_urls
from eventsvc.nats.listener import ClientFactory, ListenError, ListenerService
from eventsvc.nats.server import Broker
from eventsvc.nats.limits import Limits
from eventsvc.nats.settings import ClientSettings
from eventsvc.nats.throttle import AuthThrottle
from eventsvc.security.permissions import Permissions, fence_jetstream
from eventsvc.service import StartupError

if TYPE_CHECKING:  # imported where they are used: start-up pays only for what runs
    from eventsvc.security.auth import ChainAuthenticator, HealthToken


def service_listener(config: Config, broker: Broker, reactor: Any, tls: Any) -> ListenerService:
    """
    The [service] listener: agents and services inside, with mutual TLS
    (C{tls}, the [tls] server context, or None without [tls]).  In a
    cluster it tells clients the other servers' URLs and its own.
    """
    service = config.service
    settings = client_settings(
        config.limits, config.jetstream, host=service.host, port=service.port, max_connections=service.listener_limit, name="service",
        advertise=config.cluster.enabled and not config.cluster.no_advertise,
        tls=tls, tls_verify=tls is not None, tls_timeout=config.tls.timeout,
    )
    factory = ClientFactory(broker, settings, reactor)
    if config.cluster.enabled:
        broker.connect_urls.own = own_urls(settings.host, factory.state, config.cluster.client_advertise)
    return ListenerService("service", factory, service.host, service.port, reactor, address_keys("service", config))


def own_urls(host: str, state: Any, advertise: str) -> Any:
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


def client_settings(
    limits: Limits, jetstream: Any = None, auth_timeout: Optional[float] = None, **kwargs: Any,
) -> ClientSettings:
    """
    A listener's settings: [limits] (with its own C{auth_timeout}, when it
    has one), and what is the listener's own; C{jetstream}, the [jetstream]
    section, for INFO.
    """
    if auth_timeout is not None:
        limits = replace(limits, auth_timeout=auth_timeout)
    if jetstream is not None and jetstream.enabled:
        kwargs.update(jetstream=True, jetstream_domain=jetstream.domain)
    return ClientSettings(limits=limits, **kwargs)


class AuthenticatedListener(ListenerService):
    """
    A listener whose clients log in with the keys [gateway] and [websocket]
    share (C{section} names which); it takes new tokens, users, authenticators
    and permissions on reload.
    """

    section = "gateway"
    health: Optional[HealthToken] = None

    def __init__(self, current: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The section it runs with.
        self.current = current

    def prepare_reload(self, config: Config) -> Callable[[], None]:
        """
        The new authenticators for C{config}'s section (L{IReloadable}); once
        applied, every connection is asked about again when the section or
        its tokens file may have changed.

        @raise StartupError: a tokens file or plug-in cannot be used.
        """
        new = getattr(config, self.section)
        if not new.enabled:
            return lambda: None  # (reported as needing a restart)
        authenticator = listener_authenticator(config, self.section, self.health, self.reactor)
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


class AgentListener(AuthenticatedListener):
    """
    The agent listener ([gateway]): agents from outside log in with tokens,
    users or named identities; it writes the health-check token while it
    runs.  (Not nats-server's gateways: those are [supercluster].)
    """

    def __init__(self, health: HealthToken, section: Any, *args: Any, **kwargs: Any) -> None:
        """
        @param health: the health-check token it writes and takes.
        @param section: the [gateway] section it runs with.
        """
        super().__init__(section, *args, **kwargs)
        self.health: HealthToken = health

    def startService(self) -> None:
        """
        Write the health-check token, then listen.

        @raise ListenError: the token file is another process's, or cannot
            be written.
        """
        try:
            self.health.write()
        except Locked as e:
            raise ListenError(
                "{} ([gateway] health_token_file) is in use by another eventsvc gateway ({}); "
                "give each gateway its own health_token_file".format(self.health.path, e.holder)
            )
        except OSError as e:
            raise ListenError(
                "cannot write the health-check token to {} ([gateway] health_token_file): {}".format(self.health.path, e.strerror)
            )
        super().startService()

    def stopService(self) -> Any:
        """Remove the health-check token and stop listening."""
        self.health.remove()
        return super().stopService()


def listener_authenticator(config: Config, name: str, health: Optional[HealthToken], reactor: Any) -> ChainAuthenticator:
    """
    The authenticators of a client listener with the shared login keys
    ([gateway], [websocket]) in order: the health token (the agent
    listener's only), named identities, tokens, users, an HTTP check, Python.
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
    agents = Permissions(**fence_jetstream({k: list(getattr(gw.permissions, k)) for k in keys}))
    chain: List[Any] = [health.authenticator] if health is not None else []
    if gw.identities:
        chain.append(NamedIdentities([
            (i.name, i.token, i.user, i.password, Permissions(**fence_jetstream(identity_permissions(i, gw.permissions))))
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
            raise StartupError("{}[{}] python_authenticator: {}".format(in_file(config), name, e))
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


def agent_listener(config: Config, broker: Broker, reactor: Any) -> AgentListener:
    """The agent listener for [gateway], with its front-end TLS (by SNI), logins and health token."""
    from eventsvc.security.auth import HealthToken

    gw = config.gateway
    health = HealthToken(gw.health_token_file)
    authenticator = listener_authenticator(config, "gateway", health, reactor)
    context = None
    if not gw.disable_frontend_tls:
        from eventsvc.security.tls import SNIServerContexts, load_identity, server_options

        entries = [
            (e.server_name, server_options(load_identity(e.cert_path, e.key_path, "[gateway.frontend_tls {}]".format(e.server_name))))
            for e in gw.frontend_tls
        ]
        context = SNIServerContexts(entries)
    settings = client_settings(
        config.limits,
        config.jetstream,
        host=gw.host,
        port=gw.port,
        max_connections=gw.max_connections,
        authenticator=authenticator,
        tls=context,
        name="gateway",
        # Failed logins per address (the agent listener faces the outside).
        auth_throttle=AuthThrottle(),
        auth_timeout=gw.auth_timeout,
        tls_timeout=gw.tls_timeout,
    )
    where = address_keys("gateway", config)
    return AgentListener(health, gw, "gateway", ClientFactory(broker, settings, reactor), gw.host, gw.port, reactor, where)


class WebSocketListener(AuthenticatedListener):
    """The [websocket] listener: NATS over WebSocket for browsers."""

    section = "websocket"


def websocket_listener(config: Config, broker: Broker, reactor: Any) -> WebSocketListener:
    """The [websocket] listener: its TLS (ALPN http/1.1), origin policy, compression and logins."""
    from eventsvc.nats.origins import OriginPolicy
    from eventsvc.nats.websocket import websocket_wire

    ws = config.websocket
    context = None
    if not ws.no_tls:
        from eventsvc.security.tls import load_identity, server_options

        context = server_options(load_identity(ws.cert_path, ws.key_path, "[websocket]"), alpn=(b"http/1.1",))
    settings = client_settings(
        config.limits,
        config.jetstream,
        host=ws.host,
        port=ws.port,
        max_connections=ws.max_connections,
        authenticator=listener_authenticator(config, "websocket", None, reactor),
        name="websocket",
        auth_throttle=AuthThrottle(),
        auth_timeout=ws.auth_timeout,
    )
    clients = ClientFactory(broker, settings, reactor)
    wire = websocket_wire(
        clients, OriginPolicy.from_urls(ws.same_origin, ws.allowed_origins), ws.compression, ws.handshake_timeout, context, reactor
    )
    return WebSocketListener(ws, "websocket", clients, ws.host, ws.port, reactor, address_keys("websocket", config), wire=wire)


def console_settings(config: Config) -> Any:
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
        permissions=Permissions(**fence_jetstream(identity_permissions(identity, ws.permissions))),
        websocket_url=config.console.websocket_url,
        websocket_secure=not ws.no_tls,
        dead_letter_file=config.events.dead_letter_file if config.service.enabled else "",
        hosts=tuple(origin_of(o)[1] for o in ws.allowed_origins),
    )
