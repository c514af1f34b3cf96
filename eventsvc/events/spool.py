"""
The durable spool: segment files of accepted events and of their
deliveries, in data_dir.

A segment (C{events-<n>.spool}) starts with a header line and holds records:
a 4-byte length, a 4-byte CRC32 and a body.  The body is C{accept}: a line
of JSON (sequence number, event id, handlers, the time), a newline, and the
event's bytes exactly as they were published (so nothing is encoded twice,
and what is delivered after a restart is byte for byte what was accepted);
or C{done} (the sequence numbers a
handler finished together, a batch, and the handler; one sequence number in
records written before batches).  Records are appended to the newest segment and made durable by
L{Spool.sync}, which the dispatcher calls once per reactor turn before it
acknowledges anything (group commit).  When the newest segment passes
C{segment_size} (an eighth of a disk smaller than 32 MiB) a new one is begun;
a segment that owes nothing any more is deleted.  Nothing is ever rewritten: compaction is deleting whole segments,
so it never stops delivery, and damage is bounded to the segment it is in.

Reading survives damage.  A record whose length or CRC does not hold is
skipped by scanning forward, byte by byte, to the next offset where a whole
record holds again (a length within bounds and a CRC that matches: a random
match is a 1 in 2**32 chance), so one flipped byte costs at most the record
it is in.  The unreadable bytes are copied aside to
C{<segment>.damaged-<time>-<offset>} before anything can delete the segment,
and logged with how many bytes were skipped and where.  A torn tail (a
crash in mid-write) holds no acknowledged event and is only logged.

A disk that is full (or read-only, or failing) is a state of the spool,
not a crash.  Records wait in memory and are written (and made durable) by
L{Spool.sync}; when a write or an fsync fails, the segment is cut back to
its last durable size and closed (nothing is ever appended after a record
cut short), the events accepted since the last sync are returned as lost
(refused, never acknowledged), and the done records are held in memory.
Segments that owe nothing are still deleted, the one being written
included, which is what makes room again; a full store tries again once a
little room is free (L{RESERVE}), any other on every sync, and the first
write and fsync that succeed make it "ok" again.  Opening on a full disk
serves read-only: what is owed is delivered, new events are refused.

A single C{events.spool} file from before segments is read the same way at
start-up, what it still owes is written to a new segment and made durable,
and only then is the old file removed.

This module knows nothing of handlers or HTTP; it keeps records.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
import zlib
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from twisted.logger import Logger

from eventsvc.files import FULL_ERRNOS as _FULL
from eventsvc.files import Disk, sync_folder

_HEADER = struct.Struct(">II")
#: The first line of every segment (and its format's version).  Version 2
#: (whose accept records held the event as a JSON string) is still read;
#: an older eventsvc cannot read version 3, so downgrade with an empty spool.
SEGMENT_HEADER = b"EVSPOOL3\n"
_HEADERS = (SEGMENT_HEADER, b"EVSPOOL2\n")
#: A record larger than this is taken for corruption: events are at most
#: max_payload (64 MiB), and four bytes of JSON text read as a length are
#: always larger, which makes scanning through damage cheap.
MAX_RECORD = 64 * 1024 * 1024 + 4096
#: A new segment is begun when the newest passes this size (or an eighth of a
#: smaller disk, at least L{MIN_SEGMENT}: space comes back a segment at a time).
SEGMENT_SIZE = 4 * 1024 * 1024
MIN_SEGMENT = 64 * 1024
#: The single file of the spool before segments.
LEGACY_NAME = "events.spool"
_SEGMENT = re.compile(r"^events-(\d{8})\.spool$")
#: The number standing for the legacy file while it is read.
LEGACY = -1


class Pending(NamedTuple):
    seq: int
    event_id: str
    handlers: Sequence[str]
    body: bytes
    #: When it was accepted (UNIX time; 0 for records written before it was kept).
    accepted: float = 0.0


def _record(body: dict) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(data), zlib.crc32(data)) + data


def _accept_record(seq: int, event_id: str, handlers: bytes, event: bytes, accepted: float) -> bytes:
    """An accept record: its JSON line (C{handlers} already JSON), a newline, the event's own bytes."""
    data = b'{"k":"accept","seq":%d,"event_id":%s,"handlers":%s,"t":%.3f}\n%s' % (
        seq, _json_string(event_id), handlers, accepted, event,
    )
    return _HEADER.pack(len(data), zlib.crc32(data)) + data


def _json_string(text: str) -> bytes:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return b'"' + text.encode("ascii") + b'"'
    return json.dumps(text).encode("ascii")


class Damage(NamedTuple):
    """Bytes of a spool file that held no readable record."""

    start: int
    end: int
    #: Whether readable records follow it (damage), or it runs to the end (a torn tail).
    inside: bool


class SegmentRead(NamedTuple):
    records: List[dict]
    damage: List[Damage]
    size: int


def _record_at(data: bytes, pos: int) -> Optional[Tuple[dict, int]]:
    """The record that starts at C{pos} and where it ends, if a whole, valid one does."""
    if pos + _HEADER.size > len(data):
        return None
    size, crc = _HEADER.unpack_from(data, pos)
    end = pos + _HEADER.size + size
    if size > MAX_RECORD or end > len(data):
        return None
    body = data[pos + _HEADER.size : end]
    if zlib.crc32(body) != crc:
        return None
    # JSON never holds a raw newline: one ends an accept record's line, and
    # the event's bytes follow it.
    line_end = body.find(b"\n")
    try:
        record = json.loads(body if line_end < 0 else body[:line_end])
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    if line_end >= 0:
        record["event"] = body[line_end + 1 :]
    return record, end


def scan(data: bytes) -> Tuple[List[dict], List[Damage]]:
    """Every readable record in C{data}, and the ranges that were not."""
    records: List[dict] = []
    damage: List[Damage] = []
    pos = len(SEGMENT_HEADER) if data.startswith(_HEADERS) else 0
    while pos < len(data):
        found = _record_at(data, pos)
        if found is not None:
            records.append(found[0])
            pos = found[1]
            continue
        # Resynchronise: the next offset where a whole record holds.
        start = pos
        pos += 1
        while pos < len(data) and _record_at(data, pos) is None:
            pos += 1
        damage.append(Damage(start, pos, pos < len(data)))
    return records, damage


def read_segment(path: str) -> SegmentRead:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return SegmentRead([], [], 0)
    records, damage = scan(data)
    return SegmentRead(records, damage, len(data))


def segment_paths(directory: str) -> List[Tuple[int, str]]:
    """The segments in C{directory}, oldest first, as (number, path)."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        m = _SEGMENT.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def _valid_accept(record: dict) -> bool:
    handlers = record.get("handlers")
    return (
        isinstance(record.get("seq"), int) and isinstance(record.get("event_id"), str)
        and isinstance(record.get("event"), (str, bytes)) and isinstance(handlers, list)
        and all(isinstance(h, str) for h in handlers)
    )


def done_pairs(record: dict) -> List[Tuple[int, str]]:
    """The (sequence number, handler) pairs a C{done} record stands for."""
    handler = str(record.get("handler"))
    seqs = record.get("seqs")
    if isinstance(seqs, list):
        return [(seq, handler) for seq in seqs if isinstance(seq, int)]
    seq = record.get("seq")
    return [(seq, handler)] if isinstance(seq, int) else []


def owed(records: Sequence[dict]) -> "tuple[List[Pending], int]":
    """
    What the records still owe: each accepted event with the handlers that
    have not finished it, in acceptance order; and the next free sequence
    number.  A record that reads but lacks what it needs is skipped.
    """
    next_seq = 1
    accepted: Dict[int, dict] = {}
    done: Dict[int, Set[str]] = {}
    for record in records:
        kind = record.get("k")
        if kind == "done":
            for seq, handler in done_pairs(record):
                done.setdefault(seq, set()).add(handler)
            continue
        number = record.get("seq")
        if not isinstance(number, int):
            continue
        next_seq = max(next_seq, number + 1)
        if kind == "accept" and _valid_accept(record):
            accepted[number] = record
    pending = []
    for seq in sorted(accepted):
        record = accepted[seq]
        remaining = [h for h in record["handlers"] if h not in done.get(seq, ())]
        if remaining:
            t = record.get("t", 0.0)
            event = record["event"]
            pending.append(Pending(
                seq, record["event_id"], remaining, event if isinstance(event, bytes) else event.encode("utf-8"),
                t if isinstance(t, (int, float)) else 0.0,
            ))
    return pending, next_seq


def read_spool(directory: str) -> Tuple[List[dict], int, List[Tuple[str, Damage]]]:
    """Every readable record of the spool in C{directory} (legacy file first), its size, and its damage."""
    records: List[dict] = []
    size = 0
    damage: List[Tuple[str, Damage]] = []
    paths = [os.path.join(directory, LEGACY_NAME)] + [p for _, p in segment_paths(directory)]
    for path in paths:
        read = read_segment(path)
        records += read.records
        size += read.size
        damage += [(path, d) for d in read.damage]
    return records, size, damage


class StoreError(Exception):
    """
    The spool cannot keep an event now (its disk is full, read-only or
    failing): the event is refused, with this message.

    @ivar reason: the refusal's key in C{refused_by_reason}.
    @ivar key: the configuration key an operator looks at when the store
        cannot be opened ("[service] data_dir" unless the message says
        better, as a JetStream limit does).
    """

    def __init__(self, message: str, reason: str, key: str = "[service] data_dir") -> None:
        super().__init__(message)
        self.reason = reason
        self.key = key


#: A full store takes events again once this much room is free beyond the
#: record (or a sixteenth of a smaller disk): a full disk is not refilled by
#: the first publisher, leaving no room for the done records that free it.
RESERVE = 64 * 1024
#: Records are written to the segment once this many bytes wait (and at every sync).
FLUSH = 64 * 1024


class Spool:
    """
    The spool in C{directory}: L{open} once, then L{accept} and L{done} as
    events come and go, L{sync} before acknowledging, L{close} at the end.

    A store that cannot be written is a state (L{state}, L{error}), not a
    crash: L{accept} refuses with L{StoreError}; what was written since the
    last sync is cut off the segment again, and the events accepted in it
    are returned by the next L{sync} as lost (never to be acknowledged);
    done records that cannot be written are held in memory and written by
    a later L{sync}.  Segments that owe nothing are still deleted, the one
    being written included, and accepting resumes by itself when a write
    succeeds again.
    """

    log = Logger()

    def __init__(self, directory: str, segment_size: int = SEGMENT_SIZE, disk: Optional[Disk] = None) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.disk = disk or Disk()
        self.next_seq = 1
        #: "ok", "full" (no space, or over quota) or "read-only" (any other write failure).
        self.state = "ok"
        #: Why the store is not "ok", for answers, logs and /healthz.
        self.error: Optional[str] = None
        self._fd: Optional[int] = None
        #: The segment being written (or last written, when none is open).
        self._active = 0
        self._next_number = 1
        #: Bytes written to the active segment, and how many of them are durable.
        self._size = 0
        self._synced = 0
        #: Records not yet written to the segment.
        self._buffer = bytearray()
        self._dirty = False
        #: Since the last sync: the sequence numbers accepted, and the done pairs written.
        self._unsynced: List[int] = []
        self._unsynced_done: List[Tuple[int, str]] = []
        #: Accepted since the last sync but not kept (returned by the next sync).
        self._lost: List[int] = []
        #: Done pairs not written yet (the store failed): written by a later sync.
        self._held: Set[Tuple[int, str]] = set()
        #: Segments that owe nothing, deleted once the held done pairs are durable elsewhere.
        self._retiring: Set[int] = set()
        #: Per segment on disk, the sequence numbers accepted there, and of
        #: those the ones still owed; per owed sequence number, the handlers
        #: not done with it.
        self._accepted_in: Dict[int, Set[int]] = {}
        self._owed_in: Dict[int, Set[int]] = {}
        self._segment_of: Dict[int, int] = {}
        self._remaining: Dict[int, Set[str]] = {}
        #: Per segment, the done records it holds for events accepted in
        #: another segment: written again before it is deleted while that
        #: other segment is still there, or its events would come back.
        self._done_in: Dict[int, Set[Tuple[int, str]]] = {}
        #: Handler lists as JSON, made once per list.
        self._handlers_json: Dict[Tuple[str, ...], bytes] = {}

    @property
    def path(self) -> str:
        """The segment being written."""
        return self._segment_path(self._active)

    @property
    def held(self) -> int:
        """Done marks held in memory because the store could not take them."""
        return len(self._held)

    def _segment_path(self, number: int) -> str:
        if number == LEGACY:
            return os.path.join(self.directory, LEGACY_NAME)
        return os.path.join(self.directory, "events-{:08d}.spool".format(number))

    # -- opening ------------------------------------------------------------

    def open(self) -> List[Pending]:
        """
        Read what survives from before (skipping and saving aside what is
        damaged), begin a new segment, and return what is still owed.
        Nothing read is rewritten; segments that owe nothing are deleted.
        On a disk that cannot be written the spool opens read-only: what it
        owes is returned and delivered, and new events are refused until
        there is room.

        @raise StoreError: the spool cannot be read.
        """
        try:
            os.makedirs(self.directory, exist_ok=True)
            legacy = os.path.join(self.directory, LEGACY_NAME)
            segments = segment_paths(self.directory)
            sources = ([(LEGACY, legacy)] if os.path.exists(legacy) else []) + segments
            reads = [(number, path, read_segment(path)) for number, path in sources]
            for number, path, read in reads:
                self._report_damage(path, read)
        except OSError as e:
            raise StoreError("{}: cannot read the spool: {}".format(self.directory, e.strerror or e), "store_unreadable")
        accepted_where: Dict[int, int] = {}
        every: List[dict] = []
        for number, _, read in reads:
            for record in read.records:
                if record.get("k") == "accept" and _valid_accept(record):
                    accepted_where.setdefault(record["seq"], number)
            every += read.records
        pending, self.next_seq = owed(every)
        try:
            total = self.disk.space(self.directory)[1]
        except OSError:
            total = 0
        if total:
            self.segment_size = min(self.segment_size, max(total // 8, MIN_SEGMENT))
        self._next_number = (segments[-1][0] + 1) if segments else 1
        self._active = self._next_number
        for number, _, _ in reads:
            self._accepted_in[number] = set()
            self._owed_in[number] = set()
        for seq, number in accepted_where.items():
            self._accepted_in[number].add(seq)
        for p in pending:
            self._note_accept(p.seq, accepted_where[p.seq], set(p.handlers))
        # What each segment's done records say of events accepted elsewhere:
        # written again before that segment goes.
        for number, _, read in reads:
            self._done_in[number] = {
                (seq, handler) for record in read.records if record.get("k") == "done"
                for seq, handler in done_pairs(record)
                if accepted_where.get(seq, number) != number
            }
        # What the old single file owes is carried over: its accept records
        # are written to the new segment, and the old file goes once they
        # are durable (or stays, read like a segment, when they cannot be).
        carried = [p for p in pending if accepted_where[p.seq] == LEGACY]
        try:
            self._begin()
            for p in carried:
                self._buffer += self._accept_bytes(p.seq, p.event_id, p.handlers, p.body, p.accepted)
            self._sync_point()
        except OSError as e:
            self._fail(e)
        else:
            for p in carried:
                self._forget(p.seq)
                self._note_accept(p.seq, self._active, set(p.handlers))
        for number, _, _ in reads:
            if not self._owed_in.get(number) and number != self._active:
                self._retire(number)
        self.sync()
        sync_folder(self.directory)
        if pending:
            self.log.info("spool {path}: {count} events still to deliver", path=self.directory, count=len(pending))
        if self.state != "ok":
            self.log.error(
                "spool {path}: {error}; serving read-only: delivering the {count} events held",
                path=self.directory, error=self.error, count=len(pending),
            )
        return pending

    def _report_damage(self, path: str, read: SegmentRead) -> None:
        for d in read.damage:
            if not d.inside:
                self.log.warn(
                    "spool {path}: torn tail of {size} bytes at byte {offset} skipped (a write cut short; nothing acknowledged is in it)",
                    path=path, size=d.end - d.start, offset=d.start,
                )
                continue
            aside = "{}.damaged-{}-{}".format(path, time.strftime("%Y%m%dT%H%M%S"), d.start)
            try:
                with open(path, "rb") as f:
                    f.seek(d.start)
                    chunk = f.read(d.end - d.start)
                with open(aside, "wb") as f:
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                # (A full disk: the damaged segment itself stays while it owes anything.)
                try:
                    os.unlink(aside)
                except OSError:
                    pass
                self.log.error(
                    "spool {path}: {size} damaged bytes at bytes {start}-{end} skipped; could not copy them aside: {error}",
                    path=path, size=d.end - d.start, start=d.start, end=d.end, error=e.strerror or e,
                )
                continue
            self.log.error(
                "spool {path}: {size} damaged bytes at bytes {start}-{end} skipped, copied to {aside}; "
                "{records} readable records kept in this file",
                path=path, size=d.end - d.start, start=d.start, end=d.end, aside=aside, records=len(read.records),
            )

    # -- the segment being written ------------------------------------------

    def _begin(self) -> None:
        """Begin a new segment (its header written now)."""
        while True:
            number = self._next_number
            try:
                fd = self.disk.create(self._segment_path(number))
                break
            except FileExistsError:
                # (Left by a deletion that failed: never written to again.)
                self._next_number = number + 1
        self._next_number = number + 1
        try:
            self.disk.write(fd, SEGMENT_HEADER)
        except OSError:
            os.close(fd)
            self._unlink(number)
            raise
        self._fd = fd
        self._size = self._synced = len(SEGMENT_HEADER)
        self._active = number
        self._accepted_in.setdefault(number, set())
        self._owed_in.setdefault(number, set())
        self._dirty = True
        sync_folder(self.directory)

    def _flush(self) -> None:
        """Write the records waiting in memory (beginning a segment if none is open)."""
        if self._fd is None:
            self._begin()
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            self.disk.write(self._fd, data)  # type: ignore[arg-type]
            self._size += len(data)
            self._dirty = True

    def _sync_point(self) -> None:
        """Everything written so far is durable (raising OSError if not)."""
        self._flush()
        if self._dirty:
            self.disk.fsync(self._fd)  # type: ignore[arg-type]
            self._dirty = False
        self._synced = self._size
        del self._unsynced[:], self._unsynced_done[:]

    def _fail(self, error: OSError) -> None:
        """
        The store could not take a write: back to the last sync (cut off
        the segment; a new one is begun if even that fails).  The events
        accepted since are lost, the done pairs written since are held.
        """
        state = "full" if error.errno in _FULL else "read-only"
        why = "store {}: {} in {}".format(state, (error.strerror or str(error)).lower(), self.directory)
        if (self.state, self.error) != (state, why):
            self.log.error(
                "spool {path}: {why}; refusing new events, delivering those held, accepting again when it can write",
                path=self.directory, why=why,
            )
        self.state, self.error = state, why
        self._buffer = bytearray()
        self._dirty = False
        if self._fd is not None:
            try:
                self.disk.truncate(self._fd, self._synced)
            except OSError:
                pass  # (the reader skips a torn tail)
            # Whatever comes next goes to a new segment: nothing is ever
            # appended after a record cut short, and a write that succeeds
            # (a new segment, made durable) is what says the store is back.
            self._close_segment()
        for seq in self._unsynced:
            self._forget(seq)
        self._lost += self._unsynced
        self._held.update(self._needed(self._unsynced_done))
        del self._unsynced[:], self._unsynced_done[:]
        if not self._owed_in.get(self._active):
            self._retire(self._active)

    def _close_segment(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def _room(self, size: int) -> bool:
        """Whether a write of C{size} bytes is worth trying (always, unless the store is full)."""
        if self.state != "full":
            return True
        try:
            free, total = self.disk.space(self.directory)
            return free >= size + min(RESERVE, total // 16)
        except OSError:
            return False

    def _roll(self) -> None:
        """The active segment is full: make it durable and close it; the next write begins another."""
        self._sync_point()
        self._close_segment()
        if not self._owed_in.get(self._active):
            self._retire(self._active)

    # -- records ------------------------------------------------------------

    def _note_accept(self, seq: int, segment: int, handlers: Set[str]) -> None:
        self._accepted_in.setdefault(segment, set()).add(seq)
        self._owed_in.setdefault(segment, set()).add(seq)
        self._segment_of[seq] = segment
        self._remaining[seq] = handlers

    def _forget(self, seq: int) -> None:
        """An accept record that is not on disk (any more)."""
        segment = self._segment_of.pop(seq, None)
        self._remaining.pop(seq, None)
        if segment is not None:
            self._accepted_in.get(segment, set()).discard(seq)
            self._owed_in.get(segment, set()).discard(seq)

    def _accept_bytes(self, seq: int, event_id: str, handlers: Sequence[str], body: bytes, accepted: float) -> bytes:
        key = handlers if type(handlers) is tuple else tuple(handlers)
        encoded = self._handlers_json.get(key)
        if encoded is None:
            encoded = self._handlers_json[key] = json.dumps(list(key)).encode("utf-8")
        return _accept_record(seq, event_id, encoded, body, accepted)

    def accept(self, event_id: str, handlers: Sequence[str], body: bytes, type_name: str = "") -> int:
        """
        Record an accepted event; returns its sequence number.  Durable
        after L{sync}, unless that returns it as lost.  (C{type_name} is
        for the stream log's subjects; the spool does not keep it.)

        @raise StoreError: the store cannot take it (full, read-only, failing).
        """
        # One function, few calls: this runs for every event.
        seq = self.next_seq
        record = self._accept_bytes(seq, event_id, handlers, body, time.time())
        if self.state != "ok" and not self._room(len(record) + len(self._buffer)):
            raise self._refusal()
        try:
            if self._fd is not None and self._size + len(self._buffer) >= self.segment_size:
                self._roll()
            self.next_seq = seq + 1
            self._buffer += record
            segment = self._active if self._fd is not None else self._next_number
            self._note_accept(seq, segment, set(handlers))
            self._unsynced.append(seq)
            if self._fd is None or len(self._buffer) >= FLUSH:
                self._flush()
        except OSError as e:
            self._fail(e)
            if seq in self._lost:
                # (Refused now, not returned by sync.)
                self._lost.remove(seq)
            raise self._refusal()
        return seq

    def _refusal(self) -> StoreError:
        return StoreError(
            "{}; events already accepted are still delivered, new ones are accepted again when it can write".format(self.error),
            "store_full" if self.state == "full" else "store_read_only",
        )

    def done(self, seq: int, handler: str) -> None:
        """Record that C{handler} is finished with event C{seq} (delivered or dead-lettered)."""
        self.done_many((seq,), handler)

    def done_many(self, seqs: Sequence[int], handler: str) -> None:
        """
        Record that C{handler} is finished with events C{seqs} (a batch), in
        one record.  Never raises: a record the store cannot take is held
        and written by a later L{sync}; in memory the events are done.
        """
        if not seqs:
            return
        pairs = [(seq, handler) for seq in seqs]
        if self.state == "ok":
            self._buffer += _record({"k": "done", "seqs": list(seqs), "handler": handler})
            self._unsynced_done += pairs
            active = self._active if self._fd is not None else self._next_number
            for seq in seqs:
                home = self._home(seq)
                if home is not None and home != active:
                    self._done_in.setdefault(active, set()).add((seq, handler))
        else:
            self._held.update(pairs)
        emptied = []
        for seq in seqs:
            remaining = self._remaining.get(seq)
            if remaining is None:
                continue
            remaining.discard(handler)
            if remaining:
                continue
            del self._remaining[seq]
            segment = self._segment_of.pop(seq)
            owed_here = self._owed_in.get(segment)
            if owed_here is not None:
                owed_here.discard(seq)
                if not owed_here:
                    emptied.append(segment)
        for segment in emptied:
            if segment != self._active or self._fd is None:
                self._retire(segment)
        self._reclaim()
        if self.state == "ok" and self._fd is not None and (
            len(self._buffer) >= FLUSH or self._size + len(self._buffer) >= self.segment_size
        ):
            try:
                if self._size + len(self._buffer) >= self.segment_size:
                    self._roll()
                else:
                    self._flush()
            except OSError as e:
                self._fail(e)

    def _home(self, seq: int) -> Optional[int]:
        """The segment with C{seq}'s accept record, if it is on disk."""
        home = self._segment_of.get(seq)
        if home is None:
            home = next((n for n, accepted in self._accepted_in.items() if seq in accepted), None)
        return home

    def _needed(self, pairs: Iterable[Tuple[int, str]]) -> Set[Tuple[int, str]]:
        """Of these done pairs, those whose event's accept record is still on disk."""
        return {(seq, handler) for seq, handler in pairs if self._home(seq) is not None}

    def _retire(self, number: int) -> None:
        """
        A segment that owes nothing goes.  The done records it holds for
        events of segments that stay are written again first (and made
        durable), or those events would come back after a restart: until
        then it waits among the retiring.
        """
        if number == self._active and self._fd is not None:
            # (A full store, reclaiming the segment it writes: what is not
            # durable in it is for events that are all done.)
            self._close_segment()
            self._buffer = bytearray()
            self._dirty = False
            self._held.update(self._needed(p for p in self._unsynced_done if self._home(p[0]) != number))
            del self._unsynced[:], self._unsynced_done[:]
        gone = self._accepted_in.get(number, set())
        carried = {
            (seq, handler) for seq, handler in self._done_in.get(number, set())
            if seq not in gone and self._home(seq) not in (None, number)
        }
        if carried:
            self._held.update(carried)
            self._retiring.add(number)
            return
        self._delete(number)

    def _delete(self, number: int) -> None:
        gone = self._accepted_in.pop(number, set())
        for seq in gone:
            self._segment_of.pop(seq, None)
            self._remaining.pop(seq, None)
        self._owed_in.pop(number, None)
        self._done_in.pop(number, None)
        self._retiring.discard(number)
        self._unlink(number)
        if self._held and gone:
            # Done pairs for events that were in it are not needed any more.
            self._held = {pair for pair in self._held if pair[0] not in gone}

    def _reclaim(self) -> None:
        """A store that cannot be written reclaims the segment it writes as soon as that owes nothing."""
        if self.state != "ok" and self._fd is not None and not self._owed_in.get(self._active):
            self._retire(self._active)

    def _unlink(self, number: int) -> None:
        try:
            os.unlink(self._segment_path(number))
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.error("spool {path}: cannot delete a segment that owes nothing: {error}", path=self._segment_path(number), error=e)

    def sync(self) -> List[int]:
        """
        Make everything written so far durable, and write the done records
        held while the store could not.  Returns the sequence numbers
        accepted since the last sync that the store could not keep: they
        are forgotten, and must be refused, never acknowledged.
        """
        if self._held and self._room(len(self._held) * 24):
            by_handler: Dict[str, List[int]] = {}
            for seq, handler in sorted(self._held):
                by_handler.setdefault(handler, []).append(seq)
            for handler, seqs in sorted(by_handler.items()):
                self._buffer += _record({"k": "done", "seqs": seqs, "handler": handler})
                self._unsynced_done += [(seq, handler) for seq in seqs]
            written, self._held = self._held, set()
            target = self._active if self._fd is not None else self._next_number
            for seq, handler in written:
                home = self._home(seq)
                if home is not None and home != target:
                    self._done_in.setdefault(target, set()).add((seq, handler))
        if self._buffer or self._dirty or (self.state != "ok" and not self._held and self._room(0)):
            try:
                self._sync_point()
            except OSError as e:
                self._fail(e)
        if not self._held:
            for number in sorted(self._retiring):
                self._delete(number)
            if self.state != "ok" and self._fd is not None:
                self.log.info("spool {path}: writable again ({error} is over); accepting events", path=self.directory, error=self.error)
                self.state, self.error = "ok", None
        lost, self._lost = self._lost, []
        return lost

    def settle(self, callback: Callable[[List[int]], None]) -> None:
        """L{sync}, then C{callback} with what it lost (the stream log's interface; the spool settles at once)."""
        callback(self.sync())

    def segments(self) -> List[int]:
        """The segment numbers on disk (for tests and monitoring)."""
        return [n for n, _ in segment_paths(self.directory)]

    def close(self) -> None:
        self.sync()
        self._close_segment()
