"""
The framing loop: how bytes become operations, for every kind of
connection alike (clients, routes, gateways, leaf links; L{kinds.Kind}).

A L{Framer} is fed whatever the transport delivers, split at any byte, and
calls its handler once per complete operation.  It works on the whole
buffer with C{bytes.find}, never byte by byte and never line by line
through a line receiver.  One loop owns everything the four protocols
share:

  - verb recognition, from a L{VerbTable} (case-insensitive, as
    nats-server's byte-wise parser);
  - the control-line limit: the arguments after the verb, without the
    line's CR, may be at most C{max_control_line} bytes (nats-server's
    rule), and a partial line is refused as soon as it passes that or can
    no longer begin any operation;
  - waiting for a payload: an operation whose payload has not all arrived
    is kept from its first byte and parsed again, once, when it has;
  - the message verb's fast branch (PUB for clients, RMSG for routes and
    gateways, LMSG for leaf links):
    a control line byte-identical to the previous one is not parsed again,
    the payload is never copied (the C{tail}, C{b"<size>\\r\\n<payload>\\r\\n"},
    is one slice of the read), and consecutive messages to one subject
    without a reply are handed over as one batch;
  - a budget of seconds per feed, after which the rest waits a reactor turn.

How the rest waits is L{ReadTurns}: one copy for every connection kind,
clients and server links (routes, gateways, leaf nodes) alike, since a
trusted peer can send a million lines as well as a client can.

The protocols differ only in their verb tables and in how the arguments of
each verb are read: L{eventsvc.nats.parser} holds both.

What it must not do: know about subscriptions, permissions or the network.
Errors that end the connection are raised as L{ProtocolViolation}; the
handler decides everything else.
"""

from __future__ import annotations

import sys
from time import perf_counter
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from eventsvc.nats.timers import cancel

UNKNOWN_OPERATION = "Unknown Protocol Operation"
MAX_CONTROL_LINE = "maximum control line exceeded"
MAX_PAYLOAD = "Maximum Payload Violation"
AUTHORIZATION_VIOLATION = "Authorization Violation"

_SPACE = (32, 9)
#: Reads shorter than this may be one whole control line (L{Framer._one_line}).
WHOLE_LINE_MAX = 12

#: Payloads up to this size are parsed in runs (Framer._runs).
RUN_PAYLOAD = 256
#: How many message lines (C{PUB <subject> <size>}, C{LMSG ...}: no reply,
#: no queue names) are kept read, for every connection: a line is only ever
#: read the same way, and a subject's traffic repeats its line.  Runs and
#: the loop both look a line up before reading it; a line kept gives its
#: subject (the same object each time, so its hash is kept too), its size,
#: where its size begins and the whole message's length.  Enough for ten
#: thousand subjects with a size or two each; about 200 bytes a line.
MESSAGE_LINES = 16384
_MESSAGE_LINES: Dict[bytes, Tuple[bytes, int, int, int]] = {}
#: Its get, bound once (the dict is cleared in place, never replaced): the
#: run loop calls it a message, and binding it a read cost reads of a few
#: messages (replies to inboxes) more than it saved.
_KNOWN_LINE = _MESSAGE_LINES.get
#: Why a connection's reads are held while the rest of a read waits for a
#: later turn (a reason of its read gate, L{eventsvc.nats.outbound.ReadGate}).
PARSING_LATER = "parsing later"
#: Messages with a line identical to the one before (one subject, one size:
#: a publisher's steady stream) are checked and cut in blocks, of at least
#: and at most so many messages (L{Framer._same_lines}).
BLOCK_MIN = 16
BLOCK_MAX = 4096
#: Messages to other subjects, each a batch of its own (traffic over many
#: subjects), are handed over together (C{publish_run}), up to so many at a
#: time, and at least so many when they fan out widely (L{Framer._long_run_over}).
#: On PyPy a call that enters the delivery loop costs about a microsecond:
#: 1,000 subjects 1:1 in process, 0.30 us a message one a call, 0.27 by 16,
#: 0.20-0.22 by 32, 64, 128 or 256 alike (and 0.22-0.23 by 1,024); the
#: shortest of those that are as fast, so that a first run fanned out widely
#: overruns the budget least.
LONG_RUN_MIN = 16
LONG_RUN_MAX = 64
# A run (C{publish_run}) tells a batch of several messages to one subject,
# C{(subject, ~size, tails)}, from one message, C{(subject, size, tail)}, by
# the size's complement (~0 is -1: a batch of empty payloads is marked
# too).  Its readers test C{size < 0} a message, which CPython 3.11
# specializes; a test of the tail's class is a generic attribute lookup,
# some 60 instructions more a message.  Written here (L{Framer._hand_over},
# L{Framer._parse}), read by L{Framer._publish_each} (a link's runs) and by
# L{eventsvc.nats.delivery.Delivery.deliver_run} (a client's).


class ProtocolViolation(Exception):
    """
    The connection must close.  C{error} is the text to send as
    C{-ERR '<error>'} first, or L{None} for a silent close (as nats-server
    does for malformed arguments).
    """

    def __init__(self, error: Optional[str], detail: str = "") -> None:
        super().__init__(error or detail or "protocol violation")
        self.error = error
        self.detail = detail or (error or "")


class Verb:
    """
    One entry of a verb table.

    @ivar name: the verb, upper case.
    @ivar method: the framer's method that reads its arguments, called as
        C{method(buf, pos, start, eol, nl)}; it returns where the next
        operation begins, or -1 when it waits for more bytes.
    @ivar spaced: white space must follow the verb (C{PUB}, C{SUB}); a verb
        without arguments (C{PING}) may be followed by anything up to the
        line's end, as nats-server ignores it.
    @ivar bounded: whether its arguments are held to the control-line limit.
    """

    __slots__ = ("name", "method", "spaced", "bounded")

    def __init__(self, name: bytes, method: str, spaced: bool = True, bounded: bool = True) -> None:
        self.name = name
        self.method = method
        self.spaced = spaced
        self.bounded = bounded


class VerbTable:
    """The verbs of one protocol, recognised by their first bytes."""

    def __init__(self, verbs: Sequence[Verb]) -> None:
        self.verbs = tuple(verbs)
        self.longest = max(len(v.name) for v in self.verbs)
        # The verbs by their first byte, in the table's order: a line is
        # compared with the two or three that can match, not all ten (a
        # client's CONNECT and PING went through five and six).
        by_first: Dict[bytes, List[Verb]] = {}
        for verb in self.verbs:
            by_first.setdefault(verb.name[:1], []).append(verb)
        self._by_first: Dict[bytes, Tuple[Verb, ...]] = {first: tuple(vs) for first, vs in by_first.items()}
        #: A read that is one of these lines and nothing else (C{PING\r\n},
        #: C{PONG\r\n}: a client's flush, a keepalive) is the verb's alone:
        #: L{Framer._parse} hands it over without setting up its loop.
        self.whole_lines: Dict[bytes, Verb] = {v.name + b"\r\n": v for v in self.verbs if not v.spaced}

    def classify(self, head: bytes) -> Optional[Verb]:
        """
        The verb at the start of C{head} (at least the longest verb plus one
        byte, or everything up to the end of the line), or L{None}.
        """
        head = head.upper()
        for verb in self._by_first.get(head[:1], ()):
            if head.startswith(verb.name):
                n = len(verb.name)
                if not verb.spaced or (len(head) > n and head[n] in _SPACE):
                    return verb
        return None

    def plausible(self, partial: bytes) -> bool:
        """Whether an incomplete control line could still become an operation."""
        head = partial[: self.longest + 1].upper()
        for verb in self.verbs:
            n = len(verb.name)
            if len(head) <= n:
                if verb.name.startswith(head):
                    return True
            elif head.startswith(verb.name) and (not verb.spaced or head[n] in _SPACE):
                return True
        return False


def fields(line: bytes) -> List[bytes]:
    """A line's arguments split at runs of spaces and tabs only (nats-server's rule)."""
    return [a for a in line.replace(b"\t", b" ").split(b" ") if a]


def parse_size(token: bytes) -> int:
    """
    A size as nats-server reads one: at most nine ASCII digits, else -1.
    (int() alone would accept "+5", " 5" and "1_0".)
    """
    if len(token) > 9 or not token.isdigit():
        return -1
    return int(token)


def size_of(token: bytes) -> int:
    """A size that must be valid, or the connection closes without a word."""
    size = parse_size(token)
    if size < 0:
        raise ProtocolViolation(None, "bad size {!r}".format(token))
    return size


#: What the fast branch reads off a message line: subject, reply, what else
#: the protocol says (None when nothing: the message may join a batch), and
#: the size token.
MessageLine = Tuple[bytes, Optional[bytes], Any, bytes]


#: Each framer class's verb methods (L{_method_table}).
_METHOD_TABLES: Dict[type, Dict[Verb, Callable[..., int]]] = {}


def _method_table(cls: type) -> Dict[Verb, Callable[..., int]]:
    """
    The method of each verb of C{cls}'s table, as functions called with the
    framer: made once per class.  (A table of bound methods, made for each
    framer, cost a connection's set-up ten lookups and put every framer in
    a reference cycle of its own, which only the cycle collector freed.)
    """
    table = _METHOD_TABLES.get(cls)
    if table is None:
        table = _METHOD_TABLES[cls] = {verb: getattr(cls, verb.method) for verb in cls.verbs.verbs}  # type: ignore[attr-defined]
    return table


class Framer:
    """
    The framing loop.  A subclass gives the verb table, the message verb
    (C{message_verb}, the fast branch, e.g. C{b"PUB "}), and the methods
    the table names; L{message_line} reads a message line.

    The handler (L{eventsvc.nats.parser.IFramedConnection}) is told every
    message as C{publish_batch(handler, subject, tails, size)} (runs without
    a reply), C{publish(handler, subject, reply, size, tail)} or, when it is
    not C{plain} or its C{may_publish} refuses the subject, C{op_pub}; and
    C{extra} (L{message_extra}) when the line says more than a reply.  A
    split run (L{_runs}) hands its messages without a reply over together,
    as C{publish_run(handler, run)} when the handler has it (a list of
    C{(subject, size, tail)}, or C{(subject, ~size, tails)} for a batch of
    several), else one by one (L{_publish_each}); so does
    the loop with the batches it gathers, each to another subject than the
    one before (L{_hand_over}, up to L{LONG_RUN_MAX} at a time).

    @ivar awaiting_connect: while true, any first operation other than
        CONNECT is an authorization violation (set when auth is required).
    @ivar suspended: while true, bytes are kept but not parsed (see
        L{resume}).
    """

    verbs: VerbTable
    message_verb: bytes
    #: Whether sizes are held to C{max_payload} (routes: no, as nats-server).
    checks_payload = True
    #: Whether a read may begin with L{_runs}: message lines of the form
    #: C{<verb> <subject> [reply] <size>}, split in one go (clients' PUBs,
    #: a leaf link's LMSGs).
    split_runs = False
    #: What may not be taken for a reply in a run (a leaf's C{|}: queue
    #: names follow, or none do): the loop reads such a line.
    not_replies: Tuple[bytes, ...] = ()
    #: Whether a batch of messages to one subject whose lines repeat (one
    #: size) grows by blocks checked at once (L{_same_lines}), not message
    #: by message: on CPython that halves a steady stream's cost; PyPy's
    #: JIT does better with the loop alone (measured: 46 ns a message
    #: against 113, publish only).
    same_line_blocks = sys.implementation.name == "cpython"
    #: Whether a read that completes what the last one cut is parsed where
    #: it lies, the cut operation completed by itself (L{feed}), instead of
    #: joined whole to what was kept.  PyPy joins 64 KiB in 8 us; CPython
    #: in 1.6 us, less than a second set-up of the loop costs it (measured,
    #: ClientParser alone, 1 KiB payloads in 64 KiB reads: PyPy 302 -> 242
    #: ns a message, CPython 387-425 -> 479-503).
    splice_cuts = sys.implementation.name != "cpython"
    #: Only an operation at least this long (its line, payload and CRLF) is
    #: completed so: a short one is joined with the read, as on CPython.
    #: Small messages leave one join per thousand or so, and the second way
    #: in costs PyPy's JIT more warming up (inproc one-subject, 16 B, runs
    #: of 400,000 messages: 0.068-0.071 -> 0.091-0.099 us a message; level
    #: once warm).
    splice_from = 512

    def __init__(
        self,
        handler: Any,
        max_control_line: int,
        max_payload: int,
        budget: Optional[float] = None,
    ) -> None:
        self._handler = handler
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        #: Seconds of work one feed may do before the rest of the input
        #: waits for the next reactor turn (C{handler.parse_later}), so one
        #: connection's burst never holds up everyone else; None: no bound.
        self.budget = budget
        #: Seconds of the next feed's budget already spent on the work the
        #: last one caused after it returned (writing out what it
        #: delivered): a burst fanned out to a consumer costs as much to
        #: write as to parse, and both hold up everyone else.
        self.debt = 0.0
        self.awaiting_connect = False
        self.suspended = False
        # Unconsumed bytes: a partial control line, or a whole operation
        # waiting for its payload (then _need is how many bytes it takes).
        self._pending: List[bytes] = []
        self._pending_len = 0
        self._need = 0
        # The message that completed what the last read cut, not yet
        # handed over: (subject, tail, size), the start of the batch the
        # rest of the read goes on (L{feed}).
        self._carry: Optional[Tuple[bytes, bytes, int, bytes, int, int, bytes]] = None
        # Size tokens already seen: most publishers repeat a few sizes.
        self._sizes: Dict[bytes, int] = {}
        #: The last read's message lines differed from one another (runs pay off).
        self._differing = False
        self._message_code = self.verbs.verbs[0]
        #: How many messages the next block of identical lines checks at once (L{_block}).
        self._block_size = BLOCK_MIN * 4
        #: How many batches (messages to other subjects, most often one
        #: each) the loop gathers before it hands them over (L{_long_run_over}).
        self._long_run = LONG_RUN_MAX
        self._methods = _method_table(type(self))

    # -- input kept between reads -------------------------------------------

    def feed(self, data: bytes) -> None:
        """
        Parse C{data} and everything kept before it.

        @raise ProtocolViolation: the connection must close.  Operations
            before the offending one have been handled.
        """
        if self._pending or self.suspended:
            if self.splice_cuts and not self.suspended and self._need >= self.splice_from:
                self._splice(data)
                return
            self._pending.append(data)
            self._pending_len += len(data)
            if self._pending_len < self._need or self.suspended:
                return
            data = b"".join(self._pending)
            del self._pending[:]
            self._pending_len = self._need = 0
        self._parse(data)

    def _splice(self, data: bytes) -> None:
        """
        Parse C{data}, which completes the operation the last read cut (L{splice_cuts}).

        That operation is completed with the front of C{data} alone, and the
        rest is parsed where it lies: joining a read of 64 KiB to the end of
        the message the last one cut costs PyPy 8 us, a third of what
        parsing it costs.  A message so completed is handed over with the
        messages to its subject that follow it, as one batch: one frame for
        its subscribers, as from a read that was not cut.
        """
        pos = 0
        n = len(data)
        pending = self._pending
        while pending or self.suspended:
            kept = self._pending_len
            need = self._need
            if self.suspended or kept + n - pos < need:
                rest = data[pos:] if pos else data
                pending.append(rest)
                self._pending_len = kept + len(rest)
                return
            if need > kept + 1:
                # An operation waiting for its payload: exactly what it lacks.
                k = pos + need - kept
            else:
                # A control line (or what waited for a later turn): up to
                # the end of the line.
                k = data.find(b"\n", pos) + 1 or n
            pending.append(data[pos:k] if pos or k < n else data)
            head = b"".join(pending)
            del pending[:]
            self._pending_len = self._need = 0
            if k >= n:
                self._parse(head)
                return
            # (The debt is the rest's to pay: one operation never checks the budget.)
            debt = self.debt
            self._parse(head, 0, True)
            self.debt = debt
            pos = k
        self._parse(data, pos)

    def resume(self) -> None:
        """Parse what arrived while suspended."""
        self.suspended = False
        self.feed(b"")

    def _wait(self, buf: bytes, pos: int, need: int) -> None:
        """Keep the operation at C{pos} until C{need} bytes of it (0: any more) have arrived."""
        rest = buf[pos:]
        self._pending.append(rest)
        self._pending_len = len(rest)
        self._need = need

    def _partial(self, buf: bytes, pos: int) -> None:
        """A control line without its end yet: kept, unless it can only be wrong."""
        rest = buf[pos:]
        if self.awaiting_connect and rest[:1] not in (b"C", b"c"):
            raise ProtocolViolation(AUTHORIZATION_VIOLATION)
        if not self.verbs.plausible(rest):
            raise ProtocolViolation(UNKNOWN_OPERATION)
        if len(rest) > self.max_control_line + self.verbs.longest + 1:
            raise ProtocolViolation(MAX_CONTROL_LINE)
        self._wait(buf, pos, len(rest) + 1)

    def _payload_end(self, buf: bytes, pos: int, nl: int, size: int) -> int:
        """Where an operation whose payload of C{size} bytes follows line C{nl} ends; -1: kept to wait."""
        end = nl + size + 3
        if end > len(buf):
            self._wait(buf, pos, end - pos)
            return -1
        if buf[end - 2] != 13 or buf[end - 1] != 10:
            raise ProtocolViolation(UNKNOWN_OPERATION)
        return end

    def _new_size(self, token: bytes) -> int:
        size = size_of(token)
        if self.checks_payload and size > self.max_payload:
            raise ProtocolViolation(MAX_PAYLOAD)
        if len(self._sizes) >= 1024:
            self._sizes.clear()
        self._sizes[token] = size
        return size

    # -- what subclasses give -------------------------------------------------

    def message_line(self, buf: bytes, start: int, eol: int) -> MessageLine:
        """Read the arguments of a message line (C{buf[start:eol]})."""
        raise NotImplementedError()

    def message_extra(self, subject: bytes, reply: Optional[bytes], extra: Any, size: int, tail: bytes) -> None:
        """A message whose line said more than a subject and a reply (a route's queue groups)."""
        raise NotImplementedError()

    # -- the loop -------------------------------------------------------------

    def _publish_each(self, handler: Any, run: List[Tuple[bytes, int, Any]]) -> None:
        """
        How a run is handed to a handler without C{publish_run} (a link,
        which checks each message): message by message, a batch as one.
        """
        for subject, size, tail in run:
            if size >= 0:
                handler.publish(handler, subject, None, size, tail)
            else:
                handler.publish_batch(handler, subject, tail, ~size)

    def _hand_over(self, handler: Any, run: Optional[List[Tuple[bytes, int, Any]]], subject: bytes, size: int, batch: Any) -> None:
        """
        The batches gathered by the loop (C{run}, unless None), then the
        one still gathering (C{batch} to C{subject}, unless None), handed
        over in order: as one C{publish_run} when the handler has it, else
        one by one (L{_publish_each}).
        """
        if run is None:
            if batch.__class__ is bytes:
                handler.publish(handler, subject, None, size, batch)
            else:
                handler.publish_batch(handler, subject, batch, size)
            return
        if batch is not None:
            run.append((subject, size if batch.__class__ is bytes else ~size, batch))
        publish_run = getattr(handler, "publish_run", None)
        if publish_run is not None:
            publish_run(handler, run)
        else:
            self._publish_each(handler, run)

    def _long_run_over(self, handler: Any, run: List[Tuple[bytes, int, Any]]) -> None:
        """
        Hand a long run over (L{_hand_over}), timed when there is a budget:
        the next run may be twice as long when this one took less than a
        64th of the budget, and is half as long when it took more than a
        16th (a run fanned out to hundreds of subscribers), so that the
        budget, checked after each, is never overrun by much.
        """
        if self.budget is None:
            self._hand_over(handler, run, b"", 0, None)
            return
        started = perf_counter()
        self._hand_over(handler, run, b"", 0, None)
        spent = perf_counter() - started
        long_run = self._long_run
        if spent > self.budget / 16:
            if long_run > LONG_RUN_MIN:
                self._long_run = long_run // 2
        elif spent < self.budget / 64 and long_run < LONG_RUN_MAX:
            self._long_run = long_run * 2

    def _runs(self, buf: bytes, started: float, base: int = 0) -> int:
        """
        The start of a read made of plain messages, parsed in one go; returns
        where the loop goes on (0: nothing done here).

        On CPython, most of the loop's time per message is interpreter
        overhead per C call (a find, a startswith, a slice), not work.  A
        read of nothing but C{PUB <subject> [reply] <size>} lines, single
        spaces, each payload followed by CRLF and holding no CRLF of its own
        (what clients send), is split at every CRLF by one C{split}: then a
        message is its line and the part after it, and its size is checked
        against that part's length.  The first message that is anything
        else (another verb, a payload with a CRLF in it, a tab, a partial
        message at the end) stops the run, and the exact loop takes over
        there, so every outcome is the loop's own.

        Runs pay off when lines differ (traffic over many subjects) and
        payloads are small: a read whose lines repeat is the memo's (the
        run stops after 64 repeats), and a payload over C{RUN_PAYLOAD} bytes
        stops it (the split would copy it once more).  The loop starts a
        run when its memo keeps missing, and a read starts with one when
        the previous read's lines differed (C{_differing}).
        """
        # A first message whose line is known and whose payload is too large
        # for a run ends the run before it begins: the read is not split
        # (traffic over many subjects with payloads of a KiB split every
        # 64 KiB read for nothing, twice).
        first = _MESSAGE_LINES.get(buf[base : buf.find(b"\r\n", base)])
        if first is not None and first[1] > RUN_PAYLOAD:
            return base
        handler = self._handler
        parts = (buf[base:] if base else buf).split(b"\r\n")
        # The last part is what follows the last CRLF: never a whole message.
        del parts[-1]
        verb = self.message_verb[:-1]
        mcl = self.max_control_line + len(verb) + 1
        # A known line's length is its step less its payload and two CRLFs:
        # held to mcl as "step - size > mcl + 4", arithmetic on what the
        # line's entry gives, not a call of len() a message.
        step_mcl = mcl + 4
        sizes = self._sizes
        publish = handler.publish
        publish_run = getattr(handler, "publish_run", None) or self._publish_each
        budget = self.budget
        not_replies = self.not_replies
        pos = base
        msgs = nbytes = repeats = 0
        # The messages without a reply read since the last hand-over.
        run: List[Tuple[bytes, int, bytes]] = []
        # A tab or a bare LF in a control line must go to the loop (it
        # separates, or ends, as nats-server reads it).  A line read before
        # has neither; a new one is looked at for each, unless the read has
        # no tab anywhere (one scan of the read instead of a find a line),
        # or no LF but those of its CRLFs (a count of LFs against the CRLFs,
        # which the split found (one fewer part than it made, the last
        # dropped), made at the first new line: every request's line is
        # new, its reply inbox in it, and every JetStream ack's).
        tabs = buf.find(b"\t", base) >= 0
        lfs: Optional[bool] = None
        lines = _MESSAGE_LINES
        # (A call of a local, not a method lookup a message.)
        known_of = _KNOWN_LINE
        # A line read by a connection with a larger max_payload may be too
        # large here: the loop says so.
        limit = min(RUN_PAYLOAD, self.max_payload) if self.checks_payload else RUN_PAYLOAD
        # (A line and the part after it, with no index to keep.)
        pairs = iter(parts)
        try:
            last: Any = None  # (never a line's)
            subject = b""
            size = cut = step = 0
            # (The budget is checked every 16 messages: at msgs == check,
            # one comparison a message, not three tests and an "&".)
            check = 16 if budget is not None else -1
            for line, payload in zip(pairs, pairs):
                if msgs == check:
                    check += 16
                    if run:
                        # (Delivered now, so that the time checked is theirs too.)
                        handed, run = run, []
                        publish_run(handler, handed)
                    if budget is not None and perf_counter() - started > budget:
                        break  # the loop suspends at once, at pos
                known_line = known_of(line)
                if known_line is not None:
                    # Read before, by this or another connection: its
                    # subject (the same object, its hash kept), its size,
                    # where its size begins and the whole message's length.
                    if known_line is last:
                        repeats += 1
                        if repeats > 64:
                            # The same line again and again: the loop's memo does that better.
                            self._differing = False
                            break
                    else:
                        repeats = 0
                        subject, size, cut, step = last = known_line
                        if size > limit or step - size > step_mcl:
                            break
                else:
                    repeats = 0
                    args = line.split(b" ")
                    n = len(args)
                    if lfs is None:
                        # (Not buf.count(b"\r\n", base): a second scan, of
                        # a pattern of two bytes, some 300 instructions a
                        # JetStream ack in a read of a hundred.)
                        lfs = buf.count(b"\n", base) != len(parts)
                    # (line.find, not "in": on CPython 3.11 "b'\t' in line"
                    # costs four times a find.)
                    if (n != 3 and n != 4) or args[0] != verb or b"" in args or len(line) > mcl or (
                            (lfs and line.find(b"\n") >= 0) or (tabs and line.find(b"\t") >= 0)) or (
                            n == 4 and not_replies and args[2] in not_replies):
                        break
                    szb = args[-1]
                    known = sizes.get(szb)
                    size = self._new_size(szb) if known is None else known
                    if size > RUN_PAYLOAD:
                        break  # splitting would copy every payload once more
                    subject = args[1]
                    cut = len(line) - len(szb)
                    step = len(line) + size + 4
                    if n == 4:
                        # A request: handed over here, after the run before
                        # it (so the messages without a reply go on without
                        # a test of their reply each).
                        if len(payload) != size:
                            break
                        last = None
                        reply = args[2]
                        start = pos + cut
                        pos += step
                        msgs += 1
                        nbytes += size
                        if run:
                            handed, run = run, []
                            publish_run(handler, handed)
                        if not publish(handler, subject, reply, size, buf[start:pos]):
                            handler.op_no_responders(reply)
                        continue
                    # Lines without a reply come again (a reply inbox is
                    # used once): kept, as many as MESSAGE_LINES.
                    if len(lines) >= MESSAGE_LINES:
                        lines.clear()
                    lines[line] = last = (subject, size, cut, step)
                if len(payload) != size:
                    break  # a CRLF inside the payload, or not all of it yet
                start = pos + cut
                pos += step
                msgs += 1
                nbytes += size
                run.append((subject, size, buf[start:pos]))
        finally:
            # Whatever happens next, what was read before is delivered.
            if run:
                publish_run(handler, run)
            if msgs:
                handler.in_msgs += msgs
                handler.in_bytes += nbytes
        return pos

    def _block(self, buf: bytes, pos: int, step: int, line: bytes, tail_off: int, batch: List[bytes]) -> int:
        """
        How many messages of C{step} bytes from C{pos} on repeat C{line}
        (L{_same_lines}), up to the block size, which doubles when they do
        and halves when they do not; their tails are added to C{batch}.
        """
        block = self._block_size
        k = (len(buf) - pos) // step
        if k > block:
            k = block
        if k < BLOCK_MIN:
            return 0
        stop = pos + k * step
        if not self._same_lines(buf, pos, stop, step, line, k):
            if block > BLOCK_MIN:
                self._block_size = block // 2
            return 0
        if block < BLOCK_MAX:
            self._block_size = block * 2
        first = pos + tail_off
        batch.extend(map(buf.__getitem__, map(slice, range(first, stop, step), range(pos + step, stop + step, step))))
        return k

    @staticmethod
    def _same_lines(buf: bytes, pos: int, stop: int, step: int, line: bytes, k: int) -> bool:
        """
        Whether the C{k} messages of C{step} bytes each from C{pos} on all
        begin with C{line} (a message line, LF included) and end in CRLF:
        then each is C{line} and a payload of the line's size.  Checked a
        column at a time (a slice every C{step} bytes is one C call), not a
        message at a time.
        """
        if buf[pos + step - 2 : stop : step].count(13) != k or buf[pos + step - 1 : stop : step].count(10) != k:
            return False
        for j, c in enumerate(line):
            if buf[pos + j : stop : step].count(c) != k:
                return False
        return True

    def _one_line(self, buf: bytes) -> bool:
        """
        Whether C{buf} was one whole control line without arguments
        (L{VerbTable.whole_lines}), handed to its verb here as the loop
        would (nothing kept, no CONNECT awaited, nothing carried over).
        """
        verb = self.verbs.whole_lines.get(buf)
        if verb is None or self.awaiting_connect or self._carry is not None:
            return False
        self.debt = 0.0
        end = len(verb.name)
        self._methods[verb](self, buf, 0, end, end, end + 1)
        return True

    def _one_message(self, buf: bytes, handler: Any) -> bool:
        """
        Whether C{buf} was one whole message, handed over here (see
        L{_parse}).  (A method of its own, as L{_block}: each local of
        L{_parse} costs PyPy's JIT on every read of one message.)
        """
        n = len(buf)
        # A read that is one whole message (a fleet of slow publishers
        # makes a read of every message, a requester or a responder
        # too) is handed over here, as the loop would, without its
        # set-up: a line read before (kept), or a request's line of
        # single spaces, checked as the loop checks them.  Anything
        # else, malformed lines included, is the loop's.
        nl = buf.find(b"\n")
        if (nl > 0 and buf[nl - 1] == 13 and buf.endswith(b"\r\n") and buf.startswith(self.message_verb)
                and nl - 1 - len(self.message_verb) <= self.max_control_line
                and handler.plain and handler.may_publish is None and not self.awaiting_connect):
            line = buf[: nl - 1]
            known_line = _MESSAGE_LINES.get(line)
            if known_line is not None:
                if known_line[3] == n and (not self.checks_payload or known_line[1] <= self.max_payload):
                    self.debt = 0.0
                    subject, size, tail_off, _ = known_line
                    handler.in_msgs += 1
                    handler.in_bytes += size
                    handler.publish(handler, subject, None, size, buf[tail_off:])
                    return True
            else:
                args = line.split(b" ")
                if len(args) == 4 and b"" not in args and line.find(b"\t") < 0 and args[2] not in self.not_replies:
                    # (A size this connection has read before: valid, and within its limit.)
                    known_size = self._sizes.get(args[3])
                    if known_size is not None and nl + known_size + 3 == n:
                        self.debt = 0.0
                        handler.in_msgs += 1
                        handler.in_bytes += known_size
                        if not handler.publish(handler, args[1], args[2], known_size, buf[nl - 1 - len(args[3]) :]):
                            handler.op_no_responders(args[2])
                        return True
        return False

    def _hand_carry(self) -> None:
        """Hand over the message L{feed} kept for a rest of the read that will not go on with it."""
        subject, tail, size = self._carry[:3]  # type: ignore[index]
        self._carry = None
        self._handler.publish(self._handler, subject, None, size, tail)

    def _parse(self, buf: bytes, pos: int = 0, hold: bool = False) -> None:
        # The hot loop.  Two shortcuts, both exact:
        # - a message line byte-identical to the previous one is not parsed
        #   again (publishers repeat subject and size); when lines keep
        #   differing (traffic over many subjects), it stops looking;
        # - consecutive messages to one subject without a reply, from a
        #   plain connection, are handed over as one batch.  The batch is
        #   handed over before any other operation, so order and SUB/UNSUB
        #   timing are unchanged.
        handler = self._handler
        n = len(buf)
        if n < WHOLE_LINE_MAX and not pos and not hold and self._one_line(buf):
            return
        if self.split_runs and not pos and not hold and self._one_message(buf, handler):
            return
        mcl = self.max_control_line
        sizes = self._sizes
        plain = handler.plain
        may_publish = handler.may_publish
        publish = handler.publish
        publish_batch = handler.publish_batch
        # (op_pub, message_line and the verb table's classify are looked up
        # where they are used: a bound method a read is a cost for a fleet
        # of publishers whose every read is one PUB.)
        message_code = self._message_code
        fast = self.message_verb
        fast_len = len(fast)
        guarded = self.awaiting_connect
        # Every 16 operations (one may fan out to hundreds of subscribers),
        # the time spent is checked against the budget.
        budget = self.budget
        started = perf_counter() - self.debt if budget is not None else 0.0
        self.debt = 0.0
        ops = 0
        runs = self.split_runs and plain and may_publish is None and not guarded
        if runs and self._differing and buf.startswith(fast, pos):
            runs = False  # (one run a read)
            if self._carry is not None:
                self._hand_carry()
            first = pos
            pos = self._runs(buf, started, pos)
            if pos == n:
                return
            if pos > first:
                ops = 15  # after a run, the budget is checked at once
        find = buf.find
        startswith = buf.startswith
        # Message lines read before, by any connection (L{_MESSAGE_LINES}),
        # where the protocol's lines are those runs read; held to this
        # connection's max_payload.
        lines = _MESSAGE_LINES if self.split_runs else None
        max_size = self.max_payload if self.checks_payload else 1 << 62
        key = b""
        msgs = nbytes = 0
        # The previous message line (never matches until one is parsed),
        # what it said, and whether it is worth comparing with.
        last = b"\n\n"
        memo = True
        misses = 0
        go_runs = False
        last_nl = tail_off = size = 0
        subject = szb = b""
        reply: Optional[bytes] = None
        extra: Any = None
        # The batch being gathered: its first tail alone, or a list.
        batch: Any = None
        batch_subject = b""
        batch_bytes = 0
        # Batches gathered before this one, to be handed over together
        # (None until there are: a read of one message makes no list).
        run: Optional[List[Tuple[bytes, int, Any]]] = None
        if self._carry is not None:
            # What completed the last read's cut message (L{feed}): the
            # batch it began, and its line as the previous one, so that the
            # same line next is not read again and gives the same subject
            # object (compared with "is", not "==", message after message).
            batch_subject, batch, size, last, last_nl, tail_off, szb = self._carry
            subject = batch_subject
            batch_bytes = size
            self._carry = None
        try:
            while pos < n:
                if go_runs:
                    # Lines keep differing: the rest of the read in a run.
                    go_runs = False
                    if batch is not None or run:
                        self._hand_over(handler, run, batch_subject, batch_bytes, batch)
                        batch = None
                        run = None
                    pos = self._runs(buf, started, pos)
                    if pos >= n:
                        break
                ops += 1
                if not ops & 15 and budget is not None and perf_counter() - started > budget:
                    # Enough for this turn: the rest waits for the next one.
                    self.suspended = True
                    self._wait(buf, pos, 0)
                    handler.parse_later()
                    break
                if memo and startswith(last, pos):
                    nl = pos + last_nl
                    misses = 0
                else:
                    nl = find(b"\n", pos)
                    if nl < 0:
                        self._partial(buf, pos)
                        break
                    if not guarded and startswith(fast, pos):
                        start = pos + fast_len
                    else:
                        eol = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                        verbs = self.verbs
                        verb = verbs.classify(buf[pos : min(eol, pos + verbs.longest + 1)])
                        if guarded and (verb is None or verb.name != b"CONNECT"):
                            raise ProtocolViolation(AUTHORIZATION_VIOLATION)
                        if verb is None:
                            raise ProtocolViolation(UNKNOWN_OPERATION)
                        start = pos + len(verb.name)
                        if verb is not message_code:
                            if batch is not None or run:
                                self._hand_over(handler, run, batch_subject, batch_bytes, batch)
                                batch = None
                                run = None
                            if verb.bounded and eol - start > mcl:
                                raise ProtocolViolation(MAX_CONTROL_LINE)
                            pos = self._methods[verb](self, buf, pos, start, eol, nl)
                            if pos < 0:
                                break
                            # CONNECT may have changed how messages are handled.
                            guarded = self.awaiting_connect
                            plain = handler.plain
                            may_publish = handler.may_publish
                            continue
                    eol = nl - 1 if buf[nl - 1] == 13 else nl
                    if eol - start > mcl:
                        raise ProtocolViolation(MAX_CONTROL_LINE)
                    if lines is not None and eol < nl:
                        key = buf[pos:eol]
                        known_line = lines.get(key)
                    else:
                        known_line = None
                    if known_line is not None and known_line[1] <= max_size:
                        # Read before (a line without a reply, ending in its size).
                        subject, size, tail_off, _ = known_line
                        reply = extra = None
                    else:
                        subject, reply, extra, szb = self.message_line(buf, start, eol)
                        known = sizes.get(szb)
                        size = self._new_size(szb) if known is None else known
                        if eol < nl and 47 < buf[eol - 1] < 58:
                            # "<#bytes>\r\n<payload>\r\n" is already in the buffer.
                            tail_off = eol - len(szb) - pos
                            if lines is not None and reply is None and extra is None and startswith(fast, pos):
                                # (Not "pub", not "PUB<tab>": runs read only what they split.)
                                if len(lines) >= MESSAGE_LINES:
                                    lines.clear()
                                lines[key] = (subject, size, tail_off, eol - pos + size + 4)
                        else:
                            tail_off = -1
                    if memo:
                        if misses > 16:
                            # Lines keep differing: stop comparing (until the next
                            # read), and go on in a run where runs are used.
                            memo = False
                            self._differing = True
                            if runs and not guarded:
                                runs = False
                                go_runs = True
                        else:
                            misses += 1
                            last = buf[pos : nl + 1]
                            last_nl = nl - pos
                end = nl + size + 3
                if end > n:
                    self._wait(buf, pos, end - pos)
                    break
                if buf[end - 2] != 13 or buf[end - 1] != 10:
                    raise ProtocolViolation(UNKNOWN_OPERATION)
                if tail_off >= 0:
                    tail = buf[pos + tail_off : end]
                else:
                    tail = szb + b"\r\n" + buf[nl + 1 : end]
                pos = end
                if not plain or (may_publish is not None and (reply is not None or not may_publish(subject))):
                    # Checked one by one: refused, or a request whose reply
                    # subject must be checked too; the handler does it, in order.
                    if batch is not None or run:
                        self._hand_over(handler, run, batch_subject, batch_bytes, batch)
                        batch = None
                        run = None
                    handler.op_pub(subject, reply, size, tail)
                    continue
                msgs += 1
                nbytes += size
                if reply is None and extra is None:
                    if batch is not None:
                        if subject is batch_subject or subject == batch_subject:
                            if batch.__class__ is bytes:
                                batch = [batch, tail]
                            else:
                                batch.append(tail)
                            batch_bytes += size
                            if memo and tail_off >= 0 and self.same_line_blocks and may_publish is None and len(batch) > 3:
                                # The same line again (a fifth time): are the next ones too?
                                # (Decided here, with no local of its own: on PyPy, which
                                # takes no blocks, a local set up per read cost a read of
                                # one message a quarter more.)
                                taken = self._block(buf, pos, last_nl + size + 3, last, tail_off, batch)
                                if taken:
                                    pos += taken * (last_nl + size + 3)
                                    msgs += taken
                                    nbytes += taken * size
                                    batch_bytes += taken * size
                                    ops |= 15  # (the budget is checked next)
                            continue
                        # Another subject: the batch joins the run, handed
                        # over in one call when it is long enough (L{_long_run}).
                        # (A batch of several is marked by its size's complement.)
                        if run is None:
                            run = [(batch_subject, batch_bytes if batch.__class__ is bytes else ~batch_bytes, batch)]
                        else:
                            run.append((batch_subject, batch_bytes if batch.__class__ is bytes else ~batch_bytes, batch))
                            if len(run) >= self._long_run:
                                self._long_run_over(handler, run)
                                run = None
                                ops |= 15  # (the budget is checked next, their time in it)
                    batch = tail
                    batch_subject = subject
                    batch_bytes = size
                    continue
                if batch is not None or run:
                    self._hand_over(handler, run, batch_subject, batch_bytes, batch)
                    batch = None
                    run = None
                if extra is not None:
                    self.message_extra(subject, reply, extra, size, tail)
                elif not publish(handler, subject, reply, size, tail):
                    handler.op_no_responders(reply)
            if hold and batch is not None and batch.__class__ is bytes and not self._pending and not self.suspended:
                # The rest of the read goes on with this message, and with
                # its line as the previous one (L{feed}).
                self._carry = (batch_subject, batch, batch_bytes, last, last_nl, tail_off, szb)
                batch = None
        finally:
            # Whatever happens next, what was published before is delivered.
            if run:
                self._hand_over(handler, run, batch_subject, batch_bytes, batch)
            elif batch is not None:
                if batch.__class__ is bytes:
                    publish(handler, batch_subject, None, batch_bytes, batch)
                else:
                    publish_batch(handler, batch_subject, batch, batch_bytes)
            if msgs:
                handler.in_msgs += msgs
                handler.in_bytes += nbytes


class ReadTurns:
    """
    A connection's reads, parsed within the framing loop's budget: the one
    copy of how a burst is spread over reactor turns, for clients and
    server links alike.

    The connection hands every read to L{feed}, and its C{parse_later}
    (what the framer calls once it has used its budget) to L{later}.  Then
    its transport is not read (its read gate holds L{PARSING_LATER}) until
    the rest has been parsed on the next turn, within the budget again, and
    so on; everyone else is served in between.  After each turn what it
    delivered is written out (C{write_out}), and while the rest waits that
    writing counts against the next turn's budget (L{Framer.debt}): a
    burst fanned out to consumers costs as much to write as to parse.

    @ivar violated: called with the L{ProtocolViolation} that ends the
        connection (it closes it, saying why as its kind says it).
    """

    __slots__ = ("framer", "clock", "gate", "violated", "write_out", "_call")

    def __init__(
        self, framer: Framer, clock: Any, gate: Any,
        violated: Callable[[ProtocolViolation], None], write_out: Callable[[], Any],
    ) -> None:
        self.framer = framer
        self.clock = clock
        self.gate = gate
        self.violated = violated
        self.write_out = write_out
        self._call: Any = None

    def feed(self, data: bytes) -> None:
        """A read: parsed within this turn's budget, and what it delivered written out."""
        # (Written out here, not through _turn: a fleet of slow publishers
        # makes a read of every message, and each call here costs them.)
        framer = self.framer
        try:
            framer.feed(data)
        except ProtocolViolation as violation:
            self.violated(violation)
        if framer.suspended:
            self.flush()
        else:
            self.write_out()

    def later(self) -> None:
        """The framer used its budget: read nothing more until the rest has been parsed, from the next turn on."""
        if self._call is None:
            self.gate.hold(PARSING_LATER)
            self._call = self.clock.callLater(0, self._go_on)

    def stop(self) -> None:
        """The connection has closed: nothing more is parsed."""
        self._call = cancel(self._call)

    def _go_on(self) -> None:
        self._call = None
        self.gate.release(PARSING_LATER)
        try:
            self.framer.resume()
        except ProtocolViolation as violation:
            self.violated(violation)
        self.flush()

    def flush(self) -> None:
        """
        Write out what the turn delivered; while the rest of a read waits,
        the writing is taken from the next turn's budget.
        """
        framer = self.framer
        if framer.suspended:
            started = perf_counter()
            self.write_out()
            framer.debt = perf_counter() - started
        else:
            self.write_out()
