"""
What the console's history costs the server: one sample (read every second
on the reactor's clock) with N client connections open, the memory of a
full ring (an hour of samples), and the time and size of the full
/console/history.json a page asks for when it opens.  In memory: the
service built from a config, connections over StringTransport.

    python bench/console_history.py [--connections 0 1000 10000]

It prints figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import sys

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport

from eventsvc import config
from eventsvc.app import make_service
from eventsvc.ops.console import HISTORY_SIZE, History

CONFIG = """
[service]
port = 0
data_dir = "{data}"
[handlers]
event_feed = "python:eventsvc.events.handlers:log_event"
[websocket]
port = 0
no_tls = true
[[websocket.identities]]
name = "console"
token = "t"
subscribe_allow = [">"]
[monitor]
port = 0
[console]
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, nargs="+", default=[0, 1000, 10000])
    args = parser.parse_args()
    reactor = MemoryReactorClock()
    svc = make_service(config.parse(CONFIG.format(data=tempfile.mkdtemp())), reactor)
    svc.startService()
    history: History = svc.getServiceNamed("monitor").history
    factory = svc.getServiceNamed("service").factory
    open_ = 0
    for n in sorted(args.connections):
        while open_ < n:
            proto = factory.buildProtocol(None)
            proto.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000 + open_ % 20000)))
            proto.dataReceived(b"CONNECT {}\r\nPUB a 1\r\nx\r\n")
            open_ += 1
        runs = 2000 if n <= 1000 else 200
        start = time.perf_counter()
        for _ in range(runs):
            history.sample()
        each = (time.perf_counter() - start) / runs
        print("one sample, {:>6} connections: {:8.1f} µs ({:.4f}% of a second)".format(n, each * 1e6, each * 100))
    # An hour of traffic: rates that are not round numbers.
    for i in range(HISTORY_SIZE + 60):
        proto.dataReceived(b"PUB a 1\r\nx\r\n" * (i % 7))
        reactor.advance(1)
    size = sum(sys.getsizeof(column) for column in history.columns.values())
    print("a full ring ({} samples): {:.2f} MB".format(len(history), size / 1e6))
    start = time.perf_counter()
    body = json.dumps(history.since(0), separators=(",", ":")).encode()
    print("the full /console/history.json: {:.1f} ms, {:.0f} kB ({:.0f} kB gzipped by a proxy)".format(
        (time.perf_counter() - start) * 1e3, len(body) / 1e3, len(__import__("gzip").compress(body)) / 1e3))
    start = time.perf_counter()
    body = json.dumps(history.since(history.columns["t"][-2]), separators=(",", ":")).encode()
    print("the page's next second (?since=): {:.2f} ms, {} bytes".format((time.perf_counter() - start) * 1e3, len(body)))
    svc.stopService()


if __name__ == "__main__":
    os.environ.setdefault("EVENTSVC_BENCH", "1")
    main()
