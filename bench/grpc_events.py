"""
Events to a gRPC HandleEvent target beside an HTTP target, in the same run:
a grpcio producer publishes events through the [grpc] Publish API (mutual
TLS), eventsvc (a twistd process on core 0) keeps and delivers them either
to an HTTPS target (batch_max 1 and 100) or to a grpcio EventFeedService
(grpc://, one call per event: HandleEvent takes one), and eventsvc's CPU
per event is read from /proc/<pid>/stat.  The producer and the targets
are Python (grpcio, Twisted) on core 1, so events per second may be
theirs; the CPU per event is eventsvc's alone.  Publishing is the same in
every scene: the difference between scenes is the delivery.

    python bench/grpc_events.py [--events 5000] [--python PATH ...]

Needs grpcio in the running interpreter (CPython: pip install grpcio); the
interpreters under test (default: this one, and .venv-pypy's if there is
one) need only eventsvc.  It prints figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from eventsvc.test import process  # noqa: E402
# The events bench measures CPU and finds interpreters the same way (bench/ is
# on the path when a bench script runs).
from events import cpu_seconds, interpreters  # noqa: E402




def mint(directory: str) -> None:
    from eventsvc.security import certs

    ca = certs.make_ca()
    files = {"ca.crt": ca.cert_pem}
    for name in ("eventsvc", "target", "producer"):
        minted = certs.make_cert(ca, name, ["localhost", "127.0.0.1"])
        files[name + ".crt"], files[name + ".key"] = minted.cert_pem, minted.key_pem
    for name, data in files.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)


def read(directory: str, name: str) -> bytes:
    with open(os.path.join(directory, name), "rb") as f:
        return f.read()


# -- the targets (run as: grpc_events.py target-grpc|target-http CERTS) -------


class Counter:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events = self.requests = 0
        self.last = 0

    def add(self, events: int) -> None:
        with self.lock:
            self.events += events
            self.requests += 1
            self.last = time.time_ns()

    def stats(self) -> bytes:
        with self.lock:
            return json.dumps({"events": self.events, "posts": self.requests, "last": self.last}).encode()


def serve_stats(counter: Counter) -> int:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Stats(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = counter.stats()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd.server_address[1]


def target_grpc(certs: str) -> None:
    from concurrent import futures

    import grpc

    from eventsvc.grpc.generated import event_feed_pb2_grpc, event_pb2

    counter = Counter()

    class Feed(event_feed_pb2_grpc.EventFeedServiceServicer):
        def HandleEvent(self, request: Any, context: Any) -> Any:
            counter.add(1)
            return event_pb2.EventResponse(success=True)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), maximum_concurrent_rpcs=None)
    event_feed_pb2_grpc.add_EventFeedServiceServicer_to_server(Feed(), server)
    credentials = grpc.ssl_server_credentials([(read(certs, "target.key"), read(certs, "target.crt"))],
                                              root_certificates=read(certs, "ca.crt"), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    print("LISTENING 127.0.0.1:{} STATS {}".format(port, serve_stats(counter)), flush=True)
    server.wait_for_termination()


def target_http(certs: str) -> None:
    from twisted.internet import reactor, ssl
    from twisted.web import resource, server

    counter = Counter()

    class Events(resource.Resource):
        isLeaf = True

        def render_POST(self, request: Any) -> bytes:
            body = request.content.read()
            counter.add(len(json.loads(body)) if body[:1] == b"[" else 1)
            return b"{}"

    identity = ssl.PrivateCertificate.loadPEM(read(certs, "target.crt") + read(certs, "target.key"))
    ca = ssl.Certificate.loadPEM(read(certs, "ca.crt"))
    options = ssl.CertificateOptions(privateKey=identity.privateKey.original, certificate=identity.original,
                                     trustRoot=ssl.trustRootFromCertificates([ca]))
    port = reactor.listenSSL(0, server.Site(Events()), options, interface="127.0.0.1")
    print("LISTENING 127.0.0.1:{} STATS {}".format(port.getHost().port, serve_stats(counter)), flush=True)
    reactor.run()


class Target:
    def __init__(self, kind: str, certs: str) -> None:
        self.process = subprocess.Popen(
            ["taskset", "-c", "1", sys.executable, os.path.abspath(__file__), "target-" + kind, certs],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        m = re.match(r"LISTENING (\S+) STATS (\d+)", line)
        if not m:
            raise RuntimeError("target did not start: %r" % line)
        self.address, self.stats_port = m.group(1), int(m.group(2))

    def stats(self) -> Dict[str, int]:
        with urllib.request.urlopen("http://127.0.0.1:%d/" % self.stats_port, timeout=10) as r:
            return json.loads(r.read())

    def wait(self, events: int, timeout: float) -> Dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["events"] >= events or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


# -- the producer -------------------------------------------------------------


def produce(certs: str, port: int, events: int, prefix: str, inflight: int) -> int:
    """Publish C{events} through the Publish API, C{inflight} at a time; the number acknowledged."""
    import grpc

    from eventsvc.grpc.convert import to_message
    from eventsvc.grpc.generated import event_pb2, event_pb2_grpc
    from eventsvc.test.eventsamples import event

    credentials = grpc.ssl_channel_credentials(read(certs, "ca.crt"), read(certs, "producer.key"), read(certs, "producer.crt"))
    with grpc.secure_channel("localhost:%d" % port, credentials) as channel:
        stub = event_pb2_grpc.EventServiceStub(channel)
        slots = threading.Semaphore(inflight)
        acked = [0]
        lock = threading.Lock()
        done = threading.Event()
        answered = [0]

        def finished(future: Any) -> None:
            slots.release()
            with lock:
                answered[0] += 1
                if future.exception() is None and future.result().success:
                    acked[0] += 1
                if answered[0] == events:
                    done.set()

        for i in range(events):
            slots.acquire()
            msg = to_message(event("event_feed", event_id="{}-{}".format(prefix, i)))
            stub.Publish.future(event_pb2.PublishRequest(msg=msg), timeout=60).add_done_callback(finished)
        done.wait(300)
        return acked[0]


def config(directory: str, certs: str, target: str, kind: str, batch_max: int, events: int) -> str:
    address = "grpc://{}".format(target) if kind == "grpc" else "https://{}/events".format(target)
    return process.write_config(os.path.join(directory, "bench.toml"), (
        '[service]\nhost = "127.0.0.1"\nport = 0\nevent_limit = {limit}\ndata_dir = "data"\n'
        '[tls]\ncert_path = "{c}/eventsvc.crt"\nkey_path = "{c}/eventsvc.key"\nroot_ca_path = "{c}/ca.crt"\n'
        '[grpc]\nport = 0\n'
        '[handlers]\nevent_feed = "{address}"\n'
        '[events]\nhandler_concurrency = 64\nbatch_max = {batch}\nbatch_wait = 0.005\n'
        '[log]\nlevel = "info"\n'
    ).format(limit=events * 2, c=certs, address=address, batch=batch_max))


def scene(python: str, certs: str, kind: str, batch_max: int, events: int, inflight: int) -> Dict[str, float]:
    target = Target(kind, certs)
    directory = tempfile.mkdtemp(prefix="grpcbench-")
    twistd = os.path.join(os.path.dirname(python), "twistd")
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    server = process.ServerProcess(
        ["taskset", "-c", "0", twistd, "-n", "--pidfile=", "eventsvc", "--config",
         config(directory, certs, target.address, kind, batch_max, events)],
        re.compile(r"grpc listening for Chef Automate's EventService \(Publish\) on [\d.]+:(\d+)"), env,
    )
    try:
        server.start()
        assert server.process is not None
        port = server.port
        warm = max(events // 5, 1)
        produce(certs, port, warm, "warm", inflight)
        target.wait(warm, 120)
        before = target.stats()
        cpu0, t0 = cpu_seconds(server.process.pid), time.time()
        acked = produce(certs, port, events, "bench", inflight)
        stats = target.wait(before["events"] + events, 300)
        cpu = cpu_seconds(server.process.pid) - cpu0
        delivered = stats["events"] - before["events"]
        if acked != events or delivered < events:
            print("  (short: acked {} delivered {} of {})".format(acked, delivered, events))
        return {
            "delivered": delivered / max(stats["last"] / 1e9 - t0, 1e-9),
            "cpu_us": cpu / max(delivered, 1) * 1e6,
            "requests": stats["posts"] - before["posts"],
        }
    finally:
        server.stop()
        target.stop()
        shutil.rmtree(directory, ignore_errors=True)



def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] in ("target-grpc", "target-http"):
        (target_grpc if sys.argv[1] == "target-grpc" else target_http)(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--inflight", type=int, default=200, help="unanswered Publish calls, at most")
    parser.add_argument("--python", action="append", help="an interpreter whose twistd runs eventsvc (repeatable)")
    options = parser.parse_args()
    os.sched_setaffinity(0, {1})
    certs = tempfile.mkdtemp(prefix="grpcbench-certs-")
    mint(certs)
    print("{} events per scene, published through [grpc] Publish ({} in flight); eventsvc on core 0, producer and "
          "target on core 1".format(options.events, options.inflight))
    print("{:<22} {:<14} {:>6} {:>12} {:>15} {:>9}".format("python", "target", "batch", "delivered/s", "CPU/event (us)", "requests"))
    for python in interpreters(options.python):
        name = "{} {}".format("pypy" if "pypy" in python else "cpython", os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(python)))))
        for kind, batch_max in (("http", 1), ("grpc", 1), ("http", 100)):
            r = scene(python, certs, kind, batch_max, options.events, options.inflight)
            print("{:<22} {:<14} {:>6} {:>12,.0f} {:>15.0f} {:>9}".format(
                name, "https" if kind == "http" else "grpc HandleEvent", batch_max, r["delivered"], r["cpu_us"], int(r["requests"])), flush=True)
    shutil.rmtree(certs, ignore_errors=True)


if __name__ == "__main__":
    main()
