"""
How a link is kept up (nats/links/manager.py), in memory: the dials a
manager makes through the reactor, when it dials again and how long it
waits, what it says in the log, and that stopping it stops all of it.
"""

from __future__ import annotations

from typing import List

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.links.gateway import GatewayManager, GatewaySettings
from eventsvc.nats.links.route import RouteManager, RouteSettings
from eventsvc.nats.server import Broker
from eventsvc.test.helpers import dial_in_memory

URL = "nats-route://127.0.0.1:6222"


def refused(clock: MemoryReactorClock) -> None:
    """The newest dial is refused, as the kernel would say it."""
    clock.tcpClients[-1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError("refused")))


def redials(clock: MemoryReactorClock) -> List[float]:
    """Seconds until each redial the clock holds."""
    return [c.getTime() - clock.seconds() for c in clock.getDelayedCalls() if "_reconnect" in repr(c)]


class RedialTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logged: List[str] = []
        observe = lambda event: self.logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.clock = MemoryReactorClock()
        self.manager = RouteManager(Broker(server_id="NA"), self.clock, RouteSettings("c1", "127.0.0.1", 0, routes=(URL,)))
        self.manager.startService()
        self.manager.random.random = lambda: 1.0  # (no jitter: the figures are exact)

    def test_a_refused_dial_is_dialled_again_with_backoff(self) -> None:
        """Each failure doubles the wait (0.5, 1, 2 s), the log says why, and Twisted's own retry line is left out."""
        self.assertEqual(self.clock.tcpClients[-1][:2], ("127.0.0.1", 6222))
        for wait in (0.5, 1.0, 2.0):
            refused(self.clock)
            self.assertEqual(redials(self.clock), [wait])
            self.clock.advance(wait)
        self.assertEqual(len(self.clock.tcpClients), 4)
        lines = [line for line in self.logged if "dialling again" in line]
        self.assertEqual(lines[0], "route {}: Connection was refused by other side: refused.; dialling again in 0.5s".format(URL))
        self.assertEqual(len(lines), 3)
        self.assertFalse([line for line in self.logged if "Scheduling retry" in line])

    def test_a_peer_that_accepts_and_refuses_is_not_hammered(self) -> None:
        """TCP connecting is not the link being up: a peer that closes before the handshake still backs off."""
        target = self.manager.targets[URL]
        for wait in (0.5, 1.0, 2.0):
            outer, conn = dial_in_memory(self.clock, target)
            outer.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 6222)))
            outer.connectionLost(Failure(ConnectionDone()))
            self.assertEqual(redials(self.clock), [wait])
            self.clock.advance(wait)

    def test_up_resets_the_backoff(self) -> None:
        """Once a link was up (the peer said who it is), its next loss waits the first delay again."""
        target = self.manager.targets[URL]
        refused(self.clock)
        self.clock.advance(0.5)
        refused(self.clock)
        self.clock.advance(1.0)
        outer, conn = dial_in_memory(self.clock, target)
        outer.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 6222)))
        conn.dataReceived(b'INFO {"server_id":"NB","cluster":"c1"}\r\n')
        self.assertEqual(set(self.manager.routes), {"NB"})
        outer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(redials(self.clock), [0.5])

    def test_a_gossiped_route_is_dialled_once(self) -> None:
        self.manager.heard_of({"server_id": "NC", "host": "127.0.0.1", "port": 6333})
        self.assertEqual(self.clock.tcpClients[-1][:2], ("127.0.0.1", 6333))
        refused(self.clock)
        self.assertEqual(redials(self.clock), [])
        # (And may be dialled again when heard of again.)
        self.manager.heard_of({"server_id": "NC", "host": "127.0.0.1", "port": 6333})
        self.assertEqual(self.clock.tcpClients[-1][:2], ("127.0.0.1", 6333))

    def test_stopping_stops_redialling(self) -> None:
        refused(self.clock)
        self.assertTrue(redials(self.clock))
        self.manager.stopService()
        self.assertEqual(redials(self.clock), [])
        self.clock.advance(60)
        self.assertEqual(len(self.clock.tcpClients), 1)


class GatewayRedialTests(SynchronousTestCase):
    def test_urls_in_turn_and_an_implicit_gateway_is_not_chased(self) -> None:
        clock = MemoryReactorClock()
        manager = GatewayManager(
            Broker(server_id="NA"), clock, GatewaySettings("A", "127.0.0.1", 0, gateways=(("B", ("127.0.0.1:7222", "127.0.0.1:7333")),)),
        )
        manager.startService()
        self.addCleanup(manager.stopService)
        self.assertEqual(clock.tcpClients[-1][:2], ("127.0.0.1", 7222))
        refused(clock)
        clock.advance(10)
        self.assertEqual(clock.tcpClients[-1][:2], ("127.0.0.1", 7333))
        # Heard of, dialled, failed: forgotten, as nats-server does.
        manager.heard_of({"gateway": "C", "gateway_urls": ["127.0.0.1:7444"]})
        self.assertEqual(clock.tcpClients[-1][:2], ("127.0.0.1", 7444))
        refused(clock)
        clock.advance(0)
        self.assertNotIn("C", manager.remotes)
        clock.advance(60)
        self.assertEqual([c[1] for c in clock.tcpClients].count(7444), 1)

    def test_a_url_that_cannot_be_dialled_is_said_once(self) -> None:
        """A gateway URL without a port (from gossip, say): one error line, no redial, nothing dialled."""
        logged: List[str] = []
        observe = lambda event: logged.append(formatEvent(event))  # noqa: E731
        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        clock = MemoryReactorClock()
        manager = GatewayManager(Broker(server_id="NA"), clock, GatewaySettings("A", "127.0.0.1", 0, gateways=(("B", ("127.0.0.1",)),)))
        manager.startService()
        self.addCleanup(manager.stopService)
        clock.advance(0)
        clock.advance(60)
        self.assertEqual(clock.tcpClients, [])
        self.assertEqual(redials(clock), [])
        self.assertEqual([line for line in logged if "gateway B" in line], ["gateway B: nats://127.0.0.1 is not host:port"])
