"""
The event log's cost in one process: the dispatcher, one handler and its
log (the spool, or the stream EVENTS on a JetStream engine), on real
files under a temporary folder, driven by a fake clock; events published
on the broker with a reply subject, acknowledged, delivered to a target
that succeeds at once, and marked done.  CPU time (process_time: user
and system, the fsyncs' included) per event, the spool and the stream
alternately, best of the rounds; what C{bench/events.py} measures less
the sockets, the HTTP and the Go programs, so that the log's share shows.

    python bench/eventlog.py [--events 20000] [--rounds 5] [--inflight 64] [--batch 1 --batch 100]
    bench/eventlog.py --instructions [--events 2000]

With C{--instructions} each scene runs under cachegrind twice, with
C{--events} and with three times as many, and the difference of the
instructions counted (the program's, not the kernel's: the fsyncs are
not in it) is divided by the events between: instructions per event,
which a busy machine does not change.

It prints figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))


def event(i: int) -> bytes:
    """An event of the size the bench's Go producer sends (about 330 bytes)."""
    return json.dumps({
        "event_id": "6f1b2c3d-0000-4000-8000-%012d" % i,
        "type": {"name": "compliance_ingest"},
        "producer": {"id": "urn:chef:automate:svc:bench", "producer_name": "bench", "producer_type": "service", "tags": []},
        "tags": [], "published": "2026-12-07T01:00:00Z",
        "data": {"report_id": "r-%d" % i, "node": "node-%d" % (i % 100)},
    }).encode()


class Target:
    """Succeeds at once, one event or a batch."""

    batches = True

    def __init__(self) -> None:
        from twisted.internet.defer import succeed

        self._succeed = succeed
        self.events = 0

    def deliver(self, body: bytes) -> Any:
        self.events += 1
        return self._succeed(None)

    def deliver_batch(self, bodies: List[bytes]) -> Any:
        self.events += len(bodies)
        return self._succeed(None)


def scene(store: str, events: int, inflight: int, batch: int) -> float:
    """CPU seconds per event for C{events} through C{store} ("spool" or "stream")."""
    from twisted.internet.task import Clock

    from eventsvc.events import types
    from eventsvc.events.dispatch import EventDispatcher
    from eventsvc.events.handlers import DeadLetters, HandlerService
    from eventsvc.events.log import EventsJetStream, StreamLog
    from eventsvc.events.spool import Spool
    from eventsvc.jetstream.engine import JetStreamSettings
    from eventsvc.nats.server import Broker

    directory = tempfile.mkdtemp(prefix="eventlog-bench-")
    clock = Clock()
    broker = Broker(server_id="NBENCH")
    engine = None
    if store == "stream":
        engine = EventsJetStream(broker, JetStreamSettings(store_dir=os.path.join(directory, "js")), clock)
        log: Any = StreamLog(engine, ("feed",))
        engine.start()
    else:
        log = Spool(os.path.join(directory, "spool"))
    target = Target()
    handler = HandlerService("feed", target, clock, DeadLetters(os.path.join(directory, "dead.jsonl")),
                             rng=random.Random(7), batch_max=batch, batch_wait=0.005 if batch > 1 else 0.0)
    handler.startService()
    dispatcher = EventDispatcher(broker, types.Registry(), {"feed": handler}, events * 2, clock, spool=log)
    dispatcher.startService()
    acked = [0]
    broker.subscribe("ack.*", lambda subject, reply, body, headers: acked.__setitem__(0, acked[0] + 1))
    bodies = [event(i) for i in range(events)]
    gc.collect()
    started = time.process_time()
    for i in range(0, events, inflight):
        for body in bodies[i : i + inflight]:
            broker.publish("event.compliance_ingest", body, reply="ack.1")
        # The turn the events came in, the store's write a turn later, the acks.
        clock.advance(0)
        clock.advance(0)
        clock.advance(0)
        clock.advance(0.001)
    for _ in range(400):
        if target.events >= events and not dispatcher.pending:
            break
        clock.advance(0.01)
    clock.advance(1)
    spent = time.process_time() - started
    if acked[0] != events or target.events != events:
        print("  ({}: acked {} delivered {} of {})".format(store, acked[0], target.events, events))
    dispatcher.stopService()
    handler.stopService()
    clock.advance(0)
    if engine is not None:
        engine.stop()
    shutil.rmtree(directory)
    return spent / events


def instructions(store: str, events: int, inflight: int, batch: int) -> float:
    """Instructions per event of C{store}, counted by cachegrind: runs of C{events} and thrice that, the difference."""
    import re
    import subprocess

    counts = []
    for n in (events, 3 * events):
        out = tempfile.mktemp(prefix="cachegrind-")
        run = subprocess.run(
            ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=" + out, sys.executable,
             os.path.abspath(__file__), "--once", store, "--events", str(n), "--inflight", str(inflight), "--batch", str(batch)],
            capture_output=True, text=True, check=True,
        )
        os.unlink(out)
        m = re.search(r"I\s+refs:\s+([\d,]+)", run.stderr)
        assert m, run.stderr
        counts.append(int(m.group(1).replace(",", "")))
    return (counts[1] - counts[0]) / (2 * events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--batch", type=int, action="append")
    parser.add_argument("--store", action="append", choices=("spool", "stream"))
    parser.add_argument("--instructions", action="store_true", help="count instructions under cachegrind")
    parser.add_argument("--once", help=argparse.SUPPRESS)
    args = parser.parse_args()
    stores = args.store or ["spool", "stream"]
    if args.once:
        scene(args.once, args.events, args.inflight, (args.batch or [1])[0])
        return
    if args.instructions:
        for batch in args.batch or [100, 1]:
            counts = {store: instructions(store, args.events, args.inflight, batch) for store in stores}
            line = ["batch_max {:>3}:".format(batch)] + ["{} {:,.0f} instructions per event".format(s, c) for s, c in counts.items()]
            if len(stores) == 2:
                line.append("{}/{} {:.0%}".format(stores[1], stores[0], counts[stores[1]] / counts[stores[0]]))
            print("  ".join(line))
        return
    for batch in args.batch or [100, 1]:
        best: Dict[str, List[float]] = {s: [] for s in stores}
        scene(stores[-1], max(args.events // 5, 100), args.inflight, batch)  # warm-up
        for _ in range(args.rounds):
            for store in stores:
                best[store].append(scene(store, args.events, args.inflight, batch))
        line = ["batch_max {:>3}:".format(batch)]
        for store in stores:
            times = sorted(best[store])
            line.append("{} {:.1f} µs (median {:.1f})".format(store, times[0] * 1e6, times[len(times) // 2] * 1e6))
        if len(stores) == 2:
            a, b = (min(best[s]) for s in stores)
            line.append("{}/{} {:.0%}".format(stores[1], stores[0], b / a))
        print("  ".join(line))


if __name__ == "__main__":
    main()
