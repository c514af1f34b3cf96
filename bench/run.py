"""
Side-by-side benchmark: nats-server and eventsvc under the same natsbench
load, in the same run, reported as ratios (the machines are shared and
noisy; absolute figures mean little, ratios from one run mean more).

    python bench/run.py [--runs 3] [--quick]

Needs nats-server (apt-get install nats-server), natsbench (built from
../shared/natsbench by this script if missing) and eventsvc installed in the
running interpreter.  It prints figures; it never passes or fails.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from eventsvc.test import process  # noqa: E402

SCENES = [
    # (label, natsbench arguments, figure to compare)
    ("pub/sub 1:1 16 B", ["-np", "1", "-ns", "1", "-ms", "16", "-n", "{n}"], "deliver_rate"),
    ("pub/sub 1:4 16 B", ["-np", "1", "-ns", "4", "-ms", "16", "-n", "{n}"], "deliver_rate"),
    ("pub/sub 1:1 1 KiB", ["-np", "1", "-ns", "1", "-ms", "1024", "-n", "{n4}"], "deliver_rate"),
    ("pub/sub 1:4 1 KiB", ["-np", "1", "-ns", "4", "-ms", "1024", "-n", "{n4}"], "deliver_rate"),
    ("request/reply p50 (us)", ["-mode", "latency", "-n", "{nl}"], "p50_us"),
    ("request/reply p99 (us)", ["-mode", "latency", "-n", "{nl}"], "p99_us"),
]


def natsbench() -> str:
    path = shutil.which("natsbench")
    if path:
        return path
    build = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "natsbench", "build")
    out = os.path.join(tempfile.gettempdir(), "natsbench")
    subprocess.run([build, out], check=True)
    return out


def measure(tool: str, port: int, args: List[str]) -> Dict[str, float]:
    result = subprocess.run(
        [tool, "-url", "nats://127.0.0.1:%d" % port, "-timeout", "120s", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures = dict(re.findall(r"(\w+)=([\d.]+)", result.stdout))
    if result.returncode != 0 or not figures:
        raise RuntimeError("natsbench failed: {} {}".format(result.stdout, result.stderr))
    return {k: float(v) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per scene and server (median reported)")
    parser.add_argument("--quick", action="store_true", help="smaller message counts")
    options = parser.parse_args()
    n = 100000 if options.quick else 300000
    counts = {"n": n, "n4": n // 4, "nl": 2000 if options.quick else 5000}

    tool = natsbench()
    config = os.path.join(tempfile.mkdtemp(), "bench.toml")
    process.write_config(config, '[service]\nhost = "127.0.0.1"\nport = 0\n')
    ours = process.eventsvc(config)
    servers = {"nats-server": process.nats_server(), "eventsvc": ours}
    for server in servers.values():
        server.start()
    try:
        print("eventsvc on {} {}; nats-server {}".format(
            sys.implementation.name, sys.version.split()[0],
            subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()))
        print("{:<26} {:>14} {:>14} {:>8}".format("scene", "nats-server", "eventsvc", "ratio"))
        for label, args, key in SCENES:
            args = [a.format(**counts) for a in args]
            samples: Dict[str, List[float]] = {name: [] for name in servers}
            for _ in range(options.runs):
                # Interleave, so that a noisy moment hurts both.
                for name, server in servers.items():
                    samples[name].append(measure(tool, server.port, args)[key])
            ref = statistics.median(samples["nats-server"])
            us = statistics.median(samples["eventsvc"])
            ratio = us / ref if ref else float("nan")
            print("{:<26} {:>14,.0f} {:>14,.0f} {:>7.0%}".format(label, ref, us, ratio))
            sys.stdout.flush()
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
