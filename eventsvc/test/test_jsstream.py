"""
Streams (eventsvc.jetstream.stream) over the memory store, driven through
a real Broker in memory and a task.Clock: limits, the dedupe window, the
publish expectations, rollups, retention with a fake consumer, ages, the
PubAck's timing, and the metadata kept in store_dir.
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import task
from twisted.trial.unittest import TestCase

from eventsvc.jetstream import engine as engine_module
from eventsvc.jetstream import stream as stream_module
from eventsvc.jetstream.engine import JetStream, JetStreamSettings
from eventsvc.jetstream.errors import ApiError
from eventsvc.jetstream.memstore import MemoryStore
from eventsvc.jetstream.stream import check_config, check_update, decode_config
from eventsvc.jetstream.wire import header
from eventsvc.nats.server import Broker

T0 = 1_700_000_000_123_456_789
SECOND = 1_000_000_000


class FakeConsumer:
    """What a stream asks of a consumer (JS.md), recorded."""

    def __init__(self, name: str, filter_subject: str = "") -> None:
        self.name = name
        self.config = {"filter_subject": filter_subject}
        self.calls: List[Any] = []
        self.acked: set = set()

    def stored(self, seq: int, subject: str) -> None:
        self.calls.append(("stored", seq, subject))

    def purged(self) -> None:
        self.calls.append(("purged",))

    def needs(self, seq: int, subject: str) -> bool:
        return seq not in self.acked

    def stop(self) -> None:
        self.calls.append(("stop",))

    def delete(self) -> None:
        self.calls.append(("delete",))


class Harness:
    """A JetStream over a Broker in memory, with a fake clock, and a client's view of replies."""

    def __init__(self, settings: JetStreamSettings = JetStreamSettings(), start: int = T0) -> None:
        self.broker = Broker()
        self.clock = task.Clock()
        self.clock.advance(start / SECOND)
        self.time = start
        self.js = JetStream(self.broker, settings, self.clock, now=lambda: self.time)
        self.js.start()
        self.replies: List[Tuple[Optional[bytes], bytes]] = []
        self.broker.subscribe("_R.>", lambda s, r, p, h: self.replies.append((h, p)))
        self.n = 0

    def advance(self, seconds: float) -> None:
        self.time += int(seconds * SECOND)
        self.clock.advance(seconds)

    def publish(self, subject: str, payload: bytes = b"x", headers: Optional[bytes] = None, reply: bool = True) -> Optional[bytes]:
        """Publish as a client would; the answer's payload (None: no answer)."""
        self.n += 1
        before = len(self.replies)
        self.broker.publish(subject, payload, "_R.%d" % self.n if reply else None, headers)
        return self.replies[-1][1] if len(self.replies) > before else None

    def ack(self, subject: str, payload: bytes = b"x", headers: Optional[bytes] = None) -> Dict[str, Any]:
        answer = self.publish(subject, payload, headers)
        assert answer is not None, "no answer"
        return json.loads(answer)

    def create(self, **config: Any) -> stream_module.Stream:
        return self.js.add_stream(decode_config(json.dumps(config).encode()))


def hdrs(**values: str) -> bytes:
    return ("NATS/1.0\r\n" + "".join("{}: {}\r\n".format(k.replace("_", "-"), v) for k, v in values.items()) + "\r\n").encode()


class LimitsTests(TestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_max_msgs_discard_old(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], max_msgs=3)
        for i in range(5):
            self.assertEqual(self.h.ack("s.a", b"%d" % i), {"stream": "S", "seq": i + 1})
        state = s.store.state()
        self.assertEqual((state.msgs, state.first_seq, state.last_seq), (3, 3, 5))

    def test_max_msgs_discard_new(self) -> None:
        self.h.create(name="S", subjects=["s.>"], max_msgs=2, discard="new")
        self.h.ack("s.a")
        self.h.ack("s.a")
        self.assertEqual(
            self.h.publish("s.a"),
            b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"S","seq":0}',
        )

    def test_max_msgs_per_subject(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], max_msgs_per_subject=1)
        self.h.ack("s.a", b"1")
        self.h.ack("s.b", b"2")
        self.h.ack("s.a", b"3")
        self.assertEqual(s.store.subjects(), {"s.a": 1, "s.b": 1})
        self.assertEqual(s.store.load_last("s.a").data, b"3")

    def test_discard_new_per_subject(self) -> None:
        self.h.create(name="S", subjects=["s.>"], max_msgs_per_subject=1, discard="new", discard_new_per_subject=True)
        self.h.ack("s.a")
        self.assertEqual(self.h.ack("s.a")["error"]["description"], "maximum messages per subject exceeded")
        self.assertEqual(self.h.ack("s.b"), {"stream": "S", "seq": 2})

    def test_max_msg_size(self) -> None:
        self.h.create(name="S", subjects=["s.>"], max_msg_size=4)
        self.assertEqual(self.h.ack("s.a", b"1234"), {"stream": "S", "seq": 1})
        self.assertEqual(
            self.h.publish("s.a", b"12345"),
            b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},"stream":"S","seq":0}',
        )

    def test_max_age_expires_on_the_timer(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], max_age=2 * SECOND)
        self.h.ack("s.a")
        self.h.advance(1)
        self.h.ack("s.b")
        self.h.advance(1.01)
        self.assertIsNone(s.store.load(1))
        self.assertIsNotNone(s.store.load(2))
        self.h.advance(1)
        self.assertEqual(s.store.state().msgs, 0)
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_a_publish_without_reply_is_stored_unanswered(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"])
        self.assertIsNone(self.h.publish("s.a", b"quiet", reply=False))
        self.assertEqual(s.store.load(1).data, b"quiet")
        self.assertEqual(self.h.replies, [])

    def test_an_invalid_reply_subject_gets_nothing(self) -> None:
        """The message is stored; its PubAck has nowhere to go; nothing is logged as a failure."""
        s = self.h.create(name="S", subjects=["s.>"])
        self.h.broker.publish("s.a", b"x", "bad.*")
        self.h.broker.publish("$JS.API.STREAM.INFO.S", b"", "bad.>")
        self.assertEqual(s.store.state().msgs, 1)

    def test_account_limit_refuses_publish(self) -> None:
        h = Harness(JetStreamSettings(max_file_store=100))
        h.create(name="S", subjects=["s.>"])
        self.assertEqual(h.ack("s.a", b"x" * 100), {"stream": "S", "seq": 1})
        self.assertEqual(
            h.publish("s.a"),
            b'{"error":{"code":503,"err_code":10023,"description":"insufficient resources"},"stream":"S","seq":0}',
        )

    def test_account_limit_is_exact_near_the_limit(self) -> None:
        """Far from the limit the count may lag; near it each message counts, so no publish passes it."""
        h = Harness(JetStreamSettings(max_memory_store=100_000))
        h.create(name="S", subjects=["s.>"], storage="memory")
        accepted = 0
        while "error" not in h.ack("s.a", b"x" * 500):
            accepted += 1
        self.assertEqual(accepted, 100_000 // (500 + 3 + 16) + 1)
        self.assertLess(h.js.streams["S"].store.state().bytes - 100_000, 500 + 3 + 16)

    def test_account_limit_refuses_max_bytes_reservation(self) -> None:
        h = Harness(JetStreamSettings(max_memory_store=1000))
        h.create(name="A", storage="memory", max_bytes=600)
        with self.assertRaises(ApiError) as e:
            h.create(name="B", storage="memory", max_bytes=600)
        self.assertEqual(e.exception.as_json(), {"code": 500, "err_code": 10028, "description": "insufficient memory resources available"})
        h.create(name="C", storage="memory", max_bytes=400)


class DedupeTests(TestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.create(name="S", subjects=["s.>"], duplicate_window=10 * SECOND)

    def test_duplicate_within_the_window(self) -> None:
        self.assertEqual(self.h.publish("s.a", headers=hdrs(Nats_Msg_Id="m1")), b'{"stream":"S", "seq":1}')
        self.assertEqual(self.h.publish("s.a", headers=hdrs(Nats_Msg_Id="m1")), b'{"stream":"S", "seq":1,"duplicate": true}')
        self.assertEqual(self.h.js.streams["S"].store.state().msgs, 1)

    def test_forgotten_after_the_window(self) -> None:
        self.h.ack("s.a", headers=hdrs(Nats_Msg_Id="m1"))
        self.h.advance(10)
        self.assertEqual(self.h.ack("s.a", headers=hdrs(Nats_Msg_Id="m1")), {"stream": "S", "seq": 2})
        self.h.advance(30)
        self.assertEqual(self.h.js.streams["S"]._dedupe.ids, {})

    def test_domain_in_pub_ack(self) -> None:
        h = Harness(JetStreamSettings(domain="hub"))
        h.create(name="S", subjects=["s.>"])
        self.assertEqual(h.publish("s.a"), b'{"stream":"S", "domain":"hub", "seq":1}')


class ExpectationTests(TestCase):
    def setUp(self) -> None:
        self.h = Harness()
        self.h.create(name="S", subjects=["s.>"])
        self.h.ack("s.a", headers=hdrs(Nats_Msg_Id="first"))

    def error(self, **headers: str) -> bytes:
        answer = self.h.publish("s.b", headers=hdrs(**headers))
        assert answer is not None
        return answer

    def test_expected_stream(self) -> None:
        self.assertEqual(self.error(Nats_Expected_Stream="NOPE"),
                         b'{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"},"stream":"S","seq":0}')
        self.assertEqual(json.loads(self.error(Nats_Expected_Stream="S")), {"stream": "S", "seq": 2})

    def test_expected_last_sequence(self) -> None:
        self.assertEqual(self.error(Nats_Expected_Last_Sequence="7"),
                         b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 1"},"stream":"S","seq":0}')
        self.assertEqual(json.loads(self.error(Nats_Expected_Last_Sequence="1")), {"stream": "S", "seq": 2})

    def test_expected_last_subject_sequence(self) -> None:
        self.assertEqual(json.loads(self.error(Nats_Expected_Last_Subject_Sequence="3"))["error"]["description"], "wrong last sequence: 0")
        self.assertEqual(json.loads(self.error(Nats_Expected_Last_Subject_Sequence="0")), {"stream": "S", "seq": 2})
        self.assertEqual(json.loads(self.error(Nats_Expected_Last_Subject_Sequence="2")), {"stream": "S", "seq": 3})

    def test_expectations_among_other_headers(self) -> None:
        """
        An expectation is checked wherever it stands among other headers,
        C{Nats-} ones the stream does not act on included (a source's copy
        carries C{Nats-Stream-Source}); a block of those alone is stored as sent.
        """
        self.assertEqual(
            json.loads(self.error(Nats_Stream_Source="O 9", X="1", Nats_Expected_Last_Sequence="7"))["error"]["description"],
            "wrong last sequence: 1")
        self.assertEqual(
            json.loads(self.error(Nats_Stream_Source="O 9", Nats_Expected_Stream="NOPE"))["error"]["description"],
            "expected stream does not match")
        block = hdrs(Nats_Stream_Source="O 9", Nats_Sequence="4")
        self.assertEqual(self.h.ack("s.c", b"copy", block), {"stream": "S", "seq": 2})
        self.assertEqual(self.h.js.streams["S"].store.load(2).headers, block)
        self.assertEqual(json.loads(self.error(X="1", Nats_Msg_Id="first")), {"stream": "S", "seq": 1, "duplicate": True})

    def test_expected_last_msg_id(self) -> None:
        self.assertEqual(self.error(Nats_Expected_Last_Msg_Id="zz"),
                         b'{"error":{"code":400,"err_code":10070,"description":"wrong last msg ID: first"},"stream":"S","seq":0}')
        self.assertEqual(json.loads(self.error(Nats_Expected_Last_Msg_Id="first")), {"stream": "S", "seq": 2})


class RollupTests(TestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_rollup_not_permitted(self) -> None:
        self.h.create(name="S", subjects=["s.>"])
        self.assertEqual(self.h.publish("s.a", headers=hdrs(Nats_Rollup="sub")),
                         b'{"error":{"code":500,"err_code":10111,"description":"rollup not permitted"},"stream":"S","seq":0}')

    def test_rollup_subject_and_all(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], allow_rollup_hdrs=True)
        for subject in ("s.a", "s.a", "s.b"):
            self.h.ack(subject)
        self.assertEqual(self.h.ack("s.a", b"last", hdrs(Nats_Rollup="sub")), {"stream": "S", "seq": 4})
        self.assertEqual(s.store.subjects(), {"s.a": 1, "s.b": 1})
        self.h.ack("s.c", b"all", hdrs(Nats_Rollup="all"))
        self.assertEqual(s.store.state().msgs, 1)
        self.assertEqual(s.store.load(5).data, b"all")


class RetentionTests(TestCase):
    def setUp(self) -> None:
        self.h = Harness()

    def test_consumers_are_told(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], allow_rollup_hdrs=True)
        c = FakeConsumer("c")
        s.attach(c)
        self.h.ack("s.a")
        self.h.publish("$JS.API.STREAM.PURGE.S", b"")
        self.assertEqual(c.calls, [("stored", 1, "s.a"), ("purged",)])
        self.h.publish("$JS.API.STREAM.DELETE.S", b"")
        self.assertEqual(c.calls[-1], ("delete",))

    def test_workqueue_removes_on_ack(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], retention="workqueue")
        s.attach(FakeConsumer("c"))
        self.h.ack("s.a")
        s.ack_message(1)
        self.assertEqual(s.store.state().msgs, 0)

    def test_interest_removes_when_no_one_needs_it(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], retention="interest")
        one, two = FakeConsumer("one"), FakeConsumer("two")
        s.attach(one)
        s.attach(two)
        self.h.ack("s.a")
        one.acked.add(1)
        s.ack_message(1)
        self.assertEqual(s.store.state().msgs, 1)
        two.acked.add(1)
        s.ack_message(1)
        self.assertEqual(s.store.state().msgs, 0)

    def test_interest_without_consumers_keeps_nothing(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"], retention="interest")
        self.assertEqual(self.h.ack("s.a"), {"stream": "S", "seq": 1})
        s.attach(FakeConsumer("only-b", filter_subject="s.b"))
        self.assertEqual(self.h.ack("s.a"), {"stream": "S", "seq": 2})
        self.assertEqual(self.h.ack("s.b"), {"stream": "S", "seq": 3})
        state = s.store.state()
        self.assertEqual((state.msgs, state.last_seq), (1, 3))

    def test_limits_keeps_acked(self) -> None:
        s = self.h.create(name="S", subjects=["s.>"])
        self.h.ack("s.a")
        s.ack_message(1)
        self.assertEqual(s.store.state().msgs, 1)


class DurableAckTests(TestCase):
    def test_pub_ack_waits_for_the_store(self) -> None:
        """The PubAck is sent from when_durable, not when store() returns."""
        waiting: List[Callable[[], None]] = []

        class SlowStore(MemoryStore):
            def when_durable(self, callback: Callable[[], None], errback: Any = None) -> None:
                waiting.append(callback)

        self.patch(stream_module, "open_store", lambda config, *a: SlowStore(stream_module.store_limits(config)))
        self.patch(engine_module, "open_store", lambda config, *a: SlowStore(stream_module.store_limits(config)))
        h = Harness()
        h.create(name="S", subjects=["s.>"])
        self.assertIsNone(h.publish("s.a"))
        self.assertEqual(len(waiting), 1)
        waiting.pop()()
        self.assertEqual(h.replies[-1][1], b'{"stream":"S", "seq":1}')


    def test_failed_write_is_refused_and_forgotten(self) -> None:
        """A store that reports a failed write: no PubAck, the error instead, and the id may be sent again."""
        from eventsvc.jetstream.store import StoreError, StoreUnavailable

        failing = [True]

        class FailingStore(MemoryStore):
            def when_durable(self, callback: Callable[[], None], errback: Optional[Callable[[StoreError], None]] = None) -> None:
                if failing[0] and errback is not None:
                    errback(StoreUnavailable("disk failed"))
                else:
                    callback()

        self.patch(engine_module, "open_store", lambda config, *a: FailingStore(stream_module.store_limits(config)))
        h = Harness()
        h.create(name="S", subjects=["s.>"])
        self.assertEqual(h.publish("s.a", headers=hdrs(Nats_Msg_Id="m1")),
                         b'{"error":{"code":503,"err_code":10077,"description":"disk failed"},"stream":"S","seq":0}')
        failing[0] = False
        self.assertEqual(h.ack("s.a", headers=hdrs(Nats_Msg_Id="m1")), {"stream": "S", "seq": 2})


class GroupCommitTests(TestCase):
    def test_pub_acks_of_one_write_go_out_together(self) -> None:
        """
        A file stream's PubAcks wait for the group commit, then go out in
        the order of their messages, in one publish (one write to the
        publisher's connection, not one per PubAck); the next message's
        PubAck is not held back by them.
        """
        h = Harness(JetStreamSettings(store_dir=self.mktemp()))
        self.addCleanup(h.js.stop)
        h.create(name="S", subjects=["s.>"], storage="file")
        batches: List[List[Tuple[str, bytes]]] = []
        publish_many = h.broker.publish_many

        def recorded(messages: List[Tuple[str, bytes]]) -> None:
            batches.append(list(messages))
            publish_many(messages)

        self.patch(h.broker, "publish_many", recorded)
        for _ in range(3):
            self.assertIsNone(h.publish("s.a"))
        self.assertEqual(batches, [])
        h.advance(0)
        self.assertEqual([payload for _, payload in h.replies[-3:]],
                         [b'{"stream":"S", "seq":%d}' % seq for seq in (1, 2, 3)])
        self.assertEqual([[reply for reply, _ in batch] for batch in batches], [["_R.1", "_R.2", "_R.3"]])
        h.publish("s.a")
        h.advance(0)
        self.assertEqual(h.replies[-1][1], b'{"stream":"S", "seq":4}')
        self.assertEqual(len(batches), 2)


class ConfigTests(TestCase):
    def config(self, **given: Any) -> Dict[str, Any]:
        return check_config(decode_config(json.dumps(given).encode()))

    def test_defaults(self) -> None:
        c = self.config(name="S")
        self.assertEqual(stream_module.config_json(c), {
            "name": "S", "subjects": ["S"], "retention": "limits", "max_consumers": -1, "max_msgs": -1,
            "max_bytes": -1, "max_age": 0, "max_msgs_per_subject": -1, "max_msg_size": -1, "discard": "old",
            "storage": "file", "num_replicas": 1, "duplicate_window": 120 * SECOND, "allow_direct": False,
            "mirror_direct": False, "sealed": False, "deny_delete": False, "deny_purge": False, "allow_rollup_hdrs": False,
        })
        self.assertEqual(self.config(name="S", max_age=SECOND)["duplicate_window"], SECOND)

    def test_refusals(self) -> None:
        for given, text in [
            ({"name": "a b"}, "stream name is required and can not contain '.', '*', '>'"),
            ({"name": "S", "max_age": 1000}, "max age needs to be >= 100ms"),
            ({"name": "S", "subjects": ["a", "a"]}, "duplicate subjects detected"),
            ({"name": "S", "subjects": ["a.>", "a.b"]}, 'subject "a.>" overlaps with "a.b"'),
            ({"name": "S", "subjects": ["$JS.API.x"]}, "subjects overlap with jetstream api"),
            ({"name": "S", "deny_purge": True, "allow_rollup_hdrs": True}, "roll-ups require the purge permission"),
            ({"name": "S", "discard_new_per_subject": True}, "discard new per subject requires discard new policy to be set"),
            ({"name": "S", "subjects": ["a..b"]}, "invalid subject"),
        ]:
            with self.assertRaises(ApiError) as e:
                self.config(**given)
            self.assertEqual(e.exception.description, text)
        for bad in (b'{"name":"S","max_msgs":"a"}', b'{"name":"S","retention":"bogus"}', b"[]", b"", b"{"):
            with self.assertRaises(ApiError) as e:
                decode_config(bad)
            self.assertEqual(e.exception.err_code, 10025)

    def test_update_rules(self) -> None:
        old = self.config(name="S", deny_delete=True)
        for given, text in [
            ({"name": "S", "storage": "memory", "deny_delete": True}, "stream configuration update can not change storage type"),
            ({"name": "S", "retention": "workqueue", "deny_delete": True}, "stream configuration update can not change retention policy"),
            ({"name": "S", "max_consumers": 3, "deny_delete": True}, "stream configuration update can not change MaxConsumers"),
            ({"name": "S"}, "stream configuration update can not cancel deny message deletes"),
        ]:
            with self.assertRaises(ApiError) as e:
                check_update(old, self.config(**given))
            self.assertEqual(e.exception.description, text)
        sealed = check_update(old, self.config(name="S", deny_delete=True, sealed=True, max_age=5 * SECOND))
        self.assertEqual((sealed["max_age"], sealed["deny_purge"], sealed["discard"]), (0, True, "new"))

    def test_sealed_stream_refuses_messages_and_purges(self) -> None:
        h = Harness()
        s = h.create(name="S", subjects=["s.>"])
        h.js.update_stream(s, self.config(name="S", subjects=["s.>"], sealed=True))
        self.assertEqual(h.publish("s.a"),
                         b'{"error":{"code":400,"err_code":10109,"description":"invalid operation on sealed stream"},"stream":"S","seq":0}')
        with self.assertRaises(ApiError):
            s.purge()

    def test_checks_taken_up_by_an_update(self) -> None:
        """
        A stream that has stored plain messages, then is given a
        max_msg_size and then sealed, refuses what each new config refuses
        (the checks a plain message passes are worked out per config).
        """
        h = Harness()
        s = h.create(name="S", subjects=["s.>"])
        self.assertEqual(h.ack("s.a", b"12345"), {"stream": "S", "seq": 1})
        h.js.update_stream(s, self.config(name="S", subjects=["s.>"], max_msg_size=4))
        self.assertEqual(
            h.publish("s.a", b"12345"),
            b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},"stream":"S","seq":0}',
        )
        self.assertEqual(h.ack("s.a", b"1234"), {"stream": "S", "seq": 2})
        h.js.update_stream(s, self.config(name="S", subjects=["s.>"], max_msg_size=4, sealed=True))
        self.assertEqual(h.publish("s.a", b"1"),
                         b'{"error":{"code":400,"err_code":10109,"description":"invalid operation on sealed stream"},"stream":"S","seq":0}')
        self.assertEqual(s.store.state().msgs, 2)

    def test_pub_ack_of_a_name_with_a_percent(self) -> None:
        """A PubAck names its stream as given, a % in the name too (the PubAck is a %-format)."""
        for by_format in (True, False):
            self.patch(stream_module, "_ACK_BY_FORMAT", by_format)
            h = Harness()
            h.create(name="P%d%s", subjects=["p.>"])
            self.assertEqual(h.publish("p.a"), b'{"stream":"P%d%s", "seq":1}')
            self.assertEqual(h.ack("p.b"), {"stream": "P%d%s", "seq": 2})

    def test_update_resubscribes(self) -> None:
        h = Harness()
        s = h.create(name="S", subjects=["s.a"])
        h.js.update_stream(s, self.config(name="S", subjects=["s.b"]))
        self.assertIsNone(h.publish("s.a"))
        self.assertEqual(h.ack("s.b"), {"stream": "S", "seq": 1})

    def test_overlap_and_replicas(self) -> None:
        h = Harness()
        h.create(name="A", subjects=["a.>"])
        with self.assertRaises(ApiError) as e:
            h.create(name="B", subjects=["a.b"])
        self.assertEqual(e.exception.err_code, 10065)
        with self.assertRaises(ApiError) as e:
            h.create(name="C", num_replicas=3)
        self.assertEqual((e.exception.code, e.exception.err_code), (500, 10074))
        self.assertIn("replicas > 1 not supported in non-clustered mode", e.exception.description)
        self.assertIn("leaf node to a nats-server JetStream cluster", e.exception.description)


class StoreDirTests(TestCase):
    def test_streams_come_back(self) -> None:
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        h.create(name="S", subjects=["s.>"], max_msgs=5, storage="memory")
        created = h.js.streams["S"].created
        h.js.stop()
        self.assertTrue(os.path.exists(os.path.join(folder, "streams", "S", "meta.json")))
        again = Harness(JetStreamSettings(store_dir=folder))
        s = again.js.streams["S"]
        self.assertEqual((s.config["max_msgs"], s.config["storage"], s.created), (5, "memory", created))
        self.assertEqual(again.ack("s.x"), {"stream": "S", "seq": 1})

    def test_deleted_stream_leaves_no_files(self) -> None:
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        h.create(name="S")
        h.publish("$JS.API.STREAM.DELETE.S", b"")
        self.assertEqual(os.listdir(os.path.join(folder, "streams")), [])

    def test_unreadable_meta_is_skipped(self) -> None:
        folder = self.mktemp()
        os.makedirs(os.path.join(folder, "streams", "BAD"))
        with open(os.path.join(folder, "streams", "BAD", "meta.json"), "w") as f:
            f.write("{not json")
        h = Harness(JetStreamSettings(store_dir=folder))
        self.assertEqual(h.js.streams, {})
        self.assertTrue(os.path.exists(os.path.join(folder, "streams", "BAD", "meta.json")))
        self.flushLoggedErrors()

    def test_second_engine_on_the_same_store_dir_is_refused(self) -> None:
        from eventsvc.files import Locked

        folder = self.mktemp()
        Harness(JetStreamSettings(store_dir=folder))
        other = JetStream(Broker(), JetStreamSettings(store_dir=folder), task.Clock())
        self.assertRaises(Locked, other.start)


class RepublishTests(TestCase):
    def test_republished_with_headers(self) -> None:
        h = Harness()
        h.create(name="S", subjects=["s.>"], republish={"src": "s.*", "dest": "out.$1"})
        got: List[Tuple[str, Optional[bytes], bytes]] = []
        h.broker.subscribe("out.>", lambda s, r, p, hd: got.append((s, hd, p)))
        h.ack("s.a", b"one")
        h.ack("s.a", b"two", b"NATS/1.0\r\nX: y\r\n\r\n")
        self.assertEqual(got, [
            ("out.a", b"NATS/1.0\r\nNats-Stream: S\r\nNats-Subject: s.a\r\nNats-Sequence: 1\r\nNats-Last-Sequence: 0\r\n\r\n", b"one"),
            ("out.a", b"NATS/1.0\r\nX: y\r\nNats-Stream: S\r\nNats-Subject: s.a\r\nNats-Sequence: 2\r\nNats-Last-Sequence: 1\r\n\r\n", b"two"),
        ])
        self.assertEqual(stream_module.config_json(h.js.streams["S"].config)["republish"], {"src": "s.*", "dest": "out.$1"})

    def test_headers_only(self) -> None:
        h = Harness()
        h.create(name="S", subjects=["s.>"], republish={"dest": "out.>", "headers_only": True})
        got: List[Tuple[str, Optional[bytes], bytes]] = []
        h.broker.subscribe("out.>", lambda s, r, p, hd: got.append((s, hd, p)))
        h.ack("s.a.b", b"12345")
        self.assertEqual(got, [("out.s.a.b", b"NATS/1.0\r\nNats-Stream: S\r\nNats-Subject: s.a.b\r\nNats-Sequence: 1\r\n"
                                b"Nats-Last-Sequence: 0\r\nNats-Msg-Size: 5\r\n\r\n", b"")])

    def test_refused(self) -> None:
        h = Harness()
        for republish, text in [
            ({"src": "x.>", "dest": "out.>"}, "stream configuration for republish source is not valid subset of subjects"),
            ({"dest": "s.>"}, "stream configuration for republish destination forms a cycle"),
            ({"src": "s.*", "dest": "out"}, "stream configuration for republish not valid"),
        ]:
            with self.assertRaises(ApiError) as e:
                h.create(name="S", subjects=["s.>"], republish=republish)
            self.assertEqual(e.exception.description, text)


class ConsumerRestoreTests(TestCase):
    def test_durable_consumer_comes_back(self) -> None:
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        h.create(name="S", subjects=["s.>"])
        answer = h.publish("$JS.API.CONSUMER.DURABLE.CREATE.S.d",
                           b'{"stream_name":"S","config":{"durable_name":"d","ack_policy":"explicit","filter_subject":"s.a"}}')
        self.assertNotIn("error", json.loads(answer or b"{}"))
        h.js.stop()
        self.assertTrue(os.path.exists(os.path.join(folder, "streams", "S", "consumers", "d", "meta.json")))
        again = Harness(JetStreamSettings(store_dir=folder))
        consumer = again.js.streams["S"].consumers["d"]
        self.assertEqual((consumer.config["filter_subject"], consumer.config["ack_policy"]), ("s.a", "explicit"))
        info = json.loads(again.publish("$JS.API.CONSUMER.INFO.S.d", b"") or b"{}")
        self.assertEqual(info["name"], "d")
        again.publish("$JS.API.CONSUMER.DELETE.S.d", b"")
        self.assertFalse(os.path.exists(os.path.join(folder, "streams", "S", "consumers", "d")))


class UsageTests(TestCase):
    def test_usage_follows_the_stores(self) -> None:
        """The engine's per-storage byte count (what limits check) follows stores, purges, ages and deletes."""
        h = Harness()
        s = h.create(name="S", subjects=["s.>"], storage="memory", max_msgs=2, max_age=SECOND)
        t = h.create(name="T", subjects=["t.>"])
        for _ in range(3):
            h.ack("s.a", b"x" * 10)
        h.ack("t.a", b"y")
        h.js.account_info()  # (counted every 64 messages far from the limit; INFO counts now)
        self.assertEqual((h.js.usage("memory"), h.js.usage("file")), (s.store.state().bytes, t.store.state().bytes))
        self.assertEqual(h.js.usage("memory"), 2 * (3 + 10 + 16))
        h.advance(2)
        self.assertEqual(h.js.usage("memory"), 0)
        h.ack("s.a")
        h.publish("$JS.API.STREAM.PURGE.S", b"")
        self.assertEqual(h.js.usage("memory"), 0)
        h.publish("$JS.API.STREAM.DELETE.T", b"")
        self.assertEqual(h.js.usage("file"), 0)
        self.assertEqual(json.loads(h.publish("$JS.API.INFO", b"") or b"{}")["storage"], 0)


    def test_a_subject_counts_its_utf8_bytes(self) -> None:
        """
        A message on a subject with a character beyond ASCII counts the
        subject's UTF-8 bytes, as nats-server 2.9 counts them (its
        memStoreMsgSize and fileStoreMsgSize take a Go string's length):
        "s.\u00e9" with b"x" is 21 bytes in a memory stream and 35 in a
        file stream (nats-server -js's STREAM.INFO), the same after a
        restart, and a stream's max_bytes keeps one such message of two at
        41 and 69 bytes, as nats-server does.  (Review RV5: the characters
        were counted, 20 and 34, and both messages were kept.)
        """
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        m = h.create(name="M", subjects=["m.>"], storage="memory")
        f = h.create(name="F", subjects=["f.>"])
        h.publish("m.\u00e9")
        h.publish("f.\u00e9")
        h.clock.advance(0)
        self.assertEqual((m.store.state().bytes, f.store.state().bytes), (21, 35))
        h.js.account_info()
        self.assertEqual((h.js.usage("memory"), h.js.usage("file")), (21, 35))
        h.js.stop()
        again = Harness(JetStreamSettings(store_dir=folder))
        self.assertEqual(again.js.streams["F"].store.state().bytes, 35)
        h = Harness(JetStreamSettings(store_dir=self.mktemp()))
        kept = [h.create(name="L", subjects=["l.>"], storage="memory", max_bytes=41),
                h.create(name="G", subjects=["g.>"], max_bytes=69)]
        for subject in ("l.\u00e9", "l.\u00e9", "g.\u00e9", "g.\u00e9"):
            h.publish(subject)
        h.clock.advance(0)
        self.assertEqual([(s.store.state().msgs, s.store.state().bytes) for s in kept], [(1, 21), (1, 35)])


class ServiceTests(TestCase):
    def test_unusable_store_dir_is_one_line(self) -> None:
        from eventsvc.jetstream.engine import JetStreamService
        from eventsvc.nats.errors import ListenError

        folder = self.mktemp()
        with open(folder, "w") as f:
            f.write("a file, not a folder")
        service = JetStreamService(JetStream(Broker(), JetStreamSettings(store_dir=folder), task.Clock()))
        with self.assertRaises(ListenError) as e:
            service.startService()
        self.assertRegex(str(e.exception), r"^.* \(\[jetstream\] store_dir\): cannot be used: ")

    def test_store_dir_in_use_names_the_holder(self) -> None:
        from eventsvc.jetstream.engine import JetStreamService
        from eventsvc.nats.errors import ListenError

        folder = self.mktemp()
        Harness(JetStreamSettings(store_dir=folder))
        service = JetStreamService(JetStream(Broker(), JetStreamSettings(store_dir=folder), task.Clock()))
        with self.assertRaises(ListenError) as e:
            service.startService()
        self.assertIn("([jetstream] store_dir) is in use by another eventsvc process (PID %d)" % os.getpid(), str(e.exception))

    def test_stop_closes_stores(self) -> None:
        closed: List[str] = []

        class ClosingStore(MemoryStore):
            def close(self) -> None:
                closed.append("closed")

        self.patch(engine_module, "open_store", lambda config, *a: ClosingStore(stream_module.store_limits(config)))
        h = Harness()
        h.create(name="A")
        h.create(name="B")
        h.js.stop()
        self.assertEqual(closed, ["closed", "closed"])
        self.assertIsNone(h.publish("A"))


class FileStreamTests(TestCase):
    """Streams over the file store (a real folder, the fake clock for its group commit)."""

    def publish(self, h: Harness, subject: str, msg_id: str) -> Dict[str, Any]:
        before = len(h.replies)
        h.broker.publish(subject, b"x", "_R.f", hdrs(Nats_Msg_Id=msg_id))
        h.clock.advance(0)
        self.assertEqual(len(h.replies), before + 1)
        return json.loads(h.replies[-1][1])

    def test_pub_ack_after_the_write_and_dedupe_rebuilt(self) -> None:
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        h.create(name="F", subjects=["f.>"], duplicate_window=10 * SECOND)
        self.assertEqual(type(h.js.streams["F"].store).__name__, "FileStore")
        before = len(h.replies)
        h.broker.publish("f.a", b"x", "_R.f", hdrs(Nats_Msg_Id="old"))
        self.assertEqual(len(h.replies), before, "acknowledged before the write")
        h.clock.advance(0)
        self.assertEqual(json.loads(h.replies[-1][1]), {"stream": "F", "seq": 1})
        h.advance(20)
        self.assertEqual(self.publish(h, "f.a", "new"), {"stream": "F", "seq": 2})
        h.js.stop()
        # Restarted a second later: "new" is inside the window, "old" is not.
        again = Harness(JetStreamSettings(store_dir=folder), start=h.time + SECOND)
        self.assertEqual(again.js.streams["F"].store.state().msgs, 2)
        self.assertEqual(self.publish(again, "f.a", "new"), {"stream": "F", "seq": 2, "duplicate": True})
        self.assertEqual(self.publish(again, "f.a", "old"), {"stream": "F", "seq": 3})
        again.js.stop()


class SourceTests(TestCase):
    def test_sourced_stream_copies_and_follows(self) -> None:
        h = Harness()
        h.create(name="ORIGIN", subjects=["o.>"])
        h.ack("o.a", b"1")
        h.advance(1)
        h.ack("o.b", b"2", hdrs(X="y"))
        dest = h.create(name="DEST", sources=[{"name": "ORIGIN", "opt_start_time": stream_module.rfc3339(T0 + SECOND // 2)}])
        self.assertEqual((dest.config["subjects"], dest.store.state().msgs), ([], 0))
        h.clock.advance(0)
        self.assertEqual(dest.store.state().msgs, 1)
        h.ack("o.c", b"3")
        copies = [dest.store.load(seq) for seq in (1, 2)]
        self.assertEqual([(m.subject, m.data, m.headers) for m in copies], [
            ("o.b", b"2", b"NATS/1.0\r\nX: y\r\nNats-Stream-Source: ORIGIN 2\r\n\r\n"),
            ("o.c", b"3", b"NATS/1.0\r\nNats-Stream-Source: ORIGIN 3\r\n\r\n"),
        ])
        info = json.loads(h.publish("$JS.API.STREAM.INFO.DEST", b"") or b"{}")
        self.assertEqual(info["config"]["sources"], [{"name": "ORIGIN", "opt_start_time": stream_module.rfc3339(T0 + SECOND // 2)}])
        self.assertEqual(info["sources"], [{"name": "ORIGIN", "lag": 0, "active": 0}])
        self.assertNotIn("subjects", info["config"])

    def test_filter_and_resume_after_restart(self) -> None:
        folder = self.mktemp()
        h = Harness(JetStreamSettings(store_dir=folder))
        h.create(name="ORIGIN", subjects=["o.>"])
        dest = h.create(name="DEST", sources=[{"name": "ORIGIN", "filter_subject": "o.keep"}])
        h.clock.advance(0)
        for subject, data in (("o.keep", b"1"), ("o.drop", b"2"), ("o.keep", b"3")):
            h.publish(subject, data, reply=False)
        h.clock.advance(0)
        self.assertEqual([dest.store.load(n).data for n in (1, 2)], [b"1", b"3"])
        h.js.stop()
        again = Harness(JetStreamSettings(store_dir=folder))
        again.clock.advance(0)
        again.publish("o.keep", b"4", reply=False)
        again.clock.advance(0)
        dest = again.js.streams["DEST"]
        state = dest.store.state()
        self.assertEqual((state.msgs, dest.store.load(3).data), (3, b"4"))
        self.assertEqual(header(dest.store.load(3).headers, "Nats-Stream-Source"), "ORIGIN 4")
        again.js.stop()

    def test_refusals(self) -> None:
        h = Harness()
        h.create(name="A", subjects=["a.>"], max_msg_size=100)
        with self.assertRaises(ApiError) as e:
            h.create(name="B", sources=[{"name": "A", "filter_subject": "b.x"}])
        self.assertEqual(e.exception.description, "source 'A' filter subject 'b.x' does not overlap with any origin stream subject")
        with self.assertRaises(ApiError) as e:
            h.create(name="B", max_msg_size=10, sources=[{"name": "A"}])
        self.assertEqual(e.exception.err_code, 10046)
        h.create(name="B", sources=[{"name": "A"}])
        with self.assertRaises(ApiError) as e:
            h.js.update_stream(h.js.streams["A"], check_config(decode_config(
                b'{"name":"A","subjects":["a.>"],"max_msg_size":100,"sources":[{"name":"B"}]}')))
        self.assertEqual(e.exception.description, "detected cycle")
        with self.assertRaises(ApiError) as e:
            h.create(name="M", subjects=["m"], mirror={"name": "A"})
        self.assertEqual((e.exception.err_code, e.exception.description), (10034, "stream mirrors can not contain subjects"))
