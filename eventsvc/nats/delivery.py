"""
Who gets a message: the delivery plans, and the one rule.

A publish is matched against the subscription index once per subject (the
index caches matches) and turned into a L{Plan}: per plain subscriber its
frame prefix, the queue groups, and the remote owners (routes and leafs)
with interest, one frame each.  Plans are kept by subject until the index
changes.  Frames are appended to each subscriber's output list; nothing is
written until L{Delivery.flush}, which the connection that received the
publishes calls once per read, so a read carrying a thousand PUBs causes one
write per subscriber, not a thousand.

Which of a plan's targets a message reaches depends on where it came from,
as in nats-server's C{processMsgResults}, keyed on the source's L{Kind}
and the leaf cluster the message came from:

  - local subscribers get everything (bar a client's own messages when it
    asked for no echo);
  - a route gets nothing that came from a route or from our hub (one hop);
  - a leaf gets everything but its own messages, those of a leaf of its own
    cluster and, when it is our hub, those from routes (L{reaches});
  - a client's (or the in-process API's) message picks one member of every
    queue group; a link's message serves only the groups it names
    (L{groups_served}), and a route or a leaf member may take a group only
    as L{takes_group} says;
  - gateways are offered what came from a client, the in-process API or a
    leaf we are the hub of (L{Kind.to_gateways}).

L{Delivery.deliver} and L{Delivery.deliver_batch} are the fast paths for
messages without headers; L{Delivery.deliver_message} is the general one.
All three ask the same questions of the kinds.
"""

from __future__ import annotations

import random
import sys
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Set, Tuple, cast

from twisted.logger import Logger

from eventsvc.nats.frames import Message, lmsg_head, msg_head, rmsg_head
from eventsvc.nats.interfaces import ISource, ISubscriber
from eventsvc.nats.kinds import Kind
from eventsvc.nats.subjects import SubjectCache, Sublist, Subscription

#: How many subjects' delivery plans are kept: enough for a fleet of ten
#: thousand devices publishing each to its own subject (about 600 bytes a
#: plan with one subscriber).
PLAN_CACHE_SIZE = 16384

#: How many plans of subjects used once are kept for subjects with the same
#: match (L{Delivery._plan}): one per consumer acking or client answered at
#: the same time, up to this many; more, and they start again.  (64 made
#: acks interleaved over 100 consumers, each subscribing its own ack
#: subject, cost a plan each: 10.5-11.8 us CPU an ack against 7.9-8.5.)
ONCE_PLANS = 1024

#: Payloads at least this large on average (bytes) reach each subscriber of a
#: batch (L{Delivery.deliver_batch}) as pieces, prefix and message by turn,
#: not joined (None: always joined).  PyPy joins 64 KiB in some 27 us, and
#: sends 128 pieces of 530 bytes in 29 us with the join's cost and more
#: saved (1 KiB payloads, process time, loopback TCP: 64 us joined and sent,
#: 29 us as pieces; at 512 bytes the join still wins).  CPython joins 64 KiB
#: in 2.5 us and sends a joined batch faster at every size.
BATCH_PIECES_FROM: Optional[int] = None if sys.implementation.name == "cpython" else 768

#: The kinds the rule and the plans ask for by name, bound once: C{Kind}
#: is an Enum, whose class's attributes are read through its metaclass's
#: C{__getattr__} hook, about 200 ns each on CPython 3.11 (a global is a
#: few ns).  A queue group's plan asked once a member: 2.5 of its 3.2 us.
_IN_PROCESS = Kind.IN_PROCESS
_ROUTE = Kind.ROUTE
_HUB = Kind.HUB

#: A plain target: (subscriber, frame prefix, the subscriber's out.append).
Target = Tuple[ISubscriber, bytes, Callable[[bytes], None]]


class IGatewayForwarder(Protocol):
    """What the broker asks of the gateways (L{eventsvc.nats.links.gateway.GatewayManager})."""

    def forward(
        self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes,
        targets: "Plan",
    ) -> int:
        """
        Offer a message (C{tail}, or with headers C{hdr_len} and C{body}) to
        every gateway with interest in it; C{targets} is its plan here, whose
        queue groups this cluster serves.  Returns how many gateways took it.
        """

    def forward_batch(self, subject: bytes, tails: List[bytes], size: int, targets: "Plan") -> None:
        """The same for several messages to one subject without a reply (C{size}: their payloads' total)."""

    def has_interest(self, subject: bytes) -> bool:
        """Whether a gateway would take a message on C{subject} (nats-server's C{hasGatewayInterest})."""


_new_plan = object.__new__


class Plan:
    """
    The delivery plan for one subject: per plain subscriber the frame prefix
    C{b"MSG <subject> <sid> "}, the queue groups, and the routes and leafs.
    C{simple} is false when a subscriber is in-process or has an
    auto-unsubscribe maximum, or when routes take part in a queue group:
    the fast loops handle none of those.
    """

    __slots__ = (
        "plain", "plain_subs", "queues", "queue_info", "simple", "route_plain", "route_mixed", "leaf_plain", "local",
        "local_queues", "queue_last", "callback", "one",
    )

    def __init__(self, plain, plain_subs, queues, simple, route_plain=(), route_mixed=(), queue_info=(), leaf_plain=()):
        #: (subscriber, frame prefix, the subscriber's out.append)
        self.plain: Sequence[Target] = plain
        self.plain_subs: Sequence[Subscription] = plain_subs
        #: Per group, its local members: [(member, prefix, subscription)].
        self.queues: Sequence[List[Tuple[ISubscriber, bytes, Subscription]]] = queues
        #: Per group (same order): its name and the routes and leafs with members in it.
        self.queue_info: Sequence[Tuple[bytes, Sequence[ISubscriber]]] = queue_info
        self.simple: bool = simple
        #: Routes with plain interest only: (route, b"RMSG $G <subject> ", append).
        self.route_plain: Sequence[Target] = route_plain
        #: Routes and leafs with plain interest that are also queue members:
        #: one frame each, naming the groups given to it, built per message.
        self.route_mixed: Sequence[ISubscriber] = route_mixed
        #: Leafs with plain interest only: (leaf, b"LMSG <subject> ", append).
        self.leaf_plain: Sequence[Target] = leaf_plain
        #: Whether the plain subscribers are all there is (simple, and no
        #: route, leaf or queue group takes part): deliver() stops after them.
        self.local: bool = simple and not queues and not route_plain and not route_mixed and not leaf_plain
        #: The one target of C{plain} when it is all there is (C{local}, one
        #: subscription: a subject with one subscriber, the most common),
        #: else None: L{Delivery.deliver_run} frames it without a loop.
        self.one: Optional[Target] = plain[0] if self.local and len(plain) == 1 else None
        #: Whether local queue groups are all there is (simple, no plain
        #: subscriber, no route or leaf takes part): a client's message
        #: picks one member of each (L{Delivery._to_local_queues}) and
        #: nothing else (a work queue over many subjects).
        self.local_queues: bool = (
            simple and bool(queues) and not plain and not route_plain and not route_mixed and not leaf_plain
        )
        #: The last of C{queues} (None: no group): L{Delivery._to_local_queues}
        #: leaves its loop there, before the back edge.
        self.queue_last: Optional[List[Tuple[ISubscriber, bytes, Subscription]]] = queues[-1] if queues else None
        #: (owner, subscription) when one in-process subscription without a
        #: maximum is all there is (a JetStream stream's subjects, its acks,
        #: its API): L{Delivery.deliver} hands the message straight to it.
        self.callback: Optional[Tuple[Any, Subscription]] = None
        if (len(plain_subs) == 1 and not queues and not route_plain and not route_mixed and not leaf_plain
                and plain[0][0].kind is _IN_PROCESS and not plain_subs[0].max):
            self.callback = (plain[0][0], plain_subs[0])

    def renamed(self, subject: bytes) -> "Plan":
        """
        This plan, of plain local subscribers only (and so no callback: that
        plan is handed on as it is), for another C{subject} with the same
        match: what C{Plan(plain, plain_subs, (), True)} makes, without
        working its fields out again (each PubAck to an inbox, each ack).
        Only the three that name the subject are set (L{_RenamedPlan} holds
        the rest); one subscriber, the most common, without a loop.
        """
        plan = _new_plan(_RenamedPlan)
        plain_subs = plan.plain_subs = self.plain_subs
        if len(plain_subs) == 1:
            conn, _, append = self.plain[0]
            one = plan.one = (conn, b"MSG " + subject + b" " + plain_subs[0].sid + b" ", append)
            plan.plain = [one]
        else:
            head = msg_head(subject)
            plan.plain = [(conn, head + sub.sid + b" ", append) for (conn, _, append), sub in zip(self.plain, plain_subs)]
            plan.one = None
        return plan

    def plain_remotes(self) -> List[ISubscriber]:
        """The routes and leafs with plain interest only (each gets one frame)."""
        return [r for r, _, _ in self.route_plain] + [r for r, _, _ in self.leaf_plain]


class _RenamedPlan(Plan):
    """
    A plan of L{Plan.renamed}: plain local subscribers alone.  Its fields
    but C{plain}, C{plain_subs} and C{one} are the same for every such plan, so
    they are the class's, not set on each (a new one for each PubAck to a
    reply inbox).  Nothing sets them on a plan after it is made.
    """

    __slots__ = ()

    queues = queue_info = route_plain = route_mixed = leaf_plain = ()  # type: ignore[assignment]
    simple = local = True
    local_queues = False
    queue_last = callback = None  # type: ignore[assignment]


# -- the rule -------------------------------------------------------------------


def reaches(src: ISource, remote: ISubscriber) -> bool:
    """
    Whether a message from C{src} goes on to C{remote}, a route or a leaf
    with plain interest in it (nats-server's processMsgResults): a route
    gets nothing that came from a route or a hub (one hop); a leaf gets
    everything but its own messages, those of a leaf of its own cluster,
    and, when it is our hub, those from routes (their servers have their
    own links to it).  A message's cluster is its leaf's (C{cluster_origin}),
    or the origin a route's C{LMSG} gave (C{message_origin}).
    """
    if remote is src:
        return False
    if remote.kind.leaf:
        kind = src.kind
        if kind.leaf:
            origin: Optional[bytes] = src.cluster_origin
        elif kind is _ROUTE:
            if remote.kind is _HUB:
                return False
            origin = src.message_origin  # (an LMSG <origin> the route is delivering)
        else:
            return True
        return not (origin and origin == remote.cluster_origin)
    return not src.kind.one_hop


def groups_served(src: ISource, named: Sequence[bytes]) -> Optional[Sequence[bytes]]:
    """
    The queue groups a message from C{src} picks a member of: a client's
    (or the in-process API's) every group (None); a link's only those its
    frame C{named} (its side chose the other groups' members).
    """
    return named if src.kind.link else None


def takes_group(src: ISource, member: ISubscriber) -> bool:
    """
    Whether C{member}, a route or leaf with members in a queue group that
    has none here, may be given the group for C{src}'s message: never the
    link it came from; from a route or a leaf, only a leaf (the route's
    server had its own turn) unless the message came from a leaf.
    """
    if member is src:
        return False
    kind = src.kind
    return not kind.remote or member.kind.leaf or kind.leaf


def remote_frame(src: ISource, remote: ISubscriber, message: "Message", queues: Sequence[bytes]) -> bytes:
    """
    C{message} as C{remote} (a route or a leaf) gets it from C{src}, naming
    C{queues}: in the remote's verb, and to a route with the leaf cluster
    it came from when a leaf of a named cluster sent it.
    """
    origin = src.cluster_origin if src.kind.leaf and not remote.kind.leaf else None
    return message.route_frame(queues, remote.frame_head, origin)


# -- plans ----------------------------------------------------------------------


def _receives(sub: Subscription, subject: bytes) -> bool:
    check = sub.owner.may_receive
    return check is None or check(subject)


def plan(subject: bytes, subs: Sequence[Subscription], groups: Sequence[Sequence[Subscription]]) -> Plan:
    """The delivery plan of C{subject} for the index's match: its plain subscriptions and queue groups."""
    if groups:
        return _plan_with_queues(subject, subs, groups)
    # Plain subscriptions only (most subjects, every reply inbox): one pass.
    head = msg_head(subject)
    plain: List[Target] = []
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
        if s.max or kind is _IN_PROCESS:
            simple = False
    # (What is empty is the empty tuple, not a list each: a kept plan's
    # every object is one more for the collector to walk.)
    route_plain: Sequence[Target] = ()
    if routes:
        rhead = rmsg_head(subject)
        route_plain = [(r, rhead, r.out.append) for r in routes]
    leaf_plain: Sequence[Target] = ()
    if leafs:
        lhead = lmsg_head(subject)
        leaf_plain = [(r, lhead, r.out.append) for r in leafs]
    return Plan(plain, plain_subs, (), simple, route_plain, (), (), leaf_plain)


def _plan_with_queues(subject: bytes, subs: Any, groups: Any) -> Plan:
    local = _local_queue_plan(subject, subs, groups)
    if local is not None:
        return local
    if any(s.owner.may_receive is not None for s in subs) or any(
        s.owner.may_receive is not None for group in groups for s in group
    ):
        subs = [s for s in subs if _receives(s, subject)]
        groups = [g for g in ([s for s in group if _receives(s, subject)] for group in groups) if g]
    head = msg_head(subject)
    plain: List[Target] = []
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
        s.max == 0 and s.owner.kind is not _IN_PROCESS
        for s in plain_subs + [s for group in groups for s in group]
    )
    rhead = rmsg_head(subject)
    lhead = lmsg_head(subject)
    route_plain = [(r, rhead, r.out.append) for r in routes_plain if r not in queue_routes and not r.kind.leaf]
    leaf_plain = [(r, lhead, r.out.append) for r in routes_plain if r not in queue_routes and r.kind.leaf]
    route_mixed = [r for r in routes_plain if r in queue_routes]
    return Plan(plain, plain_subs, queues, simple, route_plain, route_mixed, queue_info, leaf_plain)


def _local_queue_plan(subject: bytes, subs: Any, groups: Any) -> Optional[Plan]:
    """
    The plan of C{subject} when its match is queue groups of local clients
    alone, none with a permission on what it receives, or None for any
    other match (L{_plan_with_queues} makes that one).  One pass over the
    members, where the general way takes seven: a work queue over many
    subjects plans each subject as it first comes (a tenth of a quick
    bench run's CPU), and only this case takes the fast loop anyway
    (L{Plan.local_queues}).  Members with the same sid share their prefix.
    """
    if subs:
        return None
    head = msg_head(subject)
    prefixes: Dict[bytes, bytes] = {}
    queues = []
    simple = True
    for group in groups:
        members = []
        for s in group:
            owner = s.owner
            kind = owner.kind
            if kind.remote or owner.may_receive is not None:
                return None
            if s.max or kind is _IN_PROCESS:
                simple = False
            sid = s.sid
            prefix = prefixes.get(sid)
            if prefix is None:
                prefix = prefixes[sid] = head + sid + b" "
            members.append((owner, prefix, s))
        queues.append(members)
    return Plan((), (), queues, simple, (), (), [(group[0].queue, ()) for group in groups])


# -- delivery -------------------------------------------------------------------

#: deliver_message's C{routed_reply} when links see the reply local subscribers see.
_SAME: Any = object()


class Delivery:
    """
    The broker's delivery half: plans by subject, the subscribers with
    frames waiting, and the paths every message takes.

    @ivar gateways: the gateways to other clusters (L{IGatewayForwarder}),
        when this server is in a supercluster.
    """

    log = Logger()

    def __init__(self, sublist: Sublist) -> None:
        self.sublist = sublist
        #: Delivery plans by subject: read as C{_targets.get(subject)}.
        self._plans = SubjectCache(PLAN_CACHE_SIZE)
        self._targets: Dict[bytes, Plan] = self._plans.entries
        sublist.on_change = self._forget_plans
        self._dirty: List[ISubscriber] = []
        #: Subjects planned once and not kept (L{_plan}: kept the second time).
        self._seen: Set[bytes] = set()
        self._random = random.Random()
        #: A member's pick: C{bits(30) % n}, fair within n / 2**30 (as
        #: nats-server, a random member a message).  int(random() * n)
        #: cost CPython some 700 instructions a message more: int() of a
        #: float is a type call.
        self._bits = self._random.getrandbits
        #: (Bound once: deliver_run binds it per run of 16 messages.)
        self._queue_picks = self._to_local_queues
        self.gateways: Optional[IGatewayForwarder] = None
        #: Subject prefixes whose subjects are each used once (the layer
        #: above says which: JetStream adds C{$JS.ACK.}); their plans and
        #: matches are not kept.
        self.used_once: Tuple[bytes, ...] = ()
        #: Plans of subjects used once that any subject with the same match
        #: may reuse, each with that match, by the match's id (L{_plan}):
        #: more than one, so that acks interleaved over several consumers,
        #: each with its own ack subscription, or PubAcks to several
        #: clients, do not each push the other's plan out.
        self._once_plans: Dict[int, Tuple[Any, Plan]] = {}
        #: The plans with queue groups of subjects seen once (L{_plan}),
        #: taken into the plans when their subject comes again, dropped as
        #: the plans are when the subscriptions change.
        self._first = SubjectCache(ONCE_PLANS)

    # -- plans ---------------------------------------------------------------------

    def _plan(self, subject: bytes, keep: bool = True) -> Plan:
        """The delivery plan of C{subject}, kept for next time unless C{keep} is false (a subject used once)."""
        first_sight = False
        if keep:
            if self.used_once and subject.startswith(self.used_once):
                # A subject that names one message (a JetStream ack carries its
                # sequences): used once, its plan would only push out the plans
                # of subjects that are busy, and cost a cache put and drop each.
                keep = False
            elif subject not in self._seen:
                # Seen for the first time: kept only when it comes again.  A
                # reply inbox of its own per request (most clients' requests)
                # is used once, and kept it costs a put and a drop in two
                # caches and pushes busy subjects' plans out (request/reply,
                # an inbox each: 9.3 to 5.5 us a message in process); a busy
                # subject pays one more match, once.
                seen = self._seen
                if len(seen) >= PLAN_CACHE_SIZE:
                    seen.clear()
                seen.add(subject)
                keep = False
                first_sight = True
            else:
                # Seen before: a plan with queue groups was kept aside the
                # first time (plain plans are cheap to make again, or made
                # from a plan of the same match).  Made again, a queue
                # group's plan and match cost a work queue over many subjects
                # 9 us a subject (10 members), a tenth of a quick run's CPU.
                first = self._first.take(subject)
                if first is not None:
                    self._plans.put(subject, first)
                    return cast(Plan, first)
        result = self.sublist.match(subject, keep)
        if not keep:
            once = self._once_plans.get(id(result))
            if once is not None and once[0] is result:
                targets = once[1]
                return targets if targets.callback is not None else targets.renamed(subject)
        targets = plan(subject, result.plain, result.queues)
        if keep:
            self._plans.put(subject, targets)
        elif targets.queues:
            if first_sight:
                self._first.put(subject, targets)
        elif (targets.callback is not None or targets.local) and not result.queues and len(targets.plain) == len(
            result.plain
        ) and all(s.owner.may_receive is None for s in result.plain):
            # Plain local subscribers, none left out by its permissions:
            # every subject with this match has this plan but for the frame
            # prefixes, which name the subject (L{Plan.renamed}; a callback
            # is handed each message's own).  The next PubAck to the same
            # client's inboxes, or ack to the same consumer, starts from it.
            plans = self._once_plans
            if len(plans) >= ONCE_PLANS:
                plans.clear()
            # (The entry holds its match, so the id cannot be another's.)
            plans[id(result)] = (result, targets)
        return targets

    def _forget_plans(self, pattern: bytes) -> None:
        """The subscriptions on C{pattern} changed: the plans of the subjects it may match go."""
        self._plans.forget(pattern)
        self._first.forget(pattern)

    def limit_changed(self, pattern: Optional[bytes] = None) -> None:
        """
        A subscription on C{pattern} gained an auto-unsubscribe maximum: the
        plans it is in go.  None: a connection's permissions changed, and
        every plan goes.
        """
        self._once_plans.clear()
        if pattern is None:
            self._plans.clear()
            self._first.clear()
        else:
            self._plans.forget(pattern)
            self._first.forget(pattern)

    # -- the fast paths ------------------------------------------------------------

    def deliver(
        self, src: ISource, subject: bytes, reply: Optional[bytes], size: int, tail: bytes,
        targets: Optional[Plan] = None, queues: Sequence[bytes] = (),
    ) -> int:
        """
        Deliver a message without headers from C{src}: C{tail} is
        C{b"<size>\\r\\n<payload>\\r\\n"}; C{queues} the queue groups a
        link's frame named.  Returns how many subscribers it was given to.
        C{targets}: the plan, when the caller has made it.
        """
        if targets is None:
            targets = self._targets.get(subject) or self._plan(subject)
        if not targets.simple:
            one = targets.callback
            if one is not None and self.gateways is None:
                # An in-process subscriber alone (it has echo, and no
                # link or gateway takes part): the general path's Message
                # and loops would cost a fifth of a JetStream publish.
                # (The owner is typed Any already: no typing.cast, a
                # Python function called for each message.)
                return one[0].hand_tail(one[1], subject, reply, size, tail)
            message = Message(subject, reply, size, tail, -1, b"")
            return self._general(src, targets, message, message, queues)
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
        if targets.leaf_plain:
            count += self._to_remotes(src, targets.leaf_plain, frame_tail, size)
        if targets.route_plain and not src.kind.one_hop:
            if src.kind.leaf and src.cluster_origin:
                # A leaf's message of a named cluster: LMSG <origin>, so that
                # the other servers keep it from that cluster's other links.
                message = Message(subject, reply, size, tail, -1, b"")
                count += self._plain_remotes(src, message, [r for r, _, _ in targets.route_plain])
            else:
                count += self._to_remotes(src, targets.route_plain, frame_tail, size)
        if targets.queues and not src.kind.link:
            count += self._to_local_queues(src, targets, frame_tail, size)
            if self.gateways is not None and src.kind.to_gateways:
                count += self.gateways.forward(subject, reply, size, tail, -1, b"", targets)
        elif targets.queues or targets.route_mixed or (self.gateways is not None and src.kind.to_gateways):
            count += self._onward(src, targets, None, subject, reply, size, tail, -1, b"", queues)
        return count

    def _to_local_queues(
        self, src: ISource, targets: Plan, frame_tail: bytes, size: int, rest: Any = (),
    ) -> int:
        """
        A client's message to queue groups of local clients only (the plan
        is simple: no route or leaf is a member, nobody has a maximum): one
        member of each, framed as the plain subscribers are, the next one
        when the pick is the publisher without echo (as _deliver_queues
        asks of the same members).  (A method of its own: in deliver() the
        loop cost PyPy's JIT a tenth of every other message's time.)

        C{rest}: what is left of L{deliver_run}'s run (an iterator).  Its
        messages are served here too while their plans are queue groups of
        local clients alone (a work queue over many subjects: one call a
        run, not one a message); the first that is anything else is handed
        on as deliver_run would, and the run goes on there.  Returns how
        many members were given the message when it is alone (C{rest}
        empty: deliver()'s call); deliver_run reads nothing back, and each
        message in the loop is not counted (four units a message less).
        """
        missed = 0
        bits = self._bits
        no_echo = not src.echo
        planned = self._plans.lookup
        # (Appends alone below: nothing here flushes, so the list bound
        # now is the one a flush would take.)
        dirty = self._dirty
        while True:
            # (The last group ends the loop before its back edge, which a
            # for loop takes once a message: a plan of one group then made
            # PyPy's JIT compile the loop as one of its own, entered and
            # left each message, a quarter of a queue message's time.)
            last = targets.queue_last
            for group in targets.queues:
                n = len(group)
                i = bits(30) % n if n > 1 else 0
                conn, prefix, _ = group[i]
                if conn is src and no_echo:
                    other = _other_member(group, i, src)
                    if other is None:
                        missed += 1
                        continue
                    conn, prefix, _ = other
                out = conn.out
                out.append(prefix)
                out.append(frame_tail)
                conn.out_msgs += 1
                conn.out_bytes += size
                if not conn.dirty:
                    conn.dirty = True
                    dirty.append(conn)
                if group is last:
                    break
            for subject, size, frame_tail in rest:
                break
            else:
                return len(targets.queues) - missed
            if size < 0:
                # A batch of one subject (marked by its size's complement).
                self.deliver_batch(src, subject, cast(Any, frame_tail), ~size)
                return 0
            targets = planned(subject) or self._plan(subject)
            if not targets.local_queues:
                self.deliver(src, subject, None, size, frame_tail, targets)
                return 0

    def deliver_run(self, src: ISource, run: Sequence[Tuple[bytes, int, Any]]) -> None:
        """
        Deliver, in order, messages from C{src} without a reply, headers or
        queue names that came together (in one read): each C{(subject,
        size, tail)} as for L{deliver}, or C{(subject, ~size, tails)} as for
        L{deliver_batch} (a batch's size is its complement: see
        L{eventsvc.nats.framing}, by C{LONG_RUN_MAX}).  A message whose plan is local subscribers only
        is framed here; any other goes through L{deliver}, and so the rule.

        Traffic over many subjects makes every message a run of its own
        subject: handed over here, a read's messages cost one call in all,
        not one each (on CPython a call is a tenth of a message's cost).
        """
        if self.gateways is not None or src.kind.link:
            # Each through deliver() and so the rule (clients alone hand runs
            # over; a link's message, were one here, names its queues).
            for subject, size, tail in run:
                if size < 0:
                    self.deliver_batch(src, subject, tail, ~size)
                else:
                    self.deliver(src, subject, None, size, tail)
            return
        # (The plan cache's get, bound once by the cache: a call of a local
        # a message, not a method lookup, and a shorter loop body.)
        planned = self._plans.lookup
        plan = self._plan
        no_echo = not src.echo
        to_queues = self._queue_picks
        # (The rest of a run is handed to to_queues with its message.)
        messages = iter(run)
        # (self._dirty, not a local copy: an in-process subscriber may flush
        # mid-run, and the reloads after each call made this loop's body too
        # long for one bytecode argument, which cost every message.)
        for subject, size, tail in messages:
            if size < 0:
                self.deliver_batch(src, subject, tail, ~size)
                continue
            targets = planned(subject) or plan(subject)
            if targets.local:
                one = targets.one
                if one is not None:
                    # One local subscriber alone (a subject's, most often): as
                    # below, without the loop and its iterator.
                    conn, prefix, append = one
                    if no_echo and conn is src:
                        continue
                    append(prefix)
                    append(tail)
                    conn.out_msgs += 1
                    conn.out_bytes += size
                    if not conn.dirty:
                        conn.dirty = True
                        self._dirty.append(conn)
                    continue
                # (deliver()'s loop, without a reply: written out here, since
                # a call a message is what this method saves.)
                for conn, prefix, append in targets.plain:
                    if conn is src and no_echo:
                        continue
                    append(prefix)
                    append(tail)
                    conn.out_msgs += 1
                    conn.out_bytes += size
                    if not conn.dirty:
                        conn.dirty = True
                        self._dirty.append(conn)
            elif targets.local_queues:
                # Queue groups of local clients alone (a work queue over
                # many subjects): deliver() would only ask the same.  It
                # serves the run's next messages too while they are the same.
                to_queues(src, targets, tail, size, messages)
            else:
                one = targets.callback
                if one is not None:
                    # An in-process subscriber alone (a JetStream ack, a
                    # stream's subject): deliver()'s first case, without
                    # its call (no gateway: tested above).
                    one[0].hand_tail(one[1], subject, None, size, tail)
                else:
                    self.deliver(src, subject, None, size, tail, targets)

    def deliver_batch(self, src: ISource, subject: bytes, tails: List[bytes], size: int) -> None:
        """
        Deliver several messages to C{subject}, none with a reply subject or
        queue names: C{tails} as for L{deliver}, C{size} the total of their
        payloads.  Each plain subscriber gets all of them in one joined frame.
        """
        if len(tails) == 1:
            self.deliver(src, subject, None, size, tails[0])
            return
        targets = self._targets.get(subject) or self._plan(subject)
        kind = src.kind
        if not targets.simple or (targets.route_plain and kind.leaf and src.cluster_origin and not kind.one_hop):
            for tail in tails:
                self.deliver(src, subject, None, _payload_size(tail), tail, targets)
            return
        k = len(tails)
        no_echo = not src.echo
        dirty = self._dirty
        # Routes and leafs with plain interest take the same joined frames
        # ("RMSG $G <subject> ", "LMSG <subject> ").
        remotes: Sequence[Target] = targets.route_plain if not kind.one_hop else ()
        if targets.leaf_plain:
            remotes = [*remotes, *(leaf for leaf in targets.leaf_plain if reaches(src, leaf[0]))]
        # Subscribers with the same prefix (same sid: most clients' first
        # subscription is sid 1) share one joined frame: built once, not per subscriber.
        # Large payloads on PyPy are not joined but handed on as pieces, which
        # the socket takes as they are (tcp.TurnEndWrites' sendmsg).
        pieces = BATCH_PIECES_FROM is not None and size >= k * BATCH_PIECES_FROM
        joined: Dict[bytes, Any] = {}
        for conn, prefix, append in [*targets.plain, *remotes] if remotes else targets.plain:
            if conn is src and no_echo:
                continue
            frames: Any = joined.get(prefix)
            if frames is None:
                if pieces:
                    frames = joined[prefix] = [piece for tail in tails for piece in (prefix, tail)]
                else:
                    # prefix + prefix.join(tails) == prefix t1 prefix t2 ... prefix tk
                    frames = joined[prefix] = prefix + prefix.join(tails)
            if pieces:
                conn.out.extend(frames)
            else:
                append(frames)
            conn.out_msgs += k
            conn.out_bytes += size
            if not conn.dirty:
                conn.dirty = True
                dirty.append(conn)
        if targets.queues and groups_served(src, ()) is None:
            bits = self._bits
            # Tails of one length have payloads of one size, the first's,
            # when its size has no leading zero and the total is k times it:
            # most batches, whose payloads' sizes need not be read one by
            # one.  (A size with leading zeros, which nats-server accepts,
            # is smaller than its length allows: "05\r\nhello\r\n" is as
            # long as "6\r\nhello!\r\n"; without, it is the largest, so
            # the total says whether any tail of the length had them.)
            head = tails[0]
            first = len(head)
            each = _payload_size(head)
            if each * k != size or head[0] == 48:
                each = -1
            else:
                for tail in tails:
                    if len(tail) != first:
                        each = -1
                        break
            for group in targets.queues:
                members = group
                if no_echo:
                    members = [m for m in group if m[0] is not src]
                    if not members:
                        continue
                n = len(members)
                for tail in tails:
                    conn, prefix, _ = members[bits(30) % n] if n > 1 else members[0]
                    out = conn.out
                    out.append(prefix)
                    out.append(tail)
                    conn.out_msgs += 1
                    conn.out_bytes += each if each >= 0 else _payload_size(tail)
                    if not conn.dirty:
                        conn.dirty = True
                        dirty.append(conn)
        if self.gateways is not None and kind.to_gateways:
            self.gateways.forward_batch(subject, tails, size, targets)

    def _to_remotes(self, src: ISource, remotes: Sequence[Target], frame_tail: bytes, size: int) -> int:
        """A message's C{RMSG} (C{LMSG}) to each route (leaf) with plain interest that C{src}'s message L{reaches}."""
        count = 0
        check = src.kind.remote
        for conn, prefix, append in remotes:
            if check and not reaches(src, conn):
                continue
            append(prefix)
            append(frame_tail)
            conn.out_msgs += 1
            conn.out_bytes += size
            self.mark_dirty(conn)
            count += 1
        return count

    # -- the general path ----------------------------------------------------------

    def deliver_message(
        self, src: ISource, subject: bytes, reply: Optional[bytes], size: int, tail: bytes,
        hdr_len: int = -1, body: bytes = b"", queues: Sequence[bytes] = (), routed_reply: Any = _SAME,
    ) -> int:
        """
        Deliver any message from C{src}: C{tail} as for L{deliver}, or with
        headers (C{hdr_len} >= 0) C{body}, the header block, the payload
        and CRLF, and C{size} their total.  C{queues}: the groups a link's
        frame named.  C{routed_reply}: the reply routes and leafs see when
        it is not C{reply} (a gateway's routed reply, which this server's
        subscribers see without its C{_GR_.} prefix).  Subscribers that did
        not negotiate headers get a plain MSG without them.
        """
        targets = self._targets.get(subject) or self._plan(subject)
        same = routed_reply is _SAME or routed_reply is reply
        if hdr_len < 0 and same:
            return self.deliver(src, subject, reply, size, tail, targets, queues)
        message = Message(subject, reply, size, tail, hdr_len, body)
        routed = message if same else Message(subject, routed_reply, size, tail, hdr_len, body)
        return self._general(src, targets, message, routed, queues)

    def _general(self, src: ISource, targets: Plan, message: "Message", routed: "Message", queues: Sequence[bytes]) -> int:
        """Every target of C{targets} that the rule lets C{src}'s message reach; C{routed}: the message as links get it."""
        count = 0
        give = self._give
        for sub, (conn, prefix, _) in zip(targets.plain_subs, targets.plain):
            count += give(src, sub, conn, prefix, message)
        count += self._plain_remotes(src, routed, targets.plain_remotes())
        return count + self._onward(
            src, targets, message, routed.subject, routed.reply, message.size, message.tail, message.hdr_len,
            message.body, queues, routed,
        )

    def _onward(
        self, src: ISource, targets: Plan, message: Optional["Message"], subject: bytes, reply: Optional[bytes],
        size: int, tail: bytes, hdr_len: int, body: bytes, queues: Sequence[bytes], routed: Optional["Message"] = None,
    ) -> int:
        """The queue groups that C{src}'s message serves, and the gateways when its kind offers them."""
        count = 0
        if targets.route_mixed or targets.queues:
            only = groups_served(src, queues)
            if only is None or only or targets.route_mixed:
                if message is None:
                    message = routed = Message(subject, reply, size, tail, hdr_len, body)
                count += self._deliver_queues(src, targets, message, only, routed)
        if self.gateways is not None and src.kind.to_gateways:
            count += self.gateways.forward(subject, reply, size, tail, hdr_len, body, targets)
        return count

    def _plain_remotes(self, src: ISource, message: "Message", remotes: List[ISubscriber]) -> int:
        """A message's frame, naming no queue group, to each of C{remotes} (routes, leafs) that C{src}'s message L{reaches}."""
        count = 0
        for conn in remotes:
            if reaches(src, conn):
                conn.out.append(remote_frame(src, conn, message, ()))
                conn.out_msgs += 1
                conn.out_bytes += message.size
                self.mark_dirty(conn)
                count += 1
        return count

    def _deliver_queues(
        self, src: ISource, targets: Plan, message: "Message", only: Optional[Sequence[bytes]] = None,
        routed: Optional["Message"] = None,
    ) -> int:
        """
        One member per queue group, a local one when there is one (as
        nats-server prefers); otherwise one route or leaf with members that
        L{takes_group}, told the group's name in its RMSG (LMSG).  The routes
        and leafs with plain interest that are members too get one frame
        each, naming the groups they were given.  C{only}: the groups a
        link's message names.  C{routed}: the message as routes get it
        (default C{message}).
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
                if routes:
                    routes = [r for r in routes if takes_group(src, r)]
                if routes:
                    route = routes[self._random.randrange(len(routes))] if len(routes) > 1 else routes[0]
                    if assigned is None:
                        assigned = {}
                    assigned.setdefault(route, []).append(name)
        if assigned or targets.route_mixed:
            assigned = assigned or {}
            mixed = [r for r in targets.route_mixed if r not in assigned and reaches(src, r)]
            for route in list(assigned) + mixed:
                route.out.append(remote_frame(src, route, routed, assigned.get(route, [])))
                route.out_msgs += 1
                route.out_bytes += routed.size
                self.mark_dirty(route)
                count += 1
        return count

    def _give(self, src: ISource, sub: Subscription, conn: ISubscriber, prefix: bytes, message: "Message") -> int:
        """The general path: one message to one subscription."""
        if conn is src and not src.echo:
            return 0
        if sub.max:
            if sub.delivered >= sub.max:
                return 0
            sub.delivered += 1
            if sub.delivered >= sub.max:
                conn.remove_subscription(sub)
        if conn.kind is _IN_PROCESS:
            in_process: Any = conn
            return in_process.hand(sub, message)
        conn.out.append(message.frame(prefix, conn.headers))
        conn.out_msgs += 1
        conn.out_bytes += message.size
        if not conn.dirty:
            conn.dirty = True
            self._dirty.append(conn)
        return 1

    # -- writing -------------------------------------------------------------------

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


def _other_member(
    group: List[Tuple[ISubscriber, bytes, Subscription]], i: int, src: ISource,
) -> Optional[Tuple[ISubscriber, bytes, Subscription]]:
    """
    The member of C{group} after its C{i}th (the pick) that is not C{src}
    (a publisher without echo that is a member of the group), or None
    when it is the only member.
    """
    n = len(group)
    for j in range(1, n):
        member = group[(i + j) % n]
        if member[0] is not src:
            return member
    return None


def _payload_size(tail: bytes) -> int:
    """The payload size of a C{b"<size>\\r\\n<payload>\\r\\n"} tail."""
    return len(tail) - tail.index(b"\n") - 3
