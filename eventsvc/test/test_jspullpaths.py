"""
A pull round's messages go to the broker together
(L{eventsvc.nats.server.Broker.deliver_as_many}) and a consumer's acks come
as bytes (L{eventsvc.nats.server.Broker.subscribe_raw}): what a client sees
when something else shares those subjects, and when nobody takes a batch.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Dict, List, Tuple, cast

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.jetstream import consumer as consumer_module
from eventsvc.jetstream.consumer import Consumer, check_config
from eventsvc.jetstream.engine import JetStreamSettings
from eventsvc.jetstream.memstore import MemoryConsumerStore
from eventsvc.nats.interfaces import Identity
from eventsvc.security.permissions import Permissions
from eventsvc.test.helpers import Harness
from eventsvc.test.test_jsconsumer import BASE, SECOND, FakeEngine, FakeStream


class PullPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.harness = Harness()
        self.engine = FakeEngine(self.harness.broker, self.harness.clock)
        # Each consumer's own raw ack subscription, as the real engine runs it.
        self.engine.ack_router.unsubscribe()
        self.engine.settings = JetStreamSettings()
        self.engine.answers_api = True
        self.stream = FakeStream(self.engine)
        self.client = self.harness.connect(b'CONNECT {"verbose":false,"headers":true}\r\n')

    def consumer(self, **raw: object) -> Consumer:
        config = check_config(self.stream, dict(raw))
        consumer = Consumer(self.stream, str(raw["durable_name"]), config, MemoryConsumerStore(), self.engine.now())
        self.stream.attach(consumer)
        consumer.start()
        self.addCleanup(consumer.stop)
        return consumer

    def denied_inbox(self) -> Any:
        """
        The test's client on C{_INBOX.p.*}, and another client, returned,
        on C{_INBOX.d.*} but denied C{orders.>} (what the messages show).
        """
        self.client.send(b"SUB _INBOX.p.* 3\r\nPING\r\n")
        self.client.received()
        denied = self.harness.connect(b'CONNECT {"verbose":false,"headers":true}\r\n')
        denied.proto.identity_changed(Identity("d", Permissions(subscribe_deny=["orders.>"])))
        denied.send(b"SUB _INBOX.d.* 1\r\nPING\r\n")
        self.assertEqual(denied.received(), b"PONG\r\n")
        return denied

    def test_acks_beside_a_client_on_all_acks(self) -> None:
        """A client subscribed to C{$JS.ACK.>} sees the acks, and the consumer still counts each, with or without headers."""
        self.client.send(b"SUB _INBOX.p.* 3\r\nSUB $JS.ACK.> 4\r\nPING\r\n")
        self.client.received()
        consumer = self.consumer(durable_name="P", ack_policy="explicit")
        for i in range(3):
            self.stream.publish("orders.new", b"m%d" % i)
        consumer.next_request("_INBOX.p.1", b'{"batch": 3, "no_wait": true}')
        self.client.received()
        self.assertEqual(consumer.info()["num_ack_pending"], 3)
        self.client.send(b"PUB $JS.ACK.ORDERS.P.1.1.1.%d.2 4\r\n+ACK\r\n" % BASE)
        self.client.send(b"HPUB $JS.ACK.ORDERS.P.1.2.2.%d.1 _INBOX.r 18 22\r\nNATS/1.0\r\nA: b\r\n\r\n+ACK\r\n" % BASE)
        self.client.send(b"PING\r\n")
        seen = self.client.received()
        self.assertIn(b"MSG $JS.ACK.ORDERS.P.1.1.1.%d.2 4 4\r\n+ACK\r\n" % BASE, seen)
        self.assertIn(b"HMSG $JS.ACK.ORDERS.P.1.2.2.%d.1 4 _INBOX.r 18 22\r\n" % BASE, seen)
        info = consumer.info()
        self.assertEqual((info["num_ack_pending"], info["ack_floor"]["stream_seq"]), (1, 2))

    def test_batch_nobody_took_is_redelivered(self) -> None:
        """
        A pull request whose inbox's only subscriber may not receive what
        the messages show (subscribe_deny orders.>): nobody took them, and
        they go to the next request at once, not after ack_wait.
        """
        denied = self.denied_inbox()
        consumer = self.consumer(durable_name="P", ack_policy="explicit", ack_wait=30 * 10 ** 9)
        for i in range(2):
            self.stream.publish("orders.new", b"m%d" % i)
        consumer.next_request("_INBOX.d.1", b'{"batch": 2, "no_wait": true}')
        self.harness.clock.advance(0)
        self.assertNotIn(b"orders.new", denied.received())
        consumer.next_request("_INBOX.p.2", b'{"batch": 2, "no_wait": true}')
        self.harness.clock.advance(0)
        got = self.client.received()
        self.assertIn(b"MSG orders.new 3 $JS.ACK.ORDERS.P.2.1.", got)
        self.assertIn(b"MSG orders.new 3 $JS.ACK.ORDERS.P.2.2.", got)

    def test_a_denied_inbox_does_not_use_up_max_deliver(self) -> None:
        """
        A request of 5 whose inbox's only subscriber may not receive
        orders.> (one message stored, max_deliver 2): the message reached
        nobody once, and the next request gets it. It went to the same
        request round after round, a delivery counted each time, until
        max_deliver dropped it and the next request got nothing.
        """
        denied = self.denied_inbox()
        consumer = self.consumer(durable_name="P", ack_policy="explicit", max_deliver=2, ack_wait=30 * 10 ** 9)
        self.stream.publish("orders.new", b"m0")
        consumer.next_request("_INBOX.d.1", b'{"batch": 5, "expires": 10000000000}')
        self.harness.clock.advance(0)
        # (It hears the request's end: a 408 is no message on orders.>.)
        seen = denied.received()
        self.assertNotIn(b"orders.new", seen)
        self.assertIn(b"HMSG _INBOX.d.1 1 ", seen)
        self.assertIn(b"NATS/1.0 408 Request Timeout\r\n", seen)
        info = consumer.info()
        self.assertEqual((info["num_ack_pending"], info["num_redelivered"], info["num_waiting"]), (1, 0, 0), info)
        consumer.next_request("_INBOX.p.2", b'{"batch": 1, "no_wait": true}')
        self.harness.clock.advance(0)
        self.assertIn(b"MSG orders.new 3 $JS.ACK.ORDERS.P.2.1.", self.client.received())

    def test_an_inbox_the_client_may_not_subscribe_to(self) -> None:
        """
        A client that may subscribe to C{_INBOX.mine.>} only asks on
        C{_INBOX.other.1}: its SUB is refused, nobody hears the request,
        and the message waits for the next request, a first delivery (as
        nats-server, which drops a request without interest unserved).
        """
        self.client.send(b"SUB _INBOX.p.* 3\r\nPING\r\n")
        self.client.received()
        limited = self.harness.connect(b'CONNECT {"verbose":false,"headers":true}\r\n')
        limited.proto.identity_changed(Identity("l", Permissions(subscribe_allow=["_INBOX.mine.>"])))
        limited.send(b"SUB _INBOX.other.* 1\r\nPING\r\n")
        self.assertIn(b"-ERR 'Permissions Violation for Subscription to \"_INBOX.other.*\"'", limited.received())
        consumer = self.consumer(durable_name="P", ack_policy="explicit", max_deliver=1)
        self.stream.publish("orders.new", b"m0")
        consumer.next_request("_INBOX.other.1", b'{"batch": 5, "expires": 10000000000}')
        self.harness.clock.advance(0)
        self.assertEqual(limited.received(), b"")
        info = consumer.info()
        self.assertEqual((info["num_ack_pending"], info["num_pending"], info["num_waiting"]), (0, 1, 0), info)
        consumer.next_request("_INBOX.p.2", b'{"batch": 1, "no_wait": true}')
        self.harness.clock.advance(0)
        self.assertIn(b"MSG orders.new 3 $JS.ACK.ORDERS.P.1.1.1.", self.client.received())

    def test_a_subscriber_denied_some_of_a_batch(self) -> None:
        """
        A request of 10 whose inbox's subscriber may not receive
        C{orders.secret} (four messages: new, secret, new, secret): it gets
        the two it may, then a 408 ends the request, and the next request
        gets the other two at once.  Each of those was sent twice (counted):
        in the round with the others, and in the next, which reached nobody
        and so ended the request.  nats-server 2.9 does the same for a
        message a subscriber may not receive (C{didNotDeliver}: redelivered
        at once, to the same request while it waits), round after round
        until the request's batch is used up: on the wire, ten deliveries
        for these four, and the next request saw delivery count 5.
        """
        self.client.send(b"SUB _INBOX.p.* 3\r\nPING\r\n")
        self.client.received()
        denied = self.harness.connect(b'CONNECT {"verbose":false,"headers":true}\r\n')
        denied.proto.identity_changed(Identity("d", Permissions(subscribe_deny=["orders.secret"])))
        denied.send(b"SUB _INBOX.d.* 1\r\nPING\r\n")
        self.assertEqual(denied.received(), b"PONG\r\n")
        consumer = self.consumer(durable_name="P", ack_policy="explicit", ack_wait=30 * 10 ** 9)
        for subject in ("orders.new", "orders.secret", "orders.new", "orders.secret"):
            self.stream.publish(subject, b"m")
        consumer.next_request("_INBOX.d.1", b'{"batch": 10, "expires": 10000000000}')
        self.harness.clock.advance(0)
        seen = denied.received()
        self.assertEqual(re.findall(rb"MSG (\S+) 1 \$JS\.ACK\.ORDERS\.P\.(\d+)\.(\d+)\.", seen), [
            (b"orders.new", b"1", b"1"), (b"orders.new", b"1", b"3"),
        ])
        self.assertIn(b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 4\r\n", seen)
        info = consumer.info()
        self.assertEqual(
            (info["delivered"]["consumer_seq"], info["num_ack_pending"], info["num_redelivered"], info["num_waiting"]),
            (6, 4, 2, 0), info,
        )
        consumer.next_request("_INBOX.p.2", b'{"batch": 10, "no_wait": true}')
        self.harness.clock.advance(0)
        got = re.findall(rb"MSG (\S+) 3 \$JS\.ACK\.ORDERS\.P\.(\d+)\.(\d+)\.", self.client.received())
        self.assertEqual(got[:2], [(b"orders.secret", b"3", b"2"), (b"orders.secret", b"3", b"4")])


class PullRunTests(SynchronousTestCase):
    """
    A pull request's first deliveries taken in one go
    (L{Consumer._pull_run}): what the client sees and what the consumer
    store keeps are those of a message at a time.
    """

    def setUp(self) -> None:
        PullPathTests.setUp(cast(Any, self))
        self.client.send(b"SUB _INBOX.p.* 3\r\nPING\r\n")
        self.client.received()

    def consumer(self, **raw: object) -> Consumer:
        return PullPathTests.consumer(cast(Any, self), **raw)

    def replies(self) -> List[Tuple[int, int, int]]:
        """(stream seq, consumer seq, pending) of each message's ack reply the client got, in order."""
        self.harness.clock.advance(0)
        return [(int(s), int(d), int(p)) for s, d, p in re.findall(
            rb"MSG orders\.\S+ 3 \$JS\.ACK\.ORDERS\.P\.1\.(\d+)\.(\d+)\.\d+\.(\d+) ", self.client.received())]

    def test_a_run_passes_over_messages_gone(self) -> None:
        """Messages deleted from the middle of the stream are passed over; the consumer sequences and pending counts go on without a gap."""
        consumer = self.consumer(durable_name="P", ack_policy="explicit")
        for i in range(6):
            self.stream.publish("orders.new", b"m%d" % i)
        self.stream.store.remove(2)
        self.stream.store.remove(4)
        consumer.next_request("_INBOX.p.1", b'{"batch": 10, "expires": 5000000000}')
        self.assertEqual(self.replies(), [(1, 1, 3), (3, 2, 2), (5, 3, 1), (6, 4, 0)])
        self.stream.publish("orders.new", b"m6")
        self.assertEqual(self.replies(), [(7, 5, 0)])
        self.assertEqual(sorted(consumer.store.load().pending), [1, 3, 5, 6, 7])

    def test_a_run_stops_at_max_ack_pending(self) -> None:
        """A fetch larger than max_ack_pending gets that many; an ack lets the next one go to the same request."""
        consumer = self.consumer(durable_name="P", ack_policy="explicit", max_ack_pending=2)
        for i in range(5):
            self.stream.publish("orders.new", b"m%d" % i)
        consumer.next_request("_INBOX.p.1", b'{"batch": 5, "expires": 5000000000}')
        self.assertEqual(self.replies(), [(1, 1, 4), (2, 2, 3)])
        self.client.send(b"PUB $JS.ACK.ORDERS.P.1.1.1.%d.4 4\r\n+ACK\r\n" % BASE)
        self.assertEqual(self.replies(), [(3, 3, 2)])
        state = consumer.store.load()
        self.assertEqual((state.delivered_stream, state.ack_floor_stream, sorted(state.pending)), (3, 1, [2, 3]))

    def test_a_run_keeps_to_the_filter_when_the_stream_widens(self) -> None:
        """
        A filter naming the stream's only subject (the store is not asked
        to filter): after the stream takes a second subject, its messages
        are not delivered.
        """
        self.stream.config["subjects"] = ["orders.new"]
        consumer = self.consumer(durable_name="P", ack_policy="explicit", filter_subject="orders.new")
        self.stream.config["subjects"] = ["orders.new", "orders.old"]
        for subject in ("orders.new", "orders.old", "orders.new", "orders.old", "orders.new"):
            self.stream.publish(subject, b"m")
        consumer.next_request("_INBOX.p.1", b'{"batch": 5, "expires": 5000000000}')
        self.assertEqual([seq for seq, _, _ in self.replies()], [1, 3, 5])
        self.assertEqual(consumer.info()["num_ack_pending"], 3)

    def test_two_waiting_requests_take_turns(self) -> None:
        """With two requests waiting, messages alternate between them, as nats-server's wait queue rotates."""
        self.client.send(b"SUB _INBOX.q.a 5\r\nSUB _INBOX.q.b 6\r\nPING\r\n")
        self.client.received()
        consumer = self.consumer(durable_name="P", ack_policy="explicit")
        consumer.next_request("_INBOX.q.a", b'{"batch": 2, "expires": 5000000000}')
        consumer.next_request("_INBOX.q.b", b'{"batch": 2, "expires": 5000000000}')
        for i in range(4):
            self.stream.publish("orders.new", b"m%d" % i)
        self.harness.clock.advance(0)
        got = re.findall(rb"MSG orders\.new (\d) \$JS\.ACK\.ORDERS\.P\.1\.(\d)\.", self.client.received())
        self.assertEqual(got, [(b"5", b"1"), (b"6", b"2"), (b"5", b"3"), (b"6", b"4")])
        self.assertEqual(len(consumer.waiting), 0)


class PullRunAgainstLoopTests(SynchronousTestCase):
    """
    L{Consumer._pull_run} against the loop it stands in for: the same
    random traffic (publishes on two subjects, pull requests with
    C{no_wait}, C{expires}, heartbeats and C{max_bytes}, every kind of ack
    with and without a reply, malformed ones among them, messages removed,
    the stream purged, time passing), once with runs and once without,
    must show the client the same bytes and leave the consumer and its
    store in the same state, whatever the consumer's ack policy,
    C{max_ack_pending}, C{max_deliver} and filter (one the store is not
    given among them).
    """

    BODIES = (b"+ACK", b"+ACK", b"", b"-NAK", b"+WPI", b"+TERM", b"+ACK xyz", b'-NAK {"delay":1000000000}', b"+NXT")

    def play(self, seed: int, runs: bool, kept_replies: bool = True) -> List[Any]:
        rnd = random.Random(seed)
        if not runs:
            self.patch(Consumer, "_pull_run", lambda consumer, room, now: 0)
        harness = Harness()
        engine = FakeEngine(harness.broker, harness.clock)
        engine.ack_router.unsubscribe()
        engine.settings = JetStreamSettings()
        engine.answers_api = True
        stream = FakeStream(engine)
        client = harness.connect(b'CONNECT {"verbose":false,"headers":true}\r\n')
        client.send(b"SUB _INBOX.p.* 3\r\nPING\r\n")
        client.received()
        raw: Dict[str, Any] = {"durable_name": "P", "ack_policy": rnd.choice(["explicit", "all"]), "ack_wait": rnd.choice([1, 3]) * SECOND}
        if rnd.random() < 0.5:
            raw["max_ack_pending"] = rnd.randint(1, 6)
        if rnd.random() < 0.3:
            raw["max_deliver"] = rnd.randint(1, 3)
        if rnd.random() < 0.3:
            raw["filter_subject"] = rnd.choice(["orders.new", "orders.*"])
        narrow = raw.get("filter_subject") == "orders.new" and rnd.random() < 0.5
        if narrow:
            # (Its filter names the stream's only subject: the store is not
            # asked to filter, and the stream takes another subject next.)
            stream.config["subjects"] = ["orders.new"]
        consumer = Consumer(stream, "P", check_config(stream, dict(raw)), MemoryConsumerStore(), engine.now())
        stream.config["subjects"] = ["orders.>"]
        stream.attach(consumer)
        consumer.start()
        if not kept_replies:
            # (Every ack's subject parsed: L{Consumer._replies} stands in for that.)
            consumer._replies = None
        self.addCleanup(consumer.stop)
        seen: List[Any] = []

        def advised(subject: str, reply: Any, payload: bytes, headers: Any) -> None:
            # (A NAK's or TERM's advisory names the delivery count; its id is random.)
            body = json.loads(payload)
            del body["id"]
            seen.append((subject, body))

        self.addCleanup(harness.broker.subscribe("$JS.EVENT.ADVISORY.>", advised).unsubscribe)
        replies: List[bytes] = []
        for step in range(60):
            op = rnd.random()
            if op < 0.3:
                stream.publish(rnd.choice(["orders.new", "orders.old"]), b"m%d" % step)
            elif op < 0.45:
                request: Dict[str, Any] = {"batch": rnd.randint(1, 8)}
                kind = rnd.random()
                if kind < 0.3:
                    request["no_wait"] = True
                elif kind < 0.8:
                    request["expires"] = rnd.choice([1, 2, 5]) * SECOND
                if rnd.random() < 0.2:
                    request["idle_heartbeat"] = SECOND // 2
                    request.setdefault("expires", 5 * SECOND)
                if rnd.random() < 0.1:
                    request["max_bytes"] = rnd.randint(50, 400)
                consumer.next_request("_INBOX.p.%d" % step, json.dumps(request).encode())
            elif op < 0.65 and replies:
                body = rnd.choice(self.BODIES)
                reply = b" _INBOX.p.ack" if rnd.random() < 0.2 else b""
                client.send(b"PUB %s%s %d\r\n%s\r\n" % (rnd.choice(replies), reply, len(body), body))
            elif op < 0.72:
                state = stream.store.state()
                if state.last_seq >= state.first_seq:
                    stream.store.remove(rnd.randint(state.first_seq, state.last_seq))
            elif op < 0.75:
                stream.store.purge()
                consumer.purged(stream.store.state().first_seq)
            else:
                harness.clock.advance(rnd.choice([0, 0.3, 1.1]))
            harness.clock.advance(0)
            got = client.received()
            seen.append(got)
            replies += re.findall(rb"(\$JS\.ACK\.\S+)", got)
        info = consumer.info()
        del info["created"]
        kept = consumer.store.load()
        seen.append((info, kept.delivered_consumer, kept.delivered_stream, kept.ack_floor_consumer, kept.ack_floor_stream,
                     sorted(kept.pending.items()), sorted(kept.redelivered.items())))
        return seen

    def test_same_as_the_loop(self) -> None:
        taken = []
        counting = Consumer._pull_run

        def pull_run(consumer: Consumer, room: int, now: int) -> int:
            taken.append(counting(consumer, room, now))
            return taken[-1]

        for seed in range(60):
            self.patch(Consumer, "_pull_run", pull_run)
            with_runs = self.play(seed, True)
            self.assertEqual(with_runs, self.play(seed, False), "seed {}".format(seed))
        # (Runs were taken: the comparison is of something.)
        self.assertGreater(sum(taken), 200)

    def test_same_as_every_ack_parsed(self) -> None:
        """
        On random traffic (L{play}: every ack body,
        malformed subjects, redeliveries, purges), a consumer that keeps
        its replies, forgetting them at a bound of 5, shows the client the
        same bytes and keeps the same state as one that parses every ack.
        """
        self.patch(consumer_module, "ACK_REPLIES_KEPT", 5)
        for seed in range(40):
            self.assertEqual(self.play(seed, True), self.play(seed, True, kept_replies=False), "seed {}".format(seed))


class KeptRepliesTests(SynchronousTestCase):
    """
    A consumer keeps the ack replies it sent with the numbers each names
    (L{Consumer._replies}), so that an ack heard is not parsed: at most
    L{consumer_module.ACK_REPLIES_KEPT} of them, and an ack whose reply was
    forgotten (or heard before) is parsed and taken as it always was.
    """

    def setUp(self) -> None:
        PullRunTests.setUp(cast(Any, self))

    def consumer(self, **raw: object) -> Consumer:
        return PullPathTests.consumer(cast(Any, self), **raw)

    def fetch(self, consumer: Consumer, inbox: bytes, batch: int) -> List[bytes]:
        consumer.next_request(inbox.decode(), b'{"batch": %d, "expires": 5000000000}' % batch)
        self.harness.clock.advance(0)
        return re.findall(rb"MSG orders\.\S+ 3 (\$JS\.ACK\.\S+) ", self.client.received())

    def test_acks_of_replies_forgotten_are_taken(self) -> None:
        """
        Past the bound the replies kept are forgotten; the acks to them are
        taken all the same, and those heard leave nothing kept behind.
        """
        self.patch(consumer_module, "ACK_REPLIES_KEPT", 4)
        consumer = self.consumer(durable_name="P", ack_policy="explicit")
        for i in range(7):
            self.stream.publish("orders.new", b"m%d" % i)
        first = self.fetch(consumer, b"_INBOX.p.1", 3)
        second = self.fetch(consumer, b"_INBOX.p.2", 3)
        replies = consumer._replies
        assert replies is not None
        # (The first three forgotten to keep the second's within the bound.)
        self.assertEqual(sorted(replies), sorted(second))
        self.assertEqual(replies[second[0]], (1, 4, 4))
        # A redelivery's reply is kept with its count.
        self.client.send(b"PUB %s 4\r\n-NAK\r\n" % second[2])
        third = self.fetch(consumer, b"_INBOX.p.3", 1)
        self.assertEqual(len(third), 1)
        self.assertEqual(replies[third[0]], (2, 6, 7))
        self.client.send(b"".join(b"PUB %s 4\r\n+ACK\r\n" % reply for reply in first + second[:2] + third))
        self.harness.clock.advance(0)
        self.assertEqual(replies, {})
        self.assertEqual(consumer.pending, {})
        state = consumer.store.load()
        self.assertEqual((state.ack_floor_stream, state.ack_floor_consumer, state.pending), (6, 7, {}))
        # An ack heard twice is parsed the second time, and changes nothing.
        self.client.send(b"PUB %s _INBOX.p.sync 4\r\n+ACK\r\n" % first[0])
        self.harness.clock.advance(0)
        self.assertEqual(self.client.received(), b"MSG _INBOX.p.sync 3 0\r\n\r\n")

    def test_replies_go_when_nothing_is_pending(self) -> None:
        """
        Once nothing awaits an ack, the replies kept are forgotten: those
        left are of deliveries acked otherwise (ack_policy all acks every
        earlier one with the last; an explicit consumer's redelivered
        message leaves its first reply), and would hold some 230 bytes
        each until the bound, for as long as the consumer lives (460 KiB a
        consumer; nats-server holds nothing of the kind).  An ack of one
        of them is still taken as before.
        """
        consumer = self.consumer(durable_name="A", ack_policy="all")
        for i in range(5):
            self.stream.publish("orders.new", b"m%d" % i)
        sent = self.fetch(consumer, b"_INBOX.p.a1", 5)
        self.assertEqual(len(sent), 5)
        self.client.send(b"PUB %s 4\r\n+ACK\r\n" % sent[-1])
        self.harness.clock.advance(0)
        self.assertEqual(consumer.pending, {})
        self.assertEqual(consumer._replies, {})
        self.client.send(b"PUB %s _INBOX.p.async 4\r\n+ACK\r\n" % sent[0])
        self.harness.clock.advance(0)
        self.assertEqual(self.client.received(), b"MSG _INBOX.p.async 3 0\r\n\r\n")

        explicit = self.consumer(durable_name="E", ack_policy="explicit")
        first = self.fetch(explicit, b"_INBOX.p.e1", 2)
        self.client.send(b"PUB %s 4\r\n-NAK\r\n" % first[1])
        again = self.fetch(explicit, b"_INBOX.p.e2", 1)
        self.assertEqual(len(again), 1)
        self.client.send(b"".join(b"PUB %s 4\r\n+ACK\r\n" % reply for reply in (first[0], again[0])))
        self.harness.clock.advance(0)
        self.assertEqual(explicit.pending, {})
        self.assertEqual(explicit._replies, {})

    def test_no_replies_kept_without_acks(self) -> None:
        """A consumer with ack_policy none keeps no replies (no ack will come for them)."""
        consumer = self.consumer(durable_name="P", ack_policy="none", deliver_subject="_INBOX.p.push")
        self.stream.publish("orders.new", b"m")
        self.harness.clock.advance(0)
        self.assertIsNone(consumer._replies)
