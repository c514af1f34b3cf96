"""
The live console in a real browser: headless Chromium (Debian's) opens the
page a running eventsvc serves, the page connects over NATS-over-WebSocket
as the console identity, shows a message nats-py publishes in its live
tail, and its event counters move when an event is accepted.  A subject the
identity may not watch is refused in the page.  The screenshot is kept:
$EVENTSVC_ARTEFACTS/console.png when that is set, else in the test's
temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil

from twisted.internet import threads
from twisted.trial.unittest import TestCase

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
feed = "python:eventsvc.events.handlers:log_event"
cfgingest = "python:eventsvc.events.handlers:log_event"
event_feed = "python:eventsvc.events.handlers:log_event"

[websocket]
port = 0
no_tls = true

[[websocket.identities]]
name = "console"
token = "FAKE-console-token"
subscribe_allow = ["console.>", "event.>"]
publish_deny = [">"]

[monitor]
port = 0

[console]
identity = "console"
"""

class ConsoleInBrowserTests(TestCase):
    timeout = 180

    async def test_live_tail_and_counters(self) -> None:
        if nats is None:
            process.require("nats-py (pip install nats-py)")
        browser = Browser()  # (skips, or fails under CI, without chromium)
        folder = self.mktemp()
        os.makedirs(folder)
        server = process.eventsvc(process.write_config(os.path.join(folder, "console.toml"), CONFIG), expect=("service", "websocket"))
        await process.started(self, server)
        output = await threads.deferToThread(server.wait_output, "monitor listening for HTTP")
        monitor = int(_MONITOR.search(output).group(1))
        nats_url = "nats://127.0.0.1:{}".format(server.ports["service"])

        await threads.deferToThread(browser.start)
        self.addCleanup(browser.stop)

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
        artefacts = os.environ.get("EVENTSVC_ARTEFACTS")
        if artefacts:
            os.makedirs(artefacts, exist_ok=True)
            shutil.copy(shot, os.path.join(artefacts, "console.png"))
        rows = await threads.deferToThread(browser.evaluate, "document.getElementById('tail-rows').rows[0].cells[1].textContent")
        self.assertEqual(rows, "console.demo")
