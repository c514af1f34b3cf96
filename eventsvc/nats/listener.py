"""
A listening endpoint for NATS clients, with its own settings and auth regime.

The service listener and the gateway listener are two of these over one
broker.  Each counts its live connections against its own limit.
"""

from __future__ import annotations

from typing import Any, Optional, Set

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import Logger

from eventsvc.nats.client import ClientConnection
from eventsvc.nats.errors import ListenError as ListenError  # (where the service and the tests look for it)
from eventsvc.nats.settings import ClientSettings, ListenerState
from eventsvc.nats.server import Broker
from eventsvc.nats.upgrade import HandshakeBudget, InfoThenTLS


class ClientFactory(Factory):
    """Builds L{ClientConnection}s for one listener."""

    noisy = False

    def __init__(self, broker: Broker, settings: ClientSettings, clock: Any) -> None:
        self.broker = broker
        self.settings = settings
        #: What changes while it runs (the bound port, the authenticator).
        self.state = ListenerState(settings)
        self.clock = clock
        self.live: Set[ClientConnection] = set()
        self.handshakes = HandshakeBudget(clock)

    def buildProtocol(self, addr: Any) -> Any:
        at_capacity = len(self.live) >= self.settings.max_connections
        proto = ClientConnection(self.broker, self.settings, self.clock, at_capacity, on_closed=self.live.discard, state=self.state)
        proto.factory = self
        if not at_capacity:
            self.live.add(proto)
        if self.settings.tls is not None:
            return InfoThenTLS(proto, self.settings.tls, self.handshakes)
        return proto


def requirements(factory: ClientFactory, wire: Any = None) -> str:
    """What a listener asks of its clients, for its "listening" line."""
    settings = factory.settings
    parts = [getattr(wire, "description", "") or ("TLS" if settings.tls_required else "plaintext")]
    if settings.tls_verify:
        parts.append("client certificates required")
    parts.append("authentication required" if factory.state.authenticator is not None else "no authentication")
    return ", ".join(parts)


class ListenerService(Service):
    """
    Listens on C{host}:C{port} while running.  When C{port} is 0 the port
    the system chose is written back into the settings, so INFO advertises
    the real one.
    """

    log = Logger()

    def __init__(
        self, name: str, factory: ClientFactory, host: str, port: int, reactor: Any, where: str = "", wire: Any = None,
    ) -> None:
        self.setName(name)
        self.factory = factory
        #: What the socket is listened with: the client factory itself, or
        #: a layer over it (the WebSocket upgrade, TLS under it).
        self.wire = wire if wire is not None else factory
        self.host = host
        self.port = port
        self.reactor = reactor
        self.where = where or "port"
        self.listening: Optional[Any] = None

    def startService(self) -> None:
        try:
            self.listening = self.reactor.listenTCP(
                self.port, self.wire, backlog=self.factory.settings.listen_backlog, interface=self.host
            )
        except CannotListenError as e:
            raise ListenError(
                "cannot listen on {}:{} (set by {}): {}".format(self.host, self.port, self.where, e.socketError)
            )
        address = self.listening.getHost()
        self.factory.state.port = address.port
        super().startService()
        self.log.info(
            "{name} listening for NATS clients on {host}:{port}: {requires}",
            name=self.name, host=address.host, port=address.port, requires=requirements(self.factory, self.wire),
        )

    def stop_accepting(self) -> Any:
        """Stop taking new connections; the open ones go on."""
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None

    def stopService(self) -> Any:
        super().stopService()
        for conn in list(self.factory.live):
            conn.close(None, "Server Shutdown")
        return self.stop_accepting()
