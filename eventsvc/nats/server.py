"""
The broker: the connections of one server, their subscriptions, the
server-wide counters, and the in-process API.

Who gets a message is L{eventsvc.nats.delivery}'s (the broker is a
L{Delivery}): clients, routes, gateways and leaf links hand it what they
read, and the in-process API (L{Broker.subscribe}, L{Broker.publish}) takes
the same paths.  The event layer uses the broker through that API and never
touches a protocol object.  This module must not know about sockets, TLS,
events or authentication.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from operator import attrgetter
from base64 import b32encode
from typing import Any, Callable, Deque, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from twisted.logger import Logger

from eventsvc import __version__
from eventsvc.nats.advertise import ConnectURLs
from eventsvc.nats.delivery import Delivery, Plan, plan
from eventsvc.nats.frames import Message
from eventsvc.nats.interfaces import ISource, ISubscriber
from eventsvc.nats.kinds import Kind
from eventsvc.nats.links.jsdomain import split_ack_reply
from eventsvc.nats.subjects import Sublist, Subscription, literal_tokens, valid_literal_subject, valid_subject

#: nats-server's status message for a request nobody answered.
NO_RESPONDERS_STATUS = b"NATS/1.0 503\r\n\r\n"

MessageCallback = Callable[[str, Optional[str], bytes, Optional[bytes]], None]
#: L{Broker.subscribe_raw}'s: the subject and reply as they came, bytes.
RawMessageCallback = Callable[[bytes, Optional[bytes], bytes, Optional[bytes]], None]


def new_server_id() -> str:
    """A random id shaped like nats-server's (56 upper-case base32 characters)."""
    return "N" + b32encode(os.urandom(35)).decode("ascii")[:55]


class _Figures(NamedTuple):
    """The figures L{ClosedConnection} keeps, in the order they are read off a connection."""

    cid: int
    peer: Any
    start: float
    last_activity: float
    stopped: float
    close_reason: str
    rtt: float
    in_msgs: int
    out_msgs: int
    in_bytes: int
    out_bytes: int
    name: Optional[str]
    lang: Optional[str]
    client_version: Optional[str]
    identity: Any
    listener: Optional[str]
    websocket: Optional[bool]


#: A connection's figures, all read in one C call (L{ClosedConnection.of}).
_read_figures = attrgetter(*_Figures._fields)


class ClosedConnection(_Figures):
    """
    What monitoring shows of a closed client connection: its figures, not
    the connection.  Keeping the connections themselves (their transports,
    parsers, settings and buffers), 10,000 of them, made each full pass of
    the garbage collector stall every client for 180 ms.

    A tuple, not an object with slots: a fleet connecting and closing makes
    one a connection, and copying seventeen attributes one by one was 4% of
    a plaintext connection's CPU on CPython.
    """

    __slots__ = ()
    closed = True
    pending_bytes = 0
    #: A client's subscriptions are gone by the time it is closed.
    subs: Tuple[Subscription, ...] = ()

    @classmethod
    def of(cls, conn: Any) -> "ClosedConnection":
        """C{conn}'s figures, as they are now (None for any it does not have)."""
        try:
            figures = _read_figures(conn)
        except AttributeError:
            figures = tuple(getattr(conn, name, None) for name in _Figures._fields)
        return tuple.__new__(cls, figures)


class LocalSubscriber:
    """
    The owner of in-process subscriptions: messages are handed to a callback
    instead of being framed for a socket.
    """

    log = Logger()
    kind = Kind.IN_PROCESS
    cid = 0
    cluster_origin = b""
    message_origin: Optional[bytes] = None
    frame_head = b""
    may_receive: Optional[Callable[[bytes], bool]] = None
    echo = True
    headers = True
    dirty = False
    in_msgs = 0
    in_bytes = 0
    out_msgs = 0
    out_bytes = 0

    def __init__(self, broker: "Broker") -> None:
        self._broker = broker
        self.out: List[bytes] = []
        #: Callbacks by subscription (L{RawLocalSubscriber}'s take bytes).
        self.subs: Dict[Subscription, Any] = {}

    def remove_subscription(self, sub: Subscription) -> None:
        """End C{sub}: its callback is forgotten and the index lets it go."""
        self.subs.pop(sub, None)
        self._broker.remove_subscription(sub)

    def flush(self) -> bool:
        """Nothing to write: callbacks were called as messages came."""
        return False

    def hand(self, sub: Subscription, message: Message) -> int:
        """Call C{sub}'s callback with C{message}; returns 1 (0: the subscription is gone)."""
        callback = self.subs.get(sub)
        if callback is None:
            return 0
        payload, headers = message.parts()
        return self._call(sub, callback, message.subject, message.reply, payload, headers, message.size)

    def hand_tail(self, sub: Subscription, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        """L{hand} for a message without headers as L{Delivery.deliver} has it (C{tail}: C{b"<size>\\r\\n<payload>\\r\\n"})."""
        # (_call written out: each message a stream stores is this.)
        callback = self.subs.get(sub)
        if callback is None:
            return 0
        try:
            # (UTF-8 without naming it, which CPython parses for each call;
            # bytes that are not UTF-8 shown with U+FFFD, as _call shows them.)
            text = subject.decode()
            reply_text = None if reply is None else reply.decode()
        except UnicodeDecodeError:
            text = subject.decode("utf-8", "replace")
            reply_text = None if reply is None else reply.decode("utf-8", "replace")
        try:
            # (The payload is the tail's last size bytes before its CRLF:
            # a slice, without bytes.index, which CPython parses arguments for.)
            callback(text, reply_text, tail[-2 - size : -2], None)
        except Exception:
            self.log.failure("in-process subscriber for {subject} failed", subject=sub.subject)
        self.out_msgs += 1
        self.out_bytes += size
        return 1

    def _call(
        self, sub: Subscription, callback: MessageCallback, subject: bytes, reply: Optional[bytes], payload: bytes,
        headers: Optional[bytes], size: int,
    ) -> int:
        try:
            callback(
                subject.decode("utf-8", "replace"),
                None if reply is None else reply.decode("utf-8", "replace"),
                payload,
                headers,
            )
        except Exception:
            self.log.failure("in-process subscriber for {subject} failed", subject=sub.subject)
        self.out_msgs += 1
        self.out_bytes += size
        return 1

    def stall(self, consumer: Any) -> None:
        """Nothing to stall: the in-process API does not read."""


class RawLocalSubscriber(LocalSubscriber):
    """
    The owner of in-process subscriptions whose callbacks take the subject
    and reply as bytes (L{Broker.subscribe_raw}): not decoded a message.
    """

    def _call(
        self, sub: Subscription, callback: Any, subject: bytes, reply: Optional[bytes], payload: bytes,
        headers: Optional[bytes], size: int,
    ) -> int:
        try:
            callback(subject, reply, payload, headers)
        except Exception:
            self.log.failure("in-process subscriber for {subject} failed", subject=sub.subject)
        self.out_msgs += 1
        self.out_bytes += size
        return 1

    def hand_tail(self, sub: Subscription, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        # (_call written out: a JetStream ack is this and little more.)
        callback = self.subs.get(sub)
        if callback is None:
            return 0
        try:
            # (The payload is the tail's last size bytes before its CRLF, as
            # in LocalSubscriber.hand_tail: bytes.index costs CPython some
            # 900 instructions a call in argument parsing.)
            callback(subject, reply, tail[-2 - size : -2], None)
        except Exception:
            self.log.failure("in-process subscriber for {subject} failed", subject=sub.subject)
        self.out_msgs += 1
        self.out_bytes += size
        return 1


class LocalSubscription:
    """An in-process subscription; C{unsubscribe()} ends it."""

    def __init__(self, owner: LocalSubscriber, sub: Subscription) -> None:
        self._owner = owner
        self._sub = sub

    def unsubscribe(self) -> None:
        """End the subscription (once; later calls do nothing)."""
        if self._sub in self._owner.subs:
            self._owner.remove_subscription(self._sub)


class Broker(Delivery):
    """
    The connections of one server, their subscriptions and counters, and
    the in-process API; who gets a message is L{Delivery}'s.

    @ivar in_msgs: messages received by connections since closed and by the
        in-process API; L{totals} adds the live connections'.
    """

    log = Logger()

    def __init__(self, server_id: Optional[str] = None, server_name: str = "") -> None:
        self.server_id = server_id or new_server_id()
        self.server_name = server_name or self.server_id
        self.version = "2.9.10"
        self.implementation = "eventsvc/{} {} {}".format(
            __version__,
            sys.implementation.name,
            ".".join(map(str, sys.implementation.version[:3])),
        )
        Delivery.__init__(self, Sublist())
        self._local = LocalSubscriber(self)
        self._raw_local = RawLocalSubscriber(self)
        self.in_msgs = 0
        self.in_bytes = 0
        self.out_msgs = 0
        self.out_bytes = 0
        self.slow_consumers = 0
        self.clients: Dict[int, ISubscriber] = {}
        #: The most recently closed connections (for /connz?state=closed).
        self.closed: Deque[ClosedConnection] = deque(maxlen=10000)
        self._next_cid = 0
        self._local_sids = 0
        # Local interest by (subject, queue), and who wants to hear of changes (routes).
        self._interest: Dict[Tuple[bytes, Optional[bytes]], int] = {}
        self._interest_origins: Dict[Tuple[bytes, Optional[bytes]], bytes] = {}
        self.interest_listeners: List[Callable[[bytes, Optional[bytes], int, int], None]] = []
        #: The cluster's client URLs (INFO connect_urls), kept by the routes.
        self.connect_urls = ConnectURLs()
        self.connect_urls.on_change = self._connect_urls_changed
        #: The cluster's name, once this server is in one (client INFO says it).
        self.cluster_name = ""
        #: Whether this server has leaf nodes (a leaf listener or remotes:
        #: nats-server's leafNodeEnabled), set by the leaf manager while it runs.
        self.leafnodes_enabled = False
        #: Who hears of interest that routes told us (gateways pass on the
        #: whole cluster's): (subject, queue, +1 or -1).
        self.remote_interest_listeners: List[Callable[[bytes, Optional[bytes], int], None]] = []
        #: Who hears of every subscription in the index, whoever owns it
        #: (the leaf nodes, which are told interest per owner): (sub, +1 or -1).
        self.subscription_listeners: List[Callable[[Subscription, int], None]] = []
        # deliver_as's plans by (deliver subject, shown subject), for one index generation.
        self._deliver_plans: Dict[Tuple[bytes, bytes], Tuple[Plan, bool]] = {}
        self._deliver_plans_genid = -1

    # -- connections --------------------------------------------------------

    def register(self, conn: ISubscriber) -> int:
        """Add a connection; returns its id (never reused)."""
        self._next_cid += 1
        self.clients[self._next_cid] = conn
        return self._next_cid

    def unregister(self, conn: ISubscriber) -> None:
        """A connection closed: its figures join the server's, and /connz keeps them among the closed."""
        cid = conn.cid
        if self.clients.get(cid) is conn:
            del self.clients[cid]
            self.in_msgs += conn.in_msgs
            self.in_bytes += conn.in_bytes
            self.out_msgs += conn.out_msgs
            self.out_bytes += conn.out_bytes
            self.closed.append(ClosedConnection.of(conn))

    def _connect_urls_changed(self) -> None:
        """Tell every client that understands async INFO (nats-server does)."""
        for conn in list(self.clients.values()):
            changed = getattr(conn, "cluster_changed", None)
            if changed is not None:
                changed()
        self.flush()

    def totals(self) -> Dict[str, int]:
        """Server-wide counters, live connections included."""
        live = list(self.clients.values())
        return {
            "in_msgs": self.in_msgs + sum(c.in_msgs for c in live),
            "in_bytes": self.in_bytes + sum(c.in_bytes for c in live),
            "out_msgs": self.out_msgs + self._local.out_msgs + self._raw_local.out_msgs + sum(c.out_msgs for c in live),
            "out_bytes": self.out_bytes + self._local.out_bytes + self._raw_local.out_bytes + sum(c.out_bytes for c in live),
            "slow_consumers": self.slow_consumers,
            "subscriptions": self.sublist.count,
            "connections": len(live),
            "total_connections": self._next_cid,
        }

    # -- subscriptions ------------------------------------------------------

    def add_subscription(self, sub: Subscription) -> None:
        """A local subscription (a client's, in-process, a leaf's): routes hear of it."""
        self.sublist.insert(sub)
        self._interest_changed(sub.subject, sub.queue, +1, sub.origin)
        for listener in self.subscription_listeners:
            listener(sub, 1)

    def remove_subscription(self, sub: Subscription) -> None:
        """End a local subscription: routes hear of it, and whoever listens for subscriptions."""
        if self.sublist.remove(sub):
            self._interest_changed(sub.subject, sub.queue, -1)
            for listener in self.subscription_listeners:
                listener(sub, -1)

    def remove_subscriptions(self, subs: List[Subscription]) -> None:
        """Several local subscriptions at once (a closing connection's): one index change."""
        for sub in self.sublist.remove_many(subs):
            self._interest_changed(sub.subject, sub.queue, -1)
            for listener in self.subscription_listeners:
                listener(sub, -1)

    def add_remote_subscription(self, sub: Subscription, gateways: bool = True) -> None:
        """
        Interest a route (or a hub) told us about: not announced to routes;
        to gateways unless C{gateways} is false (a hub's interest is its
        cluster's, not ours to offer).
        """
        self.sublist.insert(sub)
        if gateways:
            for listener in self.remote_interest_listeners:
                listener(sub.subject, sub.queue, 1)
        for subscribed in self.subscription_listeners:
            subscribed(sub, 1)

    def remove_remote_subscription(self, sub: Subscription, gateways: bool = True) -> None:
        """End interest a route (or a hub) told us about: as L{add_remote_subscription}, the other way."""
        if self.sublist.remove(sub):
            if gateways:
                for listener in self.remote_interest_listeners:
                    listener(sub.subject, sub.queue, -1)
            for subscribed in self.subscription_listeners:
                subscribed(sub, -1)

    def _interest_changed(self, subject: bytes, queue: Optional[bytes], delta: int, origin: Optional[bytes] = None) -> None:
        key = (subject, queue)
        before = self._interest.get(key, 0)
        after = before + delta
        if after > 0:
            self._interest[key] = after
            if before == 0 and origin:
                self._interest_origins[key] = origin
        else:
            self._interest.pop(key, None)
        for listener in self.interest_listeners:
            listener(subject, queue, before, after)
        if after <= 0:
            # (After the listeners: a route's LS- needs it.)
            self._interest_origins.pop(key, None)

    def interest_origin(self, subject: bytes, queue: Optional[bytes]) -> Optional[bytes]:
        """
        The leaf cluster whose subscription first made this local interest
        (routes say it, as C{LS+ <origin>}, so that the cluster's other leaf
        links are not told of it), or None.
        """
        return self._interest_origins.get((subject, queue))

    def local_interest(self) -> List[Tuple[bytes, Optional[bytes], int]]:
        """Every (subject, queue, count) of local subscriptions: what a new route is told."""
        return [(subject, queue, n) for (subject, queue), n in self._interest.items()]

    # -- the in-process API -------------------------------------------------

    def subscribe(
        self, subject: str, callback: MessageCallback, queue: Optional[str] = None
    ) -> LocalSubscription:
        """
        Call C{callback(subject, reply, payload, headers)} for every message
        on C{subject} (wildcards allowed), in queue group C{queue} if given.
        The callback runs in the reactor thread and must not block.
        """
        return self._subscribe_as(self._local, subject, callback, queue)

    def subscribe_raw(self, subject: str, callback: RawMessageCallback) -> LocalSubscription:
        """
        L{subscribe}, the callback given the subject and reply as bytes,
        as they came (C{callback(subject, reply, payload, headers)}): for
        a subscriber that reads them as bytes (a JetStream consumer's
        acks), which then pays for no decoding a message.
        """
        return self._subscribe_as(self._raw_local, subject, callback)

    def _subscribe_as(
        self, owner: LocalSubscriber, subject: str, callback: Any, queue: Optional[str] = None,
    ) -> LocalSubscription:
        bsubject = subject.encode("utf-8")
        if not valid_subject(bsubject):
            raise ValueError("invalid subject {!r}".format(subject))
        self._local_sids += 1
        sid = str(self._local_sids).encode("ascii")
        sub = Subscription(owner, bsubject, queue.encode("utf-8") if queue else None, sid)
        owner.subs[sub] = callback
        self.add_subscription(sub)
        return LocalSubscription(owner, sub)

    def publish(
        self,
        subject: str,
        payload: bytes,
        reply: Optional[str] = None,
        headers: Optional[bytes] = None,
    ) -> int:
        """
        Publish from inside the process; returns the number of subscribers
        reached.  C{headers} is a complete C{NATS/1.0} header block.
        """
        bsubject = subject.encode("utf-8")
        if not valid_literal_subject(bsubject):
            raise ValueError("invalid publish subject {!r}".format(subject))
        breply = reply.encode("utf-8") if reply else None
        self.in_msgs += 1
        self.in_bytes += len(payload)
        if headers:
            body = headers + payload + b"\r\n"
            count = self.deliver_message(
                self._local, bsubject, breply, len(headers) + len(payload), b"", len(headers), body
            )
        else:
            tail = b"%d\r\n%s\r\n" % (len(payload), payload)
            count = self.deliver(self._local, bsubject, breply, len(payload), tail)
        self.flush()
        return count

    def publish_many(self, messages: Sequence[Tuple[str, bytes]]) -> None:
        """
        Publish several (subject, payload) messages from inside the process,
        with no reply subject or headers, and write them out together: one
        flush, not one per message (the event service's acknowledgements of
        one group commit).  A subject that is not a valid literal one (a
        reply subject with a wildcard, say) is skipped and logged: it
        cannot cost the others their messages.
        """
        deliver, plan, plans = self.deliver, self._plan, self._targets
        match, once_plans = self.sublist.match, self._once_plans
        local = self._local
        # (Without gateways a plan of local subscribers is all a message
        # goes to: deliver()'s own test.)
        alone = self.gateways is None
        count = size = 0
        for subject, payload in messages:
            bsubject = subject.encode()
            # (Its tokens, if it is a literal subject: the match below
            # takes them, not a split of its own.)
            tokens = literal_tokens(bsubject)
            if tokens is None:
                self.log.warn("in-process publish to {subject!r} skipped: not a valid literal subject", subject=subject)
                continue
            count += 1
            n = len(payload)
            size += n
            # Reply inboxes are used once: their plans are not kept, where
            # they would only push out the plans of subjects that are busy.
            targets = plans.get(bsubject)
            if targets is None:
                # (L{_plan} of a used-once subject, its usual case inline:
                # a PubAck to the inbox of a client whose last inbox had
                # the same match takes that plan, renamed.)
                result = match(bsubject, False, tokens)
                once = once_plans.get(id(result))
                if once is not None and once[0] is result and once[1].callback is None:
                    kept = once[1]
                    one = kept.one
                    if one is not None and alone:
                        # One local subscriber alone (the client's inbox
                        # subscription): what deliver() does with the
                        # renamed plan, without making it or the call, in
                        # one piece: one format costs CPython 3.11 a third
                        # less than the prefix's three concatenations and
                        # the tail's format (PyPy level).  (The process's
                        # own source has echo.)
                        conn, _, append = one
                        append(b"MSG %s %s %d\r\n%s\r\n" % (bsubject, kept.plain_subs[0].sid, n, payload))
                        conn.out_msgs += 1
                        conn.out_bytes += n
                        if not conn.dirty:
                            conn.dirty = True
                            self._dirty.append(conn)
                        continue
                    targets = kept.renamed(bsubject)
                else:
                    targets = plan(bsubject, keep=False)
            deliver(local, bsubject, None, n, b"%d\r\n%s\r\n" % (n, payload), targets)
        self.in_msgs += count
        self.in_bytes += size
        self.flush()

    def has_interest(self, subject: str) -> bool:
        """
        Whether anyone (a client, a link, the in-process API) subscribes to
        the literal C{subject}, or a gateway would take it (as nats-server's
        C{hasDeliveryInterest} asks the gateways too).
        """
        bsubject = subject.encode("utf-8")
        result = self.sublist.match(bsubject, keep=False)
        return bool(result.plain or result.queues) or (self.gateways is not None and self.gateways.has_interest(bsubject))

    def deliver_as(
        self, deliver_subject: str, subject: str, payload: bytes, reply: Union[str, bytes, None] = None,
        headers: Optional[bytes] = None, flush: bool = True, source: Optional[ISource] = None,
        queues: Sequence[bytes] = (),
    ) -> int:
        """
        Publish from inside the process to the subscribers of
        C{deliver_subject}, who see the message on C{subject}: JetStream's
        deliveries, which carry the stream message's subject to a consumer's
        deliver subject or a pull request's inbox (nats-server's
        C{pa.deliver}).  Returns the number of subscribers reached.
        C{flush=False}: the caller delivers several and calls L{flush} once.
        C{source}: who it comes from, when a link brought it (its no-echo
        and one-hop rules hold), else the process itself; C{queues}: the
        queue groups that link's frame named.  C{reply} may be bytes
        already (a consumer's ack reply is made so).

        Routes, gateways and leaf links (queue members or not) are sent the
        message on C{deliver_subject} and, when it has a reply,
        C{<reply>@<subject>}, as nats-server 2.9 sends it
        (C{processMsgResults}, C{processInboundClientMsg}): the far side
        shows its subscribers C{subject} again (L{deliver_crossed}).
        """
        bsubject = subject.encode("utf-8")
        key = (deliver_subject.encode("utf-8"), bsubject)
        targets, crosses = self._deliver_plan(key)
        breply = (reply if isinstance(reply, bytes) else reply.encode("utf-8")) if reply else None
        self.in_msgs += 1
        self.in_bytes += len(payload)
        src = self._local if source is None else source
        if crosses or queues or self.gateways is not None:
            if headers:
                size, tail, hdr_len, body = len(headers) + len(payload), b"", len(headers), headers + payload + b"\r\n"
            else:
                size, tail, hdr_len, body = len(payload), b"%d\r\n%s\r\n" % (len(payload), payload), -1, b""
            message = Message(bsubject, breply, size, tail, hdr_len, body)
            routed = Message(key[0], breply + b"@" + bsubject if breply else None, size, tail, hdr_len, body)
            count = self._general(src, targets, message, routed, queues)
        else:
            count = self._deliver_message(src, targets, bsubject, breply, payload, headers)
        if flush:
            self.flush()
        return count

    def limit_changed(self, pattern: Optional[bytes] = None) -> None:
        """
        L{Delivery.limit_changed}, and L{deliver_as}'s plans go too: they
        are kept for one index generation, and a maximum set by UNSUB or
        permissions reloaded leave the index's generation as it was (a
        push consumer's subscriber auto-unsubscribing got every message
        after its maximum; a subject denied by a reload was still
        delivered by a consumer).
        """
        Delivery.limit_changed(self, pattern)
        self._deliver_plans.clear()

    def _deliver_plan(self, key: Tuple[bytes, bytes]) -> Tuple[Plan, bool]:
        """
        L{deliver_as}'s plan of C{key}, (deliver subject, shown subject),
        and whether a link takes part; kept for one index generation.
        """
        if self.sublist.genid != self._deliver_plans_genid or len(self._deliver_plans) > 4096:
            self._deliver_plans.clear()
            self._deliver_plans_genid = self.sublist.genid
        plans = self._deliver_plans.get(key)
        if plans is None:
            result = self.sublist.match(key[0], keep=False)
            targets = plan(key[1], result.plain, result.queues)
            crosses = bool(targets.route_plain or targets.leaf_plain or targets.route_mixed
                           or any(routes for _, routes in targets.queue_info))
            plans = self._deliver_plans[key] = (targets, crosses)
        return plans

    def deliver_as_many(
        self, deliver_subject: str, messages: Sequence[Tuple[str, bytes, Optional[bytes], Optional[bytes]]],
    ) -> List[int]:
        """
        L{deliver_as} (C{flush=False}) for several messages to one deliver
        subject, each C{(subject, payload, reply, headers)} (C{reply}
        bytes), in order: a
        pull request's batch.  Returns each one's count of subscribers
        reached.  Messages without headers whose plan is plain local
        subscribers alone go to L{deliver} with one plan lookup for all
        that show the same subject; any other goes through L{deliver_as},
        and so the rule.
        """
        bdeliver = deliver_subject.encode("utf-8")
        counts: List[int] = []
        if self.gateways is not None:
            for subject, payload, reply, headers in messages:
                counts.append(self.deliver_as(deliver_subject, subject, payload, reply, headers, flush=False))
            return counts
        shown = ""
        bshown = b""
        targets: Optional[Plan] = None
        local = False
        src = self._local
        for subject, payload, reply, headers in messages:
            if subject != shown or targets is None:
                shown = subject
                bshown = subject.encode("utf-8")
                targets, crosses = self._deliver_plan((bdeliver, bshown))
                local = targets.local and not crosses
            if headers or not local:
                counts.append(self.deliver_as(deliver_subject, subject, payload, reply, headers, flush=False))
                continue
            size = len(payload)
            self.in_msgs += 1
            self.in_bytes += size
            counts.append(self.deliver(src, bshown, reply or None, size, b"%d\r\n%s\r\n" % (size, payload), targets))
        return counts

    def deliver_crossed(
        self, src: ISource, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes], size: int, tail: bytes,
        hdr_len: int, body: bytes,
    ) -> Optional[int]:
        """
        A message a route, gateway or leaf link brought on C{subject}: when
        it is a JetStream delivery as nats-server frames it across links
        (the reply C{$JS.ACK...@<stream subject>}), it is delivered to the
        subscribers of C{subject} showing the stream subject and the plain
        ack reply (nats-server's C{processMsgResults} does the same for
        every kind of link) and the count is returned; otherwise None and
        nothing is done.  The caller flushes.
        """
        split = split_ack_reply(reply) if reply is not None else None
        if split is None:
            return None
        ack, shown = split
        if hdr_len < 0:
            payload, headers = tail[tail.index(b"\r\n") + 2:-2], None
        else:
            payload, headers = body[hdr_len:size], body[:hdr_len]
        return self.deliver_as(
            subject.decode("utf-8", "replace"), shown.decode("utf-8", "replace"), payload,
            ack.decode("utf-8", "replace"), headers, flush=False, source=src, queues=queues,
        )

    def _deliver_message(
        self, src: ISource, targets: Plan, subject: bytes, reply: Optional[bytes], payload: bytes, headers: Optional[bytes],
    ) -> int:
        """One message from C{src} to C{targets} (L{deliver_as}'s two plans)."""
        if headers:
            body = headers + payload + b"\r\n"
            message = Message(subject, reply, len(headers) + len(payload), b"", len(headers), body)
            return self._general(src, targets, message, message, ())
        tail = b"%d\r\n%s\r\n" % (len(payload), payload)
        return self.deliver(src, subject, reply, len(payload), tail, targets)
