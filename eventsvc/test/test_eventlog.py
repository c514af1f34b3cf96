"""
The event log on a JetStream stream (L{eventsvc.events.log}), in memory
with a fake clock and real files: what the dispatcher is told, what a
publisher is answered and when, what is owed after a crash, damage, and
the carrying over of an older spool.
"""

from __future__ import annotations

import json
import os
import random

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.events import types
from eventsvc.events.dispatch import EventDispatcher
from eventsvc.events.handlers import DeadLetters, HandlerService
from eventsvc.events.log import HANDLERS_HEADER, RECORD_HOLD, EventsJetStream, StreamLog, owed_in_stream, read_owed
from eventsvc.events.spool import Spool, segment_paths
from eventsvc.jetstream.engine import JetStreamSettings
from eventsvc.jetstream.wire import parse_headers
from eventsvc.nats.server import Broker
from eventsvc.test.eventsamples import payload
from eventsvc.test.test_events import RecordingTarget


class Node:
    """One "process": an engine on C{store_dir}, the log, the handlers and the dispatcher."""

    def __init__(self, test: SynchronousTestCase, store_dir: str, targets, spool_dir=None, log_options=None,
                 engine_type=EventsJetStream, **settings) -> None:
        """C{engine_type}: L{JetStream} for a server with [jetstream] (it answers clients)."""
        self.clock = Clock()
        self.broker = Broker(server_id="NTEST")
        self.targets = targets
        self.engine = engine_type(self.broker, JetStreamSettings(store_dir=store_dir, **settings), self.clock)
        self.log = StreamLog(self.engine, tuple(targets), spool_dir=spool_dir, **(log_options or {}))
        self.engine.start()
        dead = test.mktemp() + "-dead.jsonl"
        self.handlers = {
            name: HandlerService(name, target, self.clock, DeadLetters(dead), rng=random.Random(7))
            for name, target in targets.items()
        }
        for h in self.handlers.values():
            h.startService()
        self.dispatcher = EventDispatcher(self.broker, types.Registry(), self.handlers, 10000, self.clock, spool=self.log)
        self.dispatcher.startService()
        self.acks = []
        self.broker.subscribe("ack.*", lambda subject, reply, body, headers: self.acks.append(json.loads(body)))

    @property
    def stream(self):
        return self.engine.streams["EVENTS"]

    def publish(self, type_name: str, event_id: str, turn: bool = True) -> None:
        self.broker.publish("event." + type_name, payload(type_name, event_id), reply="ack.1")
        if turn:
            self.clock.advance(0)

    def stop(self) -> None:
        """A clean stop, as the service's."""
        self.dispatcher.stopService()
        self.clock.advance(0)
        self.engine.stop()

    def crash(self) -> None:
        """kill -9: nothing buffered is written, nothing is closed cleanly."""
        for stream in self.engine.streams.values():
            stream.store.abandon()
            for consumer in stream.consumers.values():
                consumer.store.abandon()
        self.engine._lock.release()


class StreamLogTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = self.mktemp()

    def test_acknowledged_after_the_fsync_and_kept_once(self) -> None:
        node = Node(self, self.dir, {"cfgingest": RecordingTarget()})
        fsyncs = []
        store = node.stream.store
        real = store._disk.fsync
        store._disk.fsync = lambda fd: (fsyncs.append(fd), real(fd))
        node.publish("cfgingest", "e-1", turn=False)
        # Stored, not yet written: no answer, nothing delivered.
        self.assertEqual((node.acks, node.targets["cfgingest"].event_ids(), fsyncs), ([], [], []))
        node.clock.advance(0)
        self.assertEqual(len(fsyncs), 1)
        self.assertEqual(node.acks, [{"success": True, "event_id": "e-1"}])
        self.assertEqual(node.targets["cfgingest"].event_ids(), ["e-1"])
        # Kept once, on its type's subject, with the handlers it was routed to.
        state = node.stream.store.state()
        self.assertEqual((state.msgs, state.last_seq), (1, 1))
        message = node.stream.store.load(1)
        self.assertEqual(message.subject, "event.cfgingest")
        self.assertEqual(message.data, payload("cfgingest", "e-1"))
        self.assertEqual(parse_headers(message.headers)[1][HANDLERS_HEADER], ["cfgingest"])
        # The dispatcher's store is the stream.
        self.assertEqual(node.dispatcher.store["kind"], "stream")

    def test_a_refused_event_is_not_kept(self) -> None:
        node = Node(self, self.dir, {"cfgingest": RecordingTarget()})
        node.broker.publish("event.cfgingest", b'{"not": "an event"}', reply="ack.1")
        node.clock.advance(0)
        self.assertFalse(node.acks[0]["success"])
        self.assertEqual(node.stream.store.state().msgs, 0)

    def test_the_handlers_are_durable_consumers(self) -> None:
        node = Node(self, self.dir, {"cfgingest": RecordingTarget(["hold"]), "event_feed": RecordingTarget()})
        node.publish("cfgingest", "e-1")
        node.clock.advance(0)
        consumers = node.stream.consumers
        self.assertEqual(sorted(consumers), ["cfgingest", "event_feed"])
        # event_feed delivered it: acked; cfgingest holds it: pending.
        self.assertEqual(consumers["event_feed"].info()["ack_floor"]["stream_seq"], 1)
        self.assertEqual(consumers["cfgingest"].info()["num_ack_pending"], 1)
        node.targets["cfgingest"].held[0].callback(None)
        node.clock.advance(0)
        self.assertEqual(consumers["cfgingest"].info()["ack_floor"]["stream_seq"], 1)
        self.assertEqual(consumers["cfgingest"].info()["num_ack_pending"], 0)

    def test_finished_history_gives_way_before_the_disk_is_full(self) -> None:
        """
        Under a quarter of a small disk free, the next turn's write first
        drops what every handler has finished: a stream that kept its history
        until a write failed refused events (the 2 MiB tmpfs drill: 31 of 50).
        """
        node = Node(self, self.dir, {"cfgingest": RecordingTarget()})
        space = {"free": 10 * 1024 * 1024}
        node.log.disk.space = lambda directory: (space["free"], 16 * 1024 * 1024)
        for i in range(3):
            node.publish("cfgingest", "e-%d" % i)
        node.clock.advance(0)
        self.assertEqual(node.stream.store.state().msgs, 3)
        # Room enough: the history stays, for any consumer to replay.
        node.publish("cfgingest", "e-3")
        self.assertEqual((node.stream.store.state().msgs, node.stream.store.state().first_seq), (4, 1))
        # Nearly full: the finished events go before the new one is written.
        space["free"] = 3 * 1024 * 1024
        node.publish("cfgingest", "e-4")
        state = node.stream.store.state()
        self.assertEqual((state.msgs, state.first_seq, state.last_seq), (1, 5, 5))
        self.assertEqual([a["success"] for a in node.acks], [True] * 5)
        node.clock.advance(0)
        self.assertEqual(node.targets["cfgingest"].event_ids(), ["e-%d" % i for i in range(5)])

    def test_events_of_two_routes_in_one_turn_are_pending_in_stream_order(self) -> None:
        """A handler that two routes lead to gets the turn's events in the stream's order (its ack floor relies on it)."""
        feed = RecordingTarget(["hold"] * 3)
        node = Node(self, self.dir, {"cfgingest": RecordingTarget(), "event_feed": feed})
        node.dispatcher.registry = types.Registry({"cfgingest": ("cfgingest", "event_feed")})
        node.publish("cfgingest", "e-1", turn=False)
        node.publish("event_feed", "e-2", turn=False)
        node.publish("cfgingest", "e-3", turn=False)
        node.clock.advance(0)
        consumer = node.stream.consumers["event_feed"]
        self.assertEqual(list(consumer.pending), [1, 2, 3])
        for d in feed.held:
            d.callback(None)
        self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 3)
        self.assertEqual(node.stream.consumers["cfgingest"].info()["ack_floor"]["stream_seq"], 3)

    def test_a_server_limit_refuses_the_events_past_it(self) -> None:
        """[jetstream] max_file_store is checked for each event (the log's append has a faster path without it)."""
        from eventsvc.jetstream.filestore import file_message_size

        header = ("NATS/1.0\r\n%s: cfgingest\r\n\r\n" % HANDLERS_HEADER).encode()
        size = file_message_size("event.cfgingest", header, payload("cfgingest", "e-1"))
        # (Refused once the store holds its limit, as nats-server does.)
        node = Node(self, self.dir, {"cfgingest": RecordingTarget()}, max_file_store=3 * size)
        for i in range(5):
            node.publish("cfgingest", "e-%d" % i)
        self.assertEqual([a["success"] for a in node.acks], [True, True, True, False, False])
        self.assertEqual(node.acks[3]["error"], "stream EVENTS refused the event (a limit of the stream or of [jetstream])")
        self.assertEqual(node.targets["cfgingest"].event_ids(), ["e-0", "e-1", "e-2"])
        self.assertEqual(node.stream.store.state().msgs, 3)

    def test_a_consumer_of_a_client_is_told_of_new_events(self) -> None:
        """The handlers' consumers are told by the log; any other consumer of the stream as by a publish."""
        from eventsvc.jetstream import consumer_api
        from eventsvc.jetstream.consumer import parse_config

        node = Node(self, self.dir, {"cfgingest": RecordingTarget()})
        audit = consumer_api.create_consumer(node.engine, node.stream, parse_config({"durable_name": "audit", "ack_policy": "explicit"}))
        audit.start()
        pulled = []
        node.broker.subscribe("inbox.1", lambda subject, reply, body, headers: pulled.append((subject, body)))
        audit.next_request("inbox.1", b'{"batch": 2}')
        self.assertEqual(pulled, [])
        node.publish("cfgingest", "e-1")
        node.publish("cfgingest", "e-2")
        self.assertEqual(pulled, [("event.cfgingest", payload("cfgingest", "e-1")), ("event.cfgingest", payload("cfgingest", "e-2"))])
        self.assertEqual(node.targets["cfgingest"].event_ids(), ["e-1", "e-2"])

    def test_kill_loses_nothing_acknowledged_and_redelivers_what_is_owed(self) -> None:
        hold = RecordingTarget(["hold"] * 100)
        node = Node(self, self.dir, {"feed": RecordingTarget(), "cfgingest": hold})
        for i in range(5):
            node.publish("cfgingest", "c-%d" % i)
        node.publish("compliance_ingest", "f-0")
        hold.held[0].callback(None)
        hold.held[1].callback(None)
        # (The consumer's acks are written within RECORD_HOLD, as the spool's done records.)
        node.clock.advance(RECORD_HOLD)
        # A turn of publishes that is not written yet: never acknowledged.
        node.publish("cfgingest", "lost-1", turn=False)
        self.assertEqual(len(node.acks), 6)
        node.crash()

        again = RecordingTarget()
        feed = RecordingTarget()
        node2 = Node(self, self.dir, {"feed": feed, "cfgingest": again})
        node2.clock.advance(0)
        self.assertEqual(sorted(again.event_ids()), ["c-2", "c-3", "c-4"])
        self.assertEqual(feed.event_ids(), [])
        node2.clock.advance(0)
        node2.stop()
        node3 = Node(self, self.dir, {"feed": RecordingTarget(), "cfgingest": RecordingTarget()})
        self.assertEqual(node3.dispatcher.pending, 0)
        # New events go on after the old sequences.
        node3.publish("cfgingest", "after")
        self.assertEqual(node3.stream.store.state().last_seq, 7)

    def test_finished_within_the_hold_is_delivered_again_after_a_kill(self) -> None:
        """
        A handler consumer's acks wait up to RECORD_HOLD for their write (as
        the spool's done records): a kill -9 before then delivers those
        events again (at least once), and after it, not.
        """
        hold = RecordingTarget(["hold"] * 100)
        node = Node(self, self.dir, {"cfgingest": hold})
        for i in range(3):
            node.publish("cfgingest", "c-%d" % i)
        ack_log = os.path.join(node.stream.consumers["cfgingest"].store._path, "consumer.log")
        written = os.path.getsize(ack_log)
        hold.held[0].callback(None)
        node.clock.advance(RECORD_HOLD / 2)
        self.assertEqual(os.path.getsize(ack_log), written)
        node.clock.advance(RECORD_HOLD / 2)
        self.assertGreater(os.path.getsize(ack_log), written)
        hold.held[1].callback(None)
        node.clock.advance(0)
        node.crash()
        again = RecordingTarget()
        node2 = Node(self, self.dir, {"cfgingest": again})
        node2.clock.advance(0)
        # c-0's ack was written; c-1's was not (delivered again); c-2 was never finished.
        self.assertEqual(sorted(again.event_ids()), ["c-1", "c-2"])
        node2.stop()

    def test_a_flipped_byte_costs_one_event(self) -> None:
        hold = RecordingTarget(["hold"] * 100)
        node = Node(self, self.dir, {"cfgingest": hold})
        for i in range(20):
            node.publish("cfgingest", "e-%02d" % i)
        node.stop()
        folder = os.path.join(self.dir, "streams", "EVENTS", "msgs")
        [segment] = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".seg")]
        with open(segment, "r+b") as f:
            data = f.read()
            at = data.index(b'"event_id": "e-07"') + 15
            f.seek(at)
            f.write(bytes([data[at] ^ 0x01]))
        again = RecordingTarget()
        node2 = Node(self, self.dir, {"cfgingest": again})
        node2.clock.advance(0)
        self.assertEqual(again.event_ids(), ["e-%02d" % i for i in range(20) if i != 7])


class CarryOverTests(SynchronousTestCase):
    """An older spool in data_dir is carried over into the stream on the first start."""

    def setUp(self) -> None:
        self.data = self.mktemp()
        self.store_dir = os.path.join(self.data, "jetstream")
        spool = Spool(self.data)
        spool.open()
        seqs = [spool.accept("old-%d" % i, ["feed", "cfgingest"], payload("cfgingest", "old-%d" % i)) for i in range(4)]
        spool.done_many(seqs[:2], "feed")
        spool.done_many(seqs[:1], "cfgingest")
        spool.close()

    def test_owed_events_carried_over_once_and_the_spool_deleted(self) -> None:
        feed, cfg = RecordingTarget(["hold"] * 10), RecordingTarget(["hold"] * 10)
        node = Node(self, self.store_dir, {"feed": feed, "cfgingest": cfg}, spool_dir=self.data)
        self.assertEqual(feed.event_ids(), ["old-2", "old-3"])
        self.assertEqual(cfg.event_ids(), ["old-1", "old-2", "old-3"])
        self.assertEqual(node.stream.store.state().msgs, 3)
        node.clock.advance(0)
        # Once the stream's write is durable, the spool is gone.
        self.assertEqual(segment_paths(self.data), [])
        node.crash()
        node2 = Node(self, self.store_dir, {"feed": RecordingTarget(), "cfgingest": RecordingTarget()}, spool_dir=self.data)
        self.assertEqual(node2.stream.store.state().msgs, 3)
        self.assertEqual(sorted(node2.targets["cfgingest"].event_ids()), ["old-1", "old-2", "old-3"])

    def test_a_crash_before_the_spool_is_deleted_carries_nothing_twice(self) -> None:
        node = Node(self, self.store_dir, {"feed": RecordingTarget(["hold"] * 10), "cfgingest": RecordingTarget(["hold"] * 10)},
                    spool_dir=self.data)
        # The stream's write happens; the crash comes before the spool's deletion.
        node.stream.store._write()
        node.crash()
        self.assertNotEqual(segment_paths(self.data), [])
        cfg = RecordingTarget(["hold"] * 10)
        node2 = Node(self, self.store_dir, {"feed": RecordingTarget(["hold"] * 10), "cfgingest": cfg}, spool_dir=self.data)
        self.assertEqual(node2.stream.store.state().msgs, 3)
        self.assertEqual(cfg.event_ids(), ["old-1", "old-2", "old-3"])
        node2.clock.advance(0)
        self.assertEqual(segment_paths(self.data), [])


class NoJetStreamSectionTests(SynchronousTestCase):
    def test_no_api_without_jetstream(self) -> None:
        """Without [jetstream] the log's engine answers no $JS.API, and publishes on event.> are not captured."""
        node = Node(self, self.mktemp(), {"cfgingest": RecordingTarget()})
        self.assertFalse(node.broker.has_interest("$JS.API.INFO"))
        self.assertFalse(node.broker.has_interest("$JS.API.STREAM.INFO.EVENTS"))
        node.publish("cfgingest", "e-1")
        self.assertEqual(node.stream.store.state().msgs, 1)


class OwnedStreamTests(SynchronousTestCase):
    """
    With [jetstream] the events stream and its handlers' consumers are
    visible to clients: the API refuses to change or delete them (the
    events acknowledged to publishers stay), and reads, and clients' own
    consumers on the stream, keep working.
    """

    def setUp(self) -> None:
        self.target = RecordingTarget(["hold"] * 10)
        self.node = Node(self, self.mktemp(), {"cfgingest": self.target, "feed": RecordingTarget()})
        for i in range(3):
            self.node.publish("cfgingest", "e-%d" % i)
        self.answers = []
        self.node.broker.subscribe("_INBOX.api", lambda subject, reply, body, headers: self.answers.append(json.loads(body)))

    def api(self, subject: str, body=b"") -> dict:
        from eventsvc.jetstream import api

        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        api.dispatch(self.node.engine, "$JS.API." + subject, "_INBOX.api", payload, None)
        return self.answers.pop()

    def refused(self, answer: dict) -> tuple:
        error = answer["error"]
        return error["code"], error["err_code"], error["description"].split(":")[0]

    def assertNothingLost(self) -> None:
        self.assertEqual(self.node.stream.store.state().msgs, 3)
        self.assertIn("EVENTS", self.node.engine.streams)
        self.assertEqual(sorted(self.node.stream.consumers), ["cfgingest", "feed"])
        self.assertEqual(self.node.stream.consumers["cfgingest"].info()["num_ack_pending"], 3)

    def test_the_stream_is_not_changed_or_deleted(self) -> None:
        """UPDATE, PURGE, DELETE and MSG.DELETE are refused with nats-server's error for each, naming [events]."""
        config = self.api("STREAM.INFO.EVENTS")["config"]
        self.assertEqual(self.refused(self.api("STREAM.UPDATE.EVENTS", dict(config, max_msgs=1))),
                         (500, 10069, "stream update not permitted"))
        self.assertEqual(self.refused(self.api("STREAM.PURGE.EVENTS")), (500, 10110, "stream purge not permitted"))
        self.assertEqual(self.refused(self.api("STREAM.PURGE.EVENTS", {"filter": "event.cfgingest"})),
                         (500, 10110, "stream purge not permitted"))
        self.assertEqual(self.refused(self.api("STREAM.MSG.DELETE.EVENTS", {"seq": 1})), (500, 10057, "message delete not permitted"))
        answer = self.api("STREAM.DELETE.EVENTS")
        self.assertEqual(self.refused(answer), (500, 10050, "stream delete not permitted"))
        self.assertIn("stream EVENTS is eventsvc's event log; it is configured by [events]", answer["error"]["description"])
        self.assertNothingLost()
        # The held events are still the handler's to finish.
        for held in self.target.held:
            held.callback(None)
        self.node.clock.advance(0)
        self.assertEqual(self.node.stream.consumers["cfgingest"].info()["ack_floor"]["stream_seq"], 3)

    def test_reads_work(self) -> None:
        info = self.api("STREAM.INFO.EVENTS")
        self.assertEqual(info["state"]["messages"], 3)
        self.assertEqual(self.api("STREAM.MSG.GET.EVENTS", {"seq": 2})["message"]["subject"], "event.cfgingest")
        self.assertEqual(self.api("CONSUMER.INFO.EVENTS.cfgingest")["num_ack_pending"], 3)
        self.assertEqual(self.api("CONSUMER.NAMES.EVENTS")["consumers"], ["cfgingest", "feed"])

    def test_the_handlers_consumers_are_not_changed_or_deleted(self) -> None:
        answer = self.api("CONSUMER.DELETE.EVENTS.cfgingest")
        self.assertEqual(self.refused(answer), (500, 10051, "consumer delete not permitted"))
        self.assertIn("eventsvc handler cfgingest's progress", answer["error"]["description"])
        config = self.api("CONSUMER.INFO.EVENTS.cfgingest")["config"]
        self.assertEqual(self.refused(self.api("CONSUMER.DURABLE.CREATE.EVENTS.cfgingest",
                                               {"stream_name": "EVENTS", "config": dict(config, ack_wait=1_000_000_000)})),
                         (500, 10012, "consumer update not permitted"))
        self.assertEqual(self.refused(self.api("CONSUMER.CREATE.EVENTS.feed",
                                               {"stream_name": "EVENTS", "config": {"durable_name": "feed", "ack_policy": "none"}})),
                         (500, 10012, "consumer update not permitted"))
        # The same config again (a client checking it) is answered with its info, as for any consumer.
        same = self.api("CONSUMER.DURABLE.CREATE.EVENTS.cfgingest", {"stream_name": "EVENTS", "config": config})
        self.assertNotIn("error", same)
        self.assertEqual(same["name"], "cfgingest")
        self.assertNothingLost()

    def test_the_handlers_consumers_are_not_pulled(self) -> None:
        """
        A pull request to a handler's consumer is answered with a 409 and
        takes nothing: the events stay the handler's (a client pulling, then
        acking, would have kept them from their addresses).
        """
        got = []
        self.node.broker.subscribe("_INBOX.pull", lambda subject, reply, body, headers: got.append((body, headers)))
        from eventsvc.jetstream import api

        for name in ("cfgingest", "feed"):
            api.dispatch(self.node.engine, "$JS.API.CONSUMER.MSG.NEXT.EVENTS." + name, "_INBOX.pull", b'{"batch": 3}', None)
        self.assertEqual(got, [(b"", b"NATS/1.0 409 Consumer is eventsvc handler %s's, fed by the service\r\n\r\n" % name)
                               for name in (b"cfgingest", b"feed")])
        self.assertNothingLost()
        self.assertEqual(self.node.stream.consumers["cfgingest"].info()["num_waiting"], 0)

    def test_guessed_acks_do_not_count(self) -> None:
        """
        A client publishing to a handler's ack subject (explicit acks need
        only the stream sequence, which STREAM.MSG.GET shows) takes nothing
        from the handler: +ACK, +TERM and -NAK are dropped, with one
        $JS.ACK.> or with each consumer's own ack subject, and the held
        events are still the handler's to finish.
        """
        from eventsvc.jetstream.engine import JetStream

        for per_consumer_acks in (False, True):
            node = Node(self, self.mktemp(), {"cfgingest": RecordingTarget(["hold"] * 10)},
                        engine_type=JetStream, per_consumer_acks=per_consumer_acks)
            for i in range(3):
                node.publish("cfgingest", "e-%d" % i)
            consumer = node.stream.consumers["cfgingest"]
            self.assertEqual(consumer.info()["num_ack_pending"], 3)
            answers = []
            node.broker.subscribe("_INBOX.sync", lambda subject, reply, body, headers: answers.append(body))
            for seq, body in ((1, b"+ACK"), (2, b"+TERM"), (3, b"-NAK")):
                for dseq in (seq, 1, 99):
                    node.broker.publish("$JS.ACK.EVENTS.cfgingest.1.%d.%d.0.0" % (seq, dseq), body, reply="_INBOX.sync")
            node.clock.advance(1)
            info = consumer.info()
            self.assertEqual((info["num_ack_pending"], info["ack_floor"]["stream_seq"], info["num_redelivered"], answers),
                             (3, 0, 0, []))
            for held in node.targets["cfgingest"].held:
                held.callback(None)
            node.clock.advance(1)
            self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 3)
            self.assertEqual(node.targets["cfgingest"].event_ids(), ["e-0", "e-1", "e-2"])
            node.stop()

    def test_clients_acks_to_their_own_consumers_count(self) -> None:
        """The guard is the handlers' consumers' only: a client's own consumer of the log takes its acks (both shapes)."""
        from eventsvc.jetstream.engine import JetStream

        for per_consumer_acks in (False, True):
            self.acks_to_a_clients_consumer(JetStream, per_consumer_acks)

    def acks_to_a_clients_consumer(self, engine_type, per_consumer_acks: bool) -> None:
        node = Node(self, self.mktemp(), {"cfgingest": RecordingTarget(["hold"] * 10)}, engine_type=engine_type,
                    per_consumer_acks=per_consumer_acks)
        for i in range(2):
            node.publish("cfgingest", "e-%d" % i)
        got = []
        node.broker.subscribe("_INBOX.pull", lambda subject, reply, body, headers: got.append(reply))
        self.api_on(node, "CONSUMER.DURABLE.CREATE.EVENTS.audit",
                    {"stream_name": "EVENTS", "config": {"durable_name": "audit", "ack_policy": "explicit"}})
        node.broker.publish("$JS.API.CONSUMER.MSG.NEXT.EVENTS.audit", b'{"batch": 2}', reply="_INBOX.pull")
        node.clock.advance(0)
        self.assertEqual(len(got), 2)
        for reply in got:
            node.broker.publish(reply, b"+ACK")
        node.clock.advance(1)
        self.assertEqual(node.stream.consumers["audit"].info()["ack_floor"]["stream_seq"], 2)
        self.assertEqual(node.stream.consumers["cfgingest"].info()["num_ack_pending"], 2)
        node.stop()

    def api_on(self, node, subject: str, body) -> dict:
        answers = []
        node.broker.subscribe("_INBOX.api2", lambda subject, reply, body, headers: answers.append(json.loads(body)))
        node.broker.publish("$JS.API." + subject, json.dumps(body).encode(), reply="_INBOX.api2")
        node.clock.advance(0)
        return answers[-1]

    def test_clients_own_consumers_work(self) -> None:
        """A client's consumer on the events stream is made, pulled, changed and deleted as on any stream."""
        made = self.api("CONSUMER.DURABLE.CREATE.EVENTS.audit",
                        {"stream_name": "EVENTS", "config": {"durable_name": "audit", "ack_policy": "explicit"}})
        self.assertEqual(made["num_pending"], 3)
        got = []
        self.node.broker.subscribe("_INBOX.pull", lambda subject, reply, body, headers: got.append(body))
        from eventsvc.jetstream import api

        api.dispatch(self.node.engine, "$JS.API.CONSUMER.MSG.NEXT.EVENTS.audit", "_INBOX.pull", b'{"batch": 3}', None)
        self.assertEqual(got, [payload("cfgingest", "e-%d" % i) for i in range(3)])
        changed = self.api("CONSUMER.DURABLE.CREATE.EVENTS.audit",
                           {"stream_name": "EVENTS", "config": {"durable_name": "audit", "ack_policy": "explicit",
                                                                "description": "changed"}})
        self.assertEqual(changed["config"]["description"], "changed")
        self.assertEqual(self.api("CONSUMER.DELETE.EVENTS.audit"), {"type": "io.nats.jetstream.api.v1.consumer_delete_response",
                                                                    "success": True})
        self.assertNothingLost()

    def test_the_configuration_changes_it(self) -> None:
        """A restart with other [events] stream_max_age and stream_max_bytes applies them to the stream kept."""
        directory = self.node.engine.settings.store_dir
        self.assertEqual((self.node.stream.config["max_age"], self.node.stream.config["max_bytes"]), (0, -1))
        self.node.stop()
        node = Node(self, directory, {"cfgingest": RecordingTarget(), "feed": RecordingTarget()},
                    log_options={"max_age": 3600.0, "max_bytes": 1 << 30})
        self.assertEqual((node.stream.config["max_age"], node.stream.config["max_bytes"]), (3600 * 10**9, 1 << 30))
        self.assertEqual(node.stream.store.state().msgs, 3)
        node.stop()
        again = Node(self, directory, {"cfgingest": RecordingTarget(), "feed": RecordingTarget()},
                     log_options={"max_age": 3600.0, "max_bytes": 1 << 30})
        self.assertEqual(again.stream.config["max_age"], 3600 * 10**9)


class RemovedHandlerTests(SynchronousTestCase):
    """
    A handler removed from [handlers]: its consumer is deleted at the next
    start, with a line saying what it still owed (removing a handler is how
    the operator says its events need not be delivered); the events stay
    in the history, and the other handlers go on.
    """

    def setUp(self) -> None:
        from eventsvc.test.test_eventops import _logged

        self.dir = self.mktemp()
        self.lines = _logged(self)
        node = Node(self, self.dir, {"cfgingest": RecordingTarget(["hold"] * 10), "feed": RecordingTarget()})
        for i in range(3):
            node.publish("cfgingest", "c-%d" % i)
        node.publish("compliance_ingest", "f-0")
        node.clock.advance(1)
        node.stop()

    def test_its_consumer_is_deleted_saying_what_it_owed(self) -> None:
        feed = RecordingTarget()
        node = Node(self, self.dir, {"feed": feed})
        self.assertEqual(sorted(node.stream.consumers), ["feed"])
        self.assertIn("stream EVENTS: handler cfgingest is no longer in [handlers]; its consumer is deleted, and the 3 "
                      "events it still owed (sequences 1-3) will not be delivered to it (they stay in the stream's "
                      "history)", "\n".join(self.lines))
        self.assertEqual(node.stream.store.state().msgs, 4)
        self.assertEqual(owed_in_stream(node.stream), {})
        node.publish("compliance_ingest", "f-1")
        self.assertEqual(feed.event_ids(), ["f-1"])
        node.stop()
        # Gone for good: the next start finds nothing of it, and says nothing more.
        del self.lines[:]
        again = Node(self, self.dir, {"feed": RecordingTarget()})
        self.assertEqual(sorted(again.stream.consumers), ["feed"])
        self.assertEqual([line for line in self.lines if "cfgingest" in line], [])
        self.assertEqual(sorted(read_owed(self.dir, "EVENTS").handlers), ["feed"])

    def test_written_again_it_starts_from_the_end(self) -> None:
        Node(self, self.dir, {"feed": RecordingTarget()}).stop()
        cfgingest = RecordingTarget()
        node = Node(self, self.dir, {"cfgingest": cfgingest, "feed": RecordingTarget()})
        self.assertEqual(cfgingest.event_ids(), [])
        node.publish("cfgingest", "c-9")
        self.assertEqual(cfgingest.event_ids(), ["c-9"])

    def test_one_that_owed_nothing(self) -> None:
        node = Node(self, self.dir, {"cfgingest": RecordingTarget(["hold"] * 10)})
        self.assertIn("stream EVENTS: handler feed is no longer in [handlers]; its consumer, which owed nothing, is "
                      "deleted", "\n".join(self.lines))
        self.assertEqual(sorted(node.stream.consumers), ["cfgingest"])

    def test_clients_consumers_stay(self) -> None:
        """Only the handlers' consumers are the service's to delete: a client's own consumer of the log stays."""
        from eventsvc.jetstream import consumer_api
        from eventsvc.jetstream.consumer import parse_config

        node = Node(self, self.dir, {"cfgingest": RecordingTarget(), "feed": RecordingTarget()})
        consumer_api.create_consumer(node.engine, node.stream,
                                     parse_config({"durable_name": "audit", "ack_policy": "explicit"})).start()
        node.stop()
        node = Node(self, self.dir, {"feed": RecordingTarget()})
        self.assertEqual(sorted(node.stream.consumers), ["audit", "feed"])


class ReadOwedTests(SynchronousTestCase):
    """
    L{read_owed}, what C{eventsvc spool stats} says of the events stream:
    per handler what it owes, read from the files with the service
    stopped or beside it running, writing nothing.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        # cfgingest holds what it gets (its target is down); feed delivers.
        self.node = Node(self, self.dir, {"cfgingest": RecordingTarget(["hold"] * 10), "feed": RecordingTarget()})
        for i in range(3):
            self.node.publish("cfgingest", "c-%d" % i)
        self.node.publish("compliance_ingest", "f-0")
        self.node.clock.advance(1)  # (the consumers' records are written)

    def files(self) -> dict:
        """Every file under the store: its size, bytes and mtime."""
        found = {}
        for folder, _, names in os.walk(self.dir):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    found[path] = (os.stat(path).st_mtime_ns, f.read())
        return found

    def test_beside_the_running_service(self) -> None:
        """Read while the engine holds the store: the counts, the oldest owed, and not one byte written or file made."""
        before = self.files()
        found = read_owed(self.dir, "EVENTS")
        self.assertEqual(self.files(), before)
        self.assertEqual((found.messages, found.first_seq, found.last_seq, found.events_owed), (4, 1, 4, 3))
        self.assertEqual(sorted(found.handlers), ["cfgingest", "feed"])
        self.assertEqual(found.handlers["feed"], {"owed": 0, "oldest": 0.0, "oldest_event": ""})
        self.assertEqual((found.handlers["cfgingest"]["owed"], found.handlers["cfgingest"]["oldest_event"]), (3, "c-0"))
        self.assertEqual(found.handlers["cfgingest"]["oldest"], self.node.stream.store.load(1).ts / 1e9)
        # The running side is undisturbed: it finishes, and the next reading says so.
        self.node.targets["cfgingest"].held[0].callback(None)
        self.node.clock.advance(1)
        self.assertEqual(read_owed(self.dir, "EVENTS").handlers["cfgingest"]["owed"], 2)
        self.assertEqual(owed_in_stream(self.node.stream), {"cfgingest": 2})

    def test_stopped_and_after_a_crash(self) -> None:
        """As the next start would owe them: after a clean stop, and after kill -9 (what the OS had)."""
        self.node.stop()
        self.assertEqual(read_owed(self.dir, "EVENTS").handlers["cfgingest"]["owed"], 3)
        node = Node(self, self.dir, {"cfgingest": RecordingTarget(["hold"] * 10), "feed": RecordingTarget()})
        self.assertEqual(sorted(node.targets["cfgingest"].event_ids()), ["c-0", "c-1", "c-2"])
        node.publish("cfgingest", "c-3")
        node.crash()
        found = read_owed(self.dir, "EVENTS")
        self.assertEqual((found.handlers["cfgingest"]["owed"], found.events_owed), (4, 4))

    def test_clients_consumers_are_not_handlers(self) -> None:
        """A client's own consumer of the log is not listed, whatever it has pending."""
        from eventsvc.jetstream import consumer_api
        from eventsvc.jetstream.consumer import parse_config

        consumer_api.create_consumer(self.node.engine, self.node.stream,
                                     parse_config({"durable_name": "audit", "ack_policy": "explicit"})).start()
        self.node.clock.advance(1)
        self.assertEqual(sorted(read_owed(self.dir, "EVENTS").handlers), ["cfgingest", "feed"])

    def test_never_made(self) -> None:
        self.assertIsNone(read_owed(self.mktemp(), "EVENTS"))


class ConfigTests(SynchronousTestCase):
    """[events] log, stream, stream_max_age and stream_max_bytes."""

    def load(self, text: str):
        from eventsvc import config

        path = self.mktemp() + ".toml"
        with open(path, "w") as f:
            f.write(text)
        return path, config.load(path)

    def test_defaults(self) -> None:
        _, c = self.load('[service]\nport = 0\n')
        self.assertEqual((c.events.log, c.events.stream, c.events.stream_max_age, c.events.stream_max_bytes),
                         ("stream", "EVENTS", 604800.0, -1))

    def test_bad_values_name_the_key(self) -> None:
        from eventsvc.config import ConfigError

        for text, words in [
            ('log = "disk"', '[events] log: must be "stream" (a JetStream stream) or "spool"'),
            ('stream = "MY.EVENTS"', "[events] stream: must be a stream name"),
            ("stream_max_age = -1", "[events] stream_max_age: must be 0 (keep for ever) or more seconds"),
            ("stream_max_bytes = 0", "[events] stream_max_bytes: must be -1 (no limit) or a positive number of bytes"),
        ]:
            with self.assertRaises(ConfigError) as caught:
                self.load("[service]\nport = 0\n[events]\n" + text + "\n")
            self.assertIn(words, str(caught.exception))

    def test_history_shorter_than_retries_is_a_warning(self) -> None:
        from eventsvc import config

        path, c = self.load('[service]\nport = 0\n[events]\nmax_age = 0\n')
        self.assertIn(
            "{}: [events] stream_max_age (604800s) is shorter than the time a handler may retry an event ([events] "
            "max_age: for ever)".format(path), "\n".join(config.warnings(c)))
        _, c = self.load('[service]\nport = 0\n')
        self.assertNotIn("stream_max_age", "\n".join(config.warnings(c)))


class DeliveredRunTests(SynchronousTestCase):
    def test_a_run_of_deliveries_is_one_record_and_reads_back(self) -> None:
        """FileConsumerStore.update_delivered_run: as many update_delivered calls, in one record."""
        from eventsvc.jetstream.filestore import FileConsumerStore
        from eventsvc.jetstream.memstore import MemoryConsumerStore

        clock = Clock()
        path = self.mktemp()
        store = FileConsumerStore(path, clock)
        model = MemoryConsumerStore()
        for s in (store, model):
            s.update_delivered_run(1, [3, 5, 9], 1000)
            s.update_acks(0, 0, [5])
        clock.advance(0)
        size = os.path.getsize(os.path.join(path, "consumer.log"))
        store.close()
        again = FileConsumerStore(path, clock)
        self.assertEqual(again.load(), model.load())
        self.assertEqual(again.load().pending, {3: (1, 1000), 9: (3, 1000)})
        self.assertEqual((again.load().delivered_consumer, again.load().delivered_stream), (3, 9))
        # (One record of the run: 8 + 17 + 3 * 8 bytes, then the ack's.)
        self.assertLess(size, 200)
        again.close()

    def test_a_held_record_is_written_at_once_for_a_waiter(self) -> None:
        """FileConsumerStore.hold: a record waits for its write, unless someone waits on it (an AckSync)."""
        from eventsvc.jetstream.filestore import FileConsumerStore

        clock = Clock()
        path = self.mktemp()
        store = FileConsumerStore(path, clock)
        store.hold = 0.2
        size = os.path.getsize(os.path.join(path, "consumer.log"))
        store.update_delivered_run(1, [1, 2], 1000)
        clock.advance(0.1)
        self.assertEqual(os.path.getsize(os.path.join(path, "consumer.log")), size)
        written = []
        store.when_durable(lambda: written.append(True))
        clock.advance(0)
        self.assertEqual(written, [True])
        after = os.path.getsize(os.path.join(path, "consumer.log"))
        self.assertGreater(after, size)
        clock.advance(0.2)
        self.assertEqual(os.path.getsize(os.path.join(path, "consumer.log")), after)
        store.close()

    def test_ack_floors_with_a_backlog_acked_out_of_order(self) -> None:
        """The consumer's and its store's ack floors follow the oldest pending, however the acks come."""
        node = Node(self, self.mktemp(), {"cfgingest": RecordingTarget(["hold"] * 10)})
        for i in range(10):
            node.publish("cfgingest", "e-%d" % i)
        consumer = node.stream.consumers["cfgingest"]
        floors = []
        for seq in (2, 3, 1, 5, 4, 10, 6, 7, 8, 9):
            consumer.ack_in_process([seq])
            floors.append(consumer.info()["ack_floor"]["stream_seq"])
            state = consumer.store.load()
            self.assertEqual((state.ack_floor_stream, sorted(state.pending)), (floors[-1], sorted(consumer.pending)))
        self.assertEqual(floors, [0, 0, 3, 3, 5, 5, 6, 7, 8, 10])
