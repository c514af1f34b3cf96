"""
The file store: a stream's messages in segment files, and a consumer's
state in a snapshot and a log (C{storage: file}).

A stream's directory holds segments C{msgs-<n>.seg}: a magic line, then
records appended and never rewritten.  A record is a 4-byte length, the
CRC32 of its body and the body, whose first byte says what it is: C{M} a
message (sequence, time, subject, headers, payload), C{D} deletions (ranges
of sequences), C{H} the last sequence and its time (at the start of each
segment and after a skip, so that a store whose messages are all gone still
knows where it was), C{E} an erased message (overwritten in place by its
sequence, its time and zeros).  A new
segment is begun when the one written passes C{segment_size}; a segment
none of whose messages is left is deleted (the newest excepted: it says
where the sequence is).  Deletions live in the segment written when they
were made; before a segment that holds deletions of older, still present
segments is deleted, those are written again to the newest.

The index (sequence to segment, offset and length; subject and time) is in
memory and is rebuilt at open by reading every segment.  A record whose
length or CRC does not hold is skipped by scanning forward to the next
offset where a whole record holds, so a torn tail (kill -9 or a power loss
in mid-write) or a flipped byte costs only the records it touches; one
warning per file says what was skipped.

Writes are grouped: L{FileStore.store} appends to a buffer that is written
once per reactor turn, at its end (L{eventsvc.nats.tcp.at_turn_end}: before
the turn's output is sent, so the PubAcks its waiters write go out in the
same turn), or when it passes L{FLUSH_SIZE}, and
L{FileStore.when_durable} callbacks run after that write; with
C{sync_interval="always"} after an fsync too, otherwise the segments are
fsynced every C{sync_interval} seconds.  A write that fails (a full disk,
a read-only or failing one) is cut off the segment again: the messages it
held are lost and their C{when_durable} errbacks say so (they were never
acknowledged), what was written before stays, and the store refuses new
messages (L{StoreFull}, L{StoreUnavailable}) until a retry every
L{RETRY_INTERVAL} seconds can write again.  Reading goes on all the while.

A consumer's state is a snapshot (C{consumer.snap}, replaced atomically)
and a log of deliveries and acknowledgements appended with the same group
commit (C{consumer.log}), folded into a new snapshot when it grows.

This module knows nothing of streams, consumers' rules or the API: it
keeps what it is given, as L{eventsvc.jetstream.store} defines.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from sys import intern
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.filepath import FilePath

from eventsvc.files import FULL_ERRNOS, Disk, sync_folder, write_atomic
from eventsvc.jetstream.memstore import MemoryConsumerStore, _matches, _subject_seqs
from eventsvc.jetstream.store import (
    ConsumerState,
    LimitReached,
    RemovedCallback,
    StoreError,
    StoreFull,
    StoredMessage,
    StoreLimits,
    StoreState,
    StoreUnavailable,
)
from eventsvc.nats.tcp import TurnEnd, TurnEndCall, turn_end

#: The first bytes of every message segment (and its format's version).
MAGIC = b"EVJSMSG1"
#: The first bytes of a consumer's snapshot.
SNAPSHOT_MAGIC = b"EVJSCON1"
_RECORD = struct.Struct("<II")
_MESSAGE = struct.Struct("<cQqHI")
#: A message record's frame and head in one (what a read unpacks).
_FRAMED_MESSAGE = struct.Struct("<II" + _MESSAGE.format[1:])
_RANGE = struct.Struct("<QQ")
_MARK = struct.Struct("<cQq")
_DELIVERED = struct.Struct("<cQQQq")
#: First deliveries in one record: the first consumer sequence, the time, then the stream sequences.
_DELIVERED_RUN = struct.Struct("<cQq")
_ACKS = struct.Struct("<cQQ")
_SEQ = struct.Struct("<Q")
#: An acks record with one sequence (_ACKS then one _SEQ).
_ACK_ONE = struct.Struct("<cQQQ")
_STATE = struct.Struct("<cQQQQQII")
_PENDING = struct.Struct("<QQq")
_REDELIVERED = struct.Struct("<QQ")
#: A record longer than this is taken for damage (payloads are at most 64 MiB).
MAX_RECORD = 64 * 1024 * 1024 + 64 * 1024
#: A new segment is begun when the one written passes this size.
SEGMENT_SIZE = 8 * 1024 * 1024
#: The buffer is written at once (not at the end of the turn) past this size.
FLUSH_SIZE = 1024 * 1024
#: nats-server's default C{sync_interval}: an fsync every two minutes.
DEFAULT_SYNC_INTERVAL = 120.0
#: How often a store that could not write tries again (seconds).
RETRY_INTERVAL = 1.0
#: A full store tries again once this much room is free (or a sixteenth of a smaller disk).
RESERVE = 64 * 1024
#: How much a read of a message brings in (the messages after it, for the next reads).
READ_AHEAD = 32 * 1024
#: A consumer's log is folded into its snapshot past this size (and four times the snapshot's).
COMPACT_SIZE = 1024 * 1024
#: The most deliveries or acks a consumer store keeps in one record.
SEAL_AT = 1024
_NO_HEAD = (-1, 0, b"", 0, 0, 0, 0)
#: What a walk takes for a sequence the index has not (no subject is None).
_NO_ENTRY = (0, 0, 0, None)
_new_tuple = tuple.__new__
_SEGMENT_NAME = re.compile(r"^msgs-(\d{8})\.seg$")

SyncInterval = Union[str, float]


def file_message_size(subject: str, headers: Optional[bytes], data: bytes) -> int:
    """
    What a message counts against C{max_bytes} and C{max_file_store} in the
    file store: nats-server's C{fileStoreMsgSize} (a record of length,
    sequence, time, subject, headers and payload, and an 8-byte hash).
    """
    slen = len(subject) if subject.isascii() else len(subject.encode())  # (its UTF-8 bytes, as Go's len)
    if not headers:
        return 22 + slen + len(data) + 8
    return 22 + slen + 4 + len(headers) + len(data) + 8


_DURATION = re.compile(r"^(\d+(?:\.\d*)?)(ms|s|m|h)$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_sync_interval(value: SyncInterval) -> Optional[float]:
    """
    C{sync_interval} as seconds, or None for C{"always"} (an fsync before
    every acknowledgement): C{"always"}, a number of seconds, or a
    duration as nats-server writes it (C{"2m"}, C{"10s"}, C{"500ms"}).

    @raise ValueError: none of these, or not above zero.
    """
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "always":
            return None
        m = _DURATION.match(text)
        if m is None or float(m.group(1)) <= 0:
            raise ValueError("sync_interval must be \"always\", a number of seconds or a duration such as \"2m\", not {!r}".format(value))
        return float(m.group(1)) * _UNITS[m.group(2)]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError("sync_interval must be \"always\" or a positive number of seconds, not {!r}".format(value))
    return float(value)


def _record(body: bytes) -> bytes:
    return _RECORD.pack(len(body), zlib.crc32(body)) + body


def _record_end(data: Union[bytes, bytearray, memoryview], pos: int, segment: bool = True) -> int:
    """
    Where the whole, valid record at C{pos} ends, or -1 if none holds there
    (a message segment's records, or with C{segment} false a consumer log's).
    """
    if pos + 9 > len(data):
        return -1
    size, crc = _RECORD.unpack_from(data, pos)
    end = pos + 8 + size
    if size == 0 or size > MAX_RECORD or end > len(data):
        return -1
    if zlib.crc32(memoryview(data)[pos + 8 : end]) != crc:
        return -1
    kind = data[pos + 8]
    if not segment:
        return end if kind in b"GDASR" else -1
    if kind == 0x4D:  # M
        if size < _MESSAGE.size:
            return -1
        _, _, _, slen, hlen = _MESSAGE.unpack_from(data, pos + 8)
        return end if _MESSAGE.size + slen + hlen <= size else -1
    if kind == 0x44:  # D
        return end if (size - 1) % _RANGE.size == 0 else -1
    if kind == 0x48:  # H
        return end if size == _MARK.size else -1
    if kind == 0x45:  # E
        return end if size >= _MARK.size else -1
    return -1


def _scan(data: bytes, magic: bytes, segment: bool = True) -> Iterator[Tuple[int, int]]:
    """
    (start, end) of every readable record in C{data}; an unreadable stretch
    is given as (start, -end).
    """
    pos = len(magic) if magic and data.startswith(magic) else 0
    n = len(data)
    while pos < n:
        end = _record_end(data, pos, segment)
        if end > 0:
            yield pos, end
            pos = end
            continue
        start = pos
        pos += 1
        while pos < n and _record_end(data, pos, segment) < 0:
            pos += 1
        yield start, -pos


def _ranges(seqs: Iterable[int]) -> List[Tuple[int, int]]:
    """Sorted sequences as inclusive (first, last) ranges."""
    out: List[Tuple[int, int]] = []
    for seq in seqs:
        if out and out[-1][1] + 1 == seq:
            out[-1] = (out[-1][0], seq)
        else:
            out.append((seq, seq))
    return out


def _describe(damage: List[Tuple[int, int]], size: int) -> str:
    parts = []
    for start, end in damage:
        what = "a torn tail" if end == size else "damaged bytes"
        parts.append("{} at {}-{} ({} bytes)".format(what, start, end, end - start))
    return ", ".join(parts)


def _acks_body(floor_consumer: int, floor_stream: int, acked: Sequence[int]) -> bytes:
    """A consumer log's acks record (C{_ACK_ONE} for one: one pack, no join)."""
    if len(acked) == 1:
        return _ACK_ONE.pack(b"A", floor_consumer, floor_stream, acked[0])
    return _ACKS.pack(b"A", floor_consumer, floor_stream) + struct.pack("<%dQ" % len(acked), *acked)


class _Segment:
    """What the index knows of one segment file."""

    __slots__ = ("number", "path", "live", "min_seq", "max_seq", "foreign", "reader")

    def __init__(self, number: int, path: str) -> None:
        self.number = number
        self.path = path
        #: Messages of the index in it.
        self.live = 0
        #: The first and last sequence of the messages written to it (0: none).
        self.min_seq = 0
        self.max_seq = 0
        #: Whether it holds deletions of sequences written before it.
        self.foreign = False
        self.reader: Optional[int] = None

    def close(self) -> None:
        if self.reader is not None:
            try:
                os.close(self.reader)
            except OSError:
                pass
            self.reader = None


#: An index entry: segment number, offset, record length, subject, time, size.
_Entry = Tuple[int, int, int, str, int, int]
_Waiter = Tuple[Callable[[], None], Optional[Callable[[StoreError], None]]]


class _WriteState:
    """
    What the two file stores share about writing: the sync policy, the
    state after a failed write (ok, full, unavailable), the waiters, and
    the one rule of a failure: let go of the file cut back to what was
    written (L{_cut_back}), refuse and tell (L{_failed}, L{_fsync_failed}),
    and every L{RETRY_INTERVAL} write again once the disk has room
    (L{_retry}, with what each store writes then in L{_write_again}).
    """

    log = Logger()
    #: Whether what a failed write held is written later (a consumer's
    #: state) or gone (a stream's messages).
    _keeps_unwritten = False

    def __init__(self, path: str, clock: IReactorTime, sync_interval: SyncInterval, disk: Optional[Disk],
                 read_only: bool = False) -> None:
        self._path = path
        #: Opened only to be read, beside the process that writes it: it
        #: writes, makes and deletes nothing, not even at open or close.
        self._read_only = read_only
        self._clock = clock
        self._disk = disk or Disk()
        self._sync_every = parse_sync_interval(sync_interval)
        #: "ok", "full" (no space) or "unavailable" (any other write failure).
        self.health = "ok"
        #: Counts the times the waiters of the buffer were moved on (written,
        #: or told of a failure): L{FileStore.group_epoch}.
        self._epoch = 0
        #: Why the store cannot write, for errors and logs.
        self.error: Optional[str] = None
        #: Waiting for the buffer's write; and written, to be called at the end of the turn.
        self._waiters: List[_Waiter] = []
        self._ready: List[_Waiter] = []
        self._flush_call: Optional[Union[IDelayedCall, TurnEndCall]] = None
        #: The clock's turn end (L{eventsvc.nats.tcp.turn_end}), once a flush asked for it.
        self._turn: Optional[TurnEnd] = None
        self._sync_call: Optional[IDelayedCall] = None
        self._retry_call: Optional[IDelayedCall] = None
        self._closed = False
        #: Whether new writes are refused (closed, read-only, or the disk cannot take them).
        self._refusing = read_only
        #: Called before and after the waiters of a write are called back
        #: (the stream's engine holds its PubAcks for one write out).
        self.around_ready: Optional[Tuple[Callable[[], None], Callable[[], None]]] = None
        #: The file written (a segment, a consumer's log), the bytes in it, and whether some are not fsynced.
        self._fd: Optional[int] = None
        self._size = 0
        self._dirty = False

    def _schedule_flush(self, delay: float = 0.0) -> None:
        call = self._flush_call
        if call is None:
            if not self._closed and not self._read_only:
                if delay:
                    self._flush_call = self._clock.callLater(delay, self._flush)
                else:
                    # At the end of the turn, before its output is sent: what
                    # the waiters write (PubAcks) goes out with it, not a
                    # turn (an epoll_wait) later.
                    self._flush_call = self._turn_end().call(self._flush)
        elif delay == 0 and call.getTime() > self._clock.seconds():
            # (Someone waits: a held write goes at the end of this turn.)
            call.cancel()
            self._flush_call = self._turn_end().call(self._flush)

    def _turn_end(self) -> TurnEnd:
        turn = self._turn
        if turn is None:
            turn = self._turn = turn_end(self._clock)
        return turn

    def _flush(self) -> None:
        raise NotImplementedError()

    def _call_ready(self) -> None:
        ready, self._ready = self._ready, []
        if not ready:
            return
        # (One waiter answers for its own group at once: held for one
        # write out are the answers of several, a synchronous publisher's
        # one PubAck is not.)
        around = self.around_ready if len(ready) > 1 else None
        if around is not None:
            around[0]()
        try:
            for callback, _ in ready:
                try:
                    callback()
                except Exception:
                    # (One waiter's bug must not keep the others' answers back.)
                    self.log.failure("file store {path}: a when_durable callback failed", path=self._path)
        finally:
            if around is not None:
                around[1]()

    def _written(self) -> None:
        """The buffer was written: its waiters are ready."""
        self._epoch += 1
        if self._waiters:
            self._ready += self._waiters
            self._waiters = []

    def _refusal(self) -> StoreError:
        if self.health == "full":
            return StoreFull("insufficient resources: {}".format(self.error))
        return StoreUnavailable("store unavailable: {}".format(self.error))

    def _failed(self, error: OSError) -> None:
        """A write failed: the store's state, the log line, the waiters' errbacks, the retry."""
        state = "full" if error.errno in FULL_ERRNOS else "unavailable"
        why = "{} in {}".format((error.strerror or str(error)).lower(), self._path)
        if (self.health, self.error) != (state, why):
            self.log.error(
                "file store {path}: cannot write ({why}); refusing new writes, reading on, trying again every {retry}s",
                path=self._path, why=why, retry=RETRY_INTERVAL,
            )
        self.health, self.error = state, why
        self._refusing = self.health != "ok" or self._closed
        refusal = self._refusal()
        self._epoch += 1
        waiters, self._waiters = self._waiters, []
        if self._keeps_unwritten:
            # (What they wait for is written later: those that cannot be
            # told of the failure are called then.)
            self._waiters = [waiter for waiter in waiters if waiter[1] is None]
        for _, errback in waiters:
            if errback is not None:
                try:
                    errback(refusal)
                except Exception:
                    self.log.failure("file store {path}: a when_durable errback failed", path=self._path)
        self._schedule_retry()

    def _cut_back(self) -> None:
        """A write failed: the file is cut back to what was written before, and let go (nothing is appended after a record cut short)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            self._disk.truncate(fd, self._size)
        except OSError:
            pass  # (the reader skips a torn tail)
        try:
            os.close(fd)
        except OSError:
            pass

    def _fsync_failed(self, error: OSError) -> None:
        """
        A periodic fsync failed: what it covered was written, and answered
        as written (what C{sync_interval} promises), but the disk under it
        is failing, so new writes are refused until a retry's write and
        fsync hold.
        """
        why = "fsync failed: {}".format(error.strerror or error)
        self.log.error("file store {path}: {why}; refusing new writes, reading on, trying again every {retry}s",
                       path=self._path, why=why, retry=RETRY_INTERVAL)
        self.health, self.error = "unavailable", why
        self._refusing = True
        self._dirty = False
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry_call is None and not self._closed:
            self._retry_call = self._clock.callLater(RETRY_INTERVAL, self._retry)

    def _retry(self) -> None:
        """Every L{RETRY_INTERVAL} while the store cannot write: once the disk has room, write again; when that holds, the store is back."""
        self._retry_call = None
        if self._closed or self.health == "ok":
            return
        if not self._room():
            self._schedule_retry()
            return
        try:
            self._write_again()
        except OSError as e:
            self._fail(e)
            return
        self._recovered()
        self._call_ready()

    def _write_again(self) -> None:
        """What a retry writes, and fsyncs, to find the disk back.  @raise OSError: it is not."""
        raise NotImplementedError()

    def _fail(self, error: OSError) -> None:
        raise NotImplementedError()

    def _room(self) -> bool:
        """Whether a retry is worth it: always, unless the disk was full and still is."""
        if self.health != "full":
            return True
        try:
            free, total = self._disk.space(self._path)
        except OSError:
            return False
        return free >= min(RESERVE, total // 16)

    def _recovered(self) -> None:
        if self.health != "ok":
            self.log.info("file store {path}: writable again ({error} is over)", path=self._path, error=self.error)
        self.health, self.error = "ok", None
        self._refusing = self.health != "ok" or self._closed

    def _schedule_sync(self) -> None:
        if self._sync_every is not None and self._sync_call is None and not self._closed:
            self._sync_call = self._clock.callLater(self._sync_every, self._periodic_sync)

    def _periodic_sync(self) -> None:
        raise NotImplementedError()

    def _cancel_timers(self) -> None:
        for name in ("_flush_call", "_sync_call", "_retry_call"):
            call = getattr(self, name)
            if call is not None and call.active():
                call.cancel()
            setattr(self, name, None)

    def _let_go(self) -> None:
        """Closed: refuse, stop the timers and let the file go (what C{close} and C{abandon} end with)."""
        self._closed = True
        self._refusing = True
        self._cancel_timers()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def abandon(self) -> None:
        """For tests: let everything go as a C{kill -9} would (nothing buffered is written)."""
        self._let_go()


class FileStore(_WriteState):
    """
    A L{eventsvc.jetstream.store.MessageStore} in segment files under
    C{directory}.

    L{when_durable} takes an errback besides the callback (an extension
    of the contract): it is called with L{StoreFull} or L{StoreUnavailable}
    when the write that held the messages failed; they are gone, and must
    not be acknowledged.
    """

    def __init__(
        self,
        directory: Union[FilePath, str],
        limits: StoreLimits = StoreLimits(),
        clock: Optional[IReactorTime] = None,
        max_store: int = -1,
        sync_interval: SyncInterval = DEFAULT_SYNC_INTERVAL,
        segment_size: int = SEGMENT_SIZE,
        disk: Optional[Disk] = None,
        read_only: bool = False,
    ) -> None:
        """
        Open the store in C{directory} (made if missing), reading what is
        there.

        @param clock: for the group commit, fsyncs and retries (the reactor).
        @param max_store: C{max_file_store} left for this stream in bytes
            (-1: no limit); past it L{store} raises L{StoreFull}.
        @param sync_interval: C{"always"}, or seconds between fsyncs.
        @param disk: the writing operations (tests put a failing disk here).
        @param read_only: only read it (another process may be writing it:
            C{eventsvc spool stats}); it takes no message, and changes no file.
        @raise StoreUnavailable: the directory cannot be read.
        @raise ValueError: a bad C{sync_interval}.
        """
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        if isinstance(directory, str):
            directory = FilePath(directory)
        super().__init__(directory.path, clock, sync_interval, disk, read_only)  # type: ignore[arg-type]
        self._directory = directory
        self._limits = limits
        self._max_store = max_store
        self._segment_size = segment_size
        self._index: Dict[int, _Entry] = {}
        self._by_subject: Dict[str, Dict[int, None]] = {}
        self._first = 1
        self._last = 0
        self._last_ts = 0
        self._bytes = 0
        self._removed: Optional[RemovedCallback] = None
        self._segments: Dict[int, _Segment] = {}
        self._next_number = 1
        #: The segment being written (its write fd and the bytes written to it: C{_fd}, C{_size}).
        self._active: Optional[_Segment] = None
        self._folder_dirty = False
        #: Segments written to since the last fsync, closed since.
        self._unsynced: List[str] = []
        self._buffer = bytearray()
        #: The first sequence not written yet (those after it are lost if the write fails).
        self._unwritten = 1
        #: Whether limits remove old messages.
        self._limited = False
        #: Deletions to write, as ranges; and those of the buffer (held again if its write fails).
        self._deletions: List[Tuple[int, int]] = []
        self._buffered_deletions: List[Tuple[int, int]] = []
        self._mark = False
        #: The last read: segment number, offset, bytes.
        self._cache: Tuple[int, int, bytes] = (0, 0, b"")
        self._loaded = 0
        #: Segment files to delete once the deletions carried out of them are written.
        self._unlinks: List[str] = []
        try:
            if not read_only:
                os.makedirs(directory.path, exist_ok=True)
            self._read()
        except OSError as e:
            raise StoreUnavailable("cannot read {}: {}".format(directory.path, e.strerror or e))
        # (Limits lowered while it was closed, or deletions lost with a torn tail.)
        self.set_limits(limits)
        self._unwritten = self._last + 1

    # -- opening ------------------------------------------------------------

    def _segment_path(self, number: int) -> str:
        return os.path.join(self._path, "msgs-{:08d}.seg".format(number))

    def _read(self) -> None:
        numbers = sorted(int(m.group(1)) for m in map(_SEGMENT_NAME.match, os.listdir(self._path)) if m)
        index = self._index
        for number in numbers:
            segment = _Segment(number, self._segment_path(number))
            self._segments[number] = segment
            with open(segment.path, "rb") as f:
                data = f.read()
            damage = []
            records = 0
            for start, end in _scan(data, MAGIC):
                if end < 0:
                    damage.append((start, -end))
                    continue
                records += 1
                kind = data[start + 8]
                if kind == 0x4D:
                    _, seq, ts, slen, hlen = _MESSAGE.unpack_from(data, start + 8)
                    p = start + 8 + _MESSAGE.size
                    subject = intern(data[p : p + slen].decode("utf-8", "replace"))
                    # (The subject's bytes as written, slen: what file_message_size counts.)
                    if hlen:
                        size = 22 + slen + 4 + hlen + (end - p - slen - hlen) + 8
                    else:
                        size = 22 + slen + (end - p - slen) + 8
                    old = index.get(seq)
                    if old is not None:
                        self._segments[old[0]].live -= 1
                    index[seq] = (number, start, end - start, subject, ts, size)
                    segment.live += 1
                    if not segment.min_seq:
                        segment.min_seq = seq
                    segment.max_seq = max(segment.max_seq, seq)
                    if seq >= self._last:
                        self._last, self._last_ts = seq, ts
                elif kind == 0x44:
                    for i in range(start + 9, end, _RANGE.size):
                        low, high = _RANGE.unpack_from(data, i)
                        if not segment.min_seq or low < segment.min_seq:
                            segment.foreign = True
                        self._drop_range(low, high)
                elif kind == 0x48 or kind == 0x45:
                    _, seq, ts = _MARK.unpack_from(data, start + 8)
                    if seq >= self._last:
                        self._last, self._last_ts = seq, ts
            if damage:
                self.log.warn(
                    "file store {path}: skipped {what}; the {count} readable records of this file are kept",
                    path=segment.path, what=_describe(damage, len(data)), count=records,
                )
        for seq in sorted(index):
            entry = index[seq]
            self._by_subject.setdefault(entry[3], {})[seq] = None
            self._bytes += entry[5]
        self._first = min(index) if index else self._last + 1
        self._next_number = (numbers[-1] + 1) if numbers else 1
        for segment in list(self._segments.values()):
            if not segment.live and segment.number != numbers[-1]:
                # (After a new segment says where the sequence is: the
                # newest may be one a crash left empty.)
                self._drop_segment(segment, defer=True)
        if self._unlinks:
            self._mark = True
            self._schedule_flush()

    def _drop_range(self, low: int, high: int) -> None:
        """While reading: the messages from C{low} to C{high} were deleted."""
        index = self._index
        if high - low < len(index):
            seqs: Iterable[int] = range(low, high + 1)
        else:
            seqs = [seq for seq in index if low <= seq <= high]
        for seq in seqs:
            entry = index.pop(seq, None)
            if entry is not None:
                self._segments[entry[0]].live -= 1

    # -- writing ------------------------------------------------------------

    def set_limits(self, limits: StoreLimits) -> None:
        self._limits = limits
        self._limited = limits.max_msgs_per_subject > 0 or limits.max_msgs > 0 or limits.max_bytes > 0
        self._enforce()

    def on_removed(self, callback: Optional[RemovedCallback]) -> None:
        self._removed = callback

    def store(self, subject: str, headers: Optional[bytes], data: bytes, ts: int) -> int:
        # One function, few calls and lookups: this runs for every message.
        if self._refusing:
            if self._closed:
                raise StoreUnavailable("store closed: {}".format(self._path))
            raise self._refusal()
        encoded = subject.encode()  # (UTF-8, without naming it: no argument parsed)
        # (22 + subject + 4 + headers + data + 8, or 22 + subject + data + 8:
        # file_message_size, the subject's UTF-8 bytes counted)
        size = len(encoded) + len(headers) + len(data) + 34 if headers else len(encoded) + len(data) + 30
        limits = self._limits
        if self._max_store >= 0 and self._bytes + size > self._max_store:
            raise StoreFull("insufficient resources")
        if limits.discard_new:
            if limits.max_msgs > 0 and len(self._index) >= limits.max_msgs:
                raise LimitReached("maximum messages exceeded")
            if limits.max_bytes > 0 and self._bytes + size > limits.max_bytes:
                raise LimitReached("maximum bytes exceeded")
            if (
                limits.discard_new_per_subject
                and limits.max_msgs_per_subject > 0
                and len(self._by_subject.get(subject, ())) >= limits.max_msgs_per_subject
            ):
                raise LimitReached("maximum messages per subject exceeded")
        active = self._active
        buffer = self._buffer
        offset = self._size + len(buffer)
        if active is None or offset >= self._segment_size:
            try:
                active = self._begin()
            except OSError as e:
                self._fail(e)
                raise self._refusal()
            buffer = self._buffer
            offset = self._size + len(buffer)
        seq = self._last + 1
        # (One copy of each subject for the whole index, not one per message.)
        subject = intern(subject)
        hlen = len(headers) if headers else 0
        # One body and one CRC call (PyPy's zlib calls cost more than the copy).
        if hlen:
            body = _MESSAGE.pack(b"M", seq, ts, len(encoded), hlen) + encoded + headers + data  # type: ignore[operator]
        else:
            body = _MESSAGE.pack(b"M", seq, ts, len(encoded), 0) + encoded + data
        length = len(body)
        buffer += _RECORD.pack(length, zlib.crc32(body))
        buffer += body
        self._last = seq
        self._last_ts = ts
        if not self._index:
            self._first = seq
        self._index[seq] = (active.number, offset, length + 8, subject, ts, size)
        seqs = self._by_subject.get(subject)
        if seqs is None:
            self._by_subject[subject] = {seq: None}
        else:
            seqs[seq] = None
        self._bytes += size
        active.live += 1
        active.max_seq = seq
        if not active.min_seq:
            active.min_seq = seq
        if self._flush_call is None:
            self._schedule_flush()
        if len(buffer) >= FLUSH_SIZE and not self._write():
            raise self._refusal()
        if self._limited:
            self._enforce(subject)
        return seq

    def _begin(self) -> _Segment:
        """
        Begin a new segment (the one written is full, or none is open):
        what is buffered is written to the old one first.

        @raise OSError: the disk cannot take it.
        """
        if self._fd is not None:
            self._write_or_raise()
            if self._dirty:
                # (fsynced with the rest at the next sync_interval, not now:
                # an 8 MiB fsync would hold the reactor up.)
                self._unsynced.append(self._active.path)  # type: ignore[union-attr]
                self._dirty = False
            os.close(self._fd)
            self._fd = None
        previous = self._segments[max(self._segments)] if self._segments else None
        while True:
            number = self._next_number
            self._next_number += 1
            path = self._segment_path(number)
            try:
                fd = self._disk.create(path)
                break
            except FileExistsError:
                continue
        segment = _Segment(number, path)
        self._segments[number] = segment
        self._active, self._fd, self._size = segment, fd, 0
        self._buffer += MAGIC
        self._buffer += _record(_MARK.pack(b"H", self._last, self._last_ts))
        self._folder_dirty = True
        self._schedule_flush()
        if previous is not None and not previous.live:
            # (Once the new segment is written: until then it says where the sequence is.)
            self._drop_segment(previous, defer=True)
        return segment

    def _write_or_raise(self) -> None:
        """Write the buffer (and the deletions waiting) to the segment; OSError if it cannot."""
        if self._deletions:
            active = self._active
            assert active is not None
            ranges, self._deletions = self._deletions, []
            for i in range(0, len(ranges), 4096):
                part = ranges[i : i + 4096]
                self._buffer += _record(b"D" + b"".join(_RANGE.pack(low, high) for low, high in part))
                if not active.min_seq or part[0][0] < active.min_seq:
                    active.foreign = True
            self._buffered_deletions += ranges
        if self._mark:
            self._buffer += _record(_MARK.pack(b"H", self._last, self._last_ts))
            self._mark = False
        if not self._buffer:
            self._written()
            return
        self._disk.write(self._fd, self._buffer)  # type: ignore[arg-type]
        if self._sync_every is None:
            self._disk.fsync(self._fd)  # type: ignore[arg-type]
            if self._folder_dirty:
                sync_folder(self._path)
                self._folder_dirty = False
        else:
            self._dirty = True
            if self._sync_call is None:
                self._schedule_sync()
        self._size += len(self._buffer)
        self._buffer = bytearray()
        self._unwritten = self._last + 1
        del self._buffered_deletions[:]
        self._written()
        if self._unlinks:
            unlinks, self._unlinks = self._unlinks, []
            for path in unlinks:
                self._unlink(path)

    def _write(self) -> bool:
        """Write what waits, if the store can; whether it did."""
        if self.health != "ok":
            return False
        if self._fd is None and (self._deletions or self._mark or self._buffer):
            try:
                self._begin()
            except OSError as e:
                self._fail(e)
                return False
        if self._fd is None:
            self._written()
            return True
        try:
            self._write_or_raise()
        except OSError as e:
            self._fail(e)
            return False
        return True

    def _flush(self) -> None:
        self._flush_call = None
        self._write()
        self._call_ready()

    def _fail(self, error: OSError) -> None:
        """
        A write failed: cut the segment back to what was written before and
        close it (nothing is appended after a record cut short); the
        messages of the buffer are lost, its deletions held.
        """
        active, self._active = self._active, None
        self._cut_back()
        index, number = self._index, active.number if active is not None else -1
        lost = [seq for seq in range(self._unwritten, self._last + 1) if seq in index and index[seq][0] == number]
        self._unwritten = self._last + 1
        self._deletions = self._buffered_deletions + self._deletions
        self._buffered_deletions = []
        self._buffer = bytearray()
        self._mark = True
        for seq in lost:
            self._remove(seq, True, False)
        if active is not None and self._size == 0:
            # It holds nothing (not even the magic): it must not stay the newest.
            self._segments.pop(active.number, None)
            active.close()
            self._unlink(active.path)
        self._size = 0
        self._failed(error)

    def _write_again(self) -> None:
        # A mark (and what waits) written and fsynced say the store is back.
        self._mark = True
        if self._fd is None:
            self._begin()
        self._write_or_raise()
        self._disk.fsync(self._fd)  # type: ignore[arg-type]
        self._dirty = False

    def _periodic_sync(self) -> None:
        self._sync_call = None
        self._sync()

    def _sync(self) -> None:
        unsynced, self._unsynced = self._unsynced, []
        for path in unsynced:
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                continue  # (deleted since)
            except OSError as e:
                self.log.error("file store {path}: cannot open a segment to fsync it: {error}", path=path, error=e.strerror or e)
                continue
            try:
                self._disk.fsync(fd)
            except OSError as e:
                self.log.error("file store {path}: fsync failed: {error}", path=path, error=e.strerror or e)
            finally:
                os.close(fd)
        if self._dirty and self._fd is not None:
            try:
                self._disk.fsync(self._fd)
            except OSError as e:
                self._fsync_failed(e)
                return
            self._dirty = False
        if self._folder_dirty:
            sync_folder(self._path)
            self._folder_dirty = False

    def _delete(self, seq: int) -> None:
        deletions = self._deletions
        if deletions and deletions[-1][1] + 1 == seq:
            deletions[-1] = (deletions[-1][0], seq)
        else:
            deletions.append((seq, seq))
        if self._flush_call is None:
            self._schedule_flush()

    def _drop_segment(self, segment: _Segment, defer: bool = False) -> None:
        """
        C{segment} holds no message any more: delete it; when it holds
        deletions of older segments that are still there, those are
        written again first, and the file goes after that write (so too
        with C{defer}).
        """
        del self._segments[segment.number]
        segment.close()
        carried: List[int] = []
        if segment.foreign:
            index = self._index
            for other in self._segments.values():
                if other.number >= segment.number or not other.min_seq:
                    continue
                number = other.number
                carried += (
                    seq for seq in range(other.min_seq, other.max_seq + 1)
                    if seq not in index or index[seq][0] != number
                )
        if carried or defer:
            carried.sort()
            self._deletions += _ranges(carried)
            self._unlinks.append(segment.path)
            self._schedule_flush()
        else:
            self._unlink(segment.path)

    def _unlink(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.error("file store {path}: cannot delete a segment with no messages left: {error}", path=path, error=e.strerror or e)

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
            while limits.max_msgs > 0 and len(self._index) > limits.max_msgs:
                self._remove(self._first_seq(), True)
            while limits.max_bytes > 0 and self._bytes > limits.max_bytes:
                self._remove(self._first_seq(), True)

    def when_durable(self, callback: Callable[[], None], errback: Optional[Callable[[StoreError], None]] = None) -> None:
        """
        Call C{callback} once everything stored so far is written (and
        fsynced with C{sync_interval="always"}); or C{errback} with
        L{StoreFull}/L{StoreUnavailable} if that write failed (the messages
        stored since the last write are gone then; without an errback,
        nothing is called).
        """
        # (A message store's flush is only ever due at once: one scheduled
        # already serves this waiter, without asking the clock the time.)
        if self._buffer:
            self._waiters.append((callback, errback))
            if self._flush_call is None:
                self._schedule_flush()
        elif self._ready:
            # (Nothing of its is unwritten; it only keeps its turn.)
            self._ready.append((callback, errback))
            if self._flush_call is None:
                self._schedule_flush()
        else:
            callback()

    def group_epoch(self) -> Optional[int]:
        """
        A count that stays the same, while the buffer holds something, until
        its waiters are moved on: a caller's waiter registered by
        L{when_durable} at some count is called back (or told of a failure)
        with the same write as any registered later at the same count, so
        the caller may answer for what it stores meanwhile from that one
        waiter (a stream's PubAcks: L{Stream._when_durable}).  None when the
        buffer is empty (a waiter would not wait for a write).
        """
        return self._epoch if self._buffer else None

    def skip(self, seq: int) -> None:
        if not self._index and seq > self._last:
            self._last = seq - 1
            self._first = seq
            self._mark = True
            self._schedule_flush()

    def remove(self, seq: int, erase: bool = False) -> bool:
        if erase:
            self._erase(seq)
        return self._remove(seq, False)

    def _erase(self, seq: int) -> None:
        """Overwrite the message's record with an erased one of the same length."""
        entry = self._index.get(seq)
        if entry is None:
            return
        number, offset, length = entry[0], entry[1], entry[2]
        # (Its sequence and time stay: the last message erased is still where the sequence is.)
        body = _MARK.pack(b"E", seq, entry[4]) + bytes(length - 8 - _MARK.size)
        record = _record(body)
        active = self._active
        if active is not None and number == active.number and offset >= self._size:
            at = offset - self._size
            self._buffer[at : at + length] = record
            return
        segment = self._segments.get(number)
        if segment is None:
            return
        self._cache = (0, 0, b"")
        try:
            fd = os.open(segment.path, os.O_WRONLY)
            try:
                os.pwrite(fd, record, offset)
            finally:
                os.close(fd)
        except OSError as e:
            self.log.error("file store {path}: cannot erase message {seq}: {error}", path=segment.path, seq=seq, error=e.strerror or e)

    def _remove(self, seq: int, by_limit: bool, record: bool = True) -> bool:
        entry = self._index.pop(seq, None)
        if entry is None:
            return False
        subject = entry[3]
        seqs = self._by_subject[subject]
        del seqs[seq]
        if not seqs:
            del self._by_subject[subject]
        self._bytes -= entry[5]
        if seq == self._first:
            self._first = self._first_seq() if self._index else self._last + 1
        segment = self._segments.get(entry[0])
        if segment is not None:
            segment.live -= 1
            if not segment.live and segment is not self._active and segment.number != max(self._segments):
                self._drop_segment(segment)
        if record:
            self._delete(seq)
        if by_limit and self._removed is not None:
            self._removed(seq, subject)
        return True

    def _first_seq(self) -> int:
        if not self._index:
            return self._last + 1
        seq = self._first
        index = self._index
        while seq not in index:
            seq += 1
        self._first = seq
        return seq

    def purge(self, subject: Optional[str] = None, seq: int = 0, keep: int = 0) -> int:
        if not subject and not seq and not keep:
            victims: List[int] = sorted(self._index)
        elif seq and not subject and not keep and not self._index:
            self.skip(seq)
            return 0
        elif keep:
            seqs = _subject_seqs(self._by_subject, subject) if subject else sorted(self._index)
            victims = seqs[: max(0, len(seqs) - keep)]
            if seq:
                victims = [n for n in victims if n < seq]
        elif subject:
            victims = [n for n in _subject_seqs(self._by_subject, subject) if not seq or n < seq]
        else:
            victims = []
            for n in sorted(self._index):
                if seq and n >= seq:
                    break
                if _matches(subject, self._index[n][3]):
                    victims.append(n)
        for n in victims:
            self._remove(n, False)
        if seq and not subject and not self._index and seq > self._last:
            self.skip(seq)
        return len(victims)

    def expire(self, now: int) -> int:
        max_age = self._limits.max_age
        if max_age <= 0:
            return 0
        count = 0
        while self._index:
            first = self._first_seq()
            if now - self._index[first][4] < max_age:
                break
            self._remove(first, True)
            count += 1
        return count

    def next_expiry(self) -> Optional[int]:
        if self._limits.max_age <= 0 or not self._index:
            return None
        return self._index[self._first_seq()][4] + self._limits.max_age

    # -- reading ------------------------------------------------------------

    def load(self, seq: int) -> Optional[StoredMessage]:
        entry = self._index.get(seq)
        if entry is None:
            return None
        number, offset, length = entry[0], entry[1], entry[2]
        active = self._active
        if active is not None and number == active.number and offset >= self._size:
            at = offset - self._size
            chunk = bytes(self._buffer[at : at + length])
            at, end = 0, length
            ts, slen, hlen = _FRAMED_MESSAGE.unpack_from(chunk, 0)[4:]
        else:
            # Consumers read in order: then one read brings the next messages
            # too.  The record is read where it lies in that read (its CRC
            # over one slice of it, its parts sliced from it), not copied out
            # of it first.
            cache = self._cache
            chunk = cache[2]
            at = offset - cache[1]
            if cache[0] != number or at < 0 or at + length > len(chunk):
                segment = self._segments[number]
                try:
                    if segment.reader is None:
                        segment.reader = os.open(segment.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
                    ahead = READ_AHEAD if seq == self._loaded + 1 else length
                    chunk = os.pread(segment.reader, max(length, ahead), offset)
                except OSError as e:
                    self.log.error("file store {path}: cannot read message {seq}: {error}", path=segment.path, seq=seq, error=e.strerror or e)
                    return None
                self._cache = (number, offset, chunk)
                at = 0
            self._loaded = seq
            end = at + length
            # (The index holds whole records only: one as long as its entry says has a head.)
            size, crc, _, _, ts, slen, hlen = _FRAMED_MESSAGE.unpack_from(chunk, at) if end <= len(chunk) else _NO_HEAD
            # (A small record's copy costs less than a memoryview.)
            if size != length - 8 or zlib.crc32(chunk[at + 8 : end] if length < 4096 else memoryview(chunk)[at + 8 : end]) != crc:
                self.log.error("file store {path}: message {seq} at byte {offset} is damaged; skipped", path=self._segment_path(number), seq=seq, offset=offset)
                return None
        p = at + _FRAMED_MESSAGE.size + slen
        # (chunk is bytes: its slices are too.  tuple.__new__ is what the
        # named tuple's own __new__ calls, without its frame: a read a message.)
        return _new_tuple(StoredMessage, (entry[3], seq, chunk[p : p + hlen] if hlen else None, chunk[p + hlen : end], ts))

    def load_next(self, start: int, subject_filter: Optional[str] = None) -> Optional[StoredMessage]:
        # (A message that cannot be read, damaged or its read failed, reads
        # as gone, with load's error: the next one after it is the answer, as
        # after a gap.  None means no message after start, and a consumer
        # takes it so: never for one it could not read.)
        index, load = self._index, self.load
        if subject_filter and "*" not in subject_filter and ">" not in subject_filter:
            seqs = self._by_subject.get(subject_filter)
            if not seqs:
                return None
            if next(reversed(seqs)) < start:
                return None
            if next(iter(seqs)) >= start:
                candidates: Iterable[int] = seqs
            elif len(seqs) < 64:
                candidates = (seq for seq in seqs if seq >= start)
            else:
                # Many messages on it: walking on from start finds the next one
                # sooner than walking its list from the front.
                candidates = (seq for seq in range(start, self._last + 1) if (index.get(seq) or _NO_ENTRY)[3] == subject_filter)
            for seq in candidates:
                message = load(seq)
                if message is not None:
                    return message
            return None
        everything = not subject_filter or subject_filter == ">"
        if everything and start >= self._first:
            # (A consumer of everything reads on in order: the next one is
            # most often there.)
            if start in index:
                message = load(start)
                if message is not None:
                    return message
                start += 1
        for seq in range(max(start, self._first), self._last + 1):
            entry = index.get(seq)
            if entry is not None and (everything or _matches(subject_filter, entry[3])):
                message = load(seq)
                if message is not None:
                    return message
        return None

    def load_last(self, subject_filter: Optional[str] = None) -> Optional[StoredMessage]:
        if subject_filter and "*" not in subject_filter and ">" not in subject_filter:
            # One subject: its own last, not a walk over every subject (a KV get,
            # an object's info and each subject of a last-per-subject consumer ask so).
            seqs = self._by_subject.get(subject_filter)
            return self.load(next(reversed(seqs))) if seqs else None
        best = 0
        for name, seqs in self._by_subject.items():
            if _matches(subject_filter, name):
                best = max(best, next(reversed(seqs)))
        return self.load(best) if best else None

    def last_seq(self) -> int:
        return self._last

    def state(self) -> StoreState:
        if not self._index:
            return StoreState(0, 0, self._last + 1 if self._last else 0, 0, self._last, self._last_ts if self._last else 0, 0, 0)
        first = self._first_seq()
        return StoreState(
            len(self._index),
            self._bytes,
            first,
            self._index[first][4],
            self._last,
            self._last_ts,
            self._last - first + 1 - len(self._index),
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
            if start <= self._first:
                return len(self._index)
            return sum(1 for seq in self._index if seq >= start)
        return sum(
            1
            for name, seqs in self._by_subject.items()
            if _matches(subject_filter, name)
            for seq in seqs
            if seq >= start
        )

    def deleted(self) -> List[int]:
        if not self._index:
            return []
        return [seq for seq in range(self._first_seq(), self._last + 1) if seq not in self._index]

    # -- the end ------------------------------------------------------------

    def close(self) -> None:
        """Write what is buffered, fsync, and let the files go."""
        if self._closed:
            return
        if not self._read_only:
            self._write()
            if self.health == "ok":
                self._sync()
        self._call_ready()
        self._let_go()
        self._active = None

    def destroy(self) -> None:
        self.close()
        for name in os.listdir(self._path):
            if _SEGMENT_NAME.match(name):
                self._unlink(os.path.join(self._path, name))
        self._segments.clear()
        self._index.clear()
        self._by_subject.clear()
        self._bytes = 0
        try:
            os.rmdir(self._path)
        except OSError:
            pass  # (the stream's own files are still in it)

    def _let_go(self) -> None:
        super()._let_go()
        for segment in self._segments.values():
            segment.close()


def _state_body(state: ConsumerState, generation: int) -> bytes:
    parts = [
        _STATE.pack(
            b"S", generation, state.delivered_consumer, state.delivered_stream,
            state.ack_floor_consumer, state.ack_floor_stream, len(state.pending), len(state.redelivered),
        )
    ]
    parts += [_PENDING.pack(seq, cseq, ts) for seq, (cseq, ts) in sorted(state.pending.items())]
    parts += [_REDELIVERED.pack(seq, count) for seq, count in sorted(state.redelivered.items())]
    return b"".join(parts)


def _parse_state(body: bytes) -> Tuple[int, ConsumerState]:
    """The generation and state of an C{S} record (ValueError if it does not add up)."""
    if len(body) < _STATE.size:
        raise ValueError("short state record")
    _, generation, dc, ds, fc, fs, npending, nredelivered = _STATE.unpack_from(body, 0)
    if len(body) != _STATE.size + npending * _PENDING.size + nredelivered * _REDELIVERED.size:
        raise ValueError("state record of the wrong length")
    pending: Dict[int, Tuple[int, int]] = {}
    pos = _STATE.size
    for _ in range(npending):
        seq, cseq, ts = _PENDING.unpack_from(body, pos)
        pending[seq] = (cseq, ts)
        pos += _PENDING.size
    redelivered: Dict[int, int] = {}
    for _ in range(nredelivered):
        seq, count = _REDELIVERED.unpack_from(body, pos)
        redelivered[seq] = count
        pos += _REDELIVERED.size
    return generation, ConsumerState(dc, ds, fc, fs, pending, redelivered)


class FileConsumerStore(_WriteState):
    """
    A L{eventsvc.jetstream.store.ConsumerStore} in C{directory}: a snapshot
    (C{consumer.snap}, replaced atomically, with a generation number) and
    a log (C{consumer.log}, whose first record names the generation it
    follows; a log of another generation is stale and ignored).  Updates
    are applied in memory at once and appended to the log with the group
    commit; L{when_durable} callbacks run once they are written.  When the
    log passes C{compact_size} (and four times the snapshot) a new
    snapshot is written and the log begun again.  A write that fails is
    retried (as a new snapshot) every L{RETRY_INTERVAL} seconds; the state
    in memory stays, and so does the store's answer to L{load}.
    """

    _keeps_unwritten = True

    def __init__(
        self,
        directory: Union[FilePath, str],
        clock: Optional[IReactorTime] = None,
        sync_interval: SyncInterval = DEFAULT_SYNC_INTERVAL,
        compact_size: int = COMPACT_SIZE,
        disk: Optional[Disk] = None,
        read_only: bool = False,
    ) -> None:
        """
        Open (or begin) the state kept in C{directory}.

        @param read_only: only read it (its consumer may be running in
            another process); nothing is compacted, made or written.
        @raise StoreUnavailable: it cannot be read.
        """
        if clock is None:
            from twisted.internet import reactor as clock  # type: ignore[assignment]
        if isinstance(directory, str):
            directory = FilePath(directory)
        super().__init__(directory.path, clock, sync_interval, disk, read_only)  # type: ignore[arg-type]
        self._directory = directory
        self._snapshot = os.path.join(directory.path, "consumer.snap")
        self._logpath = os.path.join(directory.path, "consumer.log")
        self._compact_size = compact_size
        #: Seconds an update may wait for its write when no one waits on
        #: it (L{when_durable} writes at once): the event log's consumers
        #: hold their records as the spool holds its done records.
        self.hold = 0.0
        self._memory = MemoryConsumerStore()
        self._generation = 0
        self._snapshot_size = 0
        self._buffer = bytearray()
        #: Records still open, sealed into the buffer before anything else
        #: is (L{_seal}): a run of first deliveries (its first consumer
        #: sequence, its stream sequences, their time) and acknowledgements
        #: (the floors after the last, and the sequences acknowledged).  A
        #: pull of 100 and its 100 acks are then two records, not 200: one
        #: record a message cost a pull a tenth of its CPU.
        self._run_first = 0
        self._run: List[int] = []
        self._run_ts = 0
        self._acks_floors = (0, 0)
        self._acks: Optional[List[int]] = None
        try:
            if not read_only:
                os.makedirs(directory.path, exist_ok=True)
            replayed = self._read()
        except OSError as e:
            raise StoreUnavailable("cannot read {}: {}".format(directory.path, e.strerror or e))
        if (replayed or self._fd is None) and not read_only:
            try:
                self._compact()
            except OSError as e:
                self._fail(e)

    def _read(self) -> bool:
        """Read the snapshot and replay the log; whether the log had records to fold in."""
        try:
            with open(self._snapshot, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            data = b""
        for start, end in _scan(data, SNAPSHOT_MAGIC, False):
            if end < 0:
                self.log.warn("consumer store {path}: the snapshot is damaged at bytes {start}-{end}; starting from the log", path=self._snapshot, start=start, end=-end)
                continue
            try:
                self._generation, state = _parse_state(data[start + 8 : end])
            except ValueError:
                continue
            self._memory.update(state)
            self._snapshot_size = len(data)
        try:
            with open(self._logpath, "rb") as f:
                log = f.read()
        except FileNotFoundError:
            return False
        generation = None
        replayed = 0
        damage = []
        for start, end in _scan(log, b"", False):
            if end < 0:
                damage.append((start, -end))
                continue
            body = log[start + 8 : end]
            kind = body[:1]
            if generation is None:
                if kind == b"G" and len(body) == 9:
                    generation = _SEQ.unpack_from(body, 1)[0]
                    if generation != self._generation:
                        self.log.info("consumer store {path}: stale log of generation {old} ignored", path=self._logpath, old=generation)
                        return True
                    continue
                generation = -1
            replayed += 1
            self._apply(body)
        if damage:
            self.log.warn(
                "consumer store {path}: skipped {what}; {count} readable records replayed",
                path=self._logpath, what=_describe(damage, len(log)), count=replayed,
            )
        if not replayed and not damage and generation == self._generation:
            if not self._read_only:
                self._fd = os.open(self._logpath, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
            self._size = len(log)
            return False
        return True

    def _apply(self, body: bytes) -> None:
        kind = body[:1]
        try:
            if kind == b"D" and len(body) == _DELIVERED.size:
                _, cseq, sseq, count, ts = _DELIVERED.unpack(body)
                self._memory.update_delivered(cseq, sseq, count, ts)
            elif kind == b"A" and (len(body) - _ACKS.size) % 8 == 0:
                _, fc, fs = _ACKS.unpack_from(body, 0)
                acked = [_SEQ.unpack_from(body, p)[0] for p in range(_ACKS.size, len(body), 8)]
                self._memory.update_acks(fc, fs, acked)
            elif kind == b"R" and (len(body) - _DELIVERED_RUN.size) % 8 == 0:
                _, first, ts = _DELIVERED_RUN.unpack_from(body, 0)
                count = (len(body) - _DELIVERED_RUN.size) // 8
                self._memory.update_delivered_run(first, list(struct.unpack_from("<%dQ" % count, body, _DELIVERED_RUN.size)), ts)
            elif kind == b"S":
                self._memory.update(_parse_state(body)[1])
        except (ValueError, struct.error):
            pass

    # -- the state ----------------------------------------------------------

    def load(self) -> ConsumerState:
        if self._run or self._acks is not None:
            self._seal()
        return self._memory.load()

    def update_delivered(self, consumer_seq: int, stream_seq: int, delivery_count: int, ts: int) -> None:
        run = self._run
        if run:
            if (delivery_count == 1 and ts == self._run_ts and stream_seq > run[-1]
                    and consumer_seq == self._run_first + len(run) and len(run) < SEAL_AT):
                # (The next first delivery of the run: update_delivered_run
                # of the run with it is what the calls one by one would do.)
                run.append(stream_seq)
                return
            self._seal()
        elif self._acks is not None:
            self._seal()
        if delivery_count == 1:
            if self._closed:
                raise StoreUnavailable("consumer store closed: {}".format(self._path))
            if self._flush_call is None and self.health == "ok":
                self._schedule_flush(self.hold)
            self._run_first, self._run_ts = consumer_seq, ts
            self._run = [stream_seq]
            return
        self._memory.update_delivered(consumer_seq, stream_seq, delivery_count, ts)
        self._append(_DELIVERED.pack(b"D", consumer_seq, stream_seq, delivery_count, ts))

    def update_delivered_run(self, first_consumer_seq: int, stream_seqs: List[int], ts: int) -> None:
        if not stream_seqs:
            return
        if self._run or self._acks is not None:
            self._seal()
        self._memory.update_delivered_run(first_consumer_seq, stream_seqs, ts)
        self._append(_DELIVERED_RUN.pack(b"R", first_consumer_seq, ts) + struct.pack("<%dQ" % len(stream_seqs), *stream_seqs))

    def update_acks(self, floor_consumer: int, floor_stream: int, acked: Iterable[int] = ()) -> None:
        if self._run:
            # An ack right after a delivery, before the write: a consumer
            # with ack_policy none (or one acked in process at once), whose
            # deliveries and acks alternate.  The run and the ack, a record
            # each as before (the write is due since the run began).
            delivered = self._sealed_run()
            if not isinstance(acked, (list, tuple)):
                acked = list(acked)
            self._memory.update_acks(floor_consumer, floor_stream, acked)
            body = _acks_body(floor_consumer, floor_stream, acked)
            buffer = self._buffer
            buffer += _RECORD.pack(len(delivered), zlib.crc32(delivered))
            buffer += delivered
            buffer += _RECORD.pack(len(body), zlib.crc32(body))
            buffer += body
            return
        staged = self._acks
        if staged is None:
            self._stage()
            self._acks = list(acked)
            self._acks_floors = (floor_consumer, floor_stream)
            return
        # One record for the acks since the last other record: replay (and
        # the state in memory, at the seal) pops every sequence it names and
        # everything at or below its floors, the highest of the acks'
        # (floors only rise: max() keeps to what the acks one by one do).
        staged += acked
        fc, fs = self._acks_floors
        if floor_consumer > fc or floor_stream > fs:
            # (Compared, not max()ed: two calls an ack, and most acks raise both or neither.)
            self._acks_floors = (floor_consumer if floor_consumer > fc else fc, floor_stream if floor_stream > fs else fs)
        if len(staged) >= SEAL_AT:
            self._seal()

    def update(self, state: ConsumerState) -> None:
        if self._run or self._acks is not None:
            self._seal()
        self._memory.update(state)
        self._append(_state_body(self._memory.load(), self._generation))

    def _stage(self) -> None:
        """A record is opened (L{_seal} closes it): its write is due, as L{_append}'s."""
        if self._closed:
            raise StoreUnavailable("consumer store closed: {}".format(self._path))
        if self._flush_call is None and self.health == "ok":
            self._schedule_flush(self.hold)

    def _seal(self) -> None:
        """
        The open run of deliveries or of acks: into the state in memory,
        and as one record into the buffer (before any other, in the order
        made; its write is already due).
        """
        if self._run:
            self._put(self._sealed_run())
        acked = self._acks
        if acked is not None:
            self._acks = None
            fc, fs = self._acks_floors
            self._memory.update_acks(fc, fs, acked)
            self._put(_acks_body(fc, fs, acked))

    def _sealed_run(self) -> bytes:
        """The open run of deliveries, closed: into the state in memory; its record's body."""
        run, self._run = self._run, []
        first, ts = self._run_first, self._run_ts
        if len(run) == 1:
            self._memory.update_delivered(first, run[0], 1, ts)
            return _DELIVERED.pack(b"D", first, run[0], 1, ts)
        self._memory.update_delivered_run(first, run, ts)
        return _DELIVERED_RUN.pack(b"R", first, ts) + struct.pack("<%dQ" % len(run), *run)

    def _put(self, body: bytes) -> None:
        buffer = self._buffer
        buffer += _RECORD.pack(len(body), zlib.crc32(body))
        buffer += body

    def _append(self, body: bytes) -> None:
        if self._run or self._acks is not None:
            self._seal()
        if self._closed:
            raise StoreUnavailable("consumer store closed: {}".format(self._path))
        self._put(body)
        if self._flush_call is None and self.health == "ok":
            self._schedule_flush(self.hold)

    # -- writing ------------------------------------------------------------

    def when_durable(self, callback: Callable[[], None], errback: Optional[Callable[[StoreError], None]] = None) -> None:
        """
        As L{FileStore.when_durable}: C{errback} learns of a write that
        failed (the state stays in memory and is written when the disk
        takes it again, but it was not durable when asked); without an
        errback, C{callback} is called once it is written.
        """
        if self._run or self._acks is not None:
            self._seal()
        if self.health != "ok" and errback is not None:
            errback(self._refusal())
        elif self._buffer or self._ready or self.health != "ok":
            self._waiters.append((callback, errback))
            self._schedule_flush()
        else:
            callback()

    def _flush(self) -> None:
        self._flush_call = None
        if self.health == "ok":
            try:
                self._write_or_raise()
            except OSError as e:
                self._fail(e)
        self._call_ready()

    def _write_or_raise(self) -> None:
        if self._fd is None:
            self._compact()
            return
        if self._run or self._acks is not None:
            self._seal()
        if self._buffer:
            self._disk.write(self._fd, self._buffer)  # type: ignore[arg-type]
            if self._sync_every is None:
                self._disk.fsync(self._fd)
            else:
                self._dirty = True
                self._schedule_sync()
            self._size += len(self._buffer)
            self._buffer = bytearray()
        self._written()
        if self._size > max(self._compact_size, 4 * self._snapshot_size):
            self._compact()

    def _compact(self) -> None:
        """
        Write the whole state as a new snapshot (atomically, fsynced), then
        begin a new log that follows it.  A crash in between leaves a log of
        the old generation, which the snapshot already holds: it is ignored.

        @raise OSError: the disk cannot take it.
        """
        if self._run or self._acks is not None:
            self._seal()
        generation = self._generation + 1
        snapshot = SNAPSHOT_MAGIC + _record(_state_body(self._memory.load(), generation))
        write_atomic(self._snapshot, snapshot, disk=self._disk)
        self._generation = generation
        self._snapshot_size = len(snapshot)
        self._buffer = bytearray()
        self._written()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        write_atomic(self._logpath, _record(b"G" + _SEQ.pack(generation)), disk=self._disk)
        self._fd = os.open(self._logpath, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        self._size = os.fstat(self._fd).st_size
        self._dirty = False

    def _fail(self, error: OSError) -> None:
        """The log cannot be written: let it go; the retry writes a new snapshot (the state is in memory)."""
        self._cut_back()
        self._failed(error)

    def _write_again(self) -> None:
        # The whole state as a new snapshot (fsynced), and a new log after it.
        self._compact()

    def _periodic_sync(self) -> None:
        self._sync_call = None
        if self._dirty and self._fd is not None:
            try:
                self._disk.fsync(self._fd)
            except OSError as e:
                self._fsync_failed(e)
                return
            self._dirty = False

    def close(self) -> None:
        """Write what is buffered (and fsync it)."""
        if self._closed:
            return
        if self._read_only:
            self.abandon()
            return
        try:
            if self.health != "ok":
                self._compact()
            self._write_or_raise()
            if self._dirty and self._fd is not None:
                self._disk.fsync(self._fd)
        except OSError as e:
            self._fail(e)
            self.log.error("consumer store {path}: closed with its last changes unwritten: {error}", path=self._path, error=self.error)
        self._call_ready()
        self._let_go()

    def destroy(self) -> None:
        self.close()
        for path in (self._snapshot, self._logpath):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._memory = MemoryConsumerStore()
        try:
            os.rmdir(self._path)
        except OSError:
            pass

