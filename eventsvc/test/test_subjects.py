"""
Subject validation and the subscription index.
"""

from __future__ import annotations

import time

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats import subjects
from eventsvc.nats.subjects import (
    Sublist,
    Subscription,
    subject_matches,
    valid_literal_subject,
    valid_subject,
)


def sub(subject: bytes, queue=None, owner=None, sid=b"1") -> Subscription:
    return Subscription(owner, subject, queue, sid)


class ValidationTests(SynchronousTestCase):
    def test_valid(self) -> None:
        for s in (b"foo", b"foo.bar", b"*", b">", b"foo.*.bar", b"foo.>", b"*.*", b"foo*.bar", b"a.b>", b"_INBOX.x.*"):
            self.assertTrue(valid_subject(s), s)

    def test_invalid(self) -> None:
        for s in (b"", b".", b"foo.", b".foo", b"foo..bar", b">.foo", b"foo.>.bar", b"fo o", b"foo\t.bar", b"a.\r"):
            self.assertFalse(valid_subject(s), s)

    def test_literal(self) -> None:
        # (CPython's split and PyPy's scan, both.)
        for valid in (subjects._literal_by_split, subjects._literal_by_scan):
            self.assertTrue(valid(b"foo.bar"))
            self.assertTrue(valid(b"foo*.b>"))
            for s in (b"", b".", b".foo", b"foo.*", b"foo.>", b"*", b">", b"a.*.b", b"foo..bar", b"foo."):
                self.assertFalse(valid(s), s)
        self.assertIn(valid_literal_subject, (subjects._literal_by_split, subjects._literal_by_scan))

    def test_literal_tokens(self) -> None:
        """
        literal_tokens (CPython's split and PyPy's scan, both) gives a
        subject's tokens exactly when valid_literal_subject takes it, and
        a used-once match of those tokens is the subject's own match.
        """
        subjects_ = (b"foo.bar", b"foo*.b>", b"_INBOX.x.1", b"a", b"", b".", b".foo", b"foo.*", b"foo.>", b"*",
                     b">", b"a.*.b", b"foo..bar", b"foo.", b"a.>.b")
        for tokens_of in (subjects._literal_tokens_by_split, subjects._literal_tokens_by_scan):
            for s in subjects_:
                tokens = tokens_of(s)
                self.assertEqual(tokens, s.split(b".") if valid_literal_subject(s) else None, s)
        self.assertIn(subjects.literal_tokens, (subjects._literal_tokens_by_split, subjects._literal_tokens_by_scan))
        index = Sublist()
        for pattern in (b"foo.*", b"_INBOX.x.*", b">", b"foo.bar"):
            index.insert(Subscription(object(), pattern, None, b"1"))
        for s in (b"foo.bar", b"_INBOX.x.1", b"_INBOX.x.2", b"a"):
            expected = {sub.subject for sub in index.match(s, keep=True).plain}
            got = index.match(s, False, subjects.literal_tokens(s))
            self.assertEqual({sub.subject for sub in got.plain}, expected, s)

    def test_matches(self) -> None:
        cases = [
            (b"foo", b"foo", True),
            (b"foo", b"foo.bar", False),
            (b"foo.*", b"foo.bar", True),
            (b"foo.*", b"foo", False),
            (b"foo.*", b"foo.bar.baz", False),
            (b"foo.>", b"foo.bar.baz", True),
            (b"foo.>", b"foo", False),
            (b">", b"anything.at.all", True),
            (b"*.bar", b"foo.bar", True),
            (b"foo*", b"foox", False),
            (b"Foo", b"foo", False),
        ]
        for pattern, subject, expected in cases:
            self.assertEqual(subject_matches(pattern, subject), expected, (pattern, subject))


class SublistTests(SynchronousTestCase):
    def test_subjects_used_once_match_as_any_other(self) -> None:
        """
        A subject matched with keep=False (a reply inbox, a JetStream ack)
        may be answered from an earlier one that the same leading tokens
        decided: against a brute force over random patterns, subjects and
        changes, it never gets another answer.
        """
        import random

        rand = random.Random(7)
        tokens = [b"a", b"b", b"c"]
        sl = Sublist()
        live: list = []
        for step in range(3000):
            if rand.random() < 0.05 or not live:
                pattern = b".".join(rand.choice(tokens + [b"*", b"*"]) for _ in range(rand.randint(1, 4)))
                if rand.random() < 0.3:
                    pattern = pattern.rsplit(b".", 1)[0] + b".>" if b"." in pattern else b">"
                s = sub(pattern, sid=b"%d" % step)
                sl.insert(s)
                live.append(s)
            elif rand.random() < 0.02:
                sl.remove(live.pop(rand.randrange(len(live))))
            subject = b".".join(rand.choice(tokens) for _ in range(rand.randint(1, 5)))
            wanted = {s.sid for s in live if subject_matches(s.subject, subject)}
            self.assertEqual({s.sid for s in sl.match(subject, keep=False).plain}, wanted, subject)

    def test_replies_under_one_wildcard_share_a_match(self) -> None:
        """nats.go's PubAck inboxes (C{_INBOX.<id>.<n>}) and a consumer's acks: one walk, then the same result."""
        sl = Sublist()
        inbox, other, acks = sub(b"_INBOX.id.*"), sub(b"_INBOX.id2.*"), sub(b"$JS.ACK.>")
        for s in (inbox, other, acks):
            sl.insert(s)
        first = sl.match(b"_INBOX.id.1", keep=False)
        self.assertIs(sl.match(b"_INBOX.id.2", keep=False), first)
        self.assertEqual(first.plain, [inbox])
        self.assertEqual(sl.match(b"_INBOX.id2.1", keep=False).plain, [other])
        ack = sl.match(b"$JS.ACK.S.C.1.1.1.0.0", keep=False)
        self.assertIs(sl.match(b"$JS.ACK.S.C.1.2.2.0.0", keep=False), ack)
        literal = sub(b"_INBOX.id.3", sid=b"2")
        sl.insert(literal)
        self.assertEqual(sl.match(b"_INBOX.id.3", keep=False).plain, [literal, inbox])
        self.assertEqual(sl.match(b"_INBOX.id.4", keep=False).plain, [inbox])
        self.assertEqual(sl.cache_stats()[0], 0)

    def test_subjects_used_once_are_looked_up_by_a_few_depths_only(self) -> None:
        """Literal subscriptions at many depths cannot make every later lookup try each depth."""
        sl = Sublist()
        chain = [sub(b".".join([b"t"] * k), sid=b"%d" % k) for k in range(1, 30)]
        for s in chain:
            sl.insert(s)
        for k in range(1, 30):
            subject = b".".join([b"t"] * k + [b"x"] * (30 - k))
            self.assertEqual(sl.match(subject, keep=False).plain, [])
        self.assertEqual(sl._once_depths[30], [1, 2, 3, 4])
        self.assertEqual(sl.match(b".".join([b"t"] * 30), keep=False).plain, [])
        self.assertEqual(sl.match(b".".join([b"t"] * 29), keep=False).plain, [chain[-1]])

    def test_match_literal_and_wildcards(self) -> None:
        sl = Sublist()
        subs = {s: sub(s) for s in (b"a.b.c", b"a.*.c", b"a.>", b"*.b.*", b">", b"a.b", b"x.y")}
        for s in subs.values():
            sl.insert(s)
        found = {s.subject for s in sl.match(b"a.b.c").plain}
        self.assertEqual(found, {b"a.b.c", b"a.*.c", b"a.>", b"*.b.*", b">"})
        self.assertEqual({s.subject for s in sl.match(b"a.b").plain}, {b"a.b", b"a.>", b">"})
        self.assertEqual({s.subject for s in sl.match(b"q").plain}, {b">"})

    def test_queue_groups(self) -> None:
        sl = Sublist()
        members = [sub(b"work.*", queue=b"g1", sid=b"%d" % i) for i in range(3)]
        others = [sub(b"work.>", queue=b"g2", sid=b"%d" % i) for i in range(2)]
        for s in members + others + [sub(b"work.a", queue=b"g1", sid=b"9")]:
            sl.insert(s)
        result = sl.match(b"work.a")
        self.assertEqual(result.plain, [])
        groups = sorted((len(g), {m.queue for m in g}) for g in result.queues)
        # Members of one group from different subjects are one group.
        self.assertEqual(groups, [(2, {b"g2"}), (4, {b"g1"})])

    def test_remove_leaves_nothing(self) -> None:
        sl = Sublist()
        all_subs = [sub(s, queue=q) for s in (b"a.b.c", b"a.*", b"a.>", b">", b"*.*.*") for q in (None, b"q")]
        for s in all_subs:
            sl.insert(s)
        self.assertEqual(sl.count, len(all_subs))
        for s in all_subs:
            self.assertTrue(sl.remove(s))
        self.assertEqual(sl.count, 0)
        self.assertTrue(sl._root.empty())
        self.assertFalse(sl.remove(all_subs[0]))

    def test_cache_invalidation(self) -> None:
        sl = Sublist()
        a = sub(b"a.x")
        sl.insert(a)
        sl.match(b"a.x")
        sl.match(b"b.x")
        self.assertEqual(set(sl._cache), {b"a.x", b"b.x"})
        # A literal subscription evicts its own subject only.
        lit = sub(b"b.x")
        sl.insert(lit)
        self.assertEqual(set(sl._cache), {b"a.x"})
        sl.remove(lit)
        sl.match(b"b.x")
        # A wildcard one evicts the subjects with its first token (found in
        # an index, no scan of the cache), and every answer after it is right.
        b = sub(b"b.*")
        sl.insert(b)
        self.assertEqual(set(sl._cache), {b"a.x"})
        star = sub(b"*.x")
        sl.insert(star)
        self.assertEqual(set(sl._cache), set())
        sl.remove(star)
        self.assertEqual(sl.match(b"b.x").plain, [b])
        sl.remove(b)
        self.assertEqual(sl.match(b"b.x").plain, [])
        self.assertEqual(sl.match(b"a.x").plain, [a])

    def test_remove_many(self) -> None:
        sl = Sublist()
        subs = [sub(b"m.%d" % i) for i in range(50)] + [sub(b"m.*"), sub(b">")]
        for s_ in subs:
            sl.insert(s_)
        sl.match(b"m.3")
        changes = []
        sl.on_change = changes.append
        removed = sl.remove_many(subs[::2] + [sub(b"not.there")])
        self.assertEqual(removed, subs[::2])
        # Each subject is named, wildcards too: m.* evicts the m.* subjects only.
        self.assertEqual(changes, [b"m.%d" % i for i in range(0, 50, 2)] + [b"m.*"])
        self.assertEqual(sl.count, len(subs) - len(removed))
        self.assertEqual(set(sl.match(b"m.3").plain), {subs[3], subs[51]})
        self.assertEqual(sl.match(b"m.4").plain, [subs[51]])

    def test_literal_changes_name_their_subject(self) -> None:
        sl = Sublist()
        changes = []
        sl.on_change = changes.append
        a, b = sub(b"a.b"), sub(b"a.*")
        sl.insert(a)
        sl.insert(b)
        sl.remove(a)
        sl.remove_many([sub(b"x")])
        self.assertEqual(changes, [b"a.b", b"a.*", b"a.b"])

    def test_remove_many_stops_at_a_first_token_wildcard(self) -> None:
        """After a wildcard in the first token (everything evicted), nothing more is said."""
        sl = Sublist()
        subs = [sub(b"a"), sub(b">"), sub(b"b")]
        for s_ in subs:
            sl.insert(s_)
        changes = []
        sl.on_change = changes.append
        sl.remove_many(subs)
        self.assertEqual(changes, [b"a", b">"])

    def test_broker_keeps_unrelated_plans(self) -> None:
        """A subscription to one literal subject replans that subject only."""
        from eventsvc.nats.server import Broker

        broker = Broker(server_id="T")
        broker.subscribe("busy.>", lambda *a: None)
        broker.publish("busy.one", b"x")
        broker.publish("busy.one", b"x")  # (kept the second time)
        plan = broker._targets[b"busy.one"]
        other = broker.subscribe("quiet", lambda *a: None)
        self.assertIs(broker._targets[b"busy.one"], plan)
        other.unsubscribe()
        self.assertIs(broker._targets[b"busy.one"], plan)
        broker.subscribe("busy.*", lambda *a: None)
        self.assertNotIn(b"busy.one", broker._targets)

    def test_broker_wildcard_changes_evict_by_first_token(self) -> None:
        """
        A wildcard whose first token is literal (a client's _INBOX.<id>.*)
        replans the subjects with that first token only; a wildcard in the
        first token replans everything.
        """
        from eventsvc.nats.server import Broker

        broker = Broker(server_id="T")
        broker.subscribe(">", lambda *a: None)
        for subject in ("busy.one", "busy.two", "_INBOX.a.1", "other") * 2:
            broker.publish(subject, b"x")
        plans = {s: broker._targets[s] for s in (b"busy.one", b"busy.two", b"other")}
        inbox = broker.subscribe("_INBOX.b.*", lambda *a: None)
        self.assertNotIn(b"_INBOX.a.1", broker._targets)
        for subject, plan in plans.items():
            self.assertIs(broker._targets[subject], plan)
        inbox.unsubscribe()
        broker.subscribe("busy.*.x", lambda *a: None)
        self.assertNotIn(b"busy.one", broker._targets)
        self.assertNotIn(b"busy.two", broker._targets)
        self.assertIs(broker._targets[b"other"], plans[b"other"])
        # Replanned, the new subscription is in the plan.
        broker.publish("busy.one.x", b"y")
        broker.publish("busy.one.x", b"y")
        self.assertEqual(len(broker._targets[b"busy.one.x"].plain), 2)
        broker.subscribe("*.z", lambda *a: None)
        self.assertEqual(len(broker._targets), 0)

    def test_plan_cache_bounded_by_eviction(self) -> None:
        """Past its size, the oldest quarter of the plans goes, not all of them."""
        from eventsvc.nats.server import Broker
        from eventsvc.nats.subjects import SubjectCache

        broker = Broker(server_id="T")
        broker._plans = SubjectCache(100)
        broker._targets = broker._plans.entries
        broker.subscribe(">", lambda *a: None)
        for i in range(101):
            broker.publish("s.%d" % i, b"x")
            broker.publish("s.%d" % i, b"x")  # (kept the second time)
        self.assertEqual(len(broker._targets), 76)
        self.assertNotIn(b"s.0", broker._targets)
        self.assertIn(b"s.99", broker._targets)
        self.assertIn(b"s.100", broker._targets)
        broker.subscribe("s.*", lambda *a: None)
        self.assertEqual(len(broker._targets), 0)

    def test_cache_bounded(self) -> None:
        sl = Sublist(cache_size=100)
        sl.insert(sub(b">"))
        for i in range(1000):
            sl.match(b"s.%d" % i)
        self.assertLessEqual(len(sl._cache), 100)

    def test_genid_moves(self) -> None:
        sl = Sublist()
        g = sl.genid
        s = sub(b"a")
        sl.insert(s)
        self.assertGreater(sl.genid, g)
        g = sl.genid
        sl.remove(s)
        self.assertGreater(sl.genid, g)

    def test_hundred_thousand_subscriptions(self) -> None:
        """
        100,000 subscriptions: inserting, matching and removing stay fast
        and exact.  (The bound is generous: it catches quadratic behaviour,
        not a slow machine.)
        """
        sl = Sublist()
        subs = [sub(b"svc.%d.%d.events" % (i % 100, i), sid=b"%d" % i) for i in range(100000)]
        wild = [sub(b"svc.%d.*.events" % i) for i in range(100)] + [sub(b"svc.>")]
        started = time.perf_counter()
        for s in subs + wild:
            sl.insert(s)
        for i in range(0, 100000, 7):
            result = sl.match(b"svc.%d.%d.events" % (i % 100, i))
            self.assertEqual(len(result.plain), 3)
        for s in subs:
            sl.remove(s)
        elapsed = time.perf_counter() - started
        self.assertEqual(sl.count, len(wild))
        self.assertLess(elapsed, 30)
