"""
A pull round's messages go to the broker together
(L{eventsvc.nats.server.Broker.deliver_as_many}) and a consumer's acks come
as bytes (L{eventsvc.nats.server.Broker.subscribe_raw}): what a client sees
when something else shares those subjects, and when nobody takes a batch.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple, cast

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.jetstream.consumer import Consumer, check_config
from eventsvc.jetstream.engine import JetStreamSettings
from eventsvc.jetstream.memstore import MemoryConsumerStore
from eventsvc.nats.interfaces import Identity
from eventsvc.security.permissions import Permissions
from eventsvc.test.helpers import Harness
from eventsvc.test.test_jsconsumer import BASE, FakeEngine, FakeStream


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
