"""
A real eventsvc server's warm-up curve: a fresh C{twistd} under each of
PyPy's JIT settings given (C{pypy --jit ...}), driven by natsbench in
blocks one after another, its CPU per message (or connection) of each
block read from /proc, as L{bench.run} reads it (the server is told to
set none of its own, C{[pypy] jit = ""}, unless C{--patch} says otherwise):

    python bench/twistdcurve.py --python .venv-pypy/bin/python \\
        --jit default --jit threshold=300 --scene connections:250 --blocks 24
    python bench/twistdcurve.py ... --scene 1KiB:25000 --scene request-reply:1000 --blocks 16
    python bench/twistdcurve.py ... --scene fleet:1 --blocks 24   # 201 connections and 200 messages a block

Each round starts every setting's server afresh, in turn (the
servers pinned to core 0, natsbench to core 1); the median of the rounds,
block by block.  Wall-clock rates are not printed: on a shared machine they
are noise, and CPU per message is what a warm-up costs.  It prints figures;
it never passes or fails.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run  # noqa: E402

#: natsbench's arguments for a block of N.
SCENES = {
    "1KiB": ["-np", "1", "-ns", "1", "-ms", "1024", "-n", "{n}"],
    "pwc-1000": ["-np", "1", "-ns", "1", "-subjects", "1000", "-sub", "pwc", "-n", "{n}"],
    "connections": ["-mode", "connect", "-np", "4", "-n", "{n}"],
    "request-reply": ["-mode", "latency", "-n", "{n}"],
    # bench/run.py's queue of 10 over 1,000 subjects, and 10,000 subjects at 1 KiB.
    "queue-1000": ["-np", "4", "-ns", "10", "-queue", "q", "-subjects", "1000", "-sub", "pwc", "-n", "{n}"],
    "10k-1KiB": ["-np", "1", "-ns", "1", "-subjects", "10000", "-sub", "fwc", "-ms", "1024", "-n", "{n}"],
    # bench/run.py's slow fleet: 200 publishers at 50 messages a second
    # over 1,000 subjects, each making its 201 connections anew; N messages
    # a publisher (a block is 200 N messages).
    "fleet": ["-np", "200", "-ns", "1", "-subjects", "1000", "-sub", "fwc", "-rate", "50", "-n", "{n}"],
}
#: Messages a block of N is, where it is not N.
PER_BLOCK = {"fleet": 200, "queue-1000": 4}


def curve(python: str, jit: str, patch: str, scenes: List[str], block: int, blocks: int) -> List[float]:
    """
    CPU us per message of each block, from a fresh server under C{jit}
    ("default": PyPy's own) on C{patch}: each of C{scenes} in turn
    (C{NAME} or C{NAME:BLOCK}), C{blocks} blocks each.
    """
    directory = tempfile.mkdtemp()
    patch = patch.replace("\\n", "\n")
    if "[pypy]" not in patch:
        # The server sets no JIT parameters of its own ([pypy] jit): the
        # interpreter's, from --jit, stand.
        patch += '\n[pypy]\njit = ""'
    config = run.process.write_config(
        os.path.join(directory, "bench.toml"), '[service]\nhost = "127.0.0.1"\nport = 0\nlistener_limit = 100000\n' + patch + "\n")
    server = run.eventsvc(config, python=python)
    if jit != "default":
        # The interpreter runs twistd's script itself, with the setting.
        server.argv[:1] = [python, "--jit", jit, server.argv[0]]
    run.pinned(server).start()
    out = []
    try:
        for scene in scenes:
            name, _, size = scene.partition(":")
            args = [a.format(n=int(size or block)) for a in SCENES[name]]
            out += [run._measure_once(run.natsbench(), [server.process.pid], "nats", "127.0.0.1", server.port, args)["cpu_us"]
                    for _ in range(blocks)]
        return out
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", required=True, help="the interpreter whose twistd runs eventsvc (a venv's python)")
    parser.add_argument("--jit", action="append", metavar="PARAMS",
                        help="PyPy JIT parameters (pypy --jit), repeatable, alternated; default: PyPy's own")
    parser.add_argument("--patch", default="", help="TOML added to every server's configuration (\\n for a new line)")
    parser.add_argument("--scene", action="append", metavar="NAME[:BLOCK]",
                        help="{} (default 1KiB); repeatable: one after another on the same server, each --blocks blocks"
                        .format(", ".join(sorted(SCENES))))
    parser.add_argument("--block", type=int, default=25000)
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    scenes = options.scene or ["1KiB"]
    for scene in scenes:
        if scene.partition(":")[0] not in SCENES:
            parser.error("unknown scene {!r}".format(scene))
    jits = options.jit or ["default"]
    got: Dict[str, List[List[float]]] = {j: [] for j in jits}
    for _ in range(options.rounds):
        for jit in jits:
            got[jit].append(curve(options.python, jit, options.patch, scenes, options.block, options.blocks))
    print("server CPU us a message (a connection, a request), blocks of {} unless said, from a fresh twistd ({}), median of {}".format(
        options.block, options.python, options.rounds))
    for k, scene in enumerate(scenes):
        name, _, size = scene.partition(":")
        block = int(size or options.block) * PER_BLOCK.get(name, 1)
        print(scene + (" (after the scenes above, on the same server)" if k else ""))
        for jit, runs in got.items():
            at = k * options.blocks
            median = [statistics.median(r[at + i] for r in runs) for i in range(options.blocks)]
            tail = sorted(median[-max(1, options.blocks // 4):])
            print("  jit {}: first {:.2f}, steady {:.2f}, first quarter {:.3f} s, all {:.3f} s".format(
                jit, median[0], tail[len(tail) // 2], sum(median[: max(1, options.blocks // 4)]) * block / 1e6,
                sum(median) * block / 1e6))
            print("    " + " ".join("{:.2f}".format(v) for v in median), flush=True)


if __name__ == "__main__":
    main()
