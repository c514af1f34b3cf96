"""
The memory store: a stream's messages and a consumer's state in dicts,
gone when the process ends (C{storage: memory}).  It is also the model the
file store is tested against, so it stays plain.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from eventsvc.jetstream.store import (
    EMPTY_CONSUMER_STATE,
    ConsumerState,
    LimitReached,
    RemovedCallback,
    StoreError,
    StoreFull,
    StoredMessage,
    StoreLimits,
    StoreState,
)
from eventsvc.nats.subjects import subject_matches


def message_size(subject: str, headers: Optional[bytes], data: bytes) -> int:
    """
    What a message counts against C{max_bytes}: nats-server's
    C{memStoreMsgSize} (subject, headers, payload and 16 bytes of
    sequence and time).  The subject counts its UTF-8 bytes, as a Go
    string's length does (isascii() reads a flag on CPython: no encode
    for nearly every subject).
    """
    return (len(subject) if subject.isascii() else len(subject.encode())) + (len(headers) if headers else 0) + len(data) + 16


def _matches(subject_filter: Optional[str], subject: str) -> bool:
    if not subject_filter or subject_filter == ">" or subject_filter == subject:
        return True
    if "*" not in subject_filter and ">" not in subject_filter:
        return False
    return subject_matches(subject_filter.encode("utf-8"), subject.encode("utf-8"))


def _subject_seqs(by_subject: Dict[str, Dict[int, None]], subject_filter: str) -> List[int]:
    """
    The sequences of the messages whose subject matches C{subject_filter},
    in order, from a store's index by subject: a literal subject's own
    (kept in order) without a walk over every subject, as a rollup or an
    object's purge asks once per publish.
    """
    if "*" not in subject_filter and ">" not in subject_filter:
        return list(by_subject.get(subject_filter, ()))
    return sorted(n for name, seqs in by_subject.items() if _matches(subject_filter, name) for n in seqs)


class MemoryStore:
    """A L{eventsvc.jetstream.store.MessageStore} in memory."""

    def __init__(
        self,
        limits: StoreLimits = StoreLimits(),
        max_store: int = -1,
        size: Callable[[str, Optional[bytes], bytes], int] = message_size,
    ) -> None:
        """
        @param max_store: C{max_memory_store} left for this stream in
            bytes (-1: no limit); past it L{store} raises L{StoreFull}.
        @param size: what a message counts against C{max_bytes} (the file
            store's tests give L{eventsvc.jetstream.filestore.file_message_size}).
        """
        self._size = size
        self._limits = limits
        self._max_store = max_store
        self._msgs: Dict[int, StoredMessage] = {}
        self._by_subject: Dict[str, Dict[int, None]] = {}
        self._first = 1
        self._last = 0
        self._last_ts = 0
        self._bytes = 0
        self._removed: Optional[RemovedCallback] = None

    # -- writing ------------------------------------------------------------

    def set_limits(self, limits: StoreLimits) -> None:
        self._limits = limits
        self._enforce()

    def on_removed(self, callback: Optional[RemovedCallback]) -> None:
        self._removed = callback

    def store(self, subject: str, headers: Optional[bytes], data: bytes, ts: int) -> int:
        size = self._size(subject, headers, data)
        limits = self._limits
        if self._max_store >= 0 and self._bytes + size > self._max_store:
            raise StoreFull("insufficient resources")
        if limits.discard_new:
            if limits.max_msgs > 0 and len(self._msgs) >= limits.max_msgs:
                raise LimitReached("maximum messages exceeded")
            if limits.max_bytes > 0 and self._bytes + size > limits.max_bytes:
                raise LimitReached("maximum bytes exceeded")
            if (
                limits.discard_new_per_subject
                and limits.max_msgs_per_subject > 0
                and len(self._by_subject.get(subject, ())) >= limits.max_msgs_per_subject
            ):
                raise LimitReached("maximum messages per subject exceeded")
        self._last += 1
        seq = self._last
        if not self._msgs:
            self._first = seq
        self._msgs[seq] = StoredMessage(subject, seq, headers or None, data, ts)
        self._by_subject.setdefault(subject, {})[seq] = None
        self._bytes += size
        self._last_ts = ts
        self._enforce(subject)
        return seq

    def _enforce(self, subject: Optional[str] = None) -> None:
        limits = self._limits
        per = limits.max_msgs_per_subject
        if per > 0:
            subjects = [subject] if subject is not None else list(self._by_subject)
            for name in subjects:
                seqs = self._by_subject.get(name)
                while seqs is not None and len(seqs) > per:
                    self._remove(next(iter(seqs)), True)
                    seqs = self._by_subject.get(name)
        if not limits.discard_new:
            while limits.max_msgs > 0 and len(self._msgs) > limits.max_msgs:
                self._remove(self._first_seq(), True)
            while limits.max_bytes > 0 and self._bytes > limits.max_bytes:
                self._remove(self._first_seq(), True)

    def when_durable(self, callback: Callable[[], None], errback: Optional[Callable[[StoreError], None]] = None) -> None:
        callback()

    def group_epoch(self) -> Optional[int]:
        return None  # (durable at once: nothing to group)

    def skip(self, seq: int) -> None:
        if not self._msgs and seq > self._last:
            self._last = seq - 1
            self._first = seq

    def remove(self, seq: int, erase: bool = False) -> bool:
        return self._remove(seq, False)

    def _remove(self, seq: int, by_limit: bool) -> bool:
        message = self._msgs.pop(seq, None)
        if message is None:
            return False
        seqs = self._by_subject[message.subject]
        del seqs[seq]
        if not seqs:
            del self._by_subject[message.subject]
        self._bytes -= self._size(message.subject, message.headers, message.data)
        if seq == self._first:
            self._first = self._first_seq() if self._msgs else self._last + 1
        if by_limit and self._removed is not None:
            self._removed(seq, message.subject)
        return True

    def _first_seq(self) -> int:
        if not self._msgs:
            return self._last + 1
        seq = self._first
        while seq not in self._msgs:
            seq += 1
        self._first = seq
        return seq

    def purge(self, subject: Optional[str] = None, seq: int = 0, keep: int = 0) -> int:
        if not subject and not seq and not keep:
            count = len(self._msgs)
            self._msgs.clear()
            self._by_subject.clear()
            self._bytes = 0
            self._first = self._last + 1
            return count
        if seq and not subject and not keep and not self._msgs:
            self.skip(seq)
            return 0
        victims: List[int] = []
        if keep:
            seqs = _subject_seqs(self._by_subject, subject) if subject else list(self._msgs)
            victims = seqs[: max(0, len(seqs) - keep)]
            if seq:
                victims = [n for n in victims if n < seq]
        elif subject:
            victims = [n for n in _subject_seqs(self._by_subject, subject) if not seq or n < seq]
        else:
            for n, message in self._msgs.items():
                if seq and n >= seq:
                    break
                if _matches(subject, message.subject):
                    victims.append(n)
        for n in victims:
            self._remove(n, False)
        if seq and not subject and not self._msgs and seq > self._last:
            self.skip(seq)
        return len(victims)

    def expire(self, now: int) -> int:
        max_age = self._limits.max_age
        if max_age <= 0:
            return 0
        count = 0
        while self._msgs:
            first = self._msgs[self._first_seq()]
            if now - first.ts < max_age:
                break
            self._remove(first.seq, True)
            count += 1
        return count

    def next_expiry(self) -> Optional[int]:
        if self._limits.max_age <= 0 or not self._msgs:
            return None
        return self._msgs[self._first_seq()].ts + self._limits.max_age

    # -- reading ------------------------------------------------------------

    def load(self, seq: int) -> Optional[StoredMessage]:
        return self._msgs.get(seq)

    def _from(self, start: int) -> Iterator[StoredMessage]:
        msgs = self._msgs
        for seq in range(max(start, self._first), self._last + 1):
            message = msgs.get(seq)
            if message is not None:
                yield message

    def load_next(self, start: int, subject_filter: Optional[str] = None) -> Optional[StoredMessage]:
        if subject_filter and "*" not in subject_filter and ">" not in subject_filter:
            seqs = self._by_subject.get(subject_filter)
            if not seqs:
                return None
            msgs = self._msgs
            if start in seqs:
                return msgs[start]
            first = next(iter(seqs))
            if first >= start:
                return msgs[first]
            if next(reversed(seqs)) < start:
                return None
            if len(seqs) < 64:
                return msgs[next(seq for seq in seqs if seq >= start)]
            # Many messages on it (a consumer part way through them): walking
            # on from start finds the next one sooner than walking its list
            # from the front, which made a pull consumer quadratic.
            for seq in range(start, self._last + 1):
                message = msgs.get(seq)
                if message is not None and message.subject == subject_filter:
                    return message
            return None
        for message in self._from(start):
            if _matches(subject_filter, message.subject):
                return message
        return None

    def load_last(self, subject_filter: Optional[str] = None) -> Optional[StoredMessage]:
        if subject_filter and "*" not in subject_filter and ">" not in subject_filter:
            # One subject: its own last, not a walk over every subject (a KV get,
            # an object's info and each subject of a last-per-subject consumer ask so).
            seqs = self._by_subject.get(subject_filter)
            return self._msgs.get(next(reversed(seqs))) if seqs else None
        best = 0
        for name, seqs in self._by_subject.items():
            if _matches(subject_filter, name):
                best = max(best, next(reversed(seqs)))
        return self._msgs.get(best)

    def last_seq(self) -> int:
        return self._last

    def state(self) -> StoreState:
        if not self._msgs:
            return StoreState(0, 0, self._last + 1 if self._last else 0, 0, self._last, self._last_ts if self._last else 0, 0, 0)
        first = self._msgs[self._first_seq()]
        return StoreState(
            len(self._msgs),
            self._bytes,
            first.seq,
            first.ts,
            self._last,
            self._last_ts,
            self._last - first.seq + 1 - len(self._msgs),
            len(self._by_subject),
        )

    def subjects(self, subject_filter: Optional[str] = None) -> Dict[str, int]:
        return {name: len(seqs) for name, seqs in self._by_subject.items() if _matches(subject_filter, name)}

    def num_pending(self, start: int, subject_filter: Optional[str] = None, last_per_subject: bool = False) -> int:
        if last_per_subject:
            return sum(
                1
                for name, seqs in self._by_subject.items()
                if _matches(subject_filter, name) and next(reversed(seqs)) >= start
            )
        if not subject_filter or subject_filter == ">":
            return sum(1 for seq in self._msgs if seq >= start)
        return sum(
            1
            for name, seqs in self._by_subject.items()
            if _matches(subject_filter, name)
            for seq in seqs
            if seq >= start
        )

    def deleted(self) -> List[int]:
        if not self._msgs:
            return []
        return [seq for seq in range(self._first_seq(), self._last + 1) if seq not in self._msgs]

    def close(self) -> None:
        """Nothing to write."""

    def destroy(self) -> None:
        self._msgs.clear()
        self._by_subject.clear()
        self._bytes = 0


class MemoryConsumerStore:
    """A L{eventsvc.jetstream.store.ConsumerStore} in memory."""

    def __init__(self, state: ConsumerState = EMPTY_CONSUMER_STATE) -> None:
        # (Plain attributes, not a ConsumerState replaced on each update:
        # a delivery and an ack each cost two _replace calls otherwise.)
        self._delivered_consumer = state.delivered_consumer
        self._delivered_stream = state.delivered_stream
        self._ack_floor_consumer = state.ack_floor_consumer
        self._ack_floor_stream = state.ack_floor_stream
        self._pending: Dict[int, Tuple[int, int]] = dict(state.pending)
        #: No sequence below it is pending under the ack floor (L{update_acks}'s start).
        self._low = 0
        self._redelivered: Dict[int, int] = dict(state.redelivered)

    def load(self) -> ConsumerState:
        return ConsumerState(
            self._delivered_consumer,
            self._delivered_stream,
            self._ack_floor_consumer,
            self._ack_floor_stream,
            dict(self._pending),
            dict(self._redelivered),
        )

    def update_delivered(self, consumer_seq: int, stream_seq: int, delivery_count: int, ts: int) -> None:
        self._pending[stream_seq] = (consumer_seq, ts)
        if delivery_count > 1:
            self._redelivered[stream_seq] = delivery_count
        if consumer_seq > self._delivered_consumer:
            self._delivered_consumer = consumer_seq
        if stream_seq > self._delivered_stream:
            self._delivered_stream = stream_seq

    def update_delivered_run(self, first_consumer_seq: int, stream_seqs: List[int], ts: int) -> None:
        if not stream_seqs:
            return
        pending = self._pending
        for offset, seq in enumerate(stream_seqs):
            pending[seq] = (first_consumer_seq + offset, ts)
        last_consumer = first_consumer_seq + len(stream_seqs) - 1
        if last_consumer > self._delivered_consumer:
            self._delivered_consumer = last_consumer
        if stream_seqs[-1] > self._delivered_stream:
            self._delivered_stream = stream_seqs[-1]

    def update_acks(self, floor_consumer: int, floor_stream: int, acked: Iterable[int] = ()) -> None:
        pending, redelivered = self._pending, self._redelivered
        for seq in acked:
            pending.pop(seq, None)
            if redelivered:
                redelivered.pop(seq, None)
        if floor_stream > self._ack_floor_stream and pending:
            low = self._low
            if floor_stream - low <= len(pending):
                # The sequences from the last floor up, each looked at once
                # (iterating a dict acked from the front walks its removed
                # entries first, every time: quadratic with a backlog).
                while low <= floor_stream:
                    if low in pending:
                        del pending[low]
                        redelivered.pop(low, None)
                    low += 1
            else:
                # Pending is in delivery order, which is stream order (a
                # redelivery keeps its place): what is under the floor is at
                # the front, so an ack costs what it removes, not all pending.
                below = []
                for seq in pending:
                    if seq > floor_stream:
                        break
                    below.append(seq)
                for seq in below:
                    del pending[seq]
                    redelivered.pop(seq, None)
            self._low = floor_stream + 1
        if floor_consumer > self._ack_floor_consumer:
            self._ack_floor_consumer = floor_consumer
        if floor_stream > self._ack_floor_stream:
            self._ack_floor_stream = floor_stream

    def update(self, state: ConsumerState) -> None:
        self.__init__(state)  # type: ignore[misc]

    def when_durable(self, callback: Callable[[], None], errback: Optional[Callable[[StoreError], None]] = None) -> None:
        callback()

    def close(self) -> None:
        """Nothing to write."""

    def destroy(self) -> None:
        self.__init__(EMPTY_CONSUMER_STATE)  # type: ignore[misc]
