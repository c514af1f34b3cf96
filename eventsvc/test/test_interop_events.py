"""
Events end to end: nats-py producers, a real eventsvc process, and HTTP
targets (twisted.web) in this test process.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter, defaultdict
from typing import Dict, List

from twisted.internet import defer, reactor, task, threads
from twisted.trial.unittest import TestCase
from twisted.web import resource, server
from twisted.web.client import Agent, HTTPConnectionPool

from eventsvc.events.dispatch import EventDispatcher
from eventsvc.events.handlers import DeadLetters, HandlerService, HTTPTarget
from eventsvc.events.types import EVENT_TYPES, Registry
from eventsvc.nats.server import Broker
from eventsvc.test import process
from eventsvc.test.eventsamples import payload

try:
    import nats
except ImportError:  # pragma: no cover
    nats = None


class Target(resource.Resource):
    """Records POSTed events per path; answers 503 to the first C{failures} of each path."""

    isLeaf = True

    def __init__(self, failures: int = 0) -> None:
        super().__init__()
        self.failures = failures
        self.seen: Dict[str, List[str]] = defaultdict(list)
        self.refused: Counter = Counter()

    def render_POST(self, request):
        path = request.path.decode()
        if self.refused[path] < self.failures:
            self.refused[path] += 1
            request.setResponseCode(503)
            return b"busy"
        body = json.loads(request.content.read())
        self.seen[path].append(body["event_id"])
        return b"{}"


class BatchTarget(resource.Resource):
    """Takes JSON arrays of events, answering each POST after C{pause} seconds; records every event id."""

    isLeaf = True

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause
        self.seen: List[str] = []
        self.posts = 0

    def render_POST(self, request):
        events = json.loads(request.content.read())
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def answer():
            # Handled, as a real target would, even if the answer cannot go
            # back (eventsvc was killed): those come again as duplicates.
            self.posts += 1
            self.seen.extend(e["event_id"] for e in events)
            if not gone:
                request.write(b"{}")
                request.finish()

        reactor.callLater(self.pause, answer)
        return server.NOT_DONE_YET


@defer.inlineCallbacks
def wait_for(condition, timeout: float = 30.0):
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        yield task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("timed out waiting")


class RecoveringTargetTests(TestCase):
    """In-process dispatcher and handlers, real HTTP on loopback."""

    def publish(self, broker: Broker, handlers: Dict[str, HandlerService], count: int) -> EventDispatcher:
        """Start the handlers and a dispatcher; publish C{count} events of each of the two types."""
        for h in handlers.values():
            h.startService()
            self.addCleanup(h.stopService)
        dispatcher = EventDispatcher(broker, Registry(), handlers, 1000, reactor)
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        for i in range(count):
            broker.publish("event.cfgingest", payload("cfgingest", "c-%d" % i))
            broker.publish("event.event_feed", payload("event_feed", "f-%d" % i))
        return dispatcher

    @defer.inlineCallbacks
    def test_failing_target_recovers(self):
        target = Target(failures=5)
        port = reactor.listenTCP(0, server.Site(target), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        base = "http://127.0.0.1:%d" % port.getHost().port
        pool = HTTPConnectionPool(reactor, persistent=False)
        agent = Agent(reactor, pool=pool)
        broker = Broker()
        dead = DeadLetters(None)
        handlers = {
            "cfgingest": HandlerService("cfgingest", HTTPTarget(base + "/cfgingest", agent, reactor, 5), reactor, dead, retry_initial=0.02, retry_max=0.2),
            "event_feed": HandlerService("event_feed", HTTPTarget(base + "/event_feed", agent, reactor, 5), reactor, dead, retry_initial=0.02, retry_max=0.2),
        }
        dispatcher = self.publish(broker, handlers, 30)
        # The target records an event before the handler has read its answer:
        # wait for the dispatcher too, not only for what the target saw.
        yield wait_for(lambda: len(target.seen["/cfgingest"]) == 30 and len(target.seen["/event_feed"]) == 30 and dispatcher.pending == 0)
        for path in ("/cfgingest", "/event_feed"):
            counts = Counter(target.seen[path])
            self.assertEqual(len(counts), 30)
            self.assertEqual(set(counts.values()), {1}, "delivered twice: %r" % counts)
        self.assertEqual(dispatcher.pending, 0)
        self.assertGreaterEqual(handlers["cfgingest"].retried, 5)

    @defer.inlineCallbacks
    def test_down_target_does_not_hold_up_the_other(self):
        target = Target()
        port = reactor.listenTCP(0, server.Site(target), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        dead = DeadLetters(None)
        nowhere = "http://127.0.0.1:%d/down" % process.closed_port(self).port
        handlers = {
            "cfgingest": HandlerService("cfgingest", HTTPTarget(nowhere, agent, reactor, 5), reactor, dead, retry_initial=0.05),
            "event_feed": HandlerService("event_feed", HTTPTarget("http://127.0.0.1:%d/up" % port.getHost().port, agent, reactor, 5), reactor, dead),
        }
        dispatcher = self.publish(Broker(), handlers, 20)
        yield wait_for(lambda: len(target.seen["/up"]) == 20 and handlers["event_feed"].delivered == 20, timeout=10)
        self.assertEqual(handlers["cfgingest"].delivered, 0)
        self.assertEqual(dispatcher.pending, 20)


class MutualTLSTargetTests(TestCase):
    """host:port handlers: HTTPS with the service's identity, to a target that requires it."""

    @defer.inlineCallbacks
    def test_https_with_client_certificate(self):
        from eventsvc.security import tls
        from eventsvc.security.tls import MutualTLSPolicy
        from eventsvc.test.tlshelpers import PKI

        pki = PKI(self.mktemp())
        pki.issue("localhost")
        pki.issue("service")
        target = Target()
        options = tls.mutual_tls_server(pki.path("localhost.crt"), pki.path("localhost.key"), pki.path("ca.crt"))
        port = reactor.listenSSL(0, server.Site(target), options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = "https://localhost:%d/events" % port.getHost().port
        ca = tls.load_certificate(pki.path("ca.crt"), "ca")
        pool = HTTPConnectionPool(reactor, persistent=False)
        with_identity = Agent(reactor, contextFactory=MutualTLSPolicy(ca, tls.load_identity(pki.path("service.crt"), pki.path("service.key"), "[tls]")), pool=pool)
        yield HTTPTarget(url, with_identity, reactor, 5).deliver(payload("cfgingest", "tls-1"))
        self.assertEqual(target.seen["/events"], ["tls-1"])

        from eventsvc.events.handlers import DeliveryFailed

        other = PKI(self.mktemp())
        foreign = other.issue("service")
        wrong = Agent(reactor, contextFactory=MutualTLSPolicy(ca, PKI.private(foreign)), pool=pool)
        with self.assertRaises(DeliveryFailed) as caught:
            yield HTTPTarget(url, wrong, reactor, 5).deliver(payload("cfgingest", "tls-2"))
        self.assertTrue(caught.exception.retry)
        self.assertEqual(target.seen["/events"], ["tls-1"])


class EventProcessTests(TestCase):
    """A real eventsvc process, as deployed."""

    timeout = 120

    def setUp(self):
        if nats is None:
            process.require("nats-py")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        # eventsvc's port is the kernel's (read back at each start); the
        # handlers' target is held, refusing, until a test serves it, so no
        # test running beside can take it first.
        self.held = process.closed_port(self)
        self.target_port = self.held.port
        self.port = 0

    def start(self, event_limit: int = 100000, data_dir: bool = True, events: str = "") -> process.ServerProcess:
        base = "http://127.0.0.1:%d" % self.target_port
        config = process.write_config(
            os.path.join(self.dir, "patch.toml"),
            f"""
[service]
host = "127.0.0.1"
port = 0
event_limit = {event_limit}
{'data_dir = "data"' if data_dir else ''}
[handlers]
feed = "{base}/feed"
cfgingest = "{base}/cfgingest"
event_feed = "{base}/event_feed"
[events]
retry_initial = 0.05
retry_max = 0.5
{events}
""",
        )
        server_ = process.eventsvc(config)
        self.port = server_.start()
        self.addCleanup(server_.stop)
        return server_

    def serve_target(self, target: Target):
        self.held.release()
        port = reactor.listenTCP(self.target_port, server.Site(target), interface="127.0.0.1")
        self.addCleanup(port.stopListening)

    def publish(self, bodies):
        """Publish with acknowledgements, from a thread; returns the acks."""

        async def scenario():
            nc = await nats.connect("nats://127.0.0.1:%d" % self.port)
            acks = []
            for subject, body in bodies:
                reply = await nc.request(subject, body, timeout=5)
                acks.append(json.loads(reply.data))
            await nc.close()
            return acks

        return threads.deferToThread(lambda: asyncio.run(scenario()))

    @defer.inlineCallbacks
    def test_every_type_reaches_its_handler(self):
        target = Target()
        self.serve_target(target)
        self.start()
        acks = yield self.publish([("event." + name, payload(name)) for name in EVENT_TYPES])
        self.assertEqual([a["success"] for a in acks], [True] * 10)
        yield wait_for(lambda: sum(len(v) for v in target.seen.values()) == 10)
        self.assertEqual(target.seen["/feed"], ["evt-compliance_ingest"])
        self.assertEqual(sorted(target.seen["/cfgingest"]), ["evt-cfgingest", "evt-nodeTerminated"])
        self.assertEqual(
            sorted(target.seen["/event_feed"]),
            sorted("evt-" + n for n in ("event_feed", "scanJobCreated", "scanJobUpdated", "scanJobDeleted", "profileCreated", "profileUpdate", "profileDeleted")),
        )

    @defer.inlineCallbacks
    def test_full_queue(self):
        """The target is down: past event_limit the producer is told, and the server answers on."""
        server_ = self.start(event_limit=5, data_dir=False)
        acks = yield self.publish([("event.cfgingest", payload("cfgingest", "e-%d" % i)) for i in range(8)])
        self.assertEqual([a["success"] for a in acks], [True] * 5 + [False] * 3)
        self.assertIn("queue full", acks[-1]["error"])
        more = yield self.publish([("event.nope", b"{}")])
        self.assertFalse(more[0]["success"])
        server_.wait_output("queue full: 5 events waiting")

    @defer.inlineCallbacks
    def test_crash_loses_nothing_acknowledged(self):
        """Acknowledged with the spool on, SIGKILLed, restarted: every event is delivered."""
        first = self.start()
        acks = yield self.publish([("event.cfgingest", payload("cfgingest", "k-%d" % i)) for i in range(25)])
        self.assertEqual([a["success"] for a in acks], [True] * 25)
        first.stop(signal.SIGKILL)
        target = Target()
        self.serve_target(target)
        self.start()
        yield wait_for(lambda: len(target.seen["/cfgingest"]) >= 25)
        self.assertEqual(sorted(set(target.seen["/cfgingest"])), sorted("k-%d" % i for i in range(25)))

    @defer.inlineCallbacks
    def test_crash_in_the_middle_of_batches(self):
        """
        10,000 events published with the spool on and batch_max = 100,
        kill -9 while batches are being delivered, restart: every
        acknowledged event is delivered.  Duplicates (delivered before the
        crash, not yet recorded as done) are counted and printed.
        """
        target = BatchTarget(pause=0.05)
        self.serve_target(target)
        options = "batch_max = 100\nbatch_wait = 0.005\nhandler_concurrency = 2\n"
        first = self.start(events=options)
        total, kill_at = 10000, 5000
        at_kill = {}

        async def scenario():
            nc = await nats.connect("nats://127.0.0.1:%d" % self.port, allow_reconnect=False, max_reconnect_attempts=0)
            acked = []

            async def one(i):
                try:
                    reply = await nc.request("event.event_feed", payload("event_feed", "crash-%d" % i), timeout=10)
                except Exception:
                    return
                answer = json.loads(reply.data)
                if answer.get("success"):
                    acked.append(answer["event_id"])
                    if len(acked) == kill_at:
                        at_kill["delivered"] = len(target.seen)
                        os.kill(first.process.pid, signal.SIGKILL)

            # All 10,000 are published; those after the kill fail, unacknowledged.
            for start in range(0, total, 500):
                await asyncio.gather(*(one(i) for i in range(start, min(start + 500, total))))
            try:
                await nc.close()
            except Exception:
                pass
            return acked

        acked = yield threads.deferToThread(lambda: asyncio.run(scenario()))
        first.stop()
        self.assertGreaterEqual(len(acked), kill_at)
        # Killed in the middle: some delivered, many acknowledged and not yet.
        self.assertLess(at_kill["delivered"], kill_at)
        self.start(events=options)
        yield wait_for(lambda: set(acked) <= set(target.seen), timeout=90)
        missing = set(acked) - set(target.seen)
        self.assertEqual(missing, set())
        duplicates = len(target.seen) - len(set(target.seen))
        print("\ncrash with batch_max = 100: {} acknowledged, {} delivered before kill -9, {} deliveries after restart, "
              "{} duplicates".format(len(acked), at_kill["delivered"], len(target.seen), duplicates))
        self.assertLessEqual(duplicates, len(acked))

    @defer.inlineCallbacks
    def test_second_process_on_the_data_dir_is_refused(self):
        """
        A second eventsvc on the same data_dir refuses to start, naming the
        key and the first one's PID; the first keeps its spool, so what it
        acknowledged survives kill -9.
        """
        first = self.start()
        acks = yield self.publish([("event.cfgingest", payload("cfgingest", "two-%d" % i)) for i in range(3)])
        self.assertEqual([a["success"] for a in acks], [True] * 3)
        second_config = process.write_config(os.path.join(self.dir, "second.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = %d\ndata_dir = "data"\n'
            '[handlers]\ncfgingest = "http://127.0.0.1:%d/cfgingest"\n'
        ) % (0, self.target_port))
        second = yield threads.deferToThread(
            process.run_until_exit, [process.require("twistd"), "-n", "--pidfile=", "eventsvc", "--config", second_config]
        )
        self.assertEqual(second.returncode, 1, second.stdout)
        data_dir = os.path.join(self.dir, "data")
        self.assertIn(
            "eventsvc: {} ([service] data_dir) is in use by another eventsvc process (PID {})".format(data_dir, first.process.pid),
            second.stdout,
        )
        self.assertNotIn("Traceback", second.stdout)
        first.stop(signal.SIGKILL)
        target = Target()
        self.serve_target(target)
        self.start()
        yield wait_for(lambda: len(target.seen["/cfgingest"]) >= 3)
        self.assertEqual(sorted(target.seen["/cfgingest"]), ["two-0", "two-1", "two-2"])


class ExampleTargetTests(TestCase):
    """The example targets of docs/events.md (dev/targets) take what eventsvc sends."""

    timeout = 60

    @defer.inlineCallbacks
    def check(self, name: str):
        import subprocess
        import sys

        port = process.free_port()
        path = os.path.join(process.source_tree(), "dev", "targets", name)
        child = subprocess.Popen([sys.executable, path, str(port)], stdout=subprocess.PIPE, text=True, env=process.child_env())
        self.addCleanup(child.wait)
        self.addCleanup(child.kill)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        target = HTTPTarget("http://127.0.0.1:%d/events" % port, Agent(reactor, pool=pool), reactor, 5)
        for _ in range(100):
            try:
                yield target.deliver_batch([payload("cfgingest", "ex-1"), payload("nodeTerminated", "ex-2")])
                break
            except Exception:
                yield task.deferLater(reactor, 0.1, lambda: None)
        yield target.deliver(payload("event_feed", "ex-3"))
        child.kill()
        out, _ = yield threads.deferToThread(child.communicate)
        self.assertEqual(out.split("\n")[:3], ["ex-1 cfgingest", "ex-2 nodeTerminated", "ex-3 event_feed"])

    def test_standard_library(self):
        return self.check("stdlib_target.py")

    def test_twisted_web(self):
        return self.check("twisted_target.py")
