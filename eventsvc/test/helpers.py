"""
In-memory harness for the NATS engine: a broker, a listener's factory and
client connections over C{StringTransport}, on a fake clock.  No sockets, no
real time.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from eventsvc.nats.client import ClientConnection
from eventsvc.nats.settings import ClientSettings
from eventsvc.nats.listener import ClientFactory
from eventsvc.nats.server import Broker


class FakeClient:
    """A connected client as the test sees it: what it sent, what it got."""

    def __init__(self, proto: ClientConnection, transport: StringTransport) -> None:
        self.proto = proto
        self.transport = transport
        self._seen = 0

    def send(self, data: bytes) -> None:
        self.proto.dataReceived(data)

    def received(self) -> bytes:
        """Everything written to the client since the last call."""
        value = self.transport.value()
        new, self._seen = value[self._seen :], len(value)
        return new

    def all_received(self) -> bytes:
        return self.transport.value()

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)

    @property
    def aborted(self) -> bool:
        return bool(getattr(self.transport, "disconnected", False))


class Harness:
    def __init__(self, **settings: Any) -> None:
        self.clock = Clock()
        self.broker = Broker(server_id="NTEST")
        # No time budget unless a test asks: real time would make a big
        # feed yield (or not) by how fast the machine is.
        settings.setdefault("parse_budget", None)
        self.settings = with_limits(ClientSettings, **settings)
        self.factory = ClientFactory(self.broker, self.settings, self.clock)
        self.clients: List[FakeClient] = []

    def connect(self, connect: Optional[bytes] = b'CONNECT {"verbose":false}\r\n', port: int = 40000) -> FakeClient:
        """
        A new client; by default it has sent a non-verbose CONNECT and its
        INFO has been read.
        """
        proto = self.factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port + len(self.clients)))
        proto.makeConnection(transport)
        client = FakeClient(proto, transport)
        client.received()
        if connect:
            client.send(connect)
        self.clients.append(client)
        return client


def dial_in_memory(clock: Any, target: Any) -> Any:
    """
    Answer, in memory, the dial a link manager (L{eventsvc.nats.links.manager})
    has under way to C{target}, waiting on C{clock} for its redial if need
    be: (the protocol the reactor would run, the link's connection).  The
    first is what to connect (iosim) or give a transport; Twisted's endpoint
    and ClientService wrap our connection in it, and hear through it that
    the link is up and when it ends.  (A MemoryReactor keeps each dial's
    factory; the endpoint's wrapper keeps ours as C{_wrappedFactory}.)
    """
    for _ in range(1000):
        for entry in reversed(clock.tcpClients):
            factory = entry[2]
            ours = getattr(factory, "_wrappedFactory", factory)
            if getattr(ours, "target", None) is target and not getattr(factory, "answered", False):
                factory.answered = True
                outer = factory.buildProtocol(None)
                return outer, target.connection
        clock.advance(0.1)
    raise AssertionError("no dial to {}".format(target.label()))


def with_limits(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """C{cls(*args, **kwargs)}, a settings class, with the [limits] keys among C{kwargs} gathered into its L{Limits}."""
    from dataclasses import fields

    from eventsvc.nats.limits import Limits

    names = {f.name for f in fields(Limits)}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    return cls(*args, limits=Limits(**given), **kwargs)


def replace_settings(settings: Any, **kwargs: Any) -> Any:
    """C{settings} with C{kwargs} changed, the [limits] keys among them in its L{Limits}."""
    from dataclasses import fields, replace

    names = {f.name for f in fields(settings.limits)}
    given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
    return replace(settings, limits=replace(settings.limits, **given), **kwargs)
