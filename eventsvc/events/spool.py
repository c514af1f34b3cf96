"""
The durable spool: an append-only file of accepted events and of their
deliveries.

Each record is a 4-byte length, a 4-byte CRC32 and a JSON body: C{accept}
(sequence number, event id, handlers, the event) or C{done} (sequence number,
handler).  Records are written as events arrive and made durable by
L{Spool.sync}, which the dispatcher calls once per reactor turn before it
acknowledges anything (group commit).  On open, whatever was accepted and not
done by every handler is returned for delivery, and the file is rewritten
with just that.  A torn or corrupt tail (a crash in mid-write) is cut off
with a log line.
"""

from __future__ import annotations

import json
import os
import struct
import time
import zlib
from typing import Dict, List, NamedTuple, Optional, Sequence, Set

from twisted.logger import Logger

_HEADER = struct.Struct(">II")
#: A record larger than this is taken for corruption.
MAX_RECORD = 256 * 1024 * 1024


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


def read_records(path: str, log: Optional[Logger] = None) -> "tuple[List[dict], int]":
    """The good records of a spool file, and the offset where they end."""
    records: List[dict] = []
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return records, 0
    pos = 0
    while pos < len(data):
        if pos + _HEADER.size > len(data):
            break
        size, crc = _HEADER.unpack_from(data, pos)
        body = data[pos + _HEADER.size : pos + _HEADER.size + size]
        if size > MAX_RECORD or len(body) != size or zlib.crc32(body) != crc:
            break
        try:
            records.append(json.loads(body))
        except ValueError:
            break
        pos += _HEADER.size + size
    if pos < len(data) and log is not None:
        log.warn(
            "spool {path}: corrupt or truncated tail at byte {offset} of {size} skipped",
            path=path, offset=pos, size=len(data),
        )
    return records, pos


def owed(records: Sequence[dict]) -> "tuple[List[Pending], int]":
    """
    What the records still owe: each accepted event with the handlers that
    have not finished it, in acceptance order; and the next free sequence
    number.
    """
    next_seq = 1
    accepted: Dict[int, dict] = {}
    done: Dict[int, Set[str]] = {}
    for record in records:
        seq = record.get("seq", 0)
        next_seq = max(next_seq, seq + 1)
        if record.get("k") == "accept":
            accepted[seq] = record
        elif record.get("k") == "done":
            done.setdefault(seq, set()).add(str(record.get("handler")))
    pending = []
    for seq in sorted(accepted):
        record = accepted[seq]
        remaining = [h for h in record["handlers"] if h not in done.get(seq, ())]
        if remaining:
            pending.append(Pending(seq, record["event_id"], remaining, record["event"].encode("utf-8"), record.get("t", 0.0)))
    return pending, next_seq


class Spool:
    log = Logger()

    def __init__(self, path: str) -> None:
        self.path = path
        self._file: Optional[object] = None
        self._dirty = False
        self.next_seq = 1

    def open(self) -> List[Pending]:
        """Read what survives from before, compact the file, and open it for appending."""
        records, _ = read_records(self.path, self.log)
        pending, self.next_seq = owed(records)
        # Rewrite with what is still owed, atomically.
        temporary = self.path + ".new"
        with open(temporary, "wb") as f:
            for p in pending:
                f.write(_record({
                    "k": "accept", "seq": p.seq, "event_id": p.event_id, "handlers": list(p.handlers),
                    "event": p.body.decode("utf-8"), "t": p.accepted,
                }))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, self.path)
        self._file = open(self.path, "ab")
        if pending:
            self.log.info("spool {path}: {count} events still to deliver", path=self.path, count=len(pending))
        return pending

    def accept(self, event_id: str, handlers: Sequence[str], body: bytes) -> int:
        """Record an accepted event; returns its sequence number.  Durable after L{sync}."""
        seq = self.next_seq
        self.next_seq += 1
        self._write({
            "k": "accept", "seq": seq, "event_id": event_id, "handlers": list(handlers),
            "event": body.decode("utf-8"), "t": round(time.time(), 3),
        })
        return seq

    def done(self, seq: int, handler: str) -> None:
        """Record that C{handler} is finished with event C{seq} (delivered or dead-lettered)."""
        self._write({"k": "done", "seq": seq, "handler": handler})

    def _write(self, record: dict) -> None:
        assert self._file is not None, "spool not open"
        self._file.write(_record(record))  # type: ignore[attr-defined]
        self._dirty = True

    def sync(self) -> None:
        """Make everything written so far durable."""
        if self._dirty and self._file is not None:
            self._file.flush()  # type: ignore[attr-defined]
            os.fsync(self._file.fileno())  # type: ignore[attr-defined]
            self._dirty = False

    def truncate_if_idle(self, limit: int = 4 * 1024 * 1024) -> None:
        """Nothing is owed: drop the history once it grows past C{limit} bytes."""
        if self._file is not None and self._file.tell() > limit:  # type: ignore[attr-defined]
            self.sync()
            self._file.truncate(0)  # type: ignore[attr-defined]
            self._file.seek(0)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self._file is not None:
            self.sync()
            self._file.close()  # type: ignore[attr-defined]
            self._file = None
