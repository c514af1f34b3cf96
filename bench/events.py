"""
Events per second end to end: nats-py producers publish events with
acknowledgement, eventsvc accepts them (with and without the spool) and
delivers them to an HTTP target (twisted.web, in this process).

    python bench/events.py [--events 5000] [--concurrency 200]

nats-server has no equivalent path, so this prints absolute figures: compare
runs on the same machine only.  It never passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet import defer, reactor, task, threads  # noqa: E402
from twisted.web import resource, server  # noqa: E402

from eventsvc.test import process  # noqa: E402
from eventsvc.test.eventsamples import payload  # noqa: E402


class Target(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.last = 0.0

    def render_POST(self, request):
        request.content.read()
        self.count += 1
        self.last = time.monotonic()
        return b"{}"


async def produce(port: int, events: int, concurrency: int) -> float:
    import nats

    nc = await nats.connect("nats://127.0.0.1:%d" % port)
    bodies = [payload("event_feed", "bench-%d" % i) for i in range(events)]
    started = time.monotonic()
    for i in range(0, events, concurrency):
        replies = await asyncio.gather(*(nc.request("event.event_feed", b, timeout=30) for b in bodies[i : i + concurrency]))
        for r in replies:
            if not json.loads(r.data)["success"]:
                raise RuntimeError(r.data)
    await nc.close()
    return started


@defer.inlineCallbacks
def scene(label: str, spool: bool, events: int, concurrency: int):
    target = Target()
    listening = reactor.listenTCP(0, server.Site(target), interface="127.0.0.1")
    directory = tempfile.mkdtemp()
    port = process.free_port()
    config = process.write_config(os.path.join(directory, "bench.toml"), (
        '[service]\nhost = "127.0.0.1"\nport = %d\nevent_limit = %d\n%s'
        '[handlers]\nevent_feed = "http://127.0.0.1:%d/events"\n[events]\nhandler_concurrency = 32\n[log]\nlevel = "info"\n'
    ) % (port, events * 2, 'data_dir = "data"\n' if spool else "", listening.getHost().port))
    ours = process.eventsvc(config)
    yield threads.deferToThread(ours.start)
    try:
        started = yield threads.deferToThread(lambda: asyncio.run(produce(port, events, concurrency)))
        acked = time.monotonic()
        while target.count < events:
            yield task.deferLater(reactor, 0.01, lambda: None)
        print("{:<34} {:>10,.0f} acked/s {:>10,.0f} delivered/s".format(
            label, events / (acked - started), events / (target.last - started)))
    finally:
        ours.stop()
        yield listening.stopListening()


@defer.inlineCallbacks
def main(options):
    print("eventsvc on {} {}; {} events, {} requests in flight".format(
        sys.implementation.name, sys.version.split()[0], options.events, options.concurrency))
    yield scene("publish+ack -> HTTP, no spool", False, options.events, options.concurrency)
    yield scene("publish+ack -> HTTP, spool (fsync)", True, options.events, options.concurrency)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=200)
    options = parser.parse_args()
    task.react(lambda _: main(options))
