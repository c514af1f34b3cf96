"""
The end of a reactor turn as an epoll reactor's poll returns
(L{eventsvc.nats.tcp.TurnEnd}), against what else runs in a real reactor:
writes from other threads (C{callFromThread}), a turn-end call that raises,
C{crash} and a new C{run}, and delayed calls cancelled from outside (trial's
janitor cancels what a test left).  Each test asserts what the peer reads.
"""

from __future__ import annotations

import select
import socket
import threading
from typing import Any, List

from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from eventsvc.nats.tcp import at_turn_end, set_up


class RealReactorTests(SynchronousTestCase):
    def setUp(self) -> None:
        try:
            from twisted.internet.epollreactor import EPollReactor
        except ImportError:
            raise SkipTest("no epoll here")
        self.reactor = reactor = EPollReactor()
        self.addCleanup(self._close_reactor)
        self.server: Any = None
        self.turn_end_calls: List[Any] = []
        test = self

        class Echo(Protocol):
            def connectionMade(self) -> None:
                set_up(self.transport)
                test.server = self

            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"read " + data + b";")
                for call in test.turn_end_calls:
                    at_turn_end(reactor, call)

        port = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.peer = socket.create_connection(("127.0.0.1", port.getHost().port))
        self.addCleanup(self.peer.close)
        self.peer.setblocking(False)
        while self.server is None:
            reactor.doIteration(1)
        reactor.runUntilCurrent()

    def _close_reactor(self) -> None:
        if self.server is not None:
            self.server.transport.abortConnection()
        self.reactor.runUntilCurrent()
        self.reactor.disconnectAll()
        self.reactor._poller.close()

    def turns(self, n: int = 4) -> None:
        for _ in range(n):
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.01)

    def received(self) -> bytes:
        got = b""
        while select.select([self.peer], [], [], 0.2)[0]:
            data = self.peer.recv(65536)
            if not data:
                break
            got += data
        return got

    def test_write_from_another_thread(self) -> None:
        """C{callFromThread(transport.write)} from a worker thread reaches the peer."""
        thread = threading.Thread(target=self.reactor.callFromThread, args=(self.server.transport.write, b"thread;"))
        thread.start()
        thread.join()
        self.turns()
        self.assertEqual(self.received(), b"thread;")

    def test_turn_end_call_raises(self) -> None:
        """A turn-end call that raises is logged; the read's output and the other calls' go out, and the next turn works."""
        def boom() -> None:
            raise RuntimeError("boom")

        self.turn_end_calls[:] = [boom, lambda: self.server.transport.write(b"after;")]
        self.peer.sendall(b"one")
        self.turns()
        self.assertEqual(self.received(), b"read one;after;")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.turn_end_calls[:] = []
        self.peer.sendall(b"two")
        self.turns()
        self.assertEqual(self.received(), b"read two;")

    def test_crash_in_the_poll_then_run_again(self) -> None:
        """C{reactor.crash()} from a read's handler: what the read wrote is sent, and writes go on when the reactor runs again."""
        self.turn_end_calls[:] = [self.reactor.crash]
        self.peer.sendall(b"one")
        self.turns()
        self.assertEqual(self.received(), b"read one;")
        self.turn_end_calls[:] = []
        self.reactor.callLater(0, self.server.transport.write, b"timer;")
        self.turns()
        self.peer.sendall(b"two")
        self.turns()
        self.assertEqual(self.received(), b"timer;read two;")

    def test_turn_end_cancelled_from_outside(self) -> None:
        """
        The turn end's delayed call cancelled from outside (trial's janitor
        cancels every call a test left; so might an application cleaning
        up): the next writes still go out.
        """
        self.server.transport.write(b"left;")
        for call in self.reactor.getDelayedCalls():
            call.cancel()
        self.peer.sendall(b"one")
        self.turns()
        self.reactor.callLater(0, self.server.transport.write, b"timer;")
        self.turns()
        got = self.received()
        self.assertIn(b"read one;", got)
        self.assertIn(b"timer;", got)
