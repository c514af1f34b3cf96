"""
The order bench/run.py runs a scene's servers in, checked on fake servers:
no server is started, nothing is measured.  Not part of eventsvc's suite
(benchmarks stay out of it); run it as

    .venv/bin/trial bench/test_run.py

It must not start servers or read the clock: the scheduling functions
alone, fed objects that stand for servers.
"""

from __future__ import annotations

import os
import sys
from typing import List, Tuple

from twisted.trial.unittest import SynchronousTestCase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # noqa: E402


class FakeServer:
    """Stands for a server of a scene: only its name, for the messages."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return "<FakeServer {}>".format(self.name)


def fakes(count: int) -> List[FakeServer]:
    return [FakeServer("nats-server")] + [FakeServer("eventsvc-%d" % k) for k in range(1, count)]


class OrderTests(SynchronousTestCase):
    """L{run.order}: no server keeps a place from run to run."""

    def test_two_runs_swap_the_trees(self) -> None:
        """
        With C{--runs 2} and one C{--old} tree, each tree runs first of the
        two once, and nats-server runs first, then last.
        """
        reference, ours, old = servers = fakes(3)
        self.assertEqual(run.order(servers, 0), [reference, ours, old])
        self.assertEqual(run.order(servers, 1), [old, ours, reference])

    def test_every_two_swap_in_a_pair(self) -> None:
        """
        Between the two runs of a pair, any two servers (nats-server, this
        tree on CPython and PyPy, two C{--old} trees) swap places.
        """
        servers = fakes(5)
        for pair in range(5):
            first, second = run.order(servers, 2 * pair), run.order(servers, 2 * pair + 1)
            for a in servers:
                for b in servers:
                    if a is not b:
                        self.assertNotEqual(first.index(a) < first.index(b), second.index(a) < second.index(b), (pair, a, b))

    def test_mean_place_of_a_pair_is_the_middle(self) -> None:
        """Over each pair of runs, every server's mean place is the middle one."""
        for count in range(1, 7):
            servers = fakes(count)
            for pair in range(count):
                places = [run.order(servers, 2 * pair).index(s) + run.order(servers, 2 * pair + 1).index(s) for s in servers]
                self.assertEqual(places, [count - 1] * count, (count, pair))

    def test_each_place_twice_over_twice_as_many_runs(self) -> None:
        """Over twice as many runs as servers, each server holds each place twice."""
        for count in range(1, 7):
            servers = fakes(count)
            held = {(s.name, place): 0 for s in servers for place in range(count)}
            for r in range(2 * count):
                for place, server in enumerate(run.order(servers, r)):
                    held[server.name, place] += 1
            self.assertEqual(set(held.values()), {2}, count)

    def test_first_place_turns(self) -> None:
        """Who runs first changes from run to run, nats-server included."""
        servers = fakes(3)
        firsts = [run.order(servers, r)[0].name for r in range(6)]
        self.assertEqual(firsts, ["nats-server", "eventsvc-2", "eventsvc-1", "nats-server", "eventsvc-2", "eventsvc-1"])

    def test_every_run_holds_every_server_once(self) -> None:
        servers = fakes(4)
        for r in range(10):
            order = run.order(servers, r)
            self.assertEqual(sorted(order, key=servers.index), servers)

    def test_no_servers(self) -> None:
        self.assertEqual(run.order([], 3), [])

    def test_described(self) -> None:
        """The output names each run's order, run 1 first."""
        self.assertEqual(
            run.describe_orders(["nats-server", "eventsvc", "old-bo"], 2),
            "run 1: nats-server, eventsvc, old-bo; run 2: old-bo, eventsvc, nats-server")


class TurnsTests(SynchronousTestCase):
    """L{run.turns}: the turns of a scene, warm-up included."""

    def setUp(self) -> None:
        self.patch(run, "WARM", [0.0])
        self.patch(run, "WARMING", [False])

    def taken(self, servers: List[FakeServer], runs: int) -> List[Tuple[str, bool]]:
        """Each turn's server and whether L{run.measure} would warm it."""
        return [(server.name, run.WARMING[0]) for server in run.turns(servers, runs)]

    def test_runs_in_turning_order(self) -> None:
        """Without --warm: each run once per server, each run in its order."""
        servers = fakes(3)
        self.assertEqual(
            [s for s in run.turns(servers, 4)],
            run.order(servers, 0) + run.order(servers, 1) + run.order(servers, 2) + run.order(servers, 3))
        self.assertEqual({warm for _, warm in self.taken(servers, 4)}, {False})

    def test_warm_right_before_first_run(self) -> None:
        """
        With --warm, each server's first turn comes twice, the first time
        warming: right before its own measured run, not all warm-ups first.
        """
        run.WARM[0] = 5.0
        self.assertEqual(self.taken(fakes(3), 2), [
            ("nats-server", True), ("nats-server", False),
            ("eventsvc-1", True), ("eventsvc-1", False),
            ("eventsvc-2", True), ("eventsvc-2", False),
            ("eventsvc-2", False), ("eventsvc-1", False), ("nats-server", False),
        ])
        self.assertFalse(run.WARMING[0])

    def test_warm_sample_comes_first(self) -> None:
        """
        A server's warm turn is its first (L{run.report} drops each
        server's first sample when warming).
        """
        run.WARM[0] = 5.0
        seen: List[str] = []
        for name, warm in self.taken(fakes(4), 3):
            self.assertEqual(warm, name not in seen, name)
            seen.append(name)

    def test_warming_cleared_when_left(self) -> None:
        """A scene that fails during a warm-up does not leave the next one warming."""
        run.WARM[0] = 5.0
        turns = run.turns(fakes(2), 2)
        next(turns)
        self.assertTrue(run.WARMING[0])
        turns.close()
        self.assertFalse(run.WARMING[0])
