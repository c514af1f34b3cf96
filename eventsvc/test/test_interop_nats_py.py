"""
The real nats-py client against a running eventsvc process.

Each scenario is an asyncio coroutine run in a worker thread with its own
event loop, so the tests need nothing of the reactor but a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from eventsvc.test import process

try:
    import nats
    from nats.errors import NoRespondersError
except ImportError:  # pragma: no cover - the test extra installs it
    nats = None


def in_thread(scenario: Callable[..., Awaitable[Any]], *args: Any):
    return threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(scenario(*args), 60)))


class NatsPyTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        if nats is None:
            process.require("nats-py (pip install nats-py)")
        self.config = process.write_config(self.mktemp(), '[service]\nhost = "127.0.0.1"\nport = 0\n')
        self.server = process.eventsvc(self.config)
        self.server.start()
        self.addCleanup(lambda: self.server.stop())
        self.url = "nats://127.0.0.1:%d" % self.server.port

    def test_pub_sub_and_wildcards(self):
        async def scenario():
            nc = await nats.connect(self.url)
            star = await nc.subscribe("orders.*")
            full = await nc.subscribe("orders.>")
            exact = await nc.subscribe("orders.eu.new")
            await nc.flush()
            await nc.publish("orders.eu", b"1")
            await nc.publish("orders.eu.new", b"2")
            got = {
                "star": [(await star.next_msg(2)).data],
                "full": [(await full.next_msg(2)).data, (await full.next_msg(2)).data],
                "exact": [(await exact.next_msg(2)).data],
            }
            await nc.close()
            return got

        d = in_thread(scenario)
        d.addCallback(self.assertEqual, {"star": [b"1"], "full": [b"1", b"2"], "exact": [b"2"]})
        return d

    def test_request_reply(self):
        async def scenario():
            responder = await nats.connect(self.url)

            async def answer(msg):
                await msg.respond(b"re:" + msg.data)

            await responder.subscribe("echo", cb=answer)
            await responder.flush()
            nc = await nats.connect(self.url)
            replies = [(await nc.request("echo", b"%d" % i, timeout=2)).data for i in range(20)]
            await nc.close()
            await responder.close()
            return replies

        d = in_thread(scenario)
        d.addCallback(self.assertEqual, [b"re:%d" % i for i in range(20)])
        return d

    def test_queue_groups(self):
        async def scenario():
            counts = {"a": 0, "b": 0, "c": 0, "plain": 0}
            clients = []
            for name in ("a", "b", "c"):
                nc = await nats.connect(self.url)

                async def count(msg, name=name):
                    counts[name] += 1

                await nc.subscribe("jobs", queue="workers", cb=count)
                await nc.flush()
                clients.append(nc)
            watcher = await nats.connect(self.url)

            async def watch(msg):
                counts["plain"] += 1

            await watcher.subscribe("jobs", cb=watch)
            await watcher.flush()
            pub = await nats.connect(self.url)
            for i in range(300):
                await pub.publish("jobs", b"x")
            await pub.flush()
            for _ in range(100):
                if counts["a"] + counts["b"] + counts["c"] == 300 and counts["plain"] == 300:
                    break
                await asyncio.sleep(0.05)
            for nc in clients + [watcher, pub]:
                await nc.close()
            return counts

        def check(counts):
            self.assertEqual(counts["a"] + counts["b"] + counts["c"], 300)
            self.assertEqual(counts["plain"], 300)
            for name in "abc":
                self.assertGreater(counts[name], 30, counts)

        return in_thread(scenario).addCallback(check)

    def test_headers(self):
        async def scenario():
            nc = await nats.connect(self.url)
            sub = await nc.subscribe("with.headers")
            await nc.flush()
            await nc.publish("with.headers", b"body", headers={"Trace-Id": "abc", "X": "1"})
            msg = await sub.next_msg(2)
            await nc.close()
            return msg.data, dict(msg.headers or {})

        d = in_thread(scenario)
        d.addCallback(self.assertEqual, (b"body", {"Trace-Id": "abc", "X": "1"}))
        return d

    def test_no_responders(self):
        async def scenario():
            nc = await nats.connect(self.url)
            try:
                await nc.request("nobody.home", b"?", timeout=2)
            except NoRespondersError:
                return "no responders"
            finally:
                await nc.close()
            return "answered"

        return in_thread(scenario).addCallback(self.assertEqual, "no responders")

    def test_flush_and_drain(self):
        async def scenario():
            received = []
            sub_nc = await nats.connect(self.url)

            async def slow(msg):
                await asyncio.sleep(0.001)
                received.append(msg.data)

            await sub_nc.subscribe("drain.me", cb=slow)
            await sub_nc.flush()
            pub = await nats.connect(self.url)
            for i in range(200):
                await pub.publish("drain.me", b"%d" % i)
            await pub.flush()
            await asyncio.sleep(0.2)
            # drain: stop taking new messages, finish the ones in hand, close.
            await sub_nc.drain()
            await pub.close()
            return received, sub_nc.is_closed

        def check(result):
            received, closed = result
            self.assertEqual(received, [b"%d" % i for i in range(200)])
            self.assertTrue(closed)

        return in_thread(scenario).addCallback(check)

    def test_reconnect_after_restart(self):
        """The server restarts on the same port; nats-py reconnects and resubscribes."""
        port = self.server.port

        def restart() -> None:
            self.server.stop()
            process.write_config(self.config, '[service]\nhost = "127.0.0.1"\nport = %d\n' % port)
            self.server = process.eventsvc(self.config)
            self.server.start()

        async def scenario():
            reconnected = asyncio.Event()

            async def on_reconnect():
                reconnected.set()

            async def on_error(e):
                pass  # refused connections while the server is down are expected

            nc = await nats.connect(
                self.url,
                reconnected_cb=on_reconnect,
                error_cb=on_error,
                reconnect_time_wait=0.2,
                max_reconnect_attempts=100,
            )
            sub = await nc.subscribe("after.restart")
            await nc.flush()
            await asyncio.get_running_loop().run_in_executor(None, restart)
            await asyncio.wait_for(reconnected.wait(), 20)
            await nc.publish("after.restart", b"still here")
            msg = await sub.next_msg(5)
            await nc.close()
            return msg.data

        return in_thread(scenario).addCallback(self.assertEqual, b"still here")
