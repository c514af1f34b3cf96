"""
The one delivery rule (L{eventsvc.nats.delivery}): from each kind of
source, which clients, routes, leafs and hubs a message reaches, and the
frame each is sent.
"""

from __future__ import annotations

from typing import Dict, List, Optional

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.delivery import Plan, plan
from eventsvc.nats.kinds import Kind
from eventsvc.nats.server import Broker
from eventsvc.nats.subjects import SubjectCache, Subscription

TAIL = b"2\r\nhi\r\n"


class Conn:
    """A connection of a kind, as the broker sees one: what it is sent piles up in C{out}."""

    def __init__(self, kind: Kind, origin: bytes = b"") -> None:
        self.kind = kind
        self.cluster_origin = origin
        self.message_origin: Optional[bytes] = None
        self.frame_head = {Kind.ROUTE: b"RMSG $G ", Kind.LEAF: b"LMSG ", Kind.HUB: b"LMSG "}.get(kind, b"")
        self.out: List[bytes] = []
        self.dirty = False
        self.echo = kind is not Kind.LEAF and kind is not Kind.HUB
        self.headers = True
        self.may_receive = None
        self.cid = 0
        self.in_msgs = self.in_bytes = self.out_msgs = self.out_bytes = 0

    def flush(self) -> bool:
        return False

    def stall(self, consumer: object) -> None:
        pass

    def remove_subscription(self, sub: Subscription) -> None:
        pass

    def sent(self) -> bytes:
        return b"".join(self.out)


class Forwarder:
    """Gateways, as the broker sees them: what they were offered."""

    def __init__(self) -> None:
        self.offered: List[bytes] = []

    def forward(self, subject, reply, size, tail, hdr_len, body, targets) -> int:
        self.offered.append(subject)
        return 1

    def forward_batch(self, subject, tails, size, targets) -> None:
        self.offered.extend([subject] * len(tails))


def interested(broker: Broker, conn: Conn, subject: bytes = b"s", queue: Optional[bytes] = None) -> None:
    sub = Subscription(conn, subject, queue, b"1" if conn.kind is Kind.CLIENT else b"")
    if conn.kind.remote:
        broker.add_remote_subscription(sub)
    else:
        broker.add_subscription(sub)


class RuleTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.broker = Broker()
        self.gateways = Forwarder()
        self.broker.gateways = self.gateways
        self.to: Dict[str, Conn] = {
            "client": Conn(Kind.CLIENT),
            "route": Conn(Kind.ROUTE),
            "leaf E": Conn(Kind.LEAF, b"E"),
            "leaf F": Conn(Kind.LEAF, b"F"),
            "hub": Conn(Kind.HUB, b"H"),
        }
        for conn in self.to.values():
            interested(self.broker, conn)

    def reached(self, src: Conn, batch: bool = False, run: bool = False) -> Dict[str, bytes]:
        if run:
            # A read's messages handed over together: one, then two to the same subject.
            self.broker.deliver_run(src, [(b"s", 2, TAIL), (b"s", ~4, [TAIL, TAIL])])
        elif batch:
            self.broker.deliver_batch(src, b"s", [TAIL, TAIL], 4)
        else:
            self.broker.deliver(src, b"s", None, 2, TAIL)
        return {name: conn.sent() for name, conn in self.to.items() if conn.out}

    def test_from_a_client_everyone_and_the_gateways(self) -> None:
        self.assertEqual(self.reached(Conn(Kind.CLIENT)), {
            "client": b"MSG s 1 " + TAIL, "route": b"RMSG $G s " + TAIL,
            "leaf E": b"LMSG s " + TAIL, "leaf F": b"LMSG s " + TAIL, "hub": b"LMSG s " + TAIL,
        })
        self.assertEqual(self.gateways.offered, [b"s"])

    def test_from_a_route_one_hop(self) -> None:
        """No other route, not our hub (its servers have their own links to it), no gateway."""
        self.assertEqual(self.reached(Conn(Kind.ROUTE)), {
            "client": b"MSG s 1 " + TAIL, "leaf E": b"LMSG s " + TAIL, "leaf F": b"LMSG s " + TAIL,
        })
        self.assertEqual(self.gateways.offered, [])

    def test_from_a_route_carrying_a_leaf_clusters_message(self) -> None:
        route = Conn(Kind.ROUTE)
        route.message_origin = b"E"
        self.assertEqual(set(self.reached(route)), {"client", "leaf F"})

    def test_from_our_hub_one_hop(self) -> None:
        self.assertEqual(self.reached(self.to["hub"]), {
            "client": b"MSG s 1 " + TAIL, "leaf E": b"LMSG s " + TAIL, "leaf F": b"LMSG s " + TAIL,
        })
        self.assertEqual(self.gateways.offered, [])

    def test_from_a_leaf_not_to_its_own_cluster_and_with_its_origin_to_routes(self) -> None:
        self.assertEqual(self.reached(Conn(Kind.LEAF, b"E")), {
            "client": b"MSG s 1 " + TAIL, "route": b"LMSG E $G s 0 " + TAIL,
            "leaf F": b"LMSG s " + TAIL, "hub": b"LMSG s " + TAIL,
        })
        self.assertEqual(self.gateways.offered, [b"s"])

    def test_from_a_gateway_this_cluster_only(self) -> None:
        self.assertEqual(set(self.reached(Conn(Kind.GATEWAY))), {"client", "route", "leaf E", "leaf F", "hub"})
        self.assertEqual(self.gateways.offered, [])

    def test_a_leaf_never_gets_its_own_message_back(self) -> None:
        self.assertNotIn("leaf F", self.reached(self.to["leaf F"]))

    def test_the_general_path_by_the_same_rule(self) -> None:
        """With an in-process subscriber the plan is not simple: the general path reaches whom the fast one does."""
        for kind, origin in ((Kind.CLIENT, b""), (Kind.ROUTE, b""), (Kind.HUB, b"H"), (Kind.LEAF, b"E"), (Kind.GATEWAY, b"")):
            self.setUp()
            fast = self.reached(Conn(kind, origin))
            offered = list(self.gateways.offered)
            self.setUp()
            got: List[str] = []
            self.broker.subscribe("s", lambda subject, reply, payload, headers: got.append(subject))
            self.assertEqual(self.reached(Conn(kind, origin)), fast, kind)
            self.assertEqual((got, self.gateways.offered), (["s"], offered), kind)

    def test_batches_and_runs_go_by_the_same_rule(self) -> None:
        """A batch, and a run (a read's messages handed over together), reach whom their messages one by one would."""
        for kind, origin in ((Kind.CLIENT, b""), (Kind.ROUTE, b""), (Kind.HUB, b"H"), (Kind.LEAF, b"E"), (Kind.GATEWAY, b"")):
            for times, how in ((2, {"batch": True}), (3, {"run": True})):
                self.setUp()
                one = self.reached(Conn(kind, origin))
                offered = list(self.gateways.offered)
                self.setUp()
                many = self.reached(Conn(kind, origin), **how)
                self.assertEqual(many, {name: frames * times for name, frames in one.items()}, (kind, how))
                self.assertEqual(self.gateways.offered, offered * times, (kind, how))


class RunTests(SynchronousTestCase):
    """A client's read of messages to many subjects, handed over as one run (L{Delivery.deliver_run})."""

    def setUp(self) -> None:
        self.broker = Broker()
        self.client, self.other = Conn(Kind.CLIENT), Conn(Kind.CLIENT)
        for conn in (self.client, self.other):
            self.broker.add_subscription(Subscription(conn, b"a.>", None, b"1"))

    def test_in_order_to_every_local_subscriber(self) -> None:
        self.broker.deliver_run(self.client, [(b"a.%d" % i, 2, TAIL) for i in range(3)] + [(b"a.0", ~4, [TAIL, TAIL])])
        frames = b"MSG a.0 1 " + TAIL + b"MSG a.1 1 " + TAIL + b"MSG a.2 1 " + TAIL + (b"MSG a.0 1 " + TAIL) * 2
        self.assertEqual((self.client.sent(), self.other.sent()), (frames, frames))
        self.assertEqual((self.other.out_msgs, self.other.out_bytes), (5, 10))
        self.client.echo = False
        del self.other.out[:]
        self.broker.deliver_run(self.client, [(b"a.1", 2, TAIL)])
        self.assertEqual(self.other.sent(), b"MSG a.1 1 " + TAIL)
        self.assertEqual(self.client.sent(), frames)

    def test_a_subscriber_in_process_that_publishes_leaves_no_frame_behind(self) -> None:
        """
        An in-process callback that publishes writes out what is waiting,
        mid-run: what the run frames after it is written at the next flush,
        not left behind.
        """
        self.broker.subscribe("a.1", lambda subject, reply, payload, headers: self.broker.publish("b", b"x"))
        self.broker.deliver_run(self.client, [(b"a.0", 2, TAIL), (b"a.1", 2, TAIL), (b"a.2", 2, TAIL)])
        self.broker.flush()
        self.assertTrue(self.other.sent().endswith(b"MSG a.2 1 " + TAIL))
        self.assertFalse(self.other.dirty)
        self.assertEqual(self.broker._dirty, [])


class QueueRuleTests(SynchronousTestCase):
    """A group with no member here: one link that has members takes it, by the rule."""

    def setUp(self) -> None:
        self.broker = Broker()
        self.route, self.leaf = Conn(Kind.ROUTE), Conn(Kind.LEAF, b"E")
        interested(self.broker, self.route, queue=b"q")
        interested(self.broker, self.leaf, queue=b"q")

    def test_a_clients_message_goes_to_one_of_them_naming_the_group(self) -> None:
        for _ in range(20):
            self.broker.deliver(Conn(Kind.CLIENT), b"s", None, 2, TAIL)
        sent = self.route.out + self.leaf.out
        self.assertEqual(len(sent), 20)
        self.assertEqual(set(sent), {b"RMSG $G s | q " + TAIL, b"LMSG s | q " + TAIL})

    def test_a_routes_message_only_to_the_leaf(self) -> None:
        for _ in range(20):
            self.broker.deliver(Conn(Kind.ROUTE), b"s", None, 2, TAIL, queues=[b"q"])
        self.assertEqual((len(self.leaf.out), self.route.out), (20, []))

    def test_a_links_message_serves_only_the_groups_it_names(self) -> None:
        self.broker.deliver(Conn(Kind.LEAF, b"F"), b"s", None, 2, TAIL)
        self.broker.deliver(Conn(Kind.GATEWAY), b"s", None, 2, TAIL, queues=[b"other"])
        self.assertEqual(self.route.out + self.leaf.out, [])


class LocalQueueTests(SynchronousTestCase):
    """A client's messages to queue groups whose members are all local clients (deliver's own loop)."""

    def test_one_member_of_each_group_gets_each_message(self) -> None:
        broker = Broker()
        workers = [Conn(Kind.CLIENT) for _ in range(10)]
        for conn in workers:
            interested(broker, conn, b"s.>", queue=b"workers")
        other = Conn(Kind.CLIENT)
        interested(broker, other, b"s.*", queue=b"others")
        for n in range(1000):
            self.assertEqual(broker.deliver(Conn(Kind.CLIENT), b"s.%d" % (n % 7), None, 2, TAIL), 2)
        counts = [len(conn.out) // 2 for conn in workers]
        self.assertEqual(sum(counts), 1000)
        self.assertTrue(all(c > 40 for c in counts), counts)
        self.assertEqual([c.out_msgs for c in workers], counts)
        self.assertEqual(other.sent(), b"".join(b"MSG s.%d 1 " % (n % 7) + TAIL for n in range(1000)))

    def test_a_member_without_echo_is_never_given_its_own(self) -> None:
        broker = Broker()
        quiet, busy = Conn(Kind.CLIENT), Conn(Kind.CLIENT)
        quiet.echo = False
        for conn in (quiet, busy):
            interested(broker, conn, b"s", queue=b"q")
        for _ in range(100):
            self.assertEqual(broker.deliver(quiet, b"s", b"r", 2, TAIL), 1)
        self.assertEqual((quiet.out, busy.sent()), ([], (b"MSG s 1 r " + TAIL) * 100))
        alone = Broker()
        interested(alone, quiet, b"s", queue=b"q")
        self.assertEqual(alone.deliver(quiet, b"s", None, 2, TAIL), 0)
        self.assertEqual(quiet.out, [])


    def test_a_batchs_messages_each_to_one_member_with_its_own_size(self) -> None:
        """
        A batch of one subject (a repeated line, or a link's) to a group:
        each message to one member, and each member's byte count is the
        payloads it was given, whether the batch's sizes differ or not.
        """
        broker = Broker()
        workers = [Conn(Kind.CLIENT) for _ in range(4)]
        for conn in workers:
            interested(broker, conn, b"s", queue=b"q")
        for payloads in ([b"x" * n for n in (1, 3, 10, 2)] * 50, [b"y" * 5] * 200):
            tails = [b"%d\r\n%s\r\n" % (len(p), p) for p in payloads]
            broker.deliver_batch(Conn(Kind.CLIENT), b"s", tails, sum(map(len, payloads)))
        got = [[tail.split(b"\r\n")[1] for tail in conn.out[1::2]] for conn in workers]
        self.assertEqual(sorted(p for member in got for p in member), sorted([b"x" * n for n in (1, 3, 10, 2)] * 50 + [b"y" * 5] * 200))
        for member, conn in zip(got, workers):
            self.assertEqual(conn.out[::2], [b"MSG s 1 "] * len(member))
            self.assertEqual((conn.out_msgs, conn.out_bytes), (len(member), sum(map(len, member))))
            self.assertGreater(len(member), 50)


class QueueRunTests(SynchronousTestCase):
    """
    A client's read over many subjects to queue groups of local clients
    (L{Delivery.deliver_run}'s own loop for plans of queue groups alone):
    one member of each group per message, as deliver() gives it.
    """

    def setUp(self) -> None:
        self.broker = Broker()
        self.workers = [Conn(Kind.CLIENT) for _ in range(10)]
        self.subs = []
        for conn in self.workers:
            sub = Subscription(conn, b"s.*.data", b"q", b"1")
            self.broker.add_subscription(sub)
            self.subs.append(sub)
        self.publisher = Conn(Kind.CLIENT)

    def publish(self, messages: List[int], runs: int = 10) -> None:
        """C{messages} (numbers, each to C{s.<n % 100>.data} with its number as payload) in C{runs} reads."""
        each = len(messages) // runs
        for k in range(runs):
            self.broker.deliver_run(
                self.publisher, [(b"s.%d.data" % (n % 100), len(b"%d" % n), b"%d\r\n%d\r\n" % (len(b"%d" % n), n))
                                 for n in messages[k * each : (k + 1) * each]],
            )

    @staticmethod
    def received(conn: Conn) -> List[int]:
        """The numbers C{conn} was given, in order, each frame checked."""
        got = []
        for prefix, tail in zip(conn.out[::2], conn.out[1::2]):
            n = int(tail.split(b"\r\n")[1])
            assert prefix == b"MSG s.%d.data 1 " % (n % 100), (prefix, n)
            got.append(n)
        return got

    def test_each_message_to_one_member_in_order(self) -> None:
        self.publish(list(range(2000)))
        got = [self.received(conn) for conn in self.workers]
        self.assertEqual(sorted(n for member in got for n in member), list(range(2000)))
        for member, conn in zip(got, self.workers):
            self.assertEqual(member, sorted(member))  # each in the order published
            self.assertGreater(len(member), 100)  # spread over the group (200 each on average)
            self.assertEqual((conn.out_msgs, conn.out_bytes), (len(member), sum(len(b"%d" % n) for n in member)))
        self.assertEqual(set(self.broker._dirty), set(self.workers))

    def test_a_member_that_publishes_without_echo_is_passed_over(self) -> None:
        self.publisher = self.workers[0]
        self.publisher.echo = False
        self.publish(list(range(1000)))
        self.assertEqual(self.workers[0].out, [])
        self.assertEqual(sorted(n for conn in self.workers[1:] for n in self.received(conn)), list(range(1000)))
        for sub in self.subs[1:]:
            self.broker.remove_subscription(sub)
        self.publish(list(range(1000, 1100)), 1)
        self.assertEqual(self.workers[0].out, [])

    def test_members_and_subscribers_that_come_and_go_between_reads(self) -> None:
        """
        The plans follow every SUB and UNSUB: a member that leaves gets
        nothing more; a plain subscriber that comes gets every message
        while the group still gets one each; one that joins is picked.
        """
        self.publish(list(range(500)))
        gone = self.workers.pop()
        self.broker.remove_subscription(self.subs.pop())
        before = len(gone.out)
        watcher = Conn(Kind.CLIENT)
        self.broker.add_subscription(Subscription(watcher, b"s.>", None, b"9"))
        self.publish(list(range(500, 1000)))
        self.assertEqual(len(gone.out), before)
        self.assertEqual(
            watcher.sent(), b"".join(b"MSG s.%d.data 9 %d\r\n%d\r\n" % (n % 100, len(b"%d" % n), n) for n in range(500, 1000)),
        )
        self.assertEqual(sorted(n for conn in self.workers for n in self.received(conn) if n >= 500), list(range(500, 1000)))
        late = Conn(Kind.CLIENT)
        self.broker.add_subscription(Subscription(late, b"s.*.data", b"q", b"1"))
        self.publish(list(range(1000, 2000)))
        self.assertGreater(len(self.received(late)), 30)

    def test_a_run_that_mixes_plans_keeps_each_receivers_order(self) -> None:
        """
        A run whose messages go now to the group alone, now to a plain
        subscriber or a route too, now to nobody, or come as a batch of one
        subject: each message reaches one member, the others get theirs,
        and everyone gets them in the order published.
        """
        watcher, route = Conn(Kind.CLIENT), Conn(Kind.ROUTE)
        self.broker.add_subscription(Subscription(watcher, b"s.5.data", None, b"9"))
        interested(self.broker, route, b"s.6.data")
        order: List[int] = []
        run: list = []
        for n in range(600):
            tail = b"%d\r\n%d\r\n" % (len(b"%d" % n), n)
            if n % 10 == 7:
                # Two messages to one subject, as the parser hands a repeated line over.
                extra = n + 1000
                run.append((b"s.%d.data" % (n % 100), ~len(b"%d%d" % (n, extra)), [tail, b"4\r\n%d\r\n" % extra]))
                order += [n, extra]
            else:
                run.append((b"s.%d.data" % (n % 100), len(b"%d" % n), tail))
                order.append(n)
            if n % 10 == 3:
                run.append((b"nobody.here", 2, TAIL))
            if len(run) >= 16:
                self.broker.deliver_run(self.publisher, run)
                run = []
        self.broker.deliver_run(self.publisher, run)
        got = [self.received(conn) for conn in self.workers]
        self.assertEqual(sorted(n for member in got for n in member), sorted(order))
        for member in got:
            mine = set(member)
            self.assertEqual(member, [n for n in order if n in mine])
        self.assertEqual(watcher.sent(), b"".join(
            b"MSG s.5.data 9 %d\r\n%d\r\n" % (len(b"%d" % n), n) for n in order if n % 100 == 5))
        self.assertEqual(route.sent(), b"".join(
            b"RMSG $G s.6.data %d\r\n%d\r\n" % (len(b"%d" % n), n) for n in order if n % 100 == 6))

    def test_with_gateways_each_message_is_offered_to_them_too(self) -> None:
        gateways = Forwarder()
        self.broker.gateways = gateways
        self.publish(list(range(100)), 2)
        self.assertEqual(sorted(n for conn in self.workers for n in self.received(conn)), list(range(100)))
        self.assertEqual(gateways.offered, [b"s.%d.data" % n for n in range(100)])

    def test_a_subject_is_matched_once_for_its_first_two_messages(self) -> None:
        """
        A subject's first message plans its queue group and keeps the plan
        aside; its second is delivered by that plan, without a match
        (/subsz's num_matches counts one a subject), and so are the rest.
        """
        matches = self.broker.sublist.matches
        self.publish(list(range(100)), 1)
        self.assertEqual(self.broker.sublist.matches - matches, 100)
        self.publish(list(range(100, 300)), 2)
        self.assertEqual(self.broker.sublist.matches - matches, 100)
        self.assertEqual(sorted(n for conn in self.workers for n in self.received(conn)), list(range(300)))

    def test_a_change_between_a_subjects_first_two_messages_is_seen(self) -> None:
        """
        What the first message's plan was made from may change before the
        second comes: members that leave get nothing more, a subscriber
        that comes gets it, and a member given a maximum gets no more than
        that, whatever was planned the first time.
        """
        self.publish(list(range(100)), 1)
        for sub in self.subs[1:]:
            self.broker.remove_subscription(sub)
        self.publish(list(range(100, 200)), 1)
        self.assertEqual(sorted(self.received(self.workers[0]))[-100:], list(range(100, 200)))
        for conn in self.workers[1:]:
            self.assertEqual([n for n in self.received(conn) if n >= 100], [])

        self.setUp()
        self.publish(list(range(100)), 1)
        watcher = Conn(Kind.CLIENT)
        self.broker.add_subscription(Subscription(watcher, b"s.*.data", None, b"9"))
        self.publish(list(range(100, 200)), 1)
        self.assertEqual(
            watcher.sent(), b"".join(b"MSG s.%d.data 9 %d\r\n%d\r\n" % (n % 100, len(b"%d" % n), n) for n in range(100, 200)),
        )
        self.assertEqual(sorted(n for conn in self.workers for n in self.received(conn)), list(range(200)))

        self.setUp()
        self.publish(list(range(100)), 1)
        for sub in self.subs:
            sub.max = sub.delivered + 1  # as UNSUB <sid> <max> sets it, then tells the broker
            self.broker.limit_changed(sub.subject)
        self.publish(list(range(100, 200)), 1)
        self.assertEqual(sorted(n for conn in self.workers for n in self.frames(conn) if n >= 100), list(range(100, 110)))

    def test_members_with_a_maximum_are_planned_for_it_from_the_first_message(self) -> None:
        """A member that has a maximum before the subject's first message is given no more than it either."""
        self.subs[0].max = 1
        self.broker.limit_changed(self.subs[0].subject)
        self.publish(list(range(1000)))
        got = [self.frames(conn) for conn in self.workers]
        self.assertEqual(len(got[0]), 1)
        self.assertEqual(sorted(n for member in got for n in member), list(range(1000)))

    @staticmethod
    def frames(conn: Conn) -> List[int]:
        """The numbers C{conn} was given, in order, each frame checked, however the frames were appended."""
        got = []
        for frame in conn.sent().split(b"MSG ")[1:]:
            line, payload, end = frame.split(b"\r\n")
            n = int(payload)
            assert (line, end) == (b"s.%d.data 1 %d" % (n % 100, len(payload)), b""), frame
            got.append(n)
        return got


class PlanCacheTests(SynchronousTestCase):
    def test_a_subject_is_kept_the_second_time(self) -> None:
        """
        A subject's plan (and match) is kept only when it comes a second
        time: a thousand reply inboxes used once each leave the plans of a
        busy subject in place, and take no place themselves; every message
        is delivered all the same, to subscribers that came in between too.
        """
        broker = Broker()
        broker._plans = SubjectCache(100)
        broker._targets = broker._plans.entries
        requester, responder = Conn(Kind.CLIENT), Conn(Kind.CLIENT)
        interested(broker, requester, b"_INBOX.r.*")
        interested(broker, responder, b"svc")
        for n in range(1000):
            self.assertEqual(broker.deliver(requester, b"svc", b"_INBOX.r.%d" % n, 2, TAIL), 1)
            self.assertEqual(broker.deliver(responder, b"_INBOX.r.%d" % n, None, 2, TAIL), 1)
        self.assertEqual(list(broker._targets), [b"svc"])
        self.assertEqual(broker.sublist.cache_stats()[0], 1)
        self.assertEqual(requester.sent(), b"".join(b"MSG _INBOX.r.%d 1 " % n + TAIL for n in range(1000)))
        # Seen once more, a subject is kept; a subscriber that comes later is in its plan.
        broker.deliver(responder, b"_INBOX.r.7", None, 2, TAIL)
        self.assertIn(b"_INBOX.r.7", broker._targets)
        late = Conn(Kind.CLIENT)
        interested(broker, late, b"_INBOX.r.7")
        self.assertEqual(broker.deliver(responder, b"_INBOX.r.7", None, 2, TAIL), 2)
        self.assertEqual(late.sent(), b"MSG _INBOX.r.7 1 " + TAIL)

    def test_jetstream_acks_are_not_kept(self) -> None:
        """
        A JetStream ack's subject names one delivery: it is delivered as
        any other, but neither its plan nor its match is kept (where a
        pull consumer's acks pushed out the plans of busy subjects).
        """
        broker = Broker()
        broker.used_once = (b"$JS.ACK.",)  # as the JetStream engine says at its start
        conn = Conn(Kind.CLIENT)
        interested(broker, conn, b"s")
        interested(broker, conn, b"$JS.ACK.>")
        acks = [b"$JS.ACK.S.C.1.%d.%d.1700000000000000000.0" % (n, n) for n in (1, 2)]
        for subject in [b"s", b"s"] + acks + acks:
            self.assertEqual(broker.deliver(conn, subject, None, 2, TAIL), 1)
        self.assertEqual(conn.sent(), b"MSG s 1 " + TAIL + b"MSG s 1 " + TAIL + b"".join(b"MSG " + a + b" 1 " + TAIL for a in acks + acks))
        self.assertEqual(list(broker._targets), [b"s"])
        self.assertEqual(broker.sublist.cache_stats()[0], 1)


class InProcessAloneTests(SynchronousTestCase):
    """
    A subject whose only subscriber is an in-process callback (a JetStream
    stream's subjects, its acks) is handed over straight from
    L{Delivery.deliver}: the callback sees what the general path gave it.
    """

    def setUp(self) -> None:
        self.broker = Broker()
        self.got: List[tuple] = []
        self.broker.subscribe("s.>", lambda subject, reply, payload, headers: self.got.append(
            (subject, reply, payload, headers)))

    def test_alone_it_gets_subject_reply_and_payload(self) -> None:
        client = Conn(Kind.CLIENT)
        self.assertEqual(self.broker.deliver(client, b"s.1", b"_INBOX.a.1", 2, TAIL), 1)
        self.assertEqual(self.broker.deliver(client, b"s.2", None, 0, b"0\r\n\r\n"), 1)
        self.assertEqual(self.got, [("s.1", "_INBOX.a.1", b"hi", None), ("s.2", None, b"", None)])
        self.assertEqual(self.broker._local.out_msgs, 2)

    def test_bytes_not_utf8_are_shown_replaced_by_either_path(self) -> None:
        """
        A subject or reply that is not UTF-8 reaches the callback with
        U+FFFD where the bad bytes were, alone (the straight hand-over)
        and beside a client (the general path) alike.
        """
        client = Conn(Kind.CLIENT)
        self.broker.deliver(client, b"s.\xff", b"_INBOX.\xfe.1", 2, TAIL)
        self.broker.deliver(client, b"s.ok", b"_INBOX.\xfe.2", 2, TAIL)
        interested(self.broker, Conn(Kind.CLIENT), b"s.\xff")
        self.broker.deliver(client, b"s.\xff", b"r", 2, TAIL)
        self.assertEqual(self.got, [
            ("s.\ufffd", "_INBOX.\ufffd.1", b"hi", None), ("s.ok", "_INBOX.\ufffd.2", b"hi", None),
            ("s.\ufffd", "r", b"hi", None),
        ])

    def test_with_a_client_a_route_or_gateways_every_one_still_gets_it(self) -> None:
        client, route = Conn(Kind.CLIENT), Conn(Kind.ROUTE)
        interested(self.broker, client, b"s.1")
        interested(self.broker, route, b"s.2")
        self.broker.deliver(Conn(Kind.CLIENT), b"s.1", None, 2, TAIL)
        self.broker.deliver(Conn(Kind.CLIENT), b"s.2", None, 2, TAIL)
        gateways = self.broker.gateways = Forwarder()
        self.broker.deliver(Conn(Kind.CLIENT), b"s.3", None, 2, TAIL)
        self.assertEqual([g[0] for g in self.got], ["s.1", "s.2", "s.3"])
        self.assertEqual((client.sent(), route.sent()), (b"MSG s.1 1 " + TAIL, b"RMSG $G s.2 " + TAIL))
        self.assertEqual(gateways.offered, [b"s.3"])


    def test_a_raw_subscription_gets_bytes_by_either_path(self) -> None:
        """
        L{Broker.subscribe_raw}'s callback is given the subject and reply
        as they came, bytes, alone (the straight hand-over) and beside a
        client (the general path); the totals count what it was given.
        """
        raw: List[tuple] = []
        self.broker.subscribe_raw("r.*", lambda subject, reply, payload, headers: raw.append(
            (subject, reply, payload, headers)))
        client = Conn(Kind.CLIENT)
        self.assertEqual(self.broker.deliver(client, b"r.1", b"_INBOX.a.1", 2, TAIL), 1)
        watcher = Conn(Kind.CLIENT)
        interested(self.broker, watcher, b"r.2")
        self.assertEqual(self.broker.deliver(client, b"r.2", None, 2, TAIL), 2)
        self.broker.publish("r.3", b"x", None, b"NATS/1.0\r\nK: v\r\n\r\n")
        self.assertEqual(raw, [
            (b"r.1", b"_INBOX.a.1", b"hi", None), (b"r.2", None, b"hi", None),
            (b"r.3", None, b"x", b"NATS/1.0\r\nK: v\r\n\r\n"),
        ])
        self.assertEqual(watcher.sent(), b"MSG r.2 1 " + TAIL)
        self.assertEqual(self.got, [])
        self.assertEqual(self.broker.totals()["out_msgs"], 3)

    def test_a_run_hands_an_in_process_subscriber_its_payload(self) -> None:
        """
        Messages of a read handed over as a run (L{Delivery.deliver_run})
        reach an in-process subscription alone with their own payloads,
        however many digits the size has, empty, or with CRLF and LF
        inside, and between a client's messages, in order; the totals
        count the four it was given.
        """
        raw: List[tuple] = []
        self.broker.subscribe_raw("r.*", lambda subject, reply, payload, headers: raw.append((subject, payload)))
        watcher = Conn(Kind.CLIENT)
        interested(self.broker, watcher, b"w")
        payloads = [b"+ACK", b"", b"a\r\nb\nc", b"x" * 1234]
        run = [(b"r.%d" % i, len(p), b"%d\r\n%s\r\n" % (len(p), p)) for i, p in enumerate(payloads)]
        run.insert(2, (b"w", 2, TAIL))
        self.broker.deliver_run(Conn(Kind.CLIENT), run)
        self.assertEqual(raw, [(b"r.%d" % i, p) for i, p in enumerate(payloads)])
        self.assertEqual(watcher.sent(), b"MSG w 1 " + TAIL)
        self.assertEqual(self.broker.totals()["out_msgs"], 4)

    def test_acks_share_a_plan_and_each_is_handed_its_own_subject(self) -> None:
        """
        Consecutive acks to one in-process subscription share one plan:
        the callback still sees each ack's own subject, and a client that
        subscribes to one ack's subject gets it too.
        """
        self.broker.used_once = (b"$JS.ACK.",)
        self.broker.subscribe("$JS.ACK.>", lambda subject, reply, payload, headers: self.got.append(
            (subject, reply, payload, headers)))
        acks = [b"$JS.ACK.S.C.1.%d.%d.1700000000000000000.0" % (n, n) for n in (1, 2, 3)]
        client = Conn(Kind.CLIENT)
        for ack in acks[:2]:
            self.broker.deliver(client, ack, None, 2, TAIL)
        self.assertIs(self.broker._plan(acks[2], keep=False), self.broker._plan(acks[1], keep=False))
        watcher = Conn(Kind.CLIENT)
        interested(self.broker, watcher, acks[2])
        self.assertEqual(self.broker.deliver(client, acks[2], None, 2, TAIL), 2)
        self.assertEqual([g[0] for g in self.got], [a.decode() for a in acks])
        self.assertEqual(watcher.sent(), b"MSG " + acks[2] + b" 1 " + TAIL)

    def test_pubacks_to_one_clients_inboxes_each_name_their_inbox(self) -> None:
        """
        PubAcks to one client's inboxes (C{_INBOX.<id>.<n>}, used once)
        start from one plan: each frame still names its own inbox, a
        second subscriber of one inbox gets that one only, and a
        subscriber whose permissions refuse an inbox is not given it.
        """
        client, other = Conn(Kind.CLIENT), Conn(Kind.CLIENT)
        interested(self.broker, client, b"_INBOX.id.*")
        self.broker.publish_many([("_INBOX.id.1", b"a"), ("_INBOX.id.2", b"b")])
        self.assertEqual(client.sent(), b"MSG _INBOX.id.1 1 1\r\na\r\nMSG _INBOX.id.2 1 1\r\nb\r\n")
        interested(self.broker, other, b"_INBOX.id.3")
        del client.out[:]
        self.broker.publish_many([("_INBOX.id.3", b"c"), ("_INBOX.id.4", b"d")])
        self.assertEqual(client.sent(), b"MSG _INBOX.id.3 1 1\r\nc\r\nMSG _INBOX.id.4 1 1\r\nd\r\n")
        self.assertEqual(other.sent(), b"MSG _INBOX.id.3 1 1\r\nc\r\n")
        picky = Conn(Kind.CLIENT)
        picky.may_receive = lambda subject: subject.endswith(b".5")  # type: ignore[assignment]
        interested(self.broker, picky, b"_INBOX.id.*")
        self.broker.publish_many([("_INBOX.id.5", b"e"), ("_INBOX.id.6", b"f")])
        self.assertEqual(picky.sent(), b"MSG _INBOX.id.5 1 1\r\ne\r\n")

    def test_pubacks_to_one_inbox_subscription_are_written_and_counted(self) -> None:
        """
        PubAcks to the inboxes of a client's one subscription (the kept
        plan's one subscriber, framed in L{Broker.publish_many} itself):
        each frame names its inbox and the subscription's sid, the client
        is flushed once for each batch, and the broker and the client count
        each PubAck and its bytes.
        """
        client, bystander = Conn(Kind.CLIENT), Conn(Kind.CLIENT)
        self.broker.add_subscription(Subscription(client, b"_INBOX.id.*", None, b"42"))
        interested(self.broker, bystander, b"_INBOX.other.*")
        flushed: List[bytes] = []
        client.flush = lambda: bool(flushed.append(client.sent()))  # type: ignore[assignment]
        answers = [("_INBOX.id.%d" % n, b"ack %d" % n if n % 2 else b"") for n in range(1, 5)]
        self.broker.publish_many(answers)
        self.broker.publish_many([("_INBOX.id.5", b"x" * 300)])
        frames = b"".join(b"MSG %s 42 %d\r\n%s\r\n" % (s.encode(), len(p), p) for s, p in answers)
        self.assertEqual(flushed, [frames, frames + b"MSG _INBOX.id.5 42 300\r\n" + b"x" * 300 + b"\r\n"])
        self.assertFalse(client.dirty)
        self.assertEqual(bystander.sent(), b"")
        self.assertEqual((client.out_msgs, client.out_bytes), (5, 10 + 300))
        self.assertEqual((self.broker.in_msgs, self.broker.in_bytes), (5, 310))

    def test_pubacks_to_one_inbox_subscription_reach_the_gateways(self) -> None:
        """
        With gateways, a PubAck whose inbox has one local subscriber is
        offered to them too, as every client's message is (deliver()'s
        rule), the tenth as the first.
        """
        gateways = Forwarder()
        self.broker.gateways = gateways
        client = Conn(Kind.CLIENT)
        interested(self.broker, client, b"_INBOX.id.*")
        answers = [("_INBOX.id.%d" % n, b"a") for n in range(10)]
        self.broker.publish_many(answers)
        self.assertEqual(gateways.offered, [s.encode() for s, _ in answers])
        self.assertEqual(client.sent(), b"".join(b"MSG %s 1 1\r\na\r\n" % s.encode() for s, _ in answers))

    def test_a_renamed_plan_is_the_plan_made_afresh(self) -> None:
        """
        A PubAck's plan started from another inbox's (L{Plan.renamed}) is
        what a plan made afresh for its own inbox would be, field by field,
        with one subscriber or several: each gets the frame with its own
        sid and the PubAck's inbox.
        """
        def same_as_afresh(subject: bytes) -> Plan:
            renamed = self.broker._plan(subject, keep=False)
            result = self.broker.sublist.match(subject)
            afresh = plan(subject, result.plain, result.queues)
            self.assertEqual(
                [(c, prefix) for c, prefix, _ in renamed.plain], [(c, prefix) for c, prefix, _ in afresh.plain]
            )
            for name in Plan.__slots__:
                if name != "plain":
                    self.assertEqual(getattr(renamed, name), getattr(afresh, name), name)
            return renamed

        first, second = Conn(Kind.CLIENT), Conn(Kind.CLIENT)
        interested(self.broker, first, b"_INBOX.id.*")
        self.broker.publish_many([("_INBOX.id.1", b"a")])
        self.assertEqual(len(same_as_afresh(b"_INBOX.id.2").plain), 1)
        self.broker.add_subscription(Subscription(second, b"_INBOX.*.*", None, b"7"))
        self.broker.publish_many([("_INBOX.id.3", b"c"), ("_INBOX.id.4", b"d")])
        two = same_as_afresh(b"_INBOX.id.5")
        self.assertEqual({c for c, _, _ in two.plain}, {first, second})
        self.assertEqual(second.sent(), b"MSG _INBOX.id.3 7 1\r\nc\r\nMSG _INBOX.id.4 7 1\r\nd\r\n")
        self.assertEqual(first.sent(), b"".join(b"MSG _INBOX.id.%d 1 1\r\n%s\r\n" % (n, p) for n, p in [(1, b"a"), (3, b"c"), (4, b"d")]))
