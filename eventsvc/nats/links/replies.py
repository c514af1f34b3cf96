"""
Replies across gateways, as nats-server 2.9 maps them (C{_GR_}).

A request whose reply subject one of our subscriptions made in the last
L{RECENT} seconds goes to other clusters with the reply
C{_GR_.<cluster hash>.<server hash>.<reply>}, so that the answer comes
straight back to this server whatever interest has or has not crossed yet.
A message arriving with such a reply is given to our subscribers with the
plain reply, and for L{RECENT} seconds a publish to that plain reply goes
straight back to the cluster it names.

L{ReplyMap} keeps both sides for one server: the recent subscriptions and
the routed replies remembered.  It knows the clock and nothing else: the
gateway manager asks it, and delivers.
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Any, Deque, Dict, Optional, Tuple

from twisted.internet.task import LoopingCall

from eventsvc.nats import timers
from eventsvc.nats.subjects import Sublist, Subscription

#: Routed replies: C{_GR_.<cluster hash>.<server hash>.<reply>}.
GR_PREFIX = b"_GR_."
HASH_LEN = 6
CLUSTER_AT = len(GR_PREFIX)
SERVER_AT = CLUSTER_AT + HASH_LEN + 1
SUBJECT_AT = SERVER_AT + HASH_LEN + 1
#: How long a subscription counts as recent (its requests' replies are
#: routed), and how long a routed reply is remembered: nats-server's 2 s.
RECENT = 2.0

_DIGITS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def gateway_hash(name: str) -> bytes:
    """nats-server's getHashSize(name, 6): the name in a routed reply."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return bytes(_DIGITS[b % 62] for b in digest[:HASH_LEN])


def routed(subject: bytes) -> bool:
    """Whether C{subject} is a routed reply (C{_GR_.} with both hashes and more)."""
    return len(subject) > SUBJECT_AT and subject[:CLUSTER_AT] == GR_PREFIX


def unwrapped(subject: bytes) -> bytes:
    """The plain subject of a routed reply (any other subject as it is)."""
    return subject[SUBJECT_AT:] if routed(subject) else subject


class ReplyMap:
    """
    The reply mapping of one server: which replies go out routed (to a
    recent subscription here), and which plain replies go back to the
    cluster that routed them.

    @ivar recent: the subscriptions made in the last L{RECENT} seconds.
    @ivar replies: routed replies given to our subscribers: plain reply ->
        (routed reply, until when).
    @ivar prefix: C{_GR_.<our cluster's hash>.<our hash>.}
    """

    def __init__(self, clock: Any, cluster: str, server_id: str) -> None:
        self.clock = clock
        self.cluster_hash = gateway_hash(cluster)
        self.server_hash = gateway_hash(server_id)
        self.prefix = GR_PREFIX + self.cluster_hash + b"." + self.server_hash + b"."
        #: When each recent subscription stops being recent, oldest first:
        #: one timer for them all (a burst of 10,000 subscriptions is not
        #: 10,000 timers).
        self.recent = Sublist()
        self._recent_until: Deque[Tuple[float, Subscription]] = deque()
        self._recent_timer: Any = None
        self.replies: Dict[bytes, Tuple[bytes, float]] = {}
        self._sweeper = LoopingCall(self._sweep)
        self._sweeper.clock = clock

    def subscribed(self, owner: Any, subject: bytes, queue: Optional[bytes]) -> None:
        """Interest on C{subject} came here: replies to it are routed for the next L{RECENT} seconds."""
        sub = Subscription(owner, subject, queue, b"")
        self.recent.insert(sub)
        self._recent_until.append((self.clock.seconds() + RECENT, sub))
        if self._recent_timer is None:
            self._recent_timer = self.clock.callLater(RECENT, self._no_longer_recent)

    def outgoing(self, reply: Optional[bytes]) -> Optional[bytes]:
        """The reply as gateways get it: routed when a recent subscription here takes it."""
        if reply is None or not self.recent.count or reply[:8] == b"$JS.ACK.":
            # (JetStream's acks are subscribed by the engine, never by a
            # client: nats-server maps only a client's replies.)
            return reply
        found = self.recent.match(reply, False)
        return self.prefix + reply if found.plain or found.queues else reply

    def strip(self, reply: Optional[bytes]) -> Optional[bytes]:
        """A reply as our subscribers see it: a routed one loses its prefix, and is remembered."""
        if reply is None or reply[:CLUSTER_AT] != GR_PREFIX or not routed(reply):
            return reply
        plain = reply[SUBJECT_AT:]
        self.replies[plain] = (reply, self.clock.seconds() + RECENT)
        if not self._sweeper.running:
            self._sweeper.start(RECENT, now=False)
        return plain

    def back(self, subject: bytes) -> bytes:
        """C{subject}, or the routed reply it answers when it is a plain reply remembered (and still fresh)."""
        known = self.replies.get(subject)
        if known is None:
            return subject
        if known[1] >= self.clock.seconds():
            return known[0]
        del self.replies[subject]
        return subject

    def ours(self, subject: bytes) -> bool:
        """Whether the routed reply C{subject} names our cluster."""
        return subject[CLUSTER_AT : CLUSTER_AT + HASH_LEN] == self.cluster_hash

    def stop(self) -> None:
        """Stop the timers (the service stops)."""
        if self._sweeper.running:
            self._sweeper.stop()
        self._recent_timer = timers.cancel(self._recent_timer)

    def _no_longer_recent(self) -> None:
        """The subscriptions made RECENT seconds ago or more leave the recent ones."""
        self._recent_timer = None
        now, until = self.clock.seconds(), self._recent_until
        while until and until[0][0] <= now:
            self.recent.remove(until.popleft()[1])
        if until:
            self._recent_timer = self.clock.callLater(until[0][0] - now, self._no_longer_recent)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for plain in [p for p, (_, until) in self.replies.items() if until < now]:
            del self.replies[plain]
        if not self.replies:
            self._sweeper.stop()
