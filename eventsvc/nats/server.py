"""
The broker: the subscription index, the connections, and message delivery.

A publish is matched against the index once per subject (the index caches
matches), turned into per-subscriber frames once per subject (cached here
until the index changes), and appended to each subscriber's output list.
Nothing is written until L{Broker.flush}, which the connection that received
the publishes calls once per read, so a read carrying a thousand PUBs causes
one write per subscriber, not a thousand.

The event layer uses the broker through L{Broker.subscribe} and
L{Broker.publish}, the same paths as a network client, and never touches a
protocol object.  This module must not know about sockets, TLS, events or
authentication.
"""

from __future__ import annotations

import os
import random
import sys
from collections import deque
from base64 import b32encode
from typing import Any, Callable, Deque, Dict, List, Optional, Protocol, Sequence, Tuple

from twisted.logger import Logger

from eventsvc import __version__
from eventsvc.nats.advertise import ConnectURLs
from eventsvc.nats.interfaces import ISource, ISubscriber
from eventsvc.nats.kinds import Kind
from eventsvc.nats.subjects import SubjectCache, Sublist, Subscription, valid_literal_subject, valid_subject

#: nats-server's status message for a request nobody answered.
NO_RESPONDERS_STATUS = b"NATS/1.0 503\r\n\r\n"

MessageCallback = Callable[[str, Optional[str], bytes, Optional[bytes]], None]

#: How many subjects' delivery plans are kept: enough for a fleet of ten
#: thousand devices publishing each to its own subject (about 600 bytes a
#: plan with one subscriber).
PLAN_CACHE_SIZE = 16384


def new_server_id() -> str:
    """A random id shaped like nats-server's (56 upper-case base32 characters)."""
    return "N" + b32encode(os.urandom(35)).decode("ascii")[:55]


class IGatewayForwarder(Protocol):
    """What the broker asks of the gateways (L{eventsvc.nats.gateway.GatewayManager})."""

    def forward(
        self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes,
        targets: "_Targets",
    ) -> int:
        """
        Offer a message (C{tail}, or with headers C{hdr_len} and C{body}) to
        every gateway with interest in it; C{targets} is its plan here, whose
        queue groups this cluster serves.  Returns how many gateways took it.
        """

    def forward_batch(self, subject: bytes, tails: List[bytes], size: int, targets: "_Targets") -> None:
        """The same for several messages to one subject without a reply (C{size}: their payloads' total)."""


class _Targets:
    """
    The delivery plan for one subject: per plain subscriber the frame prefix
    C{b"MSG <subject> <sid> "}, the queue groups, and the routes.
    C{simple} is false when a subscriber is in-process or has an
    auto-unsubscribe maximum, or when routes take part in a queue group:
    the fast loops handle none of those.
    """

    __slots__ = (
        "plain", "plain_subs", "queues", "queue_info", "simple", "route_plain", "route_mixed", "leaf_plain", "local",
    )

    def __init__(self, plain, plain_subs, queues, simple, route_plain=(), route_mixed=(), queue_info=(), leaf_plain=()):
        #: (subscriber, frame prefix, the subscriber's out.append)
        self.plain: List[Tuple[ISubscriber, bytes, Callable[[bytes], None]]] = plain
        self.plain_subs: List[Subscription] = plain_subs
        #: Per group, its local members: [(member, prefix, subscription)].
        self.queues: List[List[Tuple[ISubscriber, bytes, Subscription]]] = queues
        #: Per group (same order): its name and the routes and leafs with members in it.
        self.queue_info: List[Tuple[bytes, List[ISubscriber]]] = queue_info
        self.simple: bool = simple
        #: Routes with plain interest only: (route, b"RMSG $G <subject> ", append).
        self.route_plain: List[Tuple[ISubscriber, bytes, Callable[[bytes], None]]] = route_plain
        #: Routes and leafs with plain interest that are also queue members:
        #: one frame each, naming the groups given to it, built per message.
        self.route_mixed: List[ISubscriber] = route_mixed
        #: Leafs with plain interest only: (leaf, b"LMSG <subject> ", append).
        self.leaf_plain: List[Tuple[ISubscriber, bytes, Callable[[bytes], None]]] = leaf_plain
        #: Whether the plain subscribers are all there is (simple, and no
        #: route, leaf or queue group takes part): deliver() stops after them.
        self.local: bool = simple and not queues and not route_plain and not route_mixed and not leaf_plain

    def plain_remotes(self) -> List[ISubscriber]:
        """The routes and leafs with plain interest only (each gets one frame)."""
        return [r for r, _, _ in self.route_plain] + [r for r, _, _ in self.leaf_plain]


class ClosedConnection:
    """
    What monitoring shows of a closed client connection: its figures, not
    the connection.  Keeping the connections themselves (their transports,
    parsers, settings and buffers), 10,000 of them, made each full pass of
    the garbage collector stall every client for 180 ms.
    """

    __slots__ = (
        "cid", "peer", "start", "last_activity", "stopped", "close_reason", "rtt",
        "in_msgs", "out_msgs", "in_bytes", "out_bytes", "name", "lang", "client_version",
        "identity", "listener", "websocket",
    )
    closed = True
    pending_bytes = 0
    #: A client's subscriptions are gone by the time it is closed.
    subs: Tuple[Subscription, ...] = ()

    def __init__(self, conn: Any) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(conn, name, None))


class LocalSubscriber:
    """
    The owner of in-process subscriptions: messages are handed to a callback
    instead of being framed for a socket.
    """

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
        self.subs: Dict[Subscription, MessageCallback] = {}

    def remove_subscription(self, sub: Subscription) -> None:
        self.subs.pop(sub, None)
        self._broker.remove_subscription(sub)

    def flush(self) -> bool:
        return False

    def stall(self, consumer: Any) -> None:
        """Nothing to stall: the in-process API does not read."""


class LocalSubscription:
    """An in-process subscription; C{unsubscribe()} ends it."""

    def __init__(self, owner: LocalSubscriber, sub: Subscription) -> None:
        self._owner = owner
        self._sub = sub

    def unsubscribe(self) -> None:
        if self._sub in self._owner.subs:
            self._owner.remove_subscription(self._sub)


class Broker:
    """
    Routes messages between the connections of one server.

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
        self.sublist = Sublist()
        #: Delivery plans by subject: read as C{_targets.get(subject)}.
        self._plans = SubjectCache(PLAN_CACHE_SIZE)
        self._targets: Dict[bytes, _Targets] = self._plans.entries
        self.sublist.on_change = self._forget_plans
        self._dirty: List[ISubscriber] = []
        self._local = LocalSubscriber(self)
        self._random = random.Random()
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
        #: Who hears of interest that routes told us (gateways pass on the
        #: whole cluster's): (subject, queue, +1 or -1).
        self.remote_interest_listeners: List[Callable[[bytes, Optional[bytes], int], None]] = []
        #: Who hears of every subscription in the index, whoever owns it
        #: (the leaf nodes, which are told interest per owner): (sub, +1 or -1).
        self.subscription_listeners: List[Callable[[Subscription, int], None]] = []
        #: The gateways to other clusters (L{IGatewayForwarder}), when this
        #: server is in a supercluster: every message that did not come
        #: from a route or a gateway is offered to them.
        self.gateways: Optional["IGatewayForwarder"] = None

    # -- connections --------------------------------------------------------

    def register(self, conn: ISubscriber) -> int:
        """Add a connection; returns its id (never reused)."""
        self._next_cid += 1
        self.clients[self._next_cid] = conn
        return self._next_cid

    def unregister(self, conn: ISubscriber) -> None:
        cid = conn.cid
        if self.clients.get(cid) is conn:
            del self.clients[cid]
            self.in_msgs += conn.in_msgs
            self.in_bytes += conn.in_bytes
            self.out_msgs += conn.out_msgs
            self.out_bytes += conn.out_bytes
            self.closed.append(ClosedConnection(conn))

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
            "out_msgs": self.out_msgs + self._local.out_msgs + sum(c.out_msgs for c in live),
            "out_bytes": self.out_bytes + self._local.out_bytes + sum(c.out_bytes for c in live),
            "slow_consumers": self.slow_consumers,
            "subscriptions": self.sublist.count,
            "connections": len(live),
            "total_connections": self._next_cid,
        }

    # -- delivery -----------------------------------------------------------

    def _plan(self, subject: bytes, keep: bool = True) -> _Targets:
        """The delivery plan of C{subject}, kept for next time unless C{keep} is false (a subject used once)."""
        result = self.sublist.match(subject, keep)
        subs, groups = result.plain, result.queues
        if groups:
            return self._plan_with_queues(subject, subs, groups, keep)
        # Plain subscriptions only (most subjects, every reply inbox): one pass.
        head = b"MSG " + subject + b" "
        plain: List[Tuple[Any, bytes, Callable[[bytes], None]]] = []
        plain_subs: List[Subscription] = []
        routes: Dict[Any, None] = {}
        leafs: Dict[Any, None] = {}
        simple = True
        for s in subs:
            owner = s.owner
            if owner.may_receive is not None and not owner.may_receive(subject):
                # Subscribers denied this subject leave the plan (and so cost nothing per message).
                continue
            kind = owner.kind
            if kind.leaf:
                leafs[owner] = None  # one LMSG per leaf
                continue
            if kind.remote:
                routes[owner] = None  # one RMSG per route, however many subscriptions
                continue
            plain.append((owner, head + s.sid + b" ", owner.out.append))
            plain_subs.append(s)
            if s.max or owner.__class__ is LocalSubscriber:
                simple = False
        route_plain = []
        if routes:
            rhead = b"RMSG $G " + subject + b" "
            route_plain = [(r, rhead, r.out.append) for r in routes]
        leaf_plain = []
        if leafs:
            lhead = b"LMSG " + subject + b" "
            leaf_plain = [(r, lhead, r.out.append) for r in leafs]
        targets = _Targets(plain, plain_subs, [], simple, route_plain, [], [], leaf_plain)
        return self._keep(subject, targets) if keep else targets

    def _plan_with_queues(self, subject: bytes, subs: Any, groups: Any, keep: bool) -> _Targets:
        if any(s.owner.may_receive is not None for s in subs) or any(
            s.owner.may_receive is not None for group in groups for s in group
        ):
            subs = [s for s in subs if _receives(s, subject)]
            groups = [g for g in ([s for s in group if _receives(s, subject)] for group in groups) if g]
        head = b"MSG " + subject + b" "
        plain: List[Tuple[Any, bytes, Callable[[bytes], None]]] = []
        plain_subs: List[Subscription] = []
        routes_plain: Dict[Any, None] = {}
        for s in subs:
            if s.owner.kind.remote:
                routes_plain[s.owner] = None
            else:
                plain.append((s.owner, head + s.sid + b" ", s.owner.out.append))
                plain_subs.append(s)
        queues = [[(s.owner, head + s.sid + b" ", s) for s in group if not s.owner.kind.remote] for group in groups]
        queue_info = [(group[0].queue, list({s.owner: None for s in group if s.owner.kind.remote})) for group in groups]
        queue_routes = {r for _, routes in queue_info for r in routes}
        simple = not queue_routes and all(
            s.max == 0 and s.owner.__class__ is not LocalSubscriber
            for s in plain_subs + [s for group in groups for s in group]
        )
        rhead = b"RMSG $G " + subject + b" "
        lhead = b"LMSG " + subject + b" "
        route_plain = [(r, rhead, r.out.append) for r in routes_plain if r not in queue_routes and not r.kind.leaf]
        leaf_plain = [(r, lhead, r.out.append) for r in routes_plain if r not in queue_routes and r.kind.leaf]
        route_mixed = [r for r in routes_plain if r in queue_routes]
        targets = _Targets(plain, plain_subs, queues, simple, route_plain, route_mixed, queue_info, leaf_plain)
        return self._keep(subject, targets) if keep else targets

    def _keep(self, subject: bytes, targets: _Targets) -> _Targets:
        self._plans.put(subject, targets)
        return targets

    def deliver(
        self, src: ISource, subject: bytes, reply: Optional[bytes], size: int, tail: bytes,
        targets: Optional[_Targets] = None,
    ) -> int:
        """
        Deliver a PUB from C{src}: C{tail} is C{b"<size>\\r\\n<payload>\\r\\n"}.
        Returns how many subscribers it was given to.  C{targets}: the
        plan, when the caller has made it.
        """
        if targets is None:
            targets = self._targets.get(subject) or self._plan(subject)
        if targets.simple:
            plain = targets.plain
            count = len(plain)
            no_echo = not src.echo
            dirty = self._dirty
            # With a reply: "MSG <subject> <sid> <reply> <size>\r\n..."
            frame_tail = tail if reply is None else reply + b" " + tail
            for conn, prefix, append in plain:
                if conn is src and no_echo:
                    count -= 1
                    continue
                append(prefix)
                append(frame_tail)
                conn.out_msgs += 1
                conn.out_bytes += size
                if not conn.dirty:
                    conn.dirty = True
                    dirty.append(conn)
            if targets.local and self.gateways is None:
                return count
        else:
            count = 0
            message = _Message(subject, reply, size, tail, -1, b"")
            for sub, (conn, prefix, _) in zip(targets.plain_subs, targets.plain):
                count += self._give(src, sub, conn, prefix, message)
        if targets.leaf_plain:
            count += self._to_remotes(src, targets.leaf_plain, tail if reply is None else reply + b" " + tail, size)
        if src.kind.one_hop:
            # One hop: what came from a route (or a hub) goes to local
            # subscribers and leafs only.
            if targets.route_mixed:
                count += self._deliver_queues(src, targets, _Message(subject, reply, size, tail, -1, b""), only=())
            return count
        if targets.route_plain and src.kind.leaf and src.cluster_origin:
            # A leaf's message of a named cluster: LMSG <origin>, so that
            # the other servers keep it from that cluster's other links.
            count += self._plain_remotes(src, _Message(subject, reply, size, tail, -1, b""), [r for r, _, _ in targets.route_plain])
        elif targets.route_plain:
            count += self._to_remotes(src, targets.route_plain, tail if reply is None else reply + b" " + tail, size)
        if targets.queues or targets.route_mixed:
            # A leaf's message without queue names is for plain subscribers
            # only: its side chose the groups' members.
            message = _Message(subject, reply, size, tail, -1, b"")
            count += self._deliver_queues(src, targets, message, only=() if src.kind.leaf else None)
        if self.gateways is not None and src.kind.to_gateways:
            count += self.gateways.forward(subject, reply, size, tail, -1, b"", targets)
        return count

    def _to_remotes(self, src: ISource, remotes: List[Tuple[ISubscriber, bytes, Callable[[bytes], None]]], frame_tail: bytes, size: int) -> int:
        """A message's C{RMSG} (C{LMSG}) to each route (leaf) with plain interest that C{src}'s message may reach."""
        count = 0
        check = src.kind.remote
        for conn, prefix, append in remotes:
            if check and not _reaches(src, conn):
                continue
            append(prefix)
            append(frame_tail)
            conn.out_msgs += 1
            conn.out_bytes += size
            self.mark_dirty(conn)
            count += 1
        return count

    def _plain_remotes(self, src: ISource, message: "_Message", remotes: List[ISubscriber]) -> int:
        """A message's frame, naming no queue group, to each of C{remotes} (routes, leafs) that C{src}'s message may reach."""
        count = 0
        for conn in remotes:
            if _reaches(src, conn):
                conn.out.append(_remote_frame(src, conn, message, ()))
                conn.out_msgs += 1
                conn.out_bytes += message.size
                self.mark_dirty(conn)
                count += 1
        return count

    def deliver_batch(self, src: ISource, subject: bytes, tails: List[bytes], size: int) -> None:
        """
        Deliver several PUBs to C{subject}, none with a reply subject:
        C{tails} as for L{deliver}, C{size} the total of their payloads.
        Each plain subscriber gets all of them in one joined frame.
        """
        if len(tails) == 1:
            self.deliver(src, subject, None, size, tails[0])
            return
        targets = self._targets.get(subject) or self._plan(subject)
        if not targets.simple or targets.route_mixed:
            for tail in tails:
                self.deliver(src, subject, None, _payload_size(tail), tail)
            return
        k = len(tails)
        no_echo = not src.echo
        dirty = self._dirty
        # Routes and leafs with plain interest take the same joined frames
        # ("RMSG $G <subject> ", "LMSG <subject> ").
        routes = targets.route_plain if not src.kind.one_hop else []
        if routes and src.kind.leaf and src.cluster_origin:
            for tail in tails:
                self.deliver(src, subject, None, _payload_size(tail), tail, targets)
            return
        if targets.leaf_plain:
            routes = routes + [leaf for leaf in targets.leaf_plain if _reaches(src, leaf[0])]
        # Subscribers with the same prefix (same sid: most clients' first
        # subscription is sid 1) share one joined frame: built once, not per subscriber.
        joined: Dict[bytes, bytes] = {}
        for conn, prefix, append in targets.plain + routes if routes else targets.plain:
            if conn is src and no_echo:
                continue
            frames = joined.get(prefix)
            if frames is None:
                # prefix + prefix.join(tails) == prefix t1 prefix t2 ... prefix tk
                frames = joined[prefix] = prefix + prefix.join(tails)
            append(frames)
            conn.out_msgs += k
            conn.out_bytes += size
            if not conn.dirty:
                conn.dirty = True
                dirty.append(conn)
        if targets.queues and not src.kind.remote:
            # (An RMSG or LMSG without queue names reaches plain subscribers only.)
            rand = self._random.random
            for group in targets.queues:
                members = group
                if no_echo:
                    members = [m for m in group if m[0] is not src]
                    if not members:
                        continue
                n = len(members)
                for tail in tails:
                    conn, prefix, _ = members[int(rand() * n)]
                    out = conn.out
                    out.append(prefix)
                    out.append(tail)
                    conn.out_msgs += 1
                    conn.out_bytes += _payload_size(tail)
                    if not conn.dirty:
                        conn.dirty = True
                        dirty.append(conn)
        if self.gateways is not None and src.kind.to_gateways:
            self.gateways.forward_batch(subject, tails, size, targets)

    def deliver_headers(
        self,
        src: ISource,
        subject: bytes,
        reply: Optional[bytes],
        hdr_len: int,
        total: int,
        body: bytes,
    ) -> int:
        """
        Deliver an HPUB from C{src}: C{body} is the header block, the
        payload and CRLF.  Subscribers that did not negotiate headers get a
        plain MSG without them.
        """
        targets = self._targets.get(subject) or self._plan(subject)
        message = _Message(subject, reply, total, b"", hdr_len, body)
        count = 0
        for sub, (conn, prefix, _) in zip(targets.plain_subs, targets.plain):
            count += self._give(src, sub, conn, prefix, message)
        count += self._plain_remotes(src, message, targets.plain_remotes())
        if targets.queues or targets.route_mixed:
            count += self._deliver_queues(src, targets, message)
        if self.gateways is not None and src.kind.to_gateways:
            count += self.gateways.forward(subject, reply, total, b"", hdr_len, body, targets)
        return count

    def deliver_gatewayed(
        self, gateway: ISource, subject: bytes, reply: Optional[bytes], local_reply: Optional[bytes],
        queues: Sequence[bytes], size: int, tail: bytes, hdr_len: int = -1, body: bytes = b"",
    ) -> int:
        """
        A message from another cluster: to local plain subscribers, to the
        routes with plain interest (this cluster's other servers), and to one
        member of each queue group it names, in this cluster.  Never to a
        gateway.  C{local_reply} is the reply this server's subscribers see
        (a routed reply without its C{_GR_.} prefix); routes get C{reply}.
        """
        targets = self._targets.get(subject) or self._plan(subject)
        if hdr_len < 0 and local_reply is reply and targets.simple and not targets.queues and not targets.route_mixed:
            # Plain subscribers and routes only: the fast loop (which hands
            # nothing from a gateway to a gateway).
            return self.deliver(gateway, subject, reply, size, tail, targets)
        message = _Message(subject, local_reply, size, tail, hdr_len, body)
        routed = message if local_reply is reply else _Message(subject, reply, size, tail, hdr_len, body)
        count = 0
        for sub, (conn, prefix, _) in zip(targets.plain_subs, targets.plain):
            count += self._give(gateway, sub, conn, prefix, message)
        # Routes that are also queue members get one RMSG naming the groups
        # they are to serve, from _deliver_queues; the others a plain one.
        named = bool(queues and targets.queues)
        count += self._plain_remotes(gateway, routed, targets.plain_remotes() + ([] if named else targets.route_mixed))
        if named:
            count += self._deliver_queues(gateway, targets, message, only=queues, routed=routed)
        return count

    def deliver_gatewayed_batch(self, gateway: ISource, subject: bytes, tails: List[bytes], size: int) -> None:
        """Several messages from another cluster to one subject, no reply and no queue names."""
        targets = self._targets.get(subject) or self._plan(subject)
        if targets.simple and not targets.queues and not targets.route_mixed:
            self.deliver_batch(gateway, subject, tails, size)
            return
        for tail in tails:
            self.deliver_gatewayed(gateway, subject, None, None, (), _payload_size(tail), tail)

    def _deliver_queues(
        self, src: ISource, targets: _Targets, message: "_Message", only: Optional[Sequence[bytes]] = None,
        routed: Optional["_Message"] = None,
    ) -> int:
        """
        One member per queue group, a local one when there is one (as
        nats-server prefers); otherwise one route or leaf with members, told
        the group's name in its RMSG (LMSG).  The routes and leafs with
        plain interest that are members too get one frame each, naming the
        groups they were given.  C{only}: the groups a routed message names.
        C{routed}: the message as routes get it (default C{message}).
        """
        if routed is None:
            routed = message
        count = 0
        assigned: Optional[Dict[ISubscriber, List[bytes]]] = None
        for group, (name, routes) in zip(targets.queues, targets.queue_info):
            if only is not None and name not in only:
                continue
            n = len(group)
            start = self._random.randrange(n) if n > 1 else 0
            for i in range(n):
                conn, prefix, sub = group[(start + i) % n]
                if self._give(src, sub, conn, prefix, message):
                    count += 1
                    break
            else:
                if routes and src.kind.remote:
                    # From a route, only a leaf member (the route's server
                    # had its own turn); never back where it came from.
                    routes = [r for r in routes if r is not src and (r.kind.leaf or src.kind.leaf)]
                if routes:
                    route = routes[self._random.randrange(len(routes))] if len(routes) > 1 else routes[0]
                    if assigned is None:
                        assigned = {}
                    assigned.setdefault(route, []).append(name)
        if assigned or targets.route_mixed:
            assigned = assigned or {}
            mixed = [r for r in targets.route_mixed if r not in assigned and _reaches(src, r)]
            for route in list(assigned) + mixed:
                route.out.append(_remote_frame(src, route, routed, assigned.get(route, [])))
                route.out_msgs += 1
                route.out_bytes += routed.size
                self.mark_dirty(route)
                count += 1
        return count

    def deliver_routed(
        self, route: ISource, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes],
        size: int, tail: bytes, hdr_len: int = -1, body: bytes = b"",
    ) -> int:
        """
        A message from a route or a leaf: to local plain subscribers, to
        leafs, and to one member of each queue group it names.  From a
        route (or a hub), never to a route; from a leaf we are the hub of,
        to routes and gateways as a client's.
        """
        if hdr_len < 0:
            if not queues:
                return self.deliver(route, subject, reply, size, tail)
            targets = self._targets.get(subject) or self._plan(subject)
            if not targets.route_mixed:
                # The fast loop for the plain subscribers.
                count = self.deliver(route, subject, reply, size, tail, targets)
                if targets.queues:
                    count += self._deliver_queues(route, targets, _Message(subject, reply, size, tail, -1, b""), only=queues)
                return count
        targets = self._targets.get(subject) or self._plan(subject)
        message = _Message(subject, reply, size, tail, hdr_len, body)
        count = 0
        for sub, (conn, prefix, _) in zip(targets.plain_subs, targets.plain):
            count += self._give(route, sub, conn, prefix, message)
        count += self._plain_remotes(route, message, targets.plain_remotes())
        if targets.queues or targets.route_mixed:
            count += self._deliver_queues(route, targets, message, only=queues)
        if self.gateways is not None and route.kind.to_gateways:
            count += self.gateways.forward(subject, reply, size, tail, hdr_len, body, targets)
        return count

    def _give(
        self,
        src: ISource,
        sub: Subscription,
        conn: ISubscriber,
        prefix: bytes,
        message: "_Message",
    ) -> int:
        """The general path: one message to one subscription."""
        if conn is src and not src.echo:
            return 0
        if sub.max:
            if sub.delivered >= sub.max:
                return 0
            sub.delivered += 1
            if sub.delivered >= sub.max:
                conn.remove_subscription(sub)
        if conn.__class__ is LocalSubscriber:
            callback = conn.subs.get(sub)
            if callback is None:
                return 0
            payload, headers = message.parts()
            try:
                callback(
                    message.subject.decode("utf-8", "replace"),
                    None if message.reply is None else message.reply.decode("utf-8", "replace"),
                    payload,
                    headers,
                )
            except Exception:
                self.log.failure("in-process subscriber for {subject} failed", subject=sub.subject)
            conn.out_msgs += 1
            conn.out_bytes += message.size
            return 1
        conn.out.append(message.frame(prefix, conn.headers))
        conn.out_msgs += 1
        conn.out_bytes += message.size
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)
        return 1

    def flush(self, producer: Optional[ISubscriber] = None) -> None:
        """
        Write out everything delivered since the last flush.  C{producer}
        is the connection whose input caused it: it is stalled when a
        subscriber it fed is over its stall mark.
        """
        dirty = self._dirty
        if not dirty:
            return
        self._dirty = []
        for conn in dirty:
            conn.dirty = False
            if conn.flush() and producer is not None and producer is not conn:
                producer.stall(conn)

    def mark_dirty(self, conn: ISubscriber) -> None:
        """Queue C{conn} for the next flush (it appended to its own C{out})."""
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)

    # -- subscriptions ------------------------------------------------------

    def add_subscription(self, sub: Subscription) -> None:
        """A local subscription (a client's, in-process, a leaf's): routes hear of it."""
        self.sublist.insert(sub)
        self._interest_changed(sub.subject, sub.queue, +1, sub.origin)
        for listener in self.subscription_listeners:
            listener(sub, 1)

    def remove_subscription(self, sub: Subscription) -> None:
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

    def _forget_plans(self, pattern: bytes) -> None:
        """The subscriptions on C{pattern} changed: the plans of the subjects it may match go."""
        self._plans.forget(pattern)

    def limit_changed(self, pattern: Optional[bytes] = None) -> None:
        """
        A subscription on C{pattern} gained an auto-unsubscribe maximum: the
        plans it is in go.  None: a connection's permissions changed, and
        every plan goes.
        """
        if pattern is None:
            self._plans.clear()
        else:
            self._plans.forget(pattern)

    # -- the in-process API -------------------------------------------------

    def subscribe(
        self, subject: str, callback: MessageCallback, queue: Optional[str] = None
    ) -> LocalSubscription:
        """
        Call C{callback(subject, reply, payload, headers)} for every message
        on C{subject} (wildcards allowed), in queue group C{queue} if given.
        The callback runs in the reactor thread and must not block.
        """
        bsubject = subject.encode("utf-8")
        if not valid_subject(bsubject):
            raise ValueError("invalid subject {!r}".format(subject))
        self._local_sids += 1
        sid = str(self._local_sids).encode("ascii")
        sub = Subscription(self._local, bsubject, queue.encode("utf-8") if queue else None, sid)
        self._local.subs[sub] = callback
        self.add_subscription(sub)
        return LocalSubscription(self._local, sub)

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
            count = self.deliver_headers(
                self._local, bsubject, breply, len(headers), len(headers) + len(payload), body
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
        local = self._local
        for subject, payload in messages:
            bsubject = subject.encode("utf-8")
            if not valid_literal_subject(bsubject):
                self.log.warn("in-process publish to {subject!r} skipped: not a valid literal subject", subject=subject)
                continue
            self.in_msgs += 1
            self.in_bytes += len(payload)
            # Reply inboxes are used once: their plans are not kept, where
            # they would only push out the plans of subjects that are busy.
            targets = plans.get(bsubject) or plan(bsubject, keep=False)
            deliver(local, bsubject, None, len(payload), b"%d\r\n%s\r\n" % (len(payload), payload), targets)
        self.flush()


def _reaches(src: Any, remote: Any) -> bool:
    """
    Whether a message from C{src} goes on to C{remote}, a route or a leaf
    with interest in it (nats-server's processMsgResults): a route gets
    nothing that came from a route or a hub (one hop); a leaf gets
    everything but its own messages, those of a leaf of its own cluster,
    and, when it is our hub, those from routes (their servers have their
    own links to it).  A message's cluster is its leaf's (C{cluster_origin}),
    or the origin a route's C{LMSG} gave (C{message_origin}).
    """
    if remote is src:
        return False
    if remote.kind.leaf:
        if src.kind.leaf:
            origin = src.cluster_origin
        elif src.kind is Kind.ROUTE:
            if remote.kind is Kind.HUB:
                return False
            origin = src.message_origin  # (an LMSG <origin> the route is delivering)
        else:
            return True
        return not (origin and origin == remote.cluster_origin)
    return not src.kind.one_hop


def _remote_frame(src: Any, remote: Any, message: "_Message", queues: Sequence[bytes]) -> bytes:
    """
    C{message} as C{remote} (a route or a leaf) gets it from C{src}, naming
    C{queues}: in the remote's verb, and to a route with the leaf cluster
    it came from when a leaf of a named cluster sent it.
    """
    origin = src.cluster_origin if src.kind.leaf and not remote.kind.leaf else None
    return message.route_frame(queues, remote.frame_head, origin)


def _receives(sub: Subscription, subject: bytes) -> bool:
    check = sub.owner.may_receive
    return check is None or check(subject)


def _payload_size(tail: bytes) -> int:
    """The payload size of a C{b"<size>\\r\\n<payload>\\r\\n"} tail."""
    return len(tail) - tail.index(b"\n") - 3


class _Message:
    """A message on the general delivery path, framed lazily per kind of subscriber."""

    __slots__ = ("subject", "reply", "size", "tail", "hdr_len", "body", "_plain", "_payload")

    def __init__(self, subject, reply, size, tail, hdr_len, body):
        self.subject: bytes = subject
        self.reply: Optional[bytes] = reply
        self.size: int = size
        self.tail: bytes = tail
        self.hdr_len: int = hdr_len  # -1: no headers
        self.body: bytes = body
        self._plain: Optional[bytes] = None
        self._payload: Optional[bytes] = None

    def frame(self, prefix: bytes, headers: bool) -> bytes:
        reply = b"" if self.reply is None else self.reply + b" "
        if self.hdr_len < 0:
            return prefix + reply + self.tail
        if headers:
            return b"H%s%s%d %d\r\n%s" % (prefix, reply, self.hdr_len, self.size, self.body)
        if self._plain is None:
            self._plain = b"%d\r\n%s" % (self.size - self.hdr_len, self.body[self.hdr_len :])
        return prefix + reply + self._plain

    def route_frame(self, queues: Sequence[bytes], head: bytes = b"RMSG $G ", origin: Optional[bytes] = None) -> bytes:
        """
        The whole RMSG (or HMSG) for a route, naming C{queues} if any;
        C{head} C{b"LMSG "} for a leaf.  With C{origin} (a message from a
        leaf of that cluster, to a route): C{LMSG <origin> $G ...} with its
        header size, as nats-server sends a route that says lnoc.
        """
        if queues:
            middle = (b"+ " + self.reply + b" " if self.reply is not None else b"| ") + b" ".join(queues) + b" "
        else:
            middle = b"" if self.reply is None else self.reply + b" "
        if origin:
            if self.hdr_len < 0:
                return b"LMSG " + origin + b" $G " + self.subject + b" " + middle + b"0 " + self.tail
            return b"LMSG %s $G %s %s%d %d\r\n%s" % (origin, self.subject, middle, self.hdr_len, self.size, self.body)
        if self.hdr_len < 0:
            return head + self.subject + b" " + middle + self.tail
        return b"H%s%s %s%d %d\r\n%s" % (head[1:], self.subject, middle, self.hdr_len, self.size, self.body)

    def parts(self) -> Tuple[bytes, Optional[bytes]]:
        """The payload and the header block (or None)."""
        if self.hdr_len < 0:
            return self.tail[self.tail.index(b"\n") + 1 : -2], None
        return self.body[self.hdr_len : -2], self.body[: self.hdr_len]
