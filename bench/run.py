"""
Side-by-side benchmark: nats-server and eventsvc under the same natsbench
load, in the same run, reported as ratios (the machines are shared and
noisy; absolute figures mean little, ratios from one run mean more).

    python bench/run.py [--runs 3] [--quick] [--warm [SECONDS]] [--pypy .venv-pypy/bin/python]
                        [--only plain|many|tls|routed|gateways|leafs|memory]

Each server runs pinned to core 0 (taskset) and the load generator to core 1,
so the figures measure the server, not the two fighting over one core.
Beside each rate is the server's CPU per message, read from /proc (user and
system time of all its threads, over the messages delivered, or published
where nobody subscribes): on a fixed-rate scene (the slow fleet) that is
the figure that counts.

The servers of a scene take turns, one run each, then again (interleaved:
a noisy moment hurts them all), and the order turns between runs, because
where a server runs weighs: an eventsvc column that ran before another of
the same tree paid up to ~25% more CPU a message (docs/performance.md,
"The columns' order weighs").  Runs go in pairs, the second the first
reversed, each pair starting one place further round: with --runs 2 and
--old, nats-server, eventsvc, old-x, then old-x, eventsvc, nats-server, so
any two servers swap and each server's mean place is the middle; over
twice as many runs as servers each holds each place twice.  The line
above the table says which order each run took.  With --runs 1 the order
is fixed, and a difference between two columns says little.  The order is
not all: this tree's column runs the source tree, an --old column the
installed package, and the same code read 1-3% apart that way whatever
the order (docs/performance.md, "bench/run.py turns the servers' order");
to compare two trees, give both as --old.

The scenes in "many" are traffic as users send it: messages spread over
hundreds to thousands of subjects through wildcard subscriptions, publish
only, a fleet of slow publishers (each read carries one PUB), 16
publishers over 1,000 subjects, queue groups of 10, and request/reply
from 50 requesters, each with its own inbox (rate, p50 and p99 from the
same runs).  They use our natsbench (bench/natsbench, built by this
script from Debian's Go packages when it is missing).

Each ratio that misses issue 30's goal is flagged with "<" (CPython: at
least 50% of nats-server's rate and at most 2x its CPU per message; PyPy:
at least 100% of its rate; a latency mirrored: at most 2x, at most level;
the slow fleet, whose rate the load fixes, by CPU per message), and the
scenes that miss are listed again at the end.

With --warm [SECONDS], every server (nats-server too) first runs each
scene untimed, again and again for SECONDS (5 if not given), right before
its own first measured run of it (not while the others warm): a PyPy
server's JIT compiles a scene's code over its first few
hundred thousand messages (a 1 KiB message cost a fresh PyPy server 6.9 us
of CPU, the same server 2.0-2.2 after 600,000; docs/performance.md, "PyPy's
read side, third session"), so without it PyPy's lines say what a server
costs in its first seconds, with it what a server that has been up a while
costs.  One run of a scene is too short for that (the quick 1 KiB scene
is 25,000 messages, its connections scene 100 connections), hence the
seconds.  Report which: both are true of a PyPy deployment.

Needs nats-server (apt-get install nats-server), taskset (util-linux) and
eventsvc installed in the running interpreter.  It prints figures; it never
passes or fails.
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
import time
from typing import Callable, Dict, Generator, List, Optional, Sequence, Set, Tuple, TypeVar

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
    ("request/reply", ["-mode", "latency", "-n", "{nl}"], [("request/reply p50 (us)", "p50_us"), ("request/reply p99 (us)", "p99_us")]),
    # Connections a second in plaintext, as "mutual TLS connections/s" (four
    # nats.go clients each connecting, flushing and closing in turn): what
    # the connection's own set-up costs, without the handshake.
    ("plain connections/s", ["-mode", "connect", "-np", "4", "-n", "{nc}"], "conn_rate"),
]

#: Traffic as users send it.  The slow fleet runs at a fixed rate (200
#: publishers at 50 messages a second each): its rate is the same for every
#: server, and its CPU per message is what to compare.
MANY = [
    ("1,000 subj, 'a.*.b' sub 1:1", ["-np", "1", "-ns", "1", "-subjects", "1000", "-sub", "pwc", "-n", "{n}"], "deliver_rate"),
    ("1,000 subj, 'a.>' sub 1:1", ["-np", "1", "-ns", "1", "-subjects", "1000", "-sub", "fwc", "-n", "{n}"], "deliver_rate"),
    ("1,000 subj, 'a.*.b' 4:2", ["-np", "4", "-ns", "2", "-subjects", "1000", "-sub", "pwc", "-n", "{n4}"], "deliver_rate"),
    ("300 subj, 300 subs each 1:1", ["-np", "1", "-ns", "1", "-subjects", "300", "-sub", "exact", "-n", "{n}"], "deliver_rate"),
    ("10,000 subj, 'a.>' 1:1 1 KiB", ["-np", "1", "-ns", "1", "-subjects", "10000", "-sub", "fwc", "-ms", "1024", "-n", "{n}"], "deliver_rate"),
    ("publish only, 1 subj", ["-mode", "pubonly", "-np", "1", "-n", "{n}"], "pub_rate"),
    ("publish only, 1,000 subj", ["-mode", "pubonly", "-np", "1", "-subjects", "1000", "-n", "{n}"], "pub_rate"),
    ("slow fleet 200x50/s, 'a.>'", ["-np", "200", "-ns", "1", "-subjects", "1000", "-sub", "fwc", "-rate", "50", "-n", "{nf}"], "deliver_rate"),
    # Many publishers on many subjects: 16 connections, none forming runs.
    ("1,000 subj, 'a.>' 16:2", ["-np", "16", "-ns", "2", "-subjects", "1000", "-sub", "fwc", "-n", "{n16}"], "deliver_rate"),
    # A queue group of 10: each message goes to one member.
    ("queue group of 10, 1:10", ["-np", "1", "-ns", "10", "-queue", "q", "-n", "{n}"], "deliver_rate"),
    ("queue of 10, 1,000 subj 4:10", ["-np", "4", "-ns", "10", "-queue", "q", "-subjects", "1000", "-sub", "pwc", "-n", "{n4}"], "deliver_rate"),
    # Request/reply with many inboxes: 50 requesters, each its own
    # connection and inbox, one request in flight each, over 100 subjects,
    # two responders in a queue group.
    ("req/rep 50 inboxes", ["-mode", "reqrep", "-np", "50", "-ns", "2", "-subjects", "100", "-n", "{nr}"],
     [("req/rep 50 inboxes, req/s", "rps"), ("req/rep 50 inboxes p50 (us)", "p50_us"), ("req/rep 50 inboxes p99 (us)", "p99_us")]),
]

#: Scenes whose rate is fixed by the load (the slow fleet): CPU per message
#: is the figure their goal is checked on.
FIXED_RATE = {"slow fleet 200x50/s, 'a.>'"}

#: The goals of issue 30, per interpreter: the least rate ratio (for a
#: latency, the most ours may be over theirs) and the least ratio of CPU per
#: message (theirs over ours), None where the goal says nothing of CPU.
GOALS = {"cpython": (0.5, 0.5), "pypy": (1.0, None)}

#: Server on core 0, load generator on core 1 (see the module's text).
SERVER_CORE, LOAD_CORE = "0", "1"


def natsbench() -> str:
    """Our natsbench (bench/natsbench), built into it when missing or older than its source."""
    source = os.path.join(HERE, "natsbench")
    out = os.path.join(source, "natsbench")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(os.path.join(source, "main.go")):
        subprocess.run(["sh", os.path.join(source, "build"), out], check=True)
    return out


def cpu_seconds(pid: int) -> float:
    """
    CPU time of process C{pid}, all its threads, in seconds: from each
    thread's schedstat (nanoseconds) where the kernel keeps it, else user
    and system time from stat (clock ticks, 10 ms: too coarse for a quick
    run, which lasts a tenth of a second).
    """
    try:
        total = 0
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/schedstat" % (pid, task)) as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(tool: str, servers: "List[process.ServerProcess] | process.ServerProcess", args: List[str], host: str = "127.0.0.1", port: int = 0) -> Dict[str, float]:
    """
    One natsbench run (on the load core) against C{servers} (the first one
    is dialled unless C{port} says otherwise); C{cpu_us} is their CPU per
    message in microseconds.
    """
    if not isinstance(servers, list):
        servers = [servers]
    scheme = "tls" if "-ca" in args else "nats"
    pids = [s.process.pid for s in servers if s.process is not None]
    if WARMING[0]:
        # Untimed: again and again until the server has had WARM seconds of it.
        until = time.monotonic() + WARM[0]
        while True:
            figures = _measure_once(tool, pids, scheme, host, port or servers[0].port, args)
            if time.monotonic() >= until:
                return figures
    return _measure_once(tool, pids, scheme, host, port or servers[0].port, args)


def _measure_once(tool: str, pids: List[int], scheme: str, host: str, port: int, args: List[str]) -> Dict[str, float]:
    before = sum(map(cpu_seconds, pids))
    result = subprocess.run(
        ["taskset", "-c", LOAD_CORE, tool, "-url", "%s://%s:%d" % (scheme, host, port), "-timeout", "120s", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    spent = sum(map(cpu_seconds, pids)) - before
    figures = {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", result.stdout)}
    if result.returncode != 0 or not figures:
        raise RuntimeError("natsbench failed: {} {}".format(result.stdout, result.stderr))
    messages = figures.get("delivered") or figures.get("published") or figures.get("n") or 1
    figures["cpu_us"] = spent * 1e6 / messages
    return figures


def tls_setup(directory: str) -> Dict[str, str]:
    """FAKE certificates, an eventsvc config and a nats-server config, both mutual TLS."""
    from eventsvc.security import certs

    ca = certs.make_ca()
    files: Dict[str, str] = {}
    for role, minted in (("ca", ca), ("server", certs.make_cert(ca, "server", ["localhost", "127.0.0.1"])),
                         ("client", certs.make_cert(ca, "client", ["client"]))):
        for ext, data in ((".crt", minted.cert_pem), (".key", minted.key_pem)):
            files[role + ext] = process.write_bytes(os.path.join(directory, role + ext), data)
    # Absolute paths: start_servers copies the config into a folder per server.
    files["eventsvc"] = process.write_config(os.path.join(directory, "eventsvc.toml"), (
        '[service]\nhost = "127.0.0.1"\nport = 0\n[tls]\ncert_path = "{}"\nkey_path = "{}"\nroot_ca_path = "{}"\n'.format(
            files["server.crt"], files["server.key"], files["ca.crt"])))
    files["nats-server"] = process.write_config(os.path.join(directory, "nats.conf"), (
        'tls {{\n  cert_file: "{}"\n  key_file: "{}"\n  ca_file: "{}"\n  verify: true\n}}\n'.format(
            files["server.crt"], files["server.key"], files["ca.crt"])))
    return files


def tls_scenes(tool: str, runs: int, n: int) -> None:
    directory = tempfile.mkdtemp()
    files = tls_setup(directory)
    servers = start_servers(process.nats_server("--config", files["nats-server"]), files["eventsvc"])
    try:
        tls = ["-ca", files["ca.crt"], "-cert", files["client.crt"], "-key", files["client.key"]]
        args = ["-np", "1", "-ns", "1", "-ms", "16", "-n", str(n)] + tls
        # Connections a second from nats.go on the load core, four at a time:
        # a Python client, one at a time, was slower than nats-server and
        # measured itself.
        connect = ["-mode", "connect", "-np", "4", "-n", str(max(n // 1000, 25))] + tls
        for label, sample in (
            ("mutual TLS 1:1 16 B", lambda server: rate_and_cpu(measure(tool, server, args, host="localhost"), "deliver_rate")),
            ("mutual TLS connections/s", lambda server: rate_and_cpu(measure(tool, server, connect, host="localhost"), "conn_rate")),
        ):
            samples: Dict[str, List[Sample]] = {name: [] for name in servers}
            for name in turns(list(servers), runs):  # interleaved, the order turning
                samples[name].append(sample(servers[name]))
            report(label, samples)
    finally:
        for server in servers.values():
            server.stop()


def gateway_scenes(tool: str, runs: int, n: int) -> None:
    """
    Publisher in one cluster, subscriber in another, one gateway link each
    way: two nats-server clusters of one server, against eventsvc's split
    deployment by gateway (the event gateway publishing, the service
    subscribing), as the Go programs are linked.
    """
    directory = tempfile.mkdtemp()
    ga, gb = process.free_port(), process.free_port()
    references = []
    for name, port, other, remote in (("a", ga, gb, "b"), ("b", gb, ga, "a")):
        conf = process.write_config(os.path.join(directory, name + ".conf"), (
            'gateway {{ name: "{name}", host: "127.0.0.1", port: {port}, gateways: [{{name: "{remote}", urls: ["nats://127.0.0.1:{other}"]}}] }}\n'
        ).format(name=name, port=port, other=other, remote=remote))
        references.append(process.nats_server("-c", conf))
    a, b = references
    pairs = {}
    for k, (name, python) in enumerate(variants()):
        q = [process.free_port() for _ in range(4)]
        service = eventsvc(process.write_config(os.path.join(directory, "service%d.toml" % k), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n[supercluster]\nname = "event-service"\nhost = "127.0.0.1"\nport = %d\n'
        ) % (q[0], q[1])), expect=("service",), python=python)
        gateway = eventsvc(process.write_config(os.path.join(directory, "gateway%d.toml" % k), (
            '[service]\nenabled = false\n[gateway]\nenabled = true\nhost = "127.0.0.1"\nport = %d\ndisable_frontend_tls = true\n'
            'tokens = ["bench"]\nhealth_token_file = "gateway%d-health.token"\n[gateway.permissions]\npublish_allow = ["bench.>"]\n'
            '[supercluster]\nname = "event-gateway"\nhost = "127.0.0.1"\nport = %d\n'
            '[[supercluster.gateways]]\nname = "event-service"\nurls = ["nats://127.0.0.1:%d"]\n'
        ) % (q[2], k, q[3], q[1])), expect=("gateway",), python=python)
        pairs[name] = (service, gateway)
    everything = [a, b] + [p for pair in pairs.values() for p in pair]
    for server in everything:
        pinned(server).start()
    sides = split_sides(tool, (b, a), pairs)
    try:
        for label, size, count in (("gateway 1:1 16 B (gw->svc)", "16", n), ("gateway 1:1 1 KiB (gw->svc)", "1024", max(n // 4, 1))):
            args = ["-np", "1", "-ns", "1", "-ms", size, "-n", str(count)]
            samples: Dict[str, List[Sample]] = {name: [] for name in sides}
            for name in turns(list(sides), runs):
                samples[name].append(sides[name](args))
            report(label, samples)
    finally:
        for server in everything:
            server.stop()


def leaf_scenes(tool: str, runs: int, n: int) -> None:
    """
    A hub and a spoke, one leaf link: a nats-server hub with a nats-server
    spoke, against an eventsvc hub with an eventsvc spoke; publisher on one
    side, subscriber on the other, each way.
    """
    directory = tempfile.mkdtemp()
    ref_port = process.free_port()
    hub_conf = process.write_config(os.path.join(directory, "hub.conf"), "leafnodes { listen: \"127.0.0.1:%d\" }\n" % ref_port)
    spoke_conf = process.write_config(os.path.join(directory, "spoke.conf"), (
        'leafnodes { remotes [ { url: "nats-leaf://127.0.0.1:%d" } ] }\n') % ref_port)
    reference = (process.nats_server("-c", hub_conf), process.nats_server("-c", spoke_conf))
    pairs = {"nats-server": reference}
    for k, (name, python) in enumerate(variants()):
        q = [process.free_port() for _ in range(3)]
        hub = eventsvc(process.write_config(os.path.join(directory, "hub%d.toml" % k), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n[leafnodes]\nhost = "127.0.0.1"\nport = %d\n'
        ) % (q[0], q[1])), expect=("service",), python=python)
        spoke = eventsvc(process.write_config(os.path.join(directory, "spoke%d.toml" % k), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n[leafnodes]\nlisten = false\n'
            '[[leafnodes.remotes]]\nurl = "nats-leaf://127.0.0.1:%d"\n'
        ) % (q[2], q[1])), expect=("service",), python=python)
        pairs[name] = (hub, spoke)
    everything = [p for pair in pairs.values() for p in pair]
    for server in everything:
        pinned(server).start()
    try:
        for label, extra, count, up in (
            ("leaf 1:1 16 B (spoke->hub)", ["-ms", "16"], n, True),
            ("leaf 1:1 16 B (hub->spoke)", ["-ms", "16"], n, False),
            ("leaf 1:1 1 KiB (spoke->hub)", ["-ms", "1024"], max(n // 4, 1), True),
            # Traffic as users send it: many subjects, a wildcard subscriber.
            ("leaf 1k subj 'a.>' 1:1 s->h", ["-subjects", "1000", "-sub", "fwc"], n, True),
            ("leaf 1k subj 'a.*.b' 4:2 h->s", ["-np", "4", "-ns", "2", "-subjects", "1000", "-sub", "pwc"], max(n // 4, 1), False),
        ):
            args = ["-np", "1", "-ns", "1"] + extra + ["-n", str(count)]
            samples: Dict[str, List[Sample]] = {name: [] for name in pairs}
            for name in turns(list(pairs), runs):
                hub, spoke = pairs[name]
                subscriber, publisher = (hub, spoke) if up else (spoke, hub)
                samples[name].append(rate_and_cpu(measure(
                    tool, [subscriber, publisher], args + ["-puburl", "nats://127.0.0.1:%d" % publisher.port]), "deliver_rate"))
            report(label, samples)
    finally:
        for server in everything:
            server.stop()


def split_sides(tool: str, reference: Tuple[process.ServerProcess, process.ServerProcess],
                pairs: Dict[str, Tuple[process.ServerProcess, process.ServerProcess]]) -> Dict[str, Callable[[List[str]], Sample]]:
    """
    Per server, nats-server first, how to run natsbench's C{args} through a
    split deployment: C{reference} is nats-server's (subscriber's node,
    publisher's node), C{pairs} eventsvc's (service, gateway) by variant;
    the publisher dials the second with the bench token.
    """
    def side(subscribe: process.ServerProcess, publish: process.ServerProcess, *token: str) -> Callable[[List[str]], Sample]:
        return lambda args: rate_and_cpu(measure(
            tool, [subscribe, publish], args + ["-puburl", "nats://127.0.0.1:%d" % publish.port, *token]), "deliver_rate")

    sides = {"nats-server": side(*reference)}
    for name, (service, gateway) in pairs.items():
        sides[name] = side(service, gateway, "-pubtoken", "bench")
    return sides


def routed_scenes(tool: str, runs: int, n: int) -> None:
    """Publisher on one node, subscriber on another, one route between them."""
    directory = tempfile.mkdtemp()
    p = [process.free_port() for _ in range(6)]
    a = process.nats_server("--cluster", "nats://127.0.0.1:%d" % p[0], "--cluster_name", "bench", "--routes", "nats://127.0.0.1:%d" % p[1])
    b = process.nats_server("--cluster", "nats://127.0.0.1:%d" % p[1], "--cluster_name", "bench", "--routes", "nats://127.0.0.1:%d" % p[0])
    pairs = {}
    for k, (name, python) in enumerate(variants()):
        q = [process.free_port() for _ in range(3)]
        service = eventsvc(process.write_config(os.path.join(directory, "service%d.toml" % k), (
            '[service]\nhost = "127.0.0.1"\nport = %d\n[cluster]\nenabled = true\nname = "bench"\nhost = "127.0.0.1"\nport = %d\n'
        ) % (q[0], q[1])), expect=("service",), python=python)
        gateway = eventsvc(process.write_config(os.path.join(directory, "gateway%d.toml" % k), (
            '[service]\nenabled = false\n[gateway]\nenabled = true\nhost = "127.0.0.1"\nport = %d\ndisable_frontend_tls = true\n'
            'tokens = ["bench"]\nhealth_token_file = "gateway%d-health.token"\n[gateway.permissions]\npublish_allow = ["bench.>"]\n'
            '[cluster]\nenabled = true\nname = "bench"\nlisten = false\nroutes = ["nats-route://127.0.0.1:%d"]\n'
        ) % (q[2], k, q[1])), expect=("gateway",), python=python)
        pairs[name] = (service, gateway)
    everything = [a, b] + [p for pair in pairs.values() for p in pair]
    for server in everything:
        pinned(server).start()
    try:
        args = ["-np", "1", "-ns", "1", "-ms", "16", "-n", str(n)]
        # Both servers of a pair on the server core; CPU is theirs together.
        sides = split_sides(tool, (b, a), pairs)
        samples: Dict[str, List[Sample]] = {name: [] for name in sides}
        for name in turns(list(sides), runs):
            samples[name].append(sides[name](args))
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


def eventsvc(config: str, expect: Sequence[str] = (), python: Optional[str] = None, env: Optional[dict] = None) -> process.ServerProcess:
    """
    L{process.eventsvc}, but ready without the line saying every part has
    started when C{python} is an C{--old} release's: trees before 915bd51
    do not log it (their listeners' lines still say when they are ready).
    """
    server = process.eventsvc(config, expect=expect, python=python, env=env)
    if python is not None and python in OLD_PYTHONS:
        server.started = None
    return server


def start_servers(reference: process.ServerProcess, config: str) -> Dict[str, process.ServerProcess]:
    """The reference server and eventsvc on each interpreter, on C{config}, started."""
    servers = {"nats-server": reference}
    for name, python in variants():
        # An "old" variant runs the release installed in that interpreter's
        # environment, not this source tree.
        env = {"PYTHONPATH": ""} if name in OLD else None
        # Each in a folder of its own: the spool beside the config
        # ([service] data_dir's default) is one process's at a time.
        own = os.path.join(tempfile.mkdtemp(), os.path.basename(config))
        shutil.copyfile(config, own)
        servers[name] = eventsvc(own, python=python, env=env)
    for server in servers.values():
        pinned(server).start()
    return servers


def pinned(server: process.ServerProcess) -> process.ServerProcess:
    """C{server}, to be started on the server core."""
    if server.argv[0] != "taskset":
        server.argv[:0] = ["taskset", "-c", SERVER_CORE]
    return server


#: A figure, and the server's CPU per message in microseconds (None: not measured).
Sample = Tuple[float, Optional[float]]


def rate_and_cpu(figures: Dict[str, float], key: str) -> Sample:
    return figures[key], figures["cpu_us"]


#: The PyPy setting that trades throughput for a tighter heap (docs/operations.md).
TIGHT_GC = {"PYPY_GC_MAJOR_COLLECT": "1.2"}


def memory_scene(runs: int) -> None:
    config = os.path.join(tempfile.mkdtemp(), "bench.toml")
    process.write_config(config, '[service]\nhost = "127.0.0.1"\nport = 0\nlistener_limit = 100000\n')
    servers = start_servers(process.nats_server(), config)
    tight = None
    pypy = [python for name, python in variants() if python]
    if pypy:
        tight = eventsvc(config, python=pypy[0], env=TIGHT_GC)
        pinned(tight).start()
    try:
        samples: Dict[str, List[Sample]] = {name: [(idle_memory(server.port, server.process.pid), None)] for name, server in servers.items()}
        report("idle conn memory (bytes)", samples, goals=False)
        if tight is not None:
            ref = samples["nats-server"][0][0]
            ours = idle_memory(tight.port, tight.process.pid)
            print("{:<30} {:>10,.0f} {:>7} {:>10} {:>6} {:>7} {:>10,.0f} {:>6.0%}".format("  same, PyPy GC at 1.2", ref, "", "", "", "", ours, ours / ref))
    finally:
        for server in servers.values():
            server.stop()
        if tight is not None:
            tight.stop()


VARIANTS: List[Tuple[str, Optional[str]]] = [("eventsvc", None)]
#: The variants that run an installed release (--old).
OLD: List[str] = []
#: Their interpreters (L{eventsvc}).
OLD_PYTHONS: Set[str] = set()


def variants() -> List[Tuple[str, Optional[str]]]:
    """("eventsvc", None) for this interpreter, plus ("eventsvc-pypy", python) with --pypy."""
    return VARIANTS


def interpreter(python: Optional[str]) -> str:
    """C{"pypy"} or C{"cpython"}: which goal a variant run by C{python} is held to."""
    if python is None:
        return "pypy" if sys.implementation.name == "pypy" else "cpython"
    return "pypy" if "pypy" in os.path.realpath(python).lower() or "pypy" in python.lower() else "cpython"


#: Scenes below their goal, for the summary at the end: (label, variant, why).
BELOW: List[Tuple[str, str, str]] = []


def below_goal(label: str, name: str, python: Optional[str], ratio: float, cpu_ratio: Optional[float], lower_is_better: bool,
               cpu_goal: bool = True) -> List[str]:
    """
    What of C{name}'s figures misses its interpreter's goal (L{GOALS}) on
    scene C{label}: C{"rate"}, C{"cpu"}, both or nothing.  C{ratio} is ours
    over theirs; for a latency (C{lower_is_better}) the bound is mirrored
    (CPython at most 2x nats-server's, PyPy at most level).  C{cpu_goal}:
    whether CPU per message is judged on this line (one line per run: the
    others of the same runs have the same CPU).
    """
    least_rate, least_cpu = GOALS[interpreter(python)]
    missed = []
    if label in FIXED_RATE:
        # The load fixes the rate; CPU per message is the figure, held to the
        # interpreter's rate goal when the goal says nothing of CPU.
        least_cpu = least_cpu or least_rate
    elif lower_is_better:
        if ratio > 1 / least_rate:
            missed.append("latency")
    elif ratio < least_rate:
        missed.append("rate")
    if cpu_goal and least_cpu is not None and cpu_ratio is not None and cpu_ratio < least_cpu:
        missed.append("cpu")
    for what in missed:
        BELOW.append((label, name, what))
    return missed


#: Seconds of untimed traffic before a server's first measured run of a
#: scene (--warm); 0: none.
WARM = [0.0]
#: Whether the turn under way is a warm-up (L{turns}, L{measure}).
WARMING = [False]

#: A server of a scene, by name or as an object: whatever L{order} is given.
S = TypeVar("S")


def order(servers: Sequence[S], run: int) -> List[S]:
    """
    The order C{servers} take in run C{run} (0, 1, ...) of a scene.  Runs
    go in pairs: the second of a pair is the first reversed, and each pair
    starts one place further round than the pair before.  Where a server
    runs weighs (the first eventsvc column of a kind paid up to ~25% more
    CPU a message than a later column of the same tree: docs/performance.md,
    "The columns' order weighs"), so no server keeps a place: any two swap
    between the runs of a pair (with C{--runs 2} each of two trees runs
    before the other once, nats-server first and then last), every
    server's mean place over a pair is the middle, and over
    2 x len(servers) runs each server holds each place twice.
    """
    if not servers:
        return []
    shift = (run // 2) % len(servers)
    turned = list(servers[shift:]) + list(servers[:shift])
    return turned[::-1] if run % 2 else turned


def turns(servers: Sequence[S], runs: int) -> Generator[S, None, None]:
    """
    The servers of a scene in the order their runs take place: C{runs}
    runs, each in its L{order}.  With C{--warm}, a server's first turn is
    given twice, the first time with C{WARMING} set (L{measure} then runs
    the scene again and again for C{WARM} seconds, untimed): each server is
    warmed right before its own first measured run, not while the others
    warm, and the warm-up is the first of its samples (L{report} drops it).
    """
    for run in range(runs):
        for server in order(servers, run):
            if run == 0 and WARM[0]:
                WARMING[0] = True
                try:
                    yield server
                finally:
                    WARMING[0] = False
            yield server


def describe_orders(servers: Sequence[str], runs: int) -> str:
    """The order of each run, for the output: C{"run 1: a, b; run 2: b, a"}."""
    return "; ".join("run {}: {}".format(run + 1, ", ".join(order(servers, run))) for run in range(runs))


def report(label: str, samples: Dict[str, List[Sample]], lower_is_better: bool = False, goals: bool = True, cpu_goal: bool = True) -> None:
    """
    One line: the reference's median figure and CPU per message, then per
    eventsvc its figure, the ratio of figures (for latencies, lower is
    better), its CPU per message and the ratio of CPU per message (theirs
    over ours: above 100% means we spend less per message), and a C{<}
    after a ratio that misses its goal (L{GOALS}); the scenes that miss are
    listed again at the end (L{summary}).
    """
    if WARM[0] and goals:
        # (Each server's first sample is its warm-up: L{turns}.)
        samples = {name: figures[1:] for name, figures in samples.items()}
    ref, ref_cpu = _medians(samples["nats-server"])
    line = "{:<30} {:>10,.0f} {:>7}".format(label, ref, _us(ref_cpu))
    for name, python in VARIANTS:
        ours, cpu = _medians(samples[name])
        ratio = ours / ref if ref else float("nan")
        cpu_ratio = ref_cpu / cpu if cpu and ref_cpu else None
        missed = below_goal(label, name, python, ratio, cpu_ratio, lower_is_better, cpu_goal) if goals else []
        line += " {:>10,.0f} {:>5.0%}{} {:>7} {:>5}{}".format(
            ours, ratio, "<" if "rate" in missed or "latency" in missed else " ", _us(cpu),
            "{:.0%}".format(cpu_ratio) if cpu_ratio is not None else "", "<" if "cpu" in missed else " ")
    print(line)
    sys.stdout.flush()


def summary() -> None:
    """The scenes below their goal, by variant (what C{make bench} flags)."""
    print()
    print("goals (issue 30): CPython at least 50% of nats-server's rate and at most 2x its CPU per message;"
          " PyPy at least 100% of its rate (latency: at most 2x, at most level)")
    if not BELOW:
        print("every scene meets its goal")
        return
    for name, _ in VARIANTS:
        missed: Dict[str, List[str]] = {}
        for label, variant, what in BELOW:
            if variant == name:
                missed.setdefault(label, []).append(what)
        if missed:
            print("below goal, {} ({} lines):".format(name, len(missed)))
            for label, whats in missed.items():
                print("  {:<30} {}".format(label, ", ".join(whats)))


def _medians(samples: List[Sample]) -> "Tuple[float, Optional[float]]":
    cpus = [c for _, c in samples if c is not None]
    return statistics.median(v for v, _ in samples), statistics.median(cpus) if cpus else None


def _us(cpu: Optional[float]) -> str:
    return "" if cpu is None else "{:.2f}".format(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3,
                        help="runs per scene and server (median reported); the servers' order turns between runs (above)")
    parser.add_argument("--quick", action="store_true", help="smaller message counts")
    parser.add_argument("--warm", metavar="SECONDS", type=float, nargs="?", const=5.0, default=0.0,
                        help="run each scene untimed on every server for SECONDS (default 5), right before its first"
                             " measured run (PyPy's JIT warms up over its first messages)")
    parser.add_argument("--pypy", metavar="PYTHON", help="also run eventsvc under this interpreter (e.g. .venv-pypy/bin/python)")
    parser.add_argument("--old", metavar="PYTHON", action="append",
                        help="also run the eventsvc release installed for this interpreter (a venv's python), as it is, for before/after in one run")
    parser.add_argument("--only", choices=["plain", "many", "tls", "routed", "gateways", "leafs", "memory"], help="run only these scenes")
    options = parser.parse_args()
    n = 100000 if options.quick else 300000
    WARM[0] = options.warm
    counts = {"n": n, "n4": n // 4, "n16": n // 16, "nl": 2000 if options.quick else 5000, "nf": 100 if options.quick else 200,
              "nr": 100 if options.quick else 300, "nc": max(n // 1000, 25)}

    tool = natsbench()
    VARIANTS[:] = [("eventsvc", None)] + ([("eventsvc-pypy", options.pypy)] if options.pypy else [])
    for python in options.old or []:
        # Named after the tree its venv is in (<tree>/.venv/bin/python): two
        # trees' venvs are both ".venv", and a name they shared kept one column.
        venv = os.path.dirname(os.path.dirname(os.path.abspath(python)))
        name = "old-" + os.path.basename(os.path.dirname(venv) if os.path.basename(venv).startswith(".venv") else venv)
        while name in OLD:
            name += "'"
        VARIANTS.append((name, python))
        OLD.append(name)
        OLD_PYTHONS.add(python)
    print("eventsvc on {} {}{}; {}".format(
        sys.implementation.name, sys.version.split()[0], " and on " + options.pypy if options.pypy else "",
        subprocess.run(["nats-server", "--version"], capture_output=True, text=True).stdout.strip()))
    print("server pinned to core {}, load to core {}; cpu: server CPU per message (us)".format(SERVER_CORE, LOAD_CORE))
    print("servers' order, every scene: {}{}".format(
        describe_orders(["nats-server"] + [name for name, _ in VARIANTS], options.runs),
        "; each server's first run follows its {:g} s of warm-up".format(WARM[0]) if WARM[0] else ""))
    header = "{:<30} {:>10} {:>7}".format("scene", "nats-server", "cpu")
    for name, _ in VARIANTS:
        header += " {:>10} {:>6} {:>7} {:>6}".format(name[:10], "ratio", "cpu", "ratio")
    print(header)
    if options.only in (None, "plain"):
        plain_scenes(tool, options.runs, counts, SCENES)
    if options.only in (None, "many"):
        plain_scenes(tool, options.runs, counts, MANY)
    if options.only in (None, "tls"):
        tls_scenes(tool, options.runs, counts["n"])
    if options.only in (None, "routed"):
        routed_scenes(tool, options.runs, counts["n"])
    if options.only in (None, "gateways"):
        gateway_scenes(tool, options.runs, counts["n"])
    if options.only in (None, "leafs"):
        leaf_scenes(tool, options.runs, counts["n"])
    if options.only in (None, "memory"):
        memory_scene(options.runs)
    summary()


def plain_scenes(tool: str, runs: int, counts: Dict[str, int], scenes: list) -> None:
    config = os.path.join(tempfile.mkdtemp(), "bench.toml")
    process.write_config(config, '[service]\nhost = "127.0.0.1"\nport = 0\n')
    servers = start_servers(process.nats_server(), config)
    try:
        for label, args, keys in scenes:
            args = [a.format(**counts) for a in args]
            # One run can give several figures (a rate and latencies), each its line.
            lines = [(label, keys)] if isinstance(keys, str) else keys
            runs_of: Dict[str, List[Dict[str, float]]] = {name: [] for name in servers}
            # Interleave, so that a noisy moment hurts both, the order
            # turning between runs, so that no server keeps a place.
            for name in turns(list(servers), runs):
                runs_of[name].append(measure(tool, servers[name], args))
            for k, (line_label, key) in enumerate(lines):
                report(line_label, {name: [rate_and_cpu(f, key) for f in figures] for name, figures in runs_of.items()},
                       lower_is_better=key.endswith("_us"), cpu_goal=k == 0)
    finally:
        for server in servers.values():
            server.stop()


if __name__ == "__main__":
    main()
