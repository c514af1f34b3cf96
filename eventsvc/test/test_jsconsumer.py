"""
JetStream consumers (L{eventsvc.jetstream.consumer}): what a client
subscribed to a deliver subject or a pull inbox receives, and what an
acknowledgement does, against a real in-memory L{Broker}, a memory store
and a fake clock (the stream is a small stand-in with the attributes
JS.md gives a consumer); then nats-py's pull and push consumers against a
real twistd, and the same consumer requests sent to nats-server -js and to
eventsvc with equal answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from typing import Any, Dict, List, NamedTuple, Optional, Set, Tuple

from twisted.internet import threads
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from eventsvc.jetstream import consumer_api, errors
from eventsvc.jetstream.consumer import (
    Consumer,
    as_json,
    check_config,
    go_duration,
    parse_go_duration,
)
from eventsvc.jetstream.engine import JetStreamSettings
from eventsvc.jetstream.filestore import FileConsumerStore
from eventsvc.jetstream.errors import ApiError
from eventsvc.jetstream.memstore import MemoryConsumerStore, MemoryStore
from eventsvc.jetstream.wire import parse_headers, rfc3339
from eventsvc.nats.server import Broker
from eventsvc.test import process
from eventsvc.test.helpers import Harness

try:
    import nats
    import nats.js.api
except ImportError:  # pragma: no cover
    nats = None

BASE = 1_800_000_000 * 1_000_000_000
SECOND = 1_000_000_000
MS = 1_000_000


class FakeEngine:
    """The engine's part a consumer uses, and its ack routing."""

    def __init__(self, broker: Optional[Broker] = None, clock: Optional[Clock] = None) -> None:
        self.clock = clock or Clock()
        self.broker = broker or Broker(server_name="test")
        self.streams: Dict[str, "FakeStream"] = {}
        #: Acks routed by this fake's one C{$JS.ACK.>} (the engine's other
        #: shape: test_jsapi and the others run each consumer's own).
        self.settings = JetStreamSettings(per_consumer_acks=False)
        #: The engine's streams and consumers the server owns (none here).
        self.owned: Dict[str, Set[str]] = {}
        self.ack_router = self.broker.subscribe("$JS.ACK.>", self._ack)

    def now(self) -> int:
        return BASE + int(round(self.clock.seconds() * SECOND))

    def _ack(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        tokens = subject.split(".")
        stream = self.streams.get(tokens[2])
        consumer = stream.consumers.get(tokens[3]) if stream else None
        if consumer is not None:
            consumer.ack(subject, reply, payload)


class FakeStream:
    """A stream as far as a consumer sees it: a memory store, its config, its consumers."""

    def __init__(self, engine: FakeEngine, name: str = "ORDERS", subjects: Tuple[str, ...] = ("orders.>",),
                 retention: str = "limits", max_consumers: int = -1) -> None:
        self.engine = engine
        self.name = name
        self.config: Dict[str, Any] = {
            "name": name, "subjects": list(subjects), "retention": retention,
            "max_consumers": max_consumers, "num_replicas": 1,
        }
        self.store = MemoryStore()
        self.created = engine.now()
        self.consumers: Dict[str, Consumer] = {}
        self.consumer_stores: Dict[str, MemoryConsumerStore] = {}
        self.acked: List[int] = []
        engine.streams[name] = self

    def new_consumer_store(self, name: str, config: dict, created: int) -> MemoryConsumerStore:
        store = self.consumer_stores[name] = MemoryConsumerStore()
        return store

    def attach(self, consumer: Consumer) -> None:
        self.consumers[consumer.name] = consumer

    def detach(self, name: str) -> None:
        self.consumers.pop(name, None)

    def ack_message(self, seq: int) -> None:
        self.acked.append(seq)
        retention = self.config["retention"]
        if retention == "interest":
            message = self.store.load(seq)
            if message is None or any(c.needs(seq, message.subject) for c in self.consumers.values()):
                return
        if retention != "limits":
            self.store.remove(seq)

    def publish(self, subject: str, data: bytes = b"", headers: Optional[bytes] = None) -> int:
        seq = self.store.store(subject, headers, data, self.engine.now())
        for consumer in list(self.consumers.values()):
            consumer.stored(seq, subject)
        return seq


class Inbox:
    """An in-process subscriber: what a client on C{subject} would receive."""

    def __init__(self, broker: Broker, subject: str, queue: Optional[str] = None) -> None:
        self.messages: List[Tuple[str, Optional[str], bytes, Optional[bytes]]] = []
        self.subject = subject
        self.sub = broker.subscribe(subject, self._got, queue)

    def _got(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        self.messages.append((subject, reply, payload, headers))

    def take(self) -> List[Tuple[str, Optional[str], bytes, Optional[bytes]]]:
        out, self.messages = self.messages, []
        return out

    def data(self) -> List[bytes]:
        return [m[2] for m in self.take()]

    def statuses(self) -> List[str]:
        return [parse_headers(m[3])[0] for m in self.take()]


class Request(NamedTuple):
    """As api.py's Request (JS.md)."""

    subject: str
    args: List[str]
    reply: Optional[str]
    payload: bytes
    headers: Optional[bytes]


class ConsumerTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.engine = FakeEngine()
        self.broker = self.engine.broker
        self.clock = self.engine.clock
        self.stream = FakeStream(self.engine)

    def publish(self, n: int, subject: str = "orders.new", stream: Optional[FakeStream] = None) -> List[int]:
        stream = stream or self.stream
        return [stream.publish(subject, b"m%d" % i) for i in range(1, n + 1)]

    def consumer(self, stream: Optional[FakeStream] = None, **raw: Any) -> Consumer:
        stream = stream or self.stream
        config = check_config(stream, raw)
        name = config.get("durable_name") or config.get("name") or "EPH"
        consumer = Consumer(stream, name, config, stream.new_consumer_store(name, config, self.engine.now()), self.engine.now())
        stream.attach(consumer)
        consumer.start()
        self.addCleanup(consumer.stop)
        return consumer

    def pull(self, consumer: Consumer, request: Any = b"", inbox: str = "_INBOX.1") -> Inbox:
        box = Inbox(self.broker, inbox)
        payload = request if isinstance(request, bytes) else json.dumps(request).encode()
        consumer.next_request(inbox, payload)
        return box

    def request(self, verb: str, args: List[str], body: Any = b"", reply: Optional[str] = "_INBOX.api") -> Optional[Dict[str, Any]]:
        kind, handler = consumer_api.ROUTES[verb]
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        request = Request("$JS.API.%s.%s" % (verb, ".".join(args)), args, reply, payload, None)
        try:
            answer = handler(self.engine, request)
        except ApiError as e:
            return {"type": kind, "error": e.as_json(), **consumer_api.ERROR_TAILS.get(verb, {})}
        if answer is None:
            return None
        return {"type": kind, **answer}

    def error(self, answer: Optional[Dict[str, Any]]) -> Tuple[int, int, str]:
        assert answer is not None
        error = answer["error"]
        return error["code"], error["err_code"], error["description"]

    def ack(self, reply: Optional[str], body: bytes = b"+ACK", answer: Optional[str] = None) -> None:
        assert reply is not None
        self.broker.publish(reply, body, answer)


class ConfigTests(ConsumerTestCase):
    """check_config: nats-server's defaults, words and order."""

    def test_durable_pull_defaults(self) -> None:
        """A durable pull consumer's config reads as nats-server 2.9.10 writes it, byte for byte."""
        config = check_config(self.stream, {"durable_name": "D", "ack_policy": "explicit"})
        self.assertEqual(
            json.dumps(as_json(config), separators=(",", ":")),
            '{"durable_name":"D","deliver_policy":"all","ack_policy":"explicit","ack_wait":30000000000,'
            '"max_deliver":-1,"replay_policy":"instant","max_waiting":512,"max_ack_pending":1000,"num_replicas":0}',
        )

    def test_named_push_ephemeral(self) -> None:
        """The 2.9 create subject's name becomes C{name}; an ephemeral gets inactive_threshold 5s."""
        config = check_config(
            self.stream,
            {"ack_policy": "explicit", "deliver_subject": "dd", "idle_heartbeat": SECOND, "flow_control": True},
            "N",
        )
        self.assertEqual(
            json.dumps(as_json(config), separators=(",", ":")),
            '{"name":"N","deliver_policy":"all","ack_policy":"explicit","ack_wait":30000000000,"max_deliver":-1,'
            '"replay_policy":"instant","max_ack_pending":1000,"idle_heartbeat":1000000000,"flow_control":true,'
            '"deliver_subject":"dd","inactive_threshold":5000000000,"num_replicas":0}',
        )

    def test_backoff_sets_ack_wait(self) -> None:
        config = check_config(self.stream, {"durable_name": "D", "ack_policy": "explicit", "backoff": [SECOND, 2 * SECOND], "max_deliver": 3})
        self.assertEqual(config["ack_wait"], SECOND)

    def assertRefused(self, kind: Any, raw: Any, stream: Optional[FakeStream] = None, description: Optional[str] = None) -> None:
        with self.assertRaises(ApiError) as caught:
            check_config(stream or self.stream, raw)
        self.assertEqual(caught.exception.err_code, kind.err_code, caught.exception.description)
        if description is not None:
            self.assertEqual(caught.exception.description, description)

    def test_refusals(self) -> None:
        """Each bad config gets nats-server's error, by code and words."""
        self.assertRefused(errors.INVALID_J_S_O_N_ERR, {"ack_policy": "bogus"})
        self.assertRefused(errors.INVALID_J_S_O_N_ERR, {"ack_wait": "5s"})
        self.assertRefused(errors.INVALID_J_S_O_N_ERR, ["not", "an", "object"])
        self.assertRefused(
            errors.CONSUMER_INVALID_POLICY_ERR_F, {"ack_policy": "explicit", "deliver_policy": "by_start_sequence"},
            description="consumer delivery policy is deliver by start sequence, but optional start sequence is not set",
        )
        self.assertRefused(
            errors.CONSUMER_INVALID_POLICY_ERR_F, {"deliver_policy": "all", "opt_start_seq": 4},
            description="consumer delivery policy is deliver all, but optional start sequence is also set",
        )
        self.assertRefused(errors.CONSUMER_INVALID_POLICY_ERR_F, {"deliver_policy": "by_start_time"})
        self.assertRefused(errors.CONSUMER_INVALID_POLICY_ERR_F, {"deliver_policy": "last_per_subject"})
        self.assertRefused(errors.CONSUMER_MAX_DELIVER_BACKOFF_ERR, {"ack_policy": "explicit", "backoff": [SECOND, SECOND], "max_deliver": 2})
        self.assertRefused(errors.CONSUMER_FILTER_NOT_SUBSET_ERR, {"filter_subject": "payments.>"})
        self.assertRefused(errors.CONSUMER_H_B_REQUIRES_PUSH_ERR, {"idle_heartbeat": SECOND})
        self.assertRefused(errors.CONSUMER_F_C_REQUIRES_PUSH_ERR, {"flow_control": True})
        self.assertRefused(errors.CONSUMER_WITH_FLOW_CONTROL_NEEDS_HEARTBEATS, {"deliver_subject": "d", "flow_control": True})
        self.assertRefused(errors.CONSUMER_SMALL_HEARTBEAT_ERR, {"deliver_subject": "d", "idle_heartbeat": 50 * MS})
        self.assertRefused(errors.CONSUMER_DELIVER_CYCLE_ERR, {"deliver_subject": "orders.x"})
        self.assertRefused(errors.CONSUMER_DELIVER_TO_WILDCARDS_ERR, {"deliver_subject": "d.*"})
        self.assertRefused(errors.CONSUMER_PUSH_MAX_WAITING_ERR, {"deliver_subject": "d", "max_waiting": 4})
        self.assertRefused(errors.CONSUMER_MAX_PENDING_ACK_POLICY_REQUIRED_ERR, {"deliver_subject": "d", "max_ack_pending": 4})
        self.assertRefused(errors.CONSUMER_MAX_WAITING_NEGATIVE_ERR, {"max_waiting": -1})
        self.assertRefused(errors.CONSUMER_BAD_DURABLE_NAME_ERR, {"durable_name": "a.b"})
        self.assertRefused(errors.CONSUMER_NAME_TOO_LONG_ERR_F, {"durable_name": "x" * 256})
        self.assertRefused(errors.CONSUMER_CREATE_DURABLE_AND_NAME_MISMATCH, {"durable_name": "a", "name": "b"})
        self.assertRefused(errors.CONSUMER_REPLICAS_EXCEEDS_STREAM, {"num_replicas": 3})

    def test_wildcard_filter_wider_than_a_subject(self) -> None:
        """A wildcard filter that covers one of the stream's subjects is accepted (nats-server's validFilteredSubject)."""
        stream = FakeStream(self.engine, "S2", ("orders.new",))
        self.assertEqual(check_config(stream, {"filter_subject": "orders.*"})["filter_subject"], "orders.*")

    def test_max_consumers(self) -> None:
        stream = FakeStream(self.engine, "S2", ("s2.>",), max_consumers=1)
        self.consumer(stream, durable_name="A")
        self.assertRefused(errors.MAXIMUM_CONSUMERS_LIMIT_ERR, {"durable_name": "B"}, stream)
        # The existing one may still be "created" again (an update).
        self.assertEqual(check_config(stream, {"durable_name": "A"})["durable_name"], "A")

    def test_workqueue_rules(self) -> None:
        stream = FakeStream(self.engine, "WQ", ("wq.>",), retention="workqueue")
        self.assertRefused(errors.CONSUMER_PULL_REQUIRES_ACK_ERR, {"durable_name": "A"}, stream)
        self.assertRefused(errors.CONSUMER_W_Q_REQUIRES_EXPLICIT_ACK_ERR, {"durable_name": "A", "ack_policy": "all"}, stream)
        self.assertRefused(errors.CONSUMER_W_Q_CONSUMER_NOT_DELIVER_ALL_ERR, {"durable_name": "A", "ack_policy": "explicit", "deliver_policy": "new"}, stream)
        self.consumer(stream, durable_name="A", ack_policy="explicit", filter_subject="wq.a.>")
        self.assertRefused(errors.CONSUMER_W_Q_MULTIPLE_UNFILTERED_ERR, {"durable_name": "B", "ack_policy": "explicit"}, stream)
        self.assertRefused(errors.CONSUMER_W_Q_CONSUMER_NOT_UNIQUE_ERR, {"durable_name": "B", "ack_policy": "explicit", "filter_subject": "wq.a.b"}, stream)
        check_config(stream, {"durable_name": "B", "ack_policy": "explicit", "filter_subject": "wq.b.>"})

    def test_go_durations(self) -> None:
        self.assertEqual(parse_go_duration("1.5s"), 1500 * MS)
        self.assertEqual(parse_go_duration("2m30s"), 150 * SECOND)
        self.assertEqual(parse_go_duration("250ms"), 250 * MS)
        self.assertRaises(ValueError, parse_go_duration, "5 parsecs")
        self.assertEqual(go_duration(90 * SECOND), "1m30s")
        self.assertEqual(go_duration(1500 * MS), "1.5s")
        self.assertEqual(go_duration(250 * MS), "250ms")


class DeliverPolicyTests(ConsumerTestCase):
    """Where a new consumer starts."""

    def setUp(self) -> None:
        ConsumerTestCase.setUp(self)
        self.stream.publish("orders.a", b"a1")
        self.clock.advance(10)
        self.stream.publish("orders.b", b"b1")
        self.stream.publish("orders.a", b"a2")
        self.clock.advance(10)
        self.stream.publish("orders.b", b"b2")

    def first_batch(self, **raw: Any) -> List[bytes]:
        consumer = self.consumer(durable_name="D", ack_policy="explicit", **raw)
        return self.pull(consumer, {"batch": 10, "no_wait": True}).data()[:-1]

    def test_all(self) -> None:
        self.assertEqual(self.first_batch(), [b"a1", b"b1", b"a2", b"b2"])

    def test_last(self) -> None:
        self.assertEqual(self.first_batch(deliver_policy="last"), [b"b2"])

    def test_last_filtered(self) -> None:
        self.assertEqual(self.first_batch(deliver_policy="last", filter_subject="orders.a"), [b"a2"])

    def test_new(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit", deliver_policy="new")
        box = self.pull(consumer, {"batch": 2, "expires": SECOND})
        self.stream.publish("orders.c", b"c1")
        self.assertEqual(box.data(), [b"c1"])

    def test_by_start_sequence(self) -> None:
        self.assertEqual(self.first_batch(deliver_policy="by_start_sequence", opt_start_seq=3), [b"a2", b"b2"])

    def test_by_start_time(self) -> None:
        start = rfc3339(BASE + 5 * SECOND)
        self.assertEqual(self.first_batch(deliver_policy="by_start_time", opt_start_time=start), [b"b1", b"a2", b"b2"])

    def test_last_per_subject(self) -> None:
        """The last of each subject first, then whatever comes next."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit", deliver_policy="last_per_subject", filter_subject="orders.*")
        self.assertEqual(self.pull(consumer, {"batch": 10, "no_wait": True}).data()[:-1], [b"a2", b"b2"])
        box = self.pull(consumer, {"batch": 10, "expires": SECOND}, "_INBOX.2")
        self.stream.publish("orders.a", b"a3")
        self.assertEqual(box.data(), [b"a3"])

    def test_filter(self) -> None:
        self.assertEqual(self.first_batch(filter_subject="orders.b"), [b"b1", b"b2"])


class PullTests(ConsumerTestCase):
    """MSG.NEXT: what the requester's inbox receives."""

    def test_batch(self) -> None:
        """A batch goes to the inbox on the stream's subjects, with stored headers and the 2.9 ack reply."""
        self.stream.publish("orders.new", b"one", b"NATS/1.0\r\nH: 1\r\n\r\n")
        self.clock.advance(1)
        self.stream.publish("orders.old", b"two")
        self.stream.publish("orders.new", b"three")
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 2})
        got = box.take()
        self.assertEqual(
            [(s, r, p) for s, r, p, _ in got],
            [
                ("orders.new", "$JS.ACK.ORDERS.D.1.1.1.%d.2" % BASE, b"one"),
                ("orders.old", "$JS.ACK.ORDERS.D.1.2.2.%d.1" % (BASE + SECOND), b"two"),
            ],
        )
        self.assertEqual(got[0][3], b"NATS/1.0\r\nH: 1\r\n\r\n")
        self.assertIsNone(got[1][3])
        info = consumer.info()
        self.assertEqual(info["delivered"], {"consumer_seq": 2, "stream_seq": 2, "last_active": rfc3339(BASE + SECOND)})
        self.assertEqual((info["num_ack_pending"], info["num_pending"], info["num_waiting"]), (2, 1, 0))

    def test_number_and_empty_payloads(self) -> None:
        """A bare number is a batch; an empty payload asks for one."""
        self.publish(5)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        self.assertEqual(self.pull(consumer, b"3").data(), [b"m1", b"m2", b"m3"])
        self.assertEqual(self.pull(consumer, b"", "_INBOX.2").data(), [b"m4"])

    def test_hundred(self) -> None:
        """A pull of 100 is 100 messages, and the pending counts run down to 0."""
        self.publish(100)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        got = self.pull(consumer, {"batch": 100}).take()
        self.assertEqual(len(got), 100)
        self.assertEqual([m[1].rsplit(".", 1)[1] for m in got[-2:]], ["1", "0"])  # type: ignore[union-attr]

    def test_waits_for_messages(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 2, "expires": 5 * SECOND})
        self.assertEqual(box.take(), [])
        self.assertEqual(consumer.info()["num_waiting"], 1)
        self.publish(3)
        self.assertEqual(box.data(), [b"m1", b"m2"])
        self.assertEqual(consumer.info()["num_waiting"], 0)

    def test_expires(self) -> None:
        """After expires: 408 Request Timeout with what is still owed."""
        self.publish(1)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 5, "expires": 200 * MS})
        self.assertEqual(box.data(), [b"m1"])
        self.clock.advance(0.2)
        (status,) = box.take()
        self.assertEqual(status[3], b"NATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 4\r\nNats-Pending-Bytes: 0\r\n\r\n")
        self.assertEqual(consumer.info()["num_waiting"], 0)

    def test_no_wait(self) -> None:
        """no_wait with nothing: 404 No Messages; with some: those, then 408."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 5, "no_wait": True})
        self.assertEqual(box.take()[0][3], b"NATS/1.0 404 No Messages\r\n\r\n")
        self.publish(2)
        box = self.pull(consumer, {"batch": 5, "no_wait": True}, "_INBOX.2")
        got = box.take()
        self.assertEqual([m[2] for m in got[:2]], [b"m1", b"m2"])
        self.assertEqual(parse_headers(got[2][3])[0], "408 Request Timeout")

    def test_idle_heartbeat(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 5, "expires": 200 * MS, "idle_heartbeat": 50 * MS})
        for _ in range(3):
            self.clock.advance(0.05)
        self.assertEqual(
            [m[3] for m in box.take()],
            [b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 0\r\nNats-Last-Stream: 0\r\n\r\n"] * 3,
        )
        self.clock.advance(0.05)
        self.assertEqual(box.statuses(), ["408 Request Timeout"])

    def test_heartbeat_too_large(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 5, "expires": 100 * MS, "idle_heartbeat": 60 * MS})
        self.assertEqual(box.statuses(), ["400 Bad Request - heartbeat value too large"])

    def test_bad_request(self) -> None:
        """Bad JSON: 400 with Go's words, as nats-server writes them."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        self.assertEqual(self.pull(consumer, b"{").statuses(), ["400 Bad Request - unexpected end of JSON input"])
        self.assertEqual(
            self.pull(consumer, b"{nope", "_INBOX.2").statuses(),
            ["400 Bad Request - invalid character 'n' looking for beginning of object key string"],
        )

    def test_max_waiting(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit", max_waiting=2)
        boxes = [self.pull(consumer, {"batch": 1, "expires": SECOND}, "_INBOX.%d" % i) for i in range(3)]
        self.assertEqual(boxes[2].statuses(), ["409 Exceeded MaxWaiting"])
        self.assertEqual(consumer.info()["num_waiting"], 2)

    def test_max_batch_and_expires(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit", max_batch=10, max_expires=SECOND)
        self.assertEqual(self.pull(consumer, {"batch": 11}).statuses(), ["409 Exceeded MaxRequestBatch of 10"])
        self.assertEqual(self.pull(consumer, {"batch": 1, "expires": 2 * SECOND}, "_INBOX.2").statuses(), ["409 Exceeded MaxRequestExpires of 1s"])

    def test_max_bytes(self) -> None:
        """A message bigger than what the request has left ends it: 409 Message Size Exceeds MaxBytes."""
        self.stream.publish("orders.new", b"x" * 10)
        self.stream.publish("orders.new", b"y" * 500)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 5, "max_bytes": 200, "expires": SECOND})
        got = box.take()
        self.assertEqual(got[0][2], b"x" * 10)
        self.assertEqual(parse_headers(got[1][3])[0], "409 Message Size Exceeds MaxBytes")
        # The big one was not lost: the next request gets it.
        self.assertEqual(self.pull(consumer, {"batch": 1}, "_INBOX.2").data(), [b"y" * 500])

    def test_max_bytes_counts_a_subjects_utf8_bytes(self) -> None:
        """
        A message's size against a request's max_bytes counts its subject's
        UTF-8 bytes, as nats-server 2.9 does (len of a Go string): a
        message on "orders.\u00e9" does not fit a max_bytes one byte short
        of them.  (Review RV5: the characters were counted, and it fitted.)
        Consumers D and E, named alike in length, give the message the same
        size: D's delivery says what it is.
        """
        self.stream.publish("orders.\u00e9", b"x" * 10)
        first = self.pull(self.consumer(durable_name="D", ack_policy="explicit"), {"batch": 1}).take()
        size = len("orders.\u00e9".encode()) + len(first[0][1] or "") + 10
        e = self.consumer(durable_name="E", ack_policy="explicit")
        short = self.pull(e, {"batch": 1, "max_bytes": size - 1, "expires": SECOND}, "_INBOX.2")
        self.assertEqual(short.statuses(), ["409 Message Size Exceeds MaxBytes"])
        self.assertEqual(self.pull(e, {"batch": 1, "max_bytes": size, "expires": SECOND}, "_INBOX.3").data(), [b"x" * 10])

    def test_no_interest_dropped(self) -> None:
        """A request whose inbox nobody listens to any more gets nothing; the message goes to the next."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        gone = self.pull(consumer, {"batch": 1, "expires": SECOND}, "_INBOX.gone")
        gone.sub.unsubscribe()
        box = self.pull(consumer, {"batch": 1, "expires": SECOND}, "_INBOX.2")
        self.publish(1)
        self.assertEqual(box.data(), [b"m1"])
        self.assertEqual(consumer.info()["num_waiting"], 0)

    def test_deleted(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 1, "expires": SECOND})
        consumer.delete()
        self.assertEqual(box.statuses(), ["409 Consumer Deleted"])

    def test_push_consumer_refuses(self) -> None:
        consumer = self.consumer(durable_name="P", deliver_subject="deliver.p")
        self.assertEqual(self.pull(consumer, b"1").statuses(), ["409 Consumer is push based"])

    def test_inactive_threshold(self) -> None:
        """A pull consumer nobody asks for inactive_threshold is deleted; asking keeps it."""
        consumer = self.consumer(name="E", ack_policy="explicit", inactive_threshold=2 * SECOND)
        self.clock.advance(1.5)
        self.pull(consumer, {"batch": 1, "no_wait": True})
        self.clock.advance(1.5)
        self.assertIn("E", self.stream.consumers)
        self.clock.advance(1)
        self.assertNotIn("E", self.stream.consumers)
        self.assertTrue(consumer.closed)


class PullToClientTests(ConsumerTestCase):
    """
    A pull request answered to a client connection: the bytes it is sent.
    (A round's messages for one request reach the broker together,
    L{Consumer._send_batch}; the in-process inboxes above take the
    broker's general path, a client's plain subscription the batch's own.)
    """

    def client(self, *subs: bytes) -> Any:
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        from eventsvc.nats.listener import ClientFactory
        from eventsvc.nats.settings import ClientSettings

        conn = ClientFactory(self.broker, ClientSettings(), self.clock).buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        conn.makeConnection(transport)
        conn.dataReceived(b'CONNECT {"verbose":false,"headers":true}\r\n' + b"".join(subs) + b"PING\r\n")
        self.clock.advance(0)
        transport.clear()
        self.addCleanup(conn.transport.loseConnection)
        return transport

    def sent(self, transport: Any) -> bytes:
        self.clock.advance(0)
        out = transport.value()
        transport.clear()
        return out

    def test_a_batch_in_order(self) -> None:
        """Three messages, one with headers, in stream order, each with its own ack reply and pending count."""
        self.stream.publish("orders.new", b"m1")
        self.stream.publish("orders.old", b"m2", b"NATS/1.0\r\nK: v\r\n\r\n")
        self.stream.publish("orders.new", b"m3")
        wire = self.client(b"SUB _INBOX.w.* 7\r\n")
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        consumer.next_request("_INBOX.w.1", b'{"batch":3}')
        self.assertEqual(self.sent(wire), (
            b"MSG orders.new 7 $JS.ACK.ORDERS.D.1.1.1.%d.2 2\r\nm1\r\n"
            b"HMSG orders.old 7 $JS.ACK.ORDERS.D.1.2.2.%d.1 18 20\r\nNATS/1.0\r\nK: v\r\n\r\nm2\r\n"
            b"MSG orders.new 7 $JS.ACK.ORDERS.D.1.3.3.%d.0 2\r\nm3\r\n"
        ) % (BASE, BASE, BASE))

    def test_every_subscriber(self) -> None:
        """Two subscriptions on the inbox (two clients, a wildcard and a literal) get each message."""
        self.publish(2)
        one = self.client(b"SUB _INBOX.w.* 1\r\n")
        two = self.client(b"SUB _INBOX.w.1 2\r\n")
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        consumer.next_request("_INBOX.w.1", b'{"batch":2}')
        frames = re.compile(rb"MSG orders.new (\d) \S+ 2\r\n(m\d)\r\n")
        self.assertEqual(frames.findall(self.sent(one)), [(b"1", b"m1"), (b"1", b"m2")])
        self.assertEqual(frames.findall(self.sent(two)), [(b"2", b"m1"), (b"2", b"m2")])

    def test_status_after_the_messages(self) -> None:
        """A request's 409 for max_bytes comes after the message that fitted, not before it."""
        self.stream.publish("orders.new", b"x" * 10)
        self.stream.publish("orders.new", b"y" * 500)
        wire = self.client(b"SUB _INBOX.w.* 1\r\n")
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        consumer.next_request("_INBOX.w.1", b'{"batch":5,"max_bytes":200,"expires":1000000000}')
        out = self.sent(wire)
        self.assertTrue(out.startswith(b"MSG orders.new 1 $JS.ACK.ORDERS.D.1.1.1."), out)
        self.assertIn(b"\r\n" + b"x" * 10 + b"\r\nHMSG _INBOX.w.1 1 ", out)
        self.assertTrue(out.endswith(b"409 Message Size Exceeds MaxBytes\r\nNats-Pending-Messages: 4\r\n"
                                     b"Nats-Pending-Bytes: 136\r\n\r\n\r\n"), out)

    def test_interleaved_requests(self) -> None:
        """Two waiting requests share what comes, one message each in turn, each to its own inbox."""
        wire = self.client(b"SUB _INBOX.w.* 1\r\n")
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        consumer.next_request("_INBOX.w.a", b'{"batch":2,"expires":1000000000}')
        consumer.next_request("_INBOX.w.b", b'{"batch":2,"expires":1000000000}')
        for i in range(4):
            self.stream.publish("orders.new", b"m%d" % (i + 1))
        got = re.findall(rb"MSG orders.new 1 \$JS\.ACK\.ORDERS\.D\.1\.(\d)\.\S+ 2\r\n(m\d)\r\n", self.sent(wire))
        self.assertEqual(got, [(b"1", b"m1"), (b"2", b"m2"), (b"3", b"m3"), (b"4", b"m4")])
        self.assertEqual(consumer.info()["num_waiting"], 0)

    def test_acks_on_the_wire(self) -> None:
        """
        A client's acks to the consumer's own ack subjects: +ACK, an
        AckSync answered once kept, and subjects that are no ack (a word
        for a number) ignored, the connection left open.
        """
        # The engine's default: each consumer its own ack subscription.
        self.engine.ack_router.unsubscribe()
        self.engine.settings = JetStreamSettings(per_consumer_acks=True)
        self.engine.answers_api = True
        self.publish(3)
        wire = self.client(b"SUB _INBOX.w.* 1\r\n")
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        consumer.next_request("_INBOX.w.1", b'{"batch":3}')
        acks = re.findall(rb"MSG orders.new 1 (\S+) 2\r\n", self.sent(wire))
        self.assertEqual(len(acks), 3)
        conn = self.broker.clients[max(self.broker.clients)]
        conn.dataReceived(
            b"PUB %s 4\r\n+ACK\r\n" % acks[0]
            + b"PUB %s 4\r\n+ACK\r\n" % acks[1].replace(b".D.1.2.", b".D.x.2.")
            + b"PUB %s _INBOX.w.sync 4\r\n+ACK\r\n" % acks[2]
        )
        self.assertEqual(self.sent(wire), b"MSG _INBOX.w.sync 1 0\r\n\r\n")
        self.assertEqual(sorted(consumer.pending), [2])
        self.assertFalse(wire.disconnecting)

    def test_names_with_a_percent_sign(self) -> None:
        """
        A stream and a consumer whose names hold "%" (nats-server's names
        may): the ack reply names them as they are, and an ack to it is
        taken (the reply was a format that raised TypeError).
        """
        self.engine.ack_router.unsubscribe()
        self.engine.settings = JetStreamSettings(per_consumer_acks=True)
        self.engine.answers_api = True
        stream = FakeStream(self.engine, name="S%d%%", subjects=("pct.>",))
        stream.publish("pct.a", b"m1")
        stream.publish("pct.a", b"m2")
        wire = self.client(b"SUB _INBOX.w.* 1\r\n")
        consumer = self.consumer(stream, durable_name="C%s", ack_policy="explicit")
        for n in (1, 2):
            consumer.next_request("_INBOX.w.%d" % n, b'{"batch":1}')
            got = re.findall(rb"MSG pct.a 1 (\S+) 2\r\nm%d\r\n" % n, self.sent(wire))
            self.assertEqual(len(got), 1)
            self.assertEqual(got[0].split(b".")[:7], [b"$JS", b"ACK", b"S%d%%", b"C%s", b"1", b"%d" % n, b"%d" % n])
            self.assertEqual(got[0].split(b".")[7], b"%d" % stream.store.load(n).ts)
            conn = self.broker.clients[max(self.broker.clients)]
            conn.dataReceived(b"PUB %s 4\r\n+ACK\r\n" % got[0])
            self.assertEqual(consumer.pending, {})
            self.assertEqual(consumer.store.load().ack_floor_stream, n)

    def test_a_one_message_subscription(self) -> None:
        """An inbox subscribed with UNSUB 1 (nats-py's request) takes one message; the next goes to the next request."""
        self.publish(2)
        wire = self.client(b"SUB _INBOX.one 1\r\nUNSUB 1 1\r\nSUB _INBOX.two 2\r\n")
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        consumer.next_request("_INBOX.one", b'{"batch":2,"expires":1000000000}')
        out = self.sent(wire)
        self.assertEqual(re.findall(rb"\r\n(m\d)\r\n", out), [b"m1"])
        consumer.next_request("_INBOX.two", b'{"batch":1,"expires":1000000000}')
        self.assertEqual(re.findall(rb"MSG orders.new 2 \S+ 2\r\n(m\d)\r\n", self.sent(wire)), [b"m2"])


class AckTests(ConsumerTestCase):
    """What each kind of acknowledgement does, sent as a client sends it."""

    def setUp(self) -> None:
        ConsumerTestCase.setUp(self)
        self.publish(3)

    def fetch(self, consumer: Consumer, n: int = 1, inbox: str = "_INBOX.f") -> List[Tuple[str, Optional[str], bytes, Optional[bytes]]]:
        box = self.pull(consumer, {"batch": n, "no_wait": True}, inbox)
        box.sub.unsubscribe()
        return [m for m in box.take() if m[3] is None or not parse_headers(m[3])[0]]

    def test_ack_moves_floor(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        got = self.fetch(consumer, 3)
        self.ack(got[1][1])
        info = consumer.info()
        self.assertEqual((info["ack_floor"]["stream_seq"], info["num_ack_pending"]), (0, 2))
        self.ack(got[0][1], b"")
        info = consumer.info()
        self.assertEqual(info["ack_floor"], {"consumer_seq": 2, "stream_seq": 2, "last_active": rfc3339(BASE)})
        self.ack(got[2][1])
        self.assertEqual(consumer.info()["num_ack_pending"], 0)
        self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 3)

    def test_ack_sync(self) -> None:
        """An ack with a reply is answered (empty) once kept."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        (msg,) = self.fetch(consumer)
        box = Inbox(self.broker, "_INBOX.ack")
        self.ack(msg[1], b"+ACK", "_INBOX.ack")
        self.assertEqual(box.take(), [("_INBOX.ack", None, b"", None)])

    def test_ack_wait_redelivers(self) -> None:
        """Unacked past ack_wait: delivered again, the count in the reply 2."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit", ack_wait=2 * SECOND)
        self.assertEqual(len(self.fetch(consumer, 3)), 3)
        box = self.pull(consumer, {"batch": 1, "expires": 10 * SECOND}, "_INBOX.3")
        self.clock.advance(1.9)
        self.assertEqual(box.take(), [])
        self.clock.advance(0.2)
        (again,) = box.take()
        self.assertEqual(again[2], b"m1")
        self.assertTrue(again[1].startswith("$JS.ACK.ORDERS.D.2.1.4."))  # type: ignore[union-attr]
        self.assertEqual(consumer.info()["num_redelivered"], 1)
        # One timer for the consumer, however many are outstanding.
        self.assertEqual(len([c for c in self.clock.getDelayedCalls() if c.func == consumer._check_pending]), 1)

    def test_nak(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        (msg,) = self.fetch(consumer)
        self.ack(msg[1], b"-NAK")
        (again,) = self.fetch(consumer, 1, "_INBOX.2")
        self.assertEqual(again[2], b"m1")
        self.assertTrue(again[1].startswith("$JS.ACK.ORDERS.D.2.1.2."))  # type: ignore[union-attr]

    def test_nak_delay(self) -> None:
        """-NAK {"delay": ns} (or a Go duration): redelivered only after the delay."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        m1, m2 = self.fetch(consumer, 2)
        self.ack(m1[1], b'-NAK {"delay": 3000000000}')
        self.ack(m2[1], b"-NAK 1s")
        box = self.pull(consumer, {"batch": 3, "expires": 60 * SECOND}, "_INBOX.2")
        self.assertEqual(box.data(), [b"m3"])
        self.clock.advance(1.1)
        self.assertEqual(box.data(), [b"m2"])
        self.clock.advance(2)
        self.assertEqual(box.data(), [b"m1"])

    def test_progress(self) -> None:
        """+WPI: ack_wait starts again."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit", ack_wait=2 * SECOND)
        msg, m2, m3 = self.fetch(consumer, 3)
        self.ack(m2[1])
        self.ack(m3[1])
        box = self.pull(consumer, {"batch": 1, "expires": 60 * SECOND}, "_INBOX.4")
        self.clock.advance(1.5)
        self.ack(msg[1], b"+WPI")
        self.clock.advance(1.5)
        self.assertEqual(box.take(), [])
        self.clock.advance(1)
        self.assertEqual(box.data(), [b"m1"])

    def test_term(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit", ack_wait=SECOND)
        (msg,) = self.fetch(consumer)
        self.ack(msg[1], b"+TERM")
        box = self.pull(consumer, {"batch": 5, "expires": 60 * SECOND}, "_INBOX.2")
        self.clock.advance(5)
        data = box.data()
        self.assertEqual(data[:2], [b"m2", b"m3"])
        self.assertNotIn(b"m1", data)
        self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 1)

    def test_next(self) -> None:
        """+NXT acks and asks for more, the reply being the inbox."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        (msg,) = self.fetch(consumer)
        box = Inbox(self.broker, "_INBOX.nxt")
        self.ack(msg[1], b"+NXT {\"batch\": 2}", "_INBOX.nxt")
        self.assertEqual(box.data(), [b"m2", b"m3"])
        self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 1)

    def test_ack_all(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="all")
        got = self.fetch(consumer, 3)
        self.ack(got[1][1])
        info = consumer.info()
        self.assertEqual((info["ack_floor"]["stream_seq"], info["num_ack_pending"]), (2, 1))

    def test_ack_none(self) -> None:
        consumer = self.consumer(durable_name="D")
        self.fetch(consumer, 3)
        info = consumer.info()
        self.assertEqual((info["ack_floor"]["stream_seq"], info["num_ack_pending"]), (3, 0))

    def test_backoff(self) -> None:
        """Redelivery after backoff[0], then backoff[1], and the last step after that."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit", backoff=[SECOND, 3 * SECOND], max_deliver=5)
        self.fetch(consumer)
        times = [0.0]
        box = self.pull(consumer, {"batch": 10, "expires": 60 * SECOND}, "_INBOX.2")
        got = box.take()
        self.ack(got[0][1])
        self.ack(got[1][1])
        for _ in range(1200):
            self.clock.advance(0.01)
            for m in box.take():
                self.assertEqual(m[2], b"m1")
                times.append(self.clock.seconds())
        # Delivered 5 times (max_deliver): 1 s, then 3 s (the last step) between them.
        gaps = [round(b - a, 1) for a, b in zip(times, times[1:])]
        self.assertEqual(gaps, [1.0, 3.0, 3.0, 3.0])

    def test_max_deliver(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit", ack_wait=SECOND, max_deliver=2, filter_subject="orders.new")
        self.fetch(consumer)
        box = self.pull(consumer, {"batch": 10, "expires": 60 * SECOND}, "_INBOX.2")
        box.take()
        self.clock.advance(1.1)
        self.assertEqual(box.data(), [b"m1", b"m2", b"m3"])
        self.clock.advance(10)
        self.assertEqual(box.take(), [])

    def test_max_ack_pending(self) -> None:
        """At max_ack_pending deliveries stop until an ack makes room."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit", max_ack_pending=2)
        box = self.pull(consumer, {"batch": 3, "expires": 60 * SECOND}, "_INBOX.2")
        got = box.take()
        self.assertEqual([m[2] for m in got], [b"m1", b"m2"])
        self.ack(got[0][1])
        self.assertEqual(box.data(), [b"m3"])

    def test_workqueue(self) -> None:
        """A workqueue stream is told of each ack, and the message leaves it."""
        stream = FakeStream(self.engine, "WQ", ("wq.>",), retention="workqueue")
        self.publish(2, "wq.job", stream)
        consumer = self.consumer(stream, durable_name="W", ack_policy="explicit")
        got = self.fetch(consumer, 2)
        self.ack(got[0][1])
        self.assertEqual(stream.acked, [1])
        self.assertIsNone(stream.store.load(1))
        self.assertFalse(consumer.needs(1, "wq.job"))
        self.assertTrue(consumer.needs(2, "wq.job"))

    def test_interest_needs(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit", filter_subject="orders.new")
        self.assertTrue(consumer.needs(1, "orders.new"))
        self.assertFalse(consumer.needs(1, "orders.other"))
        (msg,) = self.fetch(consumer)
        self.ack(msg[1])
        self.assertFalse(consumer.needs(1, "orders.new"))


class AckFloorTests(ConsumerTestCase):
    """The ack floor an explicit ack leaves (nats-server's C{processAckMsg}), as consumer info shows it."""

    def fetch(self, consumer: Consumer, n: int = 1, inbox: str = "_INBOX.f") -> List[Tuple[str, Optional[str], bytes, Optional[bytes]]]:
        box = self.pull(consumer, {"batch": n, "no_wait": True}, inbox)
        box.sub.unsubscribe()
        return [m for m in box.take() if m[3] is None or not parse_headers(m[3])[0]]

    def floor(self, consumer: Consumer) -> Tuple[int, int]:
        info = consumer.info()["ack_floor"]
        return info["consumer_seq"], info["stream_seq"]

    def test_floor_follows_acks_in_any_order(self) -> None:
        """The floor is just below the oldest delivery still pending, whatever the order of the acks."""
        self.publish(40)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        got = self.fetch(consumer, 40)
        floors = []
        for i in [1, 3, 2, 5, 4, 6] + list(range(8, 41)):
            self.ack(got[i - 1][1])
            floors.append(self.floor(consumer))
        self.assertEqual(floors[:6], [(1, 1), (1, 1), (3, 3), (3, 3), (5, 5), (6, 6)])
        self.assertEqual(floors[6:], [(6, 6)] * 33)
        self.ack(got[6][1])
        self.assertEqual(self.floor(consumer), (40, 40))

    def test_floor_over_a_filter_gap(self) -> None:
        """A filtered consumer's next pending is beyond many messages of other subjects: the floor goes just below it."""
        self.publish(1, "orders.new")
        self.publish(30, "orders.old")
        self.publish(2, "orders.new")
        consumer = self.consumer(durable_name="D", ack_policy="explicit", filter_subject="orders.new")
        got = self.fetch(consumer, 3)
        self.ack(got[0][1])
        self.assertEqual(self.floor(consumer), (1, 31))
        self.ack(got[1][1])
        self.assertEqual(self.floor(consumer), (2, 32))
        self.ack(got[2][1])
        self.assertEqual(self.floor(consumer), (3, 33))

    def test_floor_after_a_redelivery(self) -> None:
        """An older message redelivered holds the floor below it, though newer ones are acked."""
        self.publish(3)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        m1, m2, m3 = self.fetch(consumer, 3)
        self.ack(m1[1], b"-NAK")
        (again,) = self.fetch(consumer, 1, "_INBOX.2")
        self.ack(m2[1])
        self.ack(m3[1])
        self.assertEqual(self.floor(consumer), (0, 0))
        self.ack(again[1])
        self.assertEqual(self.floor(consumer), (4, 3))


class PushTests(ConsumerTestCase):
    def test_delivers_with_interest(self) -> None:
        """Deliveries go to the deliver subject, as the stream's subjects, only while someone listens."""
        self.publish(2)
        consumer = self.consumer(durable_name="P", ack_policy="explicit", deliver_subject="deliver.p")
        self.assertNotIn("push_bound", consumer.info())
        box = Inbox(self.broker, "deliver.p")
        self.clock.advance(0)
        self.assertEqual([(m[0], m[2]) for m in box.take()], [("orders.new", b"m1"), ("orders.new", b"m2")])
        self.assertTrue(consumer.info()["push_bound"])
        self.stream.publish("orders.x", b"m3")
        self.assertEqual(box.data(), [b"m3"])

    def test_deliver_group(self) -> None:
        self.publish(10)
        a = Inbox(self.broker, "deliver.q", "workers")
        b = Inbox(self.broker, "deliver.q", "workers")
        self.consumer(durable_name="Q", ack_policy="explicit", deliver_subject="deliver.q", deliver_group="workers")
        self.assertEqual(len(a.messages) + len(b.messages), 10)

    def test_idle_heartbeat(self) -> None:
        box = Inbox(self.broker, "deliver.h")
        self.consumer(durable_name="H", ack_policy="explicit", deliver_subject="deliver.h", idle_heartbeat=SECOND)
        self.publish(1)
        self.assertEqual(box.data(), [b"m1"])
        self.clock.advance(0.5)
        self.assertEqual(box.take(), [])
        self.clock.advance(0.6)
        self.assertEqual(
            box.take(),
            [("deliver.h", None, b"", b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 1\r\nNats-Last-Stream: 1\r\n\r\n")],
        )

    def test_flow_control(self) -> None:
        """Past half the window a FlowControl Request; past the window nothing until it is answered."""
        box = Inbox(self.broker, "deliver.f")
        consumer = self.consumer(durable_name="F", ack_policy="none", deliver_subject="deliver.f", idle_heartbeat=SECOND, flow_control=True)
        consumer._maxpb = 200
        for i in range(10):
            self.stream.publish("orders.new", b"x" * 50)
        got = box.take()
        requests = [m for m in got if m[3] and b"FlowControl" in m[3]]
        self.assertEqual(len(requests), 1)
        self.assertEqual(requests[0][3], b"NATS/1.0 100 FlowControl Request\r\n\r\n")
        self.assertTrue(requests[0][1].startswith("$JS.FC.ORDERS.F."))  # type: ignore[union-attr]
        sent = len(got) - 1
        self.assertLess(sent, 10)
        self.clock.advance(1.1)
        (hb,) = box.take()
        self.assertIn(b"Nats-Consumer-Stalled: " + requests[0][1].encode(), hb[3])  # type: ignore[union-attr,operator]
        answer: Optional[str] = requests[0][1]
        while answer:
            self.broker.publish(answer, b"")
            answer = None
            for m in box.take():
                if m[3] is None:
                    sent += 1
                elif b"FlowControl" in m[3]:
                    answer = m[1]
        self.assertEqual(sent, 10)

    def test_headers_only(self) -> None:
        box = Inbox(self.broker, "deliver.ho")
        self.consumer(durable_name="HO", deliver_subject="deliver.ho", headers_only=True)
        self.stream.publish("orders.new", b"12345", b"NATS/1.0\r\nA: b\r\n\r\n")
        self.stream.publish("orders.new", b"123")
        self.assertEqual(
            [(m[2], m[3]) for m in box.take()],
            [(b"", b"NATS/1.0\r\nA: b\r\nNats-Msg-Size: 5\r\n\r\n"), (b"", b"NATS/1.0\r\nNats-Msg-Size: 3\r\n\r\n")],
        )

    def test_inactive_threshold(self) -> None:
        """An ephemeral push consumer nobody listens to goes after inactive_threshold (5 s by default)."""
        box = Inbox(self.broker, "deliver.e")
        consumer = self.consumer(deliver_subject="deliver.e")
        box.sub.unsubscribe()
        self.clock.advance(0)
        self.clock.advance(4.9)
        self.assertFalse(consumer.closed)
        box = Inbox(self.broker, "deliver.e")
        self.clock.advance(0)
        self.clock.advance(10)
        self.assertFalse(consumer.closed)
        box.sub.unsubscribe()
        self.clock.advance(0)
        self.clock.advance(5)
        self.assertTrue(consumer.closed)
        self.assertNotIn(consumer.name, self.stream.consumers)

    def test_redelivery_to_push(self) -> None:
        box = Inbox(self.broker, "deliver.r")
        self.consumer(durable_name="R", ack_policy="explicit", deliver_subject="deliver.r", ack_wait=SECOND)
        self.publish(2)
        first = box.take()
        self.ack(first[0][1])
        self.clock.advance(1.1)
        (again,) = box.take()
        self.assertEqual(again[2], b"m2")
        self.assertTrue(again[1].startswith("$JS.ACK.ORDERS.R.2.2.3."))  # type: ignore[union-attr]


class ReplayOriginalTests(ConsumerTestCase):
    """
    replay_policy original: what the stream held when the consumer started
    comes at the pace it was stored (the gaps between stored times, not
    under a millisecond), then new messages at once, as nats-server's
    C{loopAndGatherMsgs}.
    """

    def stored_with_gaps(self, gaps: List[float]) -> None:
        """m1, then each next message C{gaps[i]} seconds after the one before."""
        self.stream.publish("orders.new", b"m1")
        for i, gap in enumerate(gaps, 2):
            self.clock.advance(gap)
            self.stream.publish("orders.new", b"m%d" % i)

    def arrivals(self, box: Inbox, start: float, until: float) -> List[Tuple[bytes, float]]:
        """Run the clock from timer to timer up to C{until} s after C{start}: each message with when it came (s after C{start})."""
        seen: List[Tuple[bytes, float]] = [(m, round(self.clock.seconds() - start, 3)) for m in box.data()]
        while True:
            due = [call.getTime() for call in self.clock.getDelayedCalls()]
            if not due or min(due) > start + until:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
            seen.extend((m, round(self.clock.seconds() - start, 3)) for m in box.data())
        return seen

    def test_push_paced_then_instant(self) -> None:
        """A push consumer sends m1 at once, m2 0.5 s later, m3 0.2 s after that, m4 with m3 (0.5 ms apart); then new ones at once."""
        self.stored_with_gaps([0.5, 0.2, 0.0005])
        self.clock.advance(30)
        box = Inbox(self.broker, "deliver.r")
        start = self.clock.seconds()
        self.consumer(durable_name="R", deliver_subject="deliver.r", replay_policy="original")
        self.assertEqual(self.arrivals(box, start, 2), [(b"m1", 0.0), (b"m2", 0.5), (b"m3", 0.7), (b"m4", 0.7)])
        self.clock.advance(10)
        self.stream.publish("orders.new", b"m5")
        self.assertEqual(box.data(), [b"m5"])

    def test_instant_is_instant(self) -> None:
        """The default, replay instant, sends the whole backlog at once."""
        self.stored_with_gaps([0.5, 0.2])
        box = Inbox(self.broker, "deliver.i")
        self.consumer(durable_name="I", deliver_subject="deliver.i")
        self.assertEqual(box.data(), [b"m1", b"m2", b"m3"])

    def test_new_messages_during_replay_wait_their_turn(self) -> None:
        """
        A message stored while the backlog is paced does not jump the queue,
        and keeps its own gap (0.3 s after m2): nats-server stays in replay
        until its loop finds nothing more to send.
        """
        self.stored_with_gaps([1.0])
        box = Inbox(self.broker, "deliver.r")
        start = self.clock.seconds()
        self.consumer(durable_name="R", deliver_subject="deliver.r", replay_policy="original")
        self.assertEqual(box.data(), [b"m1"])
        self.clock.advance(0.3)
        self.stream.publish("orders.new", b"m3")
        self.assertEqual(self.arrivals(box, start, 2), [(b"m2", 1.0), (b"m3", 1.3)])

    def test_pull_paced(self) -> None:
        """A pull request is served at the stored pace too; the request is not used up while it waits."""
        self.stored_with_gaps([0.4, 0.3])
        consumer = self.consumer(durable_name="P", ack_policy="explicit", replay_policy="original")
        start = self.clock.seconds()
        box = self.pull(consumer, {"batch": 3, "expires": 5 * SECOND})
        self.assertEqual(self.arrivals(box, start, 1), [(b"m1", 0.0), (b"m2", 0.4), (b"m3", 0.7)])
        self.assertEqual(consumer.info()["num_waiting"], 0)

    def test_pull_no_wait_gets_the_batch(self) -> None:
        """A no_wait pull is not ended early while the next message of its batch waits its time."""
        self.stored_with_gaps([0.4])
        consumer = self.consumer(durable_name="P", ack_policy="explicit", replay_policy="original")
        start = self.clock.seconds()
        box = self.pull(consumer, {"batch": 2, "no_wait": True, "expires": 5 * SECOND})
        self.assertEqual(self.arrivals(box, start, 1), [(b"m1", 0.0), (b"m2", 0.4)])

    def test_restart_paces_again(self) -> None:
        """A durable consumer made again (a restart) paces what is left from where it was."""
        self.stored_with_gaps([0.2, 0.6])
        box = Inbox(self.broker, "deliver.r")
        consumer = self.consumer(durable_name="R", deliver_subject="deliver.r", replay_policy="original")
        self.assertEqual(box.data(), [b"m1"])
        consumer.stop()
        self.stream.consumers.clear()
        again = Consumer(self.stream, "R", consumer.config, self.stream.consumer_stores["R"], consumer.created)
        self.stream.attach(again)
        start = self.clock.seconds()
        again.start()
        self.addCleanup(again.stop)
        self.assertEqual(self.arrivals(box, start, 1), [(b"m2", 0.0), (b"m3", 0.6)])

    def test_deleted_while_waiting(self) -> None:
        """A consumer deleted while it waits for the next message sends nothing more and leaves no timer."""
        self.stored_with_gaps([0.5])
        box = Inbox(self.broker, "deliver.r")
        consumer = self.consumer(durable_name="R", deliver_subject="deliver.r", replay_policy="original")
        self.assertEqual(box.data(), [b"m1"])
        consumer.delete()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1)
        self.assertEqual(box.data(), [])


class RestartTests(ConsumerTestCase):
    def test_resumes(self) -> None:
        """A consumer made again from its store resumes: unacked redelivered, acked never."""
        self.publish(4)
        consumer = self.consumer(durable_name="D", ack_policy="explicit", ack_wait=2 * SECOND)
        box = self.pull(consumer, {"batch": 3})
        got = box.take()
        self.ack(got[0][1])
        self.ack(got[2][1])
        self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 1)
        consumer.stop()
        self.stream.consumers.clear()
        store = self.stream.consumer_stores["D"]
        again = Consumer(self.stream, "D", consumer.config, store, consumer.created)
        self.stream.attach(again)
        again.start()
        self.addCleanup(again.stop)
        info = again.info()
        self.assertEqual((info["delivered"]["stream_seq"], info["ack_floor"]["stream_seq"], info["num_ack_pending"]), (3, 1, 1))
        box = self.pull(again, {"batch": 5, "expires": 60 * SECOND}, "_INBOX.2")
        (m4,) = box.take()
        self.assertEqual(m4[2], b"m4")
        self.ack(m4[1])
        self.clock.advance(2.1)
        got = box.take()
        self.assertEqual([m[2] for m in got], [b"m2"])
        self.assertTrue(got[0][1].startswith("$JS.ACK.ORDERS.D.2.2.5."))  # type: ignore[union-attr]

    def test_killed_after_acks_written(self) -> None:
        """
        A fetch of 100 and its acks, the last with a reply (AckSync), on a
        file store killed (-9) after the answer: made again, the consumer
        has the floor at 100 and redelivers nothing; acks sent after the
        answer and lost with the kill (their turn never ended) come again.
        """
        self.publish(103)
        path = os.path.abspath(self.mktemp())
        config = check_config(self.stream, {"durable_name": "D", "ack_policy": "explicit", "ack_wait": 2 * SECOND})

        def start(store: FileConsumerStore) -> Consumer:
            consumer = Consumer(self.stream, "D", config, store, self.engine.now())
            self.stream.attach(consumer)
            consumer.start()
            self.addCleanup(consumer.stop)
            return consumer

        store = FileConsumerStore(path, clock=self.clock)
        consumer = start(store)
        got = self.pull(consumer, {"batch": 100}).take()
        self.clock.advance(0)
        self.assertEqual(len(got), 100)
        answer = Inbox(self.broker, "_INBOX.acked")
        for _, reply, _, _ in got[1:] + got[:1]:
            self.ack(reply, b"+ACK", "_INBOX.acked" if reply is got[0][1] else None)
        self.assertEqual(answer.take(), [])  # not before the write
        self.clock.advance(0)
        self.assertEqual(answer.take(), [("_INBOX.acked", None, b"", None)])
        more = self.pull(consumer, {"batch": 3}, "_INBOX.2").take()
        self.clock.advance(0)
        self.ack(more[0][1])  # in the buffer, not written: lost with the kill
        store.abandon()
        consumer.stop()
        self.stream.consumers.clear()

        again = start(FileConsumerStore(path, clock=self.clock))
        info = again.info()
        self.assertEqual((info["ack_floor"]["stream_seq"], info["delivered"]["stream_seq"], info["num_ack_pending"]), (100, 103, 3))
        box = self.pull(again, {"batch": 10, "expires": 60 * SECOND}, "_INBOX.3")
        self.assertEqual(box.take(), [])
        self.clock.advance(2.1)
        self.assertEqual([m[2] for m in box.take()], [b"m101", b"m102", b"m103"])

    def test_new_start_kept(self) -> None:
        """deliver_policy new: the starting point is kept, so a restart does not skip what came meanwhile."""
        self.publish(2)
        consumer = self.consumer(durable_name="D", ack_policy="explicit", deliver_policy="new")
        consumer.stop()
        self.stream.consumers.clear()
        self.publish(1, "orders.later")
        again = Consumer(self.stream, "D", consumer.config, self.stream.consumer_stores["D"], consumer.created)
        self.stream.attach(again)
        again.start()
        self.addCleanup(again.stop)
        self.assertEqual(self.pull(again, {"batch": 5, "no_wait": True}).data()[:-1], [b"m1"])


class InfoTests(ConsumerTestCase):
    def test_fields_in_order(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        info = consumer.info()
        self.assertEqual(
            list(info),
            ["stream_name", "name", "created", "config", "delivered", "ack_floor", "num_ack_pending",
             "num_redelivered", "num_waiting", "num_pending"],
        )
        self.assertEqual(info["created"], rfc3339(BASE))


class ApiTests(ConsumerTestCase):
    """consumer_api's handlers, answered as api.py answers them (JS.md)."""

    def test_durable_create_as_nats_server(self) -> None:
        """The answer to a durable create, byte for byte as nats-server 2.9.10's (bar the time)."""
        self.publish(3)
        answer = self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], {"stream_name": "ORDERS", "config": {"durable_name": "D", "ack_policy": "explicit"}})
        self.assertEqual(
            json.dumps(answer, separators=(",", ":")),
            '{"type":"io.nats.jetstream.api.v1.consumer_create_response","stream_name":"ORDERS","name":"D",'
            '"created":"%s","config":{"durable_name":"D","deliver_policy":"all","ack_policy":"explicit",'
            '"ack_wait":30000000000,"max_deliver":-1,"replay_policy":"instant","max_waiting":512,"max_ack_pending":1000,'
            '"num_replicas":0},"delivered":{"consumer_seq":0,"stream_seq":0},"ack_floor":{"consumer_seq":0,"stream_seq":0},'
            '"num_ack_pending":0,"num_redelivered":0,"num_waiting":0,"num_pending":3}' % rfc3339(BASE),
        )
        self.assertIn("D", self.stream.consumers)

    def test_ephemeral_create(self) -> None:
        answer = self.request("CONSUMER.CREATE", ["ORDERS"], {"stream_name": "ORDERS", "config": {"ack_policy": "explicit"}})
        assert answer is not None
        self.assertEqual(len(answer["name"]), 8)
        self.assertNotIn("name", answer["config"])
        self.assertEqual(answer["config"]["inactive_threshold"], 5 * SECOND)
        self.assertEqual(list(self.stream.consumers), [answer["name"]])

    def test_named_create_with_filter(self) -> None:
        answer = self.request(
            "CONSUMER.CREATE", ["ORDERS", "N", "orders", "new"],
            {"stream_name": "ORDERS", "config": {"durable_name": "N", "ack_policy": "explicit", "filter_subject": "orders.new"}},
        )
        assert answer is not None
        self.assertEqual((answer["name"], answer["config"]["name"], answer["config"]["durable_name"]), ("N", "N", "N"))
        mismatch = self.request(
            "CONSUMER.CREATE", ["ORDERS", "M", "orders", "new"],
            {"stream_name": "ORDERS", "config": {"ack_policy": "explicit", "filter_subject": "orders.old"}},
        )
        self.assertEqual(self.error(mismatch), (400, 10131, "Consumer create request did not match filtered subject from create subject"))
        # A one-token tail is no filter to nats-server.
        answer = self.request("CONSUMER.CREATE", ["ORDERS", "O", "x"], {"stream_name": "ORDERS", "config": {"ack_policy": "explicit"}})
        assert answer is not None
        self.assertEqual(answer["name"], "O")

    def test_create_refusals(self) -> None:
        body = {"stream_name": "ORDERS", "config": {"ack_policy": "explicit"}}
        self.assertEqual(self.error(self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], body))[1], 10018)
        self.assertEqual(
            self.error(self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], {"stream_name": "ORDERS", "config": {"durable_name": "E"}}))[1],
            10017,
        )
        self.assertEqual(self.error(self.request("CONSUMER.CREATE", ["OTHER"], body))[:2], (400, 10056))
        self.assertEqual(
            self.error(self.request("CONSUMER.CREATE", ["ORDERS"], {"stream_name": "ORDERS", "config": {"durable_name": "X"}}))[1], 10020,
        )
        self.assertEqual(self.error(self.request("CONSUMER.CREATE", ["ORDERS"], b"{nope"))[:2], (400, 10025))
        self.assertEqual(self.error(self.request("CONSUMER.CREATE", ["NOPE"], {"stream_name": "NOPE", "config": {}}))[:2], (404, 10059))
        self.assertEqual(
            self.error(self.request("CONSUMER.CREATE", ["ORDERS", "a/b"], {"stream_name": "ORDERS", "config": {}}))[1], 10127,
        )
        self.assertEqual(self.stream.consumers, {})

    def test_create_again(self) -> None:
        """The same config again: its info; what may change changes; what may not is refused."""
        body = {"stream_name": "ORDERS", "config": {"durable_name": "D", "ack_policy": "explicit"}}
        first = self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], body)
        self.assertEqual(self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], body), first)
        body["config"]["ack_policy"] = "all"  # type: ignore[index]
        self.assertEqual(
            self.error(self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], body)), (500, 10012, "ack policy can not be updated"),
        )
        body["config"] = {"durable_name": "D", "ack_policy": "explicit", "max_ack_pending": 5}
        answer = self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], body)
        assert answer is not None
        self.assertEqual(answer["config"]["max_ack_pending"], 5)
        self.assertEqual(self.stream.consumers["D"].config["max_ack_pending"], 5)

    def test_info_delete(self) -> None:
        self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], {"stream_name": "ORDERS", "config": {"durable_name": "D", "ack_policy": "explicit"}})
        info = self.request("CONSUMER.INFO", ["ORDERS", "D"])
        assert info is not None
        self.assertEqual((info["type"], info["name"]), ("io.nats.jetstream.api.v1.consumer_info_response", "D"))
        self.assertEqual(self.error(self.request("CONSUMER.INFO", ["ORDERS", "D"], b'{"x":1}'))[1], 10038)
        self.assertEqual(self.error(self.request("CONSUMER.INFO", ["ORDERS", "X"]))[:2], (404, 10014))
        self.assertEqual(self.error(self.request("CONSUMER.INFO", ["NOPE", "D"]))[:2], (404, 10059))
        box = self.pull(self.stream.consumers["D"], {"batch": 1, "expires": SECOND})
        self.assertEqual(
            self.request("CONSUMER.DELETE", ["ORDERS", "D"]),
            {"type": "io.nats.jetstream.api.v1.consumer_delete_response", "success": True},
        )
        self.assertEqual(box.statuses(), ["409 Consumer Deleted"])
        self.assertEqual(self.error(self.request("CONSUMER.DELETE", ["ORDERS", "D"]))[:2], (404, 10014))

    def test_names_and_list(self) -> None:
        for name in ("c", "a", "b"):
            self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", name], {"stream_name": "ORDERS", "config": {"durable_name": name}})
        self.assertEqual(
            self.request("CONSUMER.NAMES", ["ORDERS"]),
            {"type": "io.nats.jetstream.api.v1.consumer_names_response", "total": 3, "offset": 0, "limit": 1024, "consumers": ["a", "b", "c"]},
        )
        listed = self.request("CONSUMER.LIST", ["ORDERS"], {"offset": 1})
        assert listed is not None
        self.assertEqual((listed["total"], listed["offset"], listed["limit"]), (3, 1, 256))
        self.assertEqual([c["name"] for c in listed["consumers"]], ["b", "c"])
        self.assertEqual(self.error(self.request("CONSUMER.NAMES", ["ORDERS"], b"[1]"))[1], 10025)
        self.assertEqual(
            json.dumps(self.request("CONSUMER.LIST", ["NOPE"]), separators=(",", ":")),
            '{"type":"io.nats.jetstream.api.v1.consumer_list_response","error":{"code":404,"err_code":10059,'
            '"description":"stream not found"},"total":0,"offset":0,"limit":0,"consumers":[]}',
        )

    def test_msg_next(self) -> None:
        self.publish(2)
        self.request("CONSUMER.DURABLE.CREATE", ["ORDERS", "D"], {"stream_name": "ORDERS", "config": {"durable_name": "D", "ack_policy": "explicit"}})
        box = Inbox(self.broker, "_INBOX.n")
        self.assertIsNone(self.request("CONSUMER.MSG.NEXT", ["ORDERS", "D"], b"2", "_INBOX.n"))
        self.assertEqual(box.data(), [b"m1", b"m2"])
        self.assertIsNone(self.request("CONSUMER.MSG.NEXT", ["ORDERS", "X"], b"2", "_INBOX.n"))
        self.assertEqual(box.take(), [])

    def test_push_create_bound(self) -> None:
        """A push consumer whose deliver subject is listened to says push_bound, and delivers."""
        self.publish(1)
        box = Inbox(self.broker, "deliver.x")
        answer = self.request("CONSUMER.CREATE", ["ORDERS"], {"stream_name": "ORDERS", "config": {"deliver_subject": "deliver.x"}})
        assert answer is not None
        self.assertTrue(answer["push_bound"])
        self.assertEqual(answer["delivered"]["consumer_seq"], 0)
        self.assertEqual(box.data(), [b"m1"])


class StoreFilterTests(ConsumerTestCase):
    def test_filter_on_the_only_subject(self) -> None:
        """A filter that takes every subject of the stream asks the store for everything, and still filters if the stream grows."""
        stream = FakeStream(self.engine, "ONE", ("one",))
        consumer = self.consumer(stream, durable_name="D", ack_policy="explicit", filter_subject="one")
        self.assertIsNone(consumer._store_filter)
        stream.publish("one", b"1")
        stream.config["subjects"] = ["one", "two"]
        stream.publish("two", b"2")
        stream.publish("one", b"3")
        self.assertEqual(self.pull(consumer, {"batch": 5, "no_wait": True}).data()[:-1], [b"1", b"3"])


class WireTests(SynchronousTestCase):
    """What a real client connection reads: the frames of deliveries, and its acks taken."""

    def setUp(self) -> None:
        self.harness = Harness()
        self.engine = FakeEngine(self.harness.broker, self.harness.clock)
        self.stream = FakeStream(self.engine)
        self.client = self.harness.connect(b'CONNECT {"verbose":false,"headers":true}\r\n')

    def test_push_frames_and_ack(self) -> None:
        """HMSG/MSG on the stream's subject to the deliver subject's sid, the ack reply, and an ack that counts."""
        self.client.send(b"SUB deliver.w 7\r\nPING\r\n")
        self.assertEqual(self.client.received(), b"PONG\r\n")
        config = check_config(self.stream, {"durable_name": "W", "ack_policy": "explicit", "deliver_subject": "deliver.w"})
        consumer = Consumer(self.stream, "W", config, MemoryConsumerStore(), self.engine.now())
        self.stream.attach(consumer)
        consumer.start()
        self.addCleanup(consumer.stop)
        self.stream.publish("orders.new", b"hello", b"NATS/1.0\r\nA: b\r\n\r\n")
        self.stream.publish("orders.old", b"bye")
        self.assertEqual(
            self.client.received(),
            b"HMSG orders.new 7 $JS.ACK.ORDERS.W.1.1.1.%d.0 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n"
            b"MSG orders.old 7 $JS.ACK.ORDERS.W.1.2.2.%d.0 3\r\nbye\r\n" % (BASE, BASE),
        )
        self.client.send(b"PUB $JS.ACK.ORDERS.W.1.1.1.%d.0 _INBOX.a 4\r\n+ACK\r\n" % BASE)
        self.assertEqual(consumer.info()["num_ack_pending"], 1)
        self.assertEqual(consumer.info()["ack_floor"]["stream_seq"], 1)

    def test_pull_frames(self) -> None:
        """A pull request's inbox gets the messages and the status lines as HMSGs with no payload."""
        self.client.send(b"SUB _INBOX.p.* 3\r\nPING\r\n")
        self.client.received()
        config = check_config(self.stream, {"durable_name": "P", "ack_policy": "explicit"})
        consumer = Consumer(self.stream, "P", config, MemoryConsumerStore(), self.engine.now())
        self.stream.attach(consumer)
        consumer.start()
        self.addCleanup(consumer.stop)
        self.stream.publish("orders.new", b"x")
        consumer.next_request("_INBOX.p.1", b'{"batch": 2, "no_wait": true}')
        self.assertEqual(
            self.client.received(),
            b"MSG orders.new 3 $JS.ACK.ORDERS.P.1.1.1.%d.0 1\r\nx\r\n"
            b"HMSG _INBOX.p.1 3 81 81\r\nNATS/1.0 408 Request Timeout\r\nNats-Pending-Messages: 1\r\nNats-Pending-Bytes: 0\r\n\r\n\r\n"
            % BASE,
        )


def in_thread(scenario: Any, *args: Any) -> Any:
    return threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(scenario(*args), 90)))


class NatsPyTests(TestCase):
    """nats-py's consumers against a real eventsvc process, as a user runs both."""

    timeout = 180

    def setUp(self) -> None:
        if nats is None:
            process.require("nats-py (pip install nats-py)")
        self.folder = os.path.abspath(self.mktemp())
        os.makedirs(self.folder)
        self.config = process.write_config(
            os.path.join(self.folder, "c.toml"), '[service]\nhost = "127.0.0.1"\nport = 0\n[jetstream]\n'
        )

    def start(self) -> Any:
        server = process.eventsvc(self.config)
        return process.started(self, server).addCallback(lambda port: (server, "nats://127.0.0.1:%d" % port))

    def run_scenario(self, scenario: Any) -> Any:
        d = self.start()
        d.addCallback(lambda started: in_thread(scenario, started[1]))
        return d

    def test_pull_fetch_and_ack(self) -> None:
        """pull_subscribe, fetch 100 and ack each, then the rest; the consumer's info says all is acked."""
        async def scenario(url: str) -> Any:
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.add_stream(name="ORDERS", subjects=["orders.>"])
            for i in range(150):
                await js.publish("orders.%d" % (i % 3), b"m%d" % i)
            sub = await js.pull_subscribe("orders.>", durable="P")
            got = []
            for _ in range(2):
                msgs = await sub.fetch(100, timeout=5)
                for msg in msgs:
                    got.append((msg.subject, msg.data, msg.metadata.sequence.stream))
                    await msg.ack()
            await nc.flush()
            info = await js.consumer_info("ORDERS", "P")
            await nc.close()
            return got, (info.num_ack_pending, info.ack_floor.stream_seq, info.delivered.stream_seq, info.num_pending)

        def check(result: Any) -> None:
            got, counts = result
            self.assertEqual(got, [("orders.%d" % (i % 3), b"m%d" % i, i + 1) for i in range(150)])
            self.assertEqual(counts, (0, 150, 150, 0))

        return self.run_scenario(scenario).addCallback(check)

    def test_push_queue(self) -> None:
        """Two push subscribers in one queue group share the messages, each once."""
        async def scenario(url: str) -> Any:
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.add_stream(name="JOBS", subjects=["jobs.>"])
            seen: List[List[bytes]] = [[], []]
            done = asyncio.Event()

            def handler(i: int) -> Any:
                async def cb(msg: Any) -> None:
                    seen[i].append(msg.data)
                    await msg.ack()
                    if len(seen[0]) + len(seen[1]) >= 40:
                        done.set()
                return cb

            await js.subscribe("jobs.>", queue="workers", durable="workers", cb=handler(0), manual_ack=True)
            await js.subscribe("jobs.>", queue="workers", durable="workers", cb=handler(1), manual_ack=True)
            for i in range(40):
                await js.publish("jobs.x", b"%d" % i)
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.sleep(0.3)
            await nc.close()
            return seen

        def check(seen: List[List[bytes]]) -> None:
            self.assertEqual(sorted(seen[0] + seen[1], key=int), [b"%d" % i for i in range(40)])

        return self.run_scenario(scenario).addCallback(check)

    def test_nak_term_and_ack_wait(self) -> None:
        """nak: delivered again at once; term: never again; no ack: again after ack_wait."""
        async def scenario(url: str) -> Any:
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.add_stream(name="WORK", subjects=["work"])
            for i in range(3):
                await js.publish("work", b"w%d" % i)
            sub = await js.pull_subscribe(
                "work", durable="W", config=nats.js.api.ConsumerConfig(ack_wait=1, ack_policy="explicit"),
            )
            out = []
            (m,) = await sub.fetch(1, timeout=5)
            await m.nak()
            (m,) = await sub.fetch(1, timeout=5)
            out.append(("nak", m.data, m.metadata.num_delivered))
            await m.term()
            (m,) = await sub.fetch(1, timeout=5)
            out.append(("next", m.data, m.metadata.num_delivered))
            await asyncio.sleep(1.5)
            msgs = await sub.fetch(2, timeout=5)
            out.extend(("after ack_wait", m.data, m.metadata.num_delivered) for m in msgs)
            for m in msgs:
                await m.ack_sync()
            try:
                await sub.fetch(1, timeout=1.5)
                left = True
            except nats.errors.TimeoutError:
                left = False
            await nc.close()
            return out, left

        def check(result: Any) -> None:
            out, left = result
            self.assertEqual(out, [("nak", b"w0", 2), ("next", b"w1", 1), ("after ack_wait", b"w1", 2), ("after ack_wait", b"w2", 1)])
            self.assertFalse(left)

        return self.run_scenario(scenario).addCallback(check)

    def test_durable_survives_a_restart(self) -> None:
        """A durable resumes after a restart: what was acked is not delivered again, what was not is."""
        async def first(url: str) -> None:
            nc = await nats.connect(url)
            js = nc.jetstream()
            await js.add_stream(name="KEPT", subjects=["kept"])
            for i in range(4):
                await js.publish("kept", b"k%d" % i)
            sub = await js.pull_subscribe("kept", durable="D", config=nats.js.api.ConsumerConfig(ack_wait=1))
            msgs = await sub.fetch(2, timeout=5)
            await msgs[0].ack_sync()
            await nc.close()

        async def second(url: str) -> Any:
            nc = await nats.connect(url)
            js = nc.jetstream()
            sub = await js.pull_subscribe("kept", durable="D")
            await asyncio.sleep(1.2)
            msgs = await sub.fetch(5, timeout=3)
            await nc.close()
            return sorted(m.data for m in msgs)

        d = self.start()

        def stop_after(started: Any) -> Any:
            server, url = started
            return in_thread(first, url).addCallback(lambda _: threads.deferToThread(server.stop))

        d.addCallback(stop_after)
        d.addCallback(lambda _: self.start())
        d.addCallback(lambda started: in_thread(second, started[1]))
        d.addCallback(self.assertEqual, [b"k1", b"k2", b"k3"])
        return d


class ConsumerWire:
    """A NATS client on a socket that keeps every message an exchange brings, in order (for byte comparisons)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buffer = b""
        self._line()
        self.sock.sendall(b'CONNECT {"verbose":false,"headers":true,"protocol":1}\r\nSUB _R.> 1\r\nPING\r\n')
        while self._line() != b"PONG":
            pass
        self.n = 0

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("closed")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _body(self, n: int) -> bytes:
        while len(self.buffer) < n + 2:
            self.buffer += self.sock.recv(65536)
        data, self.buffer = self.buffer[:n], self.buffer[n + 2:]
        return data

    def exchange(self, subject: str, payload: bytes = b"", reply: Optional[str] = None, wait: float = 0.0) -> List[Tuple[bytes, bytes, bytes, bytes]]:
        """Publish, then (after C{wait} seconds) PING: every message that came before the PONG, as (subject, reply, headers, payload)."""
        if reply is None:
            self.n += 1
            reply = "_R.%d" % self.n
        self.sock.sendall(b"PUB %s %s %d\r\n%s\r\n" % (subject.encode(), reply.encode(), len(payload), payload))
        if wait:
            time.sleep(wait)
        self.sock.sendall(b"PING\r\n")
        got = []
        while True:
            parts = self._line().split(b" ")
            if parts[0] == b"PONG":
                return got
            if parts[0] == b"MSG":
                got.append((parts[1], parts[3] if len(parts) == 5 else b"", b"", self._body(int(parts[-1]))))
            elif parts[0] == b"HMSG":
                data = self._body(int(parts[-1]))
                got.append((parts[1], parts[3] if len(parts) == 6 else b"", data[:int(parts[-2])], data[int(parts[-2]):]))


_CONSUMER_TIMES = re.compile(rb'("(?:created|last_active)":")[^"]*(")')
_ACK_TS = re.compile(rb"^(\$JS\.ACK\.[^.]+\.[^.]+\.\d+\.\d+\.\d+\.)\d+(\.\d+)$")


def _clean(message: Tuple[bytes, bytes, bytes, bytes]) -> Tuple[bytes, bytes, bytes, bytes]:
    subject, reply, headers, payload = message
    if subject.startswith(b"_R."):
        subject = b"_R"
    return (subject, _ACK_TS.sub(rb"\1T\2", reply), headers, _CONSUMER_TIMES.sub(rb"\1T\2", payload))


def consumer_sequence(port: int) -> List[Any]:
    """Consumer requests, pulls and acks, as one client would send them; the answers normalized (times)."""
    wire = ConsumerWire(port)
    out: List[Any] = []

    def do(subject: str, body: Any = b"", reply: Optional[str] = None, wait: float = 0.0) -> List[Tuple[bytes, bytes, bytes, bytes]]:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        got = wire.exchange(subject, payload, reply, wait)
        out.append((_ACK_TS.sub(rb"\1T\2", subject.encode()), [_clean(m) for m in got]))
        return got

    try:
        do("$JS.API.STREAM.CREATE.C", {"name": "C", "subjects": ["c.>"], "storage": "memory"})
        for subject, data in (("c.a", b"one"), ("c.b", b"two"), ("c.a", b"three")):
            do(subject, data)
        durable = {"stream_name": "C", "config": {"durable_name": "D", "ack_policy": "explicit"}}
        do("$JS.API.CONSUMER.DURABLE.CREATE.C.D", durable)
        do("$JS.API.CONSUMER.DURABLE.CREATE.C.D", durable)
        do("$JS.API.CONSUMER.DURABLE.CREATE.C.D", {"stream_name": "C", "config": {"durable_name": "D", "ack_policy": "all"}})
        do("$JS.API.CONSUMER.DURABLE.CREATE.C.D", {"stream_name": "C", "config": {"durable_name": "D", "ack_policy": "explicit", "max_ack_pending": 20}})
        do("$JS.API.CONSUMER.CREATE.C.N", {"stream_name": "C", "config": {"ack_policy": "explicit", "filter_subject": "c.a"}})
        do("$JS.API.CONSUMER.CREATE.C.F.c.b", {"stream_name": "C", "config": {"filter_subject": "c.a"}})
        do("$JS.API.CONSUMER.CREATE.C", {"stream_name": "C", "config": {"durable_name": "X"}})
        do("$JS.API.CONSUMER.CREATE.C", {"stream_name": "Y", "config": {}})
        do("$JS.API.CONSUMER.CREATE.C", b"{")
        do("$JS.API.CONSUMER.CREATE.C", {"stream_name": "C", "config": {"deliver_policy": "by_start_sequence"}})
        do("$JS.API.CONSUMER.CREATE.C", {"stream_name": "C", "config": {"deliver_policy": "last_per_subject"}})
        do("$JS.API.CONSUMER.CREATE.C.P", {"stream_name": "C", "config": {"deliver_subject": "c.x"}})
        do("$JS.API.CONSUMER.CREATE.C.P", {"stream_name": "C", "config": {"deliver_subject": "p.x", "idle_heartbeat": 50000000}})
        do("$JS.API.CONSUMER.CREATE.C.P", {"stream_name": "C", "config": {"deliver_subject": "p.x", "flow_control": True}})
        do("$JS.API.CONSUMER.CREATE.C.Q", {"stream_name": "C", "config": {"idle_heartbeat": 1000000000}})
        do("$JS.API.CONSUMER.CREATE.C.Q", {"stream_name": "C", "config": {"filter_subject": "zzz"}})
        do("$JS.API.CONSUMER.CREATE.C.Q", {"stream_name": "C", "config": {"ack_policy": "explicit", "backoff": [1000000000, 2000000000], "max_deliver": 2}})
        do("$JS.API.CONSUMER.DURABLE.CREATE.C.B", {"stream_name": "C", "config": {
            "durable_name": "B", "ack_policy": "explicit", "backoff": [1000000000, 2000000000], "max_deliver": 5,
            "headers_only": True, "description": "d", "sample_freq": "50%", "max_batch": 10, "max_expires": 1000000000,
            "max_bytes": 1000, "deliver_policy": "by_start_time", "opt_start_time": "2020-01-01T00:00:00.5+01:00"}})
        do("$JS.API.CONSUMER.DURABLE.CREATE.C.PP", {"stream_name": "C", "config": {"durable_name": "PP", "deliver_subject": "pp.x", "deliver_group": "g"}})
        do("$JS.API.CONSUMER.INFO.C.D")
        do("$JS.API.CONSUMER.INFO.C.NOPE")
        do("$JS.API.CONSUMER.INFO.NOPE.D")
        do("$JS.API.CONSUMER.INFO.C.D", b'{"x":1}')
        do("$JS.API.CONSUMER.NAMES.C")
        do("$JS.API.CONSUMER.NAMES.NOPE")
        do("$JS.API.CONSUMER.LIST.C", {"offset": 2})
        first = do("$JS.API.CONSUMER.MSG.NEXT.C.D", {"batch": 2}, "_R.pull1", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.D", {"batch": 5, "no_wait": True}, "_R.pull2", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.D", {"batch": 5, "no_wait": True}, "_R.pull3", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.D", b"{", "_R.pull4", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.B", {"batch": 11}, "_R.pull5", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.PP", b"", "_R.pull6", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.B", {"batch": 1, "expires": 100000000, "idle_heartbeat": 60000000}, "_R.pull7", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.B", {"batch": 1, "max_bytes": 2000}, "_R.pull8", wait=0.2)
        do("$JS.API.CONSUMER.MSG.NEXT.C.B", {"batch": 3, "max_bytes": 100}, "_R.pull9", wait=0.2)
        do(first[0][1].decode(), b"+ACK", "_R.ack1")
        do(first[1][1].decode(), b"-NAK", "_R.ack2")
        do("$JS.API.CONSUMER.MSG.NEXT.C.D", {"batch": 1}, "_R.pull10", wait=0.2)
        do("$JS.API.CONSUMER.INFO.C.D")
        do("$JS.API.CONSUMER.DELETE.C.N", b"{}")
        do("$JS.API.CONSUMER.DELETE.C.N")
        do("$JS.API.CONSUMER.DELETE.C.D", b"x")
        do("$JS.API.STREAM.DELETE.C")
    finally:
        wire.sock.close()
    return out


class AgainstReferenceTests(TestCase):
    """The same consumer requests to nats-server -js and to eventsvc: the same messages back, times aside."""

    timeout = 120

    def test_same_answers(self) -> None:
        reference = process.nats_server("-js", "-sd", os.path.abspath(self.mktemp()))
        config = process.write_config(os.path.abspath(self.mktemp()), '[service]\nhost = "127.0.0.1"\nport = 0\n[jetstream]\n')
        ours = process.eventsvc(config)

        def compare(ports: List[int]) -> Any:
            return threads.deferToThread(lambda: (consumer_sequence(ports[0]), consumer_sequence(ports[1])))

        def check(results: Tuple[List[Any], List[Any]]) -> None:
            theirs, mine = results
            self.assertEqual(len(mine), len(theirs))
            for a, b in zip(theirs, mine):
                self.assertEqual(b, a)

        d = process.started(self, reference)
        d.addCallback(lambda port: process.started(self, ours).addCallback(lambda mine: [port, mine]))
        d.addCallback(compare)
        d.addCallback(check)
        return d


class ExpiryMarginTests(ConsumerTestCase):
    def test_no_message_in_the_last_moment(self) -> None:
        """A message stored in a pull request's last 2 ms is not given to it (its client has given up): 408, and the next request gets it."""
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 1, "expires": SECOND})
        self.clock.advance(0.999)
        self.publish(1)
        self.assertEqual(box.statuses(), ["408 Request Timeout"])
        self.assertEqual(self.pull(consumer, {"batch": 1}, "_INBOX.2").data(), [b"m1"])

    def test_message_before_the_margin(self) -> None:
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        box = self.pull(consumer, {"batch": 1, "expires": SECOND})
        self.clock.advance(0.99)
        self.publish(1)
        self.assertEqual(box.data(), [b"m1"])


class PurgeTests(ConsumerTestCase):
    def test_purge_moves_floors(self) -> None:
        """After a purge of everything the consumer starts past it: delivered and ack floor at the last sequence."""
        self.publish(4)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        self.pull(consumer, {"batch": 2}).take()
        self.stream.store.purge()
        consumer.purged()
        info = consumer.info()
        self.assertEqual(
            (info["delivered"]["stream_seq"], info["ack_floor"]["stream_seq"], info["num_ack_pending"], info["num_pending"]),
            (4, 4, 0, 0),
        )
        self.publish(1)
        self.assertEqual(self.pull(consumer, {"batch": 2, "no_wait": True}, "_INBOX.2").data()[:-1], [b"m1"])

    def test_one_removed(self) -> None:
        """purged(seq, subject): a message removed (a limit, a delete) leaves pending and the count, at no cost per message."""
        self.publish(3)
        consumer = self.consumer(durable_name="D", ack_policy="explicit")
        self.pull(consumer, {"batch": 1}).take()
        self.assertEqual((consumer.info()["num_ack_pending"], consumer.info()["num_pending"]), (1, 2))
        for seq in (1, 3):
            self.stream.store.remove(seq)
            consumer.purged(seq, "orders.new")
        self.assertEqual((consumer.info()["num_ack_pending"], consumer.info()["num_pending"]), (0, 1))
        self.assertEqual(self.pull(consumer, {"batch": 5, "no_wait": True}, "_INBOX.2").data()[:-1], [b"m2"])


class InterestTests(ConsumerTestCase):
    def test_ack_by_all(self) -> None:
        """On an interest stream a message goes once every consumer that wants it has acked it."""
        stream = FakeStream(self.engine, "I", ("i.>",), retention="interest")
        a = self.consumer(stream, durable_name="A", ack_policy="explicit")
        b = self.consumer(stream, durable_name="B", ack_policy="explicit", filter_subject="i.b")
        stream.publish("i.a", b"1")
        stream.publish("i.b", b"2")
        (m1, m2) = [m for m in self.pull(a, {"batch": 2}).take()]
        self.ack(m1[1])
        self.assertIsNone(stream.store.load(1))
        self.ack(m2[1])
        self.assertIsNotNone(stream.store.load(2))
        (m2b,) = self.pull(b, {"batch": 1}, "_INBOX.2").take()
        self.ack(m2b[1])
        self.assertIsNone(stream.store.load(2))

    def test_delete_releases(self) -> None:
        """Deleting a consumer of an interest stream drops what only it still needed, keeps what another needs."""
        stream = FakeStream(self.engine, "I", ("i.>",), retention="interest")
        a = self.consumer(stream, durable_name="A", ack_policy="explicit")
        self.consumer(stream, durable_name="B", ack_policy="explicit", filter_subject="i.b")
        stream.publish("i.a", b"1")
        stream.publish("i.b", b"2")
        answer = self.request("CONSUMER.DELETE", ["I", "A"])
        assert answer is not None
        self.assertTrue(answer["success"])
        self.assertTrue(a.closed)
        self.assertIsNone(stream.store.load(1))
        self.assertIsNotNone(stream.store.load(2))
