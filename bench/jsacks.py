"""
Acks interleaved over several consumers of one stream, in one process
(bench/jsinproc.py's World: a client connection on a fake transport, a
JetStream engine, a fake clock): each consumer fetches every message,
then the client acks them one consumer after another (c0's first, c1's
first, ...), ten acks a read, as push or pull consumers acking each
message as it comes do.  Each consumer's ack subscription is its own
(as nats-server's), so this is the scene where a broker that keeps one
plan for subjects used once builds a plan per ack.

    python bench/jsacks.py [--consumers N] [--messages N] [--repeat R] [--shared]

Each consumer subscribes its own ack subject, as the service runs
(JetStreamSettings.per_consumer_acks); --shared runs the engine's other
shape, one C{$JS.ACK.>} for every ack, to compare.

It imports eventsvc from the running interpreter (PYTHONPATH picks the
tree), so running it on two trees compares them.  It prints figures; it
never passes or fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jsinproc  # noqa: E402

_REPLY = re.compile(rb"MSG \S+ 2 (\$JS\.ACK\.\S+) ")


def once(consumers: int, messages: int) -> float:
    """CPU seconds per ack of one run."""
    folder = tempfile.mkdtemp(prefix="jsacks-")
    try:
        world = jsinproc.World(folder)
        world.request(b"$JS.API.STREAM.CREATE.BENCH", {"name": "BENCH", "subjects": ["BENCH.x"], "storage": "memory"})
        for data in world.publishes(messages):
            world.feed(data)
        replies = []
        fetch = b'{"batch":%d,"expires":10000000000}' % messages
        for c in range(consumers):
            world.request(b"$JS.API.CONSUMER.DURABLE.CREATE.BENCH.C%d" % c, {"stream_name": "BENCH", "config": {
                "durable_name": "C%d" % c, "ack_policy": "explicit", "max_ack_pending": -1}})
            out = world.feed(b"PUB $JS.API.CONSUMER.MSG.NEXT.BENCH.C%d _INBOX.fetch.%d %d\r\n%s\r\n" % (c, c, len(fetch), fetch))
            replies.append(_REPLY.findall(out))
            if len(replies[-1]) != messages:
                raise RuntimeError("consumer {} got {} of {}".format(c, len(replies[-1]), messages))
        acks = [replies[c][i] for i in range(messages) for c in range(consumers)]
        reads = [b"".join(b"PUB %s 4\r\n+ACK\r\n" % r for r in acks[k:k + 10]) for k in range(0, len(acks), 10)]
        started = time.process_time()
        for data in reads:
            world.feed(data)
        spent = time.process_time() - started
        world.js.stop()
        return spent / len(acks)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consumers", type=int, default=10)
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is printed")
    parser.add_argument("--shared", action="store_true", help="one $JS.ACK.> takes every ack (not each consumer its own)")
    options = parser.parse_args()
    if options.shared:
        from eventsvc.jetstream.engine import JetStreamSettings

        # (World makes its settings itself: the default changes instead.)
        defaults = JetStreamSettings.__new__.__defaults__
        JetStreamSettings.__new__.__defaults__ = defaults[:-1] + (False,)
    once(options.consumers, options.messages // 10)  # warm-up (PyPy's JIT, imports)
    best = min(once(options.consumers, options.messages) for _ in range(options.repeat))
    print("acks over {} consumers{} {:>8.2f} us CPU/ack".format(
        options.consumers, ", one $JS.ACK.>" if options.shared else "", best * 1e6), flush=True)


if __name__ == "__main__":
    main()
