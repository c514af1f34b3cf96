"""
The adversarial suite: each attack runs against a real eventsvc process
while an innocent client pings it, and what that client feels must stay
under PROBE_LIMIT.  Bounded in count and time (the whole module in well
under two minutes), loopback only.  eventsvc.test.adversary holds the
attacks; run one by hand against nats-server to compare.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time

from twisted.internet import defer, threads
from twisted.trial.unittest import TestCase

from eventsvc.nats import limits
from eventsvc.test import adversary, process

#: The worst PING round trip an innocent client may see during an attack.
PROBE_LIMIT = 0.250
#: How often each attack runs: once unmeasured first on PyPy (see L{_Attacks.attack}).
RUNS = 2 if platform.python_implementation() == "PyPy" else 1


class _Attacks:
    """An attack, measured by an innocent client's PING round trips."""

    timeout = 120
    port = 0

    def started(self, config: str, *listeners: str) -> "tuple[int, int]":
        """
        Start eventsvc on C{config}, whose every port is 0 (the kernel's
        pick, read back from its log: a port picked free beforehand could
        be another test's by the time the server listened, under trial
        -j2); its client and monitor ports.
        """
        self.server = process.eventsvc(config, expect=("service", "monitor", *listeners))
        self.server.start()
        self.addCleanup(self.server.stop)
        return self.server.port, self.server.ports["monitor"]

    @defer.inlineCallbacks
    def attack(self, run, limit: float = PROBE_LIMIT):
        # Once unmeasured first on PyPy: a server that has run for a while
        # (its JIT has compiled its paths) is what an attacker meets;
        # compiling is a start-up cost, not the attack's.  CPython compiles
        # nothing, and the second run was half of this module's time (462
        # of 1,966 s in a full run loaded 10-17 deep).
        if RUNS == 2:
            yield threads.deferToThread(run)

        def scene():
            # Round trips on the server's ServedClock: a reactor held by
            # the attack is late on it; a server or probe waiting behind
            # other work on a shared machine (load 6-8 made 1 run in 3 fail
            # on the wall clock) is not.
            with adversary.Probe(self.port, server_pid=self.server.process.pid) as probe:
                started = time.monotonic()
                run()
                took = time.monotonic() - started
            return probe, took

        probe, took = yield threads.deferToThread(scene)
        self.assertEqual(probe.errors, [])
        self.assertLess(probe.worst, limit, "{} (attack took {:.2f}s)".format(probe.summary(), took))
        # And the server is still there for everyone.
        s = yield threads.deferToThread(adversary.connect, self.port)
        yield threads.deferToThread(adversary.ping, s)
        s.close()
        return probe



class AdversarialTests(_Attacks, TestCase):
    def setUp(self) -> None:
        # A server of its own per attack: one attack's leftovers never
        # weigh on the next.
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\nlistener_limit = 20000\n'
            '[monitor]\nhost = "127.0.0.1"\nport = 0\n'
        ))
        self.port, self.monitor = self.started(config)

    def test_deep_wildcards(self):
        return self.attack(lambda: adversary.deep_wildcards(self.port))

    def test_wildcard_churn(self):
        return self.attack(lambda: adversary.wildcard_churn(self.port, seconds=1.5))

    def test_fan_out_burst(self):
        return self.attack(lambda: adversary.fan_out_burst(self.port))

    def test_ten_thousand_subscriptions_and_a_disconnect(self):
        return self.attack(lambda: adversary.many_subs(self.port, 10000))

    def test_long_subjects(self):
        return self.attack(lambda: adversary.long_subjects(self.port, count=500))

    def test_connection_burst(self):
        took = []
        d = self.attack(lambda: took.append(
            adversary.connection_burst(self.port, 1000, process.ServedClock.of(self.server))))
        # With Twisted's backlog of 50 this took more than a minute (SYNs
        # dropped and sent again, which no wait for a CPU explains);
        # nats-server greets 1,000 in about 0.15 s.
        d.addCallback(lambda _: self.assertLess(took[0], 5.0))
        return d

    def test_json_bombs(self):
        return self.attack(lambda: adversary.json_bomb(self.port))

    def test_closed_connections_page(self):
        return self.attack(lambda: adversary.closed_connections_page(self.port, self.monitor, closed=10000, fetches=3))


def cut_by_the_clock(monitor: int) -> int:
    """How many closed connections /connz lists as cut by the TLS handshake's or the login's clock."""
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", monitor, timeout=30)
    conn.request("GET", "/connz?state=closed&limit=100000")
    closed = json.loads(conn.getresponse().read())["connections"]
    conn.close()
    # (nats-server's reasons: the handshake's clock is one cause of "TLS
    # Handshake Failure", the only one these clients, trusting the CA, meet.)
    return sum(1 for c in closed if c.get("reason") in ("TLS Handshake Failure", "Authentication Timeout"))


class TLSLoginBurstTests(_Attacks, TestCase):
    """Handshakes and logins at a TLS gateway do not starve anyone else."""

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        made = process.cli("certs", "--out", os.path.join(directory, "certs"))
        self.assertEqual(made.returncode, 0, made.stderr)
        self.ca = os.path.join(directory, "certs", "ca.crt")
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[gateway]\nhost = "127.0.0.1"\nport = 0\ntokens = ["burst-token"]\n'
            '[[gateway.frontend_tls]]\nserver_name = "localhost"\ncert_path = "certs/gateway.crt"\nkey_path = "certs/gateway.key"\n'
            '[monitor]\nhost = "127.0.0.1"\nport = 0\n'
        ))
        self.port, self.monitor = self.started(config, "gateway")
        self.gateway = self.server.ports["gateway"]

    def test_tls_login_burst(self):
        got, waited, failures = [], [], []

        def burst() -> None:
            before = process.waited_for_cpu(self.server.process.pid)
            # The 300 clients run in a process of their own: in this one
            # they shared the interpreter (and on PyPy its lock) with the
            # probe, whose round trips then measured the clients' own
            # scheduling, not the server's.
            done = subprocess.run(
                [sys.executable, "-c", "import sys\nfrom eventsvc.test import adversary\nwhy = {}\n"
                 "print(adversary.tls_login_burst(int(sys.argv[1]), sys.argv[2], sys.argv[3], why=why))\nprint(why)",
                 str(self.gateway), self.ca, "burst-token"],
                capture_output=True, text=True, timeout=90,
            )
            if done.returncode == 0:
                count, reasons = done.stdout.splitlines()
                got.append(int(count))
                failures.append(reasons)
            else:
                got.append(done.stderr)
            waited.append(process.waited_for_cpu(self.server.process.pid) - before)

        # PyPy was held to four times the bound (worst probes of 500-630 ms on
        # 2026-12-02), blamed on a handshake step.  Measured inside the
        # server (2026-12-07), the longest hold of the reactor was the accept
        # turn: Twisted takes a hundred and more connections at once, and
        # greeting each with its TLS set-up cost 1-4 ms on PyPy (94-129 ms of
        # CPU in one turn); greetings now share the handshake budget (24-32
        # ms).  Most of what the probe saw, though, was the clients' own
        # scheduling in this process; apart (above), PyPy's worst probes were
        # 100-330 ms on a machine loaded 4-8 deep on two cores.  PyPy, whose
        # first handshakes are compiled while they run, is held to twice
        # the bound.
        limit = PROBE_LIMIT * 2 if platform.python_implementation() == "PyPy" else PROBE_LIMIT
        d = self.attack(burst, limit)

        def all_in(_):
            # Every client gets in, within the 2 s the server gives a TLS
            # handshake (limits.TLS_TIMEOUT) and a login.  On a machine
            # loaded 8-10 deep the server's reactor queued for a CPU longer
            # than that (2.5-6 s during a burst) and cut some clients (183
            # and 208 of 300 in): as the server must.  A burst whose
            # server waited that long may fall short, but only by clients
            # cut by those clocks, each listed so in /connz.
            cut = yield threads.deferToThread(cut_by_the_clock, self.monitor)
            for count, wait in zip(got, waited):
                if count != 300 and wait < limits.TLS_TIMEOUT:
                    self.fail("{} clients of 300 got in (the server waited {:.1f} s for a CPU; the others: {})".format(
                        count, wait, failures))
            self.assertEqual(len(got), RUNS, got)
            self.assertEqual(300 * RUNS - sum(got), cut, "clients missing ({}), and /connz lists {} cut by a clock (the server waited {})".format(
                failures, cut, waited))

        d.addCallback(defer.inlineCallbacks(all_in))
        return d


class WebSocketAttackTests(_Attacks, TestCase):
    """
    Issue 26: a WebSocket closed by us is gone (its socket and its /connz
    entry) within 2 s, a 2^62-byte frame header is refused at once, and a
    deflate bomb is cut without holding up the other clients.
    """

    #: Two deflate bombs of about 5 s of the server's CPU each take 30-60 s
    #: on a machine loaded 10 deep.
    timeout = 240

    def setUp(self) -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[websocket]\nhost = "127.0.0.1"\nport = 0\nno_tls = true\ncompression = true\ntokens = ["%s"]\n'
            '[websocket.permissions]\npublish_allow = [">"]\nsubscribe_allow = [">"]\n'
            '[monitor]\nhost = "127.0.0.1"\nport = 0\n'
        ) % (adversary.WS_TOKEN,))
        self.port, self.monitor = self.started(config, "websocket")
        self.ws = self.server.ports["websocket"]

    def test_protocol_error_closes(self):
        """Unmasked frames, their close frames never answered: each socket gone, and gone from /connz, within 2 s."""
        worst = []
        d = self.attack(lambda: worst.append(adversary.ws_protocol_errors(
            self.ws, self.monitor, count=10, clock=process.ServedClock.of(self.server))))
        d.addCallback(lambda _: self.assertLess(max(worst), 2.0))
        return d

    def test_huge_frame_header(self):
        """A header declaring 2^62 bytes, then random data: the socket is let go at once; the server reads no more than the kernel buffers hold."""
        got = []
        d = self.attack(lambda: got.append(adversary.ws_huge_header(self.ws, clock=process.ServedClock.of(self.server))))

        def check(_):
            for sent, took in got:
                self.assertLess(took, 2.0)
                self.assertLess(sent, 16 * 1024 * 1024)

        return d.addCallback(check)

    def test_deflate_bomb(self):
        """2 MB inflating to 1 GiB: closed with 1009 at the message cap, inflated in slices while everyone else is served."""
        got = []
        d = threads.deferToThread(adversary.deflate_bomb)  # (built before the probe starts)
        d.addCallback(lambda _: self.attack(lambda: got.append(adversary.ws_deflate_bomb(self.ws))))
        d.addCallback(lambda _: self.assertEqual([code for code, _ in got], [1009] * RUNS))
        return d


class PeerFloodTests(_Attacks, TestCase):
    """
    A route or leaf peer that passed its handshake (no credentials
    configured) floods interest: links are read within the clients' budget
    per turn, a closed link's interest goes in slices, and a link past its
    cap ([limits] max_link_subscriptions) is closed.
    """

    #: Distinct subjects a flood sends (issue 26: 200,000).
    COUNT = 200000

    def start(self, limits: str = "") -> None:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        config = process.write_config(os.path.join(directory, "patch.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n'
            '[cluster]\nname = "eventsvc"\nhost = "127.0.0.1"\nport = 0\n'
            '[leafnodes]\nhost = "127.0.0.1"\nport = 0\n'
            '[monitor]\nhost = "127.0.0.1"\nport = 0\n'
        ) + limits)
        self.port, self.monitor = self.started(config, "routes", "leafnodes")
        self.cluster, self.leafnodes = self.server.ports["routes"], self.server.ports["leafnodes"]

    def test_route_flood(self):
        self.start()
        # (Until the flooder's interest has gone again: letting go of it is measured too.)
        return self.attack(lambda: adversary.route_flood(self.port, self.cluster, self.monitor, self.COUNT))

    def test_leaf_flood(self):
        self.start()
        return self.attack(lambda: adversary.leaf_flood(self.port, self.leafnodes, self.monitor, self.COUNT))

    @defer.inlineCallbacks
    def test_a_peer_over_the_cap_is_closed(self):
        self.start("[limits]\nmax_link_subscriptions = 1000\n")
        before = yield threads.deferToThread(adversary.subscriptions, self.monitor)
        for kind, flood, port in (("route", adversary.route_flood, self.cluster), ("leaf node", adversary.leaf_flood, self.leafnodes)):
            # The flooder's PING after its 2,000 lines is never answered: the link closed at the 1,001st.
            yield self.assertFailure(threads.deferToThread(flood, self.port, port, 0, 2000), OSError)
            yield threads.deferToThread(
                self.server.wait_output,
                "{} {}: its interest passed 1000 subscriptions (the cap per link, [limits] max_link_subscriptions): "
                "closing it".format(kind, "FLOODER" if kind == "route" else "flooder"),
            )
            # And nothing of it stays.
            yield threads.deferToThread(adversary.settle, self.monitor, before, 10)
        s = yield threads.deferToThread(adversary.connect, self.port)
        yield threads.deferToThread(adversary.ping, s)
        s.close()
