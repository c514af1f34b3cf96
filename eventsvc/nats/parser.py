"""
The incremental parser for the NATS client protocol.

It is fed whatever the transport delivers, split at any byte, and calls one
method of its handler per complete operation.  It works on the whole buffer
with C{bytes.find}, never byte by byte and never line by line through a
line receiver, and it enforces the control-line and payload limits before it
buffers more.

What it must not do: know about subscriptions, permissions or the network.
Errors that end the connection are raised as L{ProtocolViolation}; the
handler decides everything else.

Outcomes follow nats-server 2.9's byte-wise state machine: an unknown verb is
C{-ERR 'Unknown Protocol Operation'}; wrong argument counts and bad sizes are
a silent close; a payload not followed by CRLF is an unknown operation; and
garbage that cannot begin any operation is refused as soon as it arrives,
without waiting for a newline.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any, List, Optional, Protocol

from eventsvc.nats import limits

UNKNOWN_OPERATION = "Unknown Protocol Operation"
MAX_CONTROL_LINE = "maximum control line exceeded"
MAX_PAYLOAD = "Maximum Payload Violation"
AUTHORIZATION_VIOLATION = "Authorization Violation"


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


class IClientOperations(Protocol):
    """
    What a L{ClientParser} calls; implemented by the client connection.

    When C{plain} is true (the connection is neither verbose nor pedantic)
    the parser hands PUBs it C{may_publish} (None: no permissions) straight to
    C{publish(handler, subject, reply, size, tail)}, which returns how many
    subscribers it reached, or, for runs without a reply, to
    C{publish_batch}; it adds to C{in_msgs} and C{in_bytes} itself.
    Otherwise it calls C{op_pub}.
    """

    plain: bool
    may_publish: Optional[Any]
    in_msgs: int
    in_bytes: int

    def publish(self, src: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        ...

    def publish_batch(self, src: Any, subject: bytes, tails: List[bytes], size: int) -> None:
        """Several PUBs to C{subject} without a reply; C{size} is their payloads' total."""

    def op_no_responders(self, reply: bytes) -> None:
        """A plain PUB with a reply subject reached nobody."""

    def op_pub(
        self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes
    ) -> None:
        """
        A PUB.  C{tail} is C{b"<size>\\r\\n<payload>\\r\\n"}: the bytes that
        follow the sid (and reply) in the MSG sent to subscribers.
        """

    def op_hpub(
        self,
        subject: bytes,
        reply: Optional[bytes],
        hdr_len: int,
        total_len: int,
        body: bytes,
    ) -> None:
        """An HPUB. C{body} is the headers, the payload and the final CRLF."""

    def op_sub(self, subject: bytes, queue: Optional[bytes], sid: bytes) -> None:
        ...

    def op_unsub(self, sid: bytes, max_msgs: int) -> None:
        ...

    def op_connect(self, arg: bytes) -> bool:
        """Returns True to suspend parsing until L{ClientParser.resume}."""

    def parse_later(self) -> None:
        """
        The feed used up its budget and suspended itself: arrange for
        L{ClientParser.resume} on a later reactor turn (and read nothing more
        meanwhile).
        """

    def op_info(self, arg: bytes) -> None:
        ...

    def op_ping(self) -> None:
        ...

    def op_pong(self) -> None:
        ...


# Operation codes.
_PUB, _HPUB, _SUB, _UNSUB, _CONNECT, _PING, _PONG, _OK, _ERR, _INFO = range(10)

# (verb, code, whether white space must follow the verb)
_VERBS = (
    (b"PUB", _PUB, True),
    (b"HPUB", _HPUB, True),
    (b"SUB", _SUB, True),
    (b"UNSUB", _UNSUB, True),
    (b"CONNECT", _CONNECT, False),
    (b"PING", _PING, False),
    (b"PONG", _PONG, False),
    (b"+OK", _OK, False),
    (b"-ERR", _ERR, True),
    (b"INFO", _INFO, False),
)
_LONGEST_VERB = max(len(v) for v, _, _ in _VERBS)
_SPACE = (32, 9)


def _classify(line_head: bytes):
    """
    Recognise the verb at the start of C{line_head} (at least the longest
    verb plus one byte, or everything up to the end of the line).

    @return: C{(code, length of the verb)}, or L{None}.
    """
    head = line_head.upper()
    for verb, code, spaced in _VERBS:
        if head.startswith(verb):
            n = len(verb)
            if not spaced or (len(head) > n and head[n] in _SPACE):
                return code, n
    return None


def _plausible(partial: bytes) -> bool:
    """
    Whether an incomplete control line could still become an operation.
    """
    head = partial[: _LONGEST_VERB + 1].upper()
    for verb, _, spaced in _VERBS:
        n = len(verb)
        if len(head) <= n:
            if verb.startswith(head):
                return True
        elif head.startswith(verb) and (not spaced or head[n] in _SPACE):
            return True
    return False


def _fields(line: bytes) -> List[bytes]:
    """A PUB or HPUB line's arguments: split at runs of spaces and tabs only (nats-server's rule)."""
    return [a for a in line.replace(b"\t", b" ").split(b" ") if a]


def _parse_size(token: bytes) -> int:
    """
    A size as nats-server reads one: at most nine ASCII digits, else -1.
    (int() alone would accept "+5", " 5" and "1_0".)
    """
    if len(token) > 9 or not token.isdigit():
        return -1
    return int(token)


def _size(token: bytes) -> int:
    size = _parse_size(token)
    if size < 0:
        raise ProtocolViolation(None, "bad size {!r}".format(token))
    return size


class _Buffered:
    """
    Input kept between reads: a partial control line, or a whole operation
    waiting for its payload (C{_need}: how many bytes it takes).  Bytes are
    gathered in a list and joined once, when enough have arrived.
    """

    _pending: List[bytes]
    _pending_len: int
    _need: int

    def _take(self, data: bytes, hold: bool = False) -> Optional[bytes]:
        """What to parse now (the kept bytes and C{data}), or None to wait."""
        if not self._pending and not hold:
            return data
        self._pending.append(data)
        self._pending_len += len(data)
        if self._pending_len < self._need or hold:
            return None
        buf = b"".join(self._pending)
        del self._pending[:]
        self._pending_len = self._need = 0
        return buf

    def _keep(self, rest: bytes, need: int) -> None:
        self._pending.append(rest)
        self._pending_len = len(rest)
        self._need = need


class ClientParser(_Buffered):
    """
    Parses the operations a client sends.

    @ivar awaiting_connect: while true, any first operation other than
        CONNECT is an authorization violation (set when auth is required).
    """

    def __init__(
        self,
        handler: IClientOperations,
        max_control_line: int = limits.MAX_CONTROL_LINE,
        max_payload: int = limits.MAX_PAYLOAD,
        budget: Optional[float] = None,
    ) -> None:
        self._handler = handler
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        #: Seconds of work one feed may do before the rest of the input
        #: waits for the next reactor turn (C{handler.parse_later}), so one
        #: client's burst never holds up everyone else; None: no bound.
        self.budget = budget
        self.awaiting_connect = False
        #: While true, bytes are kept but not parsed (see L{resume}).
        self.suspended = False
        # Unconsumed bytes: a partial control line, or a whole operation
        # waiting for its payload (then _need is how many bytes it takes).
        self._pending: List[bytes] = []
        self._pending_len = 0
        self._need = 0
        # Size tokens already seen: most publishers repeat a few sizes.
        self._sizes: dict = {}

    def feed(self, data: bytes) -> None:
        """
        Parse C{data} and everything buffered before it.

        @raise ProtocolViolation: the connection must close.  Operations
            before the offending one have been handled.
        """
        buf = self._take(data, hold=self.suspended)
        if buf is not None:
            self._parse(buf, self._handler)

    def _parse(self, buf: bytes, handler: IClientOperations) -> None:
        # The hot loop.  Two shortcuts, both exact:
        # - a PUB control line byte-identical to the previous one is not
        #   parsed again (publishers repeat subject and size);
        # - consecutive PUBs to one subject without a reply, from a plain
        #   connection (not verbose, not pedantic, no permissions), are handed
        #   to the broker as one batch.  The batch is handed over before any
        #   other operation, so order and SUB/UNSUB timing are unchanged.
        n = len(buf)
        pos = 0
        mcl = self.max_control_line
        sizes = self._sizes
        plain = handler.plain
        may_publish = handler.may_publish
        publish = handler.publish
        publish_batch = handler.publish_batch
        op_pub = handler.op_pub
        guarded = self.awaiting_connect
        find = buf.find
        startswith = buf.startswith
        msgs = nbytes = 0
        # Every 16 operations (one may fan out to hundreds of subscribers),
        # the time spent is checked against the budget.
        budget = self.budget
        ops = 0
        started = perf_counter() if budget is not None else 0.0
        # The previous PUB line (never matches until a PUB is parsed) and
        # what it said.
        last = b"\n\n"
        last_nl = tail_off = size = 0
        subject = szb = b""
        reply: Optional[bytes] = None
        # The batch being gathered.
        batch: List[bytes] = []
        batch_subject = b""
        batch_bytes = 0
        try:
            while pos < n:
                ops += 1
                if not ops & 15 and budget is not None and perf_counter() - started > budget:
                    # Enough for this turn: the rest waits for the next one.
                    self.suspended = True
                    self._wait(buf, pos, 0)
                    handler.parse_later()
                    break
                if startswith(last, pos):
                    nl = pos + last_nl
                else:
                    nl = find(b"\n", pos)
                    if nl < 0:
                        self._partial(buf, pos)
                        break
                    if not guarded and startswith(b"PUB ", pos):
                        start = pos + 4
                    else:
                        eol = nl - 1 if nl > pos and buf[nl - 1] == 13 else nl
                        verb = _classify(buf[pos : min(eol, pos + _LONGEST_VERB + 1)])
                        if guarded and (verb is None or verb[0] != _CONNECT):
                            raise ProtocolViolation(AUTHORIZATION_VIOLATION)
                        if verb is None:
                            raise ProtocolViolation(UNKNOWN_OPERATION)
                        code, length = verb
                        if code != _PUB:
                            if batch:
                                publish_batch(handler, batch_subject, batch, batch_bytes)
                                batch = []
                            pos = self._other(code, buf, pos, pos + length, eol, nl)
                            if pos < 0:
                                break
                            # CONNECT may have changed how PUBs are handled.
                            guarded = self.awaiting_connect
                            plain = handler.plain
                            may_publish = handler.may_publish
                            continue
                        start = pos + length
                    # PUB <subject> [reply] <#bytes>; split() drops the CR too.
                    if nl - start > mcl and (nl - start > mcl + 1 or buf[nl - 1] != 13):
                        raise ProtocolViolation(MAX_CONTROL_LINE)
                    args = buf[start:nl].split()
                    if find(b"\r", start, nl - 1) >= 0:
                        # A CR inside the line is part of a token in
                        # nats-server's PUB, not a separator.
                        args = _fields(buf[start : nl - 1 if buf[nl - 1] == 13 else nl])
                    nargs = len(args)
                    if nargs == 2:
                        subject, szb = args
                        reply = None
                    elif nargs == 3:
                        subject, reply, szb = args
                    else:
                        raise ProtocolViolation(None, "PUB needs 2 or 3 arguments")
                    known = sizes.get(szb)
                    size = self._new_size(szb) if known is None else known
                    if buf[nl - 1] == 13 and 47 < buf[nl - 2] < 58:
                        # "<#bytes>\r\n<payload>\r\n" is already in the buffer.
                        tail_off = nl - 1 - len(szb) - pos
                    else:
                        tail_off = -1
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
                if plain:
                    if may_publish is not None and (reply is not None or not may_publish(subject)):
                        # Refused, or a request whose reply subject must be
                        # checked too: the handler does it, in order.
                        if batch:
                            publish_batch(handler, batch_subject, batch, batch_bytes)
                            batch = []
                        op_pub(subject, reply, size, tail)
                        continue
                    msgs += 1
                    nbytes += size
                    if reply is None:
                        if batch:
                            if subject is batch_subject or subject == batch_subject:
                                batch.append(tail)
                                batch_bytes += size
                                continue
                            publish_batch(handler, batch_subject, batch, batch_bytes)
                        batch = [tail]
                        batch_subject = subject
                        batch_bytes = size
                        continue
                    if batch:
                        publish_batch(handler, batch_subject, batch, batch_bytes)
                        batch = []
                    if not publish(handler, subject, reply, size, tail):
                        handler.op_no_responders(reply)
                else:
                    if batch:
                        publish_batch(handler, batch_subject, batch, batch_bytes)
                        batch = []
                    op_pub(subject, reply, size, tail)
        finally:
            # Whatever happens next, what was published before is delivered.
            if batch:
                publish_batch(handler, batch_subject, batch, batch_bytes)
            if msgs:
                handler.in_msgs += msgs
                handler.in_bytes += nbytes

    def _new_size(self, token: bytes) -> int:
        size = _size(token)
        if size > self.max_payload:
            raise ProtocolViolation(MAX_PAYLOAD)
        if len(self._sizes) >= 1024:
            self._sizes.clear()
        self._sizes[token] = size
        return size

    def resume(self) -> None:
        """Parse what arrived while suspended."""
        self.suspended = False
        self.feed(b"")

    def _wait(self, buf: bytes, pos: int, need: int) -> None:
        # Keep the operation from its first byte; it is parsed again, once,
        # when all of it has arrived.
        self._keep(buf[pos:], need)

    def _partial(self, buf: bytes, pos: int) -> None:
        rest = buf[pos:]
        if self.awaiting_connect and rest[:1] not in (b"C", b"c"):
            raise ProtocolViolation(AUTHORIZATION_VIOLATION)
        if not _plausible(rest):
            raise ProtocolViolation(UNKNOWN_OPERATION)
        if len(rest) > self.max_control_line + _LONGEST_VERB + 1:
            raise ProtocolViolation(MAX_CONTROL_LINE)
        self._keep(rest, len(rest) + 1)

    def _other(
        self, code: int, buf: bytes, pos: int, start: int, eol: int, nl: int
    ) -> int:
        """
        Handle every operation but PUB.  Returns the position after it, or
        -1 when it waits for more bytes.
        """
        handler = self._handler
        if code == _PING:
            handler.op_ping()
            return nl + 1
        if code == _PONG:
            handler.op_pong()
            return nl + 1
        if code == _OK:
            return nl + 1
        if eol - start > self.max_control_line:
            raise ProtocolViolation(MAX_CONTROL_LINE)
        if code == _SUB:
            args = buf[start:eol].split()
            if len(args) == 2:
                handler.op_sub(args[0], None, args[1])
            elif len(args) == 3:
                handler.op_sub(args[0], args[1], args[2])
            else:
                raise ProtocolViolation(None, "SUB needs 2 or 3 arguments")
            return nl + 1
        if code == _UNSUB:
            args = buf[start:eol].split()
            if len(args) == 1:
                handler.op_unsub(args[0], 0)
            elif len(args) == 2:
                # A bad maximum unsubscribes at once, as in nats-server.
                handler.op_unsub(args[0], _parse_size(args[1]))
            else:
                raise ProtocolViolation(None, "UNSUB needs 1 or 2 arguments")
            return nl + 1
        if code == _CONNECT:
            if handler.op_connect(buf[start:eol].strip(b" \t")):
                # The handler answers asynchronously: keep the rest.
                self.suspended = True
                self._wait(buf, nl + 1, 0)
                return -1
            return nl + 1
        if code == _HPUB:
            return self._hpub(buf, pos, start, eol, nl)
        if code == _INFO:
            handler.op_info(buf[start:eol].strip(b" \t"))
            return nl + 1
        # -ERR from a client: nats-server closes without a word.
        raise ProtocolViolation(None, "client sent -ERR")

    def _hpub(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = _fields(buf[start:eol])
        if len(args) == 3:
            subject, hdb, szb = args
            reply = None
        elif len(args) == 4:
            subject, reply, hdb, szb = args
        else:
            raise ProtocolViolation(None, "HPUB needs 3 or 4 arguments")
        hdr_len = _size(hdb)
        total = _size(szb)
        if hdr_len > total:
            raise ProtocolViolation(None, "HPUB header size larger than total")
        if total > self.max_payload:
            raise ProtocolViolation(MAX_PAYLOAD)
        end = nl + total + 3
        if end > len(buf):
            self._wait(buf, pos, end - pos)
            return -1
        if buf[end - 2] != 13 or buf[end - 1] != 10:
            raise ProtocolViolation(UNKNOWN_OPERATION)
        self._handler.op_hpub(subject, reply, hdr_len, total, buf[nl + 1 : end])
        return end


class RouteParser(_Buffered):
    """
    Parses what a peer server sends on a route: INFO, CONNECT, RS+, RS-,
    RMSG, HMSG, PING, PONG, +OK, -ERR.  Same rules as the client parser:
    the whole buffer with C{find}, the payload never copied, control lines
    bounded.  Accounts other than the global one (C{$G}) are handed over too;
    the handler ignores them.
    """

    def __init__(self, handler: Any, max_control_line: int = limits.MAX_CONTROL_LINE, max_payload: int = limits.MAX_PAYLOAD) -> None:
        self._handler = handler
        self.max_control_line = max_control_line
        self.max_payload = max_payload
        self._pending: List[bytes] = []
        self._pending_len = 0
        self._need = 0

    def feed(self, data: bytes) -> None:
        buf = self._take(data)
        if buf is not None:
            self._parse(buf, self._handler)

    def _parse(self, buf: bytes, h: Any) -> None:
        # As the client parser: an RMSG line identical to the previous one is
        # not parsed again, and runs of plain RMSGs to one subject (no reply,
        # no queue names) go to the handler as one batch.
        n, pos = len(buf), 0
        mcl = self.max_control_line + 16
        find, startswith = buf.find, buf.startswith
        last, last_nl, tail_off, size = b"\n\n", 0, -1, 0
        account = subject = szb = b""
        reply: Optional[bytes] = None
        queues: List[bytes] = []
        batch: List[bytes] = []
        batch_subject, batch_bytes = b"", 0
        try:
            while pos < n:
                if startswith(last, pos):
                    nl = pos + last_nl
                else:
                    nl = find(b"\n", pos)
                    if nl < 0:
                        rest = buf[pos:]
                        if len(rest) > mcl:
                            raise ProtocolViolation(MAX_CONTROL_LINE)
                        self._keep(rest, len(rest) + 1)
                        return
                    if nl - pos > mcl:
                        raise ProtocolViolation(MAX_CONTROL_LINE)
                    if not startswith(b"RMSG ", pos):
                        if batch:
                            h.op_rmsg_batch(batch_subject, batch, batch_bytes)
                            batch = []
                        pos = self._other(buf, pos, nl, h)
                        if pos < 0:
                            return
                        continue
                    args = buf[pos + 5 : nl].split()
                    if len(args) < 3:
                        raise ProtocolViolation(None, "short RMSG")
                    account, subject, szb = args[0], args[1], args[-1]
                    size = _size(szb)
                    reply, queues = _route_targets(args[2:-1])
                    tail_off = nl - 1 - len(szb) - pos if buf[nl - 1] == 13 and 47 < buf[nl - 2] < 58 else -1
                    last, last_nl = buf[pos : nl + 1], nl - pos
                end = nl + size + 3
                if end > n:
                    self._keep(buf[pos:], end - pos)
                    return
                if buf[end - 2] != 13 or buf[end - 1] != 10:
                    raise ProtocolViolation(UNKNOWN_OPERATION)
                tail = buf[pos + tail_off : end] if tail_off >= 0 else szb + b"\r\n" + buf[nl + 1 : end]
                pos = end
                if reply is None and not queues and account == b"$G":
                    if batch:
                        if subject is batch_subject or subject == batch_subject:
                            batch.append(tail)
                            batch_bytes += size
                            continue
                        h.op_rmsg_batch(batch_subject, batch, batch_bytes)
                    batch, batch_subject, batch_bytes = [tail], subject, size
                    continue
                if batch:
                    h.op_rmsg_batch(batch_subject, batch, batch_bytes)
                    batch = []
                h.op_rmsg(account, subject, reply, queues, size, tail)
        finally:
            if batch:
                h.op_rmsg_batch(batch_subject, batch, batch_bytes)

    def _other(self, buf: bytes, pos: int, nl: int, h: Any) -> int:
        """Everything but RMSG; returns the next position, or -1 to wait for more."""
        line = buf[pos:nl].rstrip(b"\r")
        verb, _, rest = line.partition(b" ")
        verb = verb.upper()
        if verb == b"HMSG":
            args = rest.split()
            if len(args) < 4:
                raise ProtocolViolation(None, "short HMSG")
            hdr_len, size = _size(args[-2]), _size(args[-1])
            reply, queues = _route_targets(args[2:-2])
            end = nl + size + 3
            if end > len(buf):
                self._keep(buf[pos:], end - pos)
                return -1
            if buf[end - 2] != 13 or buf[end - 1] != 10:
                raise ProtocolViolation(UNKNOWN_OPERATION)
            h.op_rhmsg(args[0], args[1], reply, queues, hdr_len, size, buf[nl + 1 : end])
            return end
        if verb == b"RS+":
            args = rest.split()
            if len(args) == 2:
                h.op_rs_plus(args[0], args[1], None, 1)
            elif len(args) >= 3:
                weight = _parse_size(args[3]) if len(args) > 3 else 1
                h.op_rs_plus(args[0], args[1], args[2], max(weight, 1))
            else:
                raise ProtocolViolation(None, "short RS+")
        elif verb == b"RS-":
            args = rest.split()
            if len(args) < 2:
                raise ProtocolViolation(None, "short RS-")
            h.op_rs_minus(args[0], args[1], args[2] if len(args) > 2 else None)
        elif verb == b"PING":
            h.op_ping()
        elif verb == b"PONG":
            h.op_pong()
        elif verb == b"INFO":
            h.op_info(rest.strip())
        elif verb == b"CONNECT":
            h.op_connect(rest.strip())
        elif verb == b"+OK":
            pass
        elif verb == b"-ERR":
            h.op_err(rest.strip())
        elif verb in (b"LS+", b"LS-", b"LMSG", b"A+", b"A-"):
            raise ProtocolViolation(UNKNOWN_OPERATION, "leaf node and account operations are not supported")
        else:
            raise ProtocolViolation(UNKNOWN_OPERATION, "unknown route operation {!r}".format(verb[:16]))
        return nl + 1


def _route_targets(middle: List[bytes]) -> "tuple[Optional[bytes], List[bytes]]":
    """
    What stands between the subject and the size(s) of an RMSG/HMSG:
    nothing; a reply; C{+ reply q1 q2...}; or C{| q1 q2...}.
    """
    if not middle:
        return None, []
    if middle[0] == b"+" and len(middle) >= 2:
        return middle[1], middle[2:]
    if middle[0] == b"|":
        return None, middle[1:]
    if len(middle) == 1:
        return middle[0], []
    raise ProtocolViolation(None, "bad RMSG targets")
