"""
Which gateways a message goes to, and what comes in from them: the
message half of L{eventsvc.nats.links.gateway.GatewayManager}, apart from
its dialling, handshakes and interest.

Out: per subject, a plan (the gateways whose peer wants it, each with its
frame's start) kept until their interest changes; queue groups, routed
replies and headers take the general path.  In: a message from another
cluster goes to the broker with its reply made plain, and a routed reply
for another server of ours goes on by route.

These are the broker's hooks (L{eventsvc.nats.delivery}) and the hot path
of a supercluster: one plan lookup and a few appends per message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence

from eventsvc.nats.frames import RMSG, link_message, rmsg_head
from eventsvc.nats.kinds import Kind
from eventsvc.nats.links.jsdomain import ACK_PREFIX
from eventsvc.nats.links.replies import CLUSTER_AT, GR_PREFIX, HASH_LEN, SERVER_AT, SUBJECT_AT, ReplyMap, gateway_hash, routed, unwrapped
from eventsvc.nats.subjects import SubjectCache

if TYPE_CHECKING:
    from eventsvc.nats.links.gateway_connection import GatewayConnection

#: A gateway plan saying "take the general path".
GENERAL = object()


class ReplySource:
    """The source of a routed reply that reached its cluster: delivered as a client's publish is."""

    kind = Kind.CLIENT
    cid = 0
    cluster_origin = b""
    message_origin: Optional[bytes] = None
    echo = True
    headers = True


class GatewayMessages:
    """
    The message paths of the gateway manager (a mixin: the manager holds
    the state they read, declared here).
    """

    broker: Any
    clock: Any
    settings: Any
    routes: Any
    source: ReplySource
    reply_map: ReplyMap
    replies: Dict[bytes, Any]
    dropped: int
    server_hash: bytes
    _outbound_list: List[Any]
    _plans: SubjectCache
    _plan_entries: Dict[bytes, Any]
    _reply: Callable[[Optional[bytes]], Optional[bytes]]
    strip: Callable[[Optional[bytes]], Optional[bytes]]

    def _plan(self, subject: bytes) -> Any:
        plan: Any = []
        exports = self.settings.exports
        if exports is not None and not exports.may_publish(unwrapped(subject)):
            pass  # nothing goes
        elif subject[:CLUSTER_AT] == GR_PREFIX:
            plan = GENERAL
        else:
            head = rmsg_head(subject)
            for conn in self._outbound_list:
                plain, queues = conn.interest.wants(subject)
                if queues:
                    plan = GENERAL
                    break
                if plain:
                    plan.append((conn, head))
        self._plans.put(subject, plan)
        return plan

    def has_interest(self, subject: bytes) -> bool:
        """
        Whether an outbound gateway would take a message on C{subject}
        (nats-server's C{hasGatewayInterest}): in optimistic mode, unless
        the other cluster said it has none.  A push consumer whose deliver
        subject only a client over there subscribes to is active by it.
        """
        for conn in self._outbound_list:
            plain, queues = conn.interest.wants(subject)
            if plain or queues:
                return True
        return False

    def forward(
        self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes, targets: Any,
    ) -> int:
        """The broker's hook: a message from this cluster, to the gateways that want it."""
        if not self._outbound_list:
            return 0
        if not (self.replies and subject in self.replies):
            plan = self._plan_entries.get(subject)
            if plan is None:
                plan = self._plan(subject)
            if plan is not GENERAL and hdr_len < 0:
                # The usual case: plain interest only, one frame per gateway.
                frame_tail = tail if reply is None else self._reply(reply) + b" " + tail  # type: ignore[operator]
                for conn, head in plan:
                    conn.out.append(head)
                    conn.out.append(frame_tail)
                    conn.out_msgs += 1
                    conn.out_bytes += size
                    if not conn.dirty:
                        self.broker.mark_dirty(conn)
                return len(plan)
        return self._forward(subject, reply, size, tail, hdr_len, body, targets)

    def forward_batch(self, subject: bytes, tails: List[bytes], size: int, targets: Any) -> None:
        """Several messages to one subject, no reply: one joined frame per gateway when it can."""
        if not self._outbound_list:
            return
        plan = None if self.replies and subject in self.replies else self._plan_entries.get(subject)
        if plan is None and not (self.replies and subject in self.replies):
            plan = self._plan(subject)
        if plan is None or plan is GENERAL:
            for tail in tails:
                self._forward(subject, None, len(tail) - tail.index(b"\n") - 3, tail, -1, b"", targets)
            return
        k = len(tails)
        for conn, head in plan:
            conn.out.append(head + head.join(tails))
            conn.out_msgs += k
            conn.out_bytes += size
            if not conn.dirty:
                self.broker.mark_dirty(conn)

    def _forward(
        self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes, targets: Any,
    ) -> int:
        """The general path: queue groups, routed replies and subjects, headers."""
        outs = self._outbound_list
        exports = self.settings.exports
        if exports is not None and not exports.may_publish(unwrapped(subject)):
            return 0
        if self.replies:
            subject = self.reply_map.back(subject)  # an answer to a routed request: straight back
        if subject[:CLUSTER_AT] == GR_PREFIX and routed(subject):
            wanted = subject[CLUSTER_AT : CLUSTER_AT + HASH_LEN]
            for conn in outs:
                if conn.hash == wanted:
                    conn.send_message(subject, self._reply(reply), (), size, tail, hdr_len, body)
                    return 1
            return 0
        served = {name for name, _ in targets.queue_info} if targets.queue_info else set()
        count = 0
        mapped: Optional[bytes] = None
        for conn in outs:
            plain, queues = conn.interest.wants(subject)
            if queues:
                queues = [q for q in queues if q not in served]
                served.update(queues)
            if not plain and not queues:
                continue
            if reply is not None and mapped is None:
                mapped = self._reply(reply)
            conn.send_message(subject, mapped, queues, size, tail, hdr_len, body)
            count += 1
        return count

    def received_batch(self, conn: "GatewayConnection", subject: bytes, tails: List[bytes], size: int) -> None:
        """Several plain messages from another cluster to one subject, no reply."""
        imports = self.settings.imports
        if subject[:CLUSTER_AT] == GR_PREFIX or (imports is not None and not imports.may_publish(subject)):
            for tail in tails:
                self.received(conn, subject, None, (), len(tail) - tail.index(b"\n") - 3, tail, -1, b"")
            return
        self.broker.deliver_batch(conn, subject, tails, size)

    def received(
        self, conn: "GatewayConnection", subject: bytes, reply: Optional[bytes], queues: Sequence[bytes],
        size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> int:
        """A message from another cluster."""
        imports = self.settings.imports
        if imports is not None and not imports.may_publish(unwrapped(subject)):
            self.dropped += 1
            return 0
        if subject[:CLUSTER_AT] == GR_PREFIX and routed(subject):
            return self._routed_reply(conn, subject, reply, size, tail, hdr_len, body)
        plain = self.strip(reply)
        if plain is not None and plain[:8] == ACK_PREFIX:
            # A JetStream delivery (C{<ack>@<stream subject>}): shown as its stream subject.
            count = self.broker.deliver_crossed(conn, subject, plain, queues, size, tail, hdr_len, body)
            if count is not None:
                return count
        return self.broker.deliver_message(
            conn, subject, plain, size, tail, hdr_len, body, queues, routed_reply=reply
        )

    def from_route(
        self, route: Any, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes],
        size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> int:
        """A message from a route with a routed subject or reply (a route's hook)."""
        if routed(subject):
            return self._routed_reply(route, subject, reply, size, tail, hdr_len, body)
        plain = self.strip(reply)
        if plain is not None and plain[:8] == ACK_PREFIX:
            count = self.broker.deliver_crossed(route, subject, plain, queues, size, tail, hdr_len, body)
            if count is not None:
                return count
        return self.broker.deliver_message(route, subject, plain, size, tail, hdr_len, body, queues)

    def _routed_reply(
        self, conn: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> int:
        """nats-server's handleGatewayReply: a reply routed to this cluster, perhaps to another server of it."""
        if not self.reply_map.ours(subject):
            self.dropped += 1
            return 0
        server = subject[SERVER_AT : SERVER_AT + HASH_LEN]
        if conn.kind is Kind.GATEWAY and server != self.server_hash and self.routes is not None:
            for route in list(self.routes.routes.values()):
                if gateway_hash(route.remote_id) == server:
                    route.send(link_message(RMSG, subject, reply, (), size, tail, hdr_len, body))
                    return 1
        plain = subject[SUBJECT_AT:]
        local_reply = self.strip(reply)
        if local_reply is not None and local_reply[:8] == ACK_PREFIX:
            # A JetStream delivery to a routed inbox (a pull request made here).
            count = self.broker.deliver_crossed(self.source, plain, local_reply, (), size, tail, hdr_len, body)
            if count is not None:
                return count
        if hdr_len < 0:
            return self.broker.deliver(self.source, plain, local_reply, size, tail)
        return self.broker.deliver_message(self.source, plain, local_reply, size, b"", hdr_len, body)
