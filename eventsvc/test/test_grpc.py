"""
Chef Automate's gRPC wire, in memory: framing and statuses, EventMsg made
from events and back, a client and a server connection over iosim, the
HandleEvent target's answers to each status, and Publish through a real
broker and dispatcher.
"""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.test.iosim import FakeTransport, connect
from twisted.trial.unittest import SynchronousTestCase

from eventsvc import config
from eventsvc.config import ConfigError
from eventsvc.events.dispatch import EventDispatcher
from eventsvc.events.handlers import DeliveryFailed
from eventsvc.events.types import Registry
from eventsvc.grpc import wire
from eventsvc.grpc.channel import Channel, ClientConnection, TransportError
from eventsvc.grpc.convert import to_event, to_message
from eventsvc.grpc.generated import event_pb2
from eventsvc.grpc.publish import SERVICE, EventAPI, ServerConnection
from eventsvc.grpc.target import GRPCTarget
from eventsvc.grpc.wire import GRPCError
from eventsvc.nats.server import Broker
from eventsvc.test.eventsamples import event, payload


class FramingTests(SynchronousTestCase):
    def test_messages_split_anywhere_come_out_whole(self) -> None:
        data = wire.frame(b"one") + wire.frame(b"") + wire.frame(b"three" * 100)
        reader = wire.MessageReader()
        out = []
        for i in range(0, len(data), 7):
            out.extend(reader.feed(data[i:i + 7]))
        self.assertEqual(out, [b"one", b"", b"three" * 100])
        self.assertFalse(reader.partial)

    def test_an_oversized_message_is_refused_from_its_prefix(self) -> None:
        reader = wire.MessageReader(limit=10)
        with self.assertRaises(GRPCError) as caught:
            reader.feed(wire.frame(b"x" * 11)[:5])
        self.assertEqual(caught.exception.code, wire.RESOURCE_EXHAUSTED)
        self.assertIn("11 bytes", str(caught.exception))

    def test_a_compressed_message_is_refused(self) -> None:
        with self.assertRaises(GRPCError) as caught:
            wire.MessageReader().feed(b"\x01\x00\x00\x00\x01x")
        self.assertEqual(caught.exception.code, wire.INTERNAL)

    def test_timeouts(self) -> None:
        self.assertEqual(wire.encode_timeout(30), "30000000u")
        self.assertEqual(wire.encode_timeout(0.25), "250000u")
        self.assertEqual(wire.encode_timeout(10 ** 6), "1000000S")
        self.assertEqual(wire.decode_timeout("30S"), 30.0)
        self.assertEqual(wire.decode_timeout("250m"), 0.25)
        self.assertIsNone(wire.decode_timeout("123456789S"))
        self.assertIsNone(wire.decode_timeout("S"))

    def test_status_from_trailers_headers_or_http(self) -> None:
        self.assertEqual(wire.status_of([(":status", "200")], [("grpc-status", "3"), ("grpc-message", "bad%20id%25")]),
                         (wire.INVALID_ARGUMENT, "bad id%"))
        # Trailers-only: the status in the headers.
        self.assertEqual(wire.status_of([(":status", "200"), ("grpc-status", "12")], []), (wire.UNIMPLEMENTED, ""))
        code, message = wire.status_of([(":status", "503")], [])
        self.assertEqual(code, wire.UNAVAILABLE)
        self.assertIn("HTTP 503 and no grpc-status", message)
        self.assertEqual(wire.status_of([(":status", "200")], [])[0], wire.UNKNOWN)

    def test_grpc_message_is_percent_encoded(self) -> None:
        [(_, status), (_, message)] = wire.trailers(wire.INVALID_ARGUMENT, "type.name: unknown 'ü'\n")
        self.assertEqual(status, "3")
        self.assertEqual(message, "type.name: unknown 'ü'\n".replace("ü", "%C3%BC").replace("\n", "%0A"))


class ConversionTests(SynchronousTestCase):
    def test_every_field_goes_there_and_back(self) -> None:
        sample = event("scanJobCreated", data={"n": 42, "f": 1.5, "s": "x", "l": [1, None, True], "o": {"a": "b"}})
        msg = to_message(sample)
        self.assertEqual(msg.event_id, "evt-scanJobCreated")
        self.assertEqual(msg.type.name, "scanJobCreated")
        self.assertEqual((msg.producer.id, msg.producer.producer_name, msg.producer.producer_type, list(msg.producer.tags)),
                         ("urn:chef:svc:test", "tests", "service", ["t"]))
        self.assertEqual(msg.published.ToJsonString(), "2026-11-28T01:02:03Z")
        self.assertEqual((msg.actor.id, msg.actor.object_type, msg.actor.display_name), ("user:1", "user", "Ada"))
        self.assertEqual((msg.object.id, msg.target.id, msg.verb), ("obj:1", "t:1", "create"))
        self.assertEqual(list(msg.projects), ["p1"])
        self.assertEqual(msg.data["n"], 42.0)
        back = to_event(event_pb2.EventMsg.FromString(msg.SerializeToString()))
        self.assertEqual(back, sample)

    def test_absent_parts_stay_absent(self) -> None:
        sample = event("event_feed")
        for key in ("actor", "object", "target", "data", "verb"):
            del sample[key]
        back = to_event(to_message(sample))
        self.assertEqual(back, sample)

    def test_a_timestamp_in_another_zone_or_none_is_the_same_instant(self) -> None:
        self.assertEqual(to_message(event("cfgingest", published="2026-11-28T03:02:03+02:00")).published.ToJsonString(),
                         "2026-11-28T01:02:03Z")
        self.assertEqual(to_message(event("cfgingest", published="2026-11-28T01:02:03")).published.ToJsonString(),
                         "2026-11-28T01:02:03Z")


def _echo(request: bytes) -> bytes:
    return b"echo:" + request


class ConnectionTests(SynchronousTestCase):
    """A client and a server connection talking HTTP/2 in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.slow: list = []
        self.server = ServerConnection({
            "/t.S/Echo": _echo,
            "/t.S/Slow": lambda request: self.slow.append(Deferred()) or self.slow[-1],
            "/t.S/Refuse": self._refuse,
        })
        self.client = ClientConnection("target:1", self.clock)
        self.pump = connect(self.server, FakeTransport(self.server, True), self.client, FakeTransport(self.client, False))

    @staticmethod
    def _refuse(request: bytes) -> bytes:
        raise GRPCError(wire.INVALID_ARGUMENT, "producer.id: required")

    def test_concurrent_calls_on_one_connection(self) -> None:
        calls = [self.client.call("/t.S/Echo", str(i).encode(), 5) for i in range(20)]
        self.pump.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], [b"echo:" + str(i).encode() for i in range(20)])
        self.assertEqual(self.client.busy, 0)

    def test_a_request_larger_than_the_window_goes_through(self) -> None:
        big = b"x" * 300000
        d = self.client.call("/t.S/Echo", big, 5)
        self.pump.flush()
        self.assertEqual(self.successResultOf(d), b"echo:" + big)

    def test_status_and_message_reach_the_caller(self) -> None:
        d = self.client.call("/t.S/Refuse", b"", 5)
        self.pump.flush()
        error = self.failureResultOf(d, GRPCError).value
        self.assertEqual((error.code, error.message), (wire.INVALID_ARGUMENT, "producer.id: required"))

    def test_an_unknown_method_is_unimplemented(self) -> None:
        d = self.client.call("/t.S/Nope", b"", 5)
        self.pump.flush()
        self.assertEqual(self.failureResultOf(d, GRPCError).value.code, wire.UNIMPLEMENTED)

    def test_a_call_with_no_answer_times_out_and_its_stream_is_reset(self) -> None:
        d = self.client.call("/t.S/Slow", b"", 2)
        self.pump.flush()
        self.assertNoResult(d)
        self.clock.advance(2)
        self.pump.flush()
        error = self.failureResultOf(d, GRPCError).value
        self.assertEqual(error.code, wire.DEADLINE_EXCEEDED)
        self.assertIn("no answer from target:1 in 2s", error.message)
        # The server saw the reset and gave the call up.
        self.assertEqual(self.server._streams, {})
        self.assertTrue(self.slow[0].called)
        # The connection goes on.
        d2 = self.client.call("/t.S/Echo", b"2", 2)
        self.pump.flush()
        self.assertEqual(self.successResultOf(d2), b"echo:2")

    def test_calls_in_flight_fail_as_transport_errors_when_the_connection_is_lost(self) -> None:
        d = self.client.call("/t.S/Slow", b"", 5)
        self.pump.flush()
        self.client.transport.loseConnection()
        self.pump.flush()
        self.assertIsInstance(self.failureResultOf(d, TransportError).value, TransportError)
        self.assertEqual(self.client.state, "closed")
        self.assertTrue(self.client.transport.disconnecting)
        self.failureResultOf(self.client.call("/t.S/Echo", b"", 5), TransportError)

    def test_goaway_fails_every_call_as_a_transport_error_and_closes(self) -> None:
        """
        h2 takes no frame after a GOAWAY, so the calls the server said it
        took fail too (retried: at least once), and the connection closes.
        """
        calls = [self.client.call("/t.S/Slow", b"", 5) for _ in range(2)]
        self.pump.flush()
        # As a grpc-go server going away gracefully says it (h2's own
        # GOAWAY closes the server's side at once, so the frame is made here).
        from hyperframe.frame import GoAwayFrame

        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 1
        self.client.dataReceived(goaway.serialize())
        self.pump.flush()
        for d in calls:
            self.assertIn("target:1 closed the connection (GOAWAY, NO_ERROR)", self.failureResultOf(d, TransportError).value.message)
        self.assertEqual(self.client.state, "closed")
        self.failureResultOf(self.client.call("/t.S/Echo", b"", 5), TransportError)

    def test_a_refused_stream_is_a_transport_error_and_other_resets_are_statuses(self) -> None:
        from h2.errors import ErrorCodes

        refused = self.client.call("/t.S/Slow", b"", 5)
        calm = self.client.call("/t.S/Slow", b"", 5)
        self.pump.flush()
        self.server._h2.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        self.server._h2.reset_stream(3, ErrorCodes.ENHANCE_YOUR_CALM)
        self.server._flush()
        self.pump.flush()
        self.assertIn("reset the stream (REFUSED_STREAM)", self.failureResultOf(refused, TransportError).value.message)
        self.assertEqual(self.failureResultOf(calm, GRPCError).value.code, wire.RESOURCE_EXHAUSTED)

    def test_calls_beyond_the_servers_stream_limit_wait_their_turn(self) -> None:
        from h2.settings import SettingCodes

        self.server._h2.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 2})
        self.server._flush()
        self.pump.flush()
        calls = [self.client.call("/t.S/Slow", b"", 5) for _ in range(3)]
        self.pump.flush()
        self.assertEqual(len(self.slow), 2)
        self.slow[0].callback(b"a")
        self.pump.flush()
        self.assertEqual(self.successResultOf(calls[0]), b"a")
        self.assertEqual(len(self.slow), 3)


class MemoryEndpoint:
    """Connects a channel's connection to a new server connection in memory (iosim); or fails."""

    def __init__(self, methods: dict, fail: bool = False) -> None:
        self.methods = methods
        self.fail = fail
        self.pumps: list = []

    def connect(self, factory):
        from twisted.internet.defer import fail, succeed
        from twisted.internet.error import ConnectionRefusedError

        if self.fail:
            return fail(ConnectionRefusedError("refused"))
        client = factory.buildProtocol(None)
        server = ServerConnection(self.methods)
        self.pumps.append(connect(server, FakeTransport(server, True), client, FakeTransport(client, False)))
        return succeed(client)

    def flush(self) -> None:
        for pump in self.pumps:
            pump.flush()


class ChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoint = MemoryEndpoint({"/t.S/Echo": _echo})
        self.channel = Channel(self.endpoint, "target:1", self.clock)

    def test_one_connection_for_many_calls_closed_when_idle_and_dialled_again(self) -> None:
        calls = [self.channel.call("/t.S/Echo", b"%d" % i, 5) for i in range(5)]
        self.endpoint.flush()
        self.assertEqual([self.successResultOf(d) for d in calls], [b"echo:%d" % i for i in range(5)])
        self.assertEqual(self.channel.dialled, 1)
        connection = self.channel.connection
        self.clock.advance(Channel.IDLE - 1)
        # A call keeps it open for another IDLE seconds.
        d = self.channel.call("/t.S/Echo", b"x", 5)
        self.endpoint.flush()
        self.successResultOf(d)
        self.clock.advance(Channel.IDLE - 1)
        self.assertFalse(connection.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(connection.transport.disconnecting)
        self.endpoint.flush()
        self.assertIsNone(self.channel.connection)
        d = self.channel.call("/t.S/Echo", b"again", 5)
        self.endpoint.flush()
        self.assertEqual(self.successResultOf(d), b"echo:again")
        self.assertEqual(self.channel.dialled, 2)

    def test_close_fires_once_the_connection_is_gone_and_leaves_no_timer(self) -> None:
        """
        A stop waits on close(): it fires once the connection is lost, and
        the idle check goes with it (a stop had left both behind, and a
        test's reactor unclean).  With no connection it fires at once.
        """
        self.successResultOf(self.channel.close())
        d = self.channel.call("/t.S/Echo", b"x", 5)
        self.endpoint.flush()
        self.successResultOf(d)
        closed = self.channel.close()
        self.assertNoResult(closed)
        self.assertEqual(self.clock.getDelayedCalls()[0].getTime(), 5.0)  # (only the abort's grace)
        self.endpoint.flush()
        self.successResultOf(closed)
        self.assertIsNone(self.channel.connection)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_close_that_hangs_is_aborted_after_its_grace(self) -> None:
        d = self.channel.call("/t.S/Echo", b"x", 5)
        self.endpoint.flush()
        self.successResultOf(d)
        connection = self.channel.connection
        aborted = []
        abort = connection.transport.abortConnection
        connection.transport.abortConnection = lambda: (aborted.append(True), abort())
        closed = self.channel.close(grace=2.0)
        # (Nothing pumped: the peer takes nothing more.)
        self.clock.advance(1.9)
        self.assertEqual(aborted, [])
        self.clock.advance(0.1)
        self.assertEqual(aborted, [True])
        self.endpoint.flush()
        self.successResultOf(closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_a_prompt_close_is_not_aborted(self) -> None:
        d = self.channel.call("/t.S/Echo", b"x", 5)
        self.endpoint.flush()
        self.successResultOf(d)
        aborted = []
        self.channel.connection.transport.abortConnection = lambda: aborted.append(True)
        closed = self.channel.close(grace=2.0)
        self.endpoint.flush()
        self.successResultOf(closed)
        self.clock.advance(10)
        self.assertEqual(aborted, [])

    def test_no_connection_is_a_transport_error(self) -> None:
        channel = Channel(MemoryEndpoint({}, fail=True), "target:1", self.clock)
        error = self.failureResultOf(channel.call("/t.S/Echo", b"", 5), TransportError).value
        self.assertEqual(error.message, "cannot connect to target:1: ConnectionRefusedError: Connection was refused by other side: refused.")


class HandshakeDeadlineTests(SynchronousTestCase):
    def test_a_client_that_never_handshakes_is_cut_off(self) -> None:
        from twisted.internet.testing import StringTransport
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from eventsvc.grpc.publish import _ServerFactory
        from eventsvc.security import certs
        from twisted.internet import ssl

        ca = certs.make_ca()
        minted = certs.make_cert(ca, "s", ["s"])
        identity = ssl.PrivateCertificate.loadPEM(minted.cert_pem + minted.key_pem)
        options = ssl.CertificateOptions(privateKey=identity.privateKey.original, certificate=identity.original)
        clock = Clock()
        factory = TLSMemoryBIOFactory(options, False, _ServerFactory({}, 1000, clock))
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        clock.advance(1.9)
        self.assertFalse(transport.disconnecting)
        clock.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_tls_timeout_from_the_configuration(self) -> None:
        """[tls] timeout is the [grpc] listener's handshake clock too."""
        from twisted.internet.testing import MemoryReactorClock, StringTransport
        from twisted.protocols.tls import TLSMemoryBIOFactory

        from eventsvc import config
        from eventsvc.targets import grpc_listener
        from eventsvc.test.tlshelpers import PKI

        pki = PKI(self.mktemp())
        pki.issue("service", ["localhost"])
        written = config.parse('[tls]\ncert_path = "{}"\nkey_path = "{}"\nroot_ca_path = "{}"\ntimeout = 4\n[grpc]\nport = 0\n'.format(
            pki.path("service.crt"), pki.path("service.key"), pki.path("ca.crt")), "eventsvc.toml")
        from eventsvc.nats.server import Broker

        reactor = MemoryReactorClock()
        listener = grpc_listener(written, Broker(server_id="NTEST"), reactor)
        listener.startService()
        self.addCleanup(listener.stopService)
        factory = reactor.tcpServers[0][1]
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        reactor.advance(3.9)
        self.assertFalse(transport.disconnecting)
        reactor.advance(0.1)
        self.assertTrue(transport.disconnecting)

    def test_chain_file(self) -> None:
        """
        A [tls] cert_path holding the certificate and its intermediate CA:
        the [grpc] listener sends both, so a client trusting the root alone
        verifies it, and takes a client certificate sent with its chain.
        """
        from OpenSSL import SSL
        from twisted.internet.testing import MemoryReactorClock

        from eventsvc import config
        from eventsvc.nats.server import Broker
        from eventsvc.security import certs
        from eventsvc.targets import grpc_listener
        from eventsvc.test.tlshelpers import PKI

        pki = PKI(self.mktemp())
        root = certs.make_ca("root CA", path_length=1)
        intermediate = certs.make_intermediate(root, "intermediate CA")
        pki.write("root.crt", root.cert_pem)
        for name in ("service", "alice"):
            minted = pki.issue(name, ["localhost"], ca=intermediate)
            pki.write(name + "-chain.crt", minted.cert_pem + intermediate.cert_pem)
        written = config.parse('[tls]\ncert_path = "{}"\nkey_path = "{}"\nroot_ca_path = "{}"\n[grpc]\nport = 0\n'.format(
            pki.path("service-chain.crt"), pki.path("service.key"), pki.path("root.crt")), "eventsvc.toml")
        listener = grpc_listener(written, Broker(server_id="NTEST"), MemoryReactorClock())
        server = SSL.Connection(listener.tls.getContext(), None)
        server.set_accept_state()
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.load_verify_locations(pki.path("root.crt"))
        context.set_verify(SSL.VERIFY_PEER, lambda *a: a[-1])
        context.use_certificate_chain_file(pki.path("alice-chain.crt"))
        context.use_privatekey_file(pki.path("alice.key"))
        client = SSL.Connection(context, None)
        client.set_connect_state()
        for _ in range(10):
            for a, b in ((client, server), (server, client)):
                try:
                    a.do_handshake()
                except SSL.WantReadError:
                    pass
                try:
                    b.bio_write(a.bio_read(65536))
                except SSL.WantReadError:
                    pass
        self.assertEqual([c.get_subject().commonName for c in client.get_peer_cert_chain()], ["service", "intermediate CA"])
        self.assertEqual(server.get_peer_certificate().get_subject().commonName, "alice")


class FakeChannel:
    def __init__(self) -> None:
        self.calls: list = []

    def call(self, path: str, request: bytes, timeout: float) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((path, request, timeout, d))
        return d


class TargetTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.channel = FakeChannel()
        self.target = GRPCTarget("feed", "grpc://compliance:10121", self.channel,  # type: ignore[arg-type]
                                 "chef.automate.domain.compliance.ingest.ingest.ComplianceIngesterService", 30)
        self.logged: list = []
        self.target.log = Logger(observer=self.logged.append)

    def answer(self, error: Exception) -> DeliveryFailed:
        d = self.target.deliver(payload("compliance_ingest"))
        path, request, timeout, call = self.channel.calls[-1]
        self.assertEqual(path, "/chef.automate.domain.compliance.ingest.ingest.ComplianceIngesterService/HandleEvent")
        self.assertEqual(event_pb2.EventMsg.FromString(request).event_id, "evt-compliance_ingest")
        call.errback(error)
        return self.failureResultOf(d, DeliveryFailed).value

    def test_ok_is_delivered_whatever_success_says(self) -> None:
        d = self.target.deliver(payload("compliance_ingest"))
        self.channel.calls[-1][3].callback(event_pb2.EventResponse(success=False).SerializeToString())
        self.assertIsNone(self.successResultOf(d))

    def test_busy_down_and_slow_are_retried(self) -> None:
        for code in (wire.UNAVAILABLE, wire.DEADLINE_EXCEEDED, wire.RESOURCE_EXHAUSTED, wire.UNKNOWN, wire.ABORTED):
            failed = self.answer(GRPCError(code, "x"))
            self.assertTrue(failed.retry, code)
            self.assertEqual(str(failed), "gRPC {}: x".format(wire.status_name(code)))
        failed = self.answer(TransportError("cannot connect to compliance:10121: ConnectionRefusedError: refused"))
        self.assertTrue(failed.retry)
        self.assertEqual(str(failed), "gRPC cannot connect to compliance:10121: ConnectionRefusedError: refused")

    def test_answers_about_the_event_are_dead_lettered(self) -> None:
        for code in (wire.INVALID_ARGUMENT, wire.FAILED_PRECONDITION, wire.PERMISSION_DENIED, wire.INTERNAL, wire.NOT_FOUND):
            self.assertFalse(self.answer(GRPCError(code, "no")).retry, code)
        self.assertEqual(self.logged, [])

    def test_unimplemented_is_dead_lettered_with_one_warning(self) -> None:
        for _ in range(3):
            failed = self.answer(GRPCError(wire.UNIMPLEMENTED, "Unimplemented"))
            self.assertFalse(failed.retry)
            self.assertEqual(str(failed), "gRPC UNIMPLEMENTED: Unimplemented")
        [warning] = self.logged
        text = warning["log_format"].format(**warning)
        self.assertIn("handler feed: grpc://compliance:10121 answers UNIMPLEMENTED", text)
        self.assertIn("compliance-service", text)
        self.assertIn("dead-lettered", text)

    def test_an_event_that_cannot_be_an_event_msg_is_dead_lettered(self) -> None:
        d = self.target.deliver(b'{"event_id": "e1", "type": {}}')
        failed = self.failureResultOf(d, DeliveryFailed).value
        self.assertFalse(failed.retry)
        self.assertEqual(str(failed), "cannot be sent as an EventMsg: 'name'")
        self.assertEqual(self.channel.calls, [])


class PublishTests(SynchronousTestCase):
    """Publish through the broker and the real dispatcher, in memory."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.broker = Broker()
        self.delivered: list = []
        from eventsvc.events.handlers import CallableTarget, DeadLetters, HandlerService

        handlers = {
            name: HandlerService(name, CallableTarget(self.delivered.append, name), self.clock, DeadLetters(None))
            for name in ("event_feed", "cfgingest")
        }
        self.dispatcher = EventDispatcher(self.broker, Registry(), handlers, 2, self.clock)
        for h in handlers.values():
            h.startService()
        self.dispatcher.startService()
        self.api = EventAPI(self.broker, self.clock, timeout=5)
        self.api.start()
        self.methods = self.api.methods()

    def publish(self, msg: event_pb2.EventMsg) -> Deferred:
        return self.methods["/{}/Publish".format(SERVICE)](event_pb2.PublishRequest(msg=msg).SerializeToString())

    def test_acknowledged_once_kept_and_delivered(self) -> None:
        d = self.publish(to_message(event("event_feed", data={"n": 3})))
        self.assertNoResult(d)
        self.clock.advance(0)
        self.assertEqual(event_pb2.PublishResponse.FromString(self.successResultOf(d)).success, True)
        [delivered] = self.delivered
        self.assertEqual(delivered, event("event_feed", data={"n": 3}))

    def test_invalid_events_are_invalid_argument_naming_the_field(self) -> None:
        msg = to_message(event("event_feed"))
        msg.producer.id = ""
        with self.assertRaises(GRPCError) as caught:
            self.publish(msg)
        self.assertEqual((caught.exception.code, caught.exception.message),
                         (wire.INVALID_ARGUMENT, "producer.id: must be a non-empty string"))
        msg = to_message(event("event_feed"))
        msg.type.name = "nope"
        with self.assertRaises(GRPCError) as caught:
            self.publish(msg)
        self.assertIn("type.name: unknown event type 'nope'", caught.exception.message)

    def test_a_full_queue_is_resource_exhausted(self) -> None:
        for h in self.dispatcher.handlers.values():
            h.target = type("Stuck", (), {"deliver": lambda self, body: Deferred()})()
        for i in range(2):
            self.publish(to_message(event("event_feed", event_id="e{}".format(i))))
        d = self.publish(to_message(event("event_feed", event_id="e3")))
        error = self.failureResultOf(d, GRPCError).value
        self.assertEqual(error.code, wire.RESOURCE_EXHAUSTED)
        self.assertIn("queue full", error.message)

    def test_a_full_disk_is_resource_exhausted(self) -> None:
        # The dispatcher's refusal of a spool that cannot write: its reason, and the spool's words.
        answers = {("store_full", "store full: no space left on device in /d"): wire.RESOURCE_EXHAUSTED,
                   ("store_read_only", "store read-only: read-only file system in /d"): wire.UNAVAILABLE}
        for (reason, error), code in answers.items():
            d = self.publish(to_message(event("event_feed")))
            [reply] = list(self.api._waiting)
            self.broker.publish(reply, json.dumps({"success": False, "error": error, "reason": reason}).encode())
            failure = self.failureResultOf(d, GRPCError).value
            self.assertEqual((failure.code, failure.message), (code, error))

    def test_a_type_with_no_handler_is_failed_precondition(self) -> None:
        d = self.publish(to_message(event("compliance_ingest")))
        error = self.failureResultOf(d, GRPCError).value
        self.assertEqual(error.code, wire.FAILED_PRECONDITION)
        self.assertIn("no handler configured for compliance_ingest ([handlers] feed)", error.message)

    def test_no_message_is_success_false_as_automate(self) -> None:
        d = self.methods["/{}/Publish".format(SERVICE)](b"")
        self.assertFalse(event_pb2.PublishResponse.FromString(self.successResultOf(d)).success)

    def test_no_dispatcher_is_unavailable(self) -> None:
        self.dispatcher.stopService()
        with self.assertRaises(GRPCError) as caught:
            self.publish(to_message(event("event_feed")))
        self.assertEqual(caught.exception.code, wire.UNAVAILABLE)

    def test_subscribe_start_stop_answer_empty(self) -> None:
        for name in ("Subscribe", "Start", "Stop"):
            self.assertEqual(self.methods["/{}/{}".format(SERVICE, name)](b""), b"")


class ConfigTests(SynchronousTestCase):
    TLS = '[tls]\ncert_path = "a.crt"\nkey_path = "a.key"\nroot_ca_path = "ca.crt"\n'

    def refused(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            config.parse(text, "p.toml")
        return str(caught.exception)

    def test_grpc_targets(self) -> None:
        c = config.parse(self.TLS + '[handlers]\nevent_feed = "grpc://event-feed:10134"\n[events.event_feed]\ntls_name = "event-feed-service"\n', "p.toml")
        self.assertEqual(config.handler_address(c.handlers.event_feed), ("grpc", "event-feed", 10134))
        self.assertEqual(c.events.event_feed.tls_name, "event-feed-service")
        self.assertEqual([w for w in config.warnings(c) if "event_feed" in w], [])

    def test_grpc_targets_need_tls(self) -> None:
        self.assertEqual(self.refused('[handlers]\nfeed = "grpc://compliance:10121"\n'), (
            "p.toml: [handlers] feed: 'grpc://compliance:10121' is a gRPC target, called over mutual TLS with the [tls] "
            "identity (as Chef Automate's services require): set [tls] cert_path, key_path and root_ca_path"))

    def test_bad_grpc_addresses(self) -> None:
        for address in ("grpc://compliance", "grpc://compliance:10121/x", "grpc://:10121"):
            self.assertIn("grpc://host:port", self.refused(self.TLS + '[handlers]\nfeed = "%s"\n' % address))
        self.assertIn("grpc://<host>:10121", self.refused(self.TLS + '[handlers]\nfeed = "grpc://0.0.0.0:10121"\n'))

    def test_tls_name_only_for_grpc(self) -> None:
        self.assertEqual(self.refused('[handlers]\nfeed = "https://f/e"\n[events.feed]\ntls_name = "x"\n'),
                         "p.toml: [events.feed] tls_name: names the certificate of a grpc:// target, and [handlers] feed is 'https://f/e'")

    def test_grpc_section(self) -> None:
        c = config.parse(self.TLS + '[grpc]\nport = 10200\n', "p.toml")
        self.assertEqual((c.grpc.enabled, c.grpc.host, c.grpc.port), (True, "127.0.0.1", 10200))
        self.assertFalse(config.parse("", "p.toml").grpc.enabled)
        self.assertIn("[grpc] enabled: the gRPC API uses mutual TLS", self.refused('[grpc]\nport = 10200\n'))
        self.assertEqual(self.refused(self.TLS + '[grpc]\nport = 10132\n'),
                         "p.toml: [grpc] port: is the service port too (10132); give them different ports")
        self.assertIn("[grpc] port: must be between 0 and 65535", self.refused(self.TLS + '[grpc]\nport = 70000\n'))

    def test_bare_address_warning_says_how_to_write_grpc(self) -> None:
        c = config.parse('[handlers]\nfeed = "feed.internal:10121"\n', "/etc/p.toml")
        [warning] = [w for w in config.warnings(c) if "[handlers] feed =" in w]
        self.assertIn("for that write grpc://feed.internal:10121", warning)
