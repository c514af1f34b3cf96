"""
The crash drill (issue 28): while nats-py publishes 100,000 messages to a
file-backed stream, each waiting for its PubAck, and a durable pull
consumer takes them and acks each with ack_sync, the server is killed with
SIGKILL at a random moment and started again on the same store.  Then:

  - every message whose PubAck the publisher had is in the stream;
  - the durable consumer delivers again each stored message whose ack was
    not confirmed, and none whose ack_sync had returned.

A publish or an ack in flight at the kill may land either way and is not
held against the server.  Three rounds (each a fresh store) per server:
nats-server -js for comparison and eventsvc under each interpreter.

    python bench/jscrash.py [--messages 100000] [--rounds 3] [--interpreters PYTHON ...] [--only nats-server|eventsvc]

It prints what it found; it passes or fails nothing (exit status 0), but a
line per round says LOST / REDELIVERED-ACKED / NOT-REDELIVERED counts, which
must all be 0.  A round takes about a minute (ack_wait is 5 s for the
redelivery after the restart).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import time
from typing import Dict, List, Optional, Set

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from eventsvc.test import process  # noqa: E402
from events import interpreters  # noqa: E402

_READY_NATS = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
_READY_EVENTSVC = re.compile(r"listening for NATS clients on [\d.]+:(\d+)")
STREAM, SUBJECT, DURABLE = "DRILL", "drill.x", "drill"
PUBLISHERS = 32  # concurrent publishers, each one PubAck at a time
ACK_WAIT = 5.0


class Server:
    """A server on a fixed port and store, which can be killed and started again."""

    def __init__(self, python: Optional[str], directory: str) -> None:
        self.python, self.directory = python, directory
        self.port = process.free_port()
        self.proc: Optional[process.ServerProcess] = None

    def start(self) -> None:
        store = os.path.join(self.directory, "store")
        if self.python is None:
            self.proc = process.ServerProcess(
                ["nats-server", "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(self.port)], _READY_NATS)
        else:
            config = process.write_config(os.path.join(self.directory, "drill.toml"), (
                '[service]\nhost = "127.0.0.1"\nport = {}\n[jetstream]\nstore_dir = "{}"\n'
            ).format(self.port, store))
            env = dict(os.environ)
            env.pop("PYTHONPATH", None)
            if os.path.abspath(self.python).startswith(ROOT + os.sep):
                env["PYTHONPATH"] = ROOT
            twistd = os.path.join(os.path.dirname(self.python), "twistd")
            self.proc = process.ServerProcess(
                [twistd, "-n", "--pidfile=", "eventsvc", "--config", config], _READY_EVENTSVC, env)
        self.proc.start(timeout=120)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.stop(signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


class Ledger:
    """What the clients were told before the kill."""

    def __init__(self) -> None:
        self.published: Set[int] = set()    # PubAck received
        self.publishing: Set[int] = set()   # sent, no PubAck yet (either way)
        self.acked: Set[int] = set()        # ack_sync returned
        self.acking: Set[int] = set()       # ack sent, not confirmed (either way)
        self.delivered: Set[int] = set()


async def before_kill(url: str, messages: int, ledger: Ledger, killed: asyncio.Event) -> None:
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    async def quiet(e: Exception) -> None:
        pass

    nc = await nats.connect(url, error_cb=quiet, allow_reconnect=False)
    js = nc.jetstream(timeout=10)
    await js.add_stream(name=STREAM, subjects=[SUBJECT])
    psub = await js.pull_subscribe(SUBJECT, durable=DURABLE, stream=STREAM,
                                   config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT))
    numbers = iter(range(messages))

    async def publisher() -> None:
        for i in numbers:
            if killed.is_set():
                return
            ledger.publishing.add(i)
            try:
                await js.publish(SUBJECT, b"%d" % i)
            except Exception:
                return
            ledger.publishing.discard(i)
            ledger.published.add(i)

    async def consumer() -> None:
        while not killed.is_set():
            try:
                msgs = await psub.fetch(100, timeout=1)
            except Exception:
                if killed.is_set():
                    return
                continue
            for msg in msgs:
                i = int(msg.data)
                ledger.delivered.add(i)
                ledger.acking.add(i)
                try:
                    await msg.ack_sync(timeout=5)
                except Exception:
                    return
                ledger.acking.discard(i)
                ledger.acked.add(i)

    tasks = [asyncio.ensure_future(publisher()) for _ in range(PUBLISHERS)] + [asyncio.ensure_future(consumer())]
    await killed.wait()
    await asyncio.wait(tasks, timeout=15)
    for task in tasks:
        task.cancel()
    try:
        await nc.close()
    except Exception:
        pass


async def after_restart(url: str) -> Dict[str, list]:
    """What the stream holds, and what the durable consumer delivers (acking each), once nothing more comes."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    nc = await nats.connect(url)
    js = nc.jetstream(timeout=10)
    began = time.monotonic()
    info = await js.stream_info(STREAM)
    stored: List[int] = []
    reader = await js.pull_subscribe(SUBJECT, stream=STREAM, config=ConsumerConfig(
        ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=60))
    while len(stored) < info.state.messages:
        try:
            stored += [int(m.data) for m in await reader.fetch(1000, timeout=2)]
        except Exception:
            break
    read = time.monotonic() - began
    durable = await js.pull_subscribe(SUBJECT, durable=DURABLE, stream=STREAM)
    again: List[int] = []
    quiet_since = time.monotonic()
    # Delivered-but-unacked messages come back after ack_wait: wait past it.
    while time.monotonic() - quiet_since < ACK_WAIT + 3:
        try:
            msgs = await durable.fetch(500, timeout=1)
        except Exception:
            continue
        if not msgs:
            # nats-py's fetch gives an empty list, not a timeout, when the last
            # fetch's late 408 (Request Timeout) comes first: quiet all the same.
            continue
        quiet_since = time.monotonic()
        for msg in msgs:
            again.append(int(msg.data))
            await msg.ack()
    await nc.flush()
    await nc.close()
    return {"stored": stored, "again": again, "seconds": [read, time.monotonic() - began - read]}


def drill_round(python: Optional[str], messages: int) -> str:
    directory = tempfile.mkdtemp(prefix="jscrash-")
    server = Server(python, directory)
    ledger = Ledger()
    try:
        server.start()
        url = "nats://127.0.0.1:%d" % server.port

        async def publish_and_kill() -> float:
            killed = asyncio.Event()
            work = asyncio.ensure_future(before_kill(url, messages, ledger, killed))
            # A random moment once publishing runs: after 1 to 6 s (or when done, if sooner).
            delay = random.uniform(1.0, 6.0)
            start = time.monotonic()
            while time.monotonic() - start < delay and len(ledger.published) < messages:
                await asyncio.sleep(0.05)
            at = time.monotonic() - start
            await asyncio.get_running_loop().run_in_executor(None, server.kill)
            killed.set()
            await work
            return at

        at = asyncio.run(publish_and_kill())
        restart = time.monotonic()
        server.start()
        restart = time.monotonic() - restart
        seen = asyncio.run(after_restart(url))
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
    stored = set(seen["stored"])
    again = set(seen["again"])
    lost = ledger.published - stored
    redelivered_acked = again & ledger.acked
    # Stored and not confirmed acked must come again (an ack in flight may have landed).
    not_redelivered = (stored - ledger.acked - ledger.acking) - again
    duplicates = len(seen["stored"]) - len(stored)
    return ("killed at {:.1f}s: {:,} PubAcks, {:,} acks confirmed ({:,} + {:,} in flight); stored {:,} "
            "(dup {:,}); redelivered {:,}: LOST {:,}  REDELIVERED-ACKED {:,}  NOT-REDELIVERED {:,}{}; "
            "restart {:.1f}s, read {:.1f}s, redelivery {:.1f}s").format(
        at, len(ledger.published), len(ledger.acked), len(ledger.publishing), len(ledger.acking), len(stored),
        duplicates, len(again), len(lost), len(redelivered_acked), len(not_redelivered),
        "" if not redelivered_acked else "  (e.g. {})".format(sorted(redelivered_acked)[:5]),
        restart, *seen["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--interpreters", nargs="*", help="interpreters whose twistd runs eventsvc")
    parser.add_argument("--only", choices=["nats-server", "eventsvc"])
    options = parser.parse_args()
    servers: List[tuple] = []
    if options.only != "eventsvc":
        servers.append(("nats-server", None))
    if options.only != "nats-server":
        for python in interpreters(options.interpreters):
            servers.append(("eventsvc " + ("pypy" if "pypy" in python else "cpython"), python))
    for name, python in servers:
        for n in range(options.rounds):
            try:
                print("{} round {}: {}".format(name, n + 1, drill_round(python, options.messages)), flush=True)
            except Exception as e:  # a server that does not start, a client that fails: say so, go on
                print("{} round {}: failed: {}".format(name, n + 1, str(e).strip().splitlines()[-1] if str(e) else repr(e)),
                      flush=True)


if __name__ == "__main__":
    main()
