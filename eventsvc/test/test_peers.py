"""
Server links under the same budget as clients, in memory: a route, a leaf
node and a gateway whose peer sends a burst of interest have it parsed over
several reactor turns, their reads held meanwhile; a link past its cap
(C{max_link_subscriptions}) is closed with a reason; a closed link's
interest is let go of in slices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, List, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats import limits
from eventsvc.nats.links import connection as peer, gateway, leaf, route
from eventsvc.nats.links.connection import LET_GO_SLICE
from eventsvc.test import test_leaf, test_route, test_supercluster


class _Link:
    """One link of a kind, up, its peer on a StringTransport."""

    def __init__(self, node: Any, proto: Any, transport: StringTransport, line: Callable[[int], bytes], held: Callable[[], int]) -> None:
        self.node = node
        self.proto = proto
        self.transport = transport
        #: The interest line the peer sends for its I{i}th entry.
        self.line = line
        #: How many entries of the peer's interest the link keeps.
        self.held = held

    @property
    def clock(self) -> Any:
        return self.node.clock

    def send(self, count: int, first: int = 0, then: bytes = b"") -> None:
        self.proto.dataReceived(b"".join(self.line(i) for i in range(first, first + count)) + then)


def _peer_transport(port: int) -> StringTransport:
    return StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", port))


def a_route(**settings: Any) -> _Link:
    """A route accepted from a peer that said who it is."""
    node = test_route.Node("A", **settings)
    proto = node.manager.accepted()
    transport = _peer_transport(50000)
    proto.makeConnection(transport)
    proto.dataReceived(b'CONNECT {"cluster":"c1"}\r\nINFO {"server_id":"NF","cluster":"c1"}\r\n')
    assert proto.registered
    return _Link(node, proto, transport, lambda i: b"RS+ $G flood.%d.x\r\n" % i, lambda: len(proto.subs))


def a_leaf(**settings: Any) -> _Link:
    """A leaf node (a spoke) accepted here, its handshake done."""
    node = test_leaf.Node("A", **settings)
    proto = node.leafs.accepted()
    transport = _peer_transport(50001)
    proto.makeConnection(transport)
    proto.dataReceived(b'CONNECT {"server_id":"NF","name":"flooder"}\r\n')
    assert proto.up
    return _Link(node, proto, transport, lambda i: b"LS+ flood.%d.x\r\n" % i, lambda: len(proto.subs))


def a_gateway(**settings: Any) -> _Link:
    """
    A gateway we dialled, to an optimistic peer: what it keeps of the
    peer's interest are the subjects it says it has no interest in (RS-).
    """
    node = test_supercluster.Node("A", ["B"], **settings)
    remote = node.manager.remotes["B"]
    proto = node.manager.dialled(remote)
    transport = _peer_transport(7222)
    proto.makeConnection(transport)
    proto.dataReceived(b'INFO {"server_id":"NB","gateway":"B","headers":true}\r\n')
    assert node.manager.outbound == {"B": proto}
    return _Link(node, proto, transport, lambda i: b"RS- $G flood.%d.x\r\n" % i, lambda: proto.interest.held)


KINDS: List[Tuple[str, Callable[..., _Link]]] = [("route", a_route), ("leaf node", a_leaf), ("gateway", a_gateway)]


class BudgetTests(SynchronousTestCase):
    """A link's reads are parsed within the framing loop's budget, as a client's."""

    def test_a_burst_of_interest_takes_several_turns(self) -> None:
        for kind, make in KINDS:
            # (A budget of nothing: every turn stops at the loop's first look
            # at the clock, after 15 operations.)
            link = make(parse_budget=0.0)
            link.transport.clear()
            turns: List[int] = []
            resume = link.proto.parser.resume

            def resumed(resume: Callable[[], None] = resume, link: _Link = link) -> None:
                turns.append(link.held())
                resume()

            link.proto.parser.resume = resumed
            link.send(300, then=b"PING\r\n")
            self.assertEqual(link.held(), 15, kind)
            # Nothing more is read meanwhile, and the PING waits its turn.
            self.assertEqual(link.transport.producerState, "paused", kind)
            self.assertNotIn(b"PONG", link.transport.value(), kind)
            link.clock.advance(0)
            # (The last turn begins with the 300th and the PING left.)
            self.assertEqual(turns, list(range(15, 301, 15)), kind)
            self.assertEqual(link.held(), 300, kind)
            self.assertIn(b"PONG\r\n", link.transport.value(), kind)
            self.assertEqual(link.transport.producerState, "producing", kind)

    def test_input_while_waiting_is_kept_in_order(self) -> None:
        link = a_route(parse_budget=0.0)
        link.send(100)
        link.send(100, first=100, then=b"PING\r\n")
        link.clock.advance(0)
        self.assertEqual(sorted(int(s.split(b".")[1]) for s, _ in link.proto.subs), list(range(200)))
        self.assertIn(b"PONG\r\n", link.transport.value())

    def test_the_settings_budget_is_the_clients(self) -> None:
        for kind, make in KINDS:
            self.assertEqual(make().proto.parser.budget, limits.PARSE_BUDGET, kind)

    def test_a_link_closed_while_waiting_parses_no_more(self) -> None:
        link = a_route(parse_budget=0.0)
        link.send(300)
        link.proto.connectionLost(None)
        link.clock.advance(0)
        self.assertEqual(link.node.broker.sublist.count, 0)
        self.assertNotIn("ReadTurns", repr(link.clock.getDelayedCalls()))


class CapTests(SynchronousTestCase):
    """A link whose peer's interest passes max_link_subscriptions is closed, and says why."""

    def setUp(self) -> None:
        self.logged: List[str] = []

        def observe(event: dict) -> None:
            self.logged.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def test_past_the_cap_the_link_closes(self) -> None:
        for kind, make in KINDS:
            link = make(max_link_subscriptions=5)
            link.send(5)
            self.assertFalse(link.proto.closed, kind)
            link.transport.clear()
            # The same entries again are no more of them.
            link.send(5)
            self.assertFalse(link.proto.closed, kind)
            # One more, and the rest of the read, go nowhere.
            link.send(10, first=5, then=b"PING\r\n")
            self.assertTrue(link.proto.closed, kind)
            self.assertEqual(link.transport.value(), b"-ERR 'maximum subscriptions exceeded'\r\n", kind)
            self.assertTrue(link.transport.disconnecting, kind)
            self.assertEqual(link.node.broker.sublist.count, 0, kind)
            self.assertIn(
                "{} {}: its interest passed 5 subscriptions (the cap per link, [limits] max_link_subscriptions): "
                "closing it".format(kind, link.proto.describe()),
                self.logged,
            )

    def test_the_default_cap(self) -> None:
        self.assertEqual(limits.MAX_LINK_SUBSCRIPTIONS, 1000000)
        for kind, make in KINDS:
            self.assertEqual(make().proto.manager.settings.limits.max_link_subscriptions, 1000000, kind)

    def test_no_cap(self) -> None:
        link = a_route(max_link_subscriptions=0)
        link.send(2000)
        link.clock.advance(0)
        self.assertFalse(link.proto.closed)
        self.assertEqual(link.node.broker.sublist.count, 2000)


class LetGoTests(SynchronousTestCase):
    """A closed link's interest goes in slices across turns, and nothing is written to it meanwhile."""

    def test_a_closed_links_interest_goes_in_slices(self) -> None:
        for kind, make in KINDS[:2]:
            link = make(parse_budget=0.0)
            link.send(1000)
            link.clock.advance(0)
            broker = link.node.broker
            self.assertEqual(broker.sublist.count, 1000, kind)
            link.proto.connectionLost(None)
            # One slice at once (then the budget is spent), the rest on later turns.
            self.assertEqual(broker.sublist.count, 1000 - LET_GO_SLICE, kind)
            # A message to what is still there is not kept for the closed link.
            publisher = link.node.client()
            written = link.transport.value()
            publisher.send(b"PUB flood.0.x 1\r\nx\r\n")
            self.assertEqual(link.transport.value(), written, kind)
            self.assertEqual(link.proto.out, [], kind)
            link.clock.advance(0)
            self.assertEqual(broker.sublist.count, 0, kind)

    def test_without_a_budget_all_at_once(self) -> None:
        link = a_route(parse_budget=None)
        link.send(1000)
        link.proto.connectionLost(None)
        self.assertEqual(link.node.broker.sublist.count, 0)

    def test_other_links_hear_of_it(self) -> None:
        """A route's interest that goes in slices is told to a leaf link (LS-) slice by slice, all of it in the end."""
        node = test_leaf.Node("A", cluster="c1")
        node.manager.settings = dataclasses.replace(node.manager.settings, parse_budget=0.0)
        spoke = node.leafs.accepted()
        spoke_transport = _peer_transport(50001)
        spoke.makeConnection(spoke_transport)
        spoke.dataReceived(b'CONNECT {"server_id":"NS","name":"spoke"}\r\n')
        peer = node.manager.accepted()
        peer.makeConnection(_peer_transport(50000))
        peer.dataReceived(b'CONNECT {"cluster":"c1"}\r\nINFO {"server_id":"NF","cluster":"c1"}\r\n')
        peer.dataReceived(b"".join(b"RS+ $G flood.%d.x\r\n" % i for i in range(600)))
        node.clock.advance(0)
        self.assertEqual(spoke_transport.value().count(b"LS+ flood."), 600)
        spoke_transport.clear()
        peer.connectionLost(None)
        self.assertEqual(spoke_transport.value().count(b"LS- flood."), LET_GO_SLICE)
        node.clock.advance(0)
        self.assertEqual(spoke_transport.value().count(b"LS- flood."), 600)


class CollectorTests(SynchronousTestCase):
    """
    On CPython a link's growing interest is moved out of the cyclic
    collector's way (gc.freeze) every FREEZE_STEP entries, and handed back
    (gc.unfreeze) once a closed link's interest has all gone.
    """

    def setUp(self) -> None:
        self.calls: List[str] = []
        self.patch(peer, "FREEZE_STEP", 100)
        self.patch(peer, "_freeze", lambda: self.calls.append("freeze"))
        self.patch(peer, "_unfreeze", lambda: self.calls.append("unfreeze"))

    def test_frozen_as_it_grows_and_handed_back_when_gone(self) -> None:
        for kind, make in KINDS:
            del self.calls[:]
            link = make()
            link.send(250)
            link.clock.advance(0)
            self.assertEqual(self.calls, ["freeze", "freeze"], kind)
            # Entries that go and come again below the high mark: nothing more.
            link.proto.dataReceived(b"".join(b"RS- $G flood.%d.x\r\nRS+ $G flood.%d.x\r\n" % (i, i) for i in range(200, 250))
                                    if kind == "route" else b"")
            self.assertEqual(self.calls, ["freeze", "freeze"], kind)

    def test_handed_back_once_a_closed_links_interest_has_gone(self) -> None:
        for kind, make in KINDS[:2]:
            del self.calls[:]
            link = make(parse_budget=0.0)
            link.send(600)
            link.clock.advance(0)
            link.proto.connectionLost(None)
            self.assertEqual(self.calls, ["freeze"] * 6, kind)  # (some of it is still there)
            link.clock.advance(0)
            self.assertEqual(self.calls, ["freeze"] * 6 + ["unfreeze"], kind)

    def test_a_gateway_hands_back_when_it_closes(self) -> None:
        """(A gateway's interest is its own index, which goes with the connection.)"""
        link = a_gateway()
        link.send(250)
        link.proto.connectionLost(None)
        self.assertEqual(self.calls, ["freeze", "freeze", "unfreeze"])

    def test_a_small_link_never_freezes(self) -> None:
        link = a_route()
        link.send(99)
        link.proto.connectionLost(None)
        self.assertEqual(self.calls, [])
