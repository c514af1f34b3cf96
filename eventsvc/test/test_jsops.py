"""
JetStream's monitoring, rendered in memory: /jsz and its query flags,
/varz's C{jetstream}, the Prometheus series per stream and per consumer,
and /healthz when a store cannot write, over a small engine of streams in
memory stores (the attributes JS.md gives the engine); their shapes are
compared with what nats-server 2.9.10 answered.
"""

from __future__ import annotations

import json
import os
import time
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

from twisted.internet import defer, threads
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from eventsvc import config
from eventsvc.app import make_service
from eventsvc.jetstream.memstore import MemoryStore
from eventsvc.jetstream.wire import rfc3339
from eventsvc.test import process
from eventsvc.test.test_monitor import get

SECOND = 1_000_000_000
#: 2026-12-06T22:00:00Z
T0 = 1796594400 * SECOND

#: nats-server 2.9.10's /jsz?consumers=1&config=1 (nats-server -js -sd DIR -m PORT) with two
#: streams, ORDERS (file, 5 messages, a durable pull consumer that was given 2 and acked 1)
#: and MEM (memory, 1 message): the shape ours must have.
REFERENCE_JSZ = json.loads("""{
  "server_id": "NBUTH7RHFUHRKHABF633LZGG4ZLYFGJ6RUCYHCYMTJTPKPLUAURDHJUZ",
  "now": "2026-12-06T22:13:14.635365457Z",
  "config": {"max_memory": 18957136896, "max_storage": 60526894080, "store_dir": "/tmp/tmpgrrie9vj/jetstream"},
  "memory": 20, "storage": 235, "reserved_memory": 0, "reserved_storage": 0, "accounts": 1, "ha_assets": 0,
  "api": {"total": 4, "errors": 0},
  "streams": 2, "consumers": 1, "messages": 6, "bytes": 255,
  "account_details": [
    {
      "name": "$G", "id": "$G", "memory": 20, "storage": 235,
      "reserved_memory": 18446744073709551615, "reserved_storage": 18446744073709551615,
      "accounts": 0, "ha_assets": 0, "api": {"total": 4, "errors": 0},
      "stream_detail": [
        {
          "name": "ORDERS", "created": "2026-12-06T22:13:14.417101043Z",
          "cluster": {"leader": "NBUTH7RHFUHRKHABF633LZGG4ZLYFGJ6RUCYHCYMTJTPKPLUAURDHJUZ"},
          "config": {
            "name": "ORDERS", "subjects": ["orders.>"], "retention": "limits", "max_consumers": -1, "max_msgs": -1,
            "max_bytes": -1, "max_age": 0, "max_msgs_per_subject": -1, "max_msg_size": -1, "discard": "old",
            "storage": "file", "num_replicas": 1, "duplicate_window": 120000000000, "allow_direct": false,
            "mirror_direct": false, "sealed": false, "deny_delete": false, "deny_purge": false, "allow_rollup_hdrs": false
          },
          "state": {
            "messages": 5, "bytes": 235, "first_seq": 1, "first_ts": "2026-12-06T22:13:14.420797084Z",
            "last_seq": 5, "last_ts": "2026-12-06T22:13:14.422217822Z", "num_subjects": 1, "consumer_count": 1
          },
          "consumer_detail": [
            {
              "stream_name": "ORDERS", "name": "proc", "created": "2026-12-06T22:13:14.4234499Z",
              "config": {
                "durable_name": "proc", "deliver_policy": "all", "ack_policy": "explicit", "ack_wait": 30000000000,
                "max_deliver": -1, "replay_policy": "instant", "max_waiting": 512, "max_ack_pending": 1000, "num_replicas": 0
              },
              "delivered": {"consumer_seq": 2, "stream_seq": 2, "last_active": "2026-12-06T22:13:14.425421743Z"},
              "ack_floor": {"consumer_seq": 1, "stream_seq": 1, "last_active": "2026-12-06T22:13:14.426274308Z"},
              "num_ack_pending": 1, "num_redelivered": 0, "num_waiting": 0, "num_pending": 3
            }
          ]
        },
        {
          "name": "MEM", "created": "2026-12-06T22:13:14.420155704Z",
          "cluster": {"leader": "NBUTH7RHFUHRKHABF633LZGG4ZLYFGJ6RUCYHCYMTJTPKPLUAURDHJUZ"},
          "config": {
            "name": "MEM", "subjects": ["mem"], "retention": "limits", "max_consumers": -1, "max_msgs": -1,
            "max_bytes": -1, "max_age": 0, "max_msgs_per_subject": -1, "max_msg_size": -1, "discard": "old",
            "storage": "memory", "num_replicas": 1, "duplicate_window": 120000000000, "allow_direct": false,
            "mirror_direct": false, "sealed": false, "deny_delete": false, "deny_purge": false, "allow_rollup_hdrs": false
          },
          "state": {
            "messages": 1, "bytes": 20, "first_seq": 1, "first_ts": "2026-12-06T22:13:14.422423212Z",
            "last_seq": 1, "last_ts": "2026-12-06T22:13:14.422423212Z", "num_subjects": 1, "consumer_count": 0
          }
        }
      ]
    }
  ]
}""")

#: nats-server 2.9.10's /jsz without -js (no server_id/now).
REFERENCE_DISABLED = {
    "disabled": True, "config": {"max_memory": 0, "max_storage": 0},
    "memory": 0, "storage": 0, "reserved_memory": 0, "reserved_storage": 0, "accounts": 0, "ha_assets": 0,
    "api": {"total": 0, "errors": 0}, "streams": 0, "consumers": 0, "messages": 0, "bytes": 0,
}


def shape(value: Any) -> Any:
    """A JSON value's keys in their order, all the way down, and its leaves' types."""
    if isinstance(value, dict):
        return [(key, shape(v)) for key, v in value.items()]
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


class FakeConsumer:
    """A consumer as the monitor reads it: a name and nats-server's ConsumerInfo."""

    def __init__(self, name: str, info: Dict[str, Any]) -> None:
        self.name = name
        self._info = info

    def info(self) -> Dict[str, Any]:
        return json.loads(json.dumps(self._info))


class FakeStream:
    """A stream as JS.md gives it: name, config, created, store, consumers, and its StreamInfo."""

    def __init__(self, name: str, config: Dict[str, Any], created: int) -> None:
        self.name = name
        self.config = config
        self.created = created
        self.store = MemoryStore()
        self.consumers: Dict[str, FakeConsumer] = {}

    def info(self, domain: bool = True) -> Dict[str, Any]:
        state = self.store.state()
        state_json: Dict[str, Any] = {
            "messages": state.msgs, "bytes": state.bytes, "first_seq": state.first_seq, "first_ts": rfc3339(state.first_ts),
            "last_seq": state.last_seq, "last_ts": rfc3339(state.last_ts),
        }
        if state.num_subjects:
            state_json["num_subjects"] = state.num_subjects
        state_json["consumer_count"] = len(self.consumers)
        return {"config": self.config, "created": rfc3339(self.created), "state": state_json}


class FakeEngine:
    """The engine's attributes the monitor reads (JS.md): settings, streams, and the API's counters."""

    def __init__(self, store_dir: Optional[str] = "/var/lib/eventsvc/jetstream", domain: Optional[str] = None) -> None:
        self.settings = SimpleNamespace(
            store_dir=FilePath(store_dir) if store_dir else None, max_memory_store=1 << 30, max_file_store=10 << 30, domain=domain,
        )
        self.streams: Dict[str, FakeStream] = {}
        self.api_total = 0
        self.api_errors = 0

    def add(self, name: str, storage: str, subjects: List[str], messages: List[bytes], created: int) -> FakeStream:
        reference = {d["name"]: d for d in REFERENCE_JSZ["account_details"][0]["stream_detail"]}
        stream_config = dict(reference["ORDERS"]["config"], name=name, subjects=subjects, storage=storage)
        stream = self.streams[name] = FakeStream(name, stream_config, created)
        for i, data in enumerate(messages):
            stream.store.store(subjects[0].replace(">", "new"), None, data, created + (i + 1) * SECOND)
        return stream


def orders_and_mem(engine: FakeEngine) -> None:
    """The reference's two streams and consumer, in the fake engine."""
    orders = engine.add("ORDERS", "file", ["orders.>"], [b"hello %d" % i for i in range(5)], T0)
    info = json.loads(json.dumps(REFERENCE_JSZ["account_details"][0]["stream_detail"][0]["consumer_detail"][0]))
    orders.consumers["proc"] = FakeConsumer("proc", info)
    engine.add("MEM", "memory", ["mem"], [b"x"], T0 + SECOND)
    engine.api_total, engine.api_errors = 4, 1


class JszTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.svc = make_service(config.parse("[service]\nport = 0\n[monitor]\nenabled = true\nport = 0\n"), MemoryReactorClock())
        self.svc.startService()
        self.addCleanup(self.svc.stopService)

    def on(self, engine: Optional[FakeEngine] = None) -> FakeEngine:
        """JetStream on, as the service holds its engine."""
        engine = engine or FakeEngine()
        self.svc.jetstream = engine
        self.addCleanup(setattr, self.svc, "jetstream", None)
        return engine

    def test_disabled(self) -> None:
        """Without [jetstream], /jsz answers as nats-server without -js, whatever the flags; /varz's jetstream is {}."""
        for query in ("/jsz", "/jsz?streams=1&consumers=1&config=1&accounts=1"):
            code, body = get(self.svc, query)
            self.assertEqual(code, 200)
            self.assertEqual(list(body)[:2], ["server_id", "now"])
            self.assertEqual(body["server_id"], self.svc.broker.server_id)
            self.assertEqual({k: v for k, v in body.items() if k not in ("server_id", "now")}, REFERENCE_DISABLED)
            self.assertEqual(list(body)[2:], list(REFERENCE_DISABLED))
        self.assertEqual(get(self.svc, "/varz")[1]["jetstream"], {})
        self.assertNotIn("eventsvc_jetstream", get(self.svc, "/metrics")[1])

    def test_totals(self) -> None:
        """/jsz alone: the configuration, the usage by store and the totals, nats-server's keys in its order."""
        engine = self.on(FakeEngine(domain="hub"))
        orders_and_mem(engine)
        code, body = get(self.svc, "/jsz")
        self.assertEqual(code, 200)
        expected = {k: v for k, v in REFERENCE_JSZ.items() if k != "account_details"}
        self.assertEqual(list(body), list(expected))
        # (the memory store counts 16 bytes a message besides subject and payload, as nats-server's does)
        orders_bytes, mem_bytes = 5 * (10 + 7 + 16), 3 + 1 + 16
        self.assertEqual(body["config"], {
            "max_memory": 1 << 30, "max_storage": 10 << 30, "store_dir": "/var/lib/eventsvc/jetstream", "domain": "hub",
        })
        self.assertEqual(
            {k: body[k] for k in ("memory", "storage", "reserved_memory", "reserved_storage", "accounts", "ha_assets", "api")},
            {"memory": mem_bytes, "storage": orders_bytes, "reserved_memory": 0, "reserved_storage": 0, "accounts": 1,
             "ha_assets": 0, "api": {"total": 4, "errors": 1}},
        )
        self.assertEqual(
            (body["streams"], body["consumers"], body["messages"], body["bytes"]), (2, 1, 6, orders_bytes + mem_bytes),
        )

    def test_details_have_the_reference_shape(self) -> None:
        """consumers=1&config=1: every level nats-server writes, with its keys in its order; the streams by name."""
        orders_and_mem(self.on())
        code, body = get(self.svc, "/jsz?consumers=1&config=1")
        self.assertEqual(code, 200)
        ours = {d["name"]: d for d in body["account_details"][0]["stream_detail"]}
        theirs = {d["name"]: d for d in REFERENCE_JSZ["account_details"][0]["stream_detail"]}
        self.assertEqual(list(ours), ["MEM", "ORDERS"])
        for name in ("MEM", "ORDERS"):
            self.assertEqual(shape(ours[name]), shape(theirs[name]), name)
        self.assertEqual(shape(dict(body, account_details=[])), shape(dict(REFERENCE_JSZ, account_details=[])))
        account = body["account_details"][0]
        self.assertEqual(shape(dict(account, stream_detail=[])), shape(dict(REFERENCE_JSZ["account_details"][0], stream_detail=[])))
        self.assertEqual((account["reserved_memory"], account["reserved_storage"], account["accounts"]), (2**64 - 1, 2**64 - 1, 0))
        orders = ours["ORDERS"]
        self.assertEqual(orders["created"], "2026-12-06T22:00:00Z")
        self.assertEqual(orders["cluster"], {"leader": self.svc.broker.server_id})
        self.assertEqual(orders["state"], {
            "messages": 5, "bytes": 165, "first_seq": 1, "first_ts": "2026-12-06T22:00:01Z", "last_seq": 5,
            "last_ts": "2026-12-06T22:00:05Z", "num_subjects": 1, "consumer_count": 1,
        })
        self.assertEqual(orders["consumer_detail"][0]["num_pending"], 3)
        self.assertEqual(orders["consumer_detail"][0]["config"]["durable_name"], "proc")

    def test_flags(self) -> None:
        """accounts, streams, consumers and config each add their level; acc names the account; offset pages."""
        engine = self.on()
        orders_and_mem(engine)

        def levels(query: str) -> Any:
            body = get(self.svc, query)[1]
            if "account_details" not in body:
                return None
            (account,) = body["account_details"]
            if "stream_detail" not in account:
                return "account"
            return {
                d["name"]: sorted(k for k in ("config", "consumer_detail") if k in d)
                + (["consumer config"] if any("config" in c for c in d.get("consumer_detail", [])) else [])
                for d in account["stream_detail"]
            }

        self.assertIsNone(levels("/jsz"))
        self.assertEqual(levels("/jsz?accounts=1"), "account")
        self.assertEqual(levels("/jsz?acc=$G"), "account")
        self.assertIsNone(levels("/jsz?acc=nope"))
        self.assertEqual(levels("/jsz?accounts=1&offset=1"), None)
        self.assertEqual(levels("/jsz?streams=1"), {"MEM": [], "ORDERS": []})
        self.assertEqual(levels("/jsz?streams=true&config=1"), {"MEM": ["config"], "ORDERS": ["config"]})
        self.assertEqual(levels("/jsz?consumers=1"), {"MEM": [], "ORDERS": ["consumer_detail"]})
        self.assertEqual(
            levels("/jsz?consumers=1&config=1"), {"MEM": ["config"], "ORDERS": ["config", "consumer_detail", "consumer config"]},
        )
        self.assertEqual(levels("/jsz?acc=$G&streams=1"), {"MEM": [], "ORDERS": []})
        # The consumer's info as it gives it, its config left out without config=1.
        detail = get(self.svc, "/jsz?consumers=1")[1]["account_details"][0]["stream_detail"][1]["consumer_detail"][0]
        expected = dict(engine.streams["ORDERS"].consumers["proc"].info())
        del expected["config"]
        self.assertEqual(detail, expected)

    def test_refused_flags(self) -> None:
        """A flag nats-server would refuse gets its 400 and its words."""
        self.on()
        monitor = self.svc.getServiceNamed("monitor")
        for query, message in (
            ("accounts=x", "Error decoding boolean for 'accounts': strconv.ParseBool: parsing \"x\": invalid syntax"),
            ("consumers=yes", "Error decoding boolean for 'consumers': strconv.ParseBool: parsing \"yes\": invalid syntax"),
            ("limit=ten", "Error decoding int for 'limit': strconv.Atoi: parsing \"ten\": invalid syntax"),
        ):
            from twisted.web.test.requesthelper import DummyRequest

            request = DummyRequest([b""])
            request.args = {k.encode(): [v.encode()] for k, v in [query.split("=")]}
            body = monitor.site.resource.children[b"jsz"].render_GET(request)
            self.assertEqual((request.responseCode, body.decode()), (400, message))

    def test_many_streams_in_slices(self) -> None:
        """Hundreds of streams in detail are written a slice per reactor turn, and the answer is whole and in order."""
        from twisted.web.test.requesthelper import DummyRequest

        from eventsvc.ops.jsz import DETAILS_PER_TURN

        engine = self.on()
        # Each with a consumer: DETAILS_PER_TURN / 2 streams a turn.
        count = DETAILS_PER_TURN + 3
        info = REFERENCE_JSZ["account_details"][0]["stream_detail"][0]["consumer_detail"][0]
        for i in range(count):
            stream = engine.add("S%04d" % i, "memory", ["s%d" % i], [b"x"], T0)
            stream.consumers["c"] = FakeConsumer("c", dict(info, stream_name=stream.name, name="c"))
        monitor = self.svc.getServiceNamed("monitor")
        request = DummyRequest([b""])
        request.args = {b"consumers": [b"1"], b"config": [b"1"]}
        monitor.site.resource.children[b"jsz"].render_GET(request)
        # The head and the first 50 now, then 50 and 3 in later turns.
        self.assertFalse(request.finished)
        self.assertEqual(len(request.written), 2)
        while not request.finished:
            monitor.monitor.clock.advance(0)
        self.assertEqual(len(request.written), 5)
        body = json.loads(b"".join(request.written))
        self.assertEqual(body["streams"], count)
        details = body["account_details"][0]["stream_detail"]
        self.assertEqual([d["name"] for d in details], ["S%04d" % i for i in range(count)])
        self.assertEqual(details[-1]["config"]["name"], "S%04d" % (count - 1))
        self.assertEqual(details[-1]["consumer_detail"][0]["stream_name"], "S%04d" % (count - 1))
        self.assertEqual(body["account_details"][0]["api"], {"total": 0, "errors": 0})

    def test_varz_jetstream(self) -> None:
        """/varz's jetstream: nats-server's config and stats objects."""
        engine = self.on(FakeEngine(store_dir=None))
        orders_and_mem(engine)
        varz = get(self.svc, "/varz")[1]
        self.assertEqual(varz["jetstream"], {
            "config": {"max_memory": 1 << 30, "max_storage": 10 << 30},
            "stats": {"memory": 20, "storage": 165, "reserved_memory": 0, "reserved_storage": 0, "accounts": 1, "ha_assets": 0,
                      "api": {"total": 4, "errors": 1}},
        })

    def test_index_lists_jsz(self) -> None:
        monitor = self.svc.getServiceNamed("monitor")
        from twisted.web.test.requesthelper import DummyRequest

        page = monitor.site.resource.children[b""].render_GET(DummyRequest([b""])).decode()
        self.assertIn('<a href="./jsz">JetStream</a> <code>/jsz</code>', page)
        self.assertLess(page.index("./varz"), page.index("./jsz"))
        self.assertLess(page.index("./jsz"), page.index("./connz"))


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.svc = make_service(config.parse("[service]\nport = 0\n[monitor]\nenabled = true\nport = 0\n"), MemoryReactorClock())
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        self.engine = self.svc.jetstream = FakeEngine()
        orders_and_mem(self.engine)

    def test_per_stream_and_consumer(self) -> None:
        _, text = get(self.svc, "/metrics")
        for line in (
            "eventsvc_jetstream_memory_bytes 20.0",
            "eventsvc_jetstream_storage_bytes 165.0",
            "eventsvc_jetstream_api_requests_total 4.0",
            "eventsvc_jetstream_api_errors_total 1.0",
            "eventsvc_jetstream_streams 2.0",
            'eventsvc_jetstream_stream_messages{storage="file",stream="ORDERS"} 5.0',
            'eventsvc_jetstream_stream_messages{storage="memory",stream="MEM"} 1.0',
            'eventsvc_jetstream_stream_bytes{storage="file",stream="ORDERS"} 165.0',
            'eventsvc_jetstream_stream_first_seq{storage="file",stream="ORDERS"} 1.0',
            'eventsvc_jetstream_stream_last_seq{storage="file",stream="ORDERS"} 5.0',
            'eventsvc_jetstream_stream_consumers{storage="file",stream="ORDERS"} 1.0',
            'eventsvc_jetstream_stream_consumers{storage="memory",stream="MEM"} 0.0',
            'eventsvc_jetstream_stream_writable{storage="file",stream="ORDERS"} 1.0',
            'eventsvc_jetstream_consumer_num_pending{consumer="proc",stream="ORDERS"} 3.0',
            'eventsvc_jetstream_consumer_num_ack_pending{consumer="proc",stream="ORDERS"} 1.0',
            'eventsvc_jetstream_consumer_num_redelivered{consumer="proc",stream="ORDERS"} 0.0',
            'eventsvc_jetstream_consumer_num_waiting{consumer="proc",stream="ORDERS"} 0.0',
            'eventsvc_jetstream_consumer_delivered_consumer_seq{consumer="proc",stream="ORDERS"} 2.0',
            'eventsvc_jetstream_consumer_delivered_stream_seq{consumer="proc",stream="ORDERS"} 2.0',
            'eventsvc_jetstream_consumer_ack_floor_consumer_seq{consumer="proc",stream="ORDERS"} 1.0',
            'eventsvc_jetstream_consumer_ack_floor_stream_seq{consumer="proc",stream="ORDERS"} 1.0',
        ):
            self.assertIn("\n" + line + "\n", text, line)

    def test_series_follow_the_streams(self) -> None:
        """A message stored, a consumer gone: the next scrape says so."""
        orders = self.engine.streams["ORDERS"]
        orders.store.store("orders.new", None, b"more", T0 + 10 * SECOND)
        del orders.consumers["proc"]
        _, text = get(self.svc, "/metrics")
        self.assertIn('\neventsvc_jetstream_stream_messages{storage="file",stream="ORDERS"} 6.0\n', text)
        self.assertIn('\neventsvc_jetstream_stream_consumers{storage="file",stream="ORDERS"} 0.0\n', text)
        self.assertNotIn('consumer="proc"', text)


class HealthTests(SynchronousTestCase):
    """A store that cannot write is a state /healthz (and the health question over NATS) reports."""

    def setUp(self) -> None:
        self.svc = make_service(config.parse("[service]\nport = 0\n[monitor]\nenabled = true\nport = 0\n"), MemoryReactorClock())
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        self.engine = self.svc.jetstream = FakeEngine()
        orders_and_mem(self.engine)

    def test_full_and_failing_stores(self) -> None:
        self.assertEqual(get(self.svc, "/healthz"), (200, {"status": "ok"}))
        orders = self.engine.streams["ORDERS"].store
        orders.health, orders.error = "full", "no space left on device in /var/lib/eventsvc/jetstream"  # type: ignore[attr-defined]
        full = "JetStream stream ORDERS store full: no space left on device in /var/lib/eventsvc/jetstream"
        self.assertEqual(get(self.svc, "/healthz"), (503, {"status": "unavailable", "error": full}))
        self.assertIn('\neventsvc_jetstream_stream_writable{storage="file",stream="ORDERS"} 0.0\n', get(self.svc, "/metrics")[1])
        # The health question over NATS (eventsvc health-check) says the same.
        answers: List[bytes] = []
        self.svc.broker.subscribe("answer", lambda subject, reply, payload, headers: answers.append(payload))
        self.svc.broker.publish(self.svc.health_subject(), b"", reply="answer")
        self.assertEqual(json.loads(answers[0]), {"status": "unavailable", "error": full})
        # A consumer's store too, each named.
        proc = self.engine.streams["ORDERS"].consumers["proc"]
        proc.store = SimpleNamespace(health="unavailable", error="input/output error in /var/lib/eventsvc/jetstream")  # type: ignore[attr-defined]
        self.assertEqual(get(self.svc, "/healthz")[1]["error"], full + "; JetStream consumer ORDERS > proc store unavailable: "
                         "input/output error in /var/lib/eventsvc/jetstream")
        orders.health = proc.store.health = "ok"  # type: ignore[attr-defined]
        self.assertEqual(get(self.svc, "/healthz"), (200, {"status": "ok"}))
        self.assertIn('\neventsvc_jetstream_stream_writable{storage="file",stream="ORDERS"} 1.0\n', get(self.svc, "/metrics")[1])


class RealEngineTests(SynchronousTestCase):
    """The same pages over the real engine in memory: streams and a consumer made through the in-process API."""

    def setUp(self) -> None:
        store = os.path.abspath(self.mktemp())
        self.svc = make_service(config.parse(
            '[service]\nport = 0\n[monitor]\nenabled = true\nport = 0\n[jetstream]\nstore_dir = "%s"\n' % store), MemoryReactorClock())
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        self.answers: List[bytes] = []
        self.svc.broker.subscribe("_INBOX.test.>", lambda subject, reply, payload, headers: self.answers.append(payload))

    def request(self, subject: str, body: Any = b"") -> Any:
        self.svc.broker.publish(subject, body if isinstance(body, bytes) else json.dumps(body).encode(), reply="_INBOX.test.1")
        return json.loads(self.answers.pop())

    def test_pages_follow_the_engine(self) -> None:
        self.assertNotIn("error", self.request("$JS.API.STREAM.CREATE.EVENTS", {"name": "EVENTS", "subjects": ["ev.>"], "storage": "memory"}))
        for i in range(3):
            self.assertEqual(self.request("ev.a", b"event %d" % i)["seq"], i + 1)
        self.assertNotIn("error", self.request("$JS.API.CONSUMER.DURABLE.CREATE.EVENTS.worker", {
            "stream_name": "EVENTS", "config": {"durable_name": "worker", "ack_policy": "explicit"}}))
        # One message pulled and not acked.
        self.svc.broker.publish("$JS.API.CONSUMER.MSG.NEXT.EVENTS.worker", b'{"batch":1}', reply="_INBOX.test.pull")
        self.assertEqual(self.answers.pop(), b"event 0")
        _, body = get(self.svc, "/jsz?consumers=1")
        self.assertEqual((body["streams"], body["consumers"], body["messages"], body["memory"], body["storage"]), (1, 1, 3, 3 * 27, 0))
        (detail,) = body["account_details"][0]["stream_detail"]
        self.assertEqual((detail["name"], detail["state"]["messages"], detail["state"]["consumer_count"]), ("EVENTS", 3, 1))
        self.assertNotIn("config", detail)
        (consumer,) = detail["consumer_detail"]
        self.assertEqual(
            (consumer["name"], consumer["num_pending"], consumer["num_ack_pending"], consumer["delivered"]["stream_seq"]), ("worker", 2, 1, 1),
        )
        self.assertNotIn("config", consumer)
        self.assertEqual(get(self.svc, "/jsz?consumers=1&config=1")[1]["account_details"][0]["stream_detail"][0]["config"]["storage"], "memory")
        _, text = get(self.svc, "/metrics")
        for line in (
            'eventsvc_jetstream_stream_messages{storage="memory",stream="EVENTS"} 3.0',
            'eventsvc_jetstream_consumer_num_pending{consumer="worker",stream="EVENTS"} 2.0',
            'eventsvc_jetstream_consumer_num_ack_pending{consumer="worker",stream="EVENTS"} 1.0',
            "eventsvc_jetstream_api_requests_total {}.0".format(self.svc.jetstream.api_total),
        ):
            self.assertIn("\n" + line + "\n", text, line)
        self.assertEqual(get(self.svc, "/varz")[1]["jetstream"]["stats"]["memory"], 3 * 27)
        self.assertEqual(get(self.svc, "/healthz"), (200, {"status": "ok"}))
        # Deleted: gone from every page.
        self.assertEqual(self.request("$JS.API.STREAM.DELETE.EVENTS")["success"], True)
        self.assertNotIn("stream_detail", get(self.svc, "/jsz?streams=1")[1]["account_details"][0])
        self.assertNotIn('stream="EVENTS"', get(self.svc, "/metrics")[1])


# -- the stream and consumer commands ---------------------------------------------------

#: nats-server 2.9.10's STREAM.LIST and CONSUMER.LIST items for the streams above (nats-py made them).
REFERENCE_STREAM_INFO = json.loads("""{"config":{"name":"ORDERS","subjects":["orders.>"],"retention":"limits",
"max_consumers":-1,"max_msgs":-1,"max_bytes":-1,"max_age":3600000000000,"max_msgs_per_subject":-1,"max_msg_size":-1,
"discard":"old","storage":"file","num_replicas":1,"duplicate_window":60000000000,"allow_direct":false,"mirror_direct":false,
"sealed":false,"deny_delete":false,"deny_purge":false,"allow_rollup_hdrs":false},"created":"2026-12-06T22:18:15.093431471Z",
"state":{"messages":5,"bytes":235,"first_seq":1,"first_ts":"2026-12-06T22:18:15.09623779Z","last_seq":5,
"last_ts":"2026-12-06T22:18:15.097672875Z","num_subjects":1,"consumer_count":2}}""")
REFERENCE_EMPTY_STREAM_INFO = json.loads("""{"config":{"name":"MEM","subjects":["mem"],"retention":"limits",
"max_consumers":-1,"max_msgs":-1,"max_bytes":1048576,"max_age":0,"max_msgs_per_subject":-1,"max_msg_size":-1,"discard":"old",
"storage":"memory","num_replicas":1,"duplicate_window":120000000000,"allow_direct":true,"mirror_direct":false,"sealed":false,
"deny_delete":true,"deny_purge":false,"allow_rollup_hdrs":true},"created":"2026-12-06T22:18:15.095690117Z",
"state":{"messages":0,"bytes":0,"first_seq":0,"first_ts":"0001-01-01T00:00:00Z","last_seq":0,
"last_ts":"0001-01-01T00:00:00Z","consumer_count":0}}""")
REFERENCE_PUSH_CONSUMER = json.loads("""{"stream_name":"ORDERS","name":"push","created":"2026-12-06T22:18:15.1Z",
"config":{"durable_name":"push","deliver_policy":"by_start_sequence","opt_start_seq":3,"ack_policy":"explicit",
"ack_wait":30000000000,"max_deliver":5,"backoff":[1000000000,5000000000],"filter_subject":"orders.new",
"replay_policy":"instant","max_ack_pending":1000,"deliver_subject":"dl","deliver_group":"g","flow_control":true,
"idle_heartbeat":5000000000,"num_replicas":0},"delivered":{"consumer_seq":0,"stream_seq":0},
"ack_floor":{"consumer_seq":0,"stream_seq":0},"num_ack_pending":0,"num_redelivered":0,"num_waiting":0,"num_pending":3,
"push_bound":true}""")


class CommandOutputTests(SynchronousTestCase):
    """What the commands print for nats-server's own answers."""

    def test_stream_table(self) -> None:
        from eventsvc.cli.jetstream import stream_table

        self.assertEqual(stream_table([REFERENCE_STREAM_INFO, REFERENCE_EMPTY_STREAM_INFO]), (
            "STREAM  STORAGE  SUBJECTS  MESSAGES  BYTES  CONSUMERS  LAST MESSAGE\n"
            "MEM     memory   mem              0    0 B          0  never\n"
            "ORDERS  file     orders.>         5  235 B          2  2026-12-06 22:18:15 UTC\n"
        ))

    def test_stream_text(self) -> None:
        from eventsvc.cli.jetstream import stream_text

        self.assertEqual(stream_text(REFERENCE_STREAM_INFO), (
            "Stream ORDERS, created 2026-12-06 22:18:15 UTC\n"
            "\n"
            "Configuration:\n"
            "              subjects: orders.>\n"
            "               storage: file\n"
            "             retention: limits\n"
            "              replicas: 1\n"
            "               discard: old\n"
            "      duplicate window: 1m0s\n"
            "          max messages: unlimited\n"
            "             max bytes: unlimited\n"
            "               max age: 1h0m0s\n"
            "  max msgs per subject: unlimited\n"
            "      max message size: unlimited\n"
            "         max consumers: unlimited\n"
            "\n"
            "State:\n"
            "   messages: 5\n"
            "      bytes: 235 B\n"
            "      first: #1 at 2026-12-06 22:18:15 UTC\n"
            "       last: #5 at 2026-12-06 22:18:15 UTC\n"
            "   subjects: 1\n"
            "    deleted: 0\n"
            "  consumers: 2\n"
        ))
        text = stream_text(REFERENCE_EMPTY_STREAM_INFO)
        self.assertIn("\n             max bytes: 1.0 MiB\n", text)
        self.assertIn("\n               options: deny delete, rollups allowed, direct get\n", text)
        self.assertIn("\n      first: #0 at never\n", text)

    def test_consumer_table_and_text(self) -> None:
        from eventsvc.cli.jetstream import consumer_table, consumer_text

        pull = REFERENCE_JSZ["account_details"][0]["stream_detail"][0]["consumer_detail"][0]
        self.assertEqual(consumer_table([REFERENCE_PUSH_CONSUMER, pull]), (
            "CONSUMER  KIND          ACK       PENDING  ACK PENDING  REDELIVERED  WAITING  LAST DELIVERY\n"
            "proc      durable pull  explicit        3            1            0        0  2026-12-06 22:13:14 UTC\n"
            "push      durable push  explicit        3            0            0        0  never\n"
        ))
        self.assertEqual(consumer_text(REFERENCE_PUSH_CONSUMER), (
            "Consumer push of stream ORDERS, created 2026-12-06 22:18:15 UTC\n"
            "\n"
            "Configuration:\n"
            "             kind: durable push\n"
            "  deliver subject: dl (group g)\n"
            "   filter subject: orders.new\n"
            "   deliver policy: by_start_sequence from #3\n"
            "       ack policy: explicit\n"
            "         ack wait: 30s\n"
            "      max deliver: 5\n"
            "  max ack pending: 1,000\n"
            "    replay policy: instant\n"
            "          backoff: 1s, 5s\n"
            "   idle heartbeat: 5s\n"
            "          options: flow control\n"
            "\n"
            "State:\n"
            "  last delivered: consumer #0 stream #0 at never\n"
            "       ack floor: consumer #0 stream #0 at never\n"
            "         pending: 3\n"
            "     ack pending: 0\n"
            "     redelivered: 0\n"
            "   waiting pulls: 0\n"
        ))
        self.assertIn("\n      max waiting: 512\n", consumer_text(pull))

    def test_sizes_and_durations(self) -> None:
        from eventsvc.cli.jetstream import duration, size

        self.assertEqual([size(n) for n in (0, 1023, 1024, 1536, 5 << 20, 3 << 40)], ["0 B", "1,023 B", "1.0 KiB", "1.5 KiB", "5.0 MiB", "3.0 TiB"])
        self.assertEqual(
            [duration(n) for n in (0, 500_000_000, 30 * SECOND, 120 * SECOND, 3600 * SECOND, 90_500_000_000)],
            ["0s", "500ms", "30s", "2m0s", "1h0m0s", "1m30.5s"],
        )

    def test_listing_reads_every_page(self) -> None:
        """STREAM.LIST answers 256 at a time: the command asks from each offset until it has the total."""
        from eventsvc.cli import jetstream, wire

        asked: List[Any] = []

        def request(conn: Any, subject: str, payload: bytes, headers: Any = None, inbox_prefix: str = "_INBOX") -> wire.Message:
            body = json.loads(payload) if payload else {}
            asked.append((subject, body))
            offset = body.get("offset", 0)
            streams = [{"config": {"name": "S%03d" % i}} for i in range(offset, min(offset + 256, 600))]
            answer = {"type": "io.nats.jetstream.api.v1.stream_list_response", "total": 600, "offset": offset, "limit": 256, "streams": streams}
            return wire.Message("_INBOX.x", b"1", None, None, json.dumps(answer).encode())

        self.patch(wire, "request", request)
        items = jetstream.paged(None, "$JS.hub.API", "STREAM.LIST", "streams")  # type: ignore[arg-type]
        self.assertEqual([i["config"]["name"] for i in items], ["S%03d" % i for i in range(600)])
        self.assertEqual(asked, [("$JS.hub.API.STREAM.LIST", {}), ("$JS.hub.API.STREAM.LIST", {"offset": 256}),
                                 ("$JS.hub.API.STREAM.LIST", {"offset": 512})])

    def test_api_errors_and_no_responders(self) -> None:
        from eventsvc.cli import jetstream, wire
        from eventsvc.cli.common import Failed

        answers = [
            wire.Message("_INBOX.x", b"1", None, b"NATS/1.0 503\r\n\r\n", b""),
            wire.Message("_INBOX.x", b"1", None, None, b'{"type":"io.nats.jetstream.api.v1.stream_info_response","error":'
                         b'{"code":404,"err_code":10059,"description":"stream not found"},"total":0,"offset":0,"limit":0}'),
            wire.Message("_INBOX.x", b"1", None, None, b"<html>"),
        ]
        self.patch(wire, "request", lambda *a, **k: answers.pop(0))
        for message in (
            "JetStream is not enabled on that server (no responders on $JS.API.STREAM.INFO.NOPE)",
            "stream not found (404, err_code 10059, on $JS.API.STREAM.INFO.NOPE)",
        ):
            error = self.assertRaises(Failed, jetstream.ask, None, "$JS.API", "STREAM.INFO.NOPE")
            self.assertEqual(str(error), message)
        self.assertTrue(str(self.assertRaises(Failed, jetstream.ask, None, "$JS.API", "INFO")).startswith("the answer to $JS.API.INFO is not JSON"))


def api(port: int, subject: str, body: Any = None) -> Dict[str, Any]:
    """One request to a server's JetStream API (or a publish awaiting its PubAck), as a plain client sends it."""
    from eventsvc.cli import wire

    conn = wire.open_connection("127.0.0.1", port, 10, lambda: None, "localhost")  # type: ignore[arg-type, return-value]
    try:
        wire.login(conn, "test")
        payload = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
        return json.loads(wire.request(conn, subject, payload).payload)
    finally:
        conn.close()


def without_times(text: str) -> str:
    import re

    return re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", "<time>", text)


class CommandProcessTests(TestCase):
    """The commands as a user runs them, against a real server."""

    timeout = 90

    def config_for(self, port: int) -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        return process.write_config(os.path.join(directory, "patch.toml"), '[service]\nhost = "127.0.0.1"\nport = %d\n' % port)

    @defer.inlineCallbacks
    def test_jetstream_off(self) -> Any:
        """An eventsvc without [jetstream]: one line that says so, exit 1."""
        server = process.eventsvc(self.config_for(0), expect=("service",))
        port = yield process.started(self, server)
        config = self.config_for(port)
        for command in (["stream", "ls"], ["stream", "info", "ORDERS"], ["consumer", "ls", "ORDERS"], ["consumer", "info", "ORDERS", "c"]):
            result = yield threads.deferToThread(process.cli, *command, "--config", config)
            subject = "$JS.API." + {"ls": "STREAM.LIST", "info": "STREAM.INFO.ORDERS"}[command[1]] if command[0] == "stream" else (
                "$JS.API.CONSUMER.LIST.ORDERS" if command[1] == "ls" else "$JS.API.CONSUMER.INFO.ORDERS.c")
            self.assertEqual((result.returncode, result.stdout), (1, ""), command)
            self.assertEqual(
                result.stderr,
                "eventsvc: service 127.0.0.1:{}: JetStream is not enabled on that server (no responders on {})\n".format(port, subject),
            )

    @defer.inlineCallbacks
    def test_against_nats_server(self) -> Any:
        """The commands speak the API as any client does: nats-server 2.9 answers them as eventsvc does."""
        store = os.path.abspath(self.mktemp())
        port = yield process.started(self, process.nats_server("-js", "-sd", store))
        yield self.check_commands(port)

    @defer.inlineCallbacks
    def test_against_eventsvc(self) -> Any:
        """The same commands, the same answers, against eventsvc with [jetstream]."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        config = process.write_config(os.path.join(folder, "patch.toml"), '[service]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "state"\n[jetstream]\n')
        port = yield process.started(self, process.eventsvc(config, expect=("service",)))
        yield self.check_commands(port)

    @defer.inlineCallbacks
    def check_commands(self, port: int) -> Any:
        """Two streams and two consumers made through the API, then listed and described by the commands."""

        def make() -> None:
            for name, config in (
                ("ORDERS", {"name": "ORDERS", "subjects": ["orders.>"], "max_age": 3600 * SECOND}),
                ("MEM", {"name": "MEM", "subjects": ["mem"], "storage": "memory", "max_bytes": 1 << 20}),
            ):
                self.assertNotIn("error", api(port, "$JS.API.STREAM.CREATE." + name, config))
            for i in range(5):
                self.assertEqual(api(port, "orders.new", b"hello %d" % i)["seq"], i + 1)
            self.assertNotIn("error", api(port, "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.proc", {
                "stream_name": "ORDERS", "config": {"durable_name": "proc", "ack_policy": "explicit"}}))
            self.assertNotIn("error", api(port, "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.push", {
                "stream_name": "ORDERS", "config": {"durable_name": "push", "ack_policy": "explicit", "deliver_subject": "dl"}}))

        yield threads.deferToThread(make)
        config = self.config_for(port)
        run = lambda *args: threads.deferToThread(process.cli, *args, "--config", config)  # noqa: E731
        ls = yield run("stream", "ls")
        self.assertEqual((ls.returncode, ls.stderr), (0, ""))
        # (5 messages of 47 bytes as nats-server's file store counts them, 22 + subject + payload + 8;
        # what the server says, whatever its store counts)
        stored = yield threads.deferToThread(api, port, "$JS.API.STREAM.INFO.ORDERS")
        self.assertEqual(without_times(ls.stdout), (
            "STREAM  STORAGE  SUBJECTS  MESSAGES  BYTES  CONSUMERS  LAST MESSAGE\n"
            "MEM     memory   mem              0    0 B          0  never\n"
            "ORDERS  file     orders.>         5  {:3d} B          2  <time>\n"
        ).format(stored["state"]["bytes"]))
        info = yield run("stream", "info", "ORDERS")
        self.assertEqual(info.returncode, 0, info.stderr)
        self.assertIn("\n               max age: 1h0m0s\n", info.stdout)
        self.assertIn("\n   messages: 5\n", info.stdout)
        self.assertIn("\n  consumers: 2\n", info.stdout)
        listed = yield run("stream", "ls", "--json")
        self.assertEqual([json.loads(line)["config"]["name"] for line in listed.stdout.splitlines()], ["MEM", "ORDERS"])
        as_json = yield run("stream", "info", "--json", "MEM")
        self.assertEqual(json.loads(as_json.stdout)["config"]["max_bytes"], 1 << 20)
        consumers = yield run("consumer", "ls", "ORDERS")
        self.assertEqual(without_times(consumers.stdout), (
            "CONSUMER  KIND          ACK       PENDING  ACK PENDING  REDELIVERED  WAITING  LAST DELIVERY\n"
            "proc      durable pull  explicit        5            0            0        0  never\n"
            "push      durable push  explicit        5            0            0        0  never\n"
        ))
        lines = yield run("consumer", "ls", "--json", "ORDERS")
        self.assertEqual([json.loads(line)["name"] for line in lines.stdout.splitlines()], ["proc", "push"])
        consumer = yield run("consumer", "info", "ORDERS", "proc")
        self.assertTrue(consumer.stdout.startswith("Consumer proc of stream ORDERS, created "), consumer.stdout)
        self.assertIn("\n         pending: 5\n", consumer.stdout)
        for args, error in (
            (("stream", "info", "NOPE"), "stream not found (404, err_code 10059, on $JS.API.STREAM.INFO.NOPE)"),
            (("consumer", "ls", "NOPE"), "stream not found (404, err_code 10059, on $JS.API.CONSUMER.LIST.NOPE)"),
            (("consumer", "info", "ORDERS", "nope"), "consumer not found (404, err_code 10014, on $JS.API.CONSUMER.INFO.ORDERS.nope)"),
            (("stream", "ls", "--domain", "elsewhere"),
             "JetStream is not enabled on that server (no responders on $JS.elsewhere.API.STREAM.LIST)"),
        ):
            result = yield run(*args)
            self.assertEqual((result.returncode, result.stderr), (1, "eventsvc: service 127.0.0.1:{}: {}\n".format(port, error)), args)
        bad = yield run("stream", "info", "A.B")
        self.assertEqual((bad.returncode, bad.stderr), (2, "eventsvc: 'A.B' is not a stream name (no spaces, '.', '*' or '>')\n"))


def make_orders_and_mem(port: int) -> None:
    """
    Through the API, as a client: ORDERS (file) with 5 messages and a durable
    pull consumer given 2 and acked 1, MEM (memory) with 1 message.
    """
    from eventsvc.cli import wire

    for name, stream_config in (
        ("ORDERS", {"name": "ORDERS", "subjects": ["orders.>"]}),
        ("MEM", {"name": "MEM", "subjects": ["mem"], "storage": "memory"}),
    ):
        answer = api(port, "$JS.API.STREAM.CREATE." + name, stream_config)
        assert "error" not in answer, answer
    for i in range(5):
        assert api(port, "orders.new", b"hello %d" % i)["seq"] == i + 1
    assert api(port, "mem", b"x")["seq"] == 1
    answer = api(port, "$JS.API.CONSUMER.DURABLE.CREATE.ORDERS.proc", {
        "stream_name": "ORDERS", "config": {"durable_name": "proc", "ack_policy": "explicit"}})
    assert "error" not in answer, answer
    conn = wire.open_connection("127.0.0.1", port, 10, lambda: None, "localhost")  # type: ignore[arg-type, return-value]
    try:
        wire.login(conn, "test")
        conn.send(b"SUB _INBOX.pull 1\r\nPUB $JS.API.CONSUMER.MSG.NEXT.ORDERS.proc _INBOX.pull 11\r\n{\"batch\":2}\r\n")
        first, second = conn.next_message(), conn.next_message()
        assert (first.payload, second.payload) == (b"hello 0", b"hello 1"), (first, second)
        assert first.reply is not None
        # The ack with a reply: answered once it is kept.
        wire.request(conn, first.reply, b"+ACK")
    finally:
        conn.close()


def http_json(port: int, path: str) -> Any:
    from urllib.request import urlopen

    with urlopen("http://127.0.0.1:{}{}".format(port, path), timeout=10) as response:
        return json.loads(response.read())


class AgainstNatsServerTests(TestCase):
    """The same streams and consumer in nats-server -js and in eventsvc: /jsz and /varz's jetstream alike."""

    timeout = 120

    @defer.inlineCallbacks
    def test_jsz_and_varz_as_nats_server(self) -> Any:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        # Every port the kernel's, read back (-m -1: nats-server's too).
        theirs = process.nats_server("-js", "-sd", os.path.join(folder, "ref"), "-m", "-1", expect=("http",))
        reference = yield process.started(self, theirs)
        reference_monitor = theirs.ports["http"]
        ours = process.eventsvc(process.write_config(os.path.join(folder, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "state"\n[monitor]\nport = 0\n[jetstream]\n'
        )), expect=("service", "monitor"))
        port = yield process.started(self, ours)
        monitor = ours.ports["monitor"]

        def both() -> Any:
            pages = []
            for nats_port, http_port in ((reference, reference_monitor), (port, monitor)):
                make_orders_and_mem(nats_port)
                pages.append((http_json(http_port, "/jsz?consumers=1&config=1"), http_json(http_port, "/varz")["jetstream"],
                              http_json(http_port, "/jsz")))
            return pages

        (theirs, their_varz, their_totals), (mine, my_varz, my_totals) = yield threads.deferToThread(both)
        by_name = lambda jsz: {d["name"]: d for d in jsz["account_details"][0]["stream_detail"]}  # noqa: E731
        self.assertEqual(sorted(by_name(mine)), ["MEM", "ORDERS"])
        for name in ("MEM", "ORDERS"):
            self.assertEqual(shape(by_name(mine)[name]), shape(by_name(theirs)[name]), name)
            self.assertEqual(by_name(mine)[name]["config"], by_name(theirs)[name]["config"], name)
            state, their_state = (dict(by_name(j)[name]["state"]) for j in (mine, theirs))
            for key in ("first_ts", "last_ts", "bytes"):
                state.pop(key), their_state.pop(key)
            self.assertEqual(state, their_state, name)
        consumer, their_consumer = (by_name(j)["ORDERS"]["consumer_detail"][0] for j in (mine, theirs))
        self.assertEqual(shape(consumer), shape(their_consumer))
        for key in ("config", "num_ack_pending", "num_redelivered", "num_waiting", "num_pending"):
            self.assertEqual(consumer[key], their_consumer[key], key)
        for key in ("consumer_seq", "stream_seq"):
            self.assertEqual((consumer["delivered"][key], consumer["ack_floor"][key]),
                             (their_consumer["delivered"][key], their_consumer["ack_floor"][key]), key)
        self.assertEqual(shape(dict(mine, account_details=[])), shape(dict(theirs, account_details=[])))
        self.assertEqual(shape(my_totals), shape(their_totals))
        for key in ("streams", "consumers", "messages", "accounts", "ha_assets", "reserved_memory", "reserved_storage"):
            self.assertEqual(my_totals[key], their_totals[key], key)
        self.assertEqual(shape(my_varz), shape(their_varz))
        self.assertEqual(my_varz["stats"]["memory"], my_totals["memory"])
        # (API counts: nats-server counted 5 requests, its consumer info included; the same here)
        self.assertEqual(my_totals["api"], their_totals["api"])



class FullDiskTests(TestCase):
    """
    A real eventsvc whose store_dir is a 20 MiB tmpfs (needs root to mount
    it, as CI has): more than two of the file store's 8 MiB segments, so
    that a purge frees whole ones.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_healthz_says_the_store_is_full_until_there_is_room(self) -> Any:
        import subprocess

        from twisted.trial.unittest import SkipTest

        if os.geteuid() != 0:
            raise SkipTest("mounting a tmpfs needs root (CI runs these tests as root)")
        folder = os.path.abspath(self.mktemp())
        store = os.path.join(folder, "js")
        os.makedirs(store)
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", store], capture_output=True, text=True)
        if mounted.returncode:
            raise SkipTest("cannot mount a tmpfs here: " + mounted.stderr.strip())
        self.addCleanup(subprocess.run, ["umount", "-l", store])
        config = process.write_config(os.path.join(folder, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\ndata_dir = "state"\n[monitor]\nport = 0\n'
            '[jetstream]\nstore_dir = "js"\nmax_file_store = "1G"\n'
        ))
        server = process.eventsvc(config, expect=("service", "monitor"))
        port = yield process.started(self, server)
        monitor = server.ports["monitor"]

        def fill() -> Any:
            from urllib.error import HTTPError
            from urllib.request import urlopen

            def healthz() -> Any:
                try:
                    with urlopen("http://127.0.0.1:%d/healthz" % monitor, timeout=10) as response:
                        return response.status, json.loads(response.read())
                except HTTPError as e:
                    return e.code, json.loads(e.read())

            before = healthz()
            self.assertNotIn("error", api(port, "$JS.API.STREAM.CREATE.ORDERS", {"name": "ORDERS", "subjects": ["orders.>"]}))
            refused = None
            for i in range(1000):
                try:
                    answer = api(port, "orders.new", b"%04d" % i + b"x" * (64 * 1024))
                except OSError:
                    # (the publish whose write failed is not acknowledged, and
                    # not answered either: the stream gives when_durable no errback)
                    continue
                if "error" in answer:
                    refused = answer
                    break
            full = healthz()
            metrics = urlopen("http://127.0.0.1:%d/metrics" % monitor, timeout=10).read().decode()
            # A purge makes room; within the store's retry (a second) it writes again.
            purged = api(port, "$JS.API.STREAM.PURGE.ORDERS")
            deadline = time.monotonic() + 20
            while healthz()[0] != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            return before, refused, full, metrics, purged, healthz(), api(port, "orders.new", b"after")

        before, refused, full, metrics, purged, after, accepted = yield threads.deferToThread(fill)
        self.assertEqual(before, (200, {"status": "ok"}))
        self.assertEqual(refused and refused["error"], {"code": 503, "err_code": 10023, "description": "insufficient resources"})
        self.assertEqual(full[0], 503)
        self.assertEqual(full[1]["status"], "unavailable")
        self.assertTrue(full[1]["error"].startswith("JetStream stream ORDERS store full: no space left on device in " + store), full)
        self.assertIn('\neventsvc_jetstream_stream_writable{storage="file",stream="ORDERS"} 0.0\n', metrics)
        self.assertTrue(purged["success"], purged)
        self.assertEqual(after, (200, {"status": "ok"}))
        self.assertNotIn("error", accepted)
