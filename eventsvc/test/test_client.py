"""
The client protocol as a client sees it: bytes in, bytes out, over an
in-memory transport on a fake clock.
"""

from __future__ import annotations

import json
import re

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from eventsvc.nats.interfaces import AuthenticationFailed, IAuthenticator, Identity, IPermissions
from eventsvc.test.helpers import Harness


class GreetingTests(SynchronousTestCase):
    def test_info(self) -> None:
        """
        The greeting is one INFO line with nats-server's fields in its order,
        a space before CRLF, and the client's id and address.
        """
        h = Harness(host="127.0.0.1", port=4222)
        c = h.connect(connect=None)
        line = c.all_received()
        self.assertTrue(line.startswith(b"INFO {"))
        self.assertTrue(line.endswith(b"} \r\n"))
        self.assertEqual(line.count(b"\r\n"), 1)
        info = json.loads(line[5:-3])
        self.assertEqual(
            list(info),
            ["server_id", "server_name", "version", "proto", "go", "host", "port", "headers", "max_payload", "client_id", "client_ip"],
        )
        self.assertEqual(info["proto"], 1)
        self.assertEqual(info["port"], 4222)
        self.assertEqual(info["max_payload"], 1048576)
        self.assertEqual(info["client_ip"], "127.0.0.1")
        self.assertTrue(info["headers"])
        # What the Habitat supervisor's client insists on.
        for key in ("server_id", "version", "go", "host", "port"):
            self.assertTrue(info[key], key)

    def test_client_ids_increase(self) -> None:
        h = Harness()
        a, b = h.connect(), h.connect()
        self.assertEqual(b.proto.cid, a.proto.cid + 1)

    def test_auth_fields(self) -> None:
        """With an authenticator, INFO says auth_required."""
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=None)
        info = json.loads(c.all_received()[5:-3])
        self.assertTrue(info["auth_required"])


class ConnectTests(SynchronousTestCase):
    def test_defaults_verbose(self) -> None:
        """CONNECT {} leaves verbose, pedantic and echo on: +OK answers it."""
        h = Harness()
        c = h.connect(connect=b"CONNECT {}\r\n")
        self.assertEqual(c.received(), b"+OK\r\n")
        self.assertTrue(c.proto.pedantic)
        self.assertTrue(c.proto.echo)

    def test_connect_optional(self) -> None:
        """Without auth, operations before any CONNECT are served (verbosely)."""
        h = Harness()
        c = h.connect(connect=None)
        c.send(b"SUB foo 1\r\nPUB foo 2\r\nhi\r\nPING\r\n")
        self.assertEqual(c.received(), b"+OK\r\n+OK\r\nMSG foo 1 2\r\nhi\r\nPONG\r\n")

    def test_bad_protocol(self) -> None:
        h = Harness()
        c = h.connect(connect=b'CONNECT {"protocol":2}\r\nPING\r\n')
        self.assertEqual(c.received(), b"-ERR 'invalid client protocol'\r\n")
        self.assertTrue(c.closed)

    def test_no_responders_needs_headers(self) -> None:
        h = Harness()
        c = h.connect(connect=b'CONNECT {"no_responders":true}\r\n')
        self.assertEqual(c.received(), b"-ERR 'no responders requires headers support'\r\n")
        self.assertTrue(c.closed)

    def test_bad_json_silent_close(self) -> None:
        for bad in (b"CONNECT {bad\r\n", b"CONNECT\r\n", b'CONNECT {"verbose":"yes"}\r\n', b"CONNECT {} x\r\n", b"CONNECT []\r\n"):
            h = Harness()
            c = h.connect(connect=bad)
            self.assertEqual(c.received(), b"", bad)
            self.assertTrue(c.closed, bad)


class DeliveryTests(SynchronousTestCase):
    def test_pub_sub(self) -> None:
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB foo 7\r\n")
        pub.send(b"PUB foo 5\r\nhello\r\nPUB foo reply.to 2\r\nhi\r\n")
        self.assertEqual(sub.received(), b"MSG foo 7 5\r\nhello\r\nMSG foo 7 reply.to 2\r\nhi\r\n")
        self.assertEqual(pub.received(), b"")

    def test_payload_with_crlf(self) -> None:
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB foo 1\r\n")
        pub.send(b"PUB foo 12\r\nPUB x 1\r\na\r\n\r\n")
        self.assertEqual(sub.received(), b"MSG foo 1 12\r\nPUB x 1\r\na\r\n\r\n")

    def test_verbose_ok_before_delivery(self) -> None:
        """+OK for a PUB comes before the message it delivers back."""
        h = Harness()
        c = h.connect(connect=b"CONNECT {}\r\n")
        c.received()
        c.send(b"SUB foo 1\r\nPUB foo 1\r\na\r\nUNSUB 1\r\n")
        self.assertEqual(c.received(), b"+OK\r\n+OK\r\nMSG foo 1 1\r\na\r\n+OK\r\n")

    def test_echo_false(self) -> None:
        h = Harness()
        a = h.connect(connect=b'CONNECT {"verbose":false,"echo":false}\r\n')
        b = h.connect()
        a.send(b"SUB foo 1\r\n")
        b.send(b"SUB foo 1\r\n")
        a.send(b"PUB foo 1\r\na\r\n")
        self.assertEqual(a.received(), b"")
        self.assertEqual(b.received(), b"MSG foo 1 1\r\na\r\n")

    def test_every_plain_subscriber(self) -> None:
        h = Harness()
        subs = [h.connect() for _ in range(3)]
        for i, s in enumerate(subs):
            s.send(b"SUB foo.* %d\r\n" % i)
        subs[0].send(b"SUB foo.> 9\r\n")
        h.connect().send(b"PUB foo.bar 1\r\nx\r\n")
        # In nats-server's order: '>' before '*'.
        self.assertEqual(subs[0].received(), b"MSG foo.bar 9 1\r\nx\r\nMSG foo.bar 0 1\r\nx\r\n")
        self.assertEqual(subs[1].received(), b"MSG foo.bar 1 1\r\nx\r\n")
        self.assertEqual(subs[2].received(), b"MSG foo.bar 2 1\r\nx\r\n")

    def test_wildcards(self) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"SUB a.* 1\r\nSUB a.> 2\r\nSUB *.b.c 3\r\nSUB a 4\r\nSUB a* 5\r\n")
        c.send(b"PUB a.b.c 0\r\n\r\n")
        self.assertEqual(c.received(), b"MSG a.b.c 3 0\r\n\r\nMSG a.b.c 2 0\r\n\r\n")
        c.send(b"PUB a.b 0\r\n\r\n")
        self.assertEqual(c.received(), b"MSG a.b 2 0\r\n\r\nMSG a.b 1 0\r\n\r\n")
        c.send(b"PUB a 0\r\n\r\nPUB a* 0\r\n\r\nPUB A.b 0\r\n\r\n")
        self.assertEqual(c.received(), b"MSG a 4 0\r\n\r\nMSG a* 5 0\r\n\r\n")

    def test_reply_with_plain_and_queue_subscribers(self) -> None:
        h = Harness()
        plain, member = h.connect(), h.connect()
        plain.send(b"SUB foo 1\r\n")
        member.send(b"SUB foo q 2\r\n")
        h.connect().send(b"PUB foo r 2\r\nhi\r\n")
        self.assertEqual(plain.received(), b"MSG foo 1 r 2\r\nhi\r\n")
        self.assertEqual(member.received(), b"MSG foo 2 r 2\r\nhi\r\n")

    def test_queue_group_one_member_each(self) -> None:
        """Each queue group gets one copy; plain subscribers get theirs."""
        h = Harness()
        members = [h.connect() for _ in range(4)]
        for i, m in enumerate(members):
            m.send(b"SUB work %s 1\r\n" % (b"g1" if i < 2 else b"g2"))
        plain = h.connect()
        plain.send(b"SUB work 1\r\n")
        pub = h.connect()
        for _ in range(200):
            pub.send(b"PUB work 1\r\nx\r\n")
        counts = [m.received().count(b"MSG work 1 1\r\n") for m in members]
        self.assertEqual(counts[0] + counts[1], 200)
        self.assertEqual(counts[2] + counts[3], 200)
        self.assertTrue(all(n > 50 for n in counts), counts)
        self.assertEqual(plain.received().count(b"MSG"), 200)

    def test_duplicate_sid_ignored(self) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"SUB foo 1\r\nSUB foo 1\r\nPUB foo 1\r\na\r\n")
        self.assertEqual(c.received(), b"MSG foo 1 1\r\na\r\n")

    def test_auto_unsubscribe(self) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"SUB foo 1\r\nUNSUB 1 2\r\n" + b"PUB foo 1\r\na\r\n" * 3)
        self.assertEqual(c.received(), b"MSG foo 1 1\r\na\r\n" * 2)
        self.assertEqual(h.broker.sublist.count, 0)

    def test_auto_unsubscribe_counts_past_deliveries(self) -> None:
        """A max at or below what was already delivered ends it at once."""
        h = Harness()
        c = h.connect()
        c.send(b"SUB foo 1\r\nPUB foo 1\r\na\r\nPUB foo 1\r\na\r\nUNSUB 1 1\r\nPUB foo 1\r\na\r\n")
        # Deliveries were not counted before the max was set, as in nats-server.
        self.assertEqual(c.received().count(b"MSG"), 3)

    def test_unsub_bad_max_unsubscribes(self) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"SUB foo 1\r\nUNSUB 1 x\r\nPUB foo 1\r\na\r\nPING\r\n")
        self.assertEqual(c.received(), b"PONG\r\n")

    def test_unknown_sid(self) -> None:
        h = Harness()
        c = h.connect(connect=b"CONNECT {}\r\n")
        c.send(b"UNSUB 42\r\n")
        self.assertEqual(c.received(), b"+OK\r\n+OK\r\n")
        self.assertFalse(c.closed)

    def test_unsubscribe_removes_everything(self) -> None:
        """Closing a connection removes its subscriptions from the index."""
        h = Harness()
        c = h.connect()
        c.send(b"SUB a.b.c 1\r\nSUB a.* q 2\r\nSUB > 3\r\n")
        self.assertEqual(h.broker.sublist.count, 3)
        c.proto.connectionLost(None)
        self.assertEqual(h.broker.sublist.count, 0)
        self.assertTrue(h.broker.sublist._root.empty())

    def test_headers(self) -> None:
        """HPUB reaches header-aware subscribers as HMSG, others as MSG without the headers."""
        h = Harness()
        hs = h.connect(connect=b'CONNECT {"verbose":false,"headers":true}\r\n')
        plain = h.connect()
        hs.send(b"SUB foo 1\r\n")
        plain.send(b"SUB foo 2\r\n")
        hs.send(b"HPUB foo r 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n")
        self.assertEqual(hs.received(), b"HMSG foo 1 r 18 20\r\nNATS/1.0\r\nA: b\r\n\r\nhi\r\n")
        self.assertEqual(plain.received(), b"MSG foo 2 r 2\r\nhi\r\n")

    def test_hpub_without_headers_closes(self) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n")
        self.assertEqual(c.received(), b"")
        self.assertTrue(c.closed)

    def test_no_responders(self) -> None:
        h = Harness()
        c = h.connect(connect=b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
        c.send(b"SUB _INBOX.x.* 5\r\nPUB service _INBOX.x.1 0\r\n\r\n")
        self.assertEqual(c.received(), b"HMSG _INBOX.x.1 5 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")

    def test_no_responders_not_when_answered(self) -> None:
        h = Harness()
        c = h.connect(connect=b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
        h.connect().send(b"SUB service 1\r\n")
        c.send(b"SUB _INBOX.x.* 5\r\nPUB service _INBOX.x.1 0\r\n\r\n")
        self.assertEqual(c.received(), b"")

    def test_ping_pong_ok(self) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"PING\r\n+OK\r\nping\r\nPING\n")
        self.assertEqual(c.received(), b"PONG\r\n" * 3)

    def test_one_write_per_read(self) -> None:
        """A read with many PUBs causes one write to each subscriber."""
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB foo 1\r\n")
        writes = []
        original = sub.transport.write
        sub.transport.write = lambda data: (writes.append(data), original(data))  # type: ignore[method-assign]
        # (A read's frames may be handed over unjoined, as one writeSequence.)
        sub.transport.writeSequence = lambda data: (writes.append(b"".join(data)), original(b"".join(data)))  # type: ignore[method-assign]
        pub.send(b"PUB foo 1\r\na\r\n" * 100)
        self.assertEqual(len(writes), 1)
        self.assertEqual(writes[0], b"MSG foo 1 1\r\na\r\n" * 100)


class BatchTests(SynchronousTestCase):
    """
    Many PUBs in one read are delivered in batches: the results must be
    exactly those of one PUB at a time.
    """

    def test_sub_after_pub_in_same_read(self) -> None:
        h = Harness()
        c = h.connect()
        c.send(b"PUB foo 1\r\na\r\nPUB foo 1\r\nb\r\nSUB foo 1\r\nPUB foo 1\r\nc\r\nUNSUB 1\r\nPUB foo 1\r\nd\r\n")
        self.assertEqual(c.received(), b"MSG foo 1 1\r\nc\r\n")

    def test_order_across_subjects(self) -> None:
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB a 1\r\nSUB b 2\r\n")
        pub.send(b"PUB a 1\r\n1\r\nPUB a 1\r\n2\r\nPUB b 1\r\n3\r\nPUB a 1\r\n4\r\nPUB a r 1\r\n5\r\nPUB a 1\r\n6\r\n")
        self.assertEqual(
            sub.received(),
            b"MSG a 1 1\r\n1\r\nMSG a 1 1\r\n2\r\nMSG b 2 1\r\n3\r\nMSG a 1 1\r\n4\r\nMSG a 1 r 1\r\n5\r\nMSG a 1 1\r\n6\r\n",
        )

    def test_different_sizes_same_subject(self) -> None:
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB a 1\r\n")
        pub.send(b"PUB a 1\r\nx\r\nPUB a 3\r\nxyz\r\nPUB  a 3\r\nabc\r\nPUB a 3\r\nxyz\r\n")
        self.assertEqual(sub.received(), b"MSG a 1 1\r\nx\r\nMSG a 1 3\r\nxyz\r\nMSG a 1 3\r\nabc\r\nMSG a 1 3\r\nxyz\r\n")
        self.assertEqual((pub.proto.in_msgs, pub.proto.in_bytes), (4, 10))
        self.assertEqual((sub.proto.out_msgs, sub.proto.out_bytes), (4, 10))

    def test_queue_groups_in_batch(self) -> None:
        h = Harness()
        members = [h.connect() for _ in range(3)]
        for m in members:
            m.send(b"SUB work q 1\r\n")
        plain = h.connect()
        plain.send(b"SUB work 2\r\n")
        h.connect().send(b"PUB work 2\r\nhi\r\n" * 300)
        counts = [m.received().count(b"MSG work 1 2\r\nhi\r\n") for m in members]
        self.assertEqual(sum(counts), 300)
        self.assertTrue(all(n > 50 for n in counts), counts)
        self.assertEqual(plain.received(), b"MSG work 2 2\r\nhi\r\n" * 300)
        self.assertEqual(sum(m.proto.out_bytes for m in members), 600)

    def test_queue_batch_sizes_with_leading_zeros(self) -> None:
        """
        A batch to a queue group whose size tokens have leading zeros
        (nats-server reads C{05} as 5 and shows the token as sent): lines
        of one length then carry payloads of different sizes, and each
        member's C{out_bytes} (what /connz shows) and the server's (/varz)
        are the payload bytes it was written, not the batch's average.
        """
        h = Harness()
        members = [h.connect() for _ in range(2)]
        for m in members:
            m.send(b"SUB work q 1\r\n")
        pub = h.connect(b'CONNECT {"verbose":false,"pedantic":false}\r\n')  # (plain: its PUBs in batches)
        # "6\r\nhello!\r\n", "05\r\nhello\r\n" and "004\r\nhell\r\n" are 11 bytes each.
        pub.send(b"PUB work 6\r\nhello!\r\nPUB work 05\r\nhello\r\nPUB work 004\r\nhell\r\n" * 20)
        for m in members:
            got = m.received()
            written = got.count(b" 6\r\nhello!\r\n") * 6 + got.count(b" 05\r\nhello\r\n") * 5 + got.count(b" 004\r\nhell\r\n") * 4
            self.assertEqual((m.proto.out_msgs, m.proto.out_bytes), (got.count(b"MSG work 1 "), written))
        self.assertEqual(h.broker.totals()["out_bytes"], 20 * 15)

    def test_one_connections_subscriptions_each_in_order(self) -> None:
        """
        One read's messages to a subject that three of a client's
        subscriptions match: each subscription gets them all, in the order
        published (what NATS promises, and what clients dispatch by).  (How
        the three interleave is not promised: here a subscription's batch at
        a time, in nats-server message by message; docs/compatibility.md.)
        """
        h = Harness()
        sub = h.connect()
        sub.send(b"SUB a 1\r\nSUB a 2\r\nSUB > 3\r\n")
        pub = h.connect(b'CONNECT {"verbose":false,"pedantic":false}\r\n')  # (plain: its PUBs in batches)
        pub.send(b"".join(b"PUB a 2\r\nm%d\r\n" % n for n in range(5)))
        frames = re.findall(rb"MSG a (\d) 2\r\n(m\d)\r\n", sub.received())
        self.assertEqual(len(frames), 15)
        for sid in (b"1", b"2", b"3"):
            self.assertEqual([m for s, m in frames if s == sid], [b"m%d" % n for n in range(5)])

    def test_large_payloads_as_pieces(self) -> None:
        """
        A batch of large payloads reaches its subscribers as pieces (PyPy's
        way, forced here on any interpreter): the same bytes, in order, and
        the same counts, for two subscribers sharing a prefix and one not.
        """
        from eventsvc.nats import delivery

        self.patch(delivery, "BATCH_PIECES_FROM", 768)
        h = Harness()
        subs = [h.connect() for _ in range(3)]
        subs[0].send(b"SUB big 1\r\n")
        subs[1].send(b"SUB big 1\r\n")
        subs[2].send(b"SUB big.> 1\r\nSUB big 7\r\n")
        pub = h.connect(connect=b'CONNECT {"verbose":false,"pedantic":false}\r\n')  # (plain: its PUBs in batches)
        payloads = [bytes([97 + i]) * 1000 for i in range(6)]
        pub.send(b"".join(b"PUB big %d\r\n%s\r\n" % (len(p), p) for p in payloads))
        expected = lambda sid: b"".join(b"MSG big %s %d\r\n%s\r\n" % (sid, len(p), p) for p in payloads)
        self.assertEqual(subs[0].received(), expected(b"1"))
        self.assertEqual(subs[1].received(), expected(b"1"))
        self.assertEqual(subs[2].received(), expected(b"7"))
        self.assertEqual([(s.proto.out_msgs, s.proto.out_bytes) for s in subs], [(6, sum(map(len, payloads)))] * 3)

    def test_queue_group_over_many_subjects(self) -> None:
        """
        Reads of PUBs each to another subject (no runs form), from several
        publishers, to a queue group through a wildcard: each message to
        one member, in order, framed with its subject; UNSUB takes a
        member out and SUB puts one in between reads.
        """
        h = Harness()
        members = [h.connect() for _ in range(5)]
        for m in members:
            m.send(b"SUB dev.*.state q 1\r\n")
        pubs = [h.connect() for _ in range(3)]

        def read(first: int, end: int) -> None:
            for k, pub in enumerate(pubs):
                pub.send(b"".join(b"PUB dev.%d.state %d\r\n%d\r\n" % (n, len(b"%d" % n), n) for n in range(first + k, end, 3)))

        def got(m) -> list:
            frames = m.received().split(b"\r\n")[:-1]
            for line, n in zip(frames[::2], frames[1::2]):
                self.assertEqual(line, b"MSG dev.%s.state 1 %d" % (n, len(n)))
            return [int(n) for n in frames[1::2]]

        read(0, 600)
        seen = [got(m) for m in members]
        for k, pub_seen in enumerate(seen):
            self.assertGreater(len(pub_seen), 50, k)
            for p in range(3):
                mine = [n for n in pub_seen if n % 3 == p]
                self.assertEqual(mine, sorted(mine))  # each publisher's in its order
        self.assertEqual(sorted(n for s in seen for n in s), list(range(600)))
        members[0].send(b"UNSUB 1\r\n")
        late = h.connect()
        late.send(b"SUB dev.*.state q 7\r\n")
        read(600, 1200)
        self.assertEqual(got(members[0]), [])
        after = [got(m) for m in members[1:]]
        joined = late.received().count(b"MSG dev.")
        self.assertGreater(joined, 50)
        self.assertEqual(sum(len(s) for s in after) + joined, 600)

    def test_many_subjects_around_own_subscriptions(self) -> None:
        """
        A read over many subjects, each message a batch of its own, with the
        publisher's own SUB, UNSUB and PING in it, by the loop (PyPy's way)
        and by split runs (CPython's): every subscriber gets every message
        meant for it, in order, framed with its subject; the publisher gets
        only those between its SUB and its UNSUB, and its PONG after them.
        """
        for split_runs in (False, True):
            h = Harness()
            sub, pub = h.connect(), h.connect()
            sub.send(b"SUB dev.*.state 4\r\n")
            pub.proto.parser.split_runs = split_runs
            message = lambda n: b"PUB dev.%d.state %d\r\n%d\r\n" % (n % 300, len(b"%d" % n), n)
            pub.send(b"".join(map(message, range(700))) + b"SUB dev.> 9\r\n" + b"".join(map(message, range(700, 1400)))
                     + b"UNSUB 9\r\n" + b"".join(map(message, range(1400, 2000))) + b"PING\r\n")
            frame = lambda sid, n: b"MSG dev.%d.state %s %d\r\n%d\r\n" % (n % 300, sid, len(b"%d" % n), n)
            self.assertEqual(sub.received(), b"".join(frame(b"4", n) for n in range(2000)), split_runs)
            self.assertEqual(pub.received(), b"".join(frame(b"9", n) for n in range(700, 1400)) + b"PONG\r\n", split_runs)
            self.assertEqual((pub.proto.in_msgs, sub.proto.out_msgs, pub.proto.out_msgs), (2000, 2000, 700))

    def test_one_subscriber_over_many_subjects(self) -> None:
        """
        Subjects whose one subscriber is all there is, their plans kept
        (each subject seen before), by the loop and by split runs: a
        maximum set afterwards (UNSUB 4 5) ends the subscription after
        exactly five more messages; a publisher without echo that is a
        subject's one subscriber is not sent its own messages, and is sent
        another's.
        """
        message = lambda verb, n: b"PUB %s.%d.state %d\r\n%d\r\n" % (verb, n % 300, len(b"%d" % n), n)
        frame = lambda verb, sid, n: b"MSG %s.%d.state %s %d\r\n%d\r\n" % (verb, n % 300, sid, len(b"%d" % n), n)
        for split_runs in (False, True):
            h = Harness()
            sub, pub = h.connect(), h.connect()
            quiet = h.connect(connect=b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n')
            sub.send(b"SUB dev.*.state 4\r\n")
            quiet.send(b"SUB own.> 2\r\n")
            for conn in (pub, quiet):
                conn.proto.parser.split_runs = split_runs
            pub.send(b"".join(message(b"dev", n) for n in range(900)))
            self.assertEqual(sub.received(), b"".join(frame(b"dev", b"4", n) for n in range(900)), split_runs)
            quiet.send(b"".join(message(b"own", n) for n in range(900)) + b"PING\r\n")
            self.assertEqual(quiet.received(), b"PONG\r\n", split_runs)
            pub.send(b"".join(message(b"own", n) for n in range(900, 1200)))
            self.assertEqual(quiet.received(), b"".join(frame(b"own", b"2", n) for n in range(900, 1200)), split_runs)
            sub.send(b"UNSUB 4 5\r\n")
            pub.send(b"".join(message(b"dev", n) for n in range(2000, 2600)))
            self.assertEqual(sub.received(), b"".join(frame(b"dev", b"4", n) for n in range(2000, 2005)), split_runs)
            self.assertEqual(h.broker.sublist.count, 1)
            self.assertEqual((sub.proto.out_msgs, quiet.proto.out_msgs), (905, 300), split_runs)

    def test_echo_false_in_batch(self) -> None:
        h = Harness()
        a = h.connect(connect=b'CONNECT {"verbose":false,"pedantic":false,"echo":false}\r\n')
        b = h.connect()
        a.send(b"SUB foo 1\r\nSUB foo q 2\r\n")
        b.send(b"SUB foo 1\r\n")
        a.send(b"PUB foo 1\r\nx\r\n" * 5)
        self.assertEqual(a.received(), b"")
        self.assertEqual(b.received(), b"MSG foo 1 1\r\nx\r\n" * 5)

    def test_auto_unsubscribe_in_batch(self) -> None:
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB foo 1\r\nUNSUB 1 3\r\nSUB foo q 2\r\nUNSUB 2 2\r\n")
        pub.send(b"PUB foo 1\r\nx\r\n" * 10)
        out = sub.received()
        self.assertEqual(out.count(b"MSG foo 1 1"), 3)
        self.assertEqual(out.count(b"MSG foo 2 1"), 2)
        self.assertEqual(h.broker.sublist.count, 0)

    def test_violation_after_batch(self) -> None:
        """PUBs before a violation in the same read are still delivered."""
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB foo 1\r\n")
        pub.send(b"PUB foo 1\r\nx\r\nPUB foo 1\r\ny\r\nBOGUS\r\n")
        self.assertEqual(sub.received(), b"MSG foo 1 1\r\nx\r\nMSG foo 1 1\r\ny\r\n")
        self.assertTrue(pub.closed)

    def test_split_inside_repeated_lines(self) -> None:
        """The remembered control line survives reads split anywhere."""
        h = Harness()
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB foo 1\r\n")
        data = b"PUB foo 3\r\nabc\r\n" * 20
        for i in range(0, len(data), 7):
            pub.send(data[i : i + 7])
        self.assertEqual(sub.received(), b"MSG foo 1 3\r\nabc\r\n" * 20)


class ErrorTests(SynchronousTestCase):
    """Every error string, and whether it closes the connection."""

    def assertError(self, send: bytes, expected: bytes, closes: bool, **settings) -> None:
        h = Harness(**settings)
        c = h.connect()
        c.send(send)
        self.assertEqual(c.received(), expected)
        self.assertEqual(c.closed, closes)

    def test_unknown_operation(self) -> None:
        for bad in (b"FOO\r\n", b"\r\n", b"UNSUB\r\n", b"PUBX foo 1\r\n", b"MSG foo 1 1\r\n", b"RS+ $G foo\r\n"):
            self.assertError(bad + b"PING\r\n", b"-ERR 'Unknown Protocol Operation'\r\n", True)

    def test_unknown_operation_without_newline(self) -> None:
        """Garbage is refused at once, not after a newline that may never come."""
        self.assertError(b"XYZ", b"-ERR 'Unknown Protocol Operation'\r\n", True)

    def test_payload_not_followed_by_crlf(self) -> None:
        self.assertError(b"PUB foo 2\r\nhello\r\n", b"-ERR 'Unknown Protocol Operation'\r\n", True)

    def test_max_payload(self) -> None:
        self.assertError(b"PUB foo 1025\r\n", b"-ERR 'Maximum Payload Violation'\r\n", True, max_payload=1024)

    def test_max_payload_hpub(self) -> None:
        h = Harness(max_payload=1024)
        c = h.connect(connect=b'CONNECT {"verbose":false,"headers":true}\r\n')
        c.send(b"HPUB foo 12 2000\r\n")
        self.assertEqual(c.received(), b"-ERR 'Maximum Payload Violation'\r\n")
        self.assertTrue(c.closed)

    def test_max_control_line(self) -> None:
        self.assertError(b"SUB foo " + b"a" * 5000 + b"\r\n", b"-ERR 'maximum control line exceeded'\r\n", True)

    def test_max_control_line_without_newline(self) -> None:
        """An endless control line is cut off before it is all buffered."""
        h = Harness()
        c = h.connect()
        for _ in range(10):
            c.send(b"SUB foo " + b"a" * 1000)
            if c.closed:
                break
        self.assertEqual(c.received(), b"-ERR 'maximum control line exceeded'\r\n")
        self.assertTrue(c.closed)

    def test_invalid_subject_keeps_open(self) -> None:
        self.assertError(b"SUB foo..bar 1\r\nSUB >.a 2\r\nPING\r\n", b"-ERR 'Invalid Subject'\r\n" * 2 + b"PONG\r\n", False)

    def test_invalid_publish_subject_pedantic(self) -> None:
        """Pedantic: the error is sent, the connection stays, the message still goes (as nats-server)."""
        h = Harness()
        c = h.connect(connect=b'CONNECT {"verbose":false,"pedantic":true}\r\n')
        c.send(b"SUB foo.* 1\r\nPUB foo.* 1\r\na\r\nPUB foo..x 0\r\n\r\nPING\r\n")
        self.assertEqual(
            c.received(),
            b"-ERR 'Invalid Publish Subject'\r\nMSG foo.* 1 1\r\na\r\n-ERR 'Invalid Publish Subject'\r\nPONG\r\n",
        )
        self.assertFalse(c.closed)

    def test_not_pedantic_no_error(self) -> None:
        h = Harness()
        c = h.connect(connect=b'CONNECT {"verbose":false,"pedantic":false}\r\n')
        c.send(b"PUB foo.* 0\r\n\r\nPING\r\n")
        self.assertEqual(c.received(), b"PONG\r\n")

    def test_silent_closes(self) -> None:
        """Wrong argument counts and bad sizes close without a word."""
        for bad in (
            b"PUB foo\r\n",
            b"PUB a b c 1\r\n",
            b"PUB foo x\r\n",
            b"PUB foo -1\r\n",
            b"PUB foo +1\r\n",
            b"PUB foo 1_0\r\n",
            b"PUB foo 1234567890\r\n",
            b"SUB foo\r\n",
            b"SUB foo q 1 2\r\n",
            b"UNSUB 1 2 3\r\n",
            b"-ERR 'x'\r\n",
            b"INFO {x\r\n",
        ):
            self.assertError(bad + b"PING\r\n", b"", True)

    def test_permissions(self) -> None:
        h = Harness(authenticator=TokenAuthenticator(permissions=OnlyFoo()))
        c = h.connect(connect=b'CONNECT {"verbose":false,"auth_token":"good"}\r\n')
        c.send(b"PUB bar 1\r\na\r\nSUB bar 1\r\nSUB foo 2\r\nPUB foo 1\r\nb\r\nPING\r\n")
        self.assertEqual(
            c.received(),
            b"-ERR 'Permissions Violation for Publish to \"bar\"'\r\n"
            b"-ERR 'Permissions Violation for Subscription to \"bar\"'\r\n"
            b"MSG foo 2 1\r\nb\r\nPONG\r\n",
        )
        self.assertFalse(c.closed)

    def test_max_subscriptions(self) -> None:
        self.assertError(
            b"SUB a 1\r\nSUB b 2\r\nSUB c 3\r\nPING\r\n", b"-ERR 'maximum subscriptions exceeded'\r\nPONG\r\n", False, max_subscriptions=2
        )

    def test_errors_after_earlier_output(self) -> None:
        """What was owed before the error is sent before it."""
        self.assertError(b"PING\r\nFOO\r\n", b"PONG\r\n-ERR 'Unknown Protocol Operation'\r\n", True)


@implementer(IPermissions)
class OnlyFoo:
    def may_publish(self, subject: bytes) -> bool:
        return subject == b"foo"

    def may_subscribe(self, subject: bytes, queue) -> bool:
        return subject == b"foo"


@implementer(IPermissions)
class SubscribeOnly:
    """Publish anything; subscribe to these subjects only."""

    def __init__(self, *subjects: bytes) -> None:
        self.subjects = subjects

    def may_publish(self, subject: bytes) -> bool:
        return True

    def may_subscribe(self, subject: bytes, queue) -> bool:
        return subject in self.subjects


@implementer(IAuthenticator)
class TokenAuthenticator:
    """Accepts auth_token "good"; "later" answers when the test says so."""

    def __init__(self, permissions=None) -> None:
        self.permissions = permissions
        self.pending: list = []

    def authenticate(self, connect, peer):
        token = connect.get("auth_token")
        if token == "good":
            return succeed(Identity("good", self.permissions))
        if token == "later":
            d: Deferred = Deferred()
            self.pending.append(d)
            return d
        if token == "boom":
            raise RuntimeError("authenticator bug")
        return fail(AuthenticationFailed("unknown token"))


class AuthTests(SynchronousTestCase):
    def test_good_token(self) -> None:
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=b'CONNECT {"auth_token":"good"}\r\nPING\r\n')
        self.assertEqual(c.received(), b"+OK\r\nPONG\r\n")
        self.assertEqual(c.proto.identity.name, "good")

    def test_token_field_in_another_case(self) -> None:
        """
        C{"Auth_Token"} is the token to nats-server (Go's encoding/json
        matches field names in any case), and C{"Verbose":false} turns +OK
        off: a client that spells them so logs in as there.
        """
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=b'CONNECT {"Auth_Token":"good","Verbose":false}\r\nPING\r\n')
        self.assertEqual(c.received(), b"PONG\r\n")
        self.assertEqual(c.proto.identity.name, "good")

    def test_an_account_is_refused(self) -> None:
        """
        A CONNECT that names an account (C{account}, C{new_account}, in any
        case) is refused as nats-server 2.9 refuses it, credentials or
        none: C{Authorization Violation}, and the connection closes.
        """
        for arg in (b'{"verbose":false,"account":"a"}', b'{"verbose":false,"New_Account":true}'):
            for h in (Harness(), Harness(authenticator=TokenAuthenticator())):
                c = h.connect(connect=b"CONNECT " + arg[:-1] + b',"auth_token":"good"}\r\nPING\r\n')
                self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")
                self.assertTrue(c.proto.closed)
        c = Harness().connect(connect=b'CONNECT {"verbose":false,"account":"","new_account":false}\r\nPING\r\n')
        self.assertEqual(c.received(), b"PONG\r\n")

    def test_wrong_token(self) -> None:
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=b'CONNECT {"auth_token":"bad"}\r\nPING\r\n')
        self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")
        self.assertTrue(c.closed)

    def test_authenticator_raises(self) -> None:
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=b'CONNECT {"auth_token":"boom"}\r\nPING\r\n')
        self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")
        self.assertTrue(c.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_op_before_connect(self) -> None:
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=b"PING\r\n")
        self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")
        self.assertTrue(c.closed)

    def test_partial_op_before_connect(self) -> None:
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=b"SU")
        self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")

    def test_timeout(self) -> None:
        h = Harness(authenticator=TokenAuthenticator(), auth_timeout=2.0)
        c = h.connect(connect=None)
        h.clock.advance(1.9)
        self.assertFalse(c.closed)
        h.clock.advance(0.2)
        self.assertEqual(c.received(), b"-ERR 'Authentication Timeout'\r\n")
        self.assertTrue(c.closed)

    def test_slow_authenticator_times_out(self) -> None:
        auth = TokenAuthenticator()
        h = Harness(authenticator=auth, auth_timeout=2.0)
        c = h.connect(connect=b'CONNECT {"auth_token":"later"}\r\nPING\r\n')
        h.clock.advance(2.5)
        self.assertEqual(c.received(), b"-ERR 'Authentication Timeout'\r\n")
        auth.pending[0].callback(Identity("late"))
        self.assertEqual(c.received(), b"")

    def test_async_authenticator_holds_later_ops(self) -> None:
        """Operations after CONNECT wait for the authenticator's answer, in order."""
        auth = TokenAuthenticator()
        h = Harness(authenticator=auth)
        c = h.connect(connect=b'CONNECT {"auth_token":"later"}\r\nSUB foo 1\r\nPUB foo 1\r\n')
        c.send(b"a\r\nPING\r\n")
        self.assertEqual(c.received(), b"")
        self.assertEqual(c.transport.producerState, "paused")
        auth.pending[0].callback(Identity("later"))
        # +OK for CONNECT, SUB and PUB, then the delivery, then PONG.
        self.assertEqual(c.received(), b"+OK\r\n+OK\r\n+OK\r\nMSG foo 1 1\r\na\r\nPONG\r\n")
        self.assertEqual(c.transport.producerState, "producing")


    def test_async_authenticator_with_connect_split_across_reads(self) -> None:
        """
        The read that completes a CONNECT also carries later operations:
        they wait for the answer too (the kept CONNECT is parsed on its own,
        then the rest of that read must not be).
        """
        for cut in range(1, 40):
            auth = TokenAuthenticator()
            h = Harness(authenticator=auth)
            stream = b'CONNECT {"auth_token":"later"}\r\nSUB foo 1\r\nPUB foo 1\r\na\r\nPING\r\n'
            c = h.connect(connect=stream[:cut])
            c.send(stream[cut:])
            self.assertEqual(c.received(), b"", cut)
            auth.pending[0].callback(Identity("later"))
            self.assertEqual(c.received(), b"+OK\r\n+OK\r\n+OK\r\nMSG foo 1 1\r\na\r\nPONG\r\n", cut)


    def test_reauthorize(self) -> None:
        """After a reload: refused closes; an authenticator that errs or hangs changes nothing."""
        auth = TokenAuthenticator(permissions=SubscribeOnly(b"a.x", b"b.x"))
        h = Harness(authenticator=auth, auth_timeout=2.0)
        c = h.connect(connect=b'CONNECT {"verbose":false,"auth_token":"good"}\r\nSUB a.x 1\r\nSUB b.x 2\r\n')
        c.received()
        results = []
        # Accepted again, under narrower permissions: b.x goes, with nats-server's words.
        narrower = TokenAuthenticator(permissions=SubscribeOnly(b"a.x"))
        c.proto.reauthorize(narrower).addCallback(results.append)
        self.assertEqual((results, c.received()), ([1], b"-ERR 'Permissions Violation for Subscription to \"b.x\" (sid \"2\")'\r\n"))
        self.assertEqual(sorted(c.proto.subs), [b"1"])
        # The authenticator fails with an error, then hangs: nothing changes.
        c.proto.connect_options["auth_token"] = "boom"
        c.proto.reauthorize(auth).addCallback(results.append)
        c.proto.connect_options["auth_token"] = "later"
        c.proto.reauthorize(auth).addCallback(results.append)
        h.clock.advance(2.1)
        self.assertEqual((results, c.closed), ([1, 0, 0], False))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 0)
        # Refused: told and closed.
        c.proto.connect_options["auth_token"] = "revoked"
        c.proto.reauthorize(auth).addCallback(results.append)
        self.assertEqual((results[-1], c.received(), c.closed), (-1, b"-ERR 'Authorization Violation'\r\n", True))


class LivenessTests(SynchronousTestCase):
    def test_stale_connection(self) -> None:
        """Unanswered PINGs past ping_max end the connection as stale."""
        h = Harness(ping_interval=10.0, ping_max=2)
        c = h.connect()
        h.clock.advance(10)
        self.assertEqual(c.received(), b"PING\r\n")
        h.clock.advance(10)
        self.assertEqual(c.received(), b"PING\r\n")
        h.clock.advance(10)
        self.assertEqual(c.received(), b"-ERR 'Stale Connection'\r\n")
        self.assertTrue(c.closed)

    def test_pong_keeps_alive(self) -> None:
        h = Harness(ping_interval=10.0, ping_max=2)
        c = h.connect()
        for _ in range(10):
            h.clock.advance(10)
            self.assertEqual(c.received(), b"PING\r\n")
            # Answer, then let the activity age past the interval.
            c.send(b"PONG\r\n")
            h.clock.advance(0)
        self.assertFalse(c.closed)

    def test_activity_delays_ping(self) -> None:
        """A client that talks is not pinged."""
        h = Harness(ping_interval=10.0, ping_max=1)
        c = h.connect()
        for _ in range(5):
            h.clock.advance(6)
            c.send(b"PUB x 0\r\n\r\n")
        self.assertEqual(c.received(), b"")
        self.assertFalse(c.closed)

    def test_timers_cancelled_on_close(self) -> None:
        h = Harness(authenticator=TokenAuthenticator())
        c = h.connect(connect=None)
        c.proto.connectionLost(None)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class LimitTests(SynchronousTestCase):
    def test_listener_limit(self) -> None:
        """Past max_connections: INFO, then the error, then close."""
        h = Harness(max_connections=2)
        a, b = h.connect(), h.connect()
        c = h.connect(connect=None)
        out = c.all_received()
        self.assertTrue(out.startswith(b"INFO {"))
        self.assertTrue(out.endswith(b"} \r\n-ERR 'maximum connections exceeded'\r\n"))
        self.assertTrue(c.closed)
        self.assertFalse(a.closed or b.closed)
        # A slot freed is a slot available.
        a.proto.connectionLost(None)
        d = h.connect()
        self.assertFalse(d.closed)

    def test_slow_consumer_cut_others_keep_receiving(self) -> None:
        h = Harness(max_pending=10000)
        slow, fast, pub = h.connect(), h.connect(), h.connect()
        slow.send(b"SUB foo 1\r\n")
        fast.send(b"SUB foo 1\r\n")
        # The slow client's kernel buffer is full: its transport pauses us.
        slow.transport.producer.pauseProducing()
        # (The publisher is stalled on the way; it is a test, so read on.)
        pub.proto.stall = lambda consumer: None  # type: ignore[method-assign]
        for _ in range(20):
            pub.send(b"PUB foo 1000\r\n" + b"x" * 1000 + b"\r\n")
        self.assertTrue(slow.aborted)
        self.assertEqual(h.broker.slow_consumers, 1)
        self.assertEqual(fast.received().count(b"MSG foo 1 1000\r\n"), 20)
        self.assertEqual(h.broker.sublist.count, 1)
        self.assertFalse(pub.closed or fast.closed)

    def test_paused_within_budget_survives(self) -> None:
        h = Harness(max_pending=100000)
        slow, pub = h.connect(), h.connect()
        slow.send(b"SUB foo 1\r\n")
        slow.transport.producer.pauseProducing()
        for _ in range(20):
            pub.send(b"PUB foo 1000\r\n" + b"x" * 1000 + b"\r\n")
        slow.transport.producer.resumeProducing()
        for _ in range(80):
            pub.send(b"PUB foo 1000\r\n" + b"x" * 1000 + b"\r\n")
        self.assertFalse(slow.closed)
        self.assertEqual(slow.received().count(b"MSG"), 100)

    def test_fast_producer_stalled_until_consumer_drains(self) -> None:
        """Past half of max_pending, the publisher stops being read until the consumer catches up."""
        h = Harness(max_pending=10000)
        slow, pub = h.connect(), h.connect()
        slow.send(b"SUB foo 1\r\n")
        slow.transport.producer.pauseProducing()
        for _ in range(4):
            pub.send(b"PUB foo 1000\r\n" + b"x" * 1000 + b"\r\n")
        self.assertEqual(pub.transport.producerState, "producing")
        pub.send(b"PUB foo 1000\r\n" + b"x" * 1000 + b"\r\n")
        self.assertEqual(pub.transport.producerState, "paused")
        self.assertFalse(slow.closed)
        # The consumer's transport drained: it takes what was held, the producer goes on.
        slow.transport.producer.resumeProducing()
        self.assertEqual(slow.received().count(b"MSG foo 1 1000\r\n"), 5)
        self.assertEqual(pub.transport.producerState, "producing")

    def test_stall_is_bounded(self) -> None:
        h = Harness(max_pending=10000)
        slow, pub = h.connect(), h.connect()
        slow.send(b"SUB foo 1\r\n")
        slow.transport.producer.pauseProducing()
        for _ in range(6):
            pub.send(b"PUB foo 1000\r\n" + b"x" * 1000 + b"\r\n")
        self.assertEqual(pub.transport.producerState, "paused")
        # Stalled at 5,090 pending bytes of 10,000: nats-server's minimum, 0.1 s.
        h.clock.advance(0.09)
        self.assertEqual(pub.transport.producerState, "paused")
        h.clock.advance(0.02)
        self.assertEqual(pub.transport.producerState, "producing")
        self.assertFalse(slow.closed)

    def test_stall_durations(self) -> None:
        from eventsvc.nats.outbound import stall_duration

        self.assertAlmostEqual(stall_duration(5100, 10000), 0.1)
        self.assertAlmostEqual(stall_duration(7500, 10000), 0.6)
        self.assertAlmostEqual(stall_duration(10000, 10000), 1.0)

    def test_held_bytes_handed_over_in_pieces(self) -> None:
        """Each resume hands the transport about PUSH_SIZE, so pending stays measurable."""
        h = Harness(max_pending=64 * 1024 * 1024)
        sub, pub = h.connect(), h.connect()
        sub.send(b"SUB foo 1\r\n")
        sub.transport.producer.pauseProducing()
        frame = b"PUB foo 10000\r\n" + b"x" * 10000 + b"\r\n"
        for _ in range(100):
            pub.send(frame)
        self.assertGreater(sub.proto.pending_bytes, 1000000)
        before = len(sub.transport.value())
        sub.transport.producer.resumeProducing()
        pushed = len(sub.transport.value()) - before
        self.assertTrue(256 * 1024 <= pushed < 256 * 1024 + 10100, pushed)
        while sub.proto.pending_bytes:
            sub.transport.producer.resumeProducing()
        self.assertEqual(sub.received().count(b"MSG foo 1 10000\r\n"), 100)

    def test_write_deadline(self) -> None:
        h = Harness(write_deadline=10.0)
        slow = h.connect()
        slow.transport.producer.pauseProducing()
        h.clock.advance(9)
        self.assertFalse(slow.closed)
        h.clock.advance(2)
        self.assertTrue(slow.aborted)


class ParseBudgetTests(SynchronousTestCase):
    """One client's burst yields to others after its time budget, in order and without loss."""

    def test_burst_is_finished_on_later_turns(self) -> None:
        h = Harness(parse_budget=0.0)
        sub = h.connect()
        sub.send(b"SUB burst 1\r\n")
        pub = h.connect()
        pub.send(b"".join(b"PUB burst %d\r\n%d\r\n" % (len(b"%d" % i), i) for i in range(1000)) + b"PING\r\n")
        first = sub.received()
        # The first turn stopped after 15 operations (the budget is checked every 16).
        self.assertEqual(first.count(b"MSG burst"), 15)
        self.assertTrue(pub.proto.transport.producerState == "paused")
        self.assertEqual(pub.received(), b"")
        for _ in range(20):
            h.clock.advance(0)
        rest = sub.received()
        got = (first + rest).split(b"\r\n")
        payloads = [got[i + 1] for i, line in enumerate(got) if line.startswith(b"MSG burst")]
        self.assertEqual(payloads, [b"%d" % i for i in range(1000)])
        self.assertEqual(pub.received(), b"PONG\r\n")
        self.assertEqual(pub.proto.transport.producerState, "producing")

    def test_writing_a_turn_out_counts_against_the_next_turn(self) -> None:
        """
        When a turn stopped at the budget, the time its flush took (writing
        what it delivered: a fan-out costs as much to write as to parse)
        is taken from the next turn's budget.
        """
        from eventsvc.nats import framing

        h = Harness(parse_budget=3600.0)
        sub = h.connect()
        sub.send(b"SUB burst 1\r\n")
        pub = h.connect()
        # The loop's clock moves only while a turn is written out: every flush takes two hours.
        now = [0.0]
        self.patch(framing, "perf_counter", lambda: now[0])
        write_out = pub.proto.turns.write_out

        def slow_write_out() -> None:
            now[0] += 7200
            write_out()

        pub.proto.turns.write_out = slow_write_out
        parser = pub.proto.parser
        parser.suspended = True  # (as after a turn that used its budget)
        pub.proto.turns.flush()
        self.assertEqual(parser.debt, 7200)
        parser.suspended = False
        # With two hours of the budget's one gone, the next turn stops at its first check.
        pub.send(b"".join(b"PUB burst 1\r\nx\r\n" for _ in range(100)))
        self.assertEqual(sub.received().count(b"MSG burst"), 15)
        self.assertEqual(parser.debt, 7200)  # and its own flush is counted again
        # Flushes outside a budget-stopped turn cost the next turn nothing.
        parser.debt = 0.0
        parser.suspended = False
        pub.proto.turns.flush()
        self.assertEqual(parser.debt, 0.0)

    def test_input_while_yielding_is_kept_in_order(self) -> None:
        h = Harness(parse_budget=0.0)
        c = h.connect(b'CONNECT {"verbose":false}\r\n')
        c.send(b"".join(b"SUB s.%d %d\r\n" % (i, i) for i in range(300)))
        c.send(b"PING\r\n")
        self.assertEqual(c.received(), b"")
        for _ in range(10):
            h.clock.advance(0)
        self.assertEqual(c.received(), b"PONG\r\n")
        self.assertEqual(len(c.proto.subs), 300)

    def test_close_while_yielding(self) -> None:
        h = Harness(parse_budget=0.0)
        c = h.connect()
        c.send(b"SUB a 1\r\n" * 200 + b"BOGUS\r\n")
        c.proto.connectionLost(None)
        h.clock.advance(0)
        self.assertEqual(h.clock.getDelayedCalls(), [])


class JSONBombTests(SynchronousTestCase):
    def test_nested_connect_is_a_silent_close(self) -> None:
        from twisted.logger import globalLogPublisher

        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        h = Harness()
        c = h.connect(None)
        c.send(b"CONNECT " + b"[" * 2000 + b"]" * 2000 + b"\r\n")
        self.assertEqual(c.received(), b"")
        self.assertTrue(c.closed)
        self.assertEqual([e for e in logged if e.get("log_failure") is not None], [])


class ConnectionLoggerTests(SynchronousTestCase):
    def test_same_events_as_twisteds_logger(self) -> None:
        """A connection's logger makes the events Twisted's Logger makes, a level that is none included."""
        from twisted.logger import Logger, LogLevel

        from eventsvc.nats.client import ClientConnection, _Logger

        ours: list = []
        theirs: list = []

        class Ours:
            log = _Logger(observer=ours.append)

        class Theirs:
            log = Logger(observer=theirs.append)

        for who in (Ours(), Theirs()):
            who.log.info("client {cid} closed: {reason}", cid=7, reason="Client Closed", tls=False)
            who.log.emit(LogLevel.debug, "plain")
            who.log.emit("loud", "no such level")  # type: ignore[arg-type]

        def seen(events: list, source: type) -> list:
            out = []
            for event in events:
                event = dict(event)
                self.assertIsInstance(event.pop("log_logger"), Logger)
                self.assertIsInstance(event.pop("log_time"), float)
                self.assertIsInstance(event.pop("log_source"), source)
                failure = event.pop("log_failure", None)
                event.pop("logger", None)
                event["failure"] = None if failure is None else failure.type
                event["log_namespace"] = event["log_namespace"].rsplit(".", 1)[-1]
                out.append(event)
            return out

        self.assertEqual(seen(ours, Ours), [dict(e, log_namespace=e["log_namespace"].replace("Theirs", "Ours")) for e in seen(theirs, Theirs)])
        self.assertEqual([e["log_level"] for e in ours], [LogLevel.info, LogLevel.debug, LogLevel.critical])
        self.assertIsInstance(ClientConnection.log, _Logger)
