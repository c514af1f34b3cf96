"""
JetStream's stores alone, in one process: appends/s and loads/s of the
memory store and the file store, for N messages of SIZE bytes (default
100,000 of 128 bytes) on a few subjects.  Appends run as a stream runs
them: a turn of BATCH messages, then the group commit (one write) and the
callbacks of when_durable; loads read every message once, in order, then
in a random order.  The file store's folder is a temporary one on the
disk of $TMPDIR, with sync_interval at its default (no fsync per turn)
and "always".  Opening a full store again (the index rebuilt from the
segments) is timed too.

    python bench/jsstore.py [--messages 100000] [--size 128] [--batch 100]

Appends are given per second of wall time (what a publisher sees, fsyncs
included) and per CPU second (what a busy machine's other processes do
not disturb); loads per CPU second.  Run it with each interpreter
(.venv/bin/python, .venv-pypy/bin/python).  It prints figures; it never
passes or fails.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from twisted.internet.task import Clock  # noqa: E402
from twisted.python.filepath import FilePath  # noqa: E402

from eventsvc.jetstream.filestore import FileStore  # noqa: E402
from eventsvc.jetstream.memstore import MemoryStore  # noqa: E402


def appends(store, clock, count, size, batch):  # type: ignore[no-untyped-def]
    data = b"x" * size
    subjects = ["orders.{}".format(i) for i in range(8)]
    acked = [0]

    def ack() -> None:
        acked[0] += 1

    start, cpu = time.perf_counter(), time.process_time()
    for i in range(0, count, batch):
        for j in range(i, min(i + batch, count)):
            store.store(subjects[j & 7], None, data, j)
        store.when_durable(ack)
        clock.advance(0)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert acked[0] == (count + batch - 1) // batch
    return count / elapsed, count / cpu


def loads(store, count):  # type: ignore[no-untyped-def]
    start = time.process_time()
    for seq in range(1, count + 1):
        store.load(seq)
    in_order = count / (time.process_time() - start)
    seqs = list(range(1, count + 1))
    random.Random(1).shuffle(seqs)
    start = time.process_time()
    for seq in seqs:
        store.load(seq)
    return in_order, count / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    n, size, batch = args.messages, args.size, args.batch
    print("{} {}: {} messages of {} bytes, {} per turn".format(
        platform.python_implementation(), platform.python_version(), n, size, batch))
    for rounds in (1, 2):  # the first round warms PyPy's JIT up
        clock = Clock()
        rows = []
        memory = MemoryStore()
        rate = appends(memory, clock, n, size, batch)
        rows.append(("memory",) + rate + loads(memory, n))
        for sync in (120.0, "always"):
            folder = tempfile.mkdtemp(prefix="jsstore-bench-")
            try:
                store = FileStore(FilePath(folder), clock=clock, sync_interval=sync)
                rate = appends(store, clock, n, size, batch)
                rows.append(("file sync={}".format(sync),) + rate + loads(store, n))
                store.close()
                start = time.perf_counter()
                FileStore(FilePath(folder), clock=clock).close()
                rows.append(("  reopen: {:.3f}s".format(time.perf_counter() - start), 0.0, 0.0, 0.0, 0.0))
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        if rounds == 2:
            for name, rate, cpu_rate, seq_loads, random_loads in rows:
                if rate:
                    print("{:22} appends/s {:>10,.0f} (per CPU s {:>10,.0f})  loads per CPU s: in order {:>10,.0f}  random {:>10,.0f}".format(
                        name, rate, cpu_rate, seq_loads, random_loads))
                else:
                    print(name)


if __name__ == "__main__":
    main()
