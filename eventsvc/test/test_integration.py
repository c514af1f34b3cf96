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

