"""
JetStream's monitoring, rendered in memory: /jsz and its query flags,
/varz's C{jetstream}, the Prometheus series per stream and per consumer,
and /healthz when a store cannot write, over a small engine of streams in
memory stores (the attributes JS.md gives the engine); their shapes are
compared with what nats-server 2.9.10 answered.
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from eventsvc import config
from eventsvc.app import make_service
from eventsvc.jetstream.memstore import MemoryStore
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
    """A stream as JS.md gives it: name, config, created, store, consumers."""

    def __init__(self, name: str, config: Dict[str, Any], created: int) -> None:
        self.name = name
        self.config = config
        self.created = created
        self.store = MemoryStore()
        self.consumers: Dict[str, FakeConsumer] = {}


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

    def test_full_and_read_only_stores(self) -> None:
        self.assertEqual(get(self.svc, "/healthz"), (200, {"status": "ok"}))
        orders = self.engine.streams["ORDERS"].store
        orders.disk_state, orders.disk_error = "full", "no space left on device in /var/lib/eventsvc/jetstream"  # type: ignore[attr-defined]
        self.assertEqual(get(self.svc, "/healthz"), (503, {
            "status": "unavailable",
            "error": "JetStream stream ORDERS store full: no space left on device in /var/lib/eventsvc/jetstream",
        }))
        self.assertIn('\neventsvc_jetstream_stream_writable{storage="file",stream="ORDERS"} 0.0\n', get(self.svc, "/metrics")[1])
        answers: List[bytes] = []
        self.svc.broker.subscribe("answer", lambda subject, reply, payload, headers: answers.append(payload))
        self.svc.broker.publish(self.svc.health_subject(), b"", reply="answer")
        self.assertEqual(json.loads(answers[0])["error"], "JetStream stream ORDERS store full: no space left on device in /var/lib/eventsvc/jetstream")
        orders.disk_state = "ok"  # type: ignore[attr-defined]
        self.assertEqual(get(self.svc, "/healthz"), (200, {"status": "ok"}))
        mem = self.engine.streams["MEM"].store
        mem.disk_state, mem.disk_error = "read-only", None  # type: ignore[attr-defined]
        self.assertEqual(get(self.svc, "/healthz")[1]["error"], "JetStream stream MEM store read-only")
