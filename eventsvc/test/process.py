"""
Real processes for integration and interop tests: eventsvc started as a
user starts it (C{twistd -n eventsvc --config …}) and the reference
nats-server, each on a port the system picks, on loopback only.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.trial.unittest import SkipTest

_READY_EVENTSVC = re.compile(r"listening for NATS clients on [\d.]+:(\d+)")
_LISTENING = re.compile(r"(\w+) listening for NATS clients on [\d.]+:(\d+)")
#: eventsvc's cluster listener ("cluster <name> listening for routes on ..."): C{ports["routes"]}.
_LISTENING_ROUTES = re.compile(r"listening for (routes) on [\d.]+:(\d+)")
_READY_NATS = re.compile(r"Listening for client connections on [\d.]+:(\d+)")
#: nats-server's other listeners ("route", "leafnode", "gateway", "websocket"...), by name.
_LISTENING_NATS = re.compile(r"Listening for (\w+) connections on [\d.]+:(\d+)")
#: eventsvc's other listeners, as C{ports} names them: "monitor", "leafnodes", "supercluster", "grpc";
#: nats-server's monitor ("http") and websocket listener ("websocket").
_LISTENING_OTHERS = (
    (re.compile(r"monitor listening for HTTP on [\d.]+:(\d+)"), "monitor"),
    (re.compile(r"listening for leaf nodes on [\d.]+:(\d+)"), "leafnodes"),
    (re.compile(r"supercluster gateway \S+ listening on [\d.]+:(\d+)"), "supercluster"),
    (re.compile(r"grpc listening for .* on [\d.]+:(\d+)"), "grpc"),
    (re.compile(r"Starting https? monitor on [\d.]+:(\d+)"), "http"),
    (re.compile(r"Listening for websocket clients on wss?://[\d.]+:(\d+)"), "websocket"),
)
#: eventsvc's line once every part has started, every listener bound: it
#: exits instead when one cannot be ("cannot listen on ...").
_STARTED_EVENTSVC = re.compile(r"eventsvc \S+ started")
#: What a server says when a port it was told to use is taken.
_PORT_TAKEN = re.compile(r".*(?:address already in use|Error listening on|can't listen to the monitor port).*", re.IGNORECASE)


def cpu_times(pid: int, tid: Optional[int] = None) -> Tuple[float, float]:
    """
    Seconds thread C{tid} of process C{pid} (its main thread by default,
    where a Twisted reactor runs) has spent on a CPU, and ready to run but
    waiting for one: the first two fields of
    C{/proc/<pid>/task/<tid>/schedstat}.  (0.0, 0.0) where the kernel does
    not say (no schedstat, or the thread is gone).
    """
    try:
        with open("/proc/{}/task/{}/schedstat".format(pid, pid if tid is None else tid), "rb") as f:
            fields = f.read().split()
            return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0, 0.0


def waited_for_cpu(pid: int, tid: Optional[int] = None) -> float:
    """
    Seconds thread C{tid} of process C{pid} (its main thread by default)
    has spent ready to run but waiting for a CPU; see L{cpu_times}.
    """
    return cpu_times(pid, tid)[1]


class ServedClock:
    """
    Wall time less the time the watched threads waited for a CPU.

    A bound on what a client feels (a PING's round trip, a burst of
    greetings, a socket let go) read on this clock holds the server to
    what it did, the CPU it spent in one turn, the I/O or the timer it
    waited on, and not to what a machine shared with other work did to it:
    while the server's reactor, or the thread measuring it, was ready and
    not running.  A reactor held by 2 s of work is still 2 s late on this
    clock; the same reactor queued behind seven other test runs is not.
    (Where the kernel keeps no schedstat this is the wall clock.)

    The kernel counts each thread's waits, not when they fell, so two
    threads waiting at once would be taken off twice and the clock could
    run backwards (round trips of -5 ms at load 17).  The thread reading
    the clock (the reader) bounds that: what it measures is a request and
    its answer, so the server's waits that count fell while the reader
    slept on the answer, never while it ran or waited itself.  Between two
    readings the clock moves by the wall time less the waits, and never by
    less than the reader's own time on a CPU (nor less than nothing).
    """

    def __init__(
        self,
        *threads: Tuple[int, Optional[int]],
        reader: bool = False,
        stats: Callable[[int, Optional[int]], Tuple[float, float]] = cpu_times,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        @param threads: (pid, tid) of each thread whose waits are taken
            off; one of them, when it reads the clock, is the reader.
        @param reader: watch the thread that first reads the clock too.
        @param stats: (on-CPU, waiting) seconds of a thread (L{cpu_times}).
        @param now: the wall clock.
        """
        self.threads = list(threads)
        self._watch_reader = reader
        self._stats = stats
        self._now = now
        self._last: Optional[Tuple[float, List[Tuple[float, float]]]] = None
        self._served = 0.0

    @classmethod
    def of(cls, server: "ServerProcess") -> "ServedClock":
        """A clock for C{server}'s reactor as seen from the thread that reads it."""
        assert server.process is not None
        return cls((server.process.pid, None), reader=True)

    def waited(self) -> float:
        """The seconds the watched threads have waited for a CPU, added up."""
        return sum(self._stats(pid, tid)[1] for pid, tid in self.threads)

    def __call__(self) -> float:
        me = (os.getpid(), threading.get_native_id())
        if self._watch_reader and me not in self.threads:
            self._watch_reader = False
            self.threads.append(me)
        now, stats = self._now(), [self._stats(pid, tid) for pid, tid in self.threads]
        if self._last is None:
            self._served = now
        else:
            then, before = self._last
            wall = now - then
            waited = sum(w - w0 for (_, w), (_, w0) in zip(stats, before))
            ran = max((r - r0 for thread, (r, _), (r0, _) in zip(self.threads, stats, before) if thread == me), default=0.0)
            self._served += max(wall - waited, min(ran, wall), 0.0)
        self._last = (now, stats)
        return self._served


def require(program: str) -> str:
    """
    The path of C{program}; skip the test when it is missing, unless
    EVENTSVC_REQUIRE_INTEROP is set (as CI sets it), where missing is a
    failure.
    """
    # The interpreter's own scripts first (a virtual environment's twistd).
    beside = os.path.join(os.path.dirname(sys.executable), program)
    path = beside if os.access(beside, os.X_OK) else shutil.which(program)
    if path is None:
        message = "{} is not installed (apt-get install nats-server / pip install .)".format(program)
        if os.environ.get("EVENTSVC_REQUIRE_INTEROP"):
            raise AssertionError(message)
        raise SkipTest(message)
    return path


class ServerProcess:
    """A child process whose output is read until it says it is ready."""

    def __init__(
        self,
        argv: List[str],
        ready: "re.Pattern[str]",
        env: Optional[dict] = None,
        expect: Sequence[str] = (),
        started: "Optional[re.Pattern[str]]" = None,
    ) -> None:
        self.argv = argv
        #: The line it says once every listener it was configured with is
        #: bound (eventsvc's), so that a port taken on any of them fails
        #: the start, not the test that follows.
        self.started = started
        #: The listeners it must have opened to be ready, by the names it
        #: logs them with (eventsvc's "service", "gateway"; nats-server's
        #: "route", "leafnode"): nats-server opens its route port after it
        #: says it listens for clients, and exits if that port is taken.
        self.expect = tuple(expect)
        self.ready = ready
        self.env = env
        self.lines: List[str] = []
        self.port = 0
        #: Every "<name> listening ... :<port>" seen, by name.
        self.ports: dict = {}
        self.process: Optional[subprocess.Popen] = None
        self._reader: Optional[threading.Thread] = None
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()

    def start(self, timeout: float = 20.0) -> int:
        self.process = subprocess.Popen(
            self.argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        ready: Optional[int] = None
        started = self.started is None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop()
                raise AssertionError("{} not ready after {}s:\n{}".format(self.argv, timeout, self.output()))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(self._exited())
            self._note_port(line)
            match = self.ready.search(line)
            if match and ready is None:
                ready = int(match.group(1))
            if self.started is not None and self.started.search(line):
                started = True
            if ready is not None and started and all(name in self.ports for name in self.expect):
                # (The client listener's, where it has one: eventsvc logs
                # its other NATS listeners, "gateway", "websocket", alike.)
                self.port = self.port or self.ports.get("service", ready)
                return self.port

    def _note_port(self, line: str) -> None:
        """Keep the port of a listener C{line} says is open, by its name."""
        listening = _LISTENING.search(line) or _LISTENING_NATS.search(line) or _LISTENING_ROUTES.search(line)
        if listening:
            self.ports[listening.group(1)] = int(listening.group(2))
            return
        for pattern, name in _LISTENING_OTHERS:
            found = pattern.search(line)
            if found:
                self.ports[name] = int(found.group(1))
                return

    def _exited(self) -> str:
        """
        Why the start failed, the process having exited: first of all a
        port that was taken, which under C{trial -j2} is most likely one
        L{free_port} found free and another test bound first.
        """
        assert self.process is not None
        code = self.process.wait()
        output = self.output()
        taken = _PORT_TAKEN.search(output)
        if taken:
            return (
                "{} exited early ({}): a port it was told to use was taken before it could bind it "
                "(another process's; a port from free_port() can be taken by a test running beside): {}\n{}".format(
                    self.argv, code, taken.group(0).strip(), output)
            )
        return "{} exited early ({}):\n{}".format(self.argv, code, output)

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_output(self, text: str, timeout: float = 10.0) -> str:
        """
        The output once it contains C{text}: lines reach us through a pipe
        and a thread, after whatever the test saw the server do.
        """
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if time.monotonic() > deadline:
                raise AssertionError("{!r} not in the output after {}s:\n{}".format(text, timeout, self.output()))
            time.sleep(0.02)
        return self.output()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader is not None:
            # The last lines are still in the pipe when the process has gone.
            self._reader.join(5)
        return self.process.returncode


def run_until_exit(argv: Sequence[str], timeout: float = 30) -> "subprocess.CompletedProcess[str]":
    """A child eventsvc that is expected to stop by itself (a refused start, say): its output merged."""
    return subprocess.run(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
        env=child_env(), stdin=subprocess.DEVNULL,
    )


def child_env() -> dict:
    """
    The environment for a child eventsvc: it imports the same eventsvc as
    these tests, whether installed or run from a source tree.
    """
    env = dict(os.environ)
    source = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH", "")) if p)
    return env


def eventsvc(
    config_path: str,
    expect: Sequence[str] = (),
    python: Optional[str] = None,
    twist: Sequence[str] = (),
    env: Optional[dict] = None,
) -> ServerProcess:
    """
    eventsvc under twistd, in the foreground, as the README runs it; ready
    once it says it has started, every listener bound (it exits instead
    when a port is taken: the start then fails, naming the port), and the
    listeners named in C{expect} (and at least one) listen.  Each bound
    port is in C{ports} by name ("service", "routes", "monitor", ...), so a
    configuration can say C{port = 0} and the test read where it went.
    C{python}: another interpreter (a PyPy venv's) whose twistd to use.
    C{twist}: run under twist instead, with these twist options.
    C{env}: more environment variables (PYPY_GC_MAJOR_COLLECT, say).
    """
    if twist:
        argv = [require("twist"), *twist, "eventsvc", "--config", config_path]
        return ServerProcess(argv, _READY_EVENTSVC, dict(child_env(), **(env or {})), expect, _STARTED_EVENTSVC)
    twistd = os.path.join(os.path.dirname(python), "twistd") if python else require("twistd")
    environment = child_env()
    environment.update(env or {})
    return ServerProcess(
        [twistd, "-n", "--pidfile=", "eventsvc", "--config", config_path], _READY_EVENTSVC, environment, expect, _STARTED_EVENTSVC
    )


def cli(*args: str, timeout: float = 60) -> "subprocess.CompletedProcess[str]":
    """The eventsvc admin command, run as a user runs it."""
    beside = os.path.join(os.path.dirname(sys.executable), "eventsvc")
    argv = [beside] if os.access(beside, os.X_OK) else [sys.executable, "-m", "eventsvc.cli"]
    return subprocess.run(
        argv + list(args), capture_output=True, text=True, timeout=timeout, env=child_env(), stdin=subprocess.DEVNULL
    )


#: Where free_port() looks: below the kernel's ephemeral range, and above
#: the ports servers are known by (nats-server's 4222, 6222, 7422, 8222).
_NAMED_PORTS = (20000, 32768)


def _ephemeral_low() -> int:
    """The lowest port the kernel picks for port 0 and outgoing connections (32768 unless changed)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range", encoding="ascii") as f:
            return int(f.read().split()[0])
    except (OSError, IndexError, ValueError):
        return 32768


#: How long a port free_port() handed out stays promised to its caller:
#: no other free_port(), in this process or another (trial -j2's other
#: worker, another checkout's suite on the same machine), returns it
#: before.  Long enough for any test to start the server it named it for.
_PROMISED_FOR = 600.0


def _promise(port: int, now: float) -> bool:
    """
    Promise C{port} to this caller, unless another caller was promised it
    less than L{_PROMISED_FOR} ago; say whether it is now ours.

    The promises are files named by port, their times the promise's,
    under a directory of this user's; one lock (C{flock}) over the
    directory makes the look and the promise one step across processes.
    """
    import fcntl
    import tempfile

    directory = os.path.join(tempfile.gettempdir(), "eventsvc-test-ports-{}".format(os.getuid()))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, str(port))
    with open(os.path.join(directory, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if now - os.stat(path).st_mtime < _PROMISED_FOR:
                return False
        except FileNotFoundError:
            pass
        with open(path, "w"):
            pass
        os.utime(path, (now, now))
        return True


def free_port() -> int:
    """
    A loopback port free right now, for a configuration that must name
    its port before the server starts (a route to dial, a restart that
    keeps its port); use port 0 and read the port back wherever the server
    can say where it listens.

    It is picked at random below the kernel's ephemeral range, never from
    it: the kernel hands ports of that range to every port-0 listener and
    every outgoing connection (a test beside this one under trial -j2 opens
    a thousand at once), so a port it gave out as free was soon another's.
    Below it, only another free_port() could pick the same port, and it
    will not: each port handed out is promised to its caller for
    L{_PROMISED_FOR} seconds, across processes (L{_promise}), so two tests
    running side by side never name the same port between the pick and
    their server's bind.  (Where the range leaves no room below, the
    kernel's pick.)
    """
    import random
    import socket

    low, high = _NAMED_PORTS[0], min(_NAMED_PORTS[1], _ephemeral_low())
    for _ in range(1000 if high - low >= 1000 else 0):
        port = random.randrange(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        if _promise(port, time.time()):
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeldPort:
    """
    A loopback port bound and not listening: a connection to it is
    refused, as to a service that is down, and no other process (a test
    running beside, under trial -j2) can take it until L{release}.
    """

    def __init__(self) -> None:
        import socket

        self._socket: Optional[socket.socket] = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]

    def release(self) -> None:
        """Let the port go (to serve it now); again is harmless."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def closed_port(test: Any) -> HeldPort:
    """A L{HeldPort}, let go when C{test} ends: an address where nothing answers."""
    held = HeldPort()
    test.addCleanup(held.release)
    return held


def nats_server(*extra: str, expect: Sequence[str] = ()) -> ServerProcess:
    """
    The reference server on a random loopback port; ready once it listens
    for clients and on the listeners named in C{expect} ("route" for its
    cluster port: C{--cluster nats://127.0.0.1:-1} takes a free one, which
    C{ports["route"]} then holds).
    """
    if "route" not in expect and ("--cluster" in extra or _clustered(extra)):
        # Its route port opens after it says it is ready, and it exits if
        # that port is taken.
        expect = (*expect, "route")
    return ServerProcess([require("nats-server"), "-a", "127.0.0.1", "-p", "-1", *extra], _READY_NATS, expect=expect)


def _clustered(argv: Sequence[str]) -> bool:
    """Whether the nats-server configuration file in C{argv} (C{-c path}) has a cluster block."""
    for flag, value in zip(argv, argv[1:]):
        if flag in ("-c", "--config"):
            try:
                with open(value, encoding="utf-8") as f:
                    return re.search(r"^\s*cluster\s*[:{]", f.read(), re.MULTILINE) is not None
            except OSError:
                return False
    return False


def started(test: Any, server: ServerProcess) -> Any:
    """
    Start C{server} in a thread (start waits until it is ready): a Deferred
    of its port.  Once up, it is stopped when C{test} ends.
    """
    from twisted.internet import threads

    d = threads.deferToThread(server.start)
    d.addCallback(lambda port: test.addCleanup(server.stop) or port)
    return d


def write_config(path: str, text: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def write_bytes(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def source_tree() -> str:
    """
    The checkout the tests came from (for files that are not installed:
    dist/, dev/): EVENTSVC_SOURCE (make test sets it), else the folder above
    the package when run from a checkout.  Skips (fails under CI) otherwise.
    """
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for candidate in (os.environ.get("EVENTSVC_SOURCE", ""), here):
        if candidate and os.path.isfile(os.path.join(candidate, "dist", "eventsvc.service")):
            return candidate
    message = "the source tree is not here (set EVENTSVC_SOURCE to the checkout)"
    if os.environ.get("EVENTSVC_REQUIRE_INTEROP"):
        raise AssertionError(message)
    raise SkipTest(message)
