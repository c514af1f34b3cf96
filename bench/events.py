"""
Events end to end, with eventsvc the bottleneck: Go producers (nats.go)
publish events with acknowledgement, eventsvc accepts them and delivers
them to a Go HTTP target.  eventsvc runs on core 0, the producers and the
target on core 1 (taskset), and eventsvc's CPU per event is read from
/proc/<pid>/stat.

    python bench/events.py [--events 20000] [--runs 3] [--store spool --store stream] [--python PATH ...] [--old PATH ...]

Each interpreter (default: this one, and .venv-pypy's if there is one) runs
this checkout's code if its virtual environment is inside the checkout, and
what it has installed otherwise (an older release's venv, for before and
after).  It runs each store (memory: no data_dir; spool: [events] log =
"spool"; stream: the JetStream stream EVENTS, the default) with batch_max
1 and 100 (an old release ignores batch_max, and knows only memory and
spool), and prints the stream against the spool, rate and CPU per event,
from the same run.  A warm-up of
a fifth of the events is run first in each scene and not counted (PyPy's
JIT).  nats-server has no equivalent path, so the figures are absolute:
compare runs of one machine only.  It prints figures; it never passes or
fails.  The Go program (bench/eventbench) is built on first use from
Debian's golang-go and golang-github-nats-io-go-nats-dev.
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
import time
import urllib.request
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from eventsvc.test import process  # noqa: E402

TOOL = os.path.join(HERE, "eventbench", "eventbench")
TICKS = os.sysconf("SC_CLK_TCK")


def eventbench() -> str:
    if not os.access(TOOL, os.X_OK):
        subprocess.run([os.path.join(HERE, "eventbench", "build"), TOOL], check=True)
    return TOOL


def cpu_seconds(pid: int) -> float:
    """User and system time of C{pid} and its threads, from /proc."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Target:
    """bench/eventbench's HTTP target, on core 1."""

    def __init__(self, tool: str, ids: str = "") -> None:
        argv = ["taskset", "-c", "1", tool, "target"] + (["-ids", ids] if ids else [])
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.process.stdout.readline()  # type: ignore[union-attr]
        m = re.match(r"LISTENING (\S+)", line)
        if not m:
            raise RuntimeError("target did not start: %r" % line)
        self.address = m.group(1)

    def stats(self) -> Dict[str, int]:
        with urllib.request.urlopen("http://%s/stats" % self.address, timeout=10) as r:
            return json.loads(r.read())

    def wait(self, events: int, timeout: float) -> Dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if stats["events"] >= events or time.monotonic() > deadline:
                return stats
            time.sleep(0.02)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def produce(tool: str, port: int, events: int, prefix: str, inflight: int, conns: int) -> Dict[str, object]:
    out = subprocess.run(
        ["taskset", "-c", "1", tool, "produce", "-url", "nats://127.0.0.1:%d" % port, "-events", str(events),
         "-inflight", str(inflight), "-conns", str(conns), "-prefix", prefix],
        capture_output=True, text=True, timeout=600,
    )
    if out.returncode:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


#: Where events are kept: no data_dir, the event layer's spool, the JetStream stream.
STORES = ("memory", "spool", "stream")


def config(directory: str, port: int, target: str, store: str, batch_max: int, events: int, old: bool = False) -> str:
    return process.write_config(os.path.join(directory, "bench.toml"), (
        '[service]\nhost = "127.0.0.1"\nport = {port}\nevent_limit = {limit}\n{spool}'
        '[handlers]\nevent_feed = "http://{target}/events"\n'
        '[events]\nhandler_concurrency = 8\n{log}{batch}'
        '[log]\nlevel = "info"\n'
    ).format(
        port=port, limit=events * 2, spool='data_dir = "data"\n' if store != "memory" else "", target=target,
        # (An older release has only the spool, and no such key.)
        log='log = "spool"\n' if store == "spool" and not old else "",
        # (Written only when batching, so that an older release reads the file.)
        batch="batch_max = {}\nbatch_wait = 0.005\n".format(batch_max) if batch_max > 1 else "",
    ))


def scene(python: str, tool: str, store: str, batch_max: int, events: int, inflight: int, conns: int, old: bool = False) -> Dict[str, float]:
    target = Target(tool)
    directory = tempfile.mkdtemp(prefix="eventsbench-")
    port = process.free_port()
    twistd = os.path.join(os.path.dirname(python), "twistd")
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if os.path.abspath(python).startswith(ROOT + os.sep):
        # This checkout's own virtual environments run this checkout's code;
        # another interpreter (an older release's venv) runs what it has installed.
        env["PYTHONPATH"] = ROOT
    server = process.ServerProcess(
        ["taskset", "-c", "0", twistd, "-n", "--pidfile=", "eventsvc", "--config",
         config(directory, port, target.address, store, batch_max, events, old)],
        re.compile(r"listening for NATS clients on [\d.]+:(\d+)"), env,
    )
    try:
        server.start()
        assert server.process is not None
        warm = max(events // 5, 1)
        produce(tool, port, warm, "warm", inflight, conns)
        target.wait(warm, 120)
        before = target.stats()
        cpu0, t0 = cpu_seconds(server.process.pid), time.time()
        result = produce(tool, port, events, "bench", inflight, conns)
        stats = target.wait(before["events"] + events, 300)
        cpu = cpu_seconds(server.process.pid) - cpu0
        delivered = stats["events"] - before["events"]
        if result["acked"] != events or delivered < events:
            print("  (short: acked {} delivered {} of {}: {})".format(result["acked"], delivered, events, result.get("error")))
        return {
            "acked": float(result["acked"]) / float(result["seconds"]),  # type: ignore[arg-type]
            "delivered": delivered / (stats["last"] / 1e9 - t0),
            "cpu_us": cpu / max(delivered, 1) * 1e6,
            "posts": stats["posts"] - before["posts"],
        }
    finally:
        server.stop()
        target.stop()
        shutil.rmtree(directory, ignore_errors=True)


def interpreters(given: Optional[List[str]]) -> List[str]:
    if given:
        return given
    found = [sys.executable]
    pypy = os.path.join(ROOT, ".venv-pypy", "bin", "pypy3")
    if os.access(pypy, os.X_OK):
        found.append(pypy)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--inflight", type=int, default=500, help="unanswered requests per producer connection")
    parser.add_argument("--conns", type=int, default=4, help="producer connections")
    parser.add_argument("--python", action="append", help="an interpreter whose twistd runs eventsvc (repeatable)")
    parser.add_argument("--batch", type=int, action="append", help="batch_max values (default 1 and 100)")
    parser.add_argument("--old", action="append", default=[], help="an older release's interpreter: batch_max 1 only")
    parser.add_argument("--store", action="append", choices=STORES, help="stores to run (default: all three)")
    parser.add_argument("--runs", type=int, default=1, help="runs of each scene, interleaved; the median is kept")
    options = parser.parse_args()
    tool = eventbench()
    print("{} events per scene, {} producer connections x {} in flight; eventsvc on core 0, load and target on core 1".format(
        options.events, options.conns, options.inflight))
    print("{:<20} {:<7} {:>6} {:>10} {:>12} {:>14} {:>8}".format("python", "store", "batch", "acked/s", "delivered/s", "CPU/event (us)", "POSTs"))
    runs = [(p, options.batch or [1, 100], False) for p in interpreters(options.python)] + [(p, [1], True) for p in options.old]
    stores = options.store or list(STORES)
    for python, batches, old in runs:
        # The interpreter, and its virtual environment's folder (which release).
        name = "{} {}".format("pypy" if "pypy" in python else "cpython", os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(python)))))
        for batch_max in batches:
            results: Dict[str, List[Dict[str, float]]] = {}
            for _ in range(options.runs):
                # (Interleaved, so that the machine's swings fall on every store alike.)
                for store in stores:
                    if old and store == "stream":
                        continue
                    results.setdefault(store, []).append(
                        scene(python, tool, store, batch_max, options.events, options.inflight, options.conns, old))
            kept = {store: median(rs) for store, rs in results.items()}
            for store, r in kept.items():
                print("{:<20} {:<7} {:>6} {:>10,.0f} {:>12,.0f} {:>14.1f} {:>8}".format(
                    name, store, batch_max, r["acked"], r["delivered"], r["cpu_us"], int(r["posts"])), flush=True)
            if "spool" in kept and "stream" in kept:
                spool, stream = kept["spool"], kept["stream"]
                print("{:<20} stream/spool, batch {}: acked/s {:.0%}, delivered/s {:.0%}, CPU/event {:.0%}".format(
                    name, batch_max, stream["acked"] / spool["acked"], stream["delivered"] / spool["delivered"],
                    stream["cpu_us"] / spool["cpu_us"]), flush=True)


def median(runs: List[Dict[str, float]]) -> Dict[str, float]:
    """Each figure's median over the runs (a lower median for an even count)."""
    return {key: sorted(r[key] for r in runs)[(len(runs) - 1) // 2] for key in runs[0]}

if __name__ == "__main__":
    main()
