"""TCP_NODELAY on every kind of connection: clients, TLS layers, routes, HTTP deliveries."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.trial.unittest import SkipTest, SynchronousTestCase
from twisted.web.client import URI

from eventsvc.events.handlers import NoDelayEndpoints
from eventsvc.nats.tcp import no_delay


def run_one_turn(clock):
    """
    Run the calls of C{clock} due now, as one turn of a real reactor does
    (its C{runUntilCurrent}): those they make wait for the next turn, where
    C{Clock.advance(0)} would run them too.
    """
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
    for call in due:
        if call.active():
            call.called = 1
            call.func(*call.args, **call.kw)


class FakeTCP:
    def __init__(self):
        self.no_delay = None

    def setTcpNoDelay(self, enabled):
        self.no_delay = enabled


class Layer:
    """Something over a transport, as TLSMemoryBIOProtocol is (it keeps it as .transport)."""

    def __init__(self, transport):
        self.transport = transport


class NoDelayTests(SynchronousTestCase):
    def test_tcp(self):
        tcp = FakeTCP()
        no_delay(tcp)
        self.assertIs(tcp.no_delay, True)

    def test_under_tls(self):
        tcp = FakeTCP()
        no_delay(Layer(Layer(tcp)))
        self.assertIs(tcp.no_delay, True)

    def test_no_socket(self):
        # A transport of memory (tests) has nothing to set: no error.
        no_delay(Layer(None))
        no_delay(object())

    def test_http_delivery_connections(self):
        """The Agent's endpoints set TCP_NODELAY once connected, for HTTP and HTTPS."""
        from twisted.internet.testing import MemoryReactorClock

        endpoints = NoDelayEndpoints(MemoryReactorClock())
        for url in (b"http://127.0.0.1:8080/e", b"https://127.0.0.1:8443/e"):
            endpoint = endpoints.endpointForURI(URI.fromBytes(url))
            tcp = FakeTCP()
            protocol = Layer(Layer(tcp))
            endpoint._inner = type("E", (), {"connect": lambda self, factory: succeed(protocol)})()
            self.assertIs(self.successResultOf(endpoint.connect(None)), protocol)
            self.assertIs(tcp.no_delay, True)


class _Port:
    """What a tcp.Server asks of its listening port."""

    _realPortNumber = 4222


class _Producer:
    def __init__(self):
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self):
        self.paused += 1

    def resumeProducing(self):
        self.resumed += 1

    def stopProducing(self):
        pass


class TurnEndWritesTests(SynchronousTestCase):
    """
    A NATS connection's TCP transport sends what a turn wrote at its end,
    once, without registering for writability; the rest is Twisted's.  A
    real socket pair (kernel memory, no network) says what reached the peer.
    """

    def setUp(self):
        import socket

        from twisted.internet import tcp
        from twisted.internet.protocol import Protocol
        from twisted.internet.testing import MemoryReactorClock

        from eventsvc.nats.tcp import send_at_turn_end

        self.reactor = MemoryReactorClock()
        ours, self.peer = socket.socketpair()
        self.addCleanup(self.peer.close)
        self.addCleanup(ours.close)
        self.peer.setblocking(False)
        self.protocol = Protocol()
        self.tcp = tcp.Server(ours, self.protocol, ("127.0.0.1", 5000), _Port(), 1, self.reactor)
        self.protocol.makeConnection(self.tcp)
        self.assertTrue(send_at_turn_end(Layer(self.tcp)))

    def received(self):
        data = b""
        while True:
            try:
                more = self.peer.recv(1 << 20)
            except BlockingIOError:
                return data
            if not more:
                return data
            data += more

    def test_one_send_at_turn_end(self):
        """Writes of one turn reach the peer when the turn ends, and the socket is never registered for writing."""
        self.tcp.write(b"MSG a 1 2\r\nhi\r\n")
        self.tcp.writeSequence([b"MSG b 1 ", b"3\r\nbye\r\n"])
        self.assertEqual(self.received(), b"")
        self.assertEqual(self.reactor.getWriters(), [])
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"MSG a 1 2\r\nhi\r\nMSG b 1 3\r\nbye\r\n")
        self.assertEqual(self.reactor.getWriters(), [])
        self.tcp.write(b"PING\r\n")
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"PING\r\n")

    def test_large_pieces(self):
        """Large pieces (sent as an I/O vector, more of them than one sendmsg takes) arrive whole and in order."""
        pieces = [bytes([65 + i % 26]) * 1000 + b"\r\n" for i in range(1500)]
        self._all_arrive(pieces)

    def test_small_pieces(self):
        """Small pieces (joined before the send) arrive whole and in order."""
        pieces = [b"MSG s %d 5\r\nhello\r\n" % i for i in range(50000)]
        self._all_arrive(pieces)

    def _all_arrive(self, pieces):
        """
        More than the socket takes at once: the rest is left to Twisted, which
        registers for writability, pauses the producer and resumes it once
        all is sent.
        """
        producer = _Producer()
        self.tcp.registerProducer(producer, True)
        self.tcp.writeSequence(pieces)
        self.assertEqual(producer.paused, 1)  # (past Twisted's buffer size, as its own write)
        self.reactor.advance(0)
        got = self.received()
        self.assertIn(self.tcp, self.reactor.getWriters())
        self.assertGreater(len(got), 0)
        for _ in range(10000):
            if self.tcp not in self.reactor.getWriters():
                break
            self.assertIsNone(self.tcp.doWrite())
            got += self.received()
        self.assertEqual(got, b"".join(pieces))
        self.assertEqual(producer.resumed, 1)

    def test_while_twisted_sends(self):
        """A write while Twisted still sends a backlog joins the backlog, behind it."""
        big = b"x" * (8 << 20)
        self.tcp.write(big)
        self.reactor.advance(0)
        self.assertIn(self.tcp, self.reactor.getWriters())
        self.tcp.write(b"PING\r\n")
        self.reactor.advance(0)
        got = self.received()
        while self.tcp in self.reactor.getWriters():
            self.tcp.doWrite()
            got += self.received()
        self.assertEqual(got, big + b"PING\r\n")

    def test_lose_connection(self):
        """
        A close after a write (a -ERR, or a TLS close_notify, then close)
        sends the write and closes at the end of the turn: the peer reads it
        and then the end, the protocol is told the connection is done, and
        the socket is never registered for writing.
        """
        from twisted.internet.error import ConnectionDone

        lost = []
        self.protocol.connectionLost = lost.append
        self.tcp.write(b"-ERR 'Stale Connection'\r\n")
        self.tcp.loseConnection()
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(lost, [])
        self.reactor.advance(0)
        self.assertEqual(self.reactor.getWriters(), [])
        self.assertEqual(self.reactor.getReaders(), [])
        self.assertEqual(self.received(), b"-ERR 'Stale Connection'\r\n")
        self.assertEqual(self.peer.recv(10), b"")  # the end, after it
        self.assertEqual(len(lost), 1)
        self.assertIsInstance(lost[0].value, ConnectionDone)

    def test_lose_connection_with_nothing_written(self):
        """A close with nothing to send closes at the end of the turn too."""
        lost = []
        self.protocol.connectionLost = lost.append
        self.tcp.loseConnection()
        self.tcp.loseConnection()
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"")
        self.assertEqual(self.peer.recv(10), b"")
        self.assertEqual(len(lost), 1)
        self.assertEqual(self.reactor.getWriters(), [])

    def test_closed_without_shutdown(self):
        """
        A connection closes with one close(), no shutdown() first, as
        nats-server closes it: after the peer's close (a client leaving) and
        after our own (the peer still reads what was written, then the end).
        """
        import socket

        from twisted.internet import tcp
        from twisted.internet.protocol import Protocol
        from twisted.python.failure import Failure

        from eventsvc.nats.tcp import send_at_turn_end

        shutdowns = []

        class Watched(socket.socket):
            def shutdown(self, how):
                shutdowns.append(how)
                super().shutdown(how)

        for who in ("peer", "server"):
            ours, peer = socket.socketpair()
            self.addCleanup(peer.close)
            watched = Watched(fileno=ours.detach())
            self.addCleanup(watched.close)
            protocol = Protocol()
            server = tcp.Server(watched, protocol, ("127.0.0.1", 5000), _Port(), 1, self.reactor)
            protocol.makeConnection(server)
            self.assertTrue(send_at_turn_end(Layer(server)))
            if who == "peer":
                peer.close()
                # (As the reactor does with what doRead returns.)
                server.readConnectionLost(Failure(server.doRead()))
            else:
                server.write(b"-ERR 'Authentication Timeout'\r\n")
                server.loseConnection()
                self.reactor.advance(0)
                self.assertEqual(peer.recv(100), b"-ERR 'Authentication Timeout'\r\n")
                self.assertEqual(peer.recv(100), b"")
            self.assertTrue(server.disconnected, who)
            self.assertEqual(watched.fileno(), -1, who)
        self.assertEqual(shutdowns, [])

    def test_peer_half_close(self):
        """
        The peer's end of writing closes a connection whose protocol takes
        no half-close (every NATS connection), and is told to one that does,
        by its class or by itself alone, which stays open and may still write.
        """
        import socket

        from twisted.internet import tcp
        from twisted.internet.interfaces import IHalfCloseableProtocol
        from twisted.internet.protocol import Protocol
        from twisted.python.failure import Failure
        from zope.interface import directlyProvides, implementer

        from eventsvc.nats.tcp import send_at_turn_end

        told = []

        @implementer(IHalfCloseableProtocol)
        class HalfCloses(Protocol):
            def readConnectionLost(self):
                told.append(self)
                self.transport.write(b"+OK\r\n")

            def writeConnectionLost(self):
                pass

        class Itself(Protocol):
            def readConnectionLost(self):
                told.append(self)

            def writeConnectionLost(self):
                pass

        itself = Itself()
        directlyProvides(itself, IHalfCloseableProtocol)
        for protocol, stays in ((Protocol(), False), (HalfCloses(), True), (Protocol(), False), (HalfCloses(), True),
                                (itself, True), (Itself(), False)):
            ours, peer = socket.socketpair()
            self.addCleanup(peer.close)
            self.addCleanup(ours.close)
            server = tcp.Server(ours, protocol, ("127.0.0.1", 5000), _Port(), 1, self.reactor)
            protocol.makeConnection(server)
            self.assertTrue(send_at_turn_end(Layer(server)))
            peer.shutdown(socket.SHUT_WR)
            server.readConnectionLost(Failure(server.doRead()))
            self.assertEqual(not server.disconnected, stays, protocol)
            self.assertEqual(protocol in told, stays, protocol)
            if isinstance(protocol, HalfCloses):
                self.reactor.advance(0)
                self.assertEqual(peer.recv(100), b"+OK\r\n")

    def test_nothing_read_once_closing(self):
        """What the peer sends after the close was asked for is not given to the protocol (Twisted stops reading)."""
        got = []
        self.protocol.dataReceived = got.append
        self.tcp.loseConnection()
        self.peer.send(b"PUB a 2\r\nhi\r\n")
        self.tcp.doRead()
        self.assertEqual(got, [])

    def test_written_after_close_asked_still_sent(self):
        """Written after loseConnection in the same turn (Twisted sends that too): it goes out before the end."""
        self.tcp.loseConnection()
        self.tcp.write(b"late\r\n")
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"late\r\n")
        self.assertEqual(self.peer.recv(10), b"")

    def written_until_closed(self):
        """Twisted's doWrite until it says the connection is done: (its result, what the peer got)."""
        got = self.received()
        for _ in range(10000):
            result = self.tcp.doWrite()
            got += self.received()
            if result is not None:
                break
        return result, got

    def test_lose_connection_more_than_the_socket_takes(self):
        """Closing behind more than the socket takes: Twisted sends the rest, then closes; the peer gets it all."""
        from twisted.internet.main import CONNECTION_DONE

        big = b"x" * (8 << 20)
        self.tcp.write(big)
        self.tcp.loseConnection()
        self.reactor.advance(0)
        self.assertIn(self.tcp, self.reactor.getWriters())
        self.assertEqual(self.reactor.getReaders(), [])
        result, got = self.written_until_closed()
        self.assertIs(result, CONNECTION_DONE)
        self.assertEqual(got, big)

    def test_lose_connection_behind_a_backlog(self):
        """A close while Twisted still sends a backlog is Twisted's: it closes once the backlog is sent."""
        from twisted.internet.main import CONNECTION_DONE

        big = b"x" * (8 << 20)
        self.tcp.write(big)
        self.reactor.advance(0)
        self.tcp.write(b"-ERR 'x'\r\n")
        self.tcp.loseConnection()
        result, got = self.written_until_closed()
        self.assertIs(result, CONNECTION_DONE)
        self.assertEqual(got, big + b"-ERR 'x'\r\n")

    def test_lose_connection_waits_for_a_paused_producer(self):
        """A paused producer is resumed before the close, as Twisted does (the connection closes once it is done)."""
        producer = _Producer()
        self.tcp.registerProducer(producer, True)
        self.tcp.pauseProducing = None
        self.tcp.producerPaused = True
        self.tcp.loseConnection()
        self.assertIn(self.tcp, self.reactor.getWriters())
        self.tcp.doWrite()
        self.assertEqual(producer.resumed, 1)

    def test_abort_while_closing(self):
        """An abort after the close was asked for: nothing is sent, and the abort's reason stands."""
        from twisted.internet.error import ConnectionAborted

        lost = []
        self.protocol.connectionLost = lost.append
        self.tcp.write(b"MSG a 1 2\r\nhi\r\n")
        self.tcp.loseConnection()
        self.tcp.abortConnection()
        self.reactor.advance(0)
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"")
        self.assertEqual(len(lost), 1)
        self.assertIsInstance(lost[0].value, ConnectionAborted)

    def test_abort(self):
        """An aborted connection sends nothing more, and nothing registers for writing."""
        self.tcp.write(b"MSG a 1 2\r\nhi\r\n")
        self.tcp.abortConnection()
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"")
        self.assertEqual(self.reactor.getWriters(), [])

    def test_peer_gone(self):
        """A send that fails is left to Twisted's doWrite, which reports the connection lost."""
        from twisted.internet.main import CONNECTION_LOST

        self.peer.close()
        self.tcp.write(b"MSG a 1 2\r\nhi\r\n")
        self.reactor.advance(0)
        self.assertIn(self.tcp, self.reactor.getWriters())
        self.assertIs(self.tcp.doWrite(), CONNECTION_LOST)

    def test_one_call_a_turn(self):
        """Many transports written to in one turn share one call at its end."""
        self.tcp.write(b"a")
        self.tcp.write(b"b")
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)

    def test_not_bytes(self):
        """As Twisted's own write: text is refused, saying so, and what was written before is still sent."""
        self.tcp.write(b"MSG a 1 2\r\nhi\r\n")
        self.assertRaises(TypeError, self.tcp.write, "text")
        error = self.assertRaises(TypeError, self.tcp.writeSequence, [b"a", "text"])
        self.assertEqual(str(error), "Data must be bytes, not 'str'")
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"MSG a 1 2\r\nhi\r\n")

    def test_small_and_large_sequences_in_one_turn(self):
        """
        Sequences of small pieces (joined as they are written, on CPython)
        and of large ones (kept as pieces, for sendmsg), and single writes,
        in one turn: everything arrives once, in the order written.
        """
        small = [b"MSG s %d 5\r\n" % i if i % 2 == 0 else b"hello\r\n" for i in range(3000)]
        large = [bytes([65 + i % 26]) * 8000 + b"\r\n" for i in range(20)]
        writes = [small[:1000], [b"PING\r\n"], large, small[1000:], large[:3], [b"PONG\r\n"]]
        for pieces in writes:
            if len(pieces) == 1:
                self.tcp.write(pieces[0])
            else:
                self.tcp.writeSequence(pieces)
        self.tcp.writeSequence([b"", b""])
        self.reactor.advance(0)
        got = self.received()
        for _ in range(10000):
            if self.tcp not in self.reactor.getWriters():
                break
            self.assertIsNone(self.tcp.doWrite())
            got += self.received()
        self.assertEqual(got, b"".join(piece for pieces in writes for piece in pieces))

    def test_memory_transports_left_alone(self):
        """A transport with no Twisted TCP transport under it (tests' memory ones) is left as it is."""
        from twisted.internet.testing import StringTransport

        from eventsvc.nats.tcp import send_at_turn_end

        transport = StringTransport()
        self.assertFalse(send_at_turn_end(transport))
        self.assertIs(type(transport), StringTransport)

    def test_slow_consumer_rules_hold(self):
        """
        Over a socket its peer does not read, an Outbound is paused once the
        kernel and Twisted's buffer are full, holds what comes next, and
        cuts the peer off past max_pending; and a pause longer than the
        write deadline cuts it off too.
        """
        from eventsvc.nats.outbound import Outbound

        self.tcp.unregisterProducer()  # (setUp's send_at_turn_end already ran; Outbound.attach runs it again)
        why = []
        outbound = Outbound(self.reactor, 1 << 20, why.append, write_deadline=2.0)
        outbound.attach(self.tcp)
        frame = b"MSG a 1 1000\r\n" + b"x" * 1000 + b"\r\n"
        for _ in range(200):
            outbound.out.extend([frame] * 64)
            outbound.flush()
            self.reactor.advance(0)
            if outbound.paused:
                break
        self.assertTrue(outbound.paused)
        self.assertEqual(why, [])
        self.reactor.advance(2.1)
        self.assertEqual(why, ["Slow Consumer (Write Deadline)"])
        while outbound.held_bytes <= 1 << 20:
            outbound.out.extend([frame] * 64)
            outbound.flush()
        self.assertEqual(why, ["Slow Consumer (Write Deadline)", "Slow Consumer (Pending Bytes)"])

    def test_drained_peer_resumes(self):
        """Once the peer reads again, everything held reaches it, in order, and the Outbound is resumed."""
        from eventsvc.nats.outbound import Outbound

        self.tcp.unregisterProducer()
        outbound = Outbound(self.reactor, 64 << 20, lambda why: self.fail(why))
        outbound.attach(self.tcp)
        frames = [b"MSG a 1 1000\r\n" + bytes([65 + i % 26]) * 1000 + b"\r\n" for i in range(8000)]
        for i in range(0, len(frames), 64):
            outbound.out.extend(frames[i:i + 64])
            outbound.flush()
            self.reactor.advance(0)
        self.assertTrue(outbound.paused)
        got = self.received()
        for _ in range(100000):
            if not outbound.paused and not outbound.held_bytes and self.tcp not in self.reactor.getWriters():
                break
            if self.tcp in self.reactor.getWriters():
                self.tcp.doWrite()
            self.reactor.advance(0)
            got += self.received()
        self.assertEqual(got, b"".join(frames))
        self.assertFalse(outbound.paused)

    def test_one_failure_spares_the_others(self):
        """
        A connection whose turn-end send raises (its producer's resumeProducing
        here) does not leave the other connections of the turn unsent, nor
        unable to send again: each is sent to, and the error is logged.
        """
        import socket

        from twisted.internet import tcp
        from twisted.internet.protocol import Protocol

        from eventsvc.nats.tcp import send_at_turn_end

        class Failing(_Producer):
            def resumeProducing(self):
                raise RuntimeError("a producer's bug")

        others = []
        for _ in range(2):
            ours, peer = socket.socketpair()
            self.addCleanup(peer.close)
            self.addCleanup(ours.close)
            peer.setblocking(False)
            protocol = Protocol()
            transport = tcp.Server(ours, protocol, ("127.0.0.1", 5001), _Port(), 2, self.reactor)
            protocol.makeConnection(transport)
            send_at_turn_end(transport)
            others.append((transport, peer))
        self.tcp.registerProducer(Failing(), True)
        big = b"x" * (self.tcp.bufferSize + 1)  # pauses the producer; the socket takes it all
        self.tcp.write(big)
        for transport, _ in others:
            transport.write(b"PING\r\n")
        self.reactor.advance(0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.received(), big)
        for transport, peer in others:
            self.assertEqual(peer.recv(100), b"PING\r\n")
            transport.write(b"PONG\r\n")
        self.reactor.advance(0)
        for transport, peer in others:
            self.assertEqual(peer.recv(100), b"PONG\r\n")

class AtTurnEndTests(SynchronousTestCase):
    """
    Calls made for a turn's end (L{at_turn_end}: a file store's group
    commit) run before the turn's output is sent, and what they write goes
    out in that same turn, not one (an C{epoll_wait}) later.
    """

    setUp = TurnEndWritesTests.setUp
    received = TurnEndWritesTests.received

    def test_written_by_a_call_goes_out_in_its_turn(self):
        """What a call at the turn's end writes reaches the peer when that turn ends, with the turn's own output, after it."""
        from eventsvc.nats.tcp import at_turn_end

        self.tcp.write(b"+OK\r\n")
        at_turn_end(self.reactor, lambda: self.tcp.write(b"PUBACK 1\r\n"))
        at_turn_end(self.reactor, lambda: self.tcp.write(b"PUBACK 2\r\n"))
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        run_one_turn(self.reactor)
        self.assertEqual(self.received(), b"+OK\r\nPUBACK 1\r\nPUBACK 2\r\n")
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.reactor.getWriters(), [])

    def test_first_write_from_a_call(self):
        """A transport first written to by a call at the turn's end (nothing else this turn) still sends in that turn."""
        from eventsvc.nats.tcp import at_turn_end

        at_turn_end(self.reactor, lambda: self.tcp.write(b"PUBACK\r\n"))
        run_one_turn(self.reactor)
        self.assertEqual(self.received(), b"PUBACK\r\n")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_calls_made_by_calls(self):
        """A call made by a call (a PubAck stored again by a mirror's store) runs in the same turn end, after the ones before it."""
        from eventsvc.nats.tcp import at_turn_end

        order = []

        def first():
            order.append("first")
            at_turn_end(self.reactor, lambda: (order.append("third"), self.tcp.write(b"c"))[1])

        at_turn_end(self.reactor, first)
        at_turn_end(self.reactor, lambda: order.append("second"))
        run_one_turn(self.reactor)
        self.assertEqual(order, ["first", "second", "third"])
        self.assertEqual(self.received(), b"c")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_endless_calls_do_not_starve_the_reactor(self):
        """A call that makes itself again runs a few rounds a turn, not forever; the output of those rounds goes out."""
        from eventsvc.nats.tcp import TurnEnd, at_turn_end

        runs = []

        def again():
            runs.append(1)
            self.tcp.write(b"x")
            at_turn_end(self.reactor, again)

        at_turn_end(self.reactor, again)
        run_one_turn(self.reactor)
        self.assertEqual(len(runs), TurnEnd.ROUNDS)
        self.assertEqual(self.received(), b"x" * TurnEnd.ROUNDS)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        run_one_turn(self.reactor)
        self.assertEqual(len(runs), 2 * TurnEnd.ROUNDS)
        self.reactor.getDelayedCalls()[0].cancel()

    def test_cancelled(self):
        """A cancelled call does not run; the rest do."""
        from eventsvc.nats.tcp import at_turn_end

        ran = []
        call = at_turn_end(self.reactor, lambda: ran.append("cancelled"))
        at_turn_end(self.reactor, lambda: ran.append("kept"))
        self.assertTrue(call.active())
        call.cancel()
        self.assertFalse(call.active())
        self.reactor.advance(0)
        self.assertEqual(ran, ["kept"])

    def test_a_failing_call_keeps_nothing_back(self):
        """A call that raises is logged; the calls after it run and the turn's output is sent."""
        from eventsvc.nats.tcp import at_turn_end

        def broken():
            raise ZeroDivisionError()

        self.tcp.write(b"a")
        at_turn_end(self.reactor, broken)
        at_turn_end(self.reactor, lambda: self.tcp.write(b"b"))
        self.reactor.advance(0)
        self.assertEqual(self.received(), b"ab")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class GreetingTests(SynchronousTestCase):
    """
    A client's greeting INFO, in plaintext and on a TLS listener, leaves
    with its turn's one send: the transport is never registered for writing
    (Twisted's way, which cost two epoll_ctl and a turn per connection).
    """

    def greet(self, tls):
        import os
        import socket
        import tempfile

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactorClock

        from eventsvc.nats.listener import ClientFactory
        from eventsvc.nats.server import Broker
        from eventsvc.nats.settings import ClientSettings
        from eventsvc.test.helpers import with_limits

        context = None
        if tls:
            from eventsvc.security.tls import mutual_tls_server
            from eventsvc.test.tlshelpers import PKI

            pki = PKI(os.path.join(tempfile.mkdtemp(), "pki"))
            pki.issue("server", ["localhost"])
            context = mutual_tls_server(pki.path("server.crt"), pki.path("server.key"), pki.path("ca.crt"))
        reactor = MemoryReactorClock()
        factory = ClientFactory(Broker(server_id="NTEST"), with_limits(ClientSettings, tls=context), reactor)
        factory.handshakes.seconds = float("inf")
        # A TCP pair on loopback (TCP_NODELAY is set on it).
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen(1)
            peer = socket.create_connection(listening.getsockname())
            ours = listening.accept()[0]
        self.addCleanup(peer.close)
        self.addCleanup(ours.close)
        ours.setblocking(False)
        protocol = factory.buildProtocol(None)
        transport = tcp.Server(ours, protocol, ("127.0.0.1", 5000), _Port(), 1, reactor)
        protocol.makeConnection(transport)
        self.assertEqual(reactor.getWriters(), [])
        reactor.advance(0)
        self.assertEqual(reactor.getWriters(), [])
        peer.settimeout(5)
        got = peer.recv(1 << 16)
        self.assertTrue(got.startswith(b"INFO {") and got.endswith(b"} \r\n"), got)
        self.assertEqual(b'"tls_required":true' in got, tls)
        self.assertEqual(ours.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY), 1)

    def test_plain(self):
        self.greet(tls=False)

    def test_tls_listener(self):
        self.greet(tls=True)


class AfterThePollTests(SynchronousTestCase):
    """
    On an epoll reactor, the end of a turn whose poll read something runs
    as the poll returns (L{eventsvc.nats.tcp.TurnEnd}): what a read's
    handler and the calls at the turn's end write reaches the peer before
    the reactor runs its timers, without a delayed call; what a timer
    writes still goes out through one.
    """

    def setUp(self):
        import socket

        from twisted.internet.protocol import Factory, Protocol

        from eventsvc.nats.tcp import at_turn_end, set_up

        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:
            raise SkipTest("no epoll here")
        self.reactor = reactor = EPollReactor()
        self.addCleanup(self._close_reactor)
        test = self

        class Acks(Protocol):
            def connectionMade(self):
                set_up(self.transport)
                test.server = self

            def dataReceived(self, data):
                self.transport.write(b"read " + data + b";")
                at_turn_end(reactor, lambda: self.transport.write(b"ack " + data + b";"))

        port = reactor.listenTCP(0, Factory.forProtocol(Acks), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self.peer.close)
        self.peer.setblocking(False)
        self.server = None
        while self.server is None:
            reactor.doIteration(1)
        reactor.runUntilCurrent()

    def _close_reactor(self):
        if self.server is not None:
            self.server.transport.abortConnection()
        self.reactor.runUntilCurrent()
        self.reactor.disconnectAll()
        self.reactor._poller.close()

    def received(self):
        import select

        select.select([self.peer], [], [], 1)
        try:
            return self.peer.recv(65536)
        except BlockingIOError:
            return b""

    def test_sent_when_the_poll_returns(self):
        """A read's output and what its turn-end calls write go out in one send as the poll returns, with no delayed call."""
        self.peer.sendall(b"PUB")
        self.reactor.doIteration(1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.received(), b"read PUB;ack PUB;")

    def test_written_by_a_timer(self):
        """What a timer writes outside the poll takes a delayed call, and goes out when the reactor runs it."""
        self.reactor.callLater(0, self.server.transport.write, b"PING\r\n")
        self.reactor.runUntilCurrent()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.runUntilCurrent()
        self.assertEqual(self.received(), b"PING\r\n")
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ClosedConnectionFreedTests(SynchronousTestCase):
    """
    A client connection that has closed, and its parts, are freed by
    reference counting once Twisted lets go of them, plaintext and over
    mutual TLS, with the cycle collector off: left in reference cycles,
    each connection's 44 objects waited for the collector, and the
    collections were a fifth of a plaintext connection's CPU.
    """

    CONNECT = b'CONNECT {"verbose":false,"pedantic":false,"protocol":1,"headers":true}\r\nPING\r\n'

    def setUp(self):
        import gc
        import sys

        if sys.implementation.name != "cpython":
            # PyPy counts no references: its collector frees everything, cycles or not.
            raise SkipTest("reference counting is CPython's")

        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)

    def serve(self, tls):
        import os
        import socket
        import tempfile

        from twisted.internet import tcp
        from twisted.internet.testing import MemoryReactorClock

        from eventsvc.nats.listener import ClientFactory
        from eventsvc.nats.server import Broker
        from eventsvc.nats.settings import ClientSettings
        from eventsvc.test.helpers import with_limits

        context = None
        self.pki = None
        if tls:
            from eventsvc.security.tls import mutual_tls_server
            from eventsvc.test.tlshelpers import PKI

            self.pki = PKI(os.path.join(tempfile.mkdtemp(), "pki"))
            self.pki.issue("server", ["localhost"])
            self.pki.issue("client")
            context = mutual_tls_server(self.pki.path("server.crt"), self.pki.path("server.key"), self.pki.path("ca.crt"))
        self.reactor = MemoryReactorClock()
        self.factory = ClientFactory(Broker(server_id="NTEST"), with_limits(ClientSettings, tls=context), self.reactor)
        self.factory.handshakes.seconds = float("inf")
        with socket.socket() as listening:
            listening.bind(("127.0.0.1", 0))
            listening.listen(1)
            self.peer = socket.create_connection(listening.getsockname())
            ours = listening.accept()[0]
        self.addCleanup(self.peer.close)
        self.addCleanup(ours.close)
        ours.setblocking(False)
        self.peer.setblocking(False)
        protocol = self.factory.buildProtocol(None)
        transport = tcp.Server(ours, protocol, ("127.0.0.1", 5000), _Port(), 1, self.reactor)
        protocol.makeConnection(transport)
        self.reactor.advance(0)
        return transport

    def turn(self, transport):
        """What a reactor does for a readable socket (read, then the turn's end), and for a writable one it waits for."""
        from twisted.python.failure import Failure

        for step in (transport.doRead, transport.doWrite):
            if transport.disconnected or (step == transport.doWrite and transport not in self.reactor.getWriters()):
                continue
            why = step()
            if why is not None:
                transport.connectionLost(Failure(why))
            self.reactor.advance(0)

    def received(self):
        try:
            return self.peer.recv(1 << 16)
        except BlockingIOError:
            return b""

    def assertFreed(self, transport):
        import weakref

        (connection,) = self.factory.broker.clients.values()
        freed = weakref.ref(connection)
        del connection
        self.turn(transport)
        self.assertEqual(self.factory.live, set())
        self.assertEqual(self.factory.broker.clients, {})
        self.assertEqual(self.factory.broker.closed[-1].close_reason, "Client Closed")
        del transport
        self.assertIsNone(freed())

    def test_plain(self):
        transport = self.serve(tls=False)
        self.assertTrue(self.received().startswith(b"INFO "))
        self.peer.sendall(self.CONNECT)
        self.turn(transport)
        self.assertEqual(self.received(), b"PONG\r\n")
        self.peer.close()
        self.assertFreed(transport)

    def test_mutual_tls(self):
        from OpenSSL import SSL

        transport = self.serve(tls=True)
        self.assertTrue(self.received().startswith(b"INFO "))
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.use_certificate_file(self.pki.path("client.crt"))
        context.use_privatekey_file(self.pki.path("client.key"))
        client = SSL.Connection(context, self.peer)
        client.set_connect_state()
        got = b""
        for _ in range(20):
            try:
                if not got:
                    client.do_handshake()
                    client.sendall(self.CONNECT)
                got += client.recv(1 << 16)
                break
            except SSL.WantReadError:
                self.turn(transport)
        self.assertEqual(got, b"PONG\r\n")
        client.shutdown()
        self.peer.close()
        self.assertFreed(transport)


class TLSCloseTests(SynchronousTestCase):
    """
    A TLS connection the client closes (close_notify, then the socket) over
    a TCP transport sending at the turn's end: the server answers with its
    own close_notify, then closes, in the turn that read the client's.  A
    real socket pair under Twisted's TLS layer; the client is pyOpenSSL.
    """

    def test_close_notify_answered_then_closed(self):
        import socket

        from OpenSSL import SSL
        from twisted.internet import tcp
        from twisted.internet.error import ConnectionDone
        from twisted.internet.protocol import Factory, Protocol
        from twisted.internet.ssl import CertificateOptions
        from twisted.internet.testing import MemoryReactorClock
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from eventsvc.nats.tcp import send_at_turn_end
        from eventsvc.test.tlshelpers import PKI

        pki = PKI(self.mktemp())
        minted = pki.issue("service", ["localhost"])
        private = PKI.private(minted)
        options = CertificateOptions(privateKey=private.privateKey.original, certificate=private.original)

        lost = []
        got = []

        class App(Protocol):
            def dataReceived(self, data):
                got.append(data)

            def connectionLost(self, reason):
                lost.append(reason)

        reactor = MemoryReactorClock()
        ours, peer = socket.socketpair()
        self.addCleanup(peer.close)
        self.addCleanup(ours.close)
        peer.setblocking(False)
        layer = TLSMemoryBIOFactory(options, False, Factory.forProtocol(App)).buildProtocol(None)
        server = tcp.Server(ours, layer, ("127.0.0.1", 5000), _Port(), 1, reactor)
        layer.makeConnection(server)
        self.assertTrue(send_at_turn_end(server))

        client = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), None)
        client.set_connect_state()

        def received():
            data = b""
            while True:
                try:
                    more = peer.recv(1 << 16)
                except BlockingIOError:
                    return data
                if not more:
                    return data
                data += more

        def exchange():
            """What the client has to send, to the server and one turn; what the server sent, to the client."""
            try:
                peer.sendall(client.bio_read(1 << 16))
            except SSL.WantReadError:
                pass
            server.doRead()
            reactor.advance(0)
            back = received()
            if back:
                client.bio_write(back)

        for _ in range(10):
            try:
                client.do_handshake()
                break
            except SSL.WantReadError:
                exchange()
        client.send(b"PING\r\n")
        exchange()
        self.assertEqual(b"".join(got), b"PING\r\n")

        client.shutdown()  # close_notify
        exchange()
        self.assertEqual(reactor.getWriters(), [])
        # The server's close_notify came back, then the end of the stream.
        self.assertRaises(SSL.ZeroReturnError, client.recv, 100)
        self.assertEqual(client.get_shutdown() & SSL.RECEIVED_SHUTDOWN, SSL.RECEIVED_SHUTDOWN)
        self.assertEqual(peer.recv(10), b"")
        self.assertEqual(len(lost), 1)
        self.assertIsInstance(lost[0].value, ConnectionDone)
