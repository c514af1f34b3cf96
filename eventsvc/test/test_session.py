"""
The connection's parts alone, on a fake clock: the session's states and
clocks, the read gate, and the pinger.
"""

from __future__ import annotations

from typing import List

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.liveness import PING, Pinger, schedule
from eventsvc.nats.outbound import ReadGate
from eventsvc.nats.session import AUTHENTICATION, HANDSHAKE, STATES, TRANSITIONS, NoTransition, Session


class SessionTests(SynchronousTestCase):
    def session(self, auth: bool = True) -> Session:
        self.clock = Clock()
        self.timeouts: List[str] = []
        return Session(self.clock, auth, auth_timeout=2.0, tls_timeout=1.0, timed_out=self.timeouts.append)

    def test_plaintext_without_authentication(self) -> None:
        s = self.session(auth=False)
        self.assertEqual((s.state(), s.greeted), ("greeting", False))
        s.start()
        self.assertEqual((s.state(), s.greeted, s.connected), ("open", True, False))
        s.connect_accepted()
        s.connect_accepted()  # a second CONNECT changes options only
        self.assertTrue(s.connected)
        self.clock.advance(100)
        self.assertEqual(self.timeouts, [])

    def test_tls_then_authentication(self) -> None:
        s = self.session()
        s.tls_begun()
        self.assertTrue(s.handshaking)
        self.clock.advance(0.9)
        s.start()
        self.assertEqual(s.state(), "awaiting_connect")
        # The handshake clock stopped; the authentication clock runs.
        self.clock.advance(0.5)
        self.assertEqual(self.timeouts, [])
        s.checking()
        self.assertEqual(s.state(), "authenticating")
        s.connect_accepted()
        self.assertEqual(s.state(), "ready")
        self.clock.advance(10)
        self.assertEqual(self.timeouts, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_handshake_times_out(self) -> None:
        s = self.session()
        s.tls_begun()
        self.clock.advance(1.0)
        self.assertEqual((self.timeouts, s.closed), ([HANDSHAKE], True))

    def test_authentication_times_out_while_checking(self) -> None:
        """A slow authenticator does not stretch the authentication timeout."""
        s = self.session()
        s.start()
        s.checking()
        self.clock.advance(2.0)
        self.assertEqual((self.timeouts, s.closed), ([AUTHENTICATION], True))

    def test_new_credentials_are_checked_again(self) -> None:
        s = self.session()
        s.start()
        s.checking()
        s.connect_accepted()
        s.checking()
        self.assertEqual(s.state(), "authenticating")
        s.connect_accepted()
        self.assertTrue(s.connected)

    def test_close_from_anywhere_stops_the_clocks(self) -> None:
        for steps in ([], ["tls_begun"], ["start"], ["start", "checking"], ["start", "checking", "connect_accepted"]):
            s = self.session()
            for step in steps:
                getattr(s, step)()
            s.close()
            s.close()
            self.assertTrue(s.closed, steps)
            self.assertEqual(self.clock.getDelayedCalls(), [], steps)

    def test_nothing_before_greeting_or_after_closing(self) -> None:
        """Inputs out of order are programming errors, not silently ignored."""
        s = self.session()
        self.assertRaises(NoTransition, s.connect_accepted)
        self.assertRaises(NoTransition, s.checking)
        s.close()
        self.assertRaises(NoTransition, s.start)
        s2 = self.session(auth=True)
        s2.start()
        e = self.assertRaises(NoTransition, s2.connect_accepted)
        self.assertEqual((e.state, e.input, s2.state()), ("awaiting_connect", "connect_accepted", "awaiting_connect"))
        self.assertIn("connect_accepted", str(e))

    def test_the_table_names_states_and_outputs_that_exist(self) -> None:
        """A typo in the table would only show when that transition is taken."""
        for (state, input), (next_state, outputs) in TRANSITIONS.items():
            self.assertIn(state, STATES)
            self.assertIn(next_state, STATES)
            # (start() gives the two _begin inputs; the rest are methods.)
            self.assertTrue(input in ("_begin_open", "_begin_guarded") or callable(getattr(Session, input, None)), input)
            for output in outputs:
                self.assertTrue(callable(getattr(Session, output, None)), output)
        # Every state but closed can be closed; closed takes nothing else.
        self.assertEqual({s for (s, i) in TRANSITIONS if i == "close"}, set(STATES))
        self.assertEqual({i for (s, i) in TRANSITIONS if s == "closed"}, {"close"})


class ReadGateTests(SynchronousTestCase):
    def test_paused_while_any_reason_holds(self) -> None:
        calls = []

        class Transport:
            def pauseProducing(self):
                calls.append("pause")

            def resumeProducing(self):
                calls.append("resume")

        gate = ReadGate()
        gate.transport = Transport()
        gate.hold("stalled")
        gate.hold("authenticating")
        gate.release("stalled")
        self.assertEqual(calls, ["pause"])
        gate.release("not held")
        gate.release("authenticating")
        self.assertEqual(calls, ["pause", "resume"])
        self.assertFalse(gate.holding("authenticating"))


class PingerTests(SynchronousTestCase):
    def pinger(self, last_heard=None) -> Pinger:
        self.clock = Clock()
        self.sent: List[bytes] = []
        self.stale: List[bool] = []
        p = Pinger(self.clock, 10.0, 2, self.sent.append, lambda: self.stale.append(True), last_heard)
        p.start()
        return p

    def test_stale_after_ping_max(self) -> None:
        self.pinger()
        self.clock.advance(10)
        self.clock.advance(10)
        self.assertEqual(self.sent, [PING, PING])
        self.clock.advance(10)
        self.assertEqual(self.stale, [True])
        self.clock.advance(100)
        self.assertEqual((len(self.sent), self.stale), (2, [True]))

    def test_pong_resets(self) -> None:
        p = self.pinger()
        for _ in range(5):
            self.clock.advance(10)
            p.pong_received()
        self.assertEqual((len(self.sent), self.stale), (5, []))

    def test_quiet_while_the_peer_is_active(self) -> None:
        """As nats-server: a peer heard from within the interval is not pinged."""
        heard = [0.0]
        p = self.pinger(lambda: heard[0])
        for _ in range(5):
            heard[0] = self.clock.seconds() + 5
            self.clock.advance(10)
        self.assertEqual(self.sent, [])
        self.clock.advance(5)
        p.ping_received()  # the peer's own PING is a sign of life too
        self.clock.advance(5)
        self.assertEqual(self.sent, [])
        self.clock.advance(10)
        self.assertEqual(self.sent, [PING])
        p.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class PingScheduleTests(SynchronousTestCase):
    """
    The pingers of one clock and interval share one delayed call
    (L{schedule}), and each is still pinged on its own interval.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.pings: List[tuple] = []

    def pinger(self, name: str, interval: float = 10.0) -> Pinger:
        p = Pinger(self.clock, interval, 100, lambda data: self.pings.append((name, self.clock.seconds(), data)), lambda: None)
        p.start()
        return p

    def test_each_on_its_own_interval(self) -> None:
        """Pingers started at 0, 3 and 7 are pinged at 10, 13 and 17, then 20, 23, 27, 30: one delayed call among them (and one for another interval)."""
        self.pinger("a")
        self.clock.advance(3)
        self.pinger("b")
        self.clock.advance(4)
        self.pinger("c")
        self.pinger("d", interval=5.0)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2, "one for each interval")
        for _ in range(25):
            self.clock.advance(1)
        self.assertEqual([(n, t) for n, t, _ in self.pings if n != "d"], [("a", 10.0), ("b", 13.0), ("c", 17.0), ("a", 20.0), ("b", 23.0), ("c", 27.0), ("a", 30.0)])
        self.assertEqual([t for n, t, _ in self.pings if n == "d"], [12.0, 17.0, 22.0, 27.0, 32.0])

    def test_stopped_is_let_go(self) -> None:
        """A stopped pinger is dropped from the schedule at once (nothing of a closed connection is kept), and the last one takes the delayed call with it."""
        a, b = self.pinger("a"), self.pinger("b")
        shared = schedule(self.clock, 10.0)
        a.stop()
        self.assertNotIn(a, shared)
        self.clock.advance(10)
        self.assertEqual([n for n, _, _ in self.pings], ["b"])
        b.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        self.assertEqual(len(self.pings), 1)
        b.start()
        self.clock.advance(10)
        self.assertEqual([(n, t) for n, t, _ in self.pings], [("b", 10.0), ("b", 120.0)])

    def test_stopped_in_turn(self) -> None:
        """A pinger that stops another due at the same time (a connection closing another) leaves it unpinged."""
        self.pinger("a")
        b = self.pinger("b")
        a = next(iter(schedule(self.clock, 10.0).due))
        # (a's PING stops b, due at the same time.)
        a._send = lambda data: (self.pings.append(("a", self.clock.seconds(), data)), b.stop())
        self.clock.advance(10)
        self.assertEqual([n for n, _, _ in self.pings], ["a"])
        self.assertNotIn(b, schedule(self.clock, 10.0))

    def test_one_failure_is_its_own(self) -> None:
        """A pinger whose send fails is logged; the others due at the same time are pinged, and it is pinged again next time."""
        broken = self.pinger("broken")
        self.pinger("b")

        def fail(data: bytes) -> None:
            raise RuntimeError("boom")

        broken._send = fail
        self.clock.advance(10)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([n for n, _, _ in self.pings], ["b"])
        broken._send = lambda data: self.pings.append(("broken", self.clock.seconds(), data))
        self.clock.advance(10)
        self.assertEqual([n for n, _, _ in self.pings], ["b", "broken", "b"])


class LoginTests(SynchronousTestCase):
    """The login part alone: an owner that records what it is told."""

    def setUp(self) -> None:
        from eventsvc.nats.interfaces import PeerInfo

        self.clock = Clock()
        self.told: List[tuple] = []
        test = self

        class Owner:
            cid = 7
            peer = PeerInfo("10.0.0.1", 5000)
            closed = False

            def logged_in(self, identity):
                test.told.append(("in", identity.name))

            def login_refused(self, why):
                test.told.append(("refused", why))

            def identity_changed(self, identity):
                test.told.append(("changed", identity.name))
                return 2

        self.owner = Owner()

    def authenticator(self, answers):
        from twisted.internet.defer import Deferred

        from eventsvc.nats.interfaces import AuthenticationFailed, Identity

        pending: List[Deferred] = []

        class Auth:
            def authenticate(self, options, peer):
                answer = answers.pop(0)
                if answer == "later":
                    d = Deferred()
                    pending.append(d)
                    return d
                if answer == "bad":
                    raise AuthenticationFailed("no such token")
                return Identity(answer, None)

        return Auth(), pending

    def test_accepted_now_or_later(self) -> None:
        from eventsvc.nats.interfaces import Identity
        from eventsvc.nats.login import Login

        auth, pending = self.authenticator(["agent", "later"])
        login = Login(self.owner, self.clock, None, 2.0)
        self.assertTrue(login.needed(auth, {"auth_token": "t"}, logged_in=False))
        login.check(auth, {"auth_token": "t"})
        self.assertEqual(self.told, [("in", "agent")])
        # The same credentials again need no check; other ones do.
        self.assertFalse(login.needed(auth, {"auth_token": "t", "name": "x"}, logged_in=True))
        self.assertTrue(login.needed(auth, {"auth_token": "u"}, logged_in=True))
        login.check(auth, {"auth_token": "u"})
        pending[0].callback(Identity("other", None))
        self.assertEqual(self.told[-1], ("in", "other"))

    def test_throttled_refusals(self) -> None:
        """Past the address's budget a check waits; too many waiting, refused unchecked; a gone one stops waiting."""
        from eventsvc.nats.framing import ProtocolViolation
        from eventsvc.nats.login import Login
        from eventsvc.nats.throttle import AuthThrottle

        throttle = AuthThrottle(budget=3, window=10.0, delay=1.0, waiting=2)
        auth, _ = self.authenticator(["bad"] * 10)
        login = Login(self.owner, self.clock, throttle, 2.0)
        for _ in range(3):
            login.check(auth, {"auth_token": "x"})
        self.assertEqual([t[0] for t in self.told], ["refused"] * 3)
        waiting = [Login(self.owner, self.clock, throttle, 2.0) for _ in range(2)]
        for w in waiting:
            w.check(auth, {"auth_token": "x"})
        self.assertEqual(len(self.told), 3)  # both wait
        self.assertRaises(ProtocolViolation, Login(self.owner, self.clock, throttle, 2.0).check, auth, {"auth_token": "x"})
        waiting[0].cancel()
        self.clock.advance(5)
        self.assertEqual(len(self.told), 4)  # the other one was checked, and refused
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_checked_again(self) -> None:
        from eventsvc.nats.login import Login

        auth, _ = self.authenticator(["agent", "agent2", "bad"])
        login = Login(self.owner, self.clock, None, 2.0)
        self.assertEqual(self.successResultOf(login.check_again(auth)), 0)  # nothing checked yet
        login.check(auth, {"auth_token": "t"})
        self.assertEqual(self.successResultOf(login.check_again(auth)), 2)
        self.assertEqual(self.successResultOf(login.check_again(auth)), -1)
        self.assertEqual(self.told, [("in", "agent"), ("changed", "agent2"), ("refused", "authentication failed: no such token")])
