"""
The two ways in, on a real process with real TLS: the mutual-TLS service
listener and the token-authenticated gateway, used by nats-py, by a raw
client that behaves like the Habitat supervisor's, and by the health check.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import time

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from eventsvc.test import adversary, process

try:
    import nats
except ImportError:  # pragma: no cover
    nats = None

TOKEN = "agent-token-for-tests"


class SecurityInteropTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        certs = os.path.join(self.dir, "certs")
        made = process.cli("certs", "--out", certs)
        self.assertEqual(made.returncode, 0, made.stderr)
        self.certs = certs
        self.service_port, self.gateway_port = process.free_port(), process.free_port()
        self.config = process.write_config(
            os.path.join(self.dir, "patch.toml"),
            f"""
[service]
host = "127.0.0.1"
port = {self.service_port}
[tls]
cert_path = "certs/service.crt"
key_path = "certs/service.key"
root_ca_path = "certs/ca.crt"
[gateway]
enabled = true
host = "127.0.0.1"
port = {self.gateway_port}
tokens = ["{TOKEN}"]
[[gateway.identities]]
name = "requester"
token = "requester-token"
private_inbox = true
[[gateway.frontend_tls]]
server_name = "localhost"
cert_path = "certs/gateway.crt"
key_path = "certs/gateway.key"
""",
        )
        self.server = process.eventsvc(self.config, expect=("service", "gateway"))
        self.server.start()
        self.addCleanup(self.server.stop)

    def service_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=os.path.join(self.certs, "ca.crt"))
        context.load_cert_chain(os.path.join(self.certs, "client.crt"), os.path.join(self.certs, "client.key"))
        return context

    def gateway_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=os.path.join(self.certs, "ca.crt"))

    def run_async(self, scenario):
        if nats is None:
            process.require("nats-py")
        return threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(scenario(), 60)))

    def test_nats_py_gateway_to_service(self):
        """nats-py publishes at the gateway; a nats-py consumer on the service gets each message once."""

        async def scenario():
            consumer = await nats.connect("tls://127.0.0.1:%d" % self.service_port, tls=self.service_context(), tls_hostname="localhost")
            sub = await consumer.subscribe("habitat.event.>", queue="automate")

            async def answer(msg):
                await msg.respond(b"ack:" + msg.data)

            await consumer.subscribe("habitat.event.healthcheck", cb=answer)
            await consumer.flush()
            agent = await nats.connect("tls://127.0.0.1:%d" % self.gateway_port, tls=self.gateway_context(), token=TOKEN, tls_hostname="localhost")
            for i in range(50):
                await agent.publish("habitat.event.service_started", b"%d" % i)
            got = [(await sub.next_msg(5)).data for _ in range(50)]
            # Requests need an inbox of one's own: an identity with private_inbox.
            requester = await nats.connect(
                "tls://127.0.0.1:%d" % self.gateway_port, tls=self.gateway_context(), token="requester-token", tls_hostname="localhost",
                inbox_prefix="_INBOX.requester",
            )
            reply = await requester.request("habitat.event.healthcheck", b"ping", timeout=5)
            await requester.close()
            extra = 0
            try:
                await sub.next_msg(0.3)
                extra += 1  # the request itself, seen by the queue subscriber too
                await sub.next_msg(0.3)
                extra += 1
            except nats.errors.TimeoutError:
                pass
            await agent.close()
            await consumer.close()
            return got, reply.data, extra

        def check(result):
            got, reply, extra = result
            self.assertEqual(got, [b"%d" % i for i in range(50)])
            self.assertEqual(reply, b"ack:ping")
            self.assertEqual(extra, 1)

        return self.run_async(scenario).addCallback(check)

    def test_service_refuses_without_client_certificate(self):
        async def scenario():
            try:
                nc = await nats.connect(
                    "tls://127.0.0.1:%d" % self.service_port,
                    tls=self.gateway_context(),
                    tls_hostname="localhost",
                    allow_reconnect=False,
                    connect_timeout=3,
                    error_cb=_quiet,
                )
            except Exception as e:
                return type(e).__name__
            await nc.close()
            return "connected"

        return self.run_async(scenario).addCallback(lambda r: self.assertNotEqual(r, "connected"))

    def test_habitat_like_client(self):
        """
        As the Habitat supervisor's client: read INFO, upgrade to TLS with SNI
        on the same socket, CONNECT with verbose and wait for +OK, PING/PONG,
        then publish; a consumer on the service gets it.
        """

        def run():
            consumer = socket.create_connection(("127.0.0.1", self.service_port), timeout=10)
            consumer_info = _line(consumer)
            self.assertTrue(json.loads(consumer_info[5:])["tls_verify"])
            consumer = self.service_context().wrap_socket(consumer, server_hostname="localhost")
            consumer.sendall(b'CONNECT {"verbose":false}\r\nSUB habitat.event.> 1\r\nPING\r\n')
            self.assertEqual(_line(consumer), b"PONG")

            raw = socket.create_connection(("127.0.0.1", self.gateway_port), timeout=10)
            info = json.loads(_line(raw)[5:])
            for key in ("server_id", "version", "go", "host", "port"):
                self.assertTrue(info[key], key)
            self.assertGreater(info["max_payload"], 0)
            self.assertTrue(info["tls_required"])
            self.assertTrue(info["auth_required"])
            tls = self.gateway_context().wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b'CONNECT {"verbose":true,"pedantic":false,"auth_token":"%s","name":"hab-sup","lang":"rust"}\r\n' % TOKEN.encode())
            self.assertEqual(_line(tls), b"+OK")
            tls.sendall(b"PING\r\n")
            self.assertEqual(_line(tls), b"PONG")
            tls.sendall(b"PUB habitat.event.healthcheck 3\r\nabc\r\n")
            self.assertEqual(_line(tls), b"+OK")
            self.assertEqual(_line(consumer), b"MSG habitat.event.healthcheck 1 3")
            tls.close()
            consumer.close()

        return threads.deferToThread(run)

    def test_health_check_command(self):
        def run():
            ok = process.cli("health-check", "--config", self.config)
            self.assertEqual(ok.returncode, 0, ok.stderr)
            self.assertTrue(ok.stdout.startswith("healthy: gateway 127.0.0.1:%d" % self.gateway_port), ok.stdout)
            # Closed over TLS as a client should: not a reset ("Read Error").
            self.server.wait_output("closed: Client Closed")
            self.assertNotIn("Read Error", self.server.output())
            self.server.stop()
            down = process.cli("health-check", "--config", self.config)
            self.assertEqual(down.returncode, 1)
            self.assertEqual(down.stderr.count("\n"), 1, down.stderr)
            self.assertTrue(down.stderr.startswith("unhealthy: "), down.stderr)

        return threads.deferToThread(run)

    def test_check_config_command(self):
        ok = process.cli("check-config", "--config", self.config)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        self.assertIn(": mutual TLS (client certificates signed by ", ok.stdout)
        self.assertIn(": TLS by SNI (localhost); authentication: tokens (1 listed)", ok.stdout)
        os.rename(os.path.join(self.certs, "gateway.key"), os.path.join(self.certs, "moved.key"))
        bad = process.cli("check-config", "--config", self.config)
        self.assertEqual(bad.returncode, 78)
        self.assertEqual(bad.stderr.count("\n"), 1, bad.stderr)
        self.assertIn("gateway.key ([gateway.frontend_tls localhost] key_path): cannot read", bad.stderr)

    def test_publish_over_mutual_tls(self):
        """publish presents the [tls] identity; a missing --cert is one line, not a traceback."""
        event = process.write_config(os.path.join(self.dir, "event.json"), json.dumps({"producer": {"id": "p"}}))
        sent = process.cli("publish", "--config", self.config, "--type", "event_feed", "--file", event)
        self.assertEqual(sent.returncode, 1)
        # It got through TLS: the service answered (no handler is configured here).
        self.assertIn("no handler configured", json.loads(sent.stderr)["error"])
        missing = process.cli(
            "publish", "--config", self.config, "--type", "event_feed", "--file", event, "--cert", "/nonexistent.crt"
        )
        self.assertEqual(missing.returncode, 1)
        self.assertNotIn("Traceback", missing.stderr)
        self.assertEqual(missing.stderr.count("\n"), 1, missing.stderr)
        self.assertIn("cannot publish to 127.0.0.1:%d" % self.service_port, missing.stderr)

    def test_certs_does_not_overwrite(self):
        again = process.cli("certs", "--out", self.certs)
        self.assertEqual(again.returncode, 1)
        self.assertIn("--force", again.stderr)


async def _quiet(e):
    pass


def _line(sock) -> bytes:
    """One line, without its CRLF (the adversary's reader, which raises on a close)."""
    return adversary.read_line(sock)[:-2]


class HealthCheckRouteTests(TestCase):
    """
    health-check reports what /healthz reports: on a gateway-only node, a
    configured route that is down is unhealthy, and healthy once it is up.
    """

    timeout = 120

    @defer.inlineCallbacks
    def test_route_down_then_up(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cluster_port, gateway_port = process.free_port(), process.free_port()
        config = process.write_config(os.path.join(directory, "gateway.toml"), f"""
[service]
enabled = false
[gateway]
host = "127.0.0.1"
port = {gateway_port}
disable_frontend_tls = true
tokens = ["{TOKEN}"]
[cluster]
name = "events"
listen = false
routes = ["nats-route://127.0.0.1:{cluster_port}"]
""")
        server = process.eventsvc(config, expect=("gateway",))
        server.start()
        self.addCleanup(server.stop)

        def run():
            down = process.cli("health-check", "--config", config)
            peer = process.nats_server("--cluster", "nats://127.0.0.1:%d" % cluster_port, "--cluster_name", "events")
            peer.start()
            try:
                for _ in range(60):
                    up = process.cli("health-check", "--config", config)
                    if up.returncode == 0:
                        break
                    time.sleep(0.5)
            finally:
                peer.stop()
            return down, up

        down, up = yield threads.deferToThread(run)
        self.assertEqual(down.returncode, 1, down.stdout)
        self.assertEqual(
            down.stderr,
            "unhealthy: gateway 127.0.0.1:%d: route down: nats-route://127.0.0.1:%d\n" % (gateway_port, cluster_port),
        )
        self.assertEqual(up.returncode, 0, up.stderr)
        self.assertTrue(up.stdout.startswith("healthy: gateway 127.0.0.1:%d" % gateway_port), up.stdout)
        # The health check closes as a client should: no read errors in the log.
        self.assertNotIn("Read Error", server.output())


class ChainFileInteropTests(TestCase):
    """
    Certificate files holding the certificate and its intermediate CA (chain
    files), clients trusting the root alone: nats-py verifies eventsvc's
    service listener (mutual TLS, its own certificate also from the
    intermediate) and gateway, as it verifies nats-server with the same files.
    """

    timeout = 120

    def setUp(self) -> None:
        from eventsvc.security import certs

        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        root = certs.make_ca("root CA", path_length=1)
        intermediate = certs.make_intermediate(root, "intermediate CA")
        process.write_bytes(self.path("root.crt"), root.cert_pem)
        for name in ("service", "client"):
            minted = certs.make_cert(intermediate, name, ["localhost"])
            process.write_bytes(self.path(name + ".crt"), minted.cert_pem + intermediate.cert_pem)
            process.write_bytes(self.path(name + ".key"), minted.key_pem)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def context(self, client_certificate: bool = True) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.path("root.crt"))
        if client_certificate:
            context.load_cert_chain(self.path("client.crt"), self.path("client.key"))
        return context

    def round_trip(self, port: int, publisher_port: int = 0, **publisher_options):
        """
        One message on habitat.event.chain, published at C{publisher_port}
        (C{port} if none) and received at C{port} over mutual TLS, as nats-py sees it.
        """
        if nats is None:
            process.require("nats-py")

        async def connect(port, **options):
            return await nats.connect("tls://127.0.0.1:%d" % port, tls_hostname="localhost", allow_reconnect=False,
                                      connect_timeout=5, error_cb=_quiet, **options)

        async def scenario():
            nc = await connect(port, tls=self.context())
            sub = await nc.subscribe("habitat.event.chain")
            await nc.flush()
            publisher = await connect(publisher_port, **publisher_options) if publisher_port else nc
            await publisher.publish("habitat.event.chain", b"verified")
            await publisher.flush()
            got = (await sub.next_msg(5)).data
            if publisher is not nc:
                await publisher.close()
            await nc.close()
            return got

        return threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(scenario(), 60)))

    @defer.inlineCallbacks
    def test_eventsvc_and_nats_server_with_chain_files(self):
        gateway_port = process.free_port()
        config = process.write_config(self.path("eventsvc.toml"), f"""
[service]
host = "127.0.0.1"
port = 0
[tls]
cert_path = "{self.path('service.crt')}"
key_path = "{self.path('service.key')}"
root_ca_path = "{self.path('root.crt')}"
[gateway]
enabled = true
host = "127.0.0.1"
port = {gateway_port}
tokens = ["{TOKEN}"]
[[gateway.frontend_tls]]
server_name = "localhost"
cert_path = "{self.path('service.crt')}"
key_path = "{self.path('service.key')}"
""")
        server = process.eventsvc(config, expect=("service", "gateway"))
        service_port = yield process.started(self, server)
        reference = process.nats_server("-c", process.write_config(self.path("nats.conf"), """
tls {{
  cert_file: "{0}/service.crt"
  key_file: "{0}/service.key"
  ca_file: "{0}/root.crt"
  verify: true
}}
""".format(self.dir)))
        reference_port = yield process.started(self, reference)
        for port in (service_port, reference_port):
            got = yield self.round_trip(port)
            self.assertEqual(got, b"verified", port)
        got = yield self.round_trip(service_port, gateway_port, tls=self.context(client_certificate=False), token=TOKEN)
        self.assertEqual(got, b"verified")
