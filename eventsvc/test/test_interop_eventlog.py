"""
The event log on a JetStream stream, seen by a NATS client: a real
eventsvc process, events published with acknowledgements, and nats-py
reading the history with a durable consumer of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from eventsvc.test import process
from eventsvc.test.eventsamples import payload
from eventsvc.test.test_interop_events import Target, wait_for

try:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
except ImportError:  # pragma: no cover
    nats = None


class ReplayTests(TestCase):
    """Any NATS consumer can read the events' history."""

    timeout = 120

    def setUp(self):
        if nats is None:
            process.require("nats-py")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        # eventsvc's port is the kernel's (read back at each start); the
        # handlers' target is held, refusing, until a test serves it, so no
        # test running beside can take it first.
        self.port = 0
        self.held = process.closed_port(self)
        self.target_port = self.held.port

    def start(self, jetstream: bool = True, log: str = "stream") -> process.ServerProcess:
        base = "http://127.0.0.1:%d" % self.target_port
        config = process.write_config(
            os.path.join(self.dir, "patch.toml"),
            f"""
[service]
host = "127.0.0.1"
port = 0
data_dir = "data"
[handlers]
feed = "{base}/feed"
cfgingest = "{base}/cfgingest"
event_feed = "{base}/event_feed"
[events]
retry_initial = 0.05
retry_max = 0.5
log = "{log}"
{'[jetstream]' if jetstream else ''}
""",
        )
        server_ = process.eventsvc(config)
        self.port = server_.start()
        self.addCleanup(server_.stop)
        return server_

    def publish(self, ids):
        async def scenario():
            nc = await nats.connect("nats://127.0.0.1:%d" % self.port)
            acks = []
            for i, event_id in enumerate(ids):
                name = ("cfgingest", "compliance_ingest", "scanJobCreated")[i % 3]
                reply = await nc.request("event." + name, payload(name, event_id), timeout=5)
                acks.append(json.loads(reply.data))
            await nc.close()
            return acks

        return threads.deferToThread(lambda: asyncio.run(scenario()))

    def replay(self, durable: str):
        """nats-py: a durable pull consumer of EVENTS from sequence 1, fetching until it is drained."""

        async def scenario():
            nc = await nats.connect("nats://127.0.0.1:%d" % self.port)
            js = nc.jetstream()
            info = await js.stream_info("EVENTS")
            sub = await js.pull_subscribe(
                "event.>", durable=durable, stream="EVENTS",
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT),
            )
            seen = []
            while len(seen) < info.state.messages:
                for msg in await sub.fetch(50, timeout=5):
                    seen.append((msg.metadata.sequence.stream, msg.subject, json.loads(msg.data)["event_id"]))
                    await msg.ack()
            await nc.close()
            return info.config.subjects, seen

        return threads.deferToThread(lambda: asyncio.run(scenario()))

    @defer.inlineCallbacks
    def test_a_durable_consumer_replays_every_event_from_sequence_1(self):
        target = Target()
        from twisted.internet import reactor
        from twisted.web import server

        self.held.release()
        listening = reactor.listenTCP(self.target_port, server.Site(target), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        first = self.start()
        ids = ["r-%03d" % i for i in range(150)]
        acks = yield self.publish(ids[:100])
        self.assertEqual([a["success"] for a in acks], [True] * 100)
        # kill -9, then more: the history runs on without a gap.
        first.stop(signal.SIGKILL)
        self.start()
        acks = yield self.publish(ids[100:])
        self.assertEqual([a["success"] for a in acks], [True] * 50)
        yield wait_for(lambda: sum(len(v) for v in target.seen.values()) >= 150)
        subjects, seen = yield self.replay("replayer")
        self.assertEqual(subjects, ["event.>"])
        self.assertEqual([s for s, _, _ in seen], list(range(1, 151)))
        self.assertEqual([e for _, _, e in seen], ids)
        self.assertEqual(seen[0][1], "event.cfgingest")
        self.assertEqual(seen[1][1], "event.compliance_ingest")
        # The handlers delivered every event (at least once: the kill may repeat a few).
        self.assertEqual(sorted(set(sum(target.seen.values(), []))), ids)

    @defer.inlineCallbacks
    def test_a_spool_is_carried_over_on_the_first_start(self):
        """Events a spool owes (its target down) are delivered by the next start on the stream, and the spool goes."""
        from eventsvc.events.spool import segment_paths
        from twisted.internet import reactor
        from twisted.web import server

        first = self.start(log="spool")
        ids = ["s-%02d" % i for i in range(30)]
        acks = yield self.publish(ids)
        self.assertEqual([a["success"] for a in acks], [True] * 30)
        first.stop()
        data = os.path.join(self.dir, "data")
        self.assertNotEqual(segment_paths(data), [])
        target = Target()
        self.held.release()
        listening = reactor.listenTCP(self.target_port, server.Site(target), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        second = self.start()
        yield wait_for(lambda: sum(len(v) for v in target.seen.values()) >= 30)
        self.assertEqual(sorted(sum(target.seen.values(), [])), ids)
        second.wait_output("30 owed events carried over into stream EVENTS; spool files deleted")
        self.assertEqual(segment_paths(data), [])
        # The history holds them, each once, and new events follow.
        acks = yield self.publish(["after"])
        subjects, seen = yield self.replay("audit")
        self.assertEqual([e for _, _, e in seen], ids + ["after"])

    @defer.inlineCallbacks
    def test_without_jetstream_the_history_is_kept_but_not_offered(self):
        """Without [jetstream] the stream is there (under data_dir/jetstream), but $JS.API has no responders."""
        self.start(jetstream=False)
        acks = yield self.publish(["n-1"])
        self.assertTrue(acks[0]["success"])

        async def scenario():
            nc = await nats.connect("nats://127.0.0.1:%d" % self.port)
            try:
                await nc.request("$JS.API.STREAM.INFO.EVENTS", b"", timeout=2)
            except Exception as e:
                return type(e).__name__
            finally:
                await nc.close()
            return "answered"

        outcome = yield threads.deferToThread(lambda: asyncio.run(scenario()))
        self.assertEqual(outcome, "NoRespondersError")
        self.assertTrue(os.path.isdir(os.path.join(self.dir, "data", "jetstream", "streams", "EVENTS")))

    @defer.inlineCallbacks
    def test_clients_cannot_purge_or_delete_the_log(self):
        """
        nats-py's purge, delete and update of EVENTS and delete of a
        handler's consumer are refused with an APIError naming [events];
        every acknowledged event is still delivered afterwards, and a
        client's own consumer on EVENTS is made and deleted as usual.
        """
        from twisted.internet import reactor
        from twisted.web import server

        self.start()
        ids = ["g-%02d" % i for i in range(9)]
        acks = yield self.publish(ids)
        self.assertEqual([a["success"] for a in acks], [True] * 9)

        async def scenario():
            from nats.js.api import StreamConfig
            from nats.js.errors import APIError

            nc = await nats.connect("nats://127.0.0.1:%d" % self.port)
            js = nc.jetstream()
            refused = {}
            attempts = {
                "purge": lambda: js.purge_stream("EVENTS"),
                "delete_msg": lambda: js.delete_msg("EVENTS", 1),
                "update": lambda: js.update_stream(StreamConfig(name="EVENTS", subjects=["event.>"], max_msgs=1)),
                "delete_stream": lambda: js.delete_stream("EVENTS"),
                "delete_consumer": lambda: js.delete_consumer("EVENTS", "cfgingest"),
            }
            for name, attempt in attempts.items():
                try:
                    await attempt()
                    refused[name] = "done"
                except APIError as e:
                    refused[name] = (e.code, e.err_code, e.description)
            mine = await js.add_consumer("EVENTS", ConsumerConfig(durable_name="mine", ack_policy=AckPolicy.EXPLICIT))
            deleted = await js.delete_consumer("EVENTS", "mine")
            info = await js.stream_info("EVENTS")
            consumers = sorted([c.name for c in await js.consumers_info("EVENTS")])
            await nc.close()
            return refused, mine.num_pending, deleted, info.state.messages, consumers

        refused, pending, deleted, messages, consumers = yield threads.deferToThread(lambda: asyncio.run(scenario()))
        self.assertEqual({name: answer[:2] for name, answer in refused.items()}, {
            "purge": (500, 10110), "delete_msg": (500, 10057), "update": (500, 10069),
            "delete_stream": (500, 10050), "delete_consumer": (500, 10051),
        })
        self.assertIn("stream purge not permitted: stream EVENTS is eventsvc's event log; it is configured by [events]",
                      refused["purge"][2])
        self.assertIn("consumer cfgingest of stream EVENTS is eventsvc handler cfgingest's progress", refused["delete_consumer"][2])
        self.assertEqual((pending, deleted, messages), (9, True, 9))
        self.assertEqual(consumers, ["cfgingest", "event_feed", "feed"])
        # The handlers' targets come up: every acknowledged event is delivered.
        target = Target()
        self.held.release()
        listening = reactor.listenTCP(self.target_port, server.Site(target), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        yield wait_for(lambda: set(sum(target.seen.values(), [])) >= set(ids))
        self.assertEqual(sorted(set(sum(target.seen.values(), []))), ids)
