"""
The parser alone: operations split at any byte, limits, and random bytes.
"""

from __future__ import annotations

import random
import re
from typing import Any, Iterator, List, Optional

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats import framing
from eventsvc.nats.framing import Framer
from eventsvc.nats.parser import ClientParser, LeafParser, ProtocolViolation, RouteParser
from eventsvc.test.helpers import Harness

STREAM = (
    b'CONNECT {"verbose":false,"headers":true}\r\n'
    b"SUB foo.* 1\r\n"
    b"sub\tbar  q  2\r\n"
    b"PUB foo.a 5\r\nhello\r\n"
    b"PUB foo.b reply.x 12\r\nPUB a 1\r\nb\r\n\r\n"
    b"pub  foo.c\t3\r\nabc\r\n"
    b"PUB foo.d 0\r\n\r\n"
    b"HPUB foo.e 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
    b"HPUB foo.f r 16 16\r\nNATS/1.0 503\r\n\r\n\r\n"
    b"UNSUB 1 10\r\n"
    b"UNSUB 2\r\n"
    b"PING\r\nPONG\r\n+OK\r\nPING\n"
    b'INFO {"a":1}\r\n'
)

EXPECTED = [
    ("connect", b'{"verbose":false,"headers":true}'),
    ("sub", b"foo.*", None, b"1"),
    ("sub", b"bar", b"q", b"2"),
    ("pub", b"foo.a", None, 5, b"5\r\nhello\r\n"),
    ("pub", b"foo.b", b"reply.x", 12, b"12\r\nPUB a 1\r\nb\r\n\r\n"),
    ("pub", b"foo.c", None, 3, b"3\r\nabc\r\n"),
    ("pub", b"foo.d", None, 0, b"0\r\n\r\n"),
    ("hpub", b"foo.e", None, 12, 14, b"NATS/1.0\r\n\r\nhi\r\n"),
    ("hpub", b"foo.f", b"r", 16, 16, b"NATS/1.0 503\r\n\r\n\r\n"),
    ("unsub", b"1", 10),
    ("unsub", b"2", 0),
    ("ping",),
    ("pong",),
    ("ping",),
    ("info", b'{"a":1}'),
]


class Recorder:
    plain = False
    may_publish = None
    in_msgs = in_bytes = 0

    def __init__(self) -> None:
        self.ops: List[tuple] = []

    def publish(self, *args):
        raise AssertionError("not plain")

    publish_batch = publish

    def op_pub(self, subject, reply, size, tail):
        self.ops.append(("pub", subject, reply, size, tail))

    def op_hpub(self, subject, reply, hdr_len, total, body):
        self.ops.append(("hpub", subject, reply, hdr_len, total, body))

    def op_sub(self, subject, queue, sid):
        self.ops.append(("sub", subject, queue, sid))

    def op_unsub(self, sid, max_msgs):
        self.ops.append(("unsub", sid, max_msgs))

    def op_connect(self, arg):
        self.ops.append(("connect", arg))
        return False

    def op_info(self, arg):
        self.ops.append(("info", arg))

    def op_ping(self):
        self.ops.append(("ping",))

    def op_pong(self):
        self.ops.append(("pong",))


def parse(chunks) -> List[tuple]:
    recorder = Recorder()
    parser = ClientParser(recorder)
    for chunk in chunks:
        parser.feed(chunk)
    return recorder.ops


class SplitTests(SynchronousTestCase):
    def test_one_chunk(self) -> None:
        self.assertEqual(parse([STREAM]), EXPECTED)

    def test_one_byte_at_a_time(self) -> None:
        self.assertEqual(parse([STREAM[i : i + 1] for i in range(len(STREAM))]), EXPECTED)

    def test_every_split_point(self) -> None:
        for i in range(len(STREAM) + 1):
            self.assertEqual(parse([STREAM[:i], STREAM[i:]]), EXPECTED, i)

    def test_random_splits(self) -> None:
        rng = random.Random(1234)
        for _ in range(200):
            cuts = sorted(rng.sample(range(1, len(STREAM)), 12))
            chunks = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
            self.assertEqual(parse(chunks), EXPECTED)

    def test_large_payload_in_pieces(self) -> None:
        """A payload arriving in many reads is assembled once, not re-joined per read."""
        payload = bytes(range(256)) * 4000
        data = b"PUB big %d\r\n%s\r\n" % (len(payload), payload)
        recorder = Recorder()
        parser = ClientParser(recorder, max_payload=2 * 1024 * 1024)
        joins = 0
        for i in range(0, len(data), 65536):
            parser.feed(data[i : i + 65536])
            joins += not parser._pending
        self.assertEqual(recorder.ops, [("pub", b"big", None, len(payload), b"%d\r\n%s\r\n" % (len(payload), payload))])
        self.assertEqual(joins, 1)

    def test_violation_after_good_ops(self) -> None:
        """Operations before a violation are handled; the violation says what to send."""
        recorder = Recorder()
        parser = ClientParser(recorder)
        with self.assertRaises(ProtocolViolation) as caught:
            parser.feed(b"PING\r\nPUB foo 3\r\nabcd\r\n")
        self.assertEqual(recorder.ops, [("ping",)])
        self.assertEqual(caught.exception.error, "Unknown Protocol Operation")


# -- random and mutated bytes against a whole connection ----------------------

# A token is anything but space, tab, CR and LF: nats-server passes a subject
# with other control bytes (b"\x0bfoo") through to ">" subscribers as it
# came, and so do we.
_TOK = rb"[^ \t\n]+"
_SERVER_LINE = re.compile(
    rb"(INFO \{.*\} |\+OK|PING|PONG|-ERR '[^'\r\n]*'|MSG %s %s( %s)? \d+|HMSG %s %s( %s)? \d+ \d+)$" % ((_TOK,) * 6)
)
_KEEP_OPEN = (
    b"-ERR 'Invalid Subject'",
    b"-ERR 'Invalid Publish Subject'",
    b"-ERR 'maximum subscriptions exceeded'",
)


def pieces(data: bytes, cuts: List[int]) -> Iterator[bytes]:
    """C{data} cut at C{cuts} (any order, repeats allowed), the last piece running to its end."""
    last = 0
    for cut in sorted(set(cuts)) + [len(data)]:
        yield data[last:cut]
        last = cut


def _check_output(test: SynchronousTestCase, out: bytes, closed: bool) -> None:
    """Every byte the server wrote is a well-formed server operation."""
    pos = 0
    errors = []
    while pos < len(out):
        nl = out.index(b"\r\n", pos)
        line = out[pos:nl]
        test.assertTrue(_SERVER_LINE.match(line), line)
        pos = nl + 2
        if line.startswith((b"MSG", b"HMSG")):
            size = int(line.rsplit(b" ", 1)[1])
            test.assertEqual(out[pos + size : pos + size + 2], b"\r\n")
            pos += size + 2
        if line.startswith(b"-ERR"):
            errors.append(line)
    for e in errors[:-1]:
        test.assertIn(e, _KEEP_OPEN)
    if errors and errors[-1] not in _KEEP_OPEN:
        test.assertTrue(closed, errors[-1])


_OPS = st.sampled_from(
    [
        b"CONNECT {}\r\n",
        b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n',
        b"SUB foo 1\r\n",
        b"SUB foo.* q 2\r\n",
        b"SUB > 3\r\n",
        b"UNSUB 1 2\r\n",
        b"UNSUB 3\r\n",
        b"PUB foo 5\r\nhello\r\n",
        b"PUB foo.bar r 2\r\nhi\r\n",
        b"HPUB foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n",
        b"PING\r\n",
        b"PONG\r\n",
        b"+OK\r\n",
    ]
)


def mutated_streams_of(ops: Any) -> Any:
    """
    A strategy: up to twelve of C{ops} (a strategy of whole operations)
    joined, then up to four bytes flipped, deleted or inserted.
    """

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(b"".join(draw(st.lists(ops, min_size=1, max_size=12))))
        for _ in range(draw(st.integers(0, 4))):
            if not data:
                break
            i = draw(st.integers(0, len(data) - 1))
            action = draw(st.sampled_from(["flip", "delete", "insert"]))
            if action == "flip":
                data[i] = draw(st.integers(0, 255))
            elif action == "delete":
                del data[i]
            else:
                data[i:i] = draw(st.binary(min_size=1, max_size=4))
        return bytes(data)

    return mutated()


def mutated_streams() -> Any:
    return mutated_streams_of(_OPS)


def _feed(test: SynchronousTestCase, data: bytes, cuts: List[int]) -> None:
    h = Harness(max_payload=64, max_control_line=256)
    other = h.connect()
    other.send(b"SUB > 9\r\n")
    c = h.connect(connect=None)
    for piece in pieces(data, cuts):
        if c.closed:
            break
        c.send(piece)
    _check_output(test, c.received(), c.closed)
    _check_output(test, other.received(), other.closed)
    # Closing frees everything, whatever state the parser was in.
    c.proto.connectionLost(None)
    other.proto.connectionLost(None)
    test.assertEqual(h.broker.sublist.count, 0)
    test.assertEqual(h.broker.clients, {})


class FuzzTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.binary(max_size=300), st.lists(st.integers(0, 300), max_size=5))
    def test_random_bytes(self, data: bytes, cuts: List[int]) -> None:
        _feed(self, data, cuts)

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(mutated_streams(), st.lists(st.integers(0, 300), max_size=5))
    def test_mutated_protocol(self, data: bytes, cuts: List[int]) -> None:
        _feed(self, data, cuts)


# -- valid-looking operations: deep subjects, many tokens, wildcards, headers --

_TOKEN = st.text(alphabet="abcXYZ019_-$", min_size=1, max_size=6).map(lambda t: t.encode())
_LITERAL = st.lists(_TOKEN, min_size=1, max_size=80).map(b".".join)
_PATTERN = st.tuples(
    st.lists(st.one_of(_TOKEN, st.just(b"*")), min_size=1, max_size=40), st.booleans()
).map(lambda p: b".".join(p[0] + ([b">"] if p[1] else [])))
_PAYLOAD = st.binary(max_size=40)
_HEADERS = st.lists(st.tuples(st.sampled_from([b"Trace", b"K", b"Nats-Msg-Id"]), st.binary(min_size=1, max_size=8).map(
    lambda v: bytes(b for b in v if b not in b"\r\n") or b"v")), max_size=3)


@st.composite
def valid_looking(draw) -> "tuple[bytes, int]":
    """A stream of well-formed operations, and how many messages it publishes."""
    out = [b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n']
    published = 0
    for _ in range(draw(st.integers(1, 25))):
        kind = draw(st.sampled_from(["pub", "pub", "hpub", "sub", "unsub", "ping"]))
        if kind == "pub":
            payload = draw(_PAYLOAD)
            reply = draw(st.one_of(st.none(), _LITERAL))
            out.append(b"PUB %s %s%d\r\n%s\r\n" % (draw(_LITERAL), reply + b" " if reply else b"", len(payload), payload))
            published += 1
        elif kind == "hpub":
            payload = draw(_PAYLOAD)
            block = b"NATS/1.0\r\n" + b"".join(b"%s: %s\r\n" % kv for kv in draw(_HEADERS)) + b"\r\n"
            out.append(b"HPUB %s %d %d\r\n%s%s\r\n" % (draw(_LITERAL), len(block), len(block) + len(payload), block, payload))
            published += 1
        elif kind == "sub":
            queue = draw(st.one_of(st.none(), _TOKEN))
            out.append(b"SUB %s %s%d\r\n" % (draw(_PATTERN), queue + b" " if queue else b"", draw(st.integers(1, 20))))
        elif kind == "unsub":
            out.append(b"UNSUB %d %s\r\n" % (draw(st.integers(1, 20)), b"%d" % draw(st.integers(0, 3))))
        else:
            out.append(b"PING\r\n")
    return b"".join(out), published


class ValidLookingFuzzTests(SynchronousTestCase):
    """Well-formed streams, cut anywhere, with and without the parse budget: nothing lost, nothing malformed."""

    def run_stream(self, data: bytes, published: int, cuts: List[int], budget) -> None:
        h = Harness(parse_budget=budget)
        watcher = h.connect(b'CONNECT {"verbose":false,"headers":true}\r\n')
        watcher.send(b"SUB > 99\r\n")
        c = h.connect(connect=None)
        for piece in pieces(data, cuts):
            c.send(piece)
            h.clock.advance(0)
        for _ in range(200):
            if not h.clock.getDelayedCalls() or all(d.getTime() > h.clock.seconds() for d in h.clock.getDelayedCalls()):
                break
            h.clock.advance(0)
        self.assertFalse(c.closed, c.received())
        seen = watcher.received()
        _check_output(self, seen, watcher.closed)
        self.assertEqual(seen.count(b" 99 "), published)
        _check_output(self, c.received(), c.closed)
        c.proto.connectionLost(None)
        watcher.proto.connectionLost(None)
        self.assertEqual(h.broker.sublist.count, 0)

    @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
    @given(valid_looking(), st.lists(st.integers(0, 4000), max_size=6))
    def test_valid_looking(self, stream, cuts: List[int]) -> None:
        self.run_stream(stream[0], stream[1], cuts, None)

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(valid_looking(), st.integers(2, 20), st.lists(st.integers(0, 40000), max_size=6))
    def test_valid_looking_yielding_every_16_operations(self, stream, repeat: int, cuts: List[int]) -> None:
        # Long enough to pass 16 operations, so the yield path is taken.
        connect, rest = stream[0].split(b"\r\n", 1)
        self.run_stream(connect + b"\r\n" + rest * repeat, stream[1] * repeat, cuts, 0.0)


# -- the split runs (Framer._runs) against the loop alone ------------------------


class PlainRecorder(Recorder):
    """A plain connection: messages come through publish and publish_batch, flattened here."""

    plain = True

    def publish(self, src, subject, reply, size, tail):
        self.ops.append(("pub", subject, reply, size, tail))
        return 0

    def publish_batch(self, src, subject, tails, size):
        self.ops.extend(("pub", subject, None, len(t) - t.index(b"\n") - 3, t) for t in tails)

    def op_no_responders(self, reply):
        self.ops.append(("no responders", reply))


def _parse_plain(data: bytes, cuts: List[int], split_runs: bool, budget=None) -> List[tuple]:
    recorder = PlainRecorder()
    parser = ClientParser(recorder, max_payload=64, max_control_line=64, budget=budget)
    parser.split_runs = split_runs
    recorder.parse_later = lambda: None  # type: ignore[attr-defined]
    try:
        for piece in pieces(data, cuts):
            parser.feed(piece)
            while parser.suspended:
                parser.resume()
    except ProtocolViolation as v:
        recorder.ops.append(("violation", v.error))
    recorder.ops.append(("counted", recorder.in_msgs, recorder.in_bytes))
    return recorder.ops


_PLAIN_OPS = st.sampled_from([
    b"PUB foo 5\r\nhello\r\n",
    b"PUB foo 5\r\nhello\r\n",
    b"PUB foo.bar 2\r\nhi\r\n",
    b"PUB foo r 3\r\nabc\r\n",
    b"PUB foo 4\r\na\r\nb\r\n",
    b"PUB foo 0\r\n\r\n",
    b"PUB foo\t5\r\nhello\r\n",
    b"PUB  foo 1\r\nx\r\n",
    b"PUB foo 1\nx\r\n",
    b"PUB fo\no 1\r\nx\r\n",
    b"PUB foo r\nr 1\r\nx\r\n",
    b"PUB foo 3\r\na\tb\r\n",
    b"PUB foo 3\r\na\nb\r\n",
    b"PUB foo\t1\r\n\t\r\n",
    b"pub foo 1\r\nx\r\n",
    b"PUB foo 99\r\n" + b"x" * 99 + b"\r\n",
    b"PUB foo 1_0\r\n0123456789\r\n",
    b"PUB " + b"s" * 70 + b" 1\r\nx\r\n",
    b"PING\r\n",
    b"SUB foo 1\r\n",
    b"\r\n",
])


class SplitRunTests(SynchronousTestCase):
    """
    On CPython a read of plain PUBs is split in one go; every outcome must be
    the loop's own: the same operations, in the same order, the same counts
    and the same violation, however the bytes are cut.
    """

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_PLAIN_OPS, min_size=1, max_size=20), st.lists(st.integers(0, 400), max_size=5), st.integers(0, 4),
           st.binary(max_size=3), st.integers(0, 400))
    def test_same_as_the_loop(self, ops, cuts, flips, junk, where) -> None:
        data = bytearray(b"".join(ops))
        if flips and data:
            data[where % len(data) : where % len(data)] = junk
        data = bytes(data)
        self.assertEqual(_parse_plain(data, cuts, True), _parse_plain(data, cuts, False))

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_PLAIN_OPS, min_size=20, max_size=60))
    def test_same_as_the_loop_with_a_budget(self, ops) -> None:
        data = b"".join(ops)
        self.assertEqual(_parse_plain(data, [], True, budget=0.0), _parse_plain(data, [], False, budget=0.0))

    def test_a_read_of_plain_pubs_is_one_run(self) -> None:
        data = b"".join(b"PUB s.%d 2\r\nhi\r\n" % (i % 3) for i in range(30)) + b"PUB s.1 r 1\r\nx\r\nPUB s.2 3\r\nab"
        recorder = PlainRecorder()
        parser = ClientParser(recorder)
        parser.split_runs = True
        parser.feed(data)
        self.assertEqual(len([op for op in recorder.ops if op[0] == "pub"]), 31)
        self.assertEqual(recorder.ops[-2:], [("pub", b"s.1", b"r", 1, b"1\r\nx\r\n"), ("no responders", b"r")])
        parser.feed(b"c\r\n")
        self.assertEqual(recorder.ops[-1], ("pub", b"s.2", None, 3, b"3\r\nabc\r\n"))
        self.assertEqual(recorder.in_msgs, 32)

    def test_a_bare_lf_in_a_new_line_of_a_run(self) -> None:
        """
        A bare LF in a request's line (its subject or its reply), or in a
        line without a reply, after a run of requests each with an inbox of
        its own, ends the line where the loop ends it: the same operations
        and the same violation, with runs and without.
        """
        requests = b"".join(b"PUB s.%d _INBOX.a.%d 1\r\nx\r\n" % (i % 7, i) for i in range(300))
        for bad in (b"PUB s.1 _INBOX.a\n.1 1\r\nx\r\n", b"PUB s\n.1 _INBOX.a.1 1\r\nx\r\n", b"PUB s\n.2 1\r\nx\r\n"):
            for after in (b"", b"PUB s.3 _INBOX.a.0 1\r\nx\r\n" * 3):
                data = requests + bad + after
                ops = _parse_plain(data, [], True)
                self.assertEqual(ops, _parse_plain(data, [], False))
                self.assertEqual(ops[-2:], [("violation", None), ("counted", 300, 300)])

    def test_lines_read_elsewhere_are_held_to_this_connections_limits(self) -> None:
        """
        A message line one connection has read (and keeps, for every
        connection) is held to the limits of the connection that sends it
        next: a larger payload or a longer line than it allows is refused,
        in a run as by the loop, with runs (CPython's) and without (PyPy's
        loop), after 20 other lines and alone.
        """
        line = b"PUB " + b"s" * 40 + b" 100\r\n" + b"x" * 100 + b"\r\n"
        data = b"".join(b"PUB t.%d 1\r\nx\r\n" % i for i in range(20)) + line * 3
        for split_runs in (True, False):
            generous = PlainRecorder()
            parser = ClientParser(generous)
            parser.split_runs = split_runs
            parser.feed(data)
            self.assertEqual(len(generous.ops), 23)
            self.assertEqual(generous.ops[-1], ("pub", b"s" * 40, None, 100, b"100\r\n" + b"x" * 100 + b"\r\n"))
            for limits, error in (({"max_payload": 64}, "Maximum Payload Violation"),
                                  ({"max_control_line": 32}, "maximum control line exceeded")):
                for read, before in ((data, 20), (line, 0)):
                    tight = PlainRecorder()
                    parser = ClientParser(tight, **limits)
                    parser.split_runs = split_runs
                    with self.assertRaises(ProtocolViolation) as caught:
                        parser.feed(read)
                    self.assertEqual(caught.exception.error, error)
                    self.assertEqual(len(tight.ops), before)

    def test_a_known_line_at_and_one_byte_over_a_tighter_limit(self) -> None:
        """
        A line another connection read (kept, with its size and length) is
        taken by a run on a connection with max_control_line 32 when its
        arguments are 32 bytes, and refused at 33, as the loop does.
        """
        at = b"PUB " + b"s" * 30 + b" 5\r\nhello\r\n"
        over = b"PUB " + b"s" * 31 + b" 5\r\nhello\r\n"
        ClientParser(PlainRecorder()).feed(at + over)
        others = b"".join(b"PUB t.%d 1\r\nx\r\n" % i for i in range(20))
        for split_runs in (True, False):
            tight = PlainRecorder()
            parser = ClientParser(tight, max_control_line=32)
            parser.split_runs = split_runs
            parser.feed(others)
            parser.feed(others + at + others)
            self.assertEqual(len(tight.ops), 61)
            self.assertEqual(tight.ops[40], ("pub", b"s" * 30, None, 5, b"5\r\nhello\r\n"))
            with self.assertRaises(ProtocolViolation) as caught:
                parser.feed(others + over)
            self.assertEqual(caught.exception.error, "maximum control line exceeded")
            self.assertEqual(len(tight.ops), 81)

    def test_only_lines_a_run_would_split_are_kept(self) -> None:
        """
        A line the loop reads but a run would not split (PUB then a tab) is
        not kept: kept, it would be taken by a run held to the run's count
        of the line's length, not the loop's, and let through a line one
        byte over a tighter connection's limit.
        """
        line = b"PUB\t" + b"s" * 18 + b" 1\r\nx\r\n"
        loose = PlainRecorder()
        ClientParser(loose).feed(line * 2)
        self.assertEqual(loose.ops[-1], ("pub", b"s" * 18, None, 1, b"1\r\nx\r\n"))
        tight = PlainRecorder()
        parser = ClientParser(tight, max_control_line=20)
        parser.split_runs = True
        with self.assertRaises(ProtocolViolation) as caught:
            parser.feed(b"".join(b"PUB t.%d 1\r\nx\r\n" % i for i in range(20)) + line)
        self.assertEqual(caught.exception.error, "maximum control line exceeded")
        self.assertEqual(len(tight.ops), 20)


# -- blocks of identical lines (Framer._same_lines) against the loop alone ------------


def _parse_blocks(data: bytes, cuts: List[int], blocks: bool, budget=None) -> List[tuple]:
    recorder = PlainRecorder()
    parser = ClientParser(recorder, max_payload=64, max_control_line=64, budget=budget)
    parser.same_line_blocks = blocks
    recorder.parse_later = lambda: None  # type: ignore[attr-defined]
    try:
        for piece in pieces(data, cuts):
            parser.feed(piece)
            while parser.suspended:
                parser.resume()
    except ProtocolViolation as v:
        recorder.ops.append(("violation", v.error))
    recorder.ops.append(("counted", recorder.in_msgs, recorder.in_bytes))
    return recorder.ops


#: One message repeated, and what may stand among its repeats: another
#: subject of the same length, another size, a reply, a payload holding the
#: line itself or a CRLF, a bare LF, a payload that is not followed by CRLF.
_STEADY = b"PUB foo 5\r\nhello\r\n"
_AMONG = st.sampled_from([
    b"PUB fop 5\r\nhello\r\n",
    b"PUB foo 4\r\nhell\r\n",
    b"PUB foo r 5\r\nhello\r\n",
    b"PUB foo 9\r\nPUB foo 5\r\n",
    b"PUB foo 5\r\nPUB f\r\n",
    b"PUB foo 5\r\nhe\r\no\r\n",
    b"PUB foo 5\nhello\r\n",
    b"PUB foo 5\r\nhelloXY",
    b"PUB foo 5\r\nhello\rX",
    b"PING\r\n",
    b"SUB foo 1\r\n",
])


class SameLineBlockTests(SynchronousTestCase):
    """
    A steady stream (one subject, one size) is taken in blocks checked a
    column at a time; every outcome must be the loop's own, message by
    message: the same operations, in order, the same counts and the same
    violation, however the bytes are cut and whatever stands among the
    repeats.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, 200), _AMONG), min_size=1, max_size=6), st.integers(0, 300),
           st.lists(st.integers(0, 8000), max_size=4))
    def test_same_as_message_by_message(self, among, tail, cuts) -> None:
        data = b"".join(_STEADY * n + other for n, other in among) + _STEADY * tail
        self.assertEqual(_parse_blocks(data, cuts, True), _parse_blocks(data, cuts, False))

    @settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(st.integers(0, 200), _AMONG), min_size=1, max_size=4))
    def test_same_as_message_by_message_with_a_budget(self, among) -> None:
        data = b"".join(_STEADY * n + other for n, other in among) + _STEADY * 100
        self.assertEqual(_parse_blocks(data, [], True, budget=0.0), _parse_blocks(data, [], False, budget=0.0))

    def test_a_repeat_that_differs_in_one_byte_is_its_own(self) -> None:
        """
        Among a thousand repeats of one message, one that differs from them
        in one byte of its line (another subject of the same length), or
        whose payload holds the line itself, is delivered as what it is.
        """
        data = _STEADY * 500 + b"PUB fop 5\r\nhello\r\n" + _STEADY * 300 + b"PUB foo 9\r\nPUB foo 5\r\n" + _STEADY * 199
        ops = _parse_blocks(data, [], True)
        self.assertEqual(ops[500], ("pub", b"fop", None, 5, b"5\r\nhello\r\n"))
        self.assertEqual(ops[801], ("pub", b"foo", None, 9, b"9\r\nPUB foo 5\r\n"))
        self.assertEqual([op for i, op in enumerate(ops[:-1]) if i not in (500, 801)],
                         [("pub", b"foo", None, 5, b"5\r\nhello\r\n")] * 999)
        self.assertEqual(ops[-1], ("counted", 1001, 5 * 1000 + 9))


# -- a read that is one message whose line is known (Framer._parse's first branch) ---


def _parse_reads(reads: List[bytes], split_runs: bool, **limits: int) -> List[tuple]:
    recorder = PlainRecorder()
    parser = ClientParser(recorder, **limits)
    parser.split_runs = split_runs
    try:
        for read in reads:
            parser.feed(read)
    except ProtocolViolation as v:
        recorder.ops.append(("violation", v.error))
    recorder.ops.append(("counted", recorder.in_msgs, recorder.in_bytes))
    return recorder.ops


class OneMessageReadTests(SynchronousTestCase):
    """
    A read that is one message whose line some connection read before (a
    slow publisher's) skips the loop; every outcome must be the loop's own,
    for this connection's limits, and for reads that only look like one.
    """

    def setUp(self) -> None:
        # Lines read, and kept, by a connection with the default limits.
        _parse_reads([b"".join(b"PUB k.%d 5\r\nhello\r\n" % i for i in range(20)) + b"PUB " + b"s" * 40 + b" 100\r\n" + b"x" * 100 + b"\r\n"], True)
        # And by a leaf link (its lines are kept beside the clients').
        leaf = LeafParser(PlainRecorder())
        leaf.split_runs = True
        leaf.feed(b"LMSG k.4 5\r\nhello\r\n")

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from([
        b"PUB k.1 5\r\nhello\r\n",
        b"PUB k.2 5\r\nhello\r\n",
        b"PUB k.2 5\r\nhelloX\n",
        b"PUB k.2 5\r\nhello\r\nPING\r\n",
        b"PUB k.2 5\r\nhel",
        b"lo\r\n",
        b"PUB k.3 5\nhello\r\n",
        b"PUB k.3 5X\nhello\r\n",
        b"pub k.4 5\r\nhello\r\n",
        b"LMSG k.4 5\r\nhello\r\n",
        b"PUB " + b"s" * 40 + b" 100\r\n" + b"x" * 100 + b"\r\n",
        b"PUB k.1 _INBOX.1 5\r\nhello\r\n",
        b"PUB k.1 | 5\r\nhello\r\n",
        b"PUB k.1  r 5\r\nhello\r\n",
        b"PUB k.1 r\t5\r\nhello\r\n",
        b"PUB k.1\tx r 5\r\nhello\r\n",
        b"PUB k.1 r 5 5\r\nhello\r\n",
        b"PUB k.1 r 05\r\nhello\r\n",
        b"PUB k.1 r 7\r\nhello\r\n",
        b"PUB k.1 r\r 5\r\nhello\r\n",
        b"PUB k.1 r 100\r\n" + b"x" * 100 + b"\r\n",
        b"PUB k.1 " + b"r" * 30 + b" 5\r\nhello\r\n",
    ]), min_size=1, max_size=8), st.sampled_from([{}, {"max_payload": 64}, {"max_control_line": 32}]))
    def test_same_as_the_loop(self, reads, limits) -> None:
        self.assertEqual(_parse_reads(reads, True, **limits), _parse_reads(reads, False, **limits))

    def test_held_to_this_connections_limits(self) -> None:
        big = b"PUB " + b"s" * 40 + b" 100\r\n" + b"x" * 100 + b"\r\n"
        self.assertEqual(_parse_reads([big], True, max_payload=64)[-2:],
                         [("violation", "Maximum Payload Violation"), ("counted", 0, 0)])
        self.assertEqual(_parse_reads([big], True, max_control_line=32)[-2:],
                         [("violation", "maximum control line exceeded"), ("counted", 0, 0)])
        self.assertEqual(_parse_reads([big], True), [("pub", b"s" * 40, None, 100, big[45:]), ("counted", 1, 100)])


def _parse_lines(reads: List[bytes], whole_lines: bool, awaiting_connect: bool) -> List[tuple]:
    """What a client's parser makes of C{reads}, with or without L{Framer._one_line}."""
    recorder = Recorder()
    parser = ClientParser(recorder)
    parser.awaiting_connect = awaiting_connect
    saved = framing.WHOLE_LINE_MAX
    framing.WHOLE_LINE_MAX = framing.WHOLE_LINE_MAX if whole_lines else 0
    try:
        for read in reads:
            parser.feed(read)
    except ProtocolViolation as v:
        recorder.ops.append(("violation", v.error))
    finally:
        framing.WHOLE_LINE_MAX = saved
    recorder.ops.append(("kept", b"".join(parser._pending)))
    return recorder.ops


class OneLineReadTests(SynchronousTestCase):
    """
    A read that is one whole control line without arguments (a client's
    PING, a keepalive's PONG) skips the loop; every outcome must be the
    loop's own, before and after CONNECT, and for reads that only look like one.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from([
        b"PING\r\n",
        b"PONG\r\n",
        b"ping\r\n",
        b"PING\n",
        b"PING \r\n",
        b"PIN",
        b"G\r\n",
        b"PING\r\nPING\r\n",
        b"+OK\r\n",
        b"INFO\r\n",
        b"CONNECT\r\n",
        b'CONNECT {"verbose":false}\r\n',
        b"PUB a 1\r\nx\r\n",
        b"PUB a 1\r\n",
        b"x\r\n",
        b"PINGS\r\n",
        b"-ERR\r\n",
    ]), min_size=1, max_size=6), st.booleans())
    def test_same_as_the_loop(self, reads, awaiting_connect) -> None:
        self.assertEqual(_parse_lines(reads, True, awaiting_connect), _parse_lines(reads, False, awaiting_connect))

    def test_ping_before_connect_refused(self) -> None:
        """A server that requires authentication still refuses a PING read on its own before CONNECT."""
        self.assertEqual(_parse_lines([b"PING\r\n"], True, True), [("violation", "Authorization Violation"), ("kept", b"")])
        self.assertEqual(_parse_lines([b"PING\r\n"], True, False), [("ping",), ("kept", b"")])


# -- a read that completes what the last one left (Framer.feed) -----------------


class BatchRecorder(PlainRecorder):
    """A plain connection that keeps each hand-over as it came: a batch is one entry."""

    def publish_batch(self, src, subject, tails, size):
        self.ops.append(("batch", subject, list(tails), size))


class CutReadTests(SynchronousTestCase):
    """
    A read completes the operation the last one cut with its own first
    bytes, and the rest of it is parsed where it lies: whatever the cuts,
    the connection sees the same operations, in order, the same counts and
    the same violation as from one read.
    """

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(_PLAIN_OPS, min_size=1, max_size=20), st.lists(st.integers(0, 400), max_size=6),
           st.sampled_from([None, 0.0]))
    def test_same_as_one_read(self, ops, cuts, budget) -> None:
        data = b"".join(ops)
        for split_runs in (False, True):
            self.assertEqual(_parse_plain(data, cuts, split_runs, budget), _parse_plain(data, [], split_runs, budget))

    def test_cut_message_joins_the_batch_after_it(self) -> None:
        """The message a read completes is handed over with the same subject's messages after it, in one batch."""
        recorder = BatchRecorder()
        parser = ClientParser(recorder)
        parser.feed(b"PUB foo 5\r\nhello\r\nPUB foo 5\r\nhel")
        parser.feed(b"lo\r\nPUB foo 5\r\nhello\r\nPUB bar 2\r\nhi\r\n")
        self.assertEqual(recorder.ops, [
            ("pub", b"foo", None, 5, b"5\r\nhello\r\n"),
            ("batch", b"foo", [b"5\r\nhello\r\n"] * 2, 10),
            ("pub", b"bar", None, 2, b"2\r\nhi\r\n"),
        ])
        self.assertEqual((recorder.in_msgs, recorder.in_bytes), (4, 17))

    def test_cut_line_then_payload(self) -> None:
        """A control line cut, then completed by a read that still lacks its payload, then the payload and more."""
        recorder = BatchRecorder()
        parser = ClientParser(recorder)
        parser.feed(b"PUB fo")
        parser.feed(b"o 5\r\nhe")
        parser.feed(b"llo\r\nPING\r\nPUB foo 5\r\nhello\r\n")
        self.assertEqual(recorder.ops, [
            ("pub", b"foo", None, 5, b"5\r\nhello\r\n"), ("ping",), ("pub", b"foo", None, 5, b"5\r\nhello\r\n"),
        ])

    def test_violation_after_a_cut_message(self) -> None:
        """What a read completed is handed over before the violation that follows it closes the connection."""
        recorder = BatchRecorder()
        parser = ClientParser(recorder)
        parser.feed(b"PUB foo 5\r\nhel")
        with self.assertRaises(ProtocolViolation) as caught:
            parser.feed(b"lo\r\nPUB foo 5\r\nhello\r\nBOGUS\r\n")
        self.assertEqual(caught.exception.error, "Unknown Protocol Operation")
        self.assertEqual(recorder.ops, [("batch", b"foo", [b"5\r\nhello\r\n"] * 2, 10)])


# -- messages to many subjects, handed over in runs by the loop ------------------


class RunRecorder(PlainRecorder):
    """
    A plain connection with C{publish_run} (a client's): each hand-over's
    length is kept, its messages flattened into C{ops}, and each message
    costs C{cost} seconds on C{clock} (the framer's perf_counter, patched).
    """

    def __init__(self, clock: List[float], cost: float) -> None:
        super().__init__()
        self.clock = clock
        self.cost = cost
        self.runs: List[int] = []
        self.later: List[float] = []

    def publish_run(self, src, run):
        self.runs.append(len(run))
        for subject, size, tail in run:
            if size >= 0:
                assert isinstance(tail, bytes), tail
                self.publish(src, subject, None, size, tail)
            else:
                # A batch: its size's complement (framing.RUN_BATCH).
                assert isinstance(tail, list), tail
                self.publish_batch(src, subject, tail, ~size)
        self.clock[0] += self.cost * len(run)

    def parse_later(self) -> None:
        self.later.append(self.clock[0])


class LongRunTests(SynchronousTestCase):
    """
    The loop (PyPy's way; CPython's when its split runs stop) hands a read's
    messages to other subjects over together, in runs that shorten when
    they take long (they fan out widely): the same operations in the same
    order as one by one, and the turn's budget overrun by one short run at
    most.
    """

    def many(self, budget: Optional[float], cost: float):
        from eventsvc.nats import framing

        clock = [0.0]
        self.patch(framing, "perf_counter", lambda: clock[0])
        data = b"".join(b"PUB s.%d 2\r\n%02d\r\n" % (n % 1000, n % 100) for n in range(3000)) + b"PING\r\n"
        data += b"PUB s.1 2\r\nhi\r\n" * 3 + b"PUB s.2 r 2\r\nhi\r\nPUB s.3 2\r\nhi\r\n"
        recorder = RunRecorder(clock, cost)
        parser = ClientParser(recorder, budget=budget)
        parser.split_runs = False
        parser.feed(data)
        while parser.suspended:
            clock[0] = 0.0
            parser.resume()
        one_by_one = PlainRecorder()
        ClientParser(one_by_one).feed(data)
        self.assertEqual(recorder.ops, one_by_one.ops)
        self.assertEqual(recorder.in_msgs, 3005)
        return recorder

    def test_cheap_runs_are_long(self) -> None:
        recorder = self.many(0.01, 0.0)
        self.assertEqual(recorder.runs[:46], [64] * 46)
        self.assertEqual(recorder.later, [])

    def test_runs_that_take_long_shorten_and_the_budget_holds(self) -> None:
        """At 10 us a message: 64 take 0.64 ms, over a 16th of the 10 ms budget; 32 take 0.32 ms, kept."""
        recorder = self.many(0.01, 1e-5)
        self.assertEqual(recorder.runs[:4], [64, 32, 32, 32])
        self.assertTrue(recorder.later)
        for spent in recorder.later:
            self.assertTrue(0.01 < spent <= 0.01 + 32 * 1e-5 + 1e-9, spent)

    def test_without_a_budget(self) -> None:
        recorder = self.many(None, 1.0)
        self.assertEqual(recorder.runs[:46], [64] * 46)


def _splice(test: SynchronousTestCase, splice: bool = True, splice_from: int = 0) -> None:
    """
    Complete every cut read (every one of an operation at least
    C{splice_from} long) with the front of the next read alone, or, with
    C{splice} false, join every one whole, whatever this interpreter does
    by default (L{Framer.splice_cuts}, L{Framer.splice_from}).
    """
    test.patch(Framer, "splice_cuts", splice)
    test.patch(Framer, "splice_from", splice_from)


class SplitSplicedTests(SplitTests):
    """
    L{SplitTests} with every cut read completed by the cut operation alone:
    the same as joined whole (CPython's way, and PyPy's for short
    operations), whichever interpreter runs the tests.
    """

    def setUp(self) -> None:
        _splice(self)


class CutReadSplicedTests(CutReadTests):
    """L{CutReadTests} with every cut read completed by the cut operation alone (L{SplitSplicedTests})."""

    def setUp(self) -> None:
        _splice(self)


class LinkRecorder(PlainRecorder):
    """A link connection: what its message verbs hand over (batches flattened)."""

    message_origin = None

    def op_rmsg(self, account, subject, reply, queues, size, tail):
        self.ops.append(("rmsg", account, subject, reply, list(queues), size, tail, self.message_origin))

    def op_rhmsg(self, account, subject, reply, queues, hdr_len, total, body):
        self.ops.append(("rhmsg", account, subject, reply, list(queues), hdr_len, total, body))

    def op_lmsg(self, subject, reply, queues, size, tail):
        self.ops.append(("lmsg", subject, reply, list(queues), size, tail))

    def op_lhmsg(self, subject, reply, queues, hdr_len, total, body):
        self.ops.append(("lhmsg", subject, reply, queues, hdr_len, total, body))


#: What a peer sends on a route (with LMSGs of its leafs) and on a leaf link.
ROUTE_STREAM = (
    b"RMSG $G foo 5\r\nhello\r\nRMSG $G foo 5\r\nhello\r\nRMSG $G foo reply 2\r\nhi\r\n"
    b"RMSG $G foo + reply q1 q2 3\r\nabc\r\nRMSG acc foo 1\r\nx\r\nHMSG $G foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
    b"LMSG spoke $G foo 0 4\r\nbody\r\nLMSG spoke $G foo | q 2 4\r\nNA\r\n\r\n"
    b"PING\r\nRMSG $G foo 5\r\nhello\r\nRMSG $G bar 1024\r\n" + b"k" * 1024 + b"\r\nRMSG $G bar 1024\r\n" + b"k" * 1024 + b"\r\n"
)
LEAF_STREAM = (
    b"LMSG foo 5\r\nhello\r\nLMSG foo 5\r\nhello\r\nLMSG foo reply 2\r\nhi\r\nLMSG foo | q1 3\r\nabc\r\n"
    b"HMSG foo 12 14\r\nNATS/1.0\r\n\r\nhi\r\nPING\r\nLMSG foo 5\r\nhello\r\n"
    b"LMSG bar 1024\r\n" + b"k" * 1024 + b"\r\nLMSG bar 1024\r\n" + b"k" * 1024 + b"\r\n"
)


class LinkCutReadTests(SynchronousTestCase):
    """
    A route's and a leaf link's reads cut anywhere (once, and in three)
    give the same operations and counts as one read, both ways of
    completing a cut read (L{Framer.splice_cuts}); and the message a read
    completes joins the batch after it.
    """

    def _check(self, make, stream: bytes) -> None:
        def parse(chunks, recorder=None) -> List[tuple]:
            recorder = recorder or LinkRecorder()
            parser = make(recorder)
            for chunk in chunks:
                parser.feed(chunk)
            return recorder.ops + [("counted", recorder.in_msgs, recorder.in_bytes)]

        # (Joined; spliced; and spliced for the 1 KiB messages alone, PyPy's way.)
        for splice in ((False, 0), (True, 0), (True, 512)):
            _splice(self, *splice)
            whole = parse([stream])
            for i in range(len(stream) + 1):
                self.assertEqual(parse([stream[:i], stream[i:]]), whole, (splice, i))
                j = (i * 7 + 1) % (len(stream) + 1)
                a, b = min(i, j), max(i, j)
                self.assertEqual(parse([stream[:a], stream[a:b], stream[b:]]), whole, (splice, a, b))

    def test_route(self) -> None:
        self._check(RouteParser, ROUTE_STREAM)

    def test_leaf(self) -> None:
        self._check(LeafParser, LEAF_STREAM)

    def test_cut_message_joins_the_batch(self) -> None:
        """A message cut in its payload (or its line) and completed by the next read is handed over with the one after it, as one batch."""

        class Batches(LinkRecorder):
            publish_batch = BatchRecorder.publish_batch

        big = b"1024\r\n" + b"k" * 1024 + b"\r\n"
        for splice in ((False, 0), (True, 0), (True, 512)):
            _splice(self, *splice)
            for cut in (10, 500, 1040):
                recorder = Batches()
                parser = RouteParser(recorder)
                stream = b"RMSG $G bar " + big + b"RMSG $G bar " + big + b"PING\r\n"
                parser.feed(stream[:cut])
                parser.feed(stream[cut:])
                self.assertEqual(recorder.ops, [("batch", b"bar", [big] * 2, 2048), ("ping",)], (splice, cut))
                self.assertEqual((recorder.in_msgs, recorder.in_bytes), (2, 2048))
