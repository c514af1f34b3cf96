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
    ("pub/sub 4:4 16 B", ["-np", "4", "-ns", "4", "-ms", "16", "-n", "{n4}"], "deliver_rate"),
    ("pub/sub 1:1 1 KiB", ["-np", "1", "-ns", "1", "-ms", "1024", "-n", "{n4}"], "deliver_rate"),
    ("pub/sub 1:4 1 KiB", ["-np", "1", "-ns", "4", "-ms", "1024", "-n", "{n4}"], "deliver_rate"),
    ("pub/sub 4:4 1 KiB", ["-np", "4", "-ns", "4", "-ms", "1024", "-n", "{n16}"], "deliver_rate"),
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


def measure(tool: str, port: int, args: List[str], host: str = "127.0.0.1") -> Dict[str, float]:
    scheme = "tls" if "-ca" in args else "nats"
    result = subprocess.run(
        [tool, "-url", "%s://%s:%d" % (scheme, host, port), "-timeout", "120s", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    figures = dict(re.findall(r"(\w+)=([\d.]+)", result.stdout))
    if result.returncode != 0 or not figures:
        raise RuntimeError("natsbench failed: {} {}".format(result.stdout, result.stderr))
    return {k: float(v) for k, v in figures.items()}


def tls_setup(directory: str) -> Dict[str, str]:
    """FAKE certificates, an eventsvc config and a nats-server config, both mutual TLS."""
    from eventsvc.security import certs

    ca = certs.make_ca()
    files: Dict[str, str] = {}
    for role, minted in (("ca", ca), ("server", certs.make_cert(ca, "server", ["localhost", "127.0.0.1"])),
                         ("client", certs.make_cert(ca, "client", ["client"]))):
        for ext, data in ((".crt", minted.cert_pem), (".key", minted.key_pem)):
            files[role + ext] = process.write_bytes(os.path.join(directory, role + ext), data)
    files["eventsvc"] = process.write_config(os.path.join(directory, "eventsvc.toml"), (
        '[service]\nhost = "127.0.0.1"\nport = 0\n[tls]\ncert_path = "server.crt"\nkey_path = "server.key"\n'
        'root_ca_path = "ca.crt"\n'))
    files["nats-server"] = process.write_config(os.path.join(directory, "nats.conf"), (
        'tls {{\n  cert_file: "{}"\n  key_file: "{}"\n  ca_file: "{}"\n  verify: true\n}}\n'.format(
            files["server.crt"], files["server.key"], files["ca.crt"])))
    return files


def connection_rate(port: int, files: Dict[str, str], seconds: float = 3.0) -> float:
    """Connections per second: TCP, INFO, TLS handshake, CONNECT, PING/PONG, close."""
    import socket
    import ssl
    import time

    context = ssl.create_default_context(cafile=files["ca.crt"])
    context.load_cert_chain(files["client.crt"], files["client.key"])
    done = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.recv(4096)
            with context.wrap_socket(raw, server_hostname="localhost") as s:
                s.sendall(b'CONNECT {"verbose":false}\r\nPING\r\n')
                data = b""
                while not data.endswith(b"PONG\r\n"):
                    data += s.recv(4096)
        done += 1
    return done / (time.monotonic() - started)


def tls_scenes(tool: str, runs: int, n: int) -> None:
    directory = tempfile.mkdtemp()
    files = tls_setup(directory)
    servers = start_servers(process.nats_server("--config", files["nats-server"]), files["eventsvc"])
    try:
        args = ["-np", "1", "-ns", "1", "-ms", "16", "-n", str(n), "-ca", files["ca.crt"], "-cert", files["client.crt"], "-key", files["client.key"]]
        for label, sample in (
            ("mutual TLS 1:1 16 B", lambda port: measure(tool, port, args, host="localhost")["deliver_rate"]),
            ("mutual TLS connections/s", lambda port: connection_rate(port, files)),
        ):
            samples: Dict[str, List[float]] = {name: [] for name in servers}
            for _ in range(runs):
                for name, server in servers.items():  # interleaved
                    samples[name].append(sample(server.port))
            report(label, samples)
    finally:
        for server in servers.values():
            server.stop()


def routed_scenes(tool: str, runs: int, n: int) -> None:
    """Publisher on one node, subscriber on another, one route between them."""
    directory = tempfile.mkdtemp()
    p = [process.free_port() for _ in range(6)]
    a = process.nats_server("--cluster", "nats://127.0.0.1:%d" % p[0], "--cluster_name", "bench", "--routes", "nats://127.0.0.1:%d" % p[1])
    b = process.nats_server("--cluster", "nats://127.0.0.1:%d" % p[1], "--cluster_name", "bench", "--routes", "nats://127.0.0.1:%d" % p[0])
    pairs = {}
    for k, (name, python) in enumerate(variants()):
        q = [process.free_port() for _ in range(3)]
        service = process.eventsvc(process.write_config(os.path.join(directory, "service%d.toml" % k), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n[cluster]\nenabled = true\nname = "bench"\nhost = "127.0.0.1"\nport = %d\n'
        ) % (q[0], q[1])), expect=("service",), python=python)
        gateway = process.eventsvc(process.write_config(os.path.join(directory, "gateway%d.toml" % k), (
            '[service]\nenabled = false\n[gateway]\nenabled = true\nhost = "127.0.0.1"\nport = %d\ndisable_frontend_tls = true\n'
            'tokens = ["bench"]\n[gateway.permissions]\npublish_allow = ["bench.>"]\n'
            '[cluster]\nenabled = true\nname = "bench"\nlisten = false\nroutes = ["nats-route://127.0.0.1:%d"]\n'
        ) % (q[2], q[1])), expect=("gateway",), python=python)
        pairs[name] = (service, gateway)
    everything = [a, b] + [p for pair in pairs.values() for p in pair]
    for server in everything:
        server.start()
    try:
        args = ["-np", "1", "-ns", "1", "-ms", "16", "-n", str(n)]
        samples: Dict[str, List[float]] = {"nats-server": []}
        samples.update({name: [] for name in pairs})
        for _ in range(runs):
            samples["nats-server"].append(measure(tool, b.port, args + ["-puburl", "nats://127.0.0.1:%d" % a.port])["deliver_rate"])
            for name, (service, gateway) in pairs.items():
                samples[name].append(measure(tool, service.port, args + ["-puburl", "nats://127.0.0.1:%d" % gateway.port, "-pubtoken", "bench"])["deliver_rate"])
        report("routed 1:1 16 B (gw->svc)", samples)
    finally:
        for server in everything:
            server.stop()


def rss(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def idle_memory(port: int, pid: int, count: int = 1000) -> float:
    """Resident bytes per idle connection holding one subscription."""
    import resource
    import socket
    import time

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))
    time.sleep(0.5)
    before = rss(pid)
    sockets = []
    for i in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.recv(4096)
        s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB idle.%d 1\r\nPING\r\n' % i)
        sockets.append(s)
    for s in sockets:
        data = b""
        while not data.endswith(b"PONG\r\n"):
            data += s.recv(4096)
    time.sleep(1.0)
    after = rss(pid)
    for s in sockets:
        s.close()
    return (after - before) / count


def start_servers(reference: process.ServerProcess, config: str) -> Dict[str, process.ServerProcess]:
    """The reference server and eventsvc on each interpreter, on C{config}, started."""
    servers = {"nats-server": reference}
    for name, python in variants():
        servers[name] = process.eventsvc(config, python=python)
    for server in servers.values():
        server.start()
    return servers


#: The PyPy setting that trades throughput for a tighter heap (docs/operations.md).
TIGHT_GC = {"PYPY_GC_MAJOR_COLLECT": "1.2"}


def memory_scene(runs: int) -> None:
    config = os.path.join(tempfile.mkdtemp(), "bench.toml")
    process.write_config(config, '[service]\nhost = "127.0.0.1"\nport = 0\nlistener_limit = 100000\n')
    servers = start_servers(process.nats_server(), config)
    tight = None
    pypy = [python for name, python in variants() if python]
    if pypy:
        tight = process.eventsvc(config, python=pypy[0], env=TIGHT_GC)
        tight.start()
    try:
        samples = {name: [idle_memory(server.port, server.process.pid)] for name, server in servers.items()}
        report("idle conn memory (bytes)", samples)
        if tight is not None:
            ref = samples["nats-server"][0]
            ours = idle_memory(tight.port, tight.process.pid)
            print("{:<26} {:>12,.0f} {:>12} {:>6} {:>12,.0f} {:>6.0%}".format("  same, PyPy GC at 1.2", ref, "", "", ours, ours / ref))
    finally:
        for server in servers.values():
            server.stop()
        if tight is not None:
            tight.stop()


VARIANTS: List[Tuple[str, Optional[str]]] = [("eventsvc", None)]


def variants() -> List[Tuple[str, Optional[str]]]:
    """("eventsvc", None) for this interpreter, plus ("eventsvc-pypy", python) with --pypy."""
    return VARIANTS


def report(label: str, samples: Dict[str, List[float]]) -> None:
    ref = statistics.median(samples["nats-server"])
    line = "{:<26} {:>12,.0f}".format(label, ref)
    for name, _ in VARIANTS:
        us = statistics.median(samples[name])
        line += " {:>12,.0f} {:>6.0%}".format(us, us / ref if ref else float("nan"))
    print(line)
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per scene and server (median reported)")
    parser.add_argument("--quick", action="store_true", help="smaller message counts")
    parser.add_argument("--pypy", metavar="PYTHON", help="also run eventsvc under this interpreter (e.g. .venv-pypy/bin/python)")
    parser.add_argument("--only", choices=["plain", "tls", "routed", "memory"], help="run only these scenes")
    options = parser.parse_args()
    n = 100000 if options.quick else 300000
    counts = {"n": n, "n4": n // 4, "n16": n // 16, "nl": 2000 if options.quick else 5000}

    tool = natsbench()
    VARIANTS[:] = [("eventsvc", None)] + ([("eventsvc-pypy", options.pypy)] if options.pypy else [])
    print("eventsvc on {} {}{}; {}".format(
        sys.implementation.name, sys.version.split()[0], " and on " + options.pypy if options.pypy else "",
        subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()))
    header = "{:<26} {:>12}".format("scene", "nats-server")
    for name, _ in VARIANTS:
        header += " {:>12} {:>6}".format(name[:12], "ratio")
    print(header)
    if options.only in (None, "plain"):
        plain_scenes(tool, options.runs, counts)
    if options.only in (None, "tls"):
        tls_scenes(tool, options.runs, counts["n"])
    if options.only in (None, "routed"):
        routed_scenes(tool, options.runs, counts["n"])
    if options.only in (None, "memory"):
        memory_scene(options.runs)


def plain_scenes(tool: str, runs: int, counts: Dict[str, int]) -> None:
    config = os.path.join(tempfile.mkdtemp(), "bench.toml")
    process.write_config(config, '[service]\nhost = "127.0.0.1"\nport = 0\n')
    servers = start_servers(process.nats_server(), config)
    try:
        for label, args, key in SCENES:
            args = [a.format(**counts) for a in args]
            samples: Dict[str, List[float]] = {name: [] for name in servers}
            for _ in range(runs):
                # Interleave, so that a noisy moment hurts both.
                for name, server in servers.items():
                    samples[name].append(measure(tool, server.port, args)[key])
            report(label, samples)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
