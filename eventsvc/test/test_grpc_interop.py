"""
Interoperability with a real gRPC implementation (grpcio, CPython only):
grpcio servers implement Automate's three HandleEvent services from its
protos and receive what eventsvc routes to them; a grpcio client publishes
through the [grpc] API.  eventsvc runs in this process on the real
reactor, over real mutual TLS on 127.0.0.1; grpcio runs in its own
threads, and the test waits for what it records.

Skipped on PyPy, where grpcio cannot be installed; on CPython a missing
grpcio skips them too, unless EVENTSVC_REQUIRE_INTEROP is set (as CI sets
it), where it is a failure.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from typing import Any, Callable, Dict, List, Optional

from twisted.internet import defer, reactor, task, threads
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web import resource, server

from eventsvc import config
from eventsvc.app import make_service
from eventsvc.events.types import EVENT_TYPES
from eventsvc.grpc.convert import to_message
from eventsvc.grpc.generated import event_pb2
from eventsvc.test import process
from eventsvc.test.eventsamples import event, payload
from eventsvc.test.tlshelpers import PKI

try:
    import grpc
    from google.protobuf import json_format

    from eventsvc.grpc.generated import compliance_ingest_pb2_grpc, event_feed_pb2_grpc, event_pb2_grpc, ingest_pb2_grpc
except ImportError as e:  # pragma: no cover - PyPy, or no test extras
    grpc = None
    _missing = str(e)


def _need_grpcio() -> None:
    """Skip on PyPy (grpcio has no wheel there); on CPython, grpcio is a test dependency, required under CI."""
    if grpc is not None:
        return
    if platform.python_implementation() != "CPython":
        raise SkipTest("grpcio has no {} wheel: these tests run on CPython".format(platform.python_implementation()))
    message = "grpcio is not installed (pip install '.[test]'): {}".format(_missing)
    if os.environ.get("EVENTSVC_REQUIRE_INTEROP"):
        raise AssertionError(message)
    raise SkipTest(message)


class Recorder:
    """What a grpcio servicer received, thread-safe; how it answers is up to C{answer}."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: List[event_pb2.EventMsg] = []
        self.peers: List[Any] = []
        self.answer: Optional[Callable[[Any, Any], Any]] = None

    def handle(self, request: Any, context: Any) -> Any:
        if self.answer is not None:
            result = self.answer(request, context)
            if result is not None:
                return result
        with self.lock:
            self.events.append(request)
            self.peers.append(context.auth_context().get("x509_common_name"))
        return event_pb2.EventResponse(success=True)

    def received(self) -> List[event_pb2.EventMsg]:
        with self.lock:
            return list(self.events)


def _servicers(recorders: Dict[str, Recorder]) -> List[Any]:
    if grpc is None:
        return []

    class EventFeed(event_feed_pb2_grpc.EventFeedServiceServicer):
        def HandleEvent(self, request, context):
            return recorders["event_feed"].handle(request, context)

    class Ingest(ingest_pb2_grpc.EventHandlerServiceServicer):
        def HandleEvent(self, request, context):
            return recorders["cfgingest"].handle(request, context)

    class Compliance(compliance_ingest_pb2_grpc.ComplianceIngesterServiceServicer):
        """Automate's compliance-service: UNIMPLEMENTED, as the generated base class answers, unless told otherwise."""

        def HandleEvent(self, request, context):
            if recorders["feed"].answer is None:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "Unimplemented")
            return recorders["feed"].handle(request, context)

    return [
        (event_feed_pb2_grpc.add_EventFeedServiceServicer_to_server, EventFeed()),
        (ingest_pb2_grpc.add_EventHandlerServiceServicer_to_server, Ingest()),
        (compliance_ingest_pb2_grpc.add_ComplianceIngesterServiceServicer_to_server, Compliance()),
    ]


class HTTPTarget(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.events: List[bytes] = []

    def render_POST(self, request):
        self.events.append(request.content.read())
        return b"{}"


class Fixture(TestCase):
    """Certificates, grpcio servers playing Automate's services, eventsvc in this process, and waiting."""

    timeout = 60

    def setUp(self) -> None:
        _need_grpcio()
        self.folder = os.path.abspath(self.mktemp())
        self.pki = PKI(os.path.join(self.folder, "certs"))
        self.pki.issue("eventsvc", names=["localhost", "127.0.0.1"])
        # The Automate services' certificates carry their service names, as Automate's do.
        self.pki.issue("automate", names=["localhost", "127.0.0.1", "event-feed-service", "ingest-service", "compliance-service"])
        self.pki.issue("producer")
        self.recorders = {name: Recorder() for name in ("event_feed", "cfgingest", "feed")}
        self.grpc_servers: List[Any] = []
        self.logged: List[str] = []

        def observe(e: Dict[str, Any]) -> None:
            if e.get("log_format"):
                try:
                    self.logged.append(e["log_format"].format(**e))
                except Exception:
                    self.logged.append(e["log_format"])

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    def read(self, name: str) -> bytes:
        with open(self.pki.path(name), "rb") as f:
            return f.read()

    def start_grpc_server(self, port: int = 0, cert: str = "automate") -> int:
        from concurrent import futures

        grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        for add, servicer in _servicers(self.recorders):
            add(servicer, grpc_server)
        credentials = grpc.ssl_server_credentials(
            [(self.read(cert + ".key"), self.read(cert + ".crt"))], root_certificates=self.read("ca.crt"),
            require_client_auth=True,
        )
        bound = grpc_server.add_secure_port("127.0.0.1:{}".format(port), credentials)
        grpc_server.start()
        self.grpc_servers.append(grpc_server)
        self.addCleanup(grpc_server.stop, None)
        return bound

    def start_eventsvc(self, handlers: str, extra: str = "") -> Any:
        text = (
            '[service]\nport = 0\ndata_dir = "{data}"\n'
            '[tls]\ncert_path = "{certs}/eventsvc.crt"\nkey_path = "{certs}/eventsvc.key"\nroot_ca_path = "{certs}/ca.crt"\n'
            '[grpc]\nport = 0\n'
            '[events]\nretry_initial = 0.1\nretry_max = 0.3\ndelivery_timeout = 2\n'
            '{extra}\n[handlers]\n{handlers}\n'
        ).format(data=os.path.join(self.folder, "data"), certs=self.pki.directory, handlers=handlers, extra=extra)
        svc = make_service(config.parse(text, os.path.join(self.folder, "patch.toml")), reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.svc = svc
        return svc

    def grpc_port(self) -> int:
        return self.svc.getServiceNamed("grpc").listening.getHost().port

    @defer.inlineCallbacks
    def wait_for(self, condition: Callable[[], bool], seconds: float = 15) -> Any:
        deadline = time.monotonic() + seconds
        while not condition():
            if time.monotonic() > deadline:
                self.fail("timed out waiting; logged:\n" + "\n".join(self.logged[-20:]))
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def publish_nats(self, body: bytes, type_name: str) -> Any:
        """Publish on the broker as a NATS producer does, and wait for the acknowledgement."""
        answers: List[bytes] = []
        inbox = "_INBOX.test.{}".format(len(self.logged) + id(body))
        sub = self.svc.broker.subscribe(inbox, lambda s, r, p, h: answers.append(p))
        self.svc.broker.publish("event." + type_name, body, reply=inbox)
        yield self.wait_for(lambda: bool(answers))
        sub.unsubscribe()
        return answers[0]

    def nats_subscriber(self, subscribed: threading.Event) -> Any:
        """In a thread: a nats-py client over mutual TLS on the service listener, subscribed to event.>; the first message."""
        import asyncio
        import ssl

        import nats

        context = ssl.create_default_context(cafile=self.pki.path("ca.crt"))
        context.load_cert_chain(self.pki.path("producer.crt"), self.pki.path("producer.key"))
        port = self.svc.getServiceNamed("service").listening.getHost().port

        async def scenario() -> Any:
            nc = await nats.connect("tls://localhost:{}".format(port), tls=context, allow_reconnect=False)
            try:
                sub = await nc.subscribe("event.>")
                await nc.flush()
                subscribed.set()
                msg = await sub.next_msg(timeout=20)
                return msg.subject, msg.data
            finally:
                await nc.close()

        return asyncio.run(scenario())

    def publisher(self, cert: str = "producer") -> Any:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=self.read("ca.crt"), private_key=self.read(cert + ".key"), certificate_chain=self.read(cert + ".crt"),
        )
        channel = grpc.secure_channel("localhost:{}".format(self.grpc_port()), credentials)
        self.addCleanup(channel.close)
        return event_pb2_grpc.EventServiceStub(channel)


class GRPCInteropTests(Fixture):
    # -- HandleEvent targets ------------------------------------------------

    @defer.inlineCallbacks
    def test_every_typed_event_reaches_its_automate_service_with_every_field(self):
        port = self.start_grpc_server()
        self.recorders["feed"].answer = lambda request, context: None  # take events, this once
        self.start_eventsvc(
            'event_feed = "grpc://localhost:{p}"\ncfgingest = "grpc://localhost:{p}"\nfeed = "grpc://127.0.0.1:{p}"\n'.format(p=port),
            '[events.event_feed]\ntls_name = "event-feed-service"\n',
        )
        sent = {}
        for type_name in EVENT_TYPES:
            body = event(type_name, event_id="evt-" + type_name, data={"n": 42, "s": "x", "l": [1.5, None, True], "o": {"k": "v"}})
            sent[type_name] = body
            answer = yield self.publish_nats(json.dumps(body).encode(), type_name)
            self.assertIn(b'"success": true', answer)
        routed = {"event_feed": 7, "cfgingest": 2, "feed": 1}
        yield self.wait_for(lambda: all(len(self.recorders[n].received()) == c for n, c in routed.items()))
        for name, recorder in self.recorders.items():
            for msg in recorder.received():
                as_json = json_format.MessageToDict(msg, preserving_proto_field_name=True)
                expected = dict(sent[msg.type.name])
                expected["data"] = {"n": 42.0, "s": "x", "l": [1.5, None, True], "o": {"k": "v"}}
                self.assertEqual(as_json, expected)
            # Mutual TLS: the target saw eventsvc's certificate.
            self.assertTrue(all(p == [b"eventsvc"] for p in recorder.peers), recorder.peers)
        self.assertEqual(sorted(m.type.name for m in self.recorders["cfgingest"].received()), ["cfgingest", "nodeTerminated"])
        # One connection per target, reused.
        target = self.svc.getServiceNamed("event_feed").target
        self.assertEqual(target.channel.dialled, 1)

    @defer.inlineCallbacks
    def test_a_target_down_then_up_loses_nothing_acknowledged(self):
        # Refused until served: its port held, so no test beside takes it.
        down = process.closed_port(self)
        port = down.port
        self.start_eventsvc('event_feed = "grpc://localhost:{}"\n'.format(port))
        for i in range(20):
            answer = yield self.publish_nats(payload("scanJobCreated", event_id="down-{}".format(i)), "scanJobCreated")
            self.assertIn(b'"success": true', answer)
        handler = self.svc.getServiceNamed("event_feed")
        yield self.wait_for(lambda: handler.down_since is not None and handler.retried >= 20)
        self.assertTrue(any("handler event_feed: grpc://localhost:{} is failing (gRPC cannot connect".format(port) in line
                            for line in self.logged), self.logged)
        down.release()
        self.start_grpc_server(port)
        yield self.wait_for(lambda: len(self.recorders["event_feed"].received()) >= 20)
        yield self.wait_for(lambda: handler.backlog_size == 0)
        self.assertEqual(sorted(m.event_id for m in self.recorders["event_feed"].received()),
                         sorted("down-{}".format(i) for i in range(20)))
        self.assertIsNone(handler.down_since)
        self.assertEqual(handler.dead_lettered, 0)

    @defer.inlineCallbacks
    def test_a_slow_target_is_retried_after_the_deadline(self):
        port = self.start_grpc_server()
        calls = []

        def slow_once(request, context):
            calls.append(request.event_id)
            if len(calls) == 1:
                time.sleep(2.5)  # past delivery_timeout (2 s): eventsvc gives this call up
            return None

        self.recorders["event_feed"].answer = slow_once
        self.start_eventsvc('event_feed = "grpc://localhost:{}"\n'.format(port))
        yield self.publish_nats(payload("profileCreated", event_id="slow-1"), "profileCreated")
        handler = self.svc.getServiceNamed("event_feed")
        yield self.wait_for(lambda: handler.delivered == 1)
        self.assertEqual(calls, ["slow-1", "slow-1"])
        self.assertEqual(handler.retried, 1)
        self.assertTrue(any("is failing (gRPC DEADLINE_EXCEEDED: no answer from localhost:{} in 2s)".format(port) in line
                            for line in self.logged), self.logged)

    @defer.inlineCallbacks
    def test_unimplemented_is_dead_lettered_with_one_warning(self):
        port = self.start_grpc_server()
        self.start_eventsvc('feed = "grpc://localhost:{}"\n'.format(port))
        for i in range(3):
            yield self.publish_nats(payload("compliance_ingest", event_id="c-{}".format(i)), "compliance_ingest")
        handler = self.svc.getServiceNamed("feed")
        yield self.wait_for(lambda: handler.dead_lettered == 3)
        warnings = [line for line in self.logged if "answers UNIMPLEMENTED" in line]
        self.assertEqual(len(warnings), 1, warnings)
        self.assertIn(
            "handler feed: grpc://localhost:{} answers UNIMPLEMENTED to "
            "/chef.automate.domain.compliance.ingest.ingest.ComplianceIngesterService/HandleEvent".format(port), warnings[0])
        with open(os.path.join(self.folder, "data", "dead-letters.jsonl")) as f:
            lines = f.read().splitlines()
        self.assertEqual(len(lines), 3)
        self.assertIn('"reason": "gRPC UNIMPLEMENTED: Unimplemented"', lines[0])

    @defer.inlineCallbacks
    def test_a_target_with_the_wrong_name_is_refused_and_logged(self):
        port = self.start_grpc_server()
        self.start_eventsvc('event_feed = "grpc://localhost:{}"\n'.format(port), '[events.event_feed]\ntls_name = "someone-else"\n')
        yield self.publish_nats(payload("scanJobDeleted", event_id="named"), "scanJobDeleted")
        handler = self.svc.getServiceNamed("event_feed")
        yield self.wait_for(lambda: handler.down_since is not None)
        self.assertEqual(self.recorders["event_feed"].received(), [])
        self.assertTrue(any("is failing (gRPC TLS handshake with localhost:{} failed".format(port) in line for line in self.logged),
                        self.logged[-10:])

    @defer.inlineCallbacks
    def test_automates_patch_as_docs_mend_it_reaches_automates_services(self):
        """docs/events.md's patch and its mended [handlers], against services whose certificates carry only their names."""
        from eventsvc.test.test_automate import automate_patches

        patch, mended = automate_patches()
        ports = {}
        for key, service, port in (("feed", "compliance-service", "10121"), ("cfgingest", "ingest-service", "10122"),
                                   ("event_feed", "event-feed-service", "10134")):
            self.pki.issue(service, names=[service])
            ports[port] = str(self.start_grpc_server(cert=service))
        certs = os.path.join(self.folder, "certs")
        for ours, theirs in (("eventsvc.crt", "event-service.crt"), ("eventsvc.key", "event-service.key"),
                             ("ca.crt", "Chef_Automate_FAKE_Dev.crt")):
            self.pki.write(theirs, self.read(ours))
        for automate, ours in ports.items():
            mended = mended.replace(":" + automate + '"', ":" + ours + '"')
        text = patch.split("[handlers]")[0].replace("port = 10132", "port = 0") + mended.replace("port = 10133", "port = 0")
        self.svc = make_service(config.parse(text, os.path.join(self.folder, "patch.toml")), reactor)
        self.svc.startService()
        self.addCleanup(self.svc.stopService)
        stub = self.publisher()
        for type_name in ("event_feed", "cfgingest", "nodeTerminated", "compliance_ingest"):
            msg = to_message(event(type_name, event_id="automate-" + type_name))
            response = yield threads.deferToThread(stub.Publish, event_pb2.PublishRequest(msg=msg), timeout=10)
            self.assertTrue(response.success)
        yield self.wait_for(lambda: len(self.recorders["event_feed"].received()) == 1 and len(self.recorders["cfgingest"].received()) == 2)
        self.assertEqual([m.event_id for m in self.recorders["event_feed"].received()], ["automate-event_feed"])
        feed = self.svc.getServiceNamed("feed")
        yield self.wait_for(lambda: feed.dead_lettered == 1)
        self.assertEqual(len([line for line in self.logged if "answers UNIMPLEMENTED" in line]), 1)

    # -- the Publish API -----------------------------------------------------

    @defer.inlineCallbacks
    def test_publish_is_acknowledged_and_reaches_an_http_target_and_a_nats_subscriber(self):
        site_resource = HTTPTarget()
        listening = reactor.listenTCP(0, server.Site(site_resource), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        self.start_eventsvc('event_feed = "http://127.0.0.1:{}/events"\n'.format(listening.getHost().port))
        self.addCleanup(self.svc.getServiceNamed("event_feed").target._agent._pool.closeCachedConnections)
        subscribed = threading.Event()
        seen = threads.deferToThread(self.nats_subscriber, subscribed)
        yield self.wait_for(subscribed.is_set)
        stub = self.publisher()
        msg = to_message(event("profileUpdate", event_id="from-grpc", data={"n": 1}))
        response = yield threads.deferToThread(stub.Publish, event_pb2.PublishRequest(msg=msg), timeout=10)
        self.assertTrue(response.success)
        yield self.wait_for(lambda: bool(site_resource.events))
        self.assertEqual(json.loads(site_resource.events[0]), event("profileUpdate", event_id="from-grpc", data={"n": 1}))
        subject, body = yield seen
        self.assertEqual((subject, json.loads(body)["event_id"]), ("event.profileUpdate", "from-grpc"))
        # The other calls answer as Automate's do.
        for call, request in ((stub.Subscribe, event_pb2.SubscribeRequest()), (stub.Start, event_pb2.StartRequest()),
                              (stub.Stop, event_pb2.StopRequest())):
            answer = yield threads.deferToThread(call, request, timeout=10)
            self.assertEqual(answer.SerializeToString(), b"")

    @defer.inlineCallbacks
    def test_publish_refusals_are_statuses_with_the_reason(self):
        self.start_eventsvc('event_feed = "python:eventsvc.events.handlers:log_event"\n')
        stub = self.publisher()
        msg = to_message(event("profileUpdate"))
        msg.producer.id = ""
        error = yield threads.deferToThread(_call_error, stub.Publish, event_pb2.PublishRequest(msg=msg))
        self.assertEqual((error.code(), error.details()), (grpc.StatusCode.INVALID_ARGUMENT, "producer.id: must be a non-empty string"))
        error = yield threads.deferToThread(_call_error, stub.Publish, event_pb2.PublishRequest(msg=to_message(event("cfgingest"))))
        self.assertEqual(error.code(), grpc.StatusCode.FAILED_PRECONDITION)
        self.assertIn("no handler configured for cfgingest", error.details())

    @defer.inlineCallbacks
    def test_a_publisher_with_a_certificate_from_another_ca_is_refused_and_logged(self):
        from eventsvc.security import certs

        other = certs.make_ca("another CA")
        stranger = certs.make_cert(other, "stranger", ["stranger"])
        self.pki.write("stranger.crt", stranger.cert_pem)
        self.pki.write("stranger.key", stranger.key_pem)
        self.start_eventsvc('event_feed = "python:eventsvc.events.handlers:log_event"\n')
        stub = self.publisher("stranger")
        error = yield threads.deferToThread(_call_error, stub.Publish, event_pb2.PublishRequest(msg=to_message(event("profileUpdate"))))
        self.assertEqual(error.code(), grpc.StatusCode.UNAVAILABLE)
        yield self.wait_for(lambda: any("gRPC client 127.0.0.1:" in line and "refused: TLS handshake failed" in line for line in self.logged))
        self.assertEqual(self.svc.events.accepted, 0)


def _call_error(call: Callable[..., Any], request: Any) -> Any:
    try:
        call(request, timeout=10)
    except grpc.RpcError as e:
        return e
    raise AssertionError("the call succeeded")


class RealProcessTests(Fixture):
    """
    eventsvc as a user runs it (twistd, a patch file), between a grpcio
    publisher and grpcio Automate services in this process.  L{python} is
    the interpreter whose twistd runs eventsvc: this one, or PyPy's.
    """

    timeout = 120
    python: Optional[str] = None

    @defer.inlineCallbacks
    def test_published_events_reach_automates_services(self):
        helper = self
        target = helper.start_grpc_server()
        folder = helper.folder
        path = process.write_config(os.path.join(folder, "patch.toml"), (
            '[service]\nport = 0\n'
            '[tls]\ncert_path = "certs/eventsvc.crt"\nkey_path = "certs/eventsvc.key"\nroot_ca_path = "certs/ca.crt"\n'
            '[grpc]\nport = 0\n'
            '[handlers]\nevent_feed = "grpc://localhost:{target}"\ncfgingest = "grpc://localhost:{target}"\n'
        ).format(target=target))
        # The checkout's code, on PyPy too (not the CPython venv's site-packages).
        env = {"PYTHONPATH": process.source_tree()} if self.python else None
        server = process.eventsvc(path, expect=("service", "grpc"), python=self.python, env=env)
        yield process.started(self, server)
        api = server.ports["grpc"]
        credentials = grpc.ssl_channel_credentials(helper.read("ca.crt"), helper.read("producer.key"), helper.read("producer.crt"))

        def publish_all() -> List[bool]:
            with grpc.secure_channel("localhost:{}".format(api), credentials) as channel:
                stub = event_pb2_grpc.EventServiceStub(channel)
                futures = [stub.Publish.future(event_pb2.PublishRequest(msg=to_message(event(
                    "scanJobUpdated" if i % 2 else "nodeTerminated", event_id="p-{}".format(i)))), timeout=30) for i in range(200)]
                return [f.result().success for f in futures]

        answers = yield threads.deferToThread(publish_all)
        self.assertEqual(answers, [True] * 200)
        yield helper.wait_for(lambda: len(helper.recorders["event_feed"].received()) == 100
                              and len(helper.recorders["cfgingest"].received()) == 100, 60)
        received = helper.recorders["event_feed"].received() + helper.recorders["cfgingest"].received()
        self.assertEqual(sorted(m.event_id for m in received), sorted("p-{}".format(i) for i in range(200)))
        self.assertEqual(server.stop(), 0)


class PyPyProcessTests(RealProcessTests):
    """The same with eventsvc on PyPy (the checkout's .venv-pypy, from make install-pypy-test): h2 and protobuf there."""

    def setUp(self) -> None:
        pypy = os.path.join(process.source_tree(), ".venv-pypy", "bin", "pypy3")
        if not os.access(pypy, os.X_OK):
            raise SkipTest("no PyPy virtual environment in the checkout (make install-pypy-test)")
        self.python = pypy
        super().setUp()
