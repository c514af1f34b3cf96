"""
Time to listening: from exec to the first INFO a client reads, for
nats-server and for eventsvc (twistd and twist, each interpreter given), in
one run, each server pinned to core 0 and this script on core 1.

    python bench/startup.py [--runs 9] [--python /path/to/venv/bin ...]

A client's reconnect loop (nats-py's tests give a restarted server about a
second) sees exactly this.  Beside it, the CPU the server had used by then
(all its threads, from /proc): on a shared machine the wall clock waits for
other work, the CPU much less.  It prints medians and ratios; it never
passes or fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, List


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def first_info(port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(5).startswith(b"INFO"):
                    return True
        except OSError:
            time.sleep(0.002)
    return False


def cpu_seconds(pid: int) -> float:
    """CPU time of process C{pid}, all its threads (schedstat, nanoseconds)."""
    total = 0
    for task in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
            total += int(f.read().split()[0])
    return total / 1e9


def once(argv: List[str], port: int) -> "tuple[float, float]":
    """Wall time to the first INFO, and the CPU the server had used by then."""
    started = time.monotonic()
    # taskset execs the server: its pid is the server's.
    child = subprocess.Popen(["taskset", "-c", "0", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not first_info(port, started + 30):
            raise RuntimeError("{} never listened".format(argv))
        took = time.monotonic() - started
        try:
            cpu = cpu_seconds(child.pid)
        except (OSError, ValueError, IndexError):
            cpu = float("nan")
        return took, cpu
    finally:
        child.terminate()
        child.wait()


def medians(servers: "List[tuple[str, Callable[[int], List[str]]]]", runs: int) -> "List[tuple[str, tuple[float, float, float, float]]]":
    """
    Each server started C{runs} times, the servers in turn within each
    round (a busy moment of the shared machine hurts all of them, not the
    one whose runs it falls on): per server the median wall time, its
    minimum and maximum, and the median CPU, in ms.
    """
    times: "dict[str, List[float]]" = {name: [] for name, _ in servers}
    cpus: "dict[str, List[float]]" = {name: [] for name, _ in servers}
    for _ in range(runs):
        for name, make in servers:
            port = free_port()
            took, cpu = once(make(port), port)
            times[name].append(took * 1000)
            cpus[name].append(cpu * 1000)
    return [(name, (statistics.median(times[name]), min(times[name]), max(times[name]), statistics.median(cpus[name])))
            for name, _ in servers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--python", action="append", default=[], help="a virtual environment's bin folder with eventsvc installed (repeatable)")
    options = parser.parse_args()
    os.sched_setaffinity(0, {1})
    folders = options.python or [os.path.dirname(sys.executable)]
    scratch = tempfile.mkdtemp()

    def config(port: int) -> str:
        path = os.path.join(scratch, "p%d.toml" % port)
        with open(path, "w") as f:
            f.write('[service]\nhost = "127.0.0.1"\nport = %d\n[handlers]\nevent_feed = "python:eventsvc.events.handlers:log_event"\n' % port)
        return path

    def under(folder: str, runner: str, *options: str) -> Callable[[int], List[str]]:
        """eventsvc under C{runner} (twistd or twist) from the venv's bin C{folder}."""
        def argv(port: int) -> List[str]:
            return [os.path.join(folder, runner), *options, "eventsvc", "--config", config(port)]
        return argv

    nats = shutil.which("nats-server")
    servers: "List[tuple[str, Callable[[int], List[str]]]]" = []
    if nats:
        servers.append(("nats-server", lambda port: [nats, "-a", "127.0.0.1", "-p", str(port)]))
    for folder in folders:
        venv = os.path.dirname(os.path.abspath(folder.rstrip("/")))
        label = os.path.basename(venv)
        if label.startswith(".venv"):
            # Two trees' venvs are both ".venv": name the tree too.
            label = os.path.basename(os.path.dirname(venv)) + "/" + label
        servers.append(("twistd ({})".format(label), under(folder, "twistd", "-n", "--pidfile=")))
        servers.append(("twist ({})".format(label), under(folder, "twist")))
    rows = medians(servers, options.runs)
    reference = rows[0][1] if nats else None
    print("time from exec to the first INFO, median of {} (min-max), and the server's CPU by then; server on core 0".format(options.runs))
    for name, (med, low, high, cpu) in rows:
        ratio = " = {:.0f}x nats-server".format(med / reference[0]) if reference and name != "nats-server" else ""
        print("  {:<40} {:7.0f} ms ({:.0f}-{:.0f}), CPU {:4.0f} ms{}".format(name, med, low, high, cpu, ratio))


if __name__ == "__main__":
    main()
