"""
eventsvc as an operator runs it: a real process, its exit codes and its
output.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess

from twisted.trial.unittest import TestCase

from eventsvc.test import process


def run(argv, timeout=60):
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=process.child_env(), stdin=subprocess.DEVNULL
    )


class StartupErrorTests(TestCase):
    def twistd(self, *args):
        return run([process.require("twistd"), "-n", "--pidfile=", "eventsvc", *args])

    def test_bad_config_one_line(self) -> None:
        path = process.write_config(self.mktemp(), "[service]\nprot = 4222\n")
        result = self.twistd("--config", path)
        self.assertEqual(result.returncode, 78)
        output = (result.stdout + result.stderr).strip()
        self.assertNotIn("Traceback", output)
        self.assertEqual(output.count("\n"), 0, output)
        self.assertIn(path, output)
        self.assertIn("[service] prot: unknown key", output)

    def test_missing_config_file(self) -> None:
        result = self.twistd("--config", "/nonexistent/patch.toml")
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn("/nonexistent/patch.toml: cannot read", result.stderr)

    def test_port_in_use(self) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            path = process.write_config(self.mktemp(), '[service]\nhost = "127.0.0.1"\nport = %d\n' % port)
            result = self.twistd("--config", path)
        self.assertNotEqual(result.returncode, 0)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn("cannot listen on 127.0.0.1:%d" % port, result.stderr)
        self.assertIn("[service] host and port in " + path, result.stderr)


class RunningTests(TestCase):
    timeout = 60

    def ping(self, port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
            data = b""
            while not data.endswith(b"PONG\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data

    def test_twistd_json_logs(self) -> None:
        """[log] format = "json" makes twistd write one JSON object per line."""
        path = process.write_config(self.mktemp(), '[service]\nhost = "127.0.0.1"\nport = 0\n[log]\nformat = "json"\n')
        server = process.eventsvc(path)
        server.start()
        self.addCleanup(server.stop)
        self.assertTrue(self.ping(server.port).endswith(b"PONG\r\n"))
        # twistd ends a SIGTERM by re-raising it (systemd counts that as clean).
        self.assertIn(server.stop(), (0, -signal.SIGTERM))
        records = [json.loads(line) for line in server.lines if line.strip()]
        self.assertGreater(len(records), 2)
        for record in records:
            self.assertEqual(set(record) >= {"time", "level", "namespace", "message"}, True, record)
        listening = [r for r in records if r["message"].startswith("service listening")]
        self.assertEqual(listening[0]["port"], server.port)
        self.assertEqual(listening[0]["level"], "info")

    def test_twist(self) -> None:
        """`twist eventsvc --config …` runs the same service."""
        path = process.write_config(self.mktemp(), '[service]\nhost = "127.0.0.1"\nport = 0\n')
        server = process.ServerProcess(
            # twist has its own log options (JSON by default when not on a terminal).
            [process.require("twist"), "--log-format", "text", "eventsvc", "--config", path],
            process._READY_EVENTSVC,
            env=process.child_env(),
        )
        server.start()
        self.addCleanup(server.stop)
        self.assertTrue(self.ping(server.port).startswith(b"INFO {"))



def _read_until(s: socket.socket, marker: bytes, data: bytes = b"") -> bytes:
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise AssertionError("closed while waiting for {!r}: {!r}".format(marker, data))
        data += chunk
    return data


class LatencyTests(TestCase):
    """Small writes are not held back by Nagle's algorithm (TCP_NODELAY)."""

    timeout = 60

    def test_delivery_after_pong_is_prompt(self) -> None:
        """
        After SUB and a PING/PONG, the next message reaches the subscriber
        at once: with Nagle's algorithm on, it waited for the subscriber's
        delayed ACK of the PONG (40 ms on Linux).
        """
        import time

        path = process.write_config(self.mktemp(), '[service]\nhost = "127.0.0.1"\nport = 0\n')
        server = process.eventsvc(path)
        server.start()
        self.addCleanup(server.stop)
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sub, \
                socket.create_connection(("127.0.0.1", server.port), timeout=5) as pub:
            sub.sendall(b'CONNECT {"verbose":false}\r\nSUB lat 1\r\nPING\r\n')
            _read_until(sub, b"PONG\r\n")
            pub.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
            _read_until(pub, b"PONG\r\n")
            delays = []
            for i in range(12):
                sub.sendall(b"PING\r\n")
                _read_until(sub, b"PONG\r\n")
                started = time.perf_counter()
                pub.sendall(b"PUB lat 2\r\nhi\r\n")
                _read_until(sub, b"MSG lat 1 2\r\nhi\r\n")
                delays.append(time.perf_counter() - started)
        delays.sort()
        self.assertLess(delays[len(delays) // 2], 0.010, ["%.1f ms" % (d * 1000) for d in delays])
