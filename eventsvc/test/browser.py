"""
A real browser for tests: Debian's headless Chromium, driven over the
Chrome DevTools protocol (a WebSocket; L{wsframes.RawClient} speaks it).
Blocking: run it in a thread (deferToThread) from a Twisted test.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any, Optional

from eventsvc.test import process, wsframes

#: As the machine's notes say: without the background-networking flags,
#: Chromium tries (and fails) to reach Google's hosts at every start.
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1100", "--remote-debugging-port=0",
)


class Browser:
    """One Chromium process and one page in it."""

    def __init__(self) -> None:
        self.binary = process.require("chromium")
        self.profile = tempfile.mkdtemp(prefix="eventsvc-chromium-")
        self.process: Optional[subprocess.Popen] = None
        self.page: Optional[wsframes.RawClient] = None
        self._id = 0

    def start(self, timeout: float = 30.0) -> None:
        self.process = subprocess.Popen(
            [self.binary, *FLAGS, "--user-data-dir=" + self.profile, "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )
        active = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + timeout
        while not (os.path.exists(active) and open(active).read().count("\n") >= 1):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(open(active).read().split("\n")[0])
        browser = self._connect(port, open(active).read().split("\n")[1])
        target = self._call(browser, "Target.createTarget", url="about:blank")["targetId"]
        browser.close()
        self.page = self._connect(port, "/devtools/page/" + target)
        self.call("Page.enable")
        self.call("Runtime.enable")

    def _connect(self, port: int, path: str) -> wsframes.RawClient:
        return wsframes.RawClient(port, path=path, timeout=30)

    def _call(self, client: wsframes.RawClient, method: str, **params: Any) -> Any:
        self._id += 1
        ident = self._id
        client.send(json.dumps({"id": ident, "method": method, "params": params}).encode("utf-8"), wsframes.TEXT)
        while True:
            for op, _, _, payload in client.frames(count=1, timeout=30):
                if op != wsframes.TEXT:
                    continue
                answer = json.loads(payload)
                if answer.get("id") == ident:
                    if "error" in answer:
                        raise AssertionError("{}: {}".format(method, answer["error"]))
                    return answer.get("result", {})

    def call(self, method: str, **params: Any) -> Any:
        assert self.page is not None
        return self._call(self.page, method, **params)

    def go(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError("{}: {}".format(expression, result["exceptionDetails"]))
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """Click the element C{selector} (a CSS selector) names."""
        self.evaluate("document.querySelector({}).click(); 1".format(json.dumps(selector)))

    def type(self, selector: str, text: str) -> None:
        """Put C{text} in the input C{selector} names, as typing it would (an input event)."""
        self.evaluate(
            "(() => {{ const e = document.querySelector({}); e.value = {}; e.dispatchEvent(new Event('input')); return 1; }})()".format(
                json.dumps(selector), json.dumps(text)
            )
        )

    def text(self, selector: str) -> str:
        """The text the element C{selector} names shows."""
        return self.evaluate("document.querySelector({}).innerText".format(json.dumps(selector)))

    def wait_for(self, expression: str, timeout: float = 20.0) -> Any:
        """Evaluate C{expression} until it is true; its last value otherwise fails the test."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            try:
                value = self.evaluate(expression)
            except AssertionError:
                value = None
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError("still false after {}s: {} (page text: {!r})".format(
            timeout, expression, (self.evaluate("document.body ? document.body.innerText : ''") or "")[:2000]))

    def screenshot(self, path: str) -> str:
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        return path

    def stop(self) -> None:
        if self.page is not None:
            self.page.close()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)
