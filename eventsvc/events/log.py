"""
The event log on a JetStream stream: typed events kept as messages of one
stream (C{EVENTS}, subjects C{<prefix>.>}), each handler's progress kept
as a durable consumer of it (named after the handler).

L{StreamLog} gives the dispatcher what L{eventsvc.events.spool.Spool}
gives it (accept, done for a batch, settle per turn, what is owed at open,
state), so the handlers' batching, retries, backoff and dead letters are
unchanged; only where the records live changes.  There is then one store
format and one crash recovery (the JetStream file store's), and any NATS
client can read the history with a consumer of its own.

How it maps:
  - an accepted event is a message on C{<prefix>.<type>} whose payload is
    the event's bytes as published, with a header C{Eventsvc-Handlers}
    naming the handlers it was routed to;
  - it is acknowledged to its publisher only from the stream store's
    durable callback, and the stream's store fsyncs every write whatever
    [jetstream] sync_interval says (the spool's promise);
  - each handler's consumer (pull, explicit acks, an ack_wait of a year:
    the handler owns retries and backoff) is told in process of the
    events routed to it once they are durable
    (L{Consumer.deliver_in_process}: they are pending, as delivered, with
    no trip through the broker), and acks them when the handler is done
    (L{Consumer.ack_in_process}: the spool's done record); the events not
    routed to it are passed over, as a filter would;
  - what is owed at open: per handler, what its consumer delivered and
    did not ack, and what it has not delivered yet.

The stream is fed only in process (L{JetStream.fed_in_process}): a client
publishing on C{event.x} reaches the dispatcher, which checks it, and is
answered as before, never with a PubAck.

An existing spool in data_dir is carried over on the first start: what
it still owes is stored in the stream (each message with a header
C{Eventsvc-Spool} holding its spool sequence), and once that write is
durable the spool's files are deleted.  A crash in between carries it
over again at the next start, skipping what is already in the stream.

This module knows nothing of HTTP or handlers' targets.
"""

from __future__ import annotations

import json
import os
import re
import time
import zlib
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger
from zope.interface import provider

from eventsvc.events.spool import LEGACY_NAME, RESERVE, Pending, Spool, StoreError, segment_paths
from eventsvc.files import Disk
from eventsvc.jetstream.engine import JetStream, JetStreamSettings
from eventsvc.jetstream.store import StoredMessage
from eventsvc.jetstream.wire import parse_headers

#: The header naming the handlers an event was routed to.
HANDLERS_HEADER = "Eventsvc-Handlers"
#: How the event log's handlers' consumers describe themselves (L{StreamLog.open}); L{read_owed} knows them by it.
HANDLER_DESCRIPTION = "eventsvc handler {}"
#: The header of an event carried over from the spool: its spool sequence.
SPOOL_HEADER = "Eventsvc-Spool"
#: The consumers' ack_wait: the handler retries, the consumer never has to
#: (a year, in nanoseconds).
ACK_WAIT = 365 * 24 * 3600 * 1_000_000_000
#: Seconds the handlers' consumers' records (deliveries, acks) may wait for
#: their write: the spool's done records' bound (EventDispatcher.DONE_SYNC).
#: A kill -9 within it delivers those events again (at least once); it
#: saves a write and a timer per turn that finishes events.
RECORD_HOLD = 0.2

#: The free space under which the history every handler has finished gives
#: way before a write needs it: a quarter of a small disk, at most 256 MiB.
#: (The spool deleted what was finished at once; a stream that kept its
#: history until a write failed refused events the history could have made
#: room for.)
HEADROOM = 256 * 1024 * 1024
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


def _subject_for(prefix: str, type_name: str) -> str:
    """The subject an event of C{type_name} is kept on (C{<prefix>._} when its name is no subject)."""
    tokens = type_name.split(".")
    if type_name and all(_TOKEN.match(token) for token in tokens):
        return prefix + "." + type_name
    return prefix + "._"


_known: Dict[bytes, Tuple[str, ...]] = {}


def _handlers_of(headers: Optional[bytes]) -> Tuple[str, ...]:
    """The handlers a stored event's header names (cached per header block: there are few)."""
    if headers is None:
        return ()
    found = _known.get(headers)
    if found is None:
        found = _parse_handlers(headers)
        if len(_known) < 4096:
            _known[headers] = found
    return found


def _parse_handlers(headers: Optional[bytes]) -> Tuple[str, ...]:
    values = parse_headers(headers)[1].get(HANDLERS_HEADER) if headers else None
    if not values:
        return ()
    return tuple(h for h in values[0].split(",") if h)


class _Handler:
    """One handler and its consumer."""

    def __init__(self, name: str, consumer: Any) -> None:
        self.name = name
        self.consumer = consumer


class StreamLog:
    """
    The dispatcher's log on the stream C{name} of C{engine}.

    @ivar state: "ok", "full" or "read-only", as the spool's.
    @ivar error: why it is not "ok".
    """

    log = Logger()

    def __init__(
        self,
        engine: Any,
        handlers: Sequence[str],
        prefix: str = "event",
        name: str = "EVENTS",
        max_age: float = 0.0,
        max_bytes: int = -1,
        spool_dir: Optional[str] = None,
    ) -> None:
        """
        @param handlers: the handlers that run (each gets its consumer).
        @param max_age: seconds the stream keeps an event (0: for ever).
        @param max_bytes: bytes it keeps at most (-1: no limit).
        @param spool_dir: where an older spool may be, to carry over.
        """
        self.engine = engine
        self.names = tuple(handlers)
        self.prefix = prefix
        self.name = name
        self.max_age = max_age
        self.max_bytes = max_bytes
        self.spool_dir = spool_dir
        self.held = 0
        self.stream: Any = None
        self._handlers: Dict[str, _Handler] = {}
        self._handlers_header: Dict[Tuple[str, ...], bytes] = {}
        #: Accepted since the last settle: the sequences, ascending, by the
        #: handlers they were routed to (few keys: one per route).
        self._unsettled: Dict[Tuple[str, ...], List[int]] = {}
        #: The subject of each event type.
        self._subjects: Dict[str, str] = {}
        self.disk = Disk()
        #: Why the log opened on a disk with no room (refusing until there is), or None.
        self._full_at_open: Optional[str] = None
        #: Finished events dropped on a nearly full disk since it was last said, and when.
        self._dropped = 0
        self._said_dropped = -60.0
        # Registered before the engine starts: the stream it restores is not
        # fed from the broker, and its store fsyncs every write.
        engine.fed_in_process.add(name)

    # -- what the dispatcher sees ---------------------------------------------

    @property
    def directory(self) -> Optional[str]:
        return self.stream.directory if self.stream is not None else None

    @property
    def state(self) -> str:
        if self._full_at_open is not None:
            return "full"
        health = getattr(self.stream.store, "health", "ok") if self.stream is not None else "ok"
        return {"ok": "ok", "full": "full"}.get(health, "read-only")

    @property
    def error(self) -> Optional[str]:
        if self._full_at_open is not None:
            return "store full: " + self._full_at_open
        if self.stream is None or self.state == "ok":
            return None
        return "store {}: {}".format(self.state, getattr(self.stream.store, "error", None) or "cannot write")

    def _has_free(self, limit: int, share: int) -> bool:
        """
        Whether the stream's disk has C{limit} bytes free, or a C{share}th
        of a disk smaller than that (True when the disk cannot say).
        """
        try:
            free, total = self.disk.space(self.directory or ".")
        except OSError:
            return True
        return free >= min(limit, total // share)

    def _room(self) -> bool:
        """Whether the stream's disk has room for a write (L{RESERVE} free, or a sixteenth of a smaller disk)."""
        return self._has_free(RESERVE, 16)

    def _check_room(self) -> None:
        """A log opened on a full disk takes events again once there is room (its store says the rest)."""
        if self._full_at_open is not None and self._room():
            self.log.info("stream {name}: writable again ({error} is over); accepting events", name=self.name, error=self._full_at_open)
            self._full_at_open = None

    def _config(self) -> Dict[str, Any]:
        from eventsvc.jetstream.stream import decode_config

        raw = {
            "name": self.name, "subjects": [self.prefix + ".>"], "storage": "file", "retention": "limits",
            "max_age": int(self.max_age * 1e9), "max_bytes": self.max_bytes, "discard": "old",
            "description": "typed events accepted by eventsvc (each handler is a durable consumer)",
        }
        return decode_config(json.dumps(raw).encode("utf-8"))

    def open(self) -> List[Pending]:
        """
        Make (or find) the stream and the handlers' consumers, carry an
        older spool over, and return what is owed, oldest first.

        @raise StoreError: the stream or a consumer cannot be made.
        """
        from eventsvc.jetstream import consumer_api
        from eventsvc.jetstream.consumer import parse_config
        from eventsvc.jetstream.errors import ApiError

        engine = self.engine
        stream = engine.streams.get(self.name)
        try:
            if stream is None:
                stream = engine.add_stream(self._config())
            else:
                self._reconfigure(stream)
        except ApiError as e:
            raise self._cannot_open(e, "cannot be made")
        self.stream = stream
        self._drop_removed_handlers(stream)
        for handler in self.names:
            consumer = stream.consumers.get(handler)
            try:
                if consumer is None:
                    # From the next sequence, written in its config: a
                    # consumer whose state was never written (a crash just
                    # after) starts there again, not at the stream's end then.
                    config = parse_config({
                        "durable_name": handler, "ack_policy": "explicit", "deliver_policy": "by_start_sequence",
                        "opt_start_seq": stream.store.state().last_seq + 1,
                        "ack_wait": ACK_WAIT, "max_ack_pending": -1,
                        "description": HANDLER_DESCRIPTION.format(handler),
                    })
                    consumer = consumer_api.create_consumer(engine, stream, config)
                    consumer.start()
            except ApiError as e:
                raise self._cannot_open(e, "cannot take handler {}'s consumer".format(handler))
            if hasattr(consumer.store, "hold"):
                consumer.store.hold = RECORD_HOLD
            self._handlers[handler] = _Handler(handler, consumer)
        # Clients may read the log and make consumers of their own on it;
        # the stream and the handlers' consumers are the service's.
        engine.owned[self.name] = set(self.names)
        self._carry_over_spool()
        owed = self._owed()
        if not self._room():
            # The store finds out at its first write; a publisher would be
            # acknowledged nothing, so say it now, as the spool does.
            self._full_at_open = "no space left on device in {}".format(self.directory)
            self.log.error("stream {name}: {error}; serving read-only: delivering the {count} events held",
                           name=self.name, error=self.error, count=len(owed))
        return owed

    def _drop_removed_handlers(self, stream: Any) -> None:
        """
        The consumers of handlers no longer in [handlers] are deleted, each
        with a warning saying what it still owed.  Removing a handler from
        the configuration is how the operator says its events need not be
        delivered; a consumer kept for it would be nobody's (not the
        service's, so not guarded, and no client should pull a handler's
        events), would count as owed in C{eventsvc spool stats} for ever,
        and would stop a return to C{log = "spool"} (L{StreamLeftBehind})
        for events nothing delivers.  What it owed stays in the stream's
        history, readable by any client, as long as the stream keeps it;
        the handler, written again, starts from the stream's end.
        """
        for name, consumer in sorted(stream.consumers.items()):
            if name in self.names or not is_handler_consumer(name, consumer.config):
                continue
            owed = _owed_seqs(stream.store, name, list(consumer.pending), consumer.sseq)
            consumer.delete()
            consumer.release_interest()
            stream.detach(name)
            if owed:
                self.log.warn(
                    "stream {stream}: handler {name} is no longer in [handlers]; its consumer is deleted, and the "
                    "{count} events it still owed (sequences {first}-{last}) will not be delivered to it (they stay "
                    "in the stream's history)", stream=self.name, name=name, count=len(owed), first=owed[0], last=owed[-1])
            else:
                self.log.info("stream {stream}: handler {name} is no longer in [handlers]; its consumer, which owed "
                              "nothing, is deleted", stream=self.name, name=name)

    def _reconfigure(self, stream: Any) -> None:
        """
        [events] stream_max_age and stream_max_bytes changed since the
        stream was made: the stream takes them (the configuration is the
        operator's way to change the log; the API refuses, L{JetStream.owned}).
        """
        wanted = self._config()
        changed = {key: wanted[key] for key in ("max_age", "max_bytes") if stream.config.get(key) != wanted[key]}
        if changed:
            self.engine.update_stream(stream, dict(stream.config, **changed))
            self.log.info("stream {name}: [events] stream_max_age/stream_max_bytes applied ({changed})",
                          name=self.name, changed=", ".join("{} {}".format(k, v) for k, v in sorted(changed.items())))

    def _cannot_open(self, error: Any, what: str) -> StoreError:
        """
        Why the stream or a handler's consumer cannot be made, in one line
        that names the key that refused it: a [jetstream] account limit
        (the event log's stream and consumers count as clients' do), else
        [events] stream.
        """
        from eventsvc.jetstream import errors

        limits = self.engine.settings.limits
        code = getattr(error, "err_code", 0)
        description = getattr(error, "description", str(error))
        needs = "the event log needs one stream and one consumer per handler ({} here) besides clients' own".format(len(self.names))
        refused = "the events stream {} ([events] stream) {}: {}".format(self.name, what, description)
        if code == errors.MAXIMUM_CONSUMERS_LIMIT_ERR.err_code:
            message = "[jetstream] max_consumers = {}: {}; {}: raise it, or 0 for no limit".format(limits.max_consumers, refused, needs)
        elif code == errors.MAXIMUM_STREAMS_LIMIT_ERR.err_code:
            message = "[jetstream] max_streams = {} ({} streams exist): {}; {}: raise it, or 0 for no limit".format(
                limits.max_streams, len(self.engine.streams), refused, needs)
        elif code == errors.STREAM_MAX_BYTES_REQUIRED.err_code:
            message = "[jetstream] max_bytes_required: {}; set [events] stream_max_bytes".format(refused)
        elif code == errors.STREAM_MAX_STREAM_BYTES_EXCEEDED.err_code:
            message = "[jetstream] storage_max_stream_bytes = {}: {}; make [events] stream_max_bytes at most that".format(
                limits.storage_max_stream_bytes, refused)
        else:
            message = "JetStream: {}".format(refused)
        return StoreError(message, "store_unreadable", "")

    def _owed(self) -> List[Pending]:
        """
        Per event, the handlers whose consumer did not ack it: what it
        delivered and was not acked, and what it has not delivered yet
        (now delivered, in process, as the dispatcher hands them on).
        """
        store = self.stream.store
        owed: Dict[int, List[str]] = {}
        for handler in self._handlers.values():
            consumer = handler.consumer
            for seq in consumer.pending:
                owed.setdefault(seq, []).append(handler.name)
            undelivered = []
            message = store.load_next(consumer.sseq)
            while message is not None:
                if handler.name in _handlers_of(message.headers):
                    undelivered.append(message.seq)
                    owed.setdefault(message.seq, []).append(handler.name)
                message = store.load_next(message.seq + 1)
            consumer.deliver_in_process(undelivered, store.state().last_seq)
        pending = []
        for seq in sorted(owed):
            message = store.load(seq)
            if message is None:
                continue
            pending.append(self._pending(message, owed[seq]))
        return pending

    @staticmethod
    def _pending(message: StoredMessage, handlers: Sequence[str]) -> Pending:
        try:
            event_id = str(json.loads(message.data)["event_id"])
        except (ValueError, KeyError, TypeError):
            event_id = "-"
        return Pending(message.seq, event_id, tuple(handlers), message.data, message.ts / 1e9)

    def accept(self, event_id: str, handlers: Sequence[str], body: bytes, type_name: str = "") -> int:
        """
        Store an accepted event; its sequence.  Durable when L{settle}
        says so.

        @raise StoreError: the stream cannot take it (full or failing disk, a limit).
        """
        if self._full_at_open is not None:
            self._check_room()
            if self._full_at_open is not None:
                raise self._refusal()
        key = handlers if type(handlers) is tuple else tuple(handlers)
        header = self._handlers_header.get(key)
        if header is None:
            header = self._handlers_header[key] = ("NATS/1.0\r\n%s: %s\r\n\r\n" % (HANDLERS_HEADER, ",".join(key))).encode("utf-8")
        if type_name == "":
            try:
                type_name = json.loads(body)["type"]["name"]
            except (ValueError, KeyError, TypeError):
                type_name = ""
        subject = self._subjects.get(type_name)
        if subject is None:
            subject = self._subjects[type_name] = _subject_for(self.prefix, type_name)
        seq = self.stream.append(subject, header, body)
        if seq is None:
            raise self._refusal()
        seqs = self._unsettled.get(key)
        if seqs is None:
            self._unsettled[key] = [seq]
        else:
            seqs.append(seq)
        return seq

    def _refusal(self) -> StoreError:
        if self.state == "ok":
            return StoreError("stream {} refused the event (a limit of the stream or of [jetstream])".format(self.name), "store_full")
        return StoreError(
            "{}; events already accepted are still delivered, new ones are accepted again when it can write".format(self.error),
            "store_full" if self.state == "full" else "store_read_only",
        )

    def settle(self, callback: Callable[[List[int]], None]) -> None:
        """
        Call C{callback} with the sequences accepted since the last settle
        that the stream could not keep (an empty list: all durable), once
        its store has written and fsynced them.  A stream that cannot
        write gives up the history every handler is done with, first.
        """
        self._check_room()
        if self.state == "full":
            self._make_room()
        elif self._unsettled and self._low_on_room():
            self._make_room(full=False)
        batch, self._unsettled = self._unsettled, {}
        if not batch:
            callback([])
            return
        store = self.stream.store

        def durable() -> None:
            self._delivered(batch)
            callback([])

        def lost(error: Exception) -> None:
            gone = [seq for seqs in batch.values() for seq in seqs if store.load(seq) is None]
            if gone:
                missing = set(gone)
                kept = {key: [seq for seq in seqs if seq not in missing] for key, seqs in batch.items()}
                self._delivered({key: seqs for key, seqs in kept.items() if seqs})
            else:
                self._delivered(batch)
            callback(gone)

        store.when_durable(durable, lost)

    def _delivered(self, batch: Dict[Tuple[str, ...], List[int]]) -> None:
        """The events of C{batch} (by their handlers) are kept: each goes to its handlers' consumers (before they can finish it)."""
        routed: Dict[str, List[int]] = {}
        mixed = set()
        for handlers, seqs in batch.items():
            for name in handlers:
                run = routed.get(name)
                if run is None:
                    routed[name] = seqs
                else:
                    # (Events of two routes: their sequences interleave.)
                    routed[name] = run + seqs
                    mixed.add(name)
        for name in mixed:
            routed[name].sort()
        through = max(seqs[-1] for seqs in batch.values()) if batch else 0
        for name, entry in self._handlers.items():
            entry.consumer.deliver_in_process(routed.get(name, []), through)

    def _low_on_room(self) -> bool:
        """Whether the stream's disk has less than L{HEADROOM} (or a quarter of a smaller disk) free."""
        return not self._has_free(HEADROOM, 4)

    def _make_room(self, full: bool = True) -> None:
        """
        The disk is full (or, with C{full} False, nearly full): the events
        every handler has finished go (history gives way to delivery; a full
        store is retried by itself each second, and takes events again once
        its segments are deleted).
        """
        if not self._handlers:
            return
        floor = min(entry.consumer.asflr for entry in self._handlers.values())
        first = self.stream.store.state().first_seq
        if floor < first:
            return
        dropped = self.stream.purge(None, floor + 1)
        if dropped and not full:
            # Each turn on a nearly full disk may drop a few: said once a minute.
            self._dropped += dropped
            if time.monotonic() < self._said_dropped + 60:
                return
            self._said_dropped, dropped, self._dropped = time.monotonic(), self._dropped, 0
        if dropped:
            self.log.warn("stream {name}: the disk is {how}; {count} events every handler had finished dropped from "
                          "its history to make room", name=self.name, count=dropped, how="full" if full else "nearly full")

    def sync(self) -> List[int]:
        """As the spool's: nothing to do here (the store and the consumers' stores commit on their own)."""
        return []

    def done_many(self, seqs: Sequence[int], handler: str) -> None:
        """C{handler} is finished with these events: its consumer acks them."""
        entry = self._handlers.get(handler)
        if entry is not None:
            entry.consumer.ack_in_process(list(seqs))

    def done(self, seq: int, handler: str) -> None:
        self.done_many((seq,), handler)

    def close(self) -> None:
        """Nothing of its own to close: the engine closes the stream and the consumers' stores."""

    # -- carrying an older spool over -------------------------------------------

    def _carry_over_spool(self) -> None:
        """What an older spool in spool_dir still owes goes into the stream; its files go once that is durable."""
        directory = self.spool_dir
        if not directory:
            return
        files = [p for _, p in segment_paths(directory)]
        legacy = os.path.join(directory, LEGACY_NAME)
        if os.path.exists(legacy):
            files.insert(0, legacy)
        if not files:
            return
        spool = Spool(directory)
        owed = spool.open()
        spool.close()
        # Its own new segment is one of its files now.
        files = ([legacy] if os.path.exists(legacy) else []) + [p for _, p in segment_paths(directory)]
        done = self._carried()
        stream = self.stream
        carried = already = 0
        for p in owed:
            if (p.seq, zlib.crc32(p.body)) in done:
                already += 1
                continue
            handlers = [h for h in p.handlers if h in self._handlers]
            if not handlers:
                continue
            try:
                type_name = json.loads(p.body)["type"]["name"]
            except (ValueError, KeyError, TypeError):
                type_name = ""
            header = "NATS/1.0\r\n%s: %s\r\n%s: %d\r\n\r\n" % (HANDLERS_HEADER, ",".join(handlers), SPOOL_HEADER, p.seq)
            seq = stream.append(_subject_for(self.prefix, type_name), header.encode("utf-8"), p.body)
            if seq is None:
                raise StoreError("{}: the spool cannot be carried over into stream {}: {}".format(
                    directory, self.name, self.error or "refused"), "store_unreadable")
            carried += 1

        def durable() -> None:
            for path in files:
                try:
                    os.unlink(path)
                except OSError as e:
                    self.log.error("spool {path} carried over but not deleted: {error}", path=path, error=e.strerror or e)
            self.log.info("spool {path}: {count} owed events carried over into stream {stream}{before}; spool files deleted",
                          path=directory, count=carried, stream=self.name,
                          before=" ({} more were already, from a start cut short)".format(already) if already else "")

        def lost(error: Exception) -> None:
            self.log.error("spool {path} not carried over ({error}); it is kept and carried over at the next start",
                           path=directory, error=error)

        stream.store.when_durable(durable, lost)

    def _carried(self) -> Set[Tuple[int, int]]:
        """
        The events of a spool already carried over (a crash after the
        stream's write, before the spool's deletion): each as its spool
        sequence and the CRC32 of its body.  The body counts too: a spool
        made after going back to log = "spool" numbers its events from 1
        again, and an earlier carry-over's messages may still be in the
        history.
        """
        found: Set[Tuple[int, int]] = set()
        store = self.stream.store
        message = store.load_next(0)
        while message is not None:
            values = parse_headers(message.headers)[1].get(SPOOL_HEADER) if message.headers and SPOOL_HEADER.encode() in message.headers else None
            if values:
                try:
                    found.add((int(values[0]), zlib.crc32(message.data)))
                except ValueError:
                    pass
            message = store.load_next(message.seq + 1)
        return found


class EventsJetStream(JetStream):
    """
    The JetStream engine of the event log alone ([events] log = "stream"
    without [jetstream]): it keeps the events stream and its consumers
    under data_dir/jetstream, and answers no C{$JS.API}: without
    [jetstream] a server offers no JetStream to clients (INFO says so),
    and the agent listeners' fence has nothing to guard.  Writing
    [jetstream] (with the same store_dir) opens the same stream to clients.
    """

    answers_api = False


def is_handler_consumer(name: str, config: Dict[str, Any]) -> bool:
    """Whether the consumer C{name} of the events stream, with C{config}, is a handler's (L{StreamLog.open} made it)."""
    return config.get("description") == HANDLER_DESCRIPTION.format(name)


def _owed_seqs(store: Any, handler: str, pending: Sequence[int], next_seq: int) -> List[int]:
    """
    What the stream in C{store} owes C{handler}, whose consumer has
    C{pending} delivered and not acked and has not looked past
    C{next_seq} yet: those, and the events after routed to it (by their
    header), ascending.  The one rule of L{owed_in_stream} and
    L{read_owed}.
    """
    owed = sorted(pending)
    message = store.load_next(next_seq)
    while message is not None:
        if handler in _handlers_of(message.headers):
            owed.append(message.seq)
        message = store.load_next(message.seq + 1)
    return owed


def owed_in_stream(stream: Any) -> Dict[str, int]:
    """
    Per handler (each durable consumer of the events stream C{stream}),
    how many events it is owed: delivered and not acked, or not yet
    delivered and routed to it.  Reads only.
    """
    owed: Dict[str, int] = {}
    for name, consumer in sorted(stream.consumers.items()):
        if not is_handler_consumer(name, consumer.config):
            continue  # a client's own consumer of the log: what it has not read is not owed
        count = len(_owed_seqs(stream.store, name, list(consumer.pending), consumer.sseq))
        if count:
            owed[name] = count
    return owed


class OwedInStream(NamedTuple):
    """What L{read_owed} found: the stream's size, and per handler what it owes."""

    folder: str
    messages: int
    bytes: int
    first_seq: int
    last_seq: int
    #: The events owed to at least one handler.
    events_owed: int
    #: Handler -> {"owed": count, "oldest": accepted at (s since the epoch, 0: none), "oldest_event": event id}.
    handlers: Dict[str, Dict[str, Any]]


def read_owed(store_dir: str, name: str) -> Optional[OwedInStream]:
    """
    Read the events stream C{name} under C{store_dir} from its files
    (C{eventsvc spool stats}): per handler's consumer, what it owes, the
    oldest of it, and the stream's size.  Nothing is written, made or
    locked, so it works with the service stopped and beside a running
    one, whose files it reads as they are at that moment (the consumers'
    records are written within 0.2 s, their fsyncs aside).  None when the
    stream was never made there.

    @raise OSError: its files cannot be read.
    """
    from twisted.internet.task import Clock

    from eventsvc.jetstream.filestore import FileConsumerStore, FileStore
    from eventsvc.jetstream.store import EMPTY_CONSUMER_STATE

    folder = os.path.join(store_dir, "streams", name)
    if not os.path.exists(os.path.join(folder, "meta.json")):
        return None
    clock = Clock()  # (never advanced: a read-only store has nothing to time)
    store = FileStore(os.path.join(folder, "msgs"), clock=clock, read_only=True)
    try:
        owed: Dict[str, List[int]] = {}
        consumers = os.path.join(folder, "consumers")
        for consumer in sorted(os.listdir(consumers)) if os.path.isdir(consumers) else []:
            try:
                with open(os.path.join(consumers, consumer, "meta.json"), "rb") as f:
                    config = json.loads(f.read())["config"]
            except FileNotFoundError:
                continue
            except (ValueError, KeyError, TypeError) as e:
                raise OSError("{}: {}".format(os.path.join(consumers, consumer, "meta.json"), e))
            if not is_handler_consumer(consumer, config):
                continue  # a client's own consumer of the log
            state_store = FileConsumerStore(os.path.join(consumers, consumer, "state"), clock=clock, read_only=True)
            try:
                state = state_store.load()
            finally:
                state_store.close()
            if state == EMPTY_CONSUMER_STATE:
                # Made, and nothing recorded since: it starts where its config says.
                next_seq, pending = int(config.get("opt_start_seq") or 1), []
            else:
                next_seq = state.delivered_stream + 1
                pending = [seq for seq in state.pending if seq > state.ack_floor_stream]
            owed[consumer] = _owed_seqs(store, consumer, pending, next_seq)
        handlers: Dict[str, Dict[str, Any]] = {}
        for handler, seqs in owed.items():
            entry: Dict[str, Any] = {"owed": len(seqs), "oldest": 0.0, "oldest_event": ""}
            oldest = store.load(seqs[0]) if seqs else None
            if oldest is not None:
                entry["oldest"] = oldest.ts / 1e9
                try:
                    entry["oldest_event"] = str(json.loads(oldest.data).get("event_id") or "")
                except (ValueError, AttributeError):
                    pass
            handlers[handler] = entry
        kept = store.state()
        return OwedInStream(folder, kept.msgs, kept.bytes, kept.first_seq, kept.last_seq,
                            len(set().union(*owed.values())) if owed else 0, handlers)
    finally:
        store.close()


class StreamLeftBehind(Service):
    """
    [events] log = "spool" on a data_dir whose events stream (from a run
    with log = "stream") still owes events: the spool would never deliver
    them, so start-up stops with a line saying so (going back must never
    lose events in silence).  A stream that owes nothing is left as it is,
    with a line saying it is no longer used.  Started after the data_dir
    lock and [jetstream]'s engine, before the dispatcher.
    """

    log = Logger()

    def __init__(self, store_dir: str, name: str, engine: Any = None) -> None:
        """
        @param store_dir: where the events stream would be kept (L{eventsvc.config.events_store_dir}).
        @param name: [events] stream.
        @param engine: [jetstream]'s engine (started before this), or None.
        """
        self.setName("events-stream-left-behind")
        self.store_dir = store_dir
        self.stream_name = name
        self.engine = engine
        if engine is not None:
            # Made before the engine starts: the stream it restores must not
            # capture event.> (a publisher would be answered with its PubAck,
            # not the dispatcher's answer); clients can still read it.
            engine.fed_in_process.add(name)

    def startService(self) -> None:
        """
        @raise ListenError: the stream owes events (the line names it, how
            many, and both ways out).
        """
        from eventsvc.nats.listener import ListenError

        super().startService()
        folder = os.path.join(self.store_dir, "streams", self.stream_name)
        if self.engine is not None and self.stream_name in self.engine.streams:
            stream = self.engine.streams[self.stream_name]
            # Still the service's, as while it was the log: clients read it
            # and their own consumers of it, and change nothing of it (a
            # stream or handler consumer changed now would be found by the
            # next run with log = "stream").
            self.engine.owned[self.stream_name] = {
                name for name, consumer in stream.consumers.items() if is_handler_consumer(name, consumer.config)}
            owed = owed_in_stream(stream)
        elif os.path.exists(os.path.join(folder, "meta.json")):
            from twisted.internet.task import Clock

            from eventsvc.nats.server import Broker

            # Opened, read and closed in one go: its own broker, and a clock
            # that never fires.
            engine = EventsJetStream(Broker(), JetStreamSettings(store_dir=self.store_dir), Clock())
            engine.log = Logger(observer=_quiet)  # (not the running engine: no start-up line)
            engine.fed_in_process.add(self.stream_name)
            try:
                engine.start()
            except OSError as e:
                raise ListenError("{}: the events stream {} cannot be read: {}".format(folder, self.stream_name, e))
            try:
                stream = engine.streams.get(self.stream_name)
                owed = owed_in_stream(stream) if stream is not None else {}
            finally:
                engine.stop()
        else:
            return
        if owed:
            raise ListenError(
                "[events] log = \"spool\", but the events stream {name} in {folder} still owes {count} events "
                "({each}), accepted while log = \"stream\": the spool would never deliver them. Run with "
                "log = \"stream\" (the default) until they are delivered, or delete {folder} to drop them".format(
                    name=self.stream_name, folder=folder, count=sum(owed.values()),
                    each=", ".join("{}: {}".format(h, n) for h, n in owed.items())))
        self.log.info("[events] log = \"spool\": the events stream {name} in {folder} owes nothing and is no longer "
                      "used (its history stays there, readable, and takes no new events)", name=self.stream_name, folder=folder)


@provider(ILogObserver)
def _quiet(event: Dict[str, Any]) -> None:
    """Drops what an engine opened only to be read says."""
