"""
The test harness for real processes (L{eventsvc.test.process}): a start
that knows every port is bound (or says which was taken).
"""

from __future__ import annotations

import os
import socket

from twisted.trial.unittest import TestCase

from eventsvc.test import process


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
        server.start()
        self.addCleanup(server.stop)
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
