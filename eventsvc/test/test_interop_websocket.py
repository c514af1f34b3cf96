"""
NATS over WebSocket against the reference: nats.js (@nats-io/nats-core's
wsconnect, in Node) runs one script against nats-server's websocket
listener and against eventsvc's, and must see the same; raw frames are
compared byte for byte where the scene decides them; wrong origins and a
read-only identity are refused as they should be.
"""

from __future__ import annotations

import json
import os
import subprocess

from twisted.internet import threads
from twisted.trial.unittest import SkipTest, TestCase

from eventsvc.test import process, wsframes
from eventsvc.test.wsframes import RawClient, payloads

TOKEN = "FAKE-interop-token"


def js_dir() -> str:
    """interop/js with its node_modules (make test runs npm ci there); skips, or fails under CI, without."""
    path = os.path.join(process.source_tree(), "interop", "js")
    if not os.path.isdir(os.path.join(path, "node_modules", "@nats-io", "nats-core")):
        message = "nats.js is not installed: npm ci --prefix interop/js"
        if os.environ.get("EVENTSVC_REQUIRE_INTEROP"):
            raise AssertionError(message)
        raise SkipTest(message)
    return path


def run_script(port: int, token: str = TOKEN, url: str = "", ca: str = "") -> dict:
    """The nats.js script against C{url} (ws://127.0.0.1:C{port}); C{ca}: a CA file Node trusts too (wss://)."""
    node = process.require("node")
    env = dict(os.environ, NODE_EXTRA_CA_CERTS=ca) if ca else None
    done = subprocess.run(
        [node, "--experimental-websocket", "--no-warnings", "wsinterop.mjs", url or "ws://127.0.0.1:{}".format(port), token],
        cwd=js_dir(), capture_output=True, text=True, timeout=60, env=env,
    )
    if done.returncode != 0:
        raise AssertionError("nats.js script failed ({}):\n{}{}".format(done.returncode, done.stdout, done.stderr))
    return json.loads(done.stdout.strip().splitlines()[-1])


class ReferenceWebSocketTests(TestCase):
    """The same scenes on nats-server 2.9 and eventsvc."""

    timeout = 120

    def reference(self, websocket: str = "no_tls: true") -> "tuple[process.ServerProcess, int]":
        # Its websocket port the kernel's (-1), read from its log once started.
        path = process.write_config(
            self.mktemp() + ".conf",
            'websocket {{ listen: "127.0.0.1:-1"\n {} }}\nauthorization {{ token: "{}" }}\n'.format(websocket, TOKEN),
        )
        return process.nats_server("-c", path, expect=("websocket",)), 0

    def eventsvc(self, websocket: str = "") -> "tuple[process.ServerProcess, int]":
        path = process.write_config(self.mktemp() + ".toml", (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[websocket]\nport = 0\nno_tls = true\ntokens = ["{}"]\n{}'
            '[websocket.permissions]\npublish_allow = [">"]\nsubscribe_allow = [">"]\n'
        ).format(TOKEN, websocket))
        server = process.eventsvc(path, expect=("websocket",))
        return server, 0

    async def both(self, reference_ws: str = "no_tls: true", eventsvc_ws: str = "") -> "tuple[int, int]":
        ref, _ = self.reference(reference_ws)
        await process.started(self, ref)
        ref_port = ref.ports["websocket"]
        ours, _ = self.eventsvc(eventsvc_ws)
        await process.started(self, ours)
        return ref_port, ours.ports["websocket"]

    async def test_nats_js_script(self) -> None:
        """Pub/sub, request/reply, headers, no responders, a 1 MiB payload and max_payload: nats.js sees the same."""
        js_dir()
        ref_port, our_port = await self.both()
        theirs = await threads.deferToThread(run_script, ref_port)
        ours = await threads.deferToThread(run_script, our_port)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours["pubsub"], [["interop.pubsub", w] for w in ("one", "two", "three")])
        self.assertEqual(ours["request"], "echo:ping")
        self.assertEqual(ours["headers"], {"id": "evt-42", "tags": ["a", "b"], "body": "with headers"})
        self.assertEqual(ours["big"], {"length": 1048576, "same": True})
        self.assertEqual(ours["no_responders"], "no responders")

    def scene(self, port: int, deflate: bool = False) -> dict:
        """A fixed exchange on a raw WebSocket: the frames the server sends back, but for INFO's content."""
        client = RawClient(port, deflate=deflate)
        try:
            info = client.frames(until=b"\r\n")
            client.send(
                b'CONNECT {"verbose":false,"auth_token":"' + TOKEN.encode() + b'","headers":true}\r\n'
                b"SUB a 1\r\nPUB a 5\r\nhello\r\nPUB a 200\r\n" + b"x" * 200 + b"\r\n"
                b"HPUB a 18 20\r\nNATS/1.0\r\nX: 1\r\n\r\nhi\r\nPING\r\n"
            )
            messages = client.frames(until=b"PONG\r\n")
            client.send(b"PUB a 1\r\nxx\r\n")
            closing = client.frames(count=2)
            extensions = [line for line in client.response.split(b"\r\n") if line.lower().startswith(b"sec-websocket-extensions")]
            return {
                "status": client.status,
                "extensions": extensions,
                "info": [(op, fin, rsv1) for op, fin, rsv1, _ in info],
                "messages": payloads(messages),
                "message_frames": [(op, fin, rsv1) for op, fin, rsv1, _ in messages],
                "closing": [(op, fin, rsv1, wsframes.inflate(p) if rsv1 else p) for op, fin, rsv1, p in closing],
            }
        finally:
            client.close()

    async def test_frames(self) -> None:
        """Frame by frame: binary, FIN set, one per flush; -ERR then a close frame with nats-server's code and reason."""
        ref_port, our_port = await self.both()
        theirs = await threads.deferToThread(self.scene, ref_port)
        ours = await threads.deferToThread(self.scene, our_port)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours["closing"][1], (wsframes.CLOSE, True, False, b"\x03\xeaProtocol Violation"))

    async def test_compressed_frames(self) -> None:
        """compression: the same extension answer, and the same messages deflated (RSV1) as nats-server's."""
        ref_port, our_port = await self.both("no_tls: true\n compression: true", "compression = true\n")
        theirs = await threads.deferToThread(self.scene, ref_port, True)
        ours = await threads.deferToThread(self.scene, our_port, True)
        self.assertEqual([e.lower() for e in ours["extensions"]], [e.lower() for e in theirs["extensions"]])
        self.assertEqual(ours["messages"], theirs["messages"])
        self.assertEqual(ours["info"], theirs["info"])
        self.assertTrue(ours["message_frames"][0][2], "a long message is deflated")

    async def test_wrong_origin(self) -> None:
        """An origin not allowed: 403 from both, before any NATS is spoken; an allowed one gets in."""
        allowed = "http://console.example:8222"
        ref_port, our_port = await self.both(
            'no_tls: true\n allowed_origins: ["{}"]'.format(allowed), 'allowed_origins = ["{}"]\n'.format(allowed)
        )

        def statuses(port: int) -> list:
            out = []
            for origin in ("http://evil.example", "http://console.example:9999", allowed):
                client = RawClient(port, origin=origin)
                out.append(client.status)
                client.close()
            return out

        theirs = await threads.deferToThread(statuses, ref_port)
        ours = await threads.deferToThread(statuses, our_port)
        self.assertEqual(ours, theirs)
        self.assertEqual(ours, [403, 403, 101])


class ConsoleIdentityTests(TestCase):
    """A read-only identity over WebSocket, as the console uses: it watches, it cannot publish."""

    timeout = 60

    async def test_read_only_identity(self) -> None:
        path = process.write_config(self.mktemp() + ".toml", (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[websocket]\nport = 0\nno_tls = true\n'
            '[[websocket.identities]]\nname = "console"\ntoken = "watch"\nsubscribe_allow = [">"]\npublish_deny = [">"]\n'
        ))
        server = process.eventsvc(path, expect=("websocket",))
        await process.started(self, server)

        def scene() -> bytes:
            client = RawClient(server.ports["websocket"])
            try:
                client.frames(until=b"\r\n")
                client.send(b'CONNECT {"verbose":false,"auth_token":"watch"}\r\nSUB > 1\r\nPUB news 2\r\nhi\r\nPING\r\n')
                return payloads(client.frames(until=b"PONG\r\n"))
            finally:
                client.close()

        got = await threads.deferToThread(scene)
        self.assertEqual(got, b"-ERR 'Permissions Violation for Publish to \"news\"'\r\nPONG\r\n")


class SecureWebSocketTests(TestCase):
    """wss://: TLS under the WebSocket, from [websocket] cert_path and key_path (the FAKE dev certificates)."""

    timeout = 120

    async def test_wss(self) -> None:
        import ssl

        certs = os.path.join(process.source_tree(), "dev", "certs")
        path = process.write_config(self.mktemp() + ".toml", (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[websocket]\nport = 0\ncert_path = "{certs}/gateway.crt"\nkey_path = "{certs}/gateway.key"\ntokens = ["{token}"]\n'
            '[websocket.permissions]\npublish_allow = [">"]\nsubscribe_allow = [">"]\n'
        ).format(certs=certs, token=TOKEN))
        server = process.eventsvc(path, expect=("websocket",))
        await process.started(self, server)
        port = server.ports["websocket"]
        self.assertIn("WebSocket over TLS (wss://)", server.output())

        def raw() -> "tuple[int, bytes, str]":
            context = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
            # As a browser does (with nothing in common, Twisted fails the handshake).
            context.set_alpn_protocols(["http/1.1"])
            client = RawClient(port, tls=context)
            try:
                return client.status, payloads(client.frames(until=b"\r\n")), client.sock.selected_alpn_protocol()
            finally:
                client.close()

        status, info, alpn = await threads.deferToThread(raw)
        self.assertEqual((status, alpn), (101, "http/1.1"))
        self.assertTrue(info.startswith(b"INFO {") and b"tls_required" not in info, info)

        def plaintext() -> bytes:
            # Plain HTTP to a TLS port: no upgrade, nothing in clear.
            import socket

            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(wsframes.upgrade_request("127.0.0.1:{}".format(port)))
                try:
                    return sock.recv(4096)
                except OSError:
                    return b""

        self.assertNotIn(b"101 Switching", await threads.deferToThread(plaintext))
        js_dir()
        ours = await threads.deferToThread(
            run_script, port, TOKEN, "wss://127.0.0.1:{}".format(port), os.path.join(certs, "ca.crt")
        )
        self.assertEqual(ours["big"], {"length": 1048576, "same": True})
        self.assertEqual(ours["request"], "echo:ping")
