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
C{segment_size} a new one is begun; a segment that owes nothing any more is
deleted.  Nothing is ever rewritten: compaction is deleting whole segments,
so it never stops delivery, and damage is bounded to the segment it is in.

Reading survives damage.  A record whose length or CRC does not hold is
skipped by scanning forward, byte by byte, to the next offset where a whole
record holds again (a length within bounds and a CRC that matches: a random
match is a 1 in 2**32 chance), so one flipped byte costs at most the record
it is in.  The unreadable bytes are copied aside to
C{<segment>.damaged-<time>-<offset>} before anything can delete the segment,
and logged with how many bytes were skipped and where.  A torn tail (a
crash in mid-write) holds no acknowledged event and is only logged.

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
from typing import BinaryIO, Dict, Iterable, List, NamedTuple, Optional, Sequence, Set, Tuple

from twisted.logger import Logger

from eventsvc.files import sync_folder

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
#: A new segment is begun when the newest passes this size.
SEGMENT_SIZE = 4 * 1024 * 1024
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


class Spool:
    """
    The spool in C{directory}: L{open} once, then L{accept} and L{done} as
    events come and go, L{sync} before acknowledging, L{close} at the end.
    """

    log = Logger()

    def __init__(self, directory: str, segment_size: int = SEGMENT_SIZE) -> None:
        self.directory = directory
        self.segment_size = segment_size
        self.next_seq = 1
        self._file: Optional[BinaryIO] = None
        self._active = 0
        #: Bytes in the segment being written.
        self._size = 0
        self._dirty = False
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

    def _segment_path(self, number: int) -> str:
        return os.path.join(self.directory, "events-{:08d}.spool".format(number))

    def open(self) -> List[Pending]:
        """
        Read what survives from before (skipping and saving aside what is
        damaged), begin a new segment, and return what is still owed.
        Nothing read is rewritten; segments that owe nothing are deleted.
        """
        os.makedirs(self.directory, exist_ok=True)
        legacy = os.path.join(self.directory, LEGACY_NAME)
        segments = segment_paths(self.directory)
        sources = ([(LEGACY, legacy)] if os.path.exists(legacy) else []) + segments
        accepted_where: Dict[int, int] = {}
        every: List[dict] = []
        for number, path in sources:
            read = read_segment(path)
            self._report_damage(path, read)
            for record in read.records:
                if record.get("k") == "accept" and _valid_accept(record):
                    accepted_where.setdefault(record["seq"], number)
            every += read.records
        pending, self.next_seq = owed(every)
        self._begin((segments[-1][0] + 1) if segments else 1)
        kept = {accepted_where[p.seq] for p in pending}
        for p in pending:
            if accepted_where[p.seq] == LEGACY:
                # Carried over: its accept record is written here.
                self._write_accept(p.seq, p.event_id, p.handlers, p.body, p.accepted)
                self._note_accept(p.seq, self._active, set(p.handlers))
        for seq, number in accepted_where.items():
            if number in kept and number != LEGACY:
                self._accepted_in.setdefault(number, set()).add(seq)
        for p in pending:
            if accepted_where[p.seq] != LEGACY:
                self._owed_in.setdefault(accepted_where[p.seq], set()).add(p.seq)
                self._segment_of[p.seq] = accepted_where[p.seq]
                self._remaining[p.seq] = set(p.handlers)
        # Done records of events in the segments that stay are written again
        # here, so that deleting the segments that held them loses nothing.
        carried = {
            (seq, handler) for record in every if record.get("k") == "done"
            for seq, handler in done_pairs(record)
            if accepted_where.get(seq, LEGACY) in kept - {LEGACY}
        }
        self._write_done_pairs(carried)
        self.sync()
        if os.path.exists(legacy):
            # What it owed is durable in the new segment now.
            os.unlink(legacy)
        for number, _ in segments:
            if number not in kept:
                self._unlink(number)
        sync_folder(self.directory)
        if pending:
            self.log.info("spool {path}: {count} events still to deliver", path=self.directory, count=len(pending))
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
            with open(path, "rb") as f:
                f.seek(d.start)
                chunk = f.read(d.end - d.start)
            with open(aside, "wb") as f:
                f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            self.log.error(
                "spool {path}: {size} damaged bytes at bytes {start}-{end} skipped, copied to {aside}; "
                "{records} readable records kept in this file",
                path=path, size=d.end - d.start, start=d.start, end=d.end, aside=aside, records=len(read.records),
            )

    def _begin(self, number: int) -> None:
        path = self._segment_path(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
        self._file = os.fdopen(fd, "ab")
        self._file.write(SEGMENT_HEADER)  # type: ignore[attr-defined]
        self._size = len(SEGMENT_HEADER)
        self._active = number
        self._accepted_in.setdefault(number, set())
        self._owed_in.setdefault(number, set())
        self._dirty = True
        sync_folder(self.directory)

    def _note_accept(self, seq: int, segment: int, handlers: Set[str]) -> None:
        self._accepted_in.setdefault(segment, set()).add(seq)
        self._owed_in.setdefault(segment, set()).add(seq)
        self._segment_of[seq] = segment
        self._remaining[seq] = handlers

    def accept(self, event_id: str, handlers: Sequence[str], body: bytes) -> int:
        """Record an accepted event; returns its sequence number.  Durable after L{sync}."""
        # One function, few calls: this runs for every event.
        seq = self.next_seq
        self.next_seq = seq + 1
        if self._size >= self.segment_size:
            self._roll_if_full()
        key = handlers if type(handlers) is tuple else tuple(handlers)
        encoded = self._handlers_json.get(key)
        if encoded is None:
            encoded = self._handlers_json[key] = json.dumps(list(key)).encode("utf-8")
        record = _accept_record(seq, event_id, encoded, body, time.time())
        self._file.write(record)  # type: ignore[union-attr]
        self._size += len(record)
        self._dirty = True
        segment = self._active
        self._accepted_in[segment].add(seq)
        self._owed_in[segment].add(seq)
        self._segment_of[seq] = segment
        self._remaining[seq] = set(key)
        return seq

    def _write_accept(self, seq: int, event_id: str, handlers: Sequence[str], body: bytes, accepted: float) -> None:
        assert self._file is not None, "spool not open"
        record = _accept_record(seq, event_id, json.dumps(list(handlers)).encode("utf-8"), body, accepted)
        self._file.write(record)
        self._size += len(record)
        self._dirty = True

    def done(self, seq: int, handler: str) -> None:
        """Record that C{handler} is finished with event C{seq} (delivered or dead-lettered)."""
        self.done_many((seq,), handler)

    def done_many(self, seqs: Sequence[int], handler: str) -> None:
        """Record that C{handler} is finished with events C{seqs} (a batch), in one record."""
        if not seqs:
            return
        self._roll_if_full()
        self._write_done(seqs, handler)
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
                if not owed_here and segment != self._active:
                    self._delete_segment(segment)

    def _write_done(self, seqs: Sequence[int], handler: str) -> None:
        self._write({"k": "done", "seqs": list(seqs), "handler": handler})
        for seq in seqs:
            home = self._segment_of.get(seq)
            if home is None:
                home = next((n for n, accepted in self._accepted_in.items() if seq in accepted), None)
            if home is not None and home != self._active:
                self._done_in.setdefault(self._active, set()).add((seq, handler))

    def _write_done_pairs(self, pairs: Iterable[Tuple[int, str]]) -> None:
        """Done records for these pairs, one record per handler."""
        by_handler: Dict[str, List[int]] = {}
        for seq, handler in sorted(pairs):
            by_handler.setdefault(handler, []).append(seq)
        for handler, seqs in sorted(by_handler.items()):
            self._write_done(seqs, handler)

    def _roll_if_full(self) -> None:
        if self._file is not None and self._size >= self.segment_size:
            # The full segment is made durable now; the next sync covers the new one.
            self._flush_and_fsync()
            self._file.close()  # type: ignore[attr-defined]
            previous = self._active
            self._begin(previous + 1)
            if not self._owed_in.get(previous):
                self._delete_segment(previous)

    def _delete_segment(self, number: int) -> None:
        """
        A segment that owes nothing goes.  The done records it holds for
        events of segments that stay are written again first (and made
        durable), or those events would come back after a restart.
        """
        gone = self._accepted_in.pop(number, set())
        self._owed_in.pop(number, None)
        carried = sorted(
            (seq, handler) for seq, handler in self._done_in.pop(number, set())
            if seq not in gone and any(seq in seqs for seqs in self._accepted_in.values())
        )
        self._write_done_pairs(carried)
        if carried:
            self._flush_and_fsync()
        self._unlink(number)

    def _unlink(self, number: int) -> None:
        try:
            os.unlink(self._segment_path(number))
        except FileNotFoundError:
            pass

    def _write(self, record: dict) -> None:
        assert self._file is not None, "spool not open"
        data = _record(record)
        self._file.write(data)
        self._size += len(data)
        self._dirty = True

    def _flush_and_fsync(self) -> None:
        if self._file is not None:
            self._file.flush()  # type: ignore[attr-defined]
            os.fsync(self._file.fileno())  # type: ignore[attr-defined]
            self._dirty = False

    def sync(self) -> None:
        """Make everything written so far durable."""
        if self._dirty:
            self._flush_and_fsync()

    def segments(self) -> List[int]:
        """The segment numbers on disk (for tests and monitoring)."""
        return [n for n, _ in segment_paths(self.directory)]

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
