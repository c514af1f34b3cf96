"""
The admin command's operator tools as a user runs them (subprocesses)
against a real eventsvc process: sub, request, health-check, dead letters,
spool stats, publish, certs, check-config and config show, TOML syntax
errors, and the help every subcommand gives.
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
        text = (
            '[service]\nhost = "127.0.0.1"\nport = %d\n'
            '[gateway]\nhost = "127.0.0.1"\nport = %d\ndisable_frontend_tls = true\ntokens = ["%s"]\n'
        )
        # Started on the kernel's ports; then the file the commands read
        # names where it went.
        self.config = process.write_config(os.path.join(self.dir, "patch.toml"), text % (0, 0, TOKEN))
        self.server = process.eventsvc(self.config, expect=("service", "gateway"))
        self.port = self.server.start()
        self.addCleanup(self.server.stop)
        self.gateway_port = self.server.ports["gateway"]
        process.write_config(self.config, text % (self.port, self.gateway_port, TOKEN))

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
        text = (
            '[service]\nhost = "127.0.0.1"\nport = %d\ndata_dir = "data"\n'
            '[handlers]\nevent_feed = "http://127.0.0.1:%d/e"\n'
        )
        config = process.write_config(os.path.join(directory, "patch.toml"), text % (0, listening.getHost().port))
        proc = process.eventsvc(config)
        port = yield threads.deferToThread(proc.start)
        self.addCleanup(proc.stop)
        # (The commands read the file for where the service is.)
        process.write_config(config, text % (port, listening.getHost().port))
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
        as_json = yield threads.deferToThread(process.cli, "dead-letters", "list", "--config", config, "--json")
        self.assertEqual([json.loads(line)["event_id"] for line in as_json.stdout.splitlines()], ["dl-1", "dl-2"])
        dead = os.path.join(directory, "data", "dead-letters.jsonl")

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
        self.assertEqual((again.returncode, again.stdout, again.stderr), (0, "nothing to replay: no dead letters in {}\n".format(dead), ""))
        gone = yield threads.deferToThread(process.cli, "dead-letters", "replay", "--config", config, "--id", "dl-1")
        self.assertEqual((gone.returncode, gone.stderr), (1, "eventsvc: no dead letter in {} has event id dl-1\n".format(dead)))
        # Exactly once each: nothing more arrives.
        yield threads.deferToThread(time.sleep, 0.5)
        self.assertEqual(sorted(target.seen), ["dl-1", "dl-2"])
        empty = yield threads.deferToThread(process.cli, "dead-letters", "list", "--config", config)
        self.assertEqual(empty.stdout, "no dead letters in {}\n".format(dead))
        # --json: JSON lines and nothing else, so none at all here.
        empty = yield threads.deferToThread(process.cli, "dead-letters", "list", "--config", config, "--json")
        self.assertEqual((empty.returncode, empty.stdout, empty.stderr), (0, "", ""))

    @defer.inlineCallbacks
    def owing(self, events=""):
        """
        A running service whose cfgingest target is down, sent one event of
        each of three kinds (nodeTerminated and cfgingest owed to
        cfgingest, event_feed handled), then C{spool stats} as text and as
        JSON once they count the handled event as done (the service records
        what its handlers finish a moment after: a handler's log line comes
        first).  Fires with (directory, config, the service, the event's
        file, text, JSON).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        # A target that refuses (its port held, so no test beside takes it).
        down = process.closed_port(self).port
        template = (
            '[service]\nhost = "127.0.0.1"\nport = %d\ndata_dir = "data"\n'
            '[handlers]\ncfgingest = "http://127.0.0.1:%d/c"\nevent_feed = "python:eventsvc.events.handlers:log_event"\n'
        )
        config = process.write_config(os.path.join(directory, "patch.toml"), template % (0, down) + events)
        proc = process.eventsvc(config)
        port = yield threads.deferToThread(proc.start)
        self.addCleanup(proc.stop)
        # (The commands read the file for where the service is.)
        process.write_config(config, template % (port, down) + events)
        path = os.path.join(directory, "e.json")
        process.write_config(path, json.dumps({"producer": {"id": "p"}}))

        def run():
            for kind in ("nodeTerminated", "cfgingest", "event_feed"):
                sent = process.cli("publish", "--config", config, "--type", kind, "--file", path)
                assert sent.returncode == 0, sent.stderr
            proc.wait_output("handled event")
            deadline = time.monotonic() + 10
            while True:
                as_json = process.cli("spool", "stats", "--config", config, "--json")
                if as_json.returncode != 0 or json.loads(as_json.stdout)["events_owed"] <= 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            return process.cli("spool", "stats", "--config", config), as_json

        text, as_json = yield threads.deferToThread(run)
        return directory, config, proc, path, text, as_json

    @defer.inlineCallbacks
    def test_spool_stats(self):
        # (The spool is [events] log = "spool" since issue 29; the stream's case is below.)
        _, _, _, _, text, as_json = yield self.owing('[events]\nlog = "spool"\n')
        self.assertEqual(text.returncode, 0, text.stderr)
        self.assertIn("2 events still owed", text.stdout.splitlines()[0])
        self.assertRegex(text.stdout, r"  cfgingest: 2 owed \(oldest [0-9a-f-]+, accepted 20\d\d-")
        stats = json.loads(as_json.stdout)
        self.assertEqual(stats["events_owed"], 2)
        self.assertEqual(set(stats["handlers"]), {"cfgingest"})
        self.assertGreater(stats["bytes"], 0)

    def test_spool_stats_with_the_stream_log_before_the_first_start(self):
        """With events on the JetStream stream (the default) and no stream made yet: nothing owed, as JSON too."""
        config = process.write_config(os.path.abspath(self.mktemp()) + ".toml", '[service]\nport = 0\ndata_dir = "state"\n')
        folder = os.path.join(os.path.dirname(config), "state", "jetstream", "streams", "EVENTS")
        result = process.cli("spool", "stats", "--config", config)
        self.assertEqual((result.returncode, result.stderr), (0, ""))
        self.assertEqual(result.stdout, (
            "no events stream yet at {} (the service has not run on the stream with this state directory): "
            "nothing owed\n").format(folder))
        as_json = process.cli("spool", "stats", "--config", config, "--json")
        self.assertEqual(json.loads(as_json.stdout), {
            "log": "stream", "stream": "EVENTS", "path": folder, "exists": False, "running_pid": None, "messages": 0,
            "bytes": 0, "first_seq": 0, "last_seq": 0, "events_owed": 0, "handlers": {}})
        self.assertFalse(os.path.exists(os.path.join(os.path.dirname(config), "state")))

    @defer.inlineCallbacks
    def test_spool_stats_with_the_stream_log(self):
        """
        With events on the stream, spool stats counts what the stream owes
        each handler, beside the running service (saying it runs, taking
        no lock: the service goes on, and starts again after) and with it
        stopped.
        """
        directory, config, proc, path, text, as_json = yield self.owing()
        folder = os.path.join(directory, "data", "jetstream", "streams", "EVENTS")
        self.assertEqual((text.returncode, text.stderr), (0, ""))
        lines = text.stdout.splitlines()
        self.assertRegex(lines[0], r"^events stream EVENTS in %s: 3 events kept \(\d+ bytes, sequences 1-3\), 2 still owed$"
                         % folder.replace(".", r"\."))
        self.assertRegex(lines[1], r"^  cfgingest: 2 owed \(oldest [0-9a-f-]+, accepted 20\d\d-")
        self.assertEqual(lines[2], "  event_feed: 0 owed")
        self.assertEqual(lines[3], "the service is running (pid %d): these are its files as they were read; it records what "
                         "its handlers finish within 0.2 s, and /eventz shows each handler's backlog live" % proc.process.pid)
        stats = json.loads(as_json.stdout)
        self.assertEqual((stats["events_owed"], stats["handlers"]["cfgingest"]["owed"], stats["running_pid"]),
                         (2, 2, proc.process.pid))
        # The service is undisturbed: it still takes events.
        sent = yield threads.deferToThread(process.cli, "publish", "--config", config, "--type", "cfgingest", "--file", path)
        self.assertEqual(sent.returncode, 0, sent.stderr)
        yield threads.deferToThread(proc.stop)
        stopped = yield threads.deferToThread(process.cli, "spool", "stats", "--config", config, "--json")
        stats = json.loads(stopped.stdout)
        self.assertEqual((stats["events_owed"], stats["handlers"]["cfgingest"]["owed"], stats["running_pid"]), (3, 3, None))
        # Nothing was left locked or changed for the next start.
        again = process.eventsvc(config)
        yield threads.deferToThread(again.start)
        self.addCleanup(again.stop)

    def test_spool_stats_memory_only(self):
        config = process.write_config(self.mktemp() + ".toml", '[service]\nport = 0\ndata_dir = ""\n')
        for extra in ((), ("--json",)):
            result = process.cli("spool", "stats", "--config", config, *extra)
            self.assertEqual((result.returncode, result.stdout), (1, ""))
            self.assertEqual(
                result.stderr,
                'eventsvc: events are kept in memory only ([service] data_dir = "" in {}): no spool to inspect\n'.format(config),
            )

    def test_spool_stats_before_the_first_start(self):
        """A state directory the service has not made yet owes nothing, and says so (as JSON too)."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = process.write_config(os.path.join(directory, "patch.toml"), '[service]\nport = 0\ndata_dir = "patch.state"\n[events]\nlog = "spool"\n')
        state = os.path.join(directory, "patch.state")
        text = process.cli("spool", "stats", "--config", config)
        self.assertEqual((text.returncode, text.stderr), (0, ""))
        self.assertEqual(text.stdout, "no spool yet at {} (the service has not run with this state directory): nothing owed\n".format(state))
        as_json = process.cli("spool", "stats", "--config", config, "--json")
        self.assertEqual(as_json.returncode, 0, as_json.stderr)
        self.assertEqual(json.loads(as_json.stdout), {
            "path": state, "exists": False, "bytes": 0, "records": 0, "unreadable_bytes": 0, "events_owed": 0, "handlers": {},
        })
        os.makedirs(state)
        made = json.loads(process.cli("spool", "stats", "--config", config, "--json").stdout)
        self.assertEqual((made["exists"], made["events_owed"]), (True, 0))
        self.assertEqual(
            process.cli("spool", "stats", "--config", config).stdout, "spool {}: 0 bytes on disk, 0 records, 0 events still owed\n".format(state)
        )

    def test_every_json_option_prints_json(self):
        """Every subcommand that takes --json, in the states where it used to print text."""
        parser_text = subprocess.run(
            cli_argv("--help"), capture_output=True, text=True, env=process.child_env(),
        ).stdout
        self.assertIn("dead-letters", parser_text)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = process.write_config(os.path.join(directory, "patch.toml"), '[service]\nport = 0\ndata_dir = "state"\n')
        commands = [["dead-letters", "list"], ["spool", "stats"]]
        # (JetStream's need a server: test_jsops runs them with --json against one)
        servers = ["stream ls", "stream info", "consumer ls", "consumer info"]
        self.assertEqual(sorted([" ".join(c) for c in commands] + servers), sorted(_commands_with("--json")))
        for command in commands:
            result = process.cli(*command, "--config", config, "--json")
            self.assertEqual(result.returncode, 0, (command, result.stderr))
            for line in result.stdout.splitlines():
                self.assertIsInstance(json.loads(line), dict, command)


#: Every subcommand, as its words after C{eventsvc}.
SUBCOMMANDS = (
    ("check-config",), ("config", "show"), ("health-check",), ("publish",), ("sub",), ("request",),
    ("dead-letters", "list"), ("dead-letters", "replay"), ("spool", "stats"), ("certs",),
    ("stream", "ls"), ("stream", "info"), ("consumer", "ls"), ("consumer", "info"),
)
_helps: "dict[tuple, subprocess.CompletedProcess[str]]" = {}


def helps() -> "dict[tuple, subprocess.CompletedProcess[str]]":
    """
    What C{eventsvc <subcommand> --help} printed, by subcommand: each run
    as a user runs it, once for this module (HelpTests and the --json
    test both read them), four at a time (each is an interpreter's
    start-up, about 0.7 s of CPU on PyPy: one after another they were
    most of those two tests' time).
    """
    if not _helps:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            _helps.update(zip(SUBCOMMANDS, pool.map(lambda command: process.cli(*command, "--help"), SUBCOMMANDS)))
    return _helps


def _commands_with(option: str):
    """Every subcommand (as "group sub") whose --help lists C{option}."""
    return [" ".join(command) for command, result in helps().items() if option + " " in result.stdout]


class StoreCommandImportTests(TestCase):
    """
    The dead-letters and spool subcommands read files (a replay sends a
    request): they start without the event service, its dispatcher, its
    handlers and Twisted's application framework, which took half of
    their start-up's CPU (PyPy 1.0 -> 0.46 s, CPython 0.47 -> 0.21 s for
    C{dead-letters list}).
    """

    def test_store_commands_leave_the_event_service_out(self):
        program = (
            "import sys\n"
            "import eventsvc.cli.stores\n"
            "print(' '.join(m for m in ('eventsvc.events.dispatch', 'eventsvc.events.handlers', 'twisted.application.service')"
            " if m in sys.modules))\n"
        )
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=process.child_env(), timeout=60)
        self.assertEqual((done.returncode, done.stdout), (0, "\n"), done.stderr)


class HealthCheckServiceOnlyTests(TestCase):
    """health-check on a node without [gateway]: the service listener, with the service's mutual-TLS identity."""

    timeout = 90

    def test_service_listener_with_mutual_tls(self):
        directory = os.path.abspath(self.mktemp())
        made = process.cli("certs", "--out", os.path.join(directory, "certs"))
        self.assertEqual(made.returncode, 0, made.stderr)
        port = process.free_port()
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n'
            '[tls]\ncert_path = "certs/service.crt"\nkey_path = "certs/service.key"\nroot_ca_path = "certs/ca.crt"\n'
        ) % port)
        server = process.eventsvc(config)

        def run():
            server.start()
            try:
                healthy = process.cli("health-check", "--config", config)
                # Without a client certificate the service does not let us in.
                stranger = process.cli("health-check", "--config", config, "--cert", os.path.join(directory, "certs", "ca.crt"),
                                       "--key", os.path.join(directory, "certs", "ca.key"))
            finally:
                server.stop()
            return healthy, stranger, process.cli("health-check", "--config", config)

        def check(results):
            healthy, stranger, down = results
            self.assertEqual(healthy.returncode, 0, healthy.stderr)
            self.assertRegex(
                healthy.stdout, r"^healthy: service 127\.0\.0\.1:%d echoed a request on healthcheck\.[0-9a-f]{16} in [0-9.]+ ms\n$" % port
            )
            self.assertEqual(stranger.returncode, 1)
            self.assertTrue(stranger.stderr.startswith("unhealthy: service 127.0.0.1:%d: " % port), stranger.stderr)
            self.assertEqual(down.returncode, 1)
            self.assertTrue(down.stderr.startswith("unhealthy: service 127.0.0.1:%d: cannot connect: " % port), down.stderr)
            self.assertEqual(down.stderr.count("\n"), 1, down.stderr)

        return threads.deferToThread(run).addCallback(check)


class CommandLineMistakeTests(TestCase):
    """Mistakes a user makes on the command line or in the file, each told in one line (no server needed)."""

    def write(self, text):
        return process.write_config(self.mktemp() + ".toml", text)

    def test_publish_handler_key_as_type(self):
        config = self.write("[service]\nport = 1\n")
        result = process.cli("publish", "--config", config, "--type", "feed", "--file", os.devnull)
        self.assertEqual((result.returncode, result.stdout), (2, ""))
        self.assertEqual(
            result.stderr,
            "eventsvc: --type feed: feed is a [handlers] key, not an event type; did you mean an event type of this handler: compliance_ingest\n",
        )
        routed = self.write('[service]\nport = 1\n[events.routing]\nnodeTerminated = ["event_feed"]\n')
        empty = process.write_config(self.mktemp() + ".json", "{}")
        result = process.cli("publish", "--config", routed, "--type", "event_feed", "--file", empty)
        # event_feed is both a handler and an event type: it is published (here: nobody listens).
        self.assertEqual(result.returncode, 1)
        self.assertIn("cannot publish to 127.0.0.1:1", result.stderr)
        result = process.cli("publish", "--config", routed, "--type", "cfgingest", "--file", empty)
        self.assertIn("cannot publish to 127.0.0.1:1", result.stderr)

    def test_publish_handler_with_nothing_routed(self):
        config = self.write('[service]\nport = 1\n[events.routing]\ncompliance_ingest = ["cfgingest"]\n')
        result = process.cli("publish", "--config", config, "--type", "feed", "--file", os.devnull)
        self.assertEqual(result.returncode, 2)
        self.assertEqual(
            result.stderr,
            "eventsvc: --type feed: feed is a [handlers] key, not an event type, and no event type is routed to it in {}\n".format(config),
        )

    def test_toml_syntax_error_names_the_line(self):
        """The issue's own example: the old reader said "Key group not on a line by itself. (line 1 column 1 char 0)"."""
        config = self.write('# eventsvc\n[service] port = 4222\n')
        for command in (["check-config"], ["config", "show"], ["spool", "stats"]):
            result = process.cli(*command, "--config", config)
            self.assertEqual((result.returncode, result.stdout), (78, ""), command)
            self.assertEqual(
                result.stderr,
                "eventsvc: {}: line 2, column 11: not valid TOML: expected newline or end of document after a statement: "
                "[service] port = 4222\n".format(config),
            )
        twice = self.write('[service]\nport = 1\n\n[service]\nhost = "x"\n')
        result = process.cli("check-config", "--config", twice)
        self.assertEqual(result.stderr, "eventsvc: {}: line 4, column 9: not valid TOML: cannot declare service twice: [service]\n".format(twice))
        unterminated = self.write('[service]\nhost = "127.0.0.1\n')
        result = process.cli("check-config", "--config", unterminated)
        self.assertEqual(result.returncode, 78)
        self.assertTrue(result.stderr.startswith("eventsvc: {}: line 2, column ".format(unterminated)), result.stderr)
        self.assertEqual(result.stderr.count("\n"), 1, result.stderr)

    def test_byte_order_mark(self):
        """A file saved with a byte-order mark (some Windows editors) reads as without one."""
        config = process.write_bytes(self.mktemp() + ".toml", b"\xef\xbb\xbf[service]\nport = 4333\n")
        result = process.cli("config", "show", "--config", config)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(tomllib.loads(result.stdout)["service"]["port"], 4333)

    def test_toml_syntax_error_at_start_up(self):
        """twistd says the same line and exits, before anything listens."""
        config = self.write('[service]\nport = 0\nhost = \n')
        result = process.run_until_exit([process.require("twistd"), "-n", "--pidfile=", "eventsvc", "--config", config])
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("{}: line 3, column 8: not valid TOML: invalid value: host =".format(config), result.stdout)
        self.assertNotIn("Traceback", result.stdout)


class CheckConfigPermissionTests(TestCase):
    """check-config's permission lines come from the permissions the service builds."""

    def test_identities_and_listeners(self):
        config = process.write_config(self.mktemp() + ".toml", (
            '[service]\nport = 0\n'
            '[gateway]\nport = 0\ndisable_frontend_tls = true\ntokens = ["t"]\n'
            '[gateway.permissions]\nsubscribe_allow = ["metrics.>", "habitat.>"]\n'
            'subscribe_deny = ["metrics.secret.>", "other.x", "habitat.event.*"]\n'
            '[[gateway.identities]]\nname = "requester"\ntoken = "r"\nprivate_inbox = true\n'
            '[[gateway.identities]]\nname = "mute"\ntoken = "m"\npublish_deny = [">"]\n'
            '[websocket]\nport = 0\nno_tls = true\ntokens = ["w"]\n[websocket.permissions]\npublish_allow = []\n'
        ))
        result = process.cli("check-config", "--config", config)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = [line.strip() for line in result.stdout.splitlines()]
        for expected in (
            # other.x cuts into nothing allowed: not named.
            "gateway agents may publish to habitat.event.* and subscribe to metrics.>, habitat.> (except metrics.secret.>, habitat.event.*)",
            # private_inbox: its own subscribe lists (empty) and its inbox.
            "gateway identity requester may publish to habitat.event.* and subscribe to _INBOX.requester.>",
            # publish_deny alone: an empty publish_allow, which is everything, all denied.
            "gateway identity mute may publish to nothing and subscribe to metrics.>, habitat.> (except metrics.secret.>, habitat.event.*)",
            "websocket clients may publish to anything and subscribe to nothing",
        ):
            self.assertIn(expected, lines)


class CertsTests(TestCase):
    def test_automate_file_names(self):
        """certs writes Automate's names, and a [tls] section naming them loads."""
        directory = os.path.abspath(self.mktemp())
        out = os.path.join(directory, "config")
        made = process.cli("certs", "--out", out, "--ca-cert", "root_ca.crt", "--gateway-cert", "localhost.crt", "--gateway-key", "localhost.key")
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertEqual(
            sorted(os.listdir(out)),
            ["ca.key", "client.crt", "client.key", "localhost.crt", "localhost.key", "root_ca.crt", "service.crt", "service.key"],
        )
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nport = 0\n[tls]\ncert_path = "config/service.crt"\nkey_path = "config/service.key"\n'
            'root_ca_path = "config/root_ca.crt"\n'
            '[gateway]\nport = 0\ntokens = ["t"]\n[[gateway.frontend_tls]]\nserver_name = "localhost"\n'
            'cert_path = "config/localhost.crt"\nkey_path = "config/localhost.key"\n'
        ))
        checked = process.cli("check-config", "--config", config)
        self.assertEqual(checked.returncode, 0, checked.stderr)
        again = process.cli("certs", "--out", out, "--ca-cert", "root_ca.crt")
        self.assertEqual(again.returncode, 1)
        self.assertIn(os.path.join(out, "root_ca.crt"), again.stderr)
        clash = process.cli("certs", "--out", out, "--force", "--service-key", "service.crt")
        self.assertEqual(clash.returncode, 2)
        self.assertEqual(
            clash.stderr,
            "eventsvc: certs would write {} twice: give each certificate and key its own name\n".format(os.path.join(out, "service.crt")),
        )

    def test_default_names(self):
        out = os.path.abspath(self.mktemp())
        made = process.cli("certs", "--out", out)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.assertTrue(made.stdout.endswith(" to {}\n".format(out)), made.stdout)
        self.assertEqual(sorted(os.listdir(out)), sorted(r + e for r in ("ca", "service", "gateway", "client") for e in (".crt", ".key")))


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
        for command, result in helps().items():
            self.assertEqual(result.returncode, 0, command)
            self.assertIn("examples:\n  eventsvc " + " ".join(command), result.stdout, command)
            self.assertIn("exit status: 0 done, 1 failed", result.stdout, command)
