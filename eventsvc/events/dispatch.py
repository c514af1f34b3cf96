"""
The dispatcher: takes events from the broker, checks them, bounds the queue,
makes them durable, acknowledges, and hands them to their handlers.

It subscribes to C{<prefix>.>} in a queue group, so that in a cluster each
event is handled by one node.  A publish with a reply subject gets
C{{"success": true, "event_id": ...}} once the event is accepted (after the
spool's group commit when there is a spool), or C{{"success": false,
"error": ...}} for an invalid event, an unknown type, a type with no
configured handler, a full queue, or a store that cannot keep it (a full
disk).  Nothing here blocks: a full queue or a full disk is a refusal, not
a wait.

With a spool, an event is handed to its handlers, counted and acknowledged
only once its record is durable (at the end of the reactor turn it came
in); one the store could not keep is refused then and forgotten.  A full
store keeps delivering what it holds, and is tried again every
L{EventDispatcher.STORE_RETRY} seconds (and on every publish) until it
takes writes again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from twisted.application.service import Service
from twisted.logger import Logger

from eventsvc.events import types
from eventsvc.events.deadletters import REPLAY_PREFIX
from eventsvc.events.handlers import Delivery, HandlerService
from eventsvc.events.spool import Spool, StoreError

if TYPE_CHECKING:  # pragma: no cover
    from eventsvc.events.log import StreamLog
from eventsvc.nats.listener import ListenError
from eventsvc.nats.timers import cancel


class EventDispatcher(Service):
    log = Logger()

    #: Seconds a done record may wait for its fsync.
    DONE_SYNC = 0.2
    #: Seconds between tries of a store that cannot be written (held done marks, room again).
    STORE_RETRY = 1.0

    def __init__(
        self,
        broker: Any,
        registry: types.Registry,
        handlers: Dict[str, HandlerService],
        event_limit: int,
        clock: Any,
        spool: "Optional[Union[Spool, StreamLog]]" = None,
        prefix: str = "event",
        queue_group: str = "eventsvc",
        make_targets: Optional[Callable[[Any], Dict[str, Any]]] = None,
    ) -> None:
        self.setName("events")
        #: The delivery targets a new configuration names, by handler (see prepare_reload).
        self.make_targets = make_targets
        self.broker = broker
        self.registry = registry
        self.handlers = handlers
        self.event_limit = event_limit
        self.clock = clock
        self.spool = spool
        self.prefix = prefix
        self.queue_group = queue_group
        self._subscription: Any = None
        self._replays: Any = None
        self._remaining: Dict[int, Set[str]] = {}
        self._seq = 0
        self._acks: List[Tuple[str, bytes]] = []
        #: Accepted into the spool this turn, not yet durable: per sequence
        #: number, (event id, handlers, bytes, type, reply subject).
        self._unsynced: Dict[int, Tuple[str, Tuple[str, ...], bytes, str, Optional[str]]] = {}
        self._sync_call: Any = None
        self._done_sync: Any = None
        self._store_retry: Any = None
        #: Per event type, its handlers, or why it is refused; for the
        #: registry and handlers it was worked out from.
        self._routes: Dict[str, Tuple[Tuple[str, ...], Optional[str]]] = {}
        self._routes_from: Any = None
        self.accepted = self.refused = 0
        self.accepted_by_type: Dict[str, int] = {}
        self.refused_by_reason: Dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Events accepted and not yet delivered (or dead-lettered) by every handler."""
        return len(self._remaining)

    def prepare_reload(self, config: Any) -> Callable[[], None]:
        """
        What a new configuration changes here (handler addresses, routing,
        batching, event_limit), worked out now (raising on a bad one) and
        applied by the callable returned.
        """
        targets = self.make_targets(config) if self.make_targets is not None else {}
        registry = types.Registry(config.events.routing)

        def apply() -> None:
            for name, target in targets.items():
                self.handlers[name].target = target
            for name, handler in self.handlers.items():
                handler.batch_max, handler.batch_wait = config.events.batching(name)
            self.registry = registry
            self.event_limit = config.service.event_limit

        return apply

    def startService(self) -> None:
        super().startService()
        if self.spool is not None:
            try:
                owed = self.spool.open()
            except StoreError as e:
                raise ListenError("{} ({})".format(e, e.key) if e.key else str(e))
            for p in owed:
                self._admit(p.seq, p.event_id, [h for h in p.handlers if h in self.handlers], p.body)
            self._watch_store()
        self._subscription = self.broker.subscribe(self.prefix + ".>", self._received, queue=self.queue_group)
        self._replays = self.broker.subscribe(REPLAY_PREFIX + "*", self._replayed, queue=self.queue_group)

    def stopService(self) -> Any:
        super().stopService()
        for subscription in (self._subscription, self._replays):
            if subscription is not None:
                subscription.unsubscribe()
        self._subscription = self._replays = None
        self._sync_call, self._store_retry = cancel(self._sync_call), cancel(self._store_retry)
        self._sync()
        if self.spool is not None:
            self.spool.close()

    def _received(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        self._accept(subject[len(self.prefix) + 1 :], reply, payload, None)

    def _replayed(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """
        A dead-lettered event put back (C{eventsvc dead-letters replay}) for
        the one handler named by the subject, C{$EVENTSVC.replay.<handler>}:
        spooled and acknowledged like any event, but not given again to the
        handlers that already had it.
        """
        handler = subject[len(REPLAY_PREFIX):]
        if handler not in self.handlers:
            self._refuse(reply, "no_handler", "no handler {!r} here ([handlers] {})".format(handler, handler), None)
            return
        self._accept(None, reply, payload, (handler,))

    def _accept(self, subject_type: Optional[str], reply: Optional[str], payload: bytes, only: Optional[Tuple[str, ...]]) -> None:
        """Check, bound, spool and acknowledge one event; C{only}: these handlers, not its type's."""
        try:
            event = types.parse(payload, subject_type)
        except types.EventError as e:
            self._refuse(reply, "invalid", str(e), None)
            return
        event_id = event["event_id"]
        type_name = event["type"]["name"]
        if only is None:
            handlers, problem = self._route(type_name)
        else:
            handlers, problem = only, None
        if problem is not None:
            self._refuse(reply, "no_handler", problem, event_id)
            return
        if len(self._remaining) + len(self._unsynced) >= self.event_limit:
            self._refuse(reply, "queue_full", "queue full: {} events waiting ([service] event_limit)".format(self.pending), event_id)
            return
        if self.spool is not None:
            try:
                seq = self.spool.accept(event_id, handlers, payload, type_name)
            except StoreError as e:
                self._refuse(reply, e.reason, str(e), event_id)
                self._watch_store()
                return
            # Handed on and acknowledged at the end of the turn, once durable.
            self._unsynced[seq] = (event_id, handlers, payload, type_name, reply)
            if self._sync_call is None:
                self._sync_call = self.clock.callLater(0, self._sync)
            return
        self._seq += 1
        seq = self._seq
        self.accepted += 1
        self.accepted_by_type[type_name] = self.accepted_by_type.get(type_name, 0) + 1
        self._admit(seq, event_id, handlers, payload, type_name)
        if reply:
            # Acknowledged together at the end of the reactor turn: one
            # write for all.
            self._acks.append((reply, _accepted(event_id)))
            if self._sync_call is None:
                self._sync_call = self.clock.callLater(0, self._sync)

    def _route(self, type_name: str) -> Tuple[Tuple[str, ...], Optional[str]]:
        """The handlers of C{type_name}, or why its events are refused: worked out once per type."""
        if self._routes_from != (self.registry, tuple(self.handlers)):
            self._routes_from = (self.registry, tuple(self.handlers))
            self._routes = {}
        route = self._routes.get(type_name)
        if route is None:
            handlers = self.registry.handlers_for(type_name)
            missing = [h for h in handlers if h not in self.handlers]
            problem = None
            if not handlers or missing:
                problem = "no handler configured for {} ([handlers] {})".format(type_name, ", ".join(missing or ["-"]))
            route = self._routes[type_name] = (handlers, problem)
        return route

    def _admit(self, seq: int, event_id: str, handlers: Sequence[str], body: bytes, type_name: str = "") -> None:
        if not handlers:
            return
        if not type_name:
            # Replayed from the spool: the type is in the event.
            try:
                type_name = json.loads(body)["type"]["name"]
            except (ValueError, KeyError, TypeError):
                type_name = ""
        self._remaining[seq] = set(handlers)
        now = self.clock.seconds()
        for name in handlers:
            self.handlers[name].enqueue(Delivery(seq, event_id, body, now, self._finished, type_name))

    def _finished(self, seqs: Sequence[int], handler: str) -> None:
        """C{handler} is done with these events (a batch): one spool record for all of them."""
        ours = []
        for seq in seqs:
            remaining = self._remaining.get(seq)
            if remaining is None:
                continue
            ours.append(seq)
            remaining.discard(handler)
            if not remaining:
                del self._remaining[seq]
        if self.spool is not None and ours:
            self.spool.done_many(ours, handler)
            # No one waits on a done record: it is made durable with the next
            # acknowledgements, or within DONE_SYNC seconds.  A crash before
            # then delivers those events again (at least once), and costs no
            # fsync per delivery meanwhile.
            if self._sync_call is None and self._done_sync is None:
                self._done_sync = self.clock.callLater(self.DONE_SYNC, self._sync)

    def _sync(self) -> None:
        # Whichever timer runs it, this sync serves the others too.
        self._sync_call, self._done_sync = cancel(self._sync_call), cancel(self._done_sync)
        if self.spool is not None:
            unsynced, self._unsynced = self._unsynced, {}
            # (The spool settles at once; the stream log when its store's
            # write is durable, a turn later.)
            self.spool.settle(lambda lost: self._settled(unsynced, lost))
        else:
            self._send_acks()

    def _settled(self, unsynced: Dict[int, Tuple[str, Tuple[str, ...], bytes, str, Optional[str]]], lost: Sequence[int]) -> None:
        """The events of one turn are durable, but for C{lost}: admit and acknowledge them, refuse the others."""
        spool = self.spool
        assert spool is not None
        refused = set(lost)
        for seq, (event_id, handlers, payload, type_name, reply) in unsynced.items():
            if seq in refused:
                # Never acknowledged, never delivered: the publisher is told.
                error = spool.error or "store failed"
                self._refuse(reply, "store_full" if spool.state == "full" else "store_read_only", error, event_id)
                continue
            self.accepted += 1
            self.accepted_by_type[type_name] = self.accepted_by_type.get(type_name, 0) + 1
            self._admit(seq, event_id, handlers, payload, type_name)
            if reply:
                self._acks.append((reply, _accepted(event_id)))
        self._watch_store()
        self._send_acks()

    def _send_acks(self) -> None:
        acks, self._acks = self._acks, []
        if acks:
            self.broker.publish_many(acks)

    def _watch_store(self) -> None:
        """While the store cannot be written (or holds done marks), try it again every STORE_RETRY seconds."""
        spool = self.spool
        if spool is None or not self.running or (spool.state == "ok" and not spool.held):
            return
        if self._store_retry is None or not self._store_retry.active():
            self._store_retry = self.clock.callLater(self.STORE_RETRY, self._retry_store)

    def _retry_store(self) -> None:
        self._store_retry = None
        self._sync()

    @property
    def store(self) -> Dict[str, Any]:
        """Where accepted events are kept, and whether it takes writes: /eventz's "store"."""
        spool = self.spool
        if spool is None:
            return {"kind": "memory", "path": None, "state": "ok", "error": None}
        kind = "file" if isinstance(spool, Spool) else "stream"
        return {"kind": kind, "path": spool.directory, "state": spool.state, "error": spool.error}

    def _refuse(self, reply: Optional[str], reason: str, error: str, event_id: Optional[str]) -> None:
        self.refused += 1
        self.refused_by_reason[reason] = self.refused_by_reason.get(reason, 0) + 1
        self.log.info("event {event_id} refused: {error}", event_id=event_id or "-", error=error)
        if reply:
            self.broker.publish(reply, _answer(False, error=error, event_id=event_id, reason=reason))


def _accepted(event_id: str) -> bytes:
    """C{_answer(True, event_id=event_id)}, without building a dict per event."""
    if event_id.isascii() and event_id.isprintable() and '"' not in event_id and "\\" not in event_id:
        # Nothing to escape (the common case).
        return b'{"success": true, "event_id": "' + event_id.encode("ascii") + b'"}'
    return b'{"success": true, "event_id": ' + json.dumps(event_id).encode("utf-8") + b"}"


def _answer(success: bool, **fields: Any) -> bytes:
    body = {"success": success}
    body.update({k: v for k, v in fields.items() if v is not None})
    return json.dumps(body).encode("utf-8")
