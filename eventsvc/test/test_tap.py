"""
The twistd plugin, its options, and the embedding API, without real I/O.
"""

from __future__ import annotations

import io
import json

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, Logger
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.trial.unittest import SynchronousTestCase

from eventsvc import config, tap
from eventsvc.app import EventService, make_service
from eventsvc.nats.listener import ListenError
from eventsvc.ops.logs import make_observer
from eventsvc.service import lame_duck_pace


class PluginTests(SynchronousTestCase):
    def test_discovered(self) -> None:
        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("eventsvc", makers)
        self.assertIs(makers["eventsvc"].options, tap.Options)


class OptionsTests(SynchronousTestCase):
    def test_config_required(self) -> None:
        with self.assertRaises(usage.UsageError):
            tap.Options().parseOptions([])

    def test_bad_config_exits_with_one_line(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[service]\nport = 99999\n")
        stderr = io.StringIO()
        self.patch(tap.sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            tap.Options().parseOptions(["--config", path])
        self.assertEqual(caught.exception.code, 78)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("[service] port", stderr.getvalue())
        self.assertIn(path, stderr.getvalue())

    def test_tls_file_problem_one_line(self) -> None:
        """A missing certificate stops start-up with one line naming the file and key."""
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[tls]\ncert_path = "missing.crt"\nkey_path = "k"\nroot_ca_path = "c"\n')
        stderr = io.StringIO()
        self.patch(tap.sys, "stderr", stderr)
        options = tap.Options()
        options.parseOptions(["--config", path])
        with self.assertRaises(SystemExit) as caught:
            tap.makeService(options, MemoryReactorClock())
        self.assertEqual(caught.exception.code, 78)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("missing.crt ([tls] cert_path): cannot read", stderr.getvalue())


class CompositionTests(SynchronousTestCase):
    def test_listener_on_configured_address(self) -> None:
        reactor = MemoryReactorClock()
        service = make_service(config.parse('[service]\nhost = "127.0.0.1"\nport = 4333\nlistener_limit = 3\n'), reactor)
        self.assertIsInstance(service, MultiService)
        service.startService()
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (4333, "127.0.0.1"))
        self.assertEqual(factory.settings.max_connections, 3)
        service.stopService()

    def test_embedding_api(self) -> None:
        """The in-process publish/subscribe API reaches in-process subscribers."""
        service = make_service(config.parse(""), MemoryReactorClock())
        got = []
        subscription = service.broker.subscribe("events.>", lambda *a: got.append(a))
        self.assertEqual(service.broker.publish("events.x", b"payload", reply="r"), 1)
        self.assertEqual(got, [("events.x", "r", b"payload", None)])
        subscription.unsubscribe()
        self.assertEqual(service.broker.publish("events.x", b"payload"), 0)

    def test_port_in_use(self) -> None:
        from twisted.internet.error import CannotListenError

        class BusyReactor(MemoryReactorClock):
            def listenTCP(self, port, factory, backlog=50, interface=""):
                raise CannotListenError(interface, port, OSError(98, "Address already in use"))

        service = make_service(config.parse(""), BusyReactor())
        with self.assertRaises(ListenError) as caught:
            service.startService()
        self.assertIn("[service] host and port", str(caught.exception))
        from eventsvc import runner

        shell = runner.ProcessRunner(make_service(config.parse(""), BusyReactor()))
        stderr = io.StringIO()
        self.patch(runner.sys, "__stderr__", stderr)
        with self.assertRaises(SystemExit) as exiting:
            shell.startService()
        self.assertEqual(exiting.exception.code, 1)
        self.assertEqual(stderr.getvalue().count("\n"), 1)
        self.assertIn("Address already in use", stderr.getvalue())

    def test_log_observer_offered_to_application(self) -> None:
        from eventsvc.runner import ProcessRunner

        service = make_service(config.parse('[log]\nformat = "json"\n'), MemoryReactorClock())
        application = Componentized()
        application.addComponent(MultiService(), ignoreClass=True)
        ProcessRunner(service).setServiceParent(application)
        self.assertIs(application.getComponent(ILogObserver), service.log_observer)

    def test_embedded_service_never_ends_the_process(self) -> None:
        """
        Embedded, a shutdown drains and closes, and fires its Deferred; it
        stops no reactor.  The process shell stops the reactor when it fires.
        """
        from eventsvc.runner import ProcessRunner

        reactor = MemoryReactorClock()
        reactor.running = True
        stopped = []
        reactor.stop = lambda: stopped.append(True)
        service = make_service(config.parse('[service]\nshutdown_timeout = 1\n'), reactor)
        service.startService()
        done = []
        service.shutdown().addCallback(done.append)
        reactor.pump([0.05] * 40)
        self.assertEqual((len(done), stopped), (1, []))
        service.stopService()

        service = make_service(config.parse('[service]\nshutdown_timeout = 1\n'), reactor)
        shell = ProcessRunner(service)
        shell.startService()
        shell.terminate()
        reactor.pump([0.05] * 40)
        self.assertEqual(stopped, [True])
        shell.stopService()


class LogTests(SynchronousTestCase):
    def test_json_and_level(self) -> None:
        out = io.StringIO()
        observer = make_observer("json", "warn", out)
        log = Logger(observer=observer, namespace="test")
        log.info("quiet {x}", x=1)
        log.warn("loud {x}", x=2)
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 1)
        self.assertEqual(json.loads(lines[0])["x"], 2)

    def test_text(self) -> None:
        out = io.StringIO()
        Logger(observer=make_observer("text", "debug", out), namespace="t").debug("hello {who}", who="you")
        self.assertIn("hello you", out.getvalue())


class LameDuckPaceTests(SynchronousTestCase):
    """nats-server's pace for closing clients in lame duck mode."""

    def test_few_clients_at_most_a_second_apart(self) -> None:
        self.assertEqual(lame_duck_pace(10, 110.0), (1.0, 1))

    def test_spread_evenly(self) -> None:
        self.assertEqual(lame_duck_pace(4, 2.0), (0.5, 1))

    def test_more_clients_than_milliseconds_close_in_batches(self) -> None:
        self.assertEqual(lame_duck_pace(50000, 10.0), (0.001, 5))

    def test_no_spread_left_takes_a_second(self) -> None:
        self.assertEqual(lame_duck_pace(2, 0.0), (0.5, 1))

    def test_no_clients(self) -> None:
        self.assertEqual(lame_duck_pace(0, 110.0), (0.0, 1))


class PlumbingLogTests(SynchronousTestCase):
    """Twisted's lines about its own plumbing are debug, not info."""

    def lines(self, level, emit):
        out = io.StringIO()
        emit(make_observer("text", level, out))
        return out.getvalue()

    def test_factory_and_port_lines_are_debug(self) -> None:
        from twisted.logger import LogLevel, globalLogBeginner  # noqa: F401

        def emit(observer):
            Logger(observer=observer, namespace="twisted.web.client").info("Starting factory {factory!r}", factory="<F>")
            Logger(observer=observer, namespace="twisted.web.client").info("Stopping factory {factory!r}", factory="<F>")
            for text in ("ClientFactory starting on 4222", "_QuietSite starting on 8222", "(TCP Port 4222 Closed)"):
                observer({
                    "log_level": LogLevel.info, "log_namespace": "log_legacy", "log_format": "{log_text}",
                    "log_text": text, "message": (text,), "log_time": 0.0, "log_system": "-",
                })
            Logger(observer=observer, namespace="eventsvc").info("service listening for NATS clients on 127.0.0.1:1")

        quiet = self.lines("info", emit)
        self.assertNotIn("factory", quiet)
        self.assertNotIn("starting on", quiet)
        self.assertNotIn("Closed", quiet)
        self.assertIn("service listening", quiet)
        self.assertIn("ClientFactory starting on 4222", self.lines("debug", emit))


class RepeatedLogLineTests(SynchronousTestCase):
    def test_a_flood_of_one_line_is_cut_and_counted(self) -> None:
        from twisted.logger import LogLevel

        out = io.StringIO()
        observer = make_observer("text", "info", out)
        for i in range(1000):
            observer({"log_level": LogLevel.info, "log_namespace": "eventsvc.nats.client", "log_format": "client {cid} refused",
                      "cid": i, "log_time": 100.0 + i * 0.001, "log_system": "-"})
        lines = out.getvalue().splitlines()
        self.assertEqual(len(lines), 20)
        observer({"log_level": LogLevel.info, "log_namespace": "eventsvc.nats.client", "log_format": "client {cid} refused",
                  "cid": 5000, "log_time": 111.0, "log_system": "-"})
        self.assertIn("client 5000 refused (980 more like it left out)", out.getvalue().splitlines()[-1])

    def test_other_lines_are_not_held_back(self) -> None:
        from twisted.logger import LogLevel

        out = io.StringIO()
        observer = make_observer("text", "info", out)
        for i in range(100):
            observer({"log_level": LogLevel.info, "log_namespace": "x", "log_format": "flood", "log_time": 1.0, "log_system": "-"})
        observer({"log_level": LogLevel.info, "log_namespace": "x", "log_format": "other", "log_time": 1.0, "log_system": "-"})
        observer({"log_level": LogLevel.error, "log_namespace": "x", "log_format": "flood", "log_time": 1.0, "log_system": "-"})
        self.assertEqual(out.getvalue().count("other"), 1)
        self.assertEqual(out.getvalue().count("flood"), 21)


class JSONDepthTests(SynchronousTestCase):
    def test_bombs_refused_plainly(self) -> None:
        from eventsvc import wirejson

        for bomb in (b"[" * 2000 + b"]" * 2000, b'{"a":' * 100 + b"1" + b"}" * 100, b"[" * 100000):
            e = self.assertRaises(ValueError, wirejson.loads, bomb)
            self.assertIn("nested", str(e))

    def test_wide_and_string_brackets_are_fine(self) -> None:
        from eventsvc import wirejson

        self.assertEqual(len(wirejson.loads(b"[" + b",".join([b"[1]"] * 500) + b"]")), 500)
        self.assertEqual(wirejson.loads(b'{"s": "' + b"[" * 500 + b'"}')["s"], "[" * 500)
        self.assertEqual(wirejson.depth('{"a": "x\\" [[[[ ", "b": []}'), 2)


class LazyImportTests(SynchronousTestCase):
    """
    Start-up imports what the configuration uses: a service without TLS
    builds without Twisted's TLS context code (twisted.internet.ssl and
    service_identity, ~15 ms of a start-up's CPU), JetStream or the monitor.
    Each case runs in a fresh interpreter, where nothing is imported yet.
    """

    #: Imported only for a configuration that uses them.
    OPTIONAL = ("twisted.internet.ssl", "service_identity", "eventsvc.security.tls", "eventsvc.jetstream.engine",
                "eventsvc.ops.jsz", "eventsvc.ops.monitor")

    def imported_by(self, text: str) -> "set[str]":
        import os
        import subprocess
        import sys

        from eventsvc.test import process

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "patch.toml")
        with open(path, "w") as f:
            f.write(text)
        program = (
            "import sys\n"
            "from twisted.internet.testing import MemoryReactorClock\n"
            "from eventsvc import tap\n"
            "options = tap.Options()\n"
            "options.parseOptions(['--config', sys.argv[1]])\n"
            "tap.makeService(options, MemoryReactorClock())\n"
            "print(' '.join(m for m in {!r} if m in sys.modules))\n"
        ).format(self.OPTIONAL)
        done = subprocess.run([sys.executable, "-c", program, path], capture_output=True, text=True, env=process.child_env(), timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return set(done.stdout.split())

    def test_plain_service(self) -> None:
        self.assertEqual(self.imported_by('[service]\nhost = "127.0.0.1"\nport = 0\n'), set())

    def test_service_with_tls(self) -> None:
        """The same switch, thrown: [tls] imports the TLS context code, and nothing else optional."""
        import os

        from eventsvc.test.tlshelpers import PKI

        pki = PKI(os.path.abspath(self.mktemp()))
        pki.issue("service", ["localhost"])
        got = self.imported_by(
            '[service]\nhost = "127.0.0.1"\nport = 0\n[tls]\ncert_path = "{}"\nkey_path = "{}"\nroot_ca_path = "{}"\n'.format(
                pki.path("service.crt"), pki.path("service.key"), pki.path("ca.crt")))
        self.assertEqual(got, {"twisted.internet.ssl", "service_identity", "eventsvc.security.tls"})
