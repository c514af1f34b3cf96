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
            # On the server's ServedClock: Nagle's 40 ms is a wait no queue
            # for a CPU explains; a shared machine's turns are.
            clock = process.ServedClock.of(server)
            for i in range(12):
                sub.sendall(b"PING\r\n")
                _read_until(sub, b"PONG\r\n")
                started = clock()
                pub.sendall(b"PUB lat 2\r\nhi\r\n")
                _read_until(sub, b"MSG lat 1 2\r\nhi\r\n")
                delays.append(clock() - started)
        delays.sort()
        self.assertLess(delays[len(delays) // 2], 0.010, ["%.1f ms" % (d * 1000) for d in delays])


class CheckConfigTests(TestCase):
    """check-config as an operator runs it: what will run, and what is wrong."""

    def write(self, text):
        return process.write_config(self.mktemp() + ".toml", text)

    def test_describes_every_part(self) -> None:
        path = self.write(
            '[service]\nhost = "127.0.0.1"\nport = 4333\ndata_dir = "data"\n'
            '[handlers]\nfeed = "http://127.0.0.1:9/f"\ncfgingest = "python:eventsvc.events.handlers:log_event"\n'
            'event_feed = "python:eventsvc.events.handlers:log_event"\n'
            '[gateway]\nhost = "127.0.0.1"\nport = 4334\ndisable_frontend_tls = true\ntokens = ["t"]\n'
            '[monitor]\nport = 8333\n[cluster]\nport = 6333\n'
        )
        result = process.cli("check-config", "--config", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        out = result.stdout
        self.assertTrue(out.startswith("ok: " + path + "\n"), out)
        for expected in (
            "service listener on 127.0.0.1:4333: plaintext, no client certificates, no authentication",
            "gateway listener on 127.0.0.1:4334: plaintext (disable_frontend_tls); authentication: tokens (1 listed)",
            "monitor on http://127.0.0.1:8333/",
            "cluster eventsvc, accepting routes on 0.0.0.0:6333, plaintext routes",
            # (Where events are kept: the JetStream stream since issue 29, "the spool: " before.)
            "(the JetStream stream EVENTS under ",
            "handler feed: http://127.0.0.1:9/f <- compliance_ingest",
        ):
            self.assertIn(expected, out)
        self.assertNotIn("warning", out)

    def test_warns_of_types_with_nowhere_to_go(self) -> None:
        path = self.write('[service]\nport = 0\n[handlers]\nevent_feed = "python:eventsvc.events.handlers:log_event"\n')
        result = process.cli("check-config", "--config", path)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn(
            "warning: {}: [handlers] cfgingest has no address, so cfgingest, nodeTerminated will be refused".format(path),
            result.stdout,
        )
        self.assertIn("warning: {}: [handlers] feed has no address, so compliance_ingest will be refused".format(path), result.stdout)

    def test_unimportable_handler_names_file_and_key(self) -> None:
        path = self.write('[service]\nport = 0\n[handlers]\nfeed = "python:no_such_module_here:deliver"\n')
        result = process.cli("check-config", "--config", path)
        self.assertEqual(result.returncode, 78)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)
        self.assertTrue(result.stderr.startswith("eventsvc: {}: [handlers] feed: cannot load".format(path)), result.stderr)
        self.assertIn("No module named 'no_such_module_here'", result.stderr)

    def test_unimportable_authenticator_names_file_and_key(self) -> None:
        path = self.write(
            '[service]\nport = 0\n[gateway]\nport = 0\ndisable_frontend_tls = true\npython_authenticator = "eventsvc:nothing_here"\n'
        )
        result = process.cli("check-config", "--config", path)
        self.assertEqual(result.returncode, 78)
        self.assertTrue(
            result.stderr.startswith("eventsvc: {}: [gateway] python_authenticator: cannot load".format(path)), result.stderr
        )


class SystemdUnitTests(TestCase):
    """dist/eventsvc.service, as systemd reads it, and the patch that goes with it."""

    def test_unit_verifies(self) -> None:
        import os

        analyze = process.require("systemd-analyze")
        source = process.source_tree()
        with open(os.path.join(source, "dist", "eventsvc.service")) as f:
            unit = f.read()
        self.assertIn("ExecStart=/opt/eventsvc/bin/twist eventsvc --config /etc/eventsvc/patch.toml", unit)
        for hardening in ("NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=eventsvc", "LimitNOFILE=32768", "Restart=on-failure"):
            self.assertIn(hardening, unit)
        # verify checks that the commands exist: point them at this environment's.
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "eventsvc.service")
        with open(path, "w") as f:
            f.write(unit.replace("/opt/eventsvc/bin/", os.path.dirname(process.require("twist")) + "/"))
        result = run([analyze, "verify", path])
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))

    def test_unit_patch_loads(self) -> None:
        import os

        from eventsvc import config

        loaded = config.load(os.path.join(process.source_tree(), "dist", "patch.toml"))
        self.assertEqual(loaded.service.data_dir, "/var/lib/eventsvc")
        self.assertEqual(loaded.gateway.health_token_file, "/run/eventsvc/gateway-health.token")
        self.assertTrue(loaded.gateway.enabled)


class HelpTests(TestCase):
    def test_twist_usage_line(self) -> None:
        """twist's synopsis is not glued in front of ours."""
        result = run([process.require("twist"), "eventsvc", "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(result.stdout.splitlines()[0], "Usage: twist [twist options] eventsvc --config PATCH.toml")
        self.assertIn("SIGUSR2 enters lame duck mode", result.stdout)

    def test_twistd_usage_line(self) -> None:
        result = run([process.require("twistd"), "eventsvc", "--help"])
        self.assertEqual(result.stdout.splitlines()[0], "Usage: twistd [options] eventsvc --config PATCH.toml")
