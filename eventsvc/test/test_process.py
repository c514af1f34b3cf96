"""
The test harness for real processes (L{eventsvc.test.process}): the
served clock that bounds attacks and drills on a shared machine, and a
start that knows every port is bound (or says which was taken).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Dict, Optional, Tuple

from twisted.trial.unittest import TestCase

from eventsvc.test import process

SERVER = (1, None)


class FakeMachine:
    """A wall clock and each thread's (on-CPU, waiting) seconds, moved by hand."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.threads: Dict[Tuple[int, Optional[int]], Tuple[float, float]] = {}

    def now(self) -> float:
        return self.wall

    def stats(self, pid: int, tid: Optional[int]) -> Tuple[float, float]:
        return self.threads.get((pid, tid), (0.0, 0.0))

    def advance(self, seconds: float, **threads: Tuple[float, float]) -> None:
        """C{seconds} of wall time, in which each named thread ("server", "me") ran and waited so long."""
        self.wall += seconds
        for name, (ran, waited) in threads.items():
            key = SERVER if name == "server" else (os.getpid(), threading.get_native_id())
            r, w = self.threads.get(key, (0.0, 0.0))
            self.threads[key] = (r + ran, w + waited)


class ServedClockTests(TestCase):
    def clock(self, machine: FakeMachine) -> process.ServedClock:
        return process.ServedClock(SERVER, reader=True, stats=machine.stats, now=machine.now)

    def test_one_wait_is_taken_off_once(self) -> None:
        """
        A round trip of 12 ms in which the reader ran 1 ms, waited 10 ms
        for a CPU after the answer came, and the server (done with the
        answer, on with other work) waited those same 10 ms: what the
        round trip cost is the reader's 1 ms and the server's turn, never
        less than the reader's own CPU, not -8 ms (both waits taken off).
        """
        machine = FakeMachine()
        clock = self.clock(machine)
        started = clock()
        machine.advance(0.012, server=(0.001, 0.010), me=(0.001, 0.010))
        self.assertAlmostEqual(clock() - started, 0.001)

    def test_waits_apart_both_come_off(self) -> None:
        """
        The server waited 5 ms for a CPU while the reader slept on its
        answer, then the reader waited 3 ms: 8 ms of the 12 are the
        machine's, 4 are served.
        """
        machine = FakeMachine()
        clock = self.clock(machine)
        started = clock()
        machine.advance(0.012, server=(0.002, 0.005), me=(0.001, 0.003))
        self.assertAlmostEqual(clock() - started, 0.004)

    def test_a_busy_server_is_late(self) -> None:
        """A reactor held by 2 s of work, no thread waiting: 2 s late on this clock too."""
        machine = FakeMachine()
        clock = self.clock(machine)
        started = clock()
        machine.advance(2.0, server=(2.0, 0.0), me=(0.0001, 0.0))
        self.assertAlmostEqual(clock() - started, 2.0)

    def test_never_backwards(self) -> None:
        """Whatever the waits add up to, a later reading is never earlier."""
        machine = FakeMachine()
        clock = self.clock(machine)
        readings = [clock()]
        for _ in range(20):
            machine.advance(0.010, server=(0.0, 0.009), me=(0.0, 0.009))
            readings.append(clock())
        self.assertEqual(readings, sorted(readings))

    def test_the_reader_is_who_reads(self) -> None:
        """
        C{of} watches the thread that reads the clock, not the one that
        made it (a scenario run in a thread of its own reads it there).
        """
        machine = FakeMachine()
        clock = process.ServedClock(SERVER, reader=True, stats=machine.stats, now=machine.now)
        readings = []

        def read() -> None:
            readings.append(clock())

        thread = threading.Thread(target=read)
        thread.start()
        thread.join()
        self.assertEqual(clock.threads[1][0], os.getpid())
        self.assertNotEqual(clock.threads[1][1], threading.get_native_id())

    def test_this_thread_on_the_kernel_clock(self) -> None:
        """L{process.cpu_times} reads this thread's time on a CPU from the kernel."""
        me = (os.getpid(), threading.get_native_id())
        before = process.cpu_times(*me)
        if before == (0.0, 0.0):
            self.skipTest("no schedstat here")
        deadline = time.process_time() + 0.05
        while time.process_time() < deadline:
            pass
        # (The kernel adds a running thread's time up at a tick or when it
        # stops running: sleeping makes sure.)
        time.sleep(0.01)
        self.assertGreater(process.cpu_times(*me)[0], before[0])


class EventsvcReadinessTests(TestCase):
    """eventsvc is ready once every listener is bound; each port = 0 is read back from its log."""

    def config(self, text: str) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return process.write_config(os.path.join(directory, "eventsvc.toml"), text)

    def test_every_listener_on_port_zero(self) -> None:
        """
        With port = 0 for each kind of listener, the start reports where
        each went, and each answers there as its kind does.
        """
        server = process.eventsvc(self.config(
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[gateway]\nhost = "127.0.0.1"\nport = 0\ntokens = ["t"]\ndisable_frontend_tls = true\n'
            '[cluster]\nname = "c"\nhost = "127.0.0.1"\nport = 0\n'
            '[supercluster]\nname = "s"\nhost = "127.0.0.1"\nport = 0\n'
            '[leafnodes]\nhost = "127.0.0.1"\nport = 0\n'
            '[websocket]\nhost = "127.0.0.1"\nport = 0\nno_tls = true\ntokens = ["t"]\n'
            '[monitor]\nhost = "127.0.0.1"\nport = 0\n'
        ))
        port = server.start()
        self.addCleanup(server.stop)
        # Its port is the client listener's, not the last NATS listener's to log.
        self.assertEqual(port, server.ports["service"])
        names = ("service", "gateway", "routes", "supercluster", "leafnodes", "websocket", "monitor")
        self.assertEqual(sorted(server.ports), sorted(names), server.output())
        self.assertEqual(len(set(server.ports.values())), len(names))
        for name in ("service", "gateway", "routes", "supercluster", "leafnodes"):
            with socket.create_connection(("127.0.0.1", server.ports[name]), timeout=5) as s:
                self.assertTrue(s.recv(4096).startswith(b"INFO "), name)
        for name in ("monitor", "websocket"):
            with socket.create_connection(("127.0.0.1", server.ports[name]), timeout=5) as s:
                s.sendall(b"GET /varz HTTP/1.0\r\n\r\n")
                self.assertTrue(s.recv(4096).startswith(b"HTTP/1."), name)

    def test_a_taken_port_fails_the_start(self) -> None:
        """
        The monitor's port taken (as a free_port() another test bound
        first): the start fails at once, naming the port and why, though
        the client listener was up before (the start used to count it
        ready, and the test after it met a process gone).
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            server = process.eventsvc(self.config(
                '[service]\nhost = "127.0.0.1"\nport = 0\n[monitor]\nhost = "127.0.0.1"\nport = %d\n' % port
            ), expect=("service",))
            with self.assertRaises(AssertionError) as caught:
                server.start()
            server.stop()
        message = str(caught.exception)
        self.assertIn("a port it was told to use was taken", message)
        self.assertIn("cannot listen on 127.0.0.1:%d (set by [monitor]" % port, message)
        self.assertIn("Address already in use", message)

    def test_nats_server_with_a_cluster_block_waits_for_its_route_port(self) -> None:
        """
        A nats-server configuration file with a cluster block: ready only
        once its route port listens (opened after it says it is ready).
        """
        conf = process.write_config(os.path.abspath(self.mktemp()) + ".conf", "cluster {\n  port: -1\n}\n")
        node = process.nats_server("-c", conf)
        self.assertEqual(node.expect, ("route",))
        node.start()
        self.addCleanup(node.stop)
        with socket.create_connection(("127.0.0.1", node.ports["route"]), timeout=5) as s:
            self.assertTrue(s.recv(4096).startswith(b"INFO "))


class FreePortTests(TestCase):
    def test_outside_the_kernels_range(self) -> None:
        """
        free_port() picks below the ephemeral range, where no port-0
        listener and no outgoing connection of another test can be put.
        """
        low = process._ephemeral_low()
        if low - process._NAMED_PORTS[0] < 1000:
            self.skipTest("no room below the ephemeral range here")
        ports = {process.free_port() for _ in range(20)}
        self.assertTrue(all(process._NAMED_PORTS[0] <= port < low for port in ports), ports)
        self.assertGreater(len(ports), 1)

    def test_free(self) -> None:
        """The port can be listened on at once."""
        port = process.free_port()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()

    def test_never_twice_while_promised(self) -> None:
        """
        A port handed out is promised to its caller for C{_PROMISED_FOR}
        seconds: not handed out again before, and free to hand out after.
        """
        import tempfile

        self.patch(tempfile, "tempdir", os.path.abspath(self.mktemp()))
        self.assertTrue(process._promise(25000, 1000.0))
        self.assertFalse(process._promise(25000, 1000.0 + process._PROMISED_FOR - 1))
        self.assertTrue(process._promise(25001, 1000.0))
        self.assertTrue(process._promise(25000, 1000.0 + process._PROMISED_FOR))

    def test_not_shared_with_another_process(self) -> None:
        """
        Two processes picking ports side by side (trial -j2's workers) are
        never handed the same one: 300 picks each from about 12,000 ports
        would share a few by chance.
        """
        import subprocess
        import sys

        low = process._ephemeral_low()
        if low - process._NAMED_PORTS[0] < 10000:
            self.skipTest("too little room below the ephemeral range here")
        tmp = os.path.abspath(self.mktemp())
        os.makedirs(tmp)
        import tempfile

        self.patch(tempfile, "tempdir", tmp)
        other = subprocess.Popen(
            [sys.executable, "-c", "from eventsvc.test import process\n"
             "print(' '.join(str(process.free_port()) for _ in range(300)))"],
            stdout=subprocess.PIPE, text=True, env=dict(os.environ, TMPDIR=tmp),
        )
        ours = {process.free_port() for _ in range(300)}
        theirs = set(map(int, other.communicate(timeout=60)[0].split()))
        self.assertEqual(other.returncode, 0)
        self.assertEqual((len(ours), len(theirs)), (300, 300))
        self.assertEqual(ours & theirs, set())
