"""
The four protocols a connection speaks, as verb tables over the one framing
loop (L{eventsvc.nats.framing.Framer}): what a client sends
(L{ClientParser}), what a peer server sends on a route (L{RouteParser}), on
a gateway (L{GatewayParser}) and on a leaf link (L{LeafParser}).  What we
write back is L{eventsvc.nats.frames}'.

Each verb names the method that reads its arguments; the loop does the
rest (limits, payloads, the fast message branch, batching).  Outcomes
follow nats-server 2.9's byte-wise state machine: an unknown verb is
C{-ERR 'Unknown Protocol Operation'}; wrong argument counts and bad sizes
are a silent close; a payload not followed by CRLF is an unknown
operation; and garbage that cannot begin any operation is refused as soon
as it arrives, without waiting for a newline.
"""

from __future__ import annotations

import sys
from typing import Any, List, Optional, Protocol, Tuple

from eventsvc.nats import limits
from eventsvc.nats.framing import (
    AUTHORIZATION_VIOLATION,
    MAX_CONTROL_LINE,
    MAX_PAYLOAD,
    UNKNOWN_OPERATION,
    Framer,
    MessageLine,
    ProtocolViolation,
    Verb,
    VerbTable,
    fields,
    parse_size,
    size_of,
)

__all__ = [
    "AUTHORIZATION_VIOLATION", "MAX_CONTROL_LINE", "MAX_PAYLOAD", "UNKNOWN_OPERATION",
    "ClientParser", "RouteParser", "GatewayParser", "LeafParser", "ProtocolViolation", "IFramedConnection", "IClientOperations",
]

GLOBAL = b"$G"


class IFramedConnection(Protocol):
    """
    What the framing loop needs of any connection it parses for.

    When C{plain} is true (a client neither verbose nor pedantic; a route
    always) the loop hands messages that C{may_publish} allows (None: no
    permissions) straight to C{publish(handler, subject, reply, size,
    tail)}, which returns how many subscribers it reached, or, for runs
    without a reply, to C{publish_batch}; it adds to C{in_msgs} and
    C{in_bytes} itself.  Otherwise it calls C{op_pub}.  A connection may
    also take a read's messages without a reply in one call,
    C{publish_run(handler, run)} (L{eventsvc.nats.delivery.Delivery.deliver_run}):
    a client's are delivered so; a link, which checks each message, is
    handed them one by one.
    """

    plain: bool
    may_publish: Optional[Any]
    in_msgs: int
    in_bytes: int

    def publish(self, src: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        ...

    def publish_batch(self, src: Any, subject: bytes, tails: List[bytes], size: int) -> None:
        """Several messages to C{subject} without a reply; C{size} is their payloads' total."""

    def op_no_responders(self, reply: bytes) -> None:
        """A plain message with a reply subject reached nobody."""

    def op_pub(self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> None:
        """
        A message to check one by one.  C{tail} is C{b"<size>\\r\\n<payload>\\r\\n"}:
        the bytes that follow the sid (and reply) in the MSG sent to subscribers.
        """

    def parse_later(self) -> None:
        """
        The feed used up its budget and suspended itself: arrange for
        C{resume} on a later reactor turn (and read nothing more meanwhile).
        """

    def op_ping(self) -> None:
        ...

    def op_pong(self) -> None:
        ...

    def op_info(self, arg: bytes) -> None:
        ...


class IClientOperations(IFramedConnection, Protocol):
    """What a L{ClientParser} calls besides; implemented by the client connection."""

    def op_hpub(self, subject: bytes, reply: Optional[bytes], hdr_len: int, total_len: int, body: bytes) -> None:
        """An HPUB. C{body} is the headers, the payload and the final CRLF."""

    def op_sub(self, subject: bytes, queue: Optional[bytes], sid: bytes) -> None:
        ...

    def op_unsub(self, sid: bytes, max_msgs: int) -> None:
        ...

    def op_connect(self, arg: bytes) -> bool:
        """Returns True to suspend parsing until L{ClientParser.resume}."""


class _Liveness:
    """PING, PONG and +OK: read the same way on every protocol."""

    _handler: Any

    def _ping(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        self._handler.op_ping()
        return nl + 1

    def _pong(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        self._handler.op_pong()
        return nl + 1

    def _ok(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        return nl + 1


class ClientParser(_Liveness, Framer):
    """Parses the operations a client sends."""

    verbs = VerbTable([
        # The message verb first: the loop's fast branch.
        Verb(b"PUB", "_pub"),
        Verb(b"HPUB", "_hpub"),
        Verb(b"SUB", "_sub"),
        Verb(b"UNSUB", "_unsub"),
        Verb(b"CONNECT", "_connect", spaced=False),
        Verb(b"PING", "_ping", spaced=False, bounded=False),
        Verb(b"PONG", "_pong", spaced=False, bounded=False),
        Verb(b"+OK", "_ok", spaced=False, bounded=False),
        Verb(b"-ERR", "_err"),
        Verb(b"INFO", "_info", spaced=False),
    ])
    message_verb = b"PUB "
    #: Reads of plain PUBs split in one go (Framer._runs): on CPython that
    #: halves the parsing cost per message; PyPy's JIT does better with the
    #: loop alone (measured: 130 ns a message against 310).
    split_runs = sys.implementation.name == "cpython"

    def __init__(
        self,
        handler: IClientOperations,
        max_control_line: int = limits.MAX_CONTROL_LINE,
        max_payload: int = limits.MAX_PAYLOAD,
        budget: Optional[float] = None,
    ) -> None:
        super().__init__(handler, max_control_line, max_payload, budget)

    def message_line(self, buf: bytes, start: int, eol: int) -> MessageLine:
        # PUB <subject> [reply] <#bytes>.  Single spaces (what every client
        # sends) are found with three finds; anything else (tabs, runs of
        # spaces, a missing or extra argument) goes through fields().  A CR
        # inside the line is part of a token, as in nats-server.
        sp = buf.find(b" ", start, eol)
        rsp = buf.rfind(b" ", start, eol)
        if sp > start and rsp < eol - 1 and buf.find(b"\t", start, eol) < 0:
            if sp == rsp:
                return buf[start:sp], None, None, buf[rsp + 1 : eol]
            if rsp > sp + 1 and buf.find(b" ", sp + 1, rsp) < 0:
                return buf[start:sp], buf[sp + 1 : rsp], None, buf[rsp + 1 : eol]
        args = fields(buf[start:eol])
        if len(args) == 2:
            return args[0], None, None, args[1]
        if len(args) == 3:
            return args[0], args[1], None, args[2]
        raise ProtocolViolation(None, "PUB needs 2 or 3 arguments")

    def _pub(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        raise AssertionError("PUB is the framing loop's own")

    def _sub(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) == 2:
            self._handler.op_sub(args[0], None, args[1])
        elif len(args) == 3:
            self._handler.op_sub(args[0], args[1], args[2])
        else:
            raise ProtocolViolation(None, "SUB needs 2 or 3 arguments")
        return nl + 1

    def _unsub(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) == 1:
            self._handler.op_unsub(args[0], 0)
        elif len(args) == 2:
            # A bad maximum unsubscribes at once, as in nats-server.
            self._handler.op_unsub(args[0], parse_size(args[1]))
        else:
            raise ProtocolViolation(None, "UNSUB needs 1 or 2 arguments")
        return nl + 1

    def _connect(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        if self._handler.op_connect(buf[start:eol].strip(b" \t")):
            # The handler answers asynchronously: keep the rest.
            self.suspended = True
            self._wait(buf, nl + 1, 0)
            return -1
        return nl + 1

    def _info(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        self._handler.op_info(buf[start:eol].strip(b" \t"))
        return nl + 1

    def _err(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        # -ERR from a client: nats-server closes without a word.
        raise ProtocolViolation(None, "client sent -ERR")

    def _hpub(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = fields(buf[start:eol])
        if len(args) == 3:
            subject, hdb, szb = args
            reply = None
        elif len(args) == 4:
            subject, reply, hdb, szb = args
        else:
            raise ProtocolViolation(None, "HPUB needs 3 or 4 arguments")
        hdr_len = size_of(hdb)
        total = size_of(szb)
        if hdr_len > total:
            raise ProtocolViolation(None, "HPUB header size larger than total")
        if total > self.max_payload:
            raise ProtocolViolation(MAX_PAYLOAD)
        end = self._payload_end(buf, pos, nl, total)
        if end >= 0:
            self._handler.op_hpub(subject, reply, hdr_len, total, buf[nl + 1 : end])
        return end


class IRouteOperations(IFramedConnection, Protocol):
    """What a L{RouteParser} calls besides; implemented by the route connection."""

    def op_rmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes) -> None:
        """An RMSG naming queue groups, or in another account than C{$G}."""

    def op_rhmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], hdr_len: int, total: int, body: bytes) -> None:
        ...

    def op_rs_plus(self, account: bytes, subject: bytes, queue: Optional[bytes], weight: int) -> None:
        ...

    def op_rs_minus(self, account: bytes, subject: bytes, queue: Optional[bytes]) -> None:
        ...

    def op_connect(self, arg: bytes) -> Any:
        ...

    def op_err(self, arg: bytes) -> None:
        ...


#: The control verbs of every server-to-server protocol, read the same way (L{_PeerControl}).
PEER_CONTROL_VERBS = [
    Verb(b"PING", "_ping", spaced=False, bounded=False),
    Verb(b"PONG", "_pong", spaced=False, bounded=False),
    Verb(b"INFO", "_info", spaced=False),
    Verb(b"CONNECT", "_connect", spaced=False),
    Verb(b"+OK", "_ok", spaced=False, bounded=False),
    Verb(b"-ERR", "_err"),
]


class _PeerControl(_Liveness):
    """
    What every server-to-server protocol (routes, gateways, leaf links)
    reads the same way: its control verbs, and the limits' defaults (and
    no budget unless given: its connection gives the settings').
    """

    def __init__(
        self, handler: Any, max_control_line: int = limits.MAX_CONTROL_LINE, max_payload: int = limits.MAX_PAYLOAD,
        budget: Optional[float] = None,
    ) -> None:
        super().__init__(handler, max_control_line, max_payload, budget)  # type: ignore[call-arg]

    def _info(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        self._handler.op_info(buf[start:eol].strip())
        return nl + 1

    def _connect(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        self._handler.op_connect(buf[start:eol].strip())
        return nl + 1

    def _err(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        self._handler.op_err(buf[start:eol].strip())
        return nl + 1


class RouteParser(_PeerControl, Framer):
    """
    Parses what a peer server sends on a route: INFO, CONNECT, RS+, RS-,
    RMSG, HMSG, PING, PONG, +OK, -ERR, and LS+, LS-, LMSG (a peer's leaf
    nodes' interest and messages with their origin cluster, as nats-server
    sends them to a route that says C{lnoc}, as ours do).  Messages in the global account
    (C{$G}) without queue names take the loop's plain path, as a client's
    PUBs do; the others go to C{op_rmsg}, where accounts other than C{$G}
    are ignored.  Payload sizes are not held to C{max_payload} (nats-server
    trusts its peers there); control lines are.
    """

    verbs = VerbTable([
        Verb(b"RMSG", "_rmsg"),
        Verb(b"HMSG", "_hmsg"),
        Verb(b"RS+", "_rs_plus"),
        Verb(b"RS-", "_rs_minus"),
        # A leaf node's interest and messages, with the cluster they came
        # from (nats-server sends these to a route that says "lnoc").
        Verb(b"LS+", "_ls_plus"),
        Verb(b"LS-", "_rs_minus"),
        Verb(b"LMSG", "_lmsg"),
        Verb(b"A+", "_unsupported"),
        Verb(b"A-", "_unsupported"),
    ] + PEER_CONTROL_VERBS)
    message_verb = b"RMSG "
    checks_payload = False

    def message_line(self, buf: bytes, start: int, eol: int) -> MessageLine:
        # RMSG <account> <subject> [reply | + reply q1 q2... | | q1 q2...] <size>
        find = buf.find
        sp1 = find(b" ", start, eol)
        sp2 = find(b" ", sp1 + 1, eol) if sp1 > start else -1
        rsp = buf.rfind(b" ", start, eol)
        if sp2 > sp1 + 1 and rsp < eol - 1 and find(b"\t", start, eol) < 0 and find(b"\r", start, eol) < 0:
            account, subject, szb = buf[start:sp1], buf[sp1 + 1 : sp2], buf[rsp + 1 : eol]
            if sp2 == rsp:
                return subject, None, None if account == GLOBAL else (account, []), szb
            middle = split_args(buf[sp2 + 1 : rsp])
        else:
            args = split_args(buf[start:eol])
            if len(args) < 3:
                raise ProtocolViolation(None, "short RMSG")
            account, subject, szb, middle = args[0], args[1], args[-1], args[2:-1]
        reply, queues = _route_targets(middle)
        return subject, reply, None if account == GLOBAL and not queues else (account, queues), szb

    def message_extra(self, subject: bytes, reply: Optional[bytes], extra: Tuple[bytes, List[bytes]], size: int, tail: bytes) -> None:
        self._handler.op_rmsg(extra[0], subject, reply, extra[1], size, tail)

    def _rmsg(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        raise AssertionError("RMSG is the framing loop's own")

    def _hmsg(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) < 4:
            raise ProtocolViolation(None, "short HMSG")
        return self._routed_with_headers(args, buf, pos, nl)

    def _routed_with_headers(self, args: List[bytes], buf: bytes, pos: int, nl: int, plain_if_none: bool = False) -> int:
        """
        C{<account> <subject> [targets] <header size> <size>} and its
        payload: HMSG's arguments, and LMSG's after its origin.  With
        C{plain_if_none}, a header size of 0 means no headers (LMSG's
        rule): the message is a plain one.
        """
        hdr_len, size = size_of(args[-2]), size_of(args[-1])
        if hdr_len > size:
            # (nats-server refuses it too; we would hand it on to clients.)
            raise ProtocolViolation(None, "header size larger than the size")
        reply, queues = _route_targets(args[2:-2])
        end = self._payload_end(buf, pos, nl, size)
        if end >= 0:
            body = buf[nl + 1 : end]
            handler = self._handler
            if hdr_len or not plain_if_none:
                handler.op_rhmsg(args[0], args[1], reply, queues, hdr_len, size, body)
            else:
                handler.in_msgs += 1
                handler.in_bytes += size
                handler.op_rmsg(args[0], args[1], reply, queues, size, b"%d\r\n%s" % (size, body))
        return end

    def _rs_plus(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) < 2:
            raise ProtocolViolation(None, "short RS+")
        self._interest(args)
        return nl + 1

    def _interest(self, args: List[bytes], *origin: bytes) -> None:
        """C{<account> <subject> [<queue> [<weight>]]}: RS+'s arguments, and LS+'s after its origin (given)."""
        if len(args) == 2:
            self._handler.op_rs_plus(args[0], args[1], None, 1, *origin)
        else:
            weight = parse_size(args[3]) if len(args) > 3 else 1
            self._handler.op_rs_plus(args[0], args[1], args[2], max(weight, 1), *origin)

    def _ls_plus(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        # LS+ <origin cluster> <account> <subject> [<queue> <weight>]: RS+
        # with the leaf's cluster first (kept from that cluster's leaf links).
        args = split_args(buf[start:eol])
        if len(args) not in (3, 5):
            raise ProtocolViolation(None, "bad LS+")
        self._interest(args[1:], args[0])
        return nl + 1

    def _lmsg(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        # LMSG <origin> <account> <subject> [targets] <header size> <size>:
        # an HMSG with the leaf's cluster first, its header size 0 when
        # the message has no headers.
        args = split_args(buf[start:eol])
        if len(args) < 5:
            raise ProtocolViolation(None, "short LMSG")
        handler = self._handler
        handler.message_origin = args[0]
        try:
            return self._routed_with_headers(args[1:], buf, pos, nl, plain_if_none=True)
        finally:
            handler.message_origin = None

    def _rs_minus(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) < 2:
            raise ProtocolViolation(None, "short RS-")
        self._handler.op_rs_minus(args[0], args[1], args[2] if len(args) > 2 else None)
        return nl + 1

    def _unsupported(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        raise ProtocolViolation(UNKNOWN_OPERATION, "account operations are not supported on routes")


class GatewayParser(RouteParser):
    """
    Parses what a peer cluster sends on a gateway: the route verbs, and
    C{A+}/C{A-} (an account's interest, whole).  Leaf-node verbs are
    unknown operations there, as in nats-server.
    """

    verbs = VerbTable([
        Verb(b"RMSG", "_rmsg"),
        Verb(b"HMSG", "_hmsg"),
        Verb(b"RS+", "_rs_plus"),
        Verb(b"RS-", "_rs_minus"),
        Verb(b"A+", "_a_plus"),
        Verb(b"A-", "_a_minus"),
    ] + PEER_CONTROL_VERBS)

    def _a_plus(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) != 1:
            raise ProtocolViolation(None, "A+ takes one account")
        self._handler.op_account(args[0], True)
        return nl + 1

    def _a_minus(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) != 1:
            raise ProtocolViolation(None, "A- takes one account")
        self._handler.op_account(args[0], False)
        return nl + 1


class ILeafOperations(IFramedConnection, Protocol):
    """What the leaf-node verbs ask of a leaf connection (besides the loop's plain path)."""

    def op_lmsg(self, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes) -> None:
        """An LMSG naming queue groups."""

    def op_lhmsg(self, subject: bytes, reply: Optional[bytes], queues: List[bytes], hdr_len: int, total: int, body: bytes) -> None:
        """A message with headers (HMSG without an account)."""

    def op_ls_plus(self, subject: bytes, queue: Optional[bytes], weight: int) -> None:
        """Interest, with a queue group's weight (its member count)."""

    def op_ls_minus(self, subject: bytes, queue: Optional[bytes]) -> None:
        """Interest gone."""

    def op_connect(self, arg: bytes) -> Any:
        """The leaf's CONNECT (its JSON)."""

    def op_err(self, arg: bytes) -> None:
        """The other side's -ERR."""


class LeafParser(_PeerControl, Framer):
    """
    Parses what the other side of a leaf-node link sends (nats-server
    2.9's leafnode protocol, either way): INFO, CONNECT, LS+, LS-, LMSG,
    HMSG, PING, PONG, +OK, -ERR.  There is no account on the wire (a leaf
    link is bound to one, C{$G}):

        LS+ <subject> [<queue> <weight>]
        LS- <subject> [<queue>]
        LMSG <subject> [reply | + reply q1 q2... | | q1 q2...] <size>
        HMSG <subject> [the same] <header size> <size>

    An LMSG without queue names takes the loop's plain path, as a PUB does;
    one with names goes to C{op_lmsg}.  As on routes, payload sizes are
    not held to C{max_payload} (nats-server trusts an authenticated leaf
    there, and a leaf's own clients were held to its limit); control
    lines are.
    """

    verbs = VerbTable([
        Verb(b"LMSG", "_lmsg"),
        Verb(b"HMSG", "_hmsg"),
        Verb(b"LS+", "_ls_plus"),
        Verb(b"LS-", "_ls_minus"),
    ] + PEER_CONTROL_VERBS)
    message_verb = b"LMSG "
    checks_payload = False
    # (LMSG <subject> [reply] <size> is a PUB's shape: runs of them are split
    # in one go on CPython, as a client's PUBs are.)
    split_runs = sys.implementation.name == "cpython"
    not_replies = (b"|",)

    def message_line(self, buf: bytes, start: int, eol: int) -> MessageLine:
        find = buf.find
        sp = find(b" ", start, eol)
        rsp = buf.rfind(b" ", start, eol)
        if sp > start and rsp < eol - 1 and find(b"\t", start, eol) < 0 and find(b"\r", start, eol) < 0:
            subject, szb = buf[start:sp], buf[rsp + 1 : eol]
            if sp == rsp:
                return subject, None, None, szb
            middle = split_args(buf[sp + 1 : rsp])
        else:
            args = split_args(buf[start:eol])
            if len(args) < 2:
                raise ProtocolViolation(None, "short LMSG")
            subject, szb, middle = args[0], args[-1], args[1:-1]
        reply, queues = _route_targets(middle)
        return subject, reply, queues or None, szb

    def message_extra(self, subject: bytes, reply: Optional[bytes], extra: List[bytes], size: int, tail: bytes) -> None:
        self._handler.op_lmsg(subject, reply, extra, size, tail)

    def _lmsg(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        raise AssertionError("LMSG is the framing loop's own")

    def _hmsg(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) < 3:
            raise ProtocolViolation(None, "short HMSG")
        hdr_len, size = size_of(args[-2]), size_of(args[-1])
        if hdr_len > size:
            raise ProtocolViolation(None, "HMSG header size larger than its size")
        reply, queues = _route_targets(args[1:-2])
        end = self._payload_end(buf, pos, nl, size)
        if end >= 0:
            self._handler.op_lhmsg(args[0], reply, queues, hdr_len, size, buf[nl + 1 : end])
        return end

    def _ls_plus(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) == 1:
            self._handler.op_ls_plus(args[0], None, 1)
        elif len(args) == 3:
            self._handler.op_ls_plus(args[0], args[1], max(parse_size(args[2]), 1))
        else:
            raise ProtocolViolation(None, "bad LS+")
        return nl + 1

    def _ls_minus(self, buf: bytes, pos: int, start: int, eol: int, nl: int) -> int:
        args = split_args(buf[start:eol])
        if len(args) not in (1, 2):
            raise ProtocolViolation(None, "bad LS-")
        self._handler.op_ls_minus(args[0], args[1] if len(args) > 1 else None)
        return nl + 1


def split_args(line: bytes) -> List[bytes]:
    """
    Arguments split at spaces, tabs and CRs: nats-server's splitArg, for SUB,
    UNSUB and every route verb (PUB's own rule keeps a CR in a token).
    """
    return fields(line.replace(b"\r", b" "))


def _route_targets(middle: List[bytes]) -> Tuple[Optional[bytes], List[bytes]]:
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
