"""
JetStream through real clients, against a real eventsvc process and, since
every scene is a contract, the same scenes against the reference
C{nats-server -js}: nats-py (in this process), nats.go's js and kv
(interop/go/jsinterop.go, Debian's nats.go 1.22.1) and nats.js v3's
@nats-io/jetstream and @nats-io/kv (interop/js/jsinterop.mjs).

Each client plays each scene of L{jsscenes} (publish with and without
Nats-Msg-Id, pull fetches in batches with acks, a push consumer with a queue
group, nak and term, redelivery after ack_wait, KV put/get/watch) and must
report L{jsscenes.EXPECTED}.  The eventsvc tests skip, with the reason,
while this eventsvc has no JetStream (no eventsvc.jetstream.engine); a
missing client skips too, and fails under EVENTSVC_REQUIRE_INTEROP (CI).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from typing import Any, Callable, Dict, Optional

from twisted.internet import threads
from twisted.trial.unittest import SkipTest, TestCase

from eventsvc.test import jsscenes, process

try:
    import nats
except ImportError:  # pragma: no cover - the test extra installs it
    nats = None  # type: ignore[assignment]


def missing(message: str) -> None:
    """A client is not installed: skip, or fail under CI."""
    if os.environ.get("EVENTSVC_REQUIRE_INTEROP"):
        raise AssertionError(message)
    raise SkipTest(message)


def jetstream_missing() -> Optional[str]:
    """Why this eventsvc cannot serve JetStream yet, or None when it can."""
    try:
        found = importlib.util.find_spec("eventsvc.jetstream.engine")
    except ModuleNotFoundError:  # no eventsvc.jetstream package installed at all
        found = None
    if found is None:
        return "this eventsvc has no JetStream yet (eventsvc.jetstream.engine is missing)"
    return None


def eventsvc_server(store: str) -> process.ServerProcess:
    """eventsvc with a [jetstream] file store in C{store} (its config file beside it)."""
    reason = jetstream_missing()
    if reason:
        raise SkipTest(reason)
    config = store + ".toml"
    if not os.path.exists(config):
        process.write_config(config, '[service]\nhost = "127.0.0.1"\nport = 0\n[jetstream]\nstore_dir = "{}"\n'
                             .format(store))
    return process.eventsvc(config)


_go_binary: Dict[str, str] = {}


def go_program() -> str:
    """
    interop/go/jsinterop, built with interop/go/build (Debian's nats.go
    sources, no module proxy) once per test run when make has not built it
    from the current .go files (jsinterop.go, objinterop.go).
    """
    source = os.path.join(process.source_tree(), "interop", "go")
    built = os.path.join(source, "jsinterop")
    newest = max(os.path.getmtime(os.path.join(source, name)) for name in os.listdir(source) if name.endswith(".go"))
    if os.access(built, os.X_OK) and os.path.getmtime(built) >= newest:
        return built
    if "path" in _go_binary:
        return _go_binary["path"]
    if shutil.which("go") is None or not os.path.isdir("/usr/share/gocode/src/github.com/nats-io/nats.go"):
        missing("nats.go is not installed (apt-get install golang-go golang-github-nats-io-go-nats-dev)")
    out = os.path.join(tempfile.mkdtemp(prefix="jsinterop-"), "jsinterop")
    done = subprocess.run([os.path.join(source, "build"), out], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise AssertionError("interop/go/build failed:\n" + done.stdout + done.stderr)
    _go_binary["path"] = out
    return out


def js_dir() -> str:
    """interop/js with @nats-io/jetstream installed (make js-deps runs npm ci there)."""
    path = os.path.join(process.source_tree(), "interop", "js")
    for package in ("jetstream", "kv", "transport-node"):
        if not os.path.isdir(os.path.join(path, "node_modules", "@nats-io", package)):
            missing("nats.js is not installed: npm ci --prefix interop/js")
    return path


def run_json(argv: list, cwd: Optional[str] = None) -> Any:
    """Run a client program; its last line is {"scene", "result"} or {"scene", "error"}."""
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise AssertionError("{} failed ({}):\n{}{}".format(argv, done.returncode, done.stdout, done.stderr))
    answer = json.loads(lines[-1])
    if "error" in answer:
        raise AssertionError("{} scene {}: {}".format(os.path.basename(argv[0]), answer["scene"], answer["error"]))
    return answer["result"]


class _Scenes(TestCase):
    """Every scene with every client; a subclass says how to start its server."""

    timeout = 120

    async def start_server(self) -> str:
        """Start the server under test for this test alone: its URL."""
        raise NotImplementedError

    async def _check(self, scene: str, play: Callable[[str], Any]) -> None:
        url = await self.start_server()
        got = await threads.deferToThread(play, url)
        self.assertEqual(got, jsscenes.EXPECTED[scene], scene)

    async def natspy(self, scene: str) -> None:
        if nats is None:
            missing("nats-py is not installed (pip install nats-py)")
        await self._check(scene, lambda url: asyncio.run(asyncio.wait_for(jsscenes.play(url, scene, "py"), 60)))

    async def go(self, scene: str) -> None:
        program = go_program()
        await self._check(scene, lambda url: run_json([program, url, scene, "go"]))

    async def js(self, scene: str) -> None:
        cwd = js_dir()
        node = process.require("node")
        await self._check(scene, lambda url: run_json([node, "--no-warnings", "jsinterop.mjs", url, scene, "js"], cwd=cwd))

    async def test_natspy_publish(self) -> None:
        """nats-py: PubAcks with and without Nats-Msg-Id; the duplicate is flagged and not stored."""
        await self.natspy("publish")

    async def test_natspy_pull(self) -> None:
        """nats-py: a durable pull consumer fetches 25 messages 10 at a time and acks them."""
        await self.natspy("pull")

    async def test_natspy_queue(self) -> None:
        """nats-py: two push subscribers in one deliver group share the messages, each once."""
        await self.natspy("queue")

    async def test_natspy_acks(self) -> None:
        """nats-py: nak brings a message back (delivery count 2), term and ack do not."""
        await self.natspy("acks")

    async def test_natspy_redelivery(self) -> None:
        """nats-py: a message not acked within ack_wait comes again."""
        await self.natspy("redelivery")

    async def test_natspy_kv(self) -> None:
        """nats-py: KV put, get, history and a watcher that sees puts and a delete."""
        await self.natspy("kv")

    async def test_go_publish(self) -> None:
        """nats.go: the publish scene."""
        await self.go("publish")

    async def test_go_pull(self) -> None:
        """nats.go: the pull scene."""
        await self.go("pull")

    async def test_go_queue(self) -> None:
        """nats.go: the queue group scene."""
        await self.go("queue")

    async def test_go_acks(self) -> None:
        """nats.go: the nak/term/ack scene."""
        await self.go("acks")

    async def test_go_redelivery(self) -> None:
        """nats.go: the ack_wait scene."""
        await self.go("redelivery")

    async def test_go_kv(self) -> None:
        """nats.go: the KV scene."""
        await self.go("kv")

    async def test_js_publish(self) -> None:
        """nats.js v3: the publish scene."""
        await self.js("publish")

    async def test_js_pull(self) -> None:
        """nats.js v3: the pull scene."""
        await self.js("pull")

    async def test_js_queue(self) -> None:
        """nats.js v3: the queue group scene."""
        await self.js("queue")

    async def test_js_acks(self) -> None:
        """nats.js v3: the nak/term/ack scene."""
        await self.js("acks")

    async def test_js_redelivery(self) -> None:
        """nats.js v3: the ack_wait scene."""
        await self.js("redelivery")

    async def test_js_kv(self) -> None:
        """nats.js v3: the KV scene."""
        await self.js("kv")


class EventsvcJetStreamTests(_Scenes):
    """The scenes against eventsvc with a [jetstream] section (a file store)."""

    async def start_server(self) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        port = await process.started(self, eventsvc_server(os.path.join(folder, "jetstream")))
        return "nats://127.0.0.1:%d" % port


class ReferenceJetStreamTests(_Scenes):
    """The same scenes against nats-server -js: the contract the eventsvc tests hold us to."""

    async def start_server(self) -> str:
        port = await process.started(self, process.nats_server("-js", "-sd", os.path.abspath(self.mktemp())))
        return "nats://127.0.0.1:%d" % port


async def replay_original(url: str) -> Dict[str, Any]:
    """
    nats-py: three messages stored 0.6 s and 0.3 s apart, then a push
    consumer with replay original from the start: the gaps between their
    stored times, the gaps between their arrivals, and how long a fourth
    message published after the replay took to arrive (seconds).
    """
    import time

    from nats.js.api import ConsumerConfig, DeliverPolicy, ReplayPolicy

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="REPLAY", subjects=["replay.>"])
        for data, pause in ((b"m1", 0.6), (b"m2", 0.3), (b"m3", 0.0)):
            await js.publish("replay.x", data)
            await asyncio.sleep(pause)
        await asyncio.sleep(0.5)  # the replay must not start on the last gap
        arrived: list = []
        done = asyncio.Event()

        async def got(msg: Any) -> None:
            arrived.append((msg.data, time.monotonic(), msg.metadata.timestamp.timestamp()))
            if len(arrived) in (3, 4):
                done.set()

        await js.subscribe("replay.>", stream="REPLAY", cb=got, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, replay_policy=ReplayPolicy.ORIGINAL))
        await asyncio.wait_for(done.wait(), 10)
        done.clear()
        # (nats-server leaves replay when its loop next finds nothing to send;
        # a message stored before then is paced too: 1 run in 4 of 1.4 s here.)
        await asyncio.sleep(0.3)
        sent = time.monotonic()
        await js.publish("replay.x", b"m4")
        await asyncio.wait_for(done.wait(), 10)
        return {
            "data": [a[0] for a in arrived],
            "stored_gaps": [round(b[2] - a[2], 3) for a, b in zip(arrived[:2], arrived[1:3])],
            "arrival_gaps": [round(b[1] - a[1], 3) for a, b in zip(arrived[:2], arrived[1:3])],
            "live_latency": round(arrived[3][1] - sent, 3),
        }
    finally:
        await nc.close()


class ReplayOriginalTests(TestCase):
    """
    replay_policy original with nats-py's push consumer, against eventsvc
    and nats-server -js in turn: both pace the stored messages as they
    were stored and send a new one at once.
    """

    timeout = 60
    #: Seconds an arrival gap may be off its stored gap (timers, a busy machine).
    TOLERANCE = 0.15

    async def test_paced_like_nats_server(self) -> None:
        if nats is None:
            missing("nats-py is not installed (pip install nats-py)")
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        ours = await process.started(self, eventsvc_server(os.path.join(folder, "jetstream")))
        theirs = await process.started(self, process.nats_server("-js", "-sd", os.path.join(folder, "reference")))
        results = {}
        for name, port in (("eventsvc", ours), ("nats-server", theirs)):
            url = "nats://127.0.0.1:%d" % port
            results[name] = await threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(replay_original(url), 30)))
        for name, got in results.items():
            self.assertEqual(got["data"], [b"m1", b"m2", b"m3", b"m4"], name)
            for stored, arrival in zip(got["stored_gaps"], got["arrival_gaps"]):
                self.assertGreater(stored, 0.25, (name, got))
                self.assertLess(abs(arrival - stored), self.TOLERANCE, (name, got))
            self.assertLess(got["live_latency"], self.TOLERANCE, (name, got))
        for ours_gap, theirs_gap in zip(results["eventsvc"]["arrival_gaps"], results["nats-server"]["arrival_gaps"]):
            self.assertLess(abs(ours_gap - theirs_gap), 2 * self.TOLERANCE, results)


del _Scenes  # only its subclasses run
