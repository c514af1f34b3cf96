"""
What a stream keeps its messages in, and a consumer its state: the
interfaces both stores (L{memstore}, L{filestore}) give, and the values
they pass.

A store is synchronous and runs in the reactor thread.  It numbers the
messages it is given (sequences start at 1 and never go back, even after a
purge), enforces the limits that discard old messages itself, and says
when what it holds is durable through L{MessageStore.when_durable}: a
stream sends a PubAck from that callback, never before.  Several appends of
one reactor turn share one write (a group commit); no Deferred is made per
message.

This module knows nothing of the JetStream API, of consumers' rules or of
the broker.
"""

from __future__ import annotations

from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Protocol, Tuple


class StoredMessage(NamedTuple):
    """One message of a stream, as kept."""

    #: The subject it was published on.
    subject: str
    #: Its stream sequence.
    seq: int
    #: Its complete C{NATS/1.0} header block, or None.
    headers: Optional[bytes]
    #: Its payload.
    data: bytes
    #: When it was stored, in nanoseconds since the epoch.
    ts: int


class StoreError(Exception):
    """A store could not do what it was asked; the message says why."""


class StoreFull(StoreError):
    """
    There is no room: C{max_file_store}/C{max_memory_store}, or the disk.
    Nothing was stored; what was stored before is kept.
    """


class StoreUnavailable(StoreError):
    """The store cannot write (read-only or broken disk); it still reads."""


class LimitReached(StoreError):
    """
    A stream limit with C{discard: new} refuses the message; the text is
    nats-server's (C{"maximum messages exceeded"}, C{"maximum bytes
    exceeded"}, C{"maximum messages per subject exceeded"}).
    """


class StoreLimits(NamedTuple):
    """The limits a store enforces itself; 0 or -1 means none (as in the API)."""

    max_msgs: int = -1
    max_bytes: int = -1
    #: Nanoseconds; 0 is none.
    max_age: int = 0
    max_msgs_per_subject: int = -1
    #: Refuse (C{True}, discard new) instead of removing the oldest.
    discard_new: bool = False
    #: With C{discard_new}, C{max_msgs_per_subject} refuses too
    #: (2.9 only refuses per subject when asked: C{discard_new_per_subject}).
    discard_new_per_subject: bool = False


class StoreState(NamedTuple):
    """A stream's C{state} object in C{STREAM.INFO}, without consumers."""

    msgs: int
    bytes: int
    first_seq: int
    #: Nanoseconds since the epoch; 0 when empty.
    first_ts: int
    last_seq: int
    last_ts: int
    num_deleted: int
    num_subjects: int


#: Called with (seq, subject) for every message the store removes by
#: itself (limits, age): consumers and retention learn of it.
RemovedCallback = Callable[[int, str], None]


class MessageStore(Protocol):
    """A stream's messages."""

    def set_limits(self, limits: StoreLimits) -> None:
        """Take new limits (a stream update); applies them at once."""

    def on_removed(self, callback: Optional[RemovedCallback]) -> None:
        """Tell C{callback} of every message the store removes by itself."""

    def store(self, subject: str, headers: Optional[bytes], data: bytes, ts: int) -> int:
        """
        Append one message and return its sequence.  Raises L{StoreFull},
        L{StoreUnavailable} or L{LimitReached}, having stored nothing.
        """

    def when_durable(self, callback: Callable[[], None], errback: Optional[Callable[["StoreError"], None]] = None) -> None:
        """
        Call C{callback} once everything stored so far is as durable as
        the sync policy promises (written to the OS; fsynced when asked).
        It may be called before this returns (the memory store does).
        If the write fails, C{errback} is called instead, with
        L{StoreFull} or L{StoreUnavailable}: the messages stored since
        the last write are gone and must not be acknowledged.
        """

    def group_epoch(self) -> Optional[int]:
        """
        A count under which every L{when_durable} waiter is called back (or
        told of a failure) with the same write: while it stays the same, a
        caller may answer for messages stored since its last waiter from
        that waiter.  None: no such grouping (a waiter registered now would
        be called back at once, or with no write of its own).
        """

    def skip(self, seq: int) -> None:
        """Make the next sequence C{seq} (a purge with C{seq} on an empty stream)."""

    def load(self, seq: int) -> Optional[StoredMessage]:
        """The message at C{seq}, or None if there is none (deleted, purged, never)."""

    def load_next(self, start: int, subject_filter: Optional[str] = None) -> Optional[StoredMessage]:
        """The first message at C{start} or after whose subject matches the filter (wildcards)."""

    def load_last(self, subject_filter: Optional[str] = None) -> Optional[StoredMessage]:
        """The last message whose subject matches the filter (wildcards), or None."""

    def remove(self, seq: int, erase: bool = False) -> bool:
        """Remove one message (C{erase}: overwrite its bytes too); whether it was there."""

    def purge(self, subject: Optional[str] = None, seq: int = 0, keep: int = 0) -> int:
        """
        nats-server's purge: every message, or those matching C{subject};
        with C{seq}, those below it; with C{keep}, all but the last C{keep}.
        Returns how many were removed.  A purge of everything moves the
        first sequence past the last.
        """

    def expire(self, now: int) -> int:
        """Remove the messages older than C{max_age} at C{now} (ns); how many."""

    def next_expiry(self) -> Optional[int]:
        """When (ns) the oldest message will be too old, or None."""

    def state(self) -> StoreState:
        """The counts, first and last."""

    def last_seq(self) -> int:
        """C{state().last_seq} alone, for a caller that asks for each message (a mirror)."""

    def subjects(self, subject_filter: Optional[str] = None) -> Dict[str, int]:
        """How many messages each subject matching the filter has."""

    def num_pending(self, start: int, subject_filter: Optional[str] = None, last_per_subject: bool = False) -> int:
        """
        How many messages at C{start} or after match the filter (with
        C{last_per_subject}, only the last of each subject counts).
        """

    def deleted(self) -> List[int]:
        """The sequences removed between first and last (interior gaps)."""

    def close(self) -> None:
        """Write what is buffered and let the files go."""

    def destroy(self) -> None:
        """Close, then remove everything kept (a stream deleted)."""


class ConsumerState(NamedTuple):
    """What a consumer must remember over a restart (nats-server's C{ConsumerState})."""

    #: The last consumer and stream sequences delivered.
    delivered_consumer: int
    delivered_stream: int
    #: Every sequence up to these is acknowledged.
    ack_floor_consumer: int
    ack_floor_stream: int
    #: Delivered and not acknowledged: stream seq -> (consumer seq, ts ns).
    pending: Dict[int, Tuple[int, int]]
    #: Stream seq -> how many times it was delivered, when more than once.
    redelivered: Dict[int, int]


EMPTY_CONSUMER_STATE = ConsumerState(0, 0, 0, 0, {}, {})


class ConsumerStore(Protocol):
    """A consumer's state, kept beside its stream."""

    def load(self) -> ConsumerState:
        """What was last saved (L{EMPTY_CONSUMER_STATE} when new)."""

    def update_delivered(self, consumer_seq: int, stream_seq: int, delivery_count: int, ts: int) -> None:
        """
        One delivery: C{delivered_*} move to these, C{stream_seq} is pending
        (with C{ack_policy} none the consumer passes its floors through
        L{update_acks} at once), and a C{delivery_count} above 1 is kept in
        C{redelivered}.  Written with the next group commit.
        """

    def update_delivered_run(self, first_consumer_seq: int, stream_seqs: List[int], ts: int) -> None:
        """
        First deliveries of C{stream_seqs} (ascending) at C{ts}, with the
        consumer sequences from C{first_consumer_seq} on: what as many
        L{update_delivered} calls would record, kept in one record (a
        consumer told in process of a turn's messages).
        """

    def update_acks(self, floor_consumer: int, floor_stream: int, acked: Iterable[int] = ()) -> None:
        """
        Acknowledgements: the stream sequences C{acked} are no longer
        pending, nor is anything at or below the new floors.
        """

    def update(self, state: ConsumerState) -> None:
        """Replace the whole state (a purge moved the floors, a reset)."""

    def when_durable(self, callback: Callable[[], None], errback: Optional[Callable[["StoreError"], None]] = None) -> None:
        """
        As L{MessageStore.when_durable}, for the state saved so far (the
        state stays in memory after a failed write and is written later,
        but C{errback} is told it was not durable when asked).
        """

    def close(self) -> None:
        """Write what is buffered."""

    def destroy(self) -> None:
        """Remove the state (the consumer was deleted)."""
