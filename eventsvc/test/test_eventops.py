"""
An operator's view of the event log on a stream (issue 29, R2's drills):
what the start-up log says JetStream is, and the one line a start-up that
cannot make the events stream or its consumers ends with.  In memory, with
a fake clock and real files.
"""

from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Tuple

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.events import types
from eventsvc.events.dispatch import EventDispatcher
from eventsvc.events.handlers import DeadLetters, HandlerService
from eventsvc.events.log import EventsJetStream, StreamLeftBehind, StreamLog
from eventsvc.jetstream.engine import JetStream, JetStreamSettings
from eventsvc.jetstream.limits import AccountLimits
from eventsvc.jetstream.stream import decode_config
from eventsvc.nats.listener import ListenError
from eventsvc.nats.server import Broker
from eventsvc.test.test_events import RecordingTarget


def _logged(test: SynchronousTestCase) -> List[str]:
    """The text of every event logged until the test ends."""
    lines: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


def _dispatcher(test: SynchronousTestCase, engine: Any, names: List[str]) -> EventDispatcher:
    clock = engine.clock
    handlers = {
        name: HandlerService(name, RecordingTarget(), clock, DeadLetters(test.mktemp()), rng=random.Random(7))
        for name in names
    }
    log = StreamLog(engine, tuple(names))
    return EventDispatcher(engine.broker, types.Registry(), handlers, 1000, clock, spool=log)


class WhatStartUpSaysTests(SynchronousTestCase):
    """Without [jetstream] the event log's engine says it keeps events, not that JetStream is on."""

    def test_without_jetstream_the_log_says_it_is_off_for_clients(self) -> None:
        lines = _logged(self)
        engine = EventsJetStream(Broker(server_id="NTEST"), JetStreamSettings(store_dir=self.mktemp()), Clock())
        engine.start()
        self.addCleanup(engine.stop)
        text = "\n".join(lines)
        self.assertNotIn("JetStream on", text)
        self.assertIn("JetStream is off for clients (no [jetstream] section: no $JS.API)", text)
        self.assertFalse(engine.answering)
        self.assertFalse(engine.broker.has_interest("$JS.API.INFO"))
        self.assertFalse(engine.broker.has_interest("$JS.ACK.EVENTS.feed.1.1.1.1.0"))

    def test_with_jetstream_it_is_on_and_answers(self) -> None:
        lines = _logged(self)
        engine = JetStream(Broker(server_id="NTEST"), JetStreamSettings(store_dir=self.mktemp()), Clock())
        engine.start()
        self.assertIn("JetStream on: 0 streams", "\n".join(lines))
        self.assertTrue(engine.answering)
        self.assertTrue(engine.broker.has_interest("$JS.API.INFO"))
        engine.stop()
        self.assertFalse(engine.answering)
        self.assertFalse(engine.broker.has_interest("$JS.API.INFO"))


class AccountLimitsTests(SynchronousTestCase):
    """
    [jetstream]'s account limits count the event log's stream and consumers
    as a client's: a start-up they refuse ends with a line naming the limit
    (and not [service] data_dir, which has nothing wrong with it).
    """

    def start(self, limits: AccountLimits, names: List[str], before: Any = None) -> str:
        engine = JetStream(Broker(server_id="NTEST"), JetStreamSettings(store_dir=self.mktemp(), limits=limits), Clock())
        engine.start()
        self.addCleanup(engine.stop)
        if before is not None:
            before(engine)
        dispatcher = _dispatcher(self, engine, names)
        with self.assertRaises(ListenError) as caught:
            dispatcher.startService()
        message = str(caught.exception)
        self.assertNotIn("data_dir", message)
        # Nothing is subscribed: no publisher is told its event was accepted.
        self.assertFalse(engine.broker.has_interest("event.x"))
        return message

    def test_max_consumers(self) -> None:
        message = self.start(AccountLimits(max_consumers=1), ["feed", "cfgingest"])
        self.assertEqual(
            message,
            "[jetstream] max_consumers = 1: the events stream EVENTS ([events] stream) cannot take handler cfgingest's "
            "consumer: maximum consumers limit reached; the event log needs one stream and one consumer per handler "
            "(2 here) besides clients' own: raise it, or 0 for no limit",
        )

    def test_max_streams_taken_by_a_client_stream(self) -> None:
        def client_stream(engine: Any) -> None:
            engine.add_stream(decode_config(b'{"name": "ORDERS", "subjects": ["orders.>"]}'))

        message = self.start(AccountLimits(max_streams=1), ["feed"], client_stream)
        self.assertTrue(message.startswith(
            "[jetstream] max_streams = 1 (1 streams exist): the events stream EVENTS ([events] stream) cannot be made: "
            "maximum number of streams reached"), message)

    def test_max_bytes_required(self) -> None:
        message = self.start(AccountLimits(max_bytes_required=True), ["feed"])
        self.assertIn("[jetstream] max_bytes_required: ", message)
        self.assertTrue(message.endswith("; set [events] stream_max_bytes"), message)

    def test_within_the_limits_it_starts(self) -> None:
        engine = JetStream(Broker(server_id="NTEST"), JetStreamSettings(store_dir=self.mktemp(), limits=AccountLimits(
            max_consumers=2, max_streams=1, max_ack_pending=10)), Clock())
        engine.start()
        self.addCleanup(engine.stop)
        dispatcher = _dispatcher(self, engine, ["feed", "cfgingest"])
        dispatcher.startService()
        self.addCleanup(dispatcher.stopService)
        self.assertEqual(sorted(engine.streams["EVENTS"].consumers), ["cfgingest", "feed"])


class GoingBackToTheSpoolTests(SynchronousTestCase):
    """
    [events] log = "spool" after running on the stream: what the stream
    still owes stops the start with a line saying so; a stream that owes
    nothing is left behind, and the spool runs.
    """

    def running_engine(self, store_dir: str) -> Tuple[JetStream, StreamLeftBehind]:
        """A JetStream engine started on C{store_dir}, and the check of the stream left behind that asks it."""
        engine = JetStream(Broker(server_id="NTEST"), JetStreamSettings(store_dir=store_dir), Clock())
        check = StreamLeftBehind(store_dir, "EVENTS", engine)
        engine.start()
        self.addCleanup(engine.stop)
        return engine, check

    def run_on_the_stream(self, delivered: bool) -> str:
        from eventsvc.test.test_eventlog import Node

        self.data = self.mktemp()
        store_dir = os.path.join(self.data, "jetstream")
        target = RecordingTarget() if delivered else RecordingTarget(["hold"] * 10)
        node = Node(self, store_dir, {"feed": target, "cfgingest": RecordingTarget()})
        for i in range(3):
            node.publish("cfgingest" if i else "compliance_ingest", "e-%d" % i)
        node.publish("compliance_ingest", "e-3")
        node.clock.advance(1)
        self.assertEqual(len(node.acks), 4)
        node.stop()
        return store_dir

    def test_owed_events_stop_the_start(self) -> None:
        store_dir = self.run_on_the_stream(delivered=False)
        check = StreamLeftBehind(store_dir, "EVENTS")
        with self.assertRaises(ListenError) as caught:
            check.startService()
        folder = os.path.join(store_dir, "streams", "EVENTS")
        self.assertEqual(
            str(caught.exception),
            '[events] log = "spool", but the events stream EVENTS in {0} still owes 2 events (feed: 2), accepted while '
            'log = "stream": the spool would never deliver them. Run with log = "stream" (the default) until they are '
            "delivered, or delete {0} to drop them".format(folder))
        # It only read: the next start on the stream delivers them.
        from eventsvc.test.test_eventlog import Node

        feed = RecordingTarget()
        Node(self, store_dir, {"feed": feed, "cfgingest": RecordingTarget()})
        self.assertEqual(feed.event_ids(), ["e-0", "e-3"])

    def test_a_stream_that_owes_nothing_is_left_behind(self) -> None:
        lines = _logged(self)
        store_dir = self.run_on_the_stream(delivered=True)
        StreamLeftBehind(store_dir, "EVENTS").startService()
        self.assertIn('[events] log = "spool": the events stream EVENTS in {} owes nothing and is no longer used'.format(
            os.path.join(store_dir, "streams", "EVENTS")), "\n".join(lines))

    def test_with_jetstream_the_running_engine_is_asked(self) -> None:
        store_dir = self.run_on_the_stream(delivered=False)
        engine, check = self.running_engine(store_dir)
        with self.assertRaises(ListenError) as caught:
            check.startService()
        self.assertIn("still owes 2 events (feed: 2)", str(caught.exception))

    def test_with_jetstream_the_stream_left_behind_takes_no_events(self) -> None:
        """The restored stream does not capture event.>: a publisher gets no PubAck from it, and it keeps no copy."""
        from eventsvc.test.eventsamples import payload

        store_dir = self.run_on_the_stream(delivered=True)
        engine, check = self.running_engine(store_dir)
        check.startService()
        answers: List[bytes] = []
        engine.broker.subscribe("answers.*", lambda subject, reply, body, headers: answers.append(body))
        engine.broker.publish("event.cfgingest", payload("cfgingest", "e-9"), reply="answers.1")
        engine.clock.advance(1)
        self.assertEqual(answers, [])
        self.assertEqual(engine.streams["EVENTS"].store.state().msgs, 4)
        # Clients can still read it.
        self.assertTrue(engine.broker.has_interest("$JS.API.STREAM.INFO.EVENTS"))

    def test_with_jetstream_the_stream_left_behind_is_guarded(self) -> None:
        """
        Clients read the stream left behind and make consumers of their own
        on it, but change none of it: its handlers' consumers are what the
        next run with log = "stream" goes on from.
        """
        import json

        from eventsvc.jetstream import api

        store_dir = self.run_on_the_stream(delivered=True)
        engine, check = self.running_engine(store_dir)
        check.startService()
        answers: List[Dict[str, Any]] = []
        engine.broker.subscribe("_INBOX.api", lambda subject, reply, body, headers: answers.append(json.loads(body)))

        def ask(subject: str, body: Any = b"") -> Dict[str, Any]:
            api.dispatch(engine, "$JS.API." + subject, "_INBOX.api", body if isinstance(body, bytes) else json.dumps(body).encode(), None)
            return answers.pop()

        def refused(answer: Dict[str, Any]) -> str:
            return answer["error"]["description"].split(":")[0]

        self.assertEqual(refused(ask("STREAM.PURGE.EVENTS")), "stream purge not permitted")
        self.assertEqual(refused(ask("STREAM.DELETE.EVENTS")), "stream delete not permitted")
        self.assertEqual(refused(ask("CONSUMER.DELETE.EVENTS.feed")), "consumer delete not permitted")
        self.assertEqual(ask("STREAM.INFO.EVENTS")["state"]["messages"], 4)
        made = ask("CONSUMER.DURABLE.CREATE.EVENTS.audit", {"stream_name": "EVENTS", "config": {"durable_name": "audit", "ack_policy": "explicit"}})
        self.assertEqual(made["num_pending"], 4)
        self.assertEqual(ask("CONSUMER.DELETE.EVENTS.audit")["success"], True)
        self.assertEqual(sorted(engine.streams["EVENTS"].consumers), ["cfgingest", "feed"])

    def test_a_clients_consumer_owes_nothing(self) -> None:
        """What a client's own consumer of the log has not read does not stop the start: only handlers are owed events."""
        from eventsvc.jetstream import consumer_api
        from eventsvc.jetstream.consumer import parse_config

        store_dir = self.run_on_the_stream(delivered=True)
        engine, check = self.running_engine(store_dir)
        stream = engine.streams["EVENTS"]
        audit = consumer_api.create_consumer(engine, stream, parse_config({"durable_name": "audit", "ack_policy": "explicit"}))
        audit.start()
        # Pulled and not acked (yet): pending, as a handler's unfinished events are.
        pulled: List[bytes] = []
        engine.broker.subscribe("_INBOX.audit", lambda subject, reply, body, headers: pulled.append(body))
        audit.next_request("_INBOX.audit", b'{"batch": 2}')
        engine.clock.advance(0)
        self.assertEqual(audit.info()["num_ack_pending"], 2)
        check.startService()
        self.assertIn("audit", stream.consumers)

    def test_no_stream_no_word(self) -> None:
        lines = _logged(self)
        StreamLeftBehind(self.mktemp(), "EVENTS").startService()
        self.assertEqual([line for line in lines if "EVENTS" in line], [])


class RoundTripTests(SynchronousTestCase):
    """Stream, back to the spool (nothing owed), and onto the stream again: the second spool is carried over too."""

    def spool(self, data: str, prefix: str) -> List[int]:
        from eventsvc.events.spool import Spool
        from eventsvc.test.eventsamples import payload

        spool = Spool(data)
        spool.open()
        seqs = [spool.accept("%s-%d" % (prefix, i), ["cfgingest"], payload("cfgingest", "%s-%d" % (prefix, i))) for i in range(3)]
        spool.close()
        return seqs

    def test_a_second_spool_numbered_from_one_again_is_carried_over_once(self) -> None:
        from eventsvc.events.spool import segment_paths
        from eventsvc.test.test_eventlog import Node

        data = self.mktemp()
        store_dir = os.path.join(data, "jetstream")
        first = self.spool(data, "old")
        node = Node(self, store_dir, {"cfgingest": RecordingTarget()}, spool_dir=data)
        node.clock.advance(1)
        self.assertEqual(node.targets["cfgingest"].event_ids(), ["old-0", "old-1", "old-2"])
        node.stop()
        # log = "spool" for a while (the stream owed nothing): a new spool, the same sequences.
        self.assertEqual(self.spool(data, "new"), first)
        # Back on the stream: a crash after the carry-over's write, before the spool's deletion.
        node = Node(self, store_dir, {"cfgingest": RecordingTarget(["hold"] * 10)}, spool_dir=data)
        node.stream.store._write()
        node.crash()
        target = RecordingTarget()
        lines = _logged(self)
        node = Node(self, store_dir, {"cfgingest": target}, spool_dir=data)
        node.clock.advance(1)
        self.assertEqual(target.event_ids(), ["new-0", "new-1", "new-2"])
        self.assertEqual(node.stream.store.state().msgs, 6)
        self.assertEqual(segment_paths(data), [])
        self.assertIn("0 owed events carried over into stream EVENTS (3 more were already, from a start cut short)", "\n".join(lines))


class _Response:
    """
    A response to a fake Agent: C{code}, and an empty body; with
    C{until_close}, a body of no stated length that the close ended (an
    HTTP/1.0 server's without Content-Length).
    """

    def __init__(self, code: int, until_close: bool = False) -> None:
        self.code = code
        self.phrase = b"OK" if code == 200 else b"Service Unavailable"
        self.length = 0
        self.until_close = until_close

    def deliverBody(self, protocol: Any) -> None:
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseDone
        from twisted.web.http import PotentialDataLoss

        if self.until_close:
            protocol.dataReceived(b"ok\n")
            protocol.connectionLost(Failure(PotentialDataLoss()))
        else:
            protocol.connectionLost(Failure(ResponseDone()))


class _Agent:
    """Answers each POST with the next of C{answers}: a status code, or "closed" (the connection closed before a response)."""

    def __init__(self, answers: List[Any]) -> None:
        self.answers = list(answers)
        self.posts = 0

    def request(self, method: bytes, url: bytes, headers: Any, body: Any) -> Any:
        from twisted.internet.defer import fail, succeed
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure
        from twisted.web.client import ResponseNeverReceived

        self.posts += 1
        answer = self.answers.pop(0)
        if answer == "closed":
            return fail(ResponseNeverReceived([Failure(ConnectionDone("Connection was closed cleanly."))]))
        if isinstance(answer, tuple):  # (code, "until close")
            return succeed(_Response(answer[0], until_close=True))
        return succeed(_Response(answer))


class KeptAliveConnectionClosedTests(SynchronousTestCase):
    """
    A POST on a kept-alive connection the target closed as it went out
    (ResponseNeverReceived) is sent again at once: in the SIGTERM drill
    against an HTTP/1.0 target, such events waited in backoff (up to
    retry_max) with nothing wrong with the target.
    """

    def deliver(self, answers: List[Any]) -> "tuple[_Agent, Any]":
        from eventsvc.events.handlers import HTTPTarget

        agent = _Agent(answers)
        d = HTTPTarget("http://t/events", agent, Clock(), 5).deliver(b'{"event_id": "a"}')
        return agent, d

    def test_sent_again_at_once(self) -> None:
        agent, d = self.deliver(["closed", 200])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(agent.posts, 2)

    def test_twice_is_a_failure_retried_later(self) -> None:
        from eventsvc.events.handlers import DeliveryFailed

        agent, d = self.deliver(["closed", "closed", 200])
        failure = self.failureResultOf(d, DeliveryFailed)
        self.assertIn("ResponseNeverReceived", str(failure.value))
        self.assertTrue(failure.value.retry)
        self.assertEqual(agent.posts, 2)

    def test_a_body_ended_by_the_close_is_an_answer(self) -> None:
        """
        A 200 whose body has no length and ends with the connection (an
        HTTP/1.0 target without Content-Length) is a delivery, sent once;
        a 503 so sent is still a 503.
        """
        from eventsvc.events.handlers import DeliveryFailed

        agent, d = self.deliver([(200, "until close")])
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(agent.posts, 1)
        agent, d = self.deliver([(503, "until close")])
        failure = self.failureResultOf(d, DeliveryFailed)
        self.assertIn("HTTP 503", str(failure.value))
        self.assertEqual(agent.posts, 1)

    def test_an_answer_is_not_sent_again(self) -> None:
        from eventsvc.events.handlers import DeliveryFailed

        agent, d = self.deliver([503, 200])
        self.assertIn("HTTP 503", str(self.failureResultOf(d, DeliveryFailed).value))
        self.assertEqual(agent.posts, 1)


class StartUpLinesProcessTests(SynchronousTestCase):
    """What an operator sees from a real twistd: exit status 1 and one line, no traceback."""

    def twistd(self, config: str) -> Any:
        from eventsvc.test import process

        return process.run_until_exit([process.require("twistd"), "-n", "--pidfile=", "eventsvc", "--config", config])

    def config(self, data: str, extra: str) -> str:
        from eventsvc.test import process

        return process.write_config(self.mktemp() + ".toml", (
            '[service]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "%s"\n'
            '[handlers]\nfeed = "http://127.0.0.1:9/feed"\ncfgingest = "http://127.0.0.1:9/cfgingest"\n%s'
        ) % (data, extra))

    def test_going_back_to_the_spool_with_events_owed(self) -> None:
        from eventsvc.test.test_eventlog import Node

        data = os.path.abspath(self.mktemp())
        node = Node(self, os.path.join(data, "jetstream"), {"feed": RecordingTarget(["hold"] * 10), "cfgingest": RecordingTarget()})
        node.publish("compliance_ingest", "owed-1")
        node.clock.advance(1)
        node.stop()
        done = self.twistd(self.config(data, '[events]\nlog = "spool"\n'))
        self.assertEqual(done.returncode, 1, done.stdout)
        self.assertIn(
            'eventsvc: [events] log = "spool", but the events stream EVENTS in {} still owes 1 events (feed: 1)'.format(
                os.path.join(data, "jetstream", "streams", "EVENTS")), done.stdout)
        self.assertNotIn("Traceback", done.stdout)

    def test_max_consumers_names_itself(self) -> None:
        done = self.twistd(self.config(os.path.abspath(self.mktemp()), "[jetstream]\nmax_consumers = 1\n"))
        self.assertEqual(done.returncode, 1, done.stdout)
        lines = [line for line in done.stdout.splitlines() if line.startswith("eventsvc:")]
        self.assertEqual(len(lines), 1, done.stdout)
        self.assertTrue(lines[0].startswith("eventsvc: [jetstream] max_consumers = 1: the events stream EVENTS"), lines[0])
        self.assertNotIn("data_dir", lines[0])
        self.assertNotIn("Traceback", done.stdout)


class EveryHandlerRemovedTests(SynchronousTestCase):
    """
    [handlers] emptied after running on the stream, with [jetstream]: the
    events stream is still the service's (not a client stream on event.>,
    which would answer publishers with PubAcks and keep what the
    dispatcher refuses), and the handlers' consumers go, saying so.
    """

    def service(self, handlers: str) -> Any:
        from twisted.internet.testing import MemoryReactorClock

        from eventsvc import config
        from eventsvc.app import make_service

        text = '[service]\nport = 0\ndata_dir = "{}"\n[jetstream]\n[handlers]\n{}'.format(self.data, handlers)
        service = make_service(config.parse(text, os.path.join(self.data, "eventsvc.toml")), MemoryReactorClock())
        service.startService()
        return service

    def publish(self, service: Any, event_id: str) -> List[bytes]:
        from eventsvc.test.eventsamples import payload

        answers: List[bytes] = []
        subscription = service.broker.subscribe("answers.*", lambda subject, reply, body, headers: answers.append(body))
        service.broker.publish("event.cfgingest", payload("cfgingest", event_id), reply="answers.1")
        for _ in range(3):
            service.jetstream.clock.advance(0.5)
        subscription.unsubscribe()
        return answers

    def test_the_stream_stays_the_services(self) -> None:
        import json

        self.data = os.path.abspath(self.mktemp())
        os.makedirs(self.data)
        lines = _logged(self)
        first = self.service('cfgingest = "https://127.0.0.1:1"\n')
        self.assertEqual([json.loads(a)["success"] for a in self.publish(first, "e-1")], [True])
        first.stopService()
        second = self.service("")
        self.addCleanup(second.stopService)
        stream = second.jetstream.streams["EVENTS"]
        self.assertEqual(sorted(stream.consumers), [])
        self.assertIn("stream EVENTS: handler cfgingest is no longer in [handlers]; its consumer is deleted, and the 1 "
                      "events it still owed", "\n".join(lines))
        answers = [json.loads(a) for a in self.publish(second, "e-2")]
        self.assertEqual([a.get("success") for a in answers], [False], answers)
        self.assertEqual(stream.store.state().msgs, 1)
        self.assertIn("EVENTS", second.jetstream.owned)
