"""
The admin command's operator tools as a user runs them (subprocesses)
against a real eventsvc process: sub, request, dead letters, spool stats,
config show, and the help every subcommand gives.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from twisted.internet import defer, reactor, threads
from twisted.trial.unittest import TestCase
from twisted.web import resource, server

from eventsvc.test import process
from eventsvc.test.eventsamples import event
from eventsvc.test.test_interop_events import wait_for

TOKEN = "admin-test-agent-token"


def raw_client(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.recv(65536)
    s.sendall(b'CONNECT {"verbose":false,"headers":true}\r\nPING\r\n')
    data = b""
    while b"PONG\r\n" not in data:
        data += s.recv(65536)
    return s


def echo_responder(port: int, subject: bytes) -> threading.Thread:
    """A raw client that answers each request on C{subject} with its own payload, upper-cased."""
    s = raw_client(port)
    s.sendall(b"SUB %s 1\r\nPING\r\n" % subject)
    data = b""
    while b"PONG\r\n" not in data:
        data += s.recv(65536)

    def serve():
        buf = b""
        with s:
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\r\n" in buf:
                    line, _, rest = buf.partition(b"\r\n")
                    if not line.startswith(b"MSG "):
                        buf = rest
                        continue
                    args = line.split()
                    size = int(args[-1])
                    if len(rest) < size + 2:
                        break
                    payload, buf = rest[:size], rest[size + 2:]
                    s.sendall(b"PUB %s %d\r\n%s\r\n" % (args[3], size, payload.upper()))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def cli_argv(*args: str):
    beside = os.path.join(os.path.dirname(sys.executable), "eventsvc")
    return ([beside] if os.access(beside, os.X_OK) else [sys.executable, "-m", "eventsvc.cli"]) + list(args)


class MessagingCommandTests(TestCase):
    timeout = 90

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.port, self.gateway_port = process.free_port(), process.free_port()
        self.config = process.write_config(os.path.join(self.dir, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n'
            '[gateway]\nhost = "127.0.0.1"\nport = %d\ndisable_frontend_tls = true\ntokens = ["%s"]\n'
        ) % (self.port, self.gateway_port, TOKEN))
        self.server = process.eventsvc(self.config, expect=("service", "gateway"))
        self.server.start()
        self.addCleanup(self.server.stop)

    @defer.inlineCallbacks
    def test_sub_prints_messages_with_headers(self):
        def run():
            sub = subprocess.Popen(
                cli_argv("sub", "--config", self.config, "--count", "2", "greet.>"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process.child_env(),
            )
            self.addCleanup(lambda: sub.poll() is None and sub.kill())
            ready = sub.stderr.readline()
            with raw_client(self.port) as pub:
                pub.sendall(
                    b"PUB greet.plain 5\r\nhello\r\n"
                    b"HPUB greet.headed _INBOX.r 22 24\r\nNATS/1.0\r\nTrace: 7\r\n\r\nhi\r\nPING\r\n"
                )
                pub.recv(100)
            out, err = sub.communicate(timeout=20)
            return ready, sub.returncode, out, err

        ready, code, out, err = yield threads.deferToThread(run)
        self.assertEqual(code, 0, err)
        self.assertEqual(ready, "listening on greet.> at service 127.0.0.1:%d\n" % self.port)
        self.assertEqual(
            out,
            '[#1] Received on "greet.plain"\nhello\n\n'
            '[#2] Received on "greet.headed" with reply "_INBOX.r"\nTrace: 7\n\nhi\n\n',
        )

    @defer.inlineCallbacks
    def test_request(self):
        def run():
            echo_responder(self.port, b"svc.echo")
            answered = process.cli("request", "--config", self.config, "svc.echo", "ping me")
            nobody = process.cli("request", "--config", self.config, "nobody.here", "x")
            return answered, nobody

        answered, nobody = yield threads.deferToThread(run)
        self.assertEqual(answered.returncode, 0, answered.stderr)
        self.assertTrue(answered.stdout.startswith('[#1] Received on "_INBOX.'), answered.stdout)
        self.assertTrue(answered.stdout.endswith("\nPING ME\n\n"), answered.stdout)
        self.assertEqual(nobody.returncode, 1)
        self.assertEqual(nobody.stderr, "eventsvc: service 127.0.0.1:%d: no responders on nobody.here\n" % self.port)

    @defer.inlineCallbacks
    def test_gateway_permissions_and_refusals(self):
        def run():
            denied = process.cli("sub", "--config", self.config, "--gateway", "--count", "1", "secret.>")
            wrong = process.cli("sub", "--config", self.config, "--gateway", "--token", "not-it", "x")
            return denied, wrong

        denied, wrong = yield threads.deferToThread(run)
        # check-config says what the refusal below then shows.
        said = process.cli("check-config", "--config", self.config)
        self.assertIn("\n  gateway agents may publish to habitat.event.* and subscribe to nothing\n", said.stdout)
        self.assertEqual(denied.returncode, 1)
        self.assertEqual(
            denied.stderr,
            'eventsvc: gateway 127.0.0.1:%d: Permissions Violation for Subscription to "secret.>"\n' % self.gateway_port,
        )
        self.assertEqual(wrong.returncode, 1)
        self.assertEqual(wrong.stderr, "eventsvc: gateway 127.0.0.1:%d: refused: Authorization Violation\n" % self.gateway_port)

    def test_server_down(self):
        self.server.stop()
        down = process.cli("request", "--config", self.config, "svc.echo")
        self.assertEqual(down.returncode, 1)
        self.assertTrue(down.stderr.startswith("eventsvc: service 127.0.0.1:%d: cannot connect: " % self.port), down.stderr)


class Target(resource.Resource):
    """Refuses every event with 400 until fixed; then records them."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.fixed = False
        self.seen = []

    def render_POST(self, request):
        if not self.fixed:
            request.setResponseCode(400)
            return b"bad"
        self.seen.append(json.loads(request.content.read())["event_id"])
        return b"{}"


class StoreCommandTests(TestCase):
    timeout = 90

    @defer.inlineCallbacks
    def test_dead_letters_listed_and_replayed_once(self):
        target = Target()
        listening = reactor.listenTCP(0, server.Site(target), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = process.free_port()
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\ndata_dir = "data"\n'
            '[handlers]\nevent_feed = "http://127.0.0.1:%d/e"\n'
        ) % (port, listening.getHost().port))
        proc = process.eventsvc(config)
        yield threads.deferToThread(proc.start)
        self.addCleanup(proc.stop)
        files = []
        for name in ("dl-1", "dl-2"):
            path = os.path.join(directory, name + ".json")
            process.write_config(path, json.dumps(event("event_feed", name)))
            files.append(path)

        def publish_all():
            return [process.cli("publish", "--config", config, "--type", "event_feed", "--file", f) for f in files]

        published = yield threads.deferToThread(publish_all)
        self.assertEqual([p.returncode for p in published], [0, 0], [p.stderr for p in published])
        yield threads.deferToThread(proc.wait_output, "dl-2 dead-lettered")
        listed = yield threads.deferToThread(process.cli, "dead-letters", "list", "--config", config)
        self.assertEqual(listed.returncode, 0, listed.stderr)
        lines = listed.stdout.splitlines()
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("  event_feed  dl-1  1 attempts  HTTP 400", lines[0])

        target.fixed = True
        one = yield threads.deferToThread(process.cli, "dead-letters", "replay", "--config", config, "--id", "dl-1")
        self.assertEqual(one.returncode, 0, one.stderr)
        self.assertEqual(one.stdout.splitlines()[0], "replayed dl-1 to event_feed")
        yield wait_for(lambda: target.seen == ["dl-1"])
        rest = yield threads.deferToThread(process.cli, "dead-letters", "list", "--config", config)
        self.assertEqual([line.split()[2] for line in rest.stdout.splitlines()], ["dl-2"])
        everything = yield threads.deferToThread(process.cli, "dead-letters", "replay", "--config", config, "--all")
        self.assertEqual(everything.returncode, 0, everything.stderr)
        yield wait_for(lambda: sorted(target.seen) == ["dl-1", "dl-2"])
        again = yield threads.deferToThread(process.cli, "dead-letters", "replay", "--config", config, "--all")
        self.assertEqual(again.returncode, 1)
        self.assertIn("no dead letter in", again.stderr)
        # Exactly once each: nothing more arrives.
        yield threads.deferToThread(time.sleep, 0.5)
        self.assertEqual(sorted(target.seen), ["dl-1", "dl-2"])
        empty = yield threads.deferToThread(process.cli, "dead-letters", "list", "--config", config)
        self.assertIn("no dead letters in", empty.stdout)

    @defer.inlineCallbacks
    def test_spool_stats(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port, down = process.free_port(), process.free_port()
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\ndata_dir = "data"\n'
            '[handlers]\ncfgingest = "http://127.0.0.1:%d/c"\nevent_feed = "python:eventsvc.events.handlers:log_event"\n'
        ) % (port, down))
        proc = process.eventsvc(config)
        yield threads.deferToThread(proc.start)
        self.addCleanup(proc.stop)
        path = os.path.join(directory, "e.json")
        process.write_config(path, json.dumps({"producer": {"id": "p"}}))

        def run():
            for kind in ("nodeTerminated", "cfgingest", "event_feed"):
                sent = process.cli("publish", "--config", config, "--type", kind, "--file", path)
                assert sent.returncode == 0, sent.stderr
            proc.wait_output("handled event")
            return process.cli("spool", "stats", "--config", config), process.cli("spool", "stats", "--config", config, "--json")

        text, as_json = yield threads.deferToThread(run)
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("2 events still owed", text.stdout.splitlines()[0])
        self.assertRegex(text.stdout, r"  cfgingest: 2 owed \(oldest [0-9a-f-]+, accepted 20\d\d-")
        stats = json.loads(as_json.stdout)
        self.assertEqual(stats["events_owed"], 2)
        self.assertEqual(set(stats["handlers"]), {"cfgingest"})
        self.assertGreater(stats["bytes"], 0)

    def test_spool_stats_without_a_spool(self):
        config = process.write_config(self.mktemp() + ".toml", "[service]\nport = 0\n")
        result = process.cli("spool", "stats", "--config", config)
        self.assertEqual(result.returncode, 1)
        self.assertIn("no spool: [service] data_dir is not set", result.stderr)


class ConfigShowTests(TestCase):
    def test_defaults_filled_secrets_redacted(self):
        config = process.write_config(self.mktemp() + ".toml", (
            '[gateway]\nport = 4999\ndisable_frontend_tls = true\ntokens = ["super-secret-token"]\n'
            'users = {alice = "alice-password"}\nhttp_auth_url = "https://user:pw@auth.example/check"\n'
            '[[gateway.identities]]\nname = "w"\ntoken = "identity-secret"\n'
            '[cluster]\nuser = "r"\npassword = "route-secret"\n'
        ))
        result = process.cli("config", "show", "--config", config)
        self.assertEqual(result.returncode, 0, result.stderr)
        for secret in ("super-secret-token", "alice-password", "identity-secret", "route-secret", "user:pw"):
            self.assertNotIn(secret, result.stdout)
        # Strict TOML 1.0: what config show writes, the service reads.
        shown = tomllib.loads(result.stdout)
        self.assertEqual(shown["gateway"]["port"], 4999)
        self.assertEqual(shown["gateway"]["tokens"], ["<redacted>"])
        self.assertEqual(shown["gateway"]["users"], {"alice": "<redacted>"})
        self.assertEqual(shown["gateway"]["http_auth_url"], "https://<redacted>@auth.example/check")
        self.assertEqual(shown["limits"]["max_payload"], 1048576)
        self.assertEqual(shown["service"]["port"], 10132)
        self.assertEqual(shown["cluster"]["password"], "<redacted>")

    def test_bad_config(self):
        config = process.write_config(self.mktemp() + ".toml", "[service]\nprot = 1\n")
        result = process.cli("config", "show", "--config", config)
        self.assertEqual(result.returncode, 78)
        self.assertIn("[service] prot: unknown key", result.stderr)


class HelpTests(TestCase):
    def test_every_subcommand_describes_itself(self):
        for command in (
            ["check-config"], ["config", "show"], ["health-check"], ["publish"], ["sub"], ["request"],
            ["dead-letters", "list"], ["dead-letters", "replay"], ["spool", "stats"], ["certs"],
        ):
            result = process.cli(*command, "--help")
            self.assertEqual(result.returncode, 0, command)
            self.assertIn("examples:\n  eventsvc " + " ".join(command), result.stdout, command)
            self.assertIn("exit status: 0 done, 1 failed", result.stdout, command)
