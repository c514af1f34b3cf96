"""
The live console in a real browser: headless Chromium (Debian's) opens the
page a running eventsvc serves, the page connects over NATS-over-WebSocket
as the console identity, shows a message nats-py publishes in its live
tail, and its event counters move when an event is accepted.  A subject the
identity may not watch is refused in the page.

What an operator who keeps it open sees: charts full of what happened
before the page was opened, the connections at once (sorted, filtered, the
closed ones on their tab), why events were refused, the version, the tail
cleared when its subject changes, a handler red when its target is really
down, and the store's state (given to the page).

The screenshots are kept: $EVENTSVC_ARTEFACTS/console.png and
console-operator.png when that is set, else in the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import threading
import time
from typing import Any, Coroutine

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from eventsvc import __version__
from eventsvc.test import eventsamples, process
from eventsvc.test.browser import Browser

try:
    import nats
except ImportError:  # pragma: no cover - the test extra installs it
    nats = None

_MONITOR = re.compile(r"monitor listening for HTTP on [\d.]+:(\d+)")

CONFIG = """
[service]
host = "127.0.0.1"
port = 0

[handlers]
# A target nothing listens at (the test fills in the port): down, for real.
feed = "http://127.0.0.1:{closed}/events"
cfgingest = "python:eventsvc.events.handlers:log_event"
event_feed = "python:eventsvc.events.handlers:log_event"

[websocket]
port = 0
no_tls = true

[[websocket.identities]]
name = "console"
token = "FAKE-console-token"
subscribe_allow = ["console.>", "event.>", "orders.>"]
publish_deny = [">"]

[monitor]
port = 0

[console]
identity = "console"
"""

class Clients:
    """nats-py clients that stay connected while the browser looks: their own asyncio loop, in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.connections: list = []

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(asyncio.wait_for(coroutine, timeout), self.loop).result(timeout + 5)

    def connect(self, url: str, name: str) -> Any:
        nc = self.run(nats.connect(url, name=name, allow_reconnect=False))
        self.connections.append(nc)
        return nc

    def stop(self) -> None:
        async def close() -> None:
            for nc in self.connections:
                if not nc.is_closed:
                    await nc.close()

        try:
            self.run(close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)


#: The /eventz the page is given in the operator's test: the real one, with
#: the store's state the test says.
FAKE_EVENTZ = """
window.fetch = ((real) => async (path, options) => {
  const response = await real(path, options);
  if (path !== "/eventz" || !window.eventzChanges) return response;
  const eventz = await response.json();
  eventz.store = window.eventzChanges.store;
  return new Response(JSON.stringify(eventz), { status: 200, headers: { "content-type": "application/json" } });
})(window.fetch);
1
"""

#: The texts of a column of the connections table, by its heading.
COLUMN = """
(() => {{
  const headings = [...document.querySelectorAll('#conns thead th')].map((th) => th.textContent);
  const i = headings.indexOf({});
  return [...document.querySelectorAll('#conns tbody tr')].map((row) => row.cells[i].textContent);
}})()
"""


def keep(shot: str, name: str) -> None:
    artefacts = os.environ.get("EVENTSVC_ARTEFACTS")
    if artefacts:
        os.makedirs(artefacts, exist_ok=True)
        shutil.copy(shot, os.path.join(artefacts, name))


class ConsoleInBrowserTests(TestCase):
    timeout = 180

    async def start_console(self, extra: str = "") -> Any:
        """
        A running eventsvc with the console (and the C{extra} sections), and a
        browser; (browser, monitor port, NATS URL, folder).
        """
        if nats is None:
            process.require("nats-py (pip install nats-py)")
        browser = Browser()  # (skips, or fails under CI, without chromium)
        folder = self.mktemp()
        os.makedirs(folder)
        server = process.eventsvc(process.write_config(os.path.join(folder, "console.toml"), CONFIG.replace("{closed}", str(process.closed_port(self).port)) + extra), expect=("service", "websocket"))
        await process.started(self, server)
        output = await threads.deferToThread(server.wait_output, "monitor listening for HTTP")
        monitor = int(_MONITOR.search(output).group(1))
        await threads.deferToThread(browser.start)
        self.addCleanup(browser.stop)
        return browser, monitor, "nats://127.0.0.1:{}".format(server.ports["service"]), folder

    async def test_what_an_operator_sees(self) -> None:
        browser, monitor, nats_url, folder = await self.start_console()
        clients = Clients()
        self.addCleanup(clients.stop)

        def before_the_page() -> None:
            alpha, bravo, charlie = (clients.connect(nats_url, name) for name in ("alpha", "bravo", "charlie"))
            clients.run(alpha.subscribe("orders.>"))

            async def traffic() -> dict:
                for i in range(50):
                    await bravo.publish("orders.eu", b"order %d" % i)
                await bravo.flush()
                ack = await charlie.request("event.event_feed", b"not json", timeout=10)
                # Kept, and then its handler's target refuses it: feed is down.
                kept = await charlie.request("event.compliance_ingest", eventsamples.payload("compliance_ingest", "for-feed"), timeout=10)
                await charlie.close()
                return json.loads(ack.data), json.loads(kept.data)

            ack, kept = clients.run(traffic())
            self.assertFalse(ack["success"], ack)
            self.assertTrue(kept["success"], kept)
            time.sleep(3)  # (so that it is a second or more in the past)

        await threads.deferToThread(before_the_page)

        def look() -> str:
            browser.go("http://127.0.0.1:{}/".format(monitor))
            # The charts open with what happened before the page was opened: the
            # 50 messages in are in the history.
            browser.wait_for("typeof charts !== 'undefined' && charts !== null && charts.msgs.data[0].length >= 3"
                             " && Math.max(...charts.msgs.data[1]) > 0 && Math.max(...charts.events.data[2]) > 0", timeout=5)
            # The connections at once, as many as the header counts.
            browser.wait_for("document.querySelectorAll('#conns tbody tr').length === 3"
                             " && document.getElementById('connections').textContent === '3'", timeout=5)
            self.assertEqual(browser.evaluate(COLUMN.format('"name"')), ["alpha", "bravo", "eventsvc console"])
            # Sorted by a click on a heading, the other way by a second; numbers biggest first.
            browser.click("#conns th[data-key=name]")
            self.assertEqual(browser.evaluate(COLUMN.format('"name"')), ["alpha", "bravo", "eventsvc console"])
            browser.click("#conns th[data-key=name]")
            self.assertEqual(browser.evaluate(COLUMN.format('"name"')), ["eventsvc console", "bravo", "alpha"])
            browser.click("#conns th[data-key=in_msgs]")
            self.assertEqual(browser.evaluate(COLUMN.format('"msgs in"'))[0], "50")
            self.assertEqual(browser.evaluate(COLUMN.format('"name"'))[0], "bravo")
            # Filtered as one types.
            browser.type("#conns-filter", "brav")
            self.assertEqual(browser.evaluate(COLUMN.format('"name"')), ["bravo"])
            self.assertEqual(browser.text("#conns-count"), "1 of 3 open connections shown")
            browser.type("#conns-filter", "")
            # The closed ones on their tab, with why they closed.
            browser.click("#conns-closed")
            browser.wait_for("document.querySelector('#conns tbody').innerText.includes('charlie')")
            self.assertIn("Client Closed", browser.evaluate(COLUMN.format('"reason"')))
            self.assertNotIn("alpha", browser.evaluate(COLUMN.format('"name"')))
            browser.click("#conns-open")
            browser.wait_for("document.querySelectorAll('#conns tbody tr').length === 3")
            # Why events were refused.
            browser.wait_for("!document.getElementById('refusals').hidden")
            self.assertEqual(browser.text("#refusals tbody"), "invalid\t1")
            self.assertEqual(browser.text("#events-refused"), "1")
            # The version.
            self.assertIn("eventsvc {} (".format(__version__), browser.text("#version"))
            self.assertIn("NATS 2.9.10", browser.text("#version"))
            # The tail: what it watched, then cleared for another subject.
            browser.wait_for("document.getElementById('ws-state').textContent === 'connected'")
            browser.type("#tail-subject", "orders.>")
            browser.click("#tail-start")
            return browser.wait_for("document.getElementById('tail-status').textContent")

        self.assertEqual(await threads.deferToThread(look), "Watching orders.>.")

        def down() -> str:
            bravo = clients.connections[1]
            deadline = time.monotonic() + 20
            # (The page's SUB is in flight: publish until the tail shows it.)
            while not browser.evaluate("document.getElementById('tail-rows').rows.length > 0"):
                self.assertLess(time.monotonic(), deadline, "the tail showed nothing")
                clients.run(bravo.publish("orders.us", b"for the tail"))
                time.sleep(0.2)
            self.assertEqual(browser.evaluate("document.getElementById('tail-rows').rows[0].cells[1].textContent"), "orders.us")
            browser.type("#tail-subject", "event.>")
            self.assertEqual(browser.evaluate("document.getElementById('tail-start').click(); document.getElementById('tail-rows').rows.length"), 0)
            # A handler whose target is down (the server's /eventz says so) is
            # red, with since when and why.
            browser.wait_for("document.querySelector('#events-handlers tr.down') !== null")
            rows = browser.evaluate("[...document.querySelectorAll('#events-handlers tbody tr')].map((r) => [r.cells[0].textContent, r.cells[1].textContent, r.className])")
            [down] = [r for r in rows if r[2] == "down"]
            self.assertEqual(down[0], "feed")
            self.assertRegex(down[1], r"^down since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d: ConnectionRefusedError")
            self.assertEqual(len(rows), 3)
            self.assertEqual(browser.evaluate("getComputedStyle(document.querySelector('#events-handlers td.down')).color"), "rgb(198, 40, 40)")
            # The store's states are given to the page (a full or read-only disk
            # is test_operations' and test_store's): memory only is a warning.
            browser.evaluate(FAKE_EVENTZ)
            browser.evaluate("window.eventzChanges = {store: {kind: 'memory', path: null, state: 'ok', error: null}}; 1")
            browser.wait_for("document.getElementById('store').className === 'store warn'")
            self.assertIn("Events kept in memory only", browser.text("#store"))
            # A store that cannot be written is red, with its error.
            browser.evaluate("window.eventzChanges.store = {kind: 'file', path: '/var/lib/eventsvc', state: 'read-only', error: 'Read-only file system'}; 1")
            browser.wait_for("document.getElementById('store').className === 'store bad'")
            self.assertEqual(browser.text("#store"), "Events kept in /var/lib/eventsvc · store read-only: Read-only file system")
            return browser.screenshot(os.path.join(folder, "console-operator.png"))

        shot = await threads.deferToThread(down)
        keep(shot, "console-operator.png")

    async def test_jetstream_streams_and_consumers(self) -> None:
        """Streams and a consumer made through the API are listed, with the usage and the API's counts."""
        from eventsvc.test.test_jsops import make_orders_and_mem

        # (Events on the spool: with the default log the events stream EVENTS and its
        # handlers' consumers would be listed too, issue 29; test_eventlog covers those.)
        browser, monitor, nats_url, folder = await self.start_console("[jetstream]\nstore_dir = \"js\"\n[events]\nlog = \"spool\"\n")
        await threads.deferToThread(make_orders_and_mem, int(nats_url.rpartition(":")[2]))

        def look() -> str:
            browser.go("http://127.0.0.1:{}/".format(monitor))
            browser.wait_for("document.querySelectorAll('#js-streams tbody tr').length === 2")
            self.assertEqual(browser.evaluate("document.getElementById('jetstream').dataset.state"), "on")
            rows = browser.evaluate("[...document.querySelectorAll('#js-streams tbody tr')].map((r) => [...r.cells].map((c) => c.textContent))")
            self.assertEqual([r[:8] for r in rows], [
                ["MEM", "memory", "mem", "1", "20 B", "1", "1", "0"],
                ["ORDERS", "file", "orders.>", "5", rows[1][4], "1", "5", "1"],
            ])
            self.assertRegex(rows[1][8], r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
            consumers = browser.evaluate("[...document.querySelectorAll('#js-consumers tbody tr')].map((r) => [...r.cells].map((c) => c.textContent))")
            self.assertEqual([c[:10] for c in consumers], [["ORDERS", "proc", "durable pull", "explicit", "3", "1", "0", "0", "2", "1"]])
            summary = browser.text("#js-summary")
            self.assertTrue(summary.startswith("2 streams · 1 consumers · 6 messages · "), summary)
            self.assertRegex(summary, r" · API \d+ requests, 0 errors$")
            return browser.screenshot(os.path.join(folder, "console-jetstream.png"))

        keep(await threads.deferToThread(look), "console-jetstream.png")

    async def test_jetstream_mirror_and_source_lag(self) -> None:
        """A mirror and a source are listed with their lag and when their origin last spoke; one whose origin is missing says why."""
        from eventsvc.test.test_jsops import api, make_orders_and_mem

        browser, monitor, nats_url, folder = await self.start_console("[jetstream]\nstore_dir = \"js\"\n")
        port = int(nats_url.rpartition(":")[2])

        def make() -> None:
            make_orders_and_mem(port)
            for config in ({"name": "COPY", "mirror": {"name": "ORDERS"}},
                           {"name": "ALL", "sources": [{"name": "ORDERS", "filter_subject": "orders.new"}, {"name": "NOPE"}]}):
                answer = api(port, "$JS.API.STREAM.CREATE." + config["name"], config)
                assert "error" not in answer, answer

        await threads.deferToThread(make)

        def look() -> str:
            browser.go("http://127.0.0.1:{}/".format(monitor))
            browser.wait_for("document.querySelectorAll('#js-origins tbody tr').length === 3")
            browser.wait_for("[...document.querySelectorAll('#js-origins tbody tr')].every((r) => r.cells[4].textContent !== 'never' || r.cells[2].textContent === 'NOPE')")
            rows = browser.evaluate("[...document.querySelectorAll('#js-origins tbody tr')].map((r) => [r.className, ...[...r.cells].map((c) => c.textContent)])")
            self.assertEqual([r[:5] + [r[6]] for r in rows], [
                ["", "ALL", "source", "ORDERS", "0", ""],
                ["bad", "ALL", "source", "NOPE", "0", "stream not found"],
                ["", "COPY", "mirror", "ORDERS", "0", ""],
            ])
            self.assertRegex(rows[0][5], r"^\d+\.\d s ago$")
            self.assertEqual(rows[1][5], "never")
            return browser.screenshot(os.path.join(folder, "console-jetstream-lag.png"))

        keep(await threads.deferToThread(look), "console-jetstream-lag.png")

    async def test_live_tail_and_counters(self) -> None:
        browser, monitor, nats_url, folder = await self.start_console()

        def open_console() -> None:
            browser.go("http://127.0.0.1:{}/".format(monitor))
            browser.wait_for("document.getElementById('ws-state').textContent === 'connected'")
            browser.wait_for("document.getElementById('monitor-state').textContent === 'ok'")
            # What the identity may not watch is refused, and the page says so.
            browser.evaluate("document.getElementById('tail-subject').value = 'secret.>'; document.getElementById('tail-start').click(); 1")
            browser.wait_for("/Permissions Violation for Subscription to \"secret.>\"/.test(document.getElementById('tail-status').textContent)")
            browser.evaluate("document.getElementById('tail-subject').value = 'console.>'; document.getElementById('tail-start').click(); 1")
            browser.wait_for("document.getElementById('tail-status').textContent === 'Watching console.>.'")
            self.assertEqual(browser.evaluate("document.getElementById('events-accepted').textContent"), "0")
            # Without [jetstream], its section says so and lists nothing.
            browser.wait_for("document.getElementById('jetstream').dataset.state === 'off'")
            self.assertEqual(browser.text("#js-summary"), "JetStream is off on this server (no [jetstream] section).")
            self.assertEqual(browser.evaluate("getComputedStyle(document.getElementById('js-streams')).display"), "none")

        await threads.deferToThread(open_console)

        async def publish() -> dict:
            nc = await nats.connect(nats_url)
            try:
                # (The page's SUB is in flight: publish until the tail shows it.)
                await nc.publish("console.demo", b"hello from nats-py")
                await nc.flush()
                ack = await nc.request("event.event_feed", eventsamples.payload("event_feed", "evt-console-1"), timeout=10)
                return json.loads(ack.data)
            finally:
                await nc.close()

        ack = await threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(publish(), 30)))
        self.assertTrue(ack["success"], ack)

        def watch() -> str:
            browser.wait_for("document.getElementById('tail-rows').innerText.includes('hello from nats-py')")
            browser.wait_for("document.getElementById('events-accepted').textContent === '1'")
            browser.wait_for("document.getElementById('events-types').innerText.includes('event_feed')")
            # A second for the charts to have two samples.
            browser.wait_for("document.querySelectorAll('#chart-msgs canvas').length > 0")
            return browser.screenshot(os.path.join(folder, "console.png"))

        shot = await threads.deferToThread(watch)
        with open(shot, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        keep(shot, "console.png")
        rows = await threads.deferToThread(browser.evaluate, "document.getElementById('tail-rows').rows[0].cells[1].textContent")
        self.assertEqual(rows, "console.demo")
