"""
Every line the engine writes, in one place: the mirror of L{parser}.

Messages to a client (C{MSG}, C{HMSG}), to a route or a gateway (C{RMSG},
C{HMSG $G}), to a leaf (C{LMSG}, C{HMSG}), and to a route with the leaf
cluster a message came from (C{LMSG <origin> $G}); interest (C{RS+}/C{RS-},
C{LS+}/C{LS-}), a gateway's account interest (C{A+}/C{A-}), and C{INFO} as
clients, routes and leafs read it and as gateways write it.  The hot paths
do not call into this module per message: a delivery plan holds the
prefixes made here (L{msg_head}, L{rmsg_head}, L{lmsg_head}) and appends
the tail after them.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional, Sequence, Tuple

#: The verb of a message to a route or a gateway (in the global account), and to a leaf.
RMSG = b"RMSG $G "
LMSG = b"LMSG "


def info_line(info: Dict[str, Any]) -> bytes:
    """An C{INFO} to a client, a route or a leaf, as nats-server writes one (a space before CRLF)."""
    return b"INFO " + json.dumps(info, separators=(",", ":")).encode("utf-8") + b" \r\n"


def gateway_info_line(info: Dict[str, Any]) -> bytes:
    """A gateway C{INFO}, as nats-server writes one (no space before CRLF)."""
    return b"INFO " + json.dumps(info, separators=(",", ":")).encode("utf-8") + b"\r\n"


def err_line(text: str) -> bytes:
    """C{-ERR '<text>'}: what a client or a peer is told of an error."""
    return b"-ERR '" + text.encode("utf-8") + b"'\r\n"


def connect_line(options: Dict[str, Any], compact: bool = True) -> bytes:
    """A C{CONNECT} to a peer (a route's is written as nats-server's Go did once, with spaces: C{compact} false)."""
    separators = (",", ":") if compact else None
    return b"CONNECT " + json.dumps(options, separators=separators).encode("utf-8") + b"\r\n"


def msg_head(subject: bytes) -> bytes:
    """C{MSG <subject> }: with a sid, the prefix of a client's frames for one subscription."""
    return b"MSG " + subject + b" "


def rmsg_head(subject: bytes) -> bytes:
    """C{RMSG $G <subject> }: the prefix of a route's frames for a subject."""
    return RMSG + subject + b" "


def lmsg_head(subject: bytes) -> bytes:
    """C{LMSG <subject> }: the prefix of a leaf's frames for a subject."""
    return LMSG + subject + b" "


def client_message(prefix: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes, headers: bool) -> bytes:
    """
    A message to a client whose frame starts C{prefix} (C{MSG <subject>
    <sid> }): C{tail} (C{b"<size>\\r\\n<payload>\\r\\n"}), or with headers
    (C{hdr_len} >= 0) C{body}, as C{HMSG} when the client negotiated
    C{headers}, else as C{MSG} without them.
    """
    middle = b"" if reply is None else reply + b" "
    if hdr_len < 0:
        return prefix + middle + tail
    if headers:
        return b"H%s%s%d %d\r\n%s" % (prefix, middle, hdr_len, size, body)
    return prefix + middle + b"%d\r\n%s" % (size - hdr_len, body[hdr_len:])


def routed_middle(reply: Optional[bytes], queues: Sequence[bytes]) -> bytes:
    """What a link's message line says between its subject and its sizes: the reply, and the queue groups it names."""
    if queues:
        return (b"+ " + reply + b" " if reply is not None else b"| ") + b" ".join(queues) + b" "
    return b"" if reply is None else reply + b" "


def link_message(
    head: bytes, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes], size: int, tail: bytes,
    hdr_len: int, body: bytes, origin: Optional[bytes] = None, headers: bool = True,
) -> bytes:
    """
    A message to a route or a gateway (C{head} L{RMSG}) or to a leaf
    (L{LMSG}), naming C{queues} if any: C{tail}, or with headers C{body}
    as C{HMSG} (as C{RMSG} without them when the peer does not take
    C{headers}).  With C{origin} (a message from a leaf of that cluster, to
    a route): C{LMSG <origin> $G ...} with its header size, as nats-server
    sends a route that says lnoc.
    """
    middle = routed_middle(reply, queues)
    if origin:
        if hdr_len < 0:
            return b"LMSG " + origin + b" $G " + subject + b" " + middle + b"0 " + tail
        return b"LMSG %s $G %s %s%d %d\r\n%s" % (origin, subject, middle, hdr_len, size, body)
    if hdr_len < 0:
        return head + subject + b" " + middle + tail
    if headers:
        return b"H%s%s %s%d %d\r\n%s" % (head[1:], subject, middle, hdr_len, size, body)
    return b"%s%s %s%d\r\n%s" % (head, subject, middle, size - hdr_len, body[hdr_len:])


def no_responders(reply: bytes, sid: bytes, status: bytes) -> bytes:
    """The C{HMSG} that tells a requester nobody answered (C{status}: the 503 header block)."""
    return b"HMSG %s %s %d %d\r\n%s\r\n" % (reply, sid, len(status), len(status), status)


def rs_line(subject: bytes, queue: Optional[bytes], count: int, origin: Optional[bytes] = None) -> bytes:
    """
    Interest on a route or a gateway (in C{$G}): C{RS+} (with a queue
    group's count) or, when C{count} is 0, C{RS-}; with
    C{origin} (a leaf of that cluster made the interest, and the peer reads
    origins), C{LS+ <origin>}/C{LS-}, so that the peer keeps it from its own
    links to that cluster.
    """
    if count <= 0:
        verb = b"LS- $G " if origin else b"RS- $G "
        return verb + subject + (b"\r\n" if queue is None else b" " + queue + b"\r\n")
    head = b"LS+ " + origin + b" $G " if origin else b"RS+ $G "
    if queue is None:
        return head + subject + b"\r\n"
    return head + b"%s %s %d\r\n" % (subject, queue, count)


def ls_line(key: bytes, n: int) -> bytes:
    """Interest on a leaf link: C{LS+ key} (with the count when C{key} names a queue group), or C{LS- key} when C{n} is 0."""
    if n <= 0:
        return b"LS- " + key + b"\r\n"
    if b" " in key:
        return b"LS+ %s %d\r\n" % (key, n)
    return b"LS+ " + key + b"\r\n"


def account_line(account: bytes, interested: bool) -> bytes:
    """A gateway's interest in a whole account: C{A+ <account>} or C{A- <account>}."""
    return (b"A+ " if interested else b"A- ") + account + b"\r\n"


class Message:
    """
    A message on the general delivery path, framed lazily for each kind of
    subscriber: a client's frame (L{frame}), a link's (L{route_frame}), or
    its parts for an in-process callback (L{parts}).
    """

    __slots__ = ("subject", "reply", "size", "tail", "hdr_len", "body")

    def __init__(self, subject, reply, size, tail, hdr_len, body):
        self.subject: bytes = subject
        self.reply: Optional[bytes] = reply
        self.size: int = size
        self.tail: bytes = tail
        self.hdr_len: int = hdr_len  # -1: no headers
        self.body: bytes = body

    def frame(self, prefix: bytes, headers: bool) -> bytes:
        """The message to a client whose frame starts C{prefix}; without its headers unless C{headers}."""
        return client_message(prefix, self.reply, self.size, self.tail, self.hdr_len, self.body, headers)

    def route_frame(self, queues: Sequence[bytes], head: bytes = RMSG, origin: Optional[bytes] = None) -> bytes:
        """The message to a route (C{head} L{RMSG}) or a leaf (L{LMSG}), naming C{queues}: see L{link_message}."""
        return link_message(head, self.subject, self.reply, queues, self.size, self.tail, self.hdr_len, self.body, origin)

    def parts(self) -> Tuple[bytes, Optional[bytes]]:
        """The payload and the header block (or None)."""
        if self.hdr_len < 0:
            return self.tail[self.tail.index(b"\n") + 1 : -2], None
        return self.body[self.hdr_len : -2], self.body[: self.hdr_len]
