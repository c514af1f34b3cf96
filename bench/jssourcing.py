"""
How fast a stream's mirror and a source catch up (issue 29): a file stream
ORIGIN is filled with N messages of S bytes, then a mirror and a source of
it are made on the same server and timed until each holds all N (what a
hub does after an outage).  The same on nats-server -js for comparison,
each server pinned to one core (taskset) when it can be.

    python bench/jssourcing.py [--messages 50000] [--size 128] [--only nats-server|eventsvc]

It prints messages per second and the server's CPU seconds per 10,000
messages copied; it passes or fails nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import nats  # noqa: E402

from eventsvc.test import process  # noqa: E402


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def scenario(port: int, pid: int, messages: int, size: int) -> Dict[str, Any]:
    nc = await nats.connect("nats://127.0.0.1:%d" % port)

    async def request(subject: str, body: Any = None) -> Dict[str, Any]:
        answer = await nc.request(subject, b"" if body is None else json.dumps(body).encode(), timeout=30)
        return json.loads(answer.data)

    created = await request("$JS.API.STREAM.CREATE.ORIGIN", {"name": "ORIGIN", "subjects": ["origin.>"]})
    assert "error" not in created, created
    payload = b"x" * size
    window: List[Any] = []
    js = nc.jetstream()
    for n in range(messages):
        window.append(js.publish("origin.%d" % (n % 100), payload))
        if len(window) >= 1000:
            await asyncio.gather(*window)
            window = []
    await asyncio.gather(*window)
    out: Dict[str, Any] = {}
    for kind, config in (("mirror", {"name": "MIRROR", "mirror": {"name": "ORIGIN"}}),
                         ("source", {"name": "SOURCE", "sources": [{"name": "ORIGIN"}]})):
        cpu = cpu_seconds(pid)
        started = time.monotonic()
        created = await request("$JS.API.STREAM.CREATE." + config["name"], config)
        assert "error" not in created, created
        while True:
            info = await request("$JS.API.STREAM.INFO." + config["name"])
            if info["state"]["messages"] >= messages:
                break
            await asyncio.sleep(0.02)
        seconds = time.monotonic() - started
        out[kind] = (messages / seconds, (cpu_seconds(pid) - cpu) / messages * 10_000)
    await nc.close()
    return out


def run(which: str, messages: int, size: int) -> None:
    folder = tempfile.mkdtemp()
    try:
        if which == "nats-server":
            server = process.nats_server("-js", "-sd", os.path.join(folder, "js"))
        else:
            config = process.write_config(os.path.join(folder, "es.toml"), (
                '[service]\nhost = "127.0.0.1"\nport = 0\n[jetstream]\nstore_dir = "{}"\n').format(os.path.join(folder, "js")))
            server = process.eventsvc(config)
        port = server.start()
        assert server.process is not None
        pid = server.process.pid
        if shutil.which("taskset"):
            os.system("taskset -a -p -c 0 %d >/dev/null 2>&1" % pid)
        try:
            result = asyncio.run(scenario(port, pid, messages, size))
        finally:
            server.stop()
        for kind, (rate, cpu) in result.items():
            print("{:12} {:6} {:>9,.0f} msgs/s  {:6.2f} CPU s per 10,000".format(which, kind, rate, cpu))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--only", choices=("nats-server", "eventsvc"))
    args = parser.parse_args()
    print("{:,} messages of {} bytes".format(args.messages, args.size))
    for which in ("nats-server", "eventsvc"):
        if args.only in (None, which):
            run(which, args.messages, args.size)


if __name__ == "__main__":
    main()
