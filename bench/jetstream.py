"""
JetStream side by side with nats-server -js: three scenes, each against a
fresh server with a file store, through nats.go (bench/jsbench, built on
first use from Debian's golang-go and golang-github-nats-io-go-nats-dev):

  - sync:  js.Publish one at a time, each waiting for its PubAck;
  - async: js.PublishAsync with a window of 1,000 PubAcks outstanding;
  - pull:  a durable pull consumer fetching 100 at a time, acking each
           message (explicit acks); the stream is filled beforehand, unmeasured.

    python bench/jetstream.py [--messages 20000] [--runs 1] [--interpreters PYTHON ...] [--storage file|memory]

Each server is pinned to core 0 (taskset) and the load generator to core 1;
the server's CPU per message (user + system, from /proc/<pid>/stat) is
printed beside each rate, and each eventsvc rate as a ratio of
nats-server's, then nats-server's CPU per message over ours (above 100%:
we spend less).  A warm-up of a fifth of the messages (on a stream of its
own) runs first and is not counted (PyPy's JIT).  Interpreters: this one and
.venv-pypy's when there is one, or those given.

The servers of a scene run one after another, and where one runs may weigh
as it does in bench/run.py (a column that ran before another of the same
tree paid up to ~25% more CPU a message there): with --runs N each scene
runs N times, the servers' order turning between runs as bench/run.py
turns it (the second run of a pair the first reversed, each pair one place
further round), and each line is the median.  The line above the table
says which order each run took.  One run (the default) keeps one order:
to compare two trees, give --runs 2 at least.

Each ratio that misses issue 30's goal is flagged with "<", as bench/run.py
flags its scenes and with its goals (CPython: at least 50% of nats-server's
rate and at most 2x its CPU per message; PyPy: at least 100% of its rate),
and the scenes that miss are listed again at the end.  It prints figures;
it never passes or fails.  Figures from a busy machine say little: run it
alone.  "make bench" runs it after bench/run.py, "make bench-js" alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Set, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import run as goals  # noqa: E402  (issue 30's goals, judged as bench/run.py judges its scenes)
from eventsvc.test import process  # noqa: E402
# The events bench measures CPU and finds interpreters the same way.
from events import cpu_seconds, interpreters  # noqa: E402

TOOL = os.path.join(HERE, "jsbench", "jsbench")
SERVER_CORE, LOAD_CORE = "0", "1"
SCENES = ("sync", "async", "pull")
_READY_NATS = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
_READY_EVENTSVC = re.compile(r"listening for NATS clients on [\d.]+:(\d+)")


def jsbench() -> str:
    if not os.access(TOOL, os.X_OK) or os.path.getmtime(TOOL) < os.path.getmtime(os.path.join(HERE, "jsbench", "main.go")):
        subprocess.run([os.path.join(HERE, "jsbench", "build"), TOOL], check=True)
    return TOOL


def load(tool: str, port: int, mode: str, n: int, stream: str, storage: str) -> Dict[str, float]:
    """One jsbench run on the load core: its JSON line."""
    done = subprocess.run(
        ["taskset", "-c", LOAD_CORE, tool, "-url", "nats://127.0.0.1:%d" % port, "-mode", mode, "-n", str(n),
         "-stream", stream, "-storage", storage, "-window", "1000", "-batch", "100"],
        capture_output=True, text=True, timeout=600,
    )
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError("jsbench {} said nothing: {}".format(mode, done.stderr))
    result = json.loads(lines[-1])
    if "error" in result:
        print("  ({} {}: {} of {} before: {})".format(mode, stream, result["done"], n, result["error"]), flush=True)
    return result


def start(name: str, python: Optional[str], directory: str) -> process.ServerProcess:
    """nats-server -js, or eventsvc under C{python}, on the server core with a file store in C{directory}."""
    port = process.free_port()
    if python is None:
        argv = ["taskset", "-c", SERVER_CORE, "nats-server", "-js", "-sd", os.path.join(directory, "store"),
                "-a", "127.0.0.1", "-p", str(port)]
        server = process.ServerProcess(argv, _READY_NATS)
    else:
        config = process.write_config(os.path.join(directory, "bench.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = {}\n[jetstream]\nstore_dir = "{}"\n'
        ).format(port, os.path.join(directory, "store")))
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        if os.path.abspath(python).startswith(ROOT + os.sep):
            env["PYTHONPATH"] = ROOT  # this checkout's venvs run this checkout's code
        twistd = os.path.join(os.path.dirname(python), "twistd")
        server = process.ServerProcess(
            ["taskset", "-c", SERVER_CORE, twistd, "-n", "--pidfile=", "eventsvc", "--config", config],
            _READY_EVENTSVC, env)
    server.start(timeout=60)
    return server


def scene(tool: str, name: str, python: Optional[str], mode: str, messages: int, storage: str) -> Dict[str, float]:
    directory = tempfile.mkdtemp(prefix="jsbench-")
    server = start(name, python, directory)
    try:
        assert server.process is not None
        pid, port = server.process.pid, server.port
        warm = max(messages // 5, 1)
        if mode == "pull":
            load(tool, port, "async", warm, "WARM", storage)
            load(tool, port, "pull", warm, "WARM", storage)
            load(tool, port, "async", messages, "BENCH", storage)
        else:
            load(tool, port, mode, warm, "WARM", storage)
        cpu0 = cpu_seconds(pid)
        result = load(tool, port, mode, messages, "BENCH", storage)
        cpu = cpu_seconds(pid) - cpu0
        done = max(int(result["done"]), 1)
        return {"rate": done / max(float(result["seconds"]), 1e-9), "cpu_us": cpu / done * 1e6, "done": done}
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000, help="messages per scene (sync uses a fifth)")
    parser.add_argument("--interpreters", nargs="*", help="interpreters whose twistd runs eventsvc")
    parser.add_argument("--storage", choices=["file", "memory"], default="file")
    parser.add_argument("--only", choices=SCENES, action="append", help="run only these scenes")
    parser.add_argument("--runs", type=int, default=1,
                        help="runs of each scene and server, the servers' order turning between runs (above); the median is printed")
    options = parser.parse_args()
    tool = jsbench()
    servers: List[Tuple[str, Optional[str]]] = [("nats-server", None)]
    given = interpreters(options.interpreters)
    kinds = ["pypy" if "pypy" in python else "cpython" for python in given]
    for kind, python in zip(kinds, given):
        # Two trees of one kind (a release beside this one): each named by
        # the folder its venv is in, so lines and misses tell them apart.
        folder = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(python)))))
        name = "eventsvc " + kind + (" " + folder if kinds.count(kind) > 1 else "")
        while name in [taken for taken, _ in servers]:
            name += "'"  # the same tree twice (an order check)
        servers.append((name, python))
    print("JetStream, {} store; servers on core {}, nats.go load on core {}".format(options.storage, SERVER_CORE, LOAD_CORE))
    print("servers' order, every scene: {}{}".format(
        goals.describe_orders([name for name, _ in servers], options.runs), "; medians" if options.runs > 1 else ""))
    print("{:<26} {:<6} {:>9} {:>12} {:>7} {:>10} {:>7}".format(
        "server", "scene", "messages", "msgs/s", "rate", "CPU/msg us", "CPU"))
    for mode in options.only or SCENES:
        # Synchronous publishing is one round trip each: fewer of them.
        messages = options.messages // 5 if mode == "sync" else options.messages
        results: Dict[str, List[Dict[str, float]]] = {name: [] for name, _ in servers}
        failed: Set[str] = set()
        for run in range(options.runs):
            for name, interpreter in goals.order(servers, run):
                if name in failed:
                    continue
                try:
                    results[name].append(scene(tool, name, interpreter, mode, messages, options.storage))
                except AssertionError as e:  # the server did not start (a release without JetStream)
                    print("{:<26} {:<6} did not start: {}".format(name, mode, str(e).strip().splitlines()[-1]), flush=True)
                    failed.add(name)
        reference = medians(results["nats-server"])
        for name, interpreter in servers:
            r = medians(results[name])
            if r is not None:
                print(line(name, mode, interpreter, r, reference), flush=True)
    summary([name for name, python in servers if python is not None])


def medians(runs: List[Dict[str, float]]) -> Optional[Dict[str, float]]:
    """A server's runs of a scene as one: the median of each figure (None: it never ran)."""
    if not runs:
        return None
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def line(name: str, mode: str, python: Optional[str], r: Dict[str, float], reference: Optional[Dict[str, float]]) -> str:
    """
    One server's line of a scene: its rate and CPU per message and, for
    eventsvc, its rate over nats-server's and nats-server's CPU per message
    over its own, each followed by C{<} when it misses its interpreter's goal.
    """
    rate_ratio = cpu_ratio = ""
    if python is not None and reference is not None:
        ratio = r["rate"] / reference["rate"] if reference["rate"] else float("nan")
        cpu = reference["cpu_us"] / r["cpu_us"] if r["cpu_us"] and reference["cpu_us"] else None
        label = "jetstream " + mode
        # (It keeps what misses, for the summary: goals.BELOW.)
        missed = goals.below_goal(label, name, python, ratio, cpu, False)
        rate_ratio = "{:.0%}{}".format(ratio, "<" if "rate" in missed else " ")
        cpu_ratio = "" if cpu is None else "{:.0%}{}".format(cpu, "<" if "cpu" in missed else " ")
    return "{:<26} {:<6} {:>9,} {:>12,.0f} {:>7} {:>10.1f} {:>7}".format(
        name, mode, int(r["done"]), r["rate"], rate_ratio, r["cpu_us"], cpu_ratio)


def summary(names: List[str]) -> None:
    """The scenes below their goal, by server, as bench/run.py lists its own."""
    print()
    print("goals (issue 30): CPython at least 50% of nats-server's rate and at most 2x its CPU per message;"
          " PyPy at least 100% of its rate")
    if not goals.BELOW:
        print("every JetStream scene meets its goal")
        return
    for name in names:
        missed: Dict[str, List[str]] = {}
        for label, server, what in goals.BELOW:
            if server == name:
                missed.setdefault(label, []).append(what)
        if missed:
            print("below goal, {} ({} lines):".format(name, len(missed)))
            for label, whats in missed.items():
                print("  {:<30} {}".format(label, ", ".join(whats)))


if __name__ == "__main__":
    main()
