"""
JetStream's file store (L{eventsvc.jetstream.filestore}) against the memory
store as its model: what a stream and a consumer get back after a close, a
crash (a torn last write), a flipped byte and a full or failing disk.

Files are real (a temporary folder); time is a L{task.Clock}; the disk's
writing operations go through a L{FakeDisk} that counts them, skips the
fsyncs' real cost, and can be made full or failing.
"""

from __future__ import annotations

import errno
import os
import platform
import random
import shutil
import struct
import tempfile
from typing import Dict, List, Optional, Tuple

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from eventsvc.files import Disk
from eventsvc.jetstream import filestore
from eventsvc.jetstream.filestore import FileConsumerStore, FileStore, file_message_size, parse_sync_interval
from eventsvc.jetstream.memstore import MemoryConsumerStore, MemoryStore
from eventsvc.jetstream.store import (
    EMPTY_CONSUMER_STATE,
    ConsumerState,
    LimitReached,
    StoreError,
    StoreFull,
    StoreLimits,
    StoreUnavailable,
)

HEADERS = b"NATS/1.0\r\nNats-Msg-Id: 1\r\n\r\n"
#: Hypothesis examples per state machine (PyPy's are slower to start: fewer, so the module stays fast).
EXAMPLES = 40 if platform.python_implementation() == "CPython" else 20


class FakeDisk(Disk):
    """
    The disk under a store: real files, writes and fsyncs counted (an
    fsync costs nothing: these tests are about crashes, not power loss),
    C{capacity} bytes in the store's folder (then ENOSPC after a partial
    write, as a real disk does), or every write failing with C{error}.
    """

    def __init__(self, directory: str, capacity: int = 1 << 40) -> None:
        self.directory = directory
        self.capacity = capacity
        self.error: Optional[int] = None
        self.writes = 0
        self.fsyncs = 0

    def used(self) -> int:
        total = 0
        for folder, _, names in os.walk(self.directory):
            total += sum(os.path.getsize(os.path.join(folder, n)) for n in names)
        return total

    def _raise(self, code: int) -> None:
        raise OSError(code, os.strerror(code))

    def create(self, path: str) -> int:
        if self.error is not None:
            self._raise(self.error)
        return super().create(path)

    def write(self, fd: int, data: bytes) -> None:
        self.writes += 1
        if self.error is not None:
            self._raise(self.error)
        room = self.capacity - self.used()
        if len(data) > room:
            os.write(fd, bytes(data[: max(room, 0)]))
            self._raise(errno.ENOSPC)
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if self.error is not None:
            self._raise(self.error)

    def space(self, directory: str) -> Tuple[int, int]:
        return max(self.capacity - self.used(), 0), self.capacity


def segments(path: FilePath) -> List[str]:
    return sorted(n for n in os.listdir(path.path) if n.endswith(".seg"))


def messages(store: object, last: int) -> Dict[int, Tuple[str, Optional[bytes], bytes, int]]:
    out = {}
    for seq in range(1, last + 2):
        m = store.load(seq)  # type: ignore[attr-defined]
        if m is not None:
            out[seq] = (m.subject, m.headers, m.data, m.ts)
    return out


class Base(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.path.makedirs()
        self.clock = Clock()
        self.disk = FakeDisk(self.path.path)

    def open(self, **kw: object) -> FileStore:
        kw.setdefault("clock", self.clock)
        kw.setdefault("disk", self.disk)
        store = FileStore(self.path, **kw)  # type: ignore[arg-type]
        self.addCleanup(store.close)
        return store

    def fill(self, store: FileStore, count: int, size: int = 100, subject: str = "orders.{}") -> List[int]:
        return [store.store(subject.format(i % 3), HEADERS if i % 2 else None, b"%05d" % i + b"x" * size, 1000 + i) for i in range(count)]


class FileStoreTests(Base):
    """What a stream sees of its messages, over closes and crashes."""

    def test_sizes(self) -> None:
        """max_bytes counts as nats-server's file store does (fileStoreMsgSize)."""
        self.assertEqual(file_message_size("a.b", None, b"12345"), 22 + 3 + 5 + 8)
        self.assertEqual(file_message_size("a.b", b"NATS/1.0\r\n\r\n", b"12345"), 22 + 3 + 4 + 12 + 5 + 8)
        store = self.open()
        store.store("a.b", b"NATS/1.0\r\n\r\n", b"12345", 1)
        self.assertEqual(store.state().bytes, 22 + 3 + 4 + 12 + 5 + 8)

    def test_group_commit(self) -> None:
        """A turn's messages are one write, and when_durable fires after it, never before."""
        store = self.open()
        durable: List[int] = []
        for seq in self.fill(store, 1000, size=128):
            store.when_durable(lambda seq=seq: durable.append(seq))  # type: ignore[misc]
        self.assertEqual((durable, self.disk.writes), ([], 0))
        self.assertEqual(store.load(500).data[:5], b"00499")  # type: ignore[union-attr]
        self.clock.advance(0)
        self.assertEqual(durable, list(range(1, 1001)))
        self.assertEqual(self.disk.writes, 1)
        self.assertEqual(self.disk.fsyncs, 0)

    def test_answer_sent_in_the_turn_of_the_write(self) -> None:
        """
        A PubAck written by a when_durable callback reaches the publisher at
        the end of the turn the message was stored in, after its write (and
        fsync, with sync_interval "always"), not a turn later: the store's
        group commit runs at the turn's end, before the turn's output is sent.
        """
        import socket

        from twisted.internet import tcp
        from twisted.internet.protocol import Protocol
        from twisted.internet.testing import MemoryReactorClock

        from eventsvc.nats.tcp import send_at_turn_end
        from eventsvc.test.test_tcp import run_one_turn

        class Port:
            _realPortNumber = 4222

        for sync in ("always", "2m"):
            reactor = MemoryReactorClock()
            ours, peer = socket.socketpair()
            self.addCleanup(peer.close)
            self.addCleanup(ours.close)
            peer.setblocking(False)
            transport = tcp.Server(ours, Protocol(), ("127.0.0.1", 5000), Port(), 1, reactor)
            self.assertTrue(send_at_turn_end(transport))
            disk = FakeDisk(self.path.path)
            store = self.open(clock=reactor, disk=disk, sync_interval=sync)
            seen: List[Tuple[int, int]] = []

            def ack() -> None:
                seen.append((disk.writes, disk.fsyncs))
                transport.write(b"PUBACK\r\n")

            store.store("orders.1", None, b"x", 1)
            store.when_durable(ack)
            self.assertEqual((seen, disk.writes), ([], 0))
            run_one_turn(reactor)
            try:
                got = peer.recv(100)
            except BlockingIOError:
                got = b""  # (not sent in this turn)
            self.assertEqual(got, b"PUBACK\r\n")
            self.assertEqual(seen, [(1, 1 if sync == "always" else 0)])
            # Nothing left for the next turn; only the periodic fsync's timer, if any.
            self.assertEqual([call.getTime() for call in reactor.getDelayedCalls()], [] if sync == "always" else [120.0])
            store.close()

    def test_reopen(self) -> None:
        """Everything stored, removed and purged reads back the same after a close."""
        store = self.open(segment_size=4096)
        self.fill(store, 200)
        store.remove(7)
        store.purge("orders.1", keep=5)
        store.purge(seq=20)
        before = (store.state(), messages(store, 200), store.subjects(), store.deleted())
        store.close()
        again = self.open(segment_size=4096)
        self.assertEqual((again.state(), messages(again, 200), again.subjects(), again.deleted()), before)
        self.assertEqual(again.store("x", None, b"", 5000), 201)

    def test_kill_9(self) -> None:
        """A crash keeps what was written (every acknowledged message) and loses only the buffer."""
        store = self.open()
        self.fill(store, 10)
        acknowledged: List[bool] = []
        store.when_durable(lambda: acknowledged.append(True))
        self.clock.advance(0)
        self.fill(store, 5)
        store.abandon()
        again = self.open()
        self.assertEqual(acknowledged, [True])
        self.assertEqual(again.state().last_seq, 10)
        self.assertEqual(len(messages(again, 20)), 10)

    def test_torn_tail(self) -> None:
        """A write cut short loses only the records it cut; one warning names the file."""
        store = self.open()
        self.fill(store, 10)
        self.clock.advance(0)
        self.fill(store, 10)
        self.clock.advance(0)
        store.abandon()
        name = self.path.child(segments(self.path)[-1])
        with open(name.path, "r+b") as f:
            f.truncate(name.getContent().rfind(b"00009xxx") + 10)  # in the middle of the last record
        with capturedLogs() as events:
            again = self.open()
        self.assertEqual(sorted(messages(again, 20)), list(range(1, 20)))
        warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn(name.path, warnings[0])
        self.assertIn("torn tail", warnings[0])
        # The next write goes after what was kept, in a new segment.
        self.assertEqual(again.store("x", None, b"y", 1), 20)
        self.clock.advance(0)
        again.close()
        self.assertEqual(sorted(messages(self.open(), 20)), list(range(1, 21)))

    def test_flipped_byte(self) -> None:
        """A flipped byte in a message loses that message alone."""
        store = self.open()
        self.fill(store, 30)
        store.close()
        name = self.path.child(segments(self.path)[0])
        data = bytearray(name.getContent())
        at = data.find(b"00014xxx") + 30
        data[at] ^= 0x40
        name.setContent(bytes(data))
        with capturedLogs() as events:
            again = self.open()
        self.assertEqual(sorted(messages(again, 30)), [n for n in range(1, 31) if n != 15])
        self.assertEqual(again.state().num_deleted, 1)
        warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn(name.path, warnings[0])
        self.assertIn("damaged bytes", warnings[0])

    def test_flipped_byte_after_open(self) -> None:
        """A message damaged under a running store reads as gone, with an error, not as wrong bytes."""
        store = self.open()
        self.fill(store, 3)
        self.clock.advance(0)
        name = self.path.child(segments(self.path)[0])
        data = bytearray(name.getContent())
        data[data.find(b"00001xxx") + 10] ^= 1
        name.setContent(bytes(data))
        with capturedLogs() as events:
            self.assertIsNone(store.load(2))
        self.assertIn("damaged", formatEvent(events[0]))
        self.assertEqual(store.load(3).data[:5], b"00002")  # type: ignore[union-attr]

    def test_next_after_a_damaged_message(self) -> None:
        """
        A consumer's next message after one damaged under a running store
        is the one after it, whatever its filter: the damaged one reads as
        gone, as a gap does, not as the end of the stream (a consumer that
        took it so skipped every message after it).
        """
        store = self.open()
        self.fill(store, 6)  # orders.0, orders.1, orders.2, orders.0, orders.1, orders.2
        self.clock.advance(0)
        name = self.path.child(segments(self.path)[0])
        data = bytearray(name.getContent())
        data[data.find(b"00001xxx") + 10] ^= 1
        name.setContent(bytes(data))
        with capturedLogs():
            found = [store.load_next(*case) for case in ((2, None), (2, ">"), (1, "orders.1"), (2, "orders.*"), (2, "orders.1"))]
        self.assertEqual([m.seq if m else None for m in found], [3, 3, 5, 3, 5])

    def test_next_after_a_damaged_message_among_many(self) -> None:
        """One subject with many messages (walked from the start, not by its list): the same."""
        store = self.open()
        for i in range(100):
            store.store("orders.1", None, b"%05d" % i + b"x" * 100, 1000 + i)
        self.clock.advance(0)
        name = self.path.child(segments(self.path)[0])
        data = bytearray(name.getContent())
        data[data.find(b"00079xxx") + 10] ^= 1
        name.setContent(bytes(data))
        with capturedLogs():
            found = store.load_next(80, "orders.1")
        self.assertEqual(found.seq if found else None, 81)

    def test_segments_go_from_the_front(self) -> None:
        """A segment whose every message is gone is deleted; limits keep the folder small."""
        store = self.open(segment_size=2048, limits=StoreLimits(max_msgs=20))
        self.fill(store, 500)
        self.clock.advance(0)
        self.assertLessEqual(len(segments(self.path)), 4)
        self.assertEqual(store.state().msgs, 20)
        store.close()
        again = self.open(segment_size=2048, limits=StoreLimits(max_msgs=20))
        self.assertEqual(sorted(messages(again, 500)), list(range(481, 501)))

    def test_purge_keeps_the_sequence(self) -> None:
        """After a purge of everything the sequence goes on from where it was, after a restart too."""
        store = self.open(segment_size=2048)
        self.fill(store, 100)
        self.assertEqual(store.purge(), 100)
        self.clock.advance(0)
        self.assertEqual(len(segments(self.path)), 1)
        store.close()
        again = self.open(segment_size=2048)
        self.assertEqual(again.state()[:6], (0, 0, 101, 0, 100, 1099))
        self.assertEqual(again.store("a", None, b"", 1), 101)

    def test_empty_newest_segment(self) -> None:
        """A crash right after a segment was made (empty): the sequence survives two restarts."""
        store = self.open()
        self.fill(store, 5)
        store.purge()
        store.close()
        number = int(segments(self.path)[-1][5:13]) + 1
        self.path.child("msgs-{:08d}.seg".format(number)).setContent(b"")
        again = self.open()
        self.assertEqual(again.state().last_seq, 5)
        self.clock.advance(0)
        again.abandon()
        self.assertEqual(self.open().store("a", None, b"", 1), 6)

    def test_skip(self) -> None:
        """A purge with seq on an empty stream moves the next sequence, for good."""
        store = self.open()
        store.purge(seq=50)
        store.close()
        again = self.open()
        self.assertEqual(again.store("a", None, b"", 1), 50)

    def test_deletions_outlive_their_segment(self) -> None:
        """
        A deletion written in a segment that is deleted later still holds
        for the older segment whose message it removed.
        """
        store = self.open(segment_size=1024)
        self.fill(store, 10)  # segment 1
        self.clock.advance(0)
        self.fill(store, 30)  # later segments
        store.remove(3)  # its deletion is written in the newest segment...
        self.clock.advance(0)
        newest = segments(self.path)[-1]
        self.fill(store, 20)  # ...which is left behind,
        for seq in range(11, 61):  # and emptied
            store.remove(seq)
        self.clock.advance(0)
        self.assertNotIn(newest, segments(self.path))
        store.abandon()
        again = self.open(segment_size=1024)
        self.assertEqual(sorted(messages(again, 70)), [1, 2, 4, 5, 6, 7, 8, 9, 10])

    def test_erase(self) -> None:
        """remove(erase=True) overwrites the message's bytes on disk; the rest reads on."""
        store = self.open()
        store.store("a", None, b"secret-one", 1)
        store.store("a", None, b"public", 2)
        self.clock.advance(0)
        store.store("a", None, b"secret-two", 3)
        self.assertTrue(store.remove(1, erase=True))
        self.assertTrue(store.remove(3, erase=True))
        store.close()
        content = b"".join(self.path.child(n).getContent() for n in segments(self.path))
        self.assertNotIn(b"secret", content)
        with capturedLogs() as events:
            again = self.open()
        self.assertEqual(messages(again, 3), {2: ("a", None, b"public", 2)})
        self.assertEqual([e for e in events if e["log_level"].name in ("warn", "error")], [])

    def test_load_next_on_a_busy_subject(self) -> None:
        """load_next with a subject that has many messages: as the memory store's, from every start."""
        store, model = self.open(), MemoryStore(size=file_message_size)
        for i in range(300):
            subject = "busy" if i % 5 else "rare"
            for s in (store, model):
                s.store(subject, None, b"%d" % i, i)
        for seq in range(1, 301, 7):
            store.remove(seq)
            model.remove(seq)
        for start in range(0, 303):
            for subject in ("busy", "rare"):
                self.assertEqual(store.load_next(start, subject), model.load_next(start, subject))

    def test_memory_load_next_on_a_busy_subject(self) -> None:
        """
        The memory store's load_next with a literal subject that has many
        messages (it walks on from start, not its list from the front):
        the first message on it at or after start, from every start, with
        holes at the start, in the middle and on the other subject.
        """
        model = MemoryStore()
        for i in range(400):
            model.store("busy" if i % 7 else "rare", None, b"%d" % i, i)
        for seq in list(range(1, 401, 5)) + [398, 399]:
            model.remove(seq)
        kept = {seq: model.load(seq) for seq in range(1, 401)}
        for start in range(0, 403):
            for subject in ("busy", "rare", "none"):
                expected = next(
                    (m for seq, m in sorted(kept.items()) if m is not None and seq >= start and m.subject == subject), None)
                self.assertEqual(model.load_next(start, subject), expected, (start, subject))

    def test_one_subject_among_many(self) -> None:
        """
        load_last and purge of one literal subject (a KV get, an object's
        info, a rollup, an object's delete) among thousands of subjects, on
        both stores: the same answers as a plain search over every message,
        and no walk over every subject (an object store's puts and lists
        were quadratic in its objects: 6,000 objects, a list timed out).
        """
        from eventsvc.jetstream import memstore

        real = memstore._matches
        for store in (self.open(), MemoryStore(size=file_message_size)):
            for i in range(3000):
                store.store("$O.B.M.%d" % (i % 1000), None, b"%d" % i, i)
                store.store("$O.B.C.%d" % (i % 500), None, b"c%d" % i, i)
            plain = {seq: store.load(seq) for seq in range(1, 6001)}

            def lasts(subject: str) -> Optional[int]:
                return max((seq for seq, m in plain.items() if m is not None and m.subject == subject), default=None)

            walked = []

            def counting(subject_filter: Optional[str], subject: str) -> bool:
                walked.append(subject)
                return real(subject_filter, subject)

            self.patch(filestore, "_matches", counting)
            self.patch(memstore, "_matches", counting)
            for subject in ("$O.B.M.7", "$O.B.C.499", "$O.B.M.nothing"):
                last = store.load_last(subject)
                self.assertEqual(last.seq if last is not None else None, lasts(subject), subject)
            # A rollup keeps the last; an object's delete purges its chunks (below a sequence, too).
            self.assertEqual(store.purge("$O.B.M.7", keep=1), 2)
            self.assertEqual(store.purge("$O.B.C.3", seq=2000), 2)
            self.assertEqual(store.purge("$O.B.C.4"), 6)
            self.assertEqual(walked, [])
            self.patch(filestore, "_matches", real)
            self.patch(memstore, "_matches", real)
            gone = {seq for seq, m in plain.items() if m is not None and (
                (m.subject == "$O.B.M.7" and seq != lasts("$O.B.M.7"))
                or (m.subject == "$O.B.C.3" and seq < 2000) or m.subject == "$O.B.C.4")}
            self.assertEqual(len(gone), 10)
            self.assertEqual({seq for seq in plain if store.load(seq) is None}, gone)
            # Wildcards still walk, with the same answers.
            self.assertEqual(store.load_last("$O.B.M.>").seq, 5999)  # type: ignore[union-attr]
            self.assertEqual(store.purge("$O.B.C.*", keep=10), 3000 - 8 - 10)

    def test_limits(self) -> None:
        """Limits as the memory store's: discard new refuses with nats-server's text; ages expire."""
        store = self.open(limits=StoreLimits(max_msgs=2, discard_new=True))
        store.store("a", None, b"", 1)
        store.store("a", None, b"", 2)
        self.assertRaises(LimitReached, store.store, "a", None, b"", 3)
        store.set_limits(StoreLimits(max_age=10))
        self.assertEqual(store.next_expiry(), 11)
        self.assertEqual(store.expire(11), 1)
        self.assertEqual(store.state().first_seq, 2)

    def test_max_store(self) -> None:
        """max_file_store: StoreFull, nothing stored."""
        store = self.open(max_store=100)
        store.store("a", None, b"x" * 40, 1)
        error = self.assertRaises(StoreFull, store.store, "a", None, b"x" * 40, 2)
        self.assertEqual(str(error), "insufficient resources")
        self.assertEqual(store.state().msgs, 1)

    def test_sync_always(self) -> None:
        """sync_interval "always": an fsync before when_durable fires."""
        store = self.open(sync_interval="always")
        seen: List[int] = []
        store.store("a", None, b"", 1)
        store.when_durable(lambda: seen.append(self.disk.fsyncs))
        self.clock.advance(0)
        self.assertEqual(seen, [1])

    def test_sync_interval(self) -> None:
        """A sync_interval of N seconds: acknowledged once written; fsynced within N seconds."""
        store = self.open(sync_interval=30, segment_size=2048)
        seen: List[int] = []
        store.store("a", None, b"", 1)
        store.when_durable(lambda: seen.append(self.disk.fsyncs))
        self.clock.advance(0)
        self.assertEqual(seen, [0])
        self.clock.advance(30)
        self.assertEqual(self.disk.fsyncs, 1)
        self.clock.advance(60)
        self.assertEqual(self.disk.fsyncs, 1)  # nothing new to sync
        # A segment closed full is fsynced at the next interval too, not at once.
        store.store("a", None, b"x" * 3000, 2)
        self.clock.advance(0)
        store.store("a", None, b"x" * 3000, 3)
        self.clock.advance(0)
        self.assertEqual(self.disk.fsyncs, 1)
        self.clock.advance(30)
        self.assertEqual(self.disk.fsyncs, 3)

    def test_bad_sync_interval(self) -> None:
        self.assertEqual(parse_sync_interval("always"), None)
        self.assertEqual(parse_sync_interval(2), 2.0)
        self.assertEqual(parse_sync_interval("2m"), 120.0)
        self.assertEqual(parse_sync_interval("500ms"), 0.5)
        for bad in ("sometimes", "0s", "2 days", 0, -1, True):
            self.assertRaises(ValueError, parse_sync_interval, bad)

    def test_destroy(self) -> None:
        store = self.open()
        self.fill(store, 10)
        store.destroy()
        self.assertFalse(self.path.exists())

    def test_unreadable(self) -> None:
        """A folder that cannot be read: StoreUnavailable naming it."""
        self.path.child("x").setContent(b"")
        error = self.assertRaises(StoreUnavailable, FileStore, self.path.child("x"), clock=self.clock)
        self.assertIn(self.path.child("x").path, str(error))


class FullDiskTests(Base):
    """A full or failing disk is a state: refusals, nothing acknowledged lost, back when it can."""

    def test_full(self) -> None:
        store = self.open()
        good = self.fill(store, 20)
        self.clock.advance(0)
        self.disk.capacity = self.disk.used() + 1000
        lost = self.fill(store, 20)
        results: List[object] = []
        store.when_durable(lambda: results.append("ok"), results.append)
        with capturedLogs() as events:
            self.clock.advance(0)
        self.assertEqual(len(results), 1)
        self.assertIsInstance(results[0], StoreFull)
        self.assertEqual(store.health, "full")
        self.assertEqual(len([e for e in events if e["log_level"].name == "error"]), 1)
        # Refused from now on, with a clear reason; reading goes on.
        error = self.assertRaises(StoreFull, store.store, "a", None, b"", 1)
        self.assertIn("no space left on device", str(error))
        self.assertEqual(sorted(messages(store, 60)), good)
        for seq in lost:
            self.assertIsNone(store.load(seq))
        # Still full a second later: still refused.
        self.disk.capacity = self.disk.used()
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertRaises(StoreFull, store.store, "a", None, b"", 1)
        # Room again: accepted again, with sequences after the lost ones.
        self.disk.capacity = 1 << 40
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual(store.health, "ok")
        self.assertEqual(store.store("a", None, b"new", 5), 41)
        self.clock.advance(0)
        store.abandon()
        again = self.open()
        self.assertEqual(sorted(messages(again, 60)), good + [41])

    def test_read_only(self) -> None:
        """EROFS, EIO: StoreUnavailable; what was written stays."""
        for code in (errno.EROFS, errno.EIO):
            store = self.open()
            first = store.store("a", None, b"kept", 1)
            self.clock.advance(0)
            self.disk.error = code
            store.store("a", None, b"lost", 2)
            failures: List[StoreError] = []
            store.when_durable(lambda: self.fail("acknowledged"), failures.append)
            self.clock.advance(0)
            self.assertIsInstance(failures[0], StoreUnavailable)
            self.assertRaises(StoreUnavailable, store.store, "a", None, b"", 3)
            self.disk.error = None
            self.clock.advance(filestore.RETRY_INTERVAL)
            self.assertEqual(store.health, "ok")
            store.close()
            again = self.open()
            self.assertEqual(again.load(first).data, b"kept")  # type: ignore[union-attr]
            again.destroy()

    def test_fsync_fails(self) -> None:
        """
        A periodic fsync that fails: what was written stays answered and
        readable, new messages are refused (one error line), and the retry's
        write and fsync bring the store back.
        """
        store = self.open(sync_interval=1.0)
        kept = store.store("a", None, b"kept", 1)
        durable: List[str] = []
        store.when_durable(lambda: durable.append("ok"))
        self.clock.advance(0)
        self.assertEqual(durable, ["ok"])
        self.disk.error = errno.EIO
        with capturedLogs() as events:
            self.clock.advance(1)
        self.assertEqual(store.health, "unavailable")
        errors = [formatEvent(e) for e in events if e["log_level"].name == "error"]
        self.assertEqual(len(errors), 1)
        self.assertIn("fsync failed", errors[0])
        self.assertRaises(StoreUnavailable, store.store, "a", None, b"", 2)
        self.assertEqual(store.load(kept).data, b"kept")  # type: ignore[union-attr]
        self.disk.error = None
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual(store.health, "ok")
        self.assertEqual(store.store("a", None, b"new", 3), 2)
        store.close()
        self.assertEqual(sorted(messages(self.open(), 3)), [1, 2])

    def test_deletes_free_room(self) -> None:
        """On a full disk acknowledgements (removals from the front) still delete segments."""
        store = self.open(segment_size=1024)
        self.fill(store, 40)
        self.clock.advance(0)
        self.disk.capacity = self.disk.used()
        self.fill(store, 1)
        self.clock.advance(0)
        self.assertEqual(store.health, "full")
        count = len(segments(self.path))
        for seq in range(1, 30):
            store.remove(seq)
        self.assertLess(len(segments(self.path)), count)
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual(store.health, "ok")
        store.close()
        again = self.open(segment_size=1024)
        self.assertEqual(sorted(messages(again, 45)), list(range(30, 41)))


#: A writer for L{KillTests}: stores forever, printing each acknowledged sequence.
WRITER = """
import sys
from twisted.internet.task import Clock
from eventsvc.jetstream.filestore import FileStore
clock = Clock()
store = FileStore(sys.argv[1], clock=clock, segment_size=64 * 1024)
out = sys.stdout
while True:
    for _ in range(50):
        seq = store.store("k.%d" % (store.state().last_seq % 5), None, b"%d:" % (store.state().last_seq + 1) + b"p" * 300, 1)
    store.when_durable(lambda seq=seq: (out.write("%d\\n" % seq), out.flush()))
    clock.advance(0)
"""


class KillTests(SynchronousTestCase):
    """kill -9 of a real process in the middle of its writes: every acknowledged message is there."""

    def test_kill_9(self) -> None:
        import signal
        import subprocess
        import sys
        import time

        path = os.path.abspath(self.mktemp())
        writer = subprocess.Popen([sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE)
        acknowledged = 0
        deadline = time.monotonic() + 30
        assert writer.stdout is not None
        while acknowledged < 2000 and time.monotonic() < deadline:
            line = writer.stdout.readline()
            if not line:
                break
            acknowledged = int(line)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        self.assertGreaterEqual(acknowledged, 2000, "the writer stopped early")
        store = FileStore(path, clock=Clock())
        self.addCleanup(store.close)
        self.assertGreaterEqual(store.state().last_seq, acknowledged)
        for seq in range(1, acknowledged + 1):
            message = store.load(seq)
            assert message is not None, seq
            self.assertEqual(message.data.split(b":")[0], b"%d" % seq)


class RealFullDiskTests(SynchronousTestCase):
    """The file store on a real 512 KiB tmpfs (needs root to mount it, as CI has)."""

    def test_full_tmpfs(self) -> None:
        import subprocess

        if os.geteuid() != 0:
            raise SkipTest("mounting a tmpfs needs root (CI runs these tests as root)")
        path = FilePath(os.path.abspath(self.mktemp()))
        path.makedirs()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", path.path], capture_output=True, text=True)
        if mounted.returncode:
            raise SkipTest("cannot mount a tmpfs here: " + mounted.stderr.strip())
        self.addCleanup(subprocess.run, ["umount", "-l", path.path])
        clock = Clock()
        store = FileStore(path, clock=clock, segment_size=64 * 1024)
        self.addCleanup(store.abandon)
        acknowledged: List[int] = []
        refused: List[StoreError] = []
        seq = 0
        while not refused and seq < 10000:
            for _ in range(10):
                seq = store.store("a", None, b"%08d" % seq + b"x" * 992, 1)
                store.when_durable(lambda seq=seq: acknowledged.append(seq), refused.append)  # type: ignore[misc]
            clock.advance(0)
        self.assertIsInstance(refused[0], StoreFull)
        self.assertIn("no space left on device", str(refused[0]))
        self.assertRaises(StoreFull, store.store, "a", None, b"", 1)
        self.assertGreater(len(acknowledged), 300)
        for n in acknowledged:
            self.assertEqual(store.load(n).data[:8], b"%08d" % (n - 1))  # type: ignore[union-attr]
        # Acknowledgements from the front make room; the store takes messages again.
        for n in acknowledged[:200]:
            store.remove(n)
        clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual(store.health, "ok")
        new = store.store("a", None, b"after", 2)
        clock.advance(0)
        store.close()
        again = FileStore(path, clock=clock, segment_size=64 * 1024)
        self.addCleanup(again.abandon)
        self.assertEqual(sorted(messages(again, new)), acknowledged[200:] + [new])


SUBJECTS = ["a", "b", "a.x", "a.y", "b.x"]
FILTERS = [None, ">", "a", "a.*", "*.x", "b.>", "c"]


class StoreMachine(RuleBasedStateMachine):
    """The file store does what the memory store does, over closes, crashes and torn writes."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="jsstore-")
        self.path = FilePath(self.folder)
        self.clock = Clock()
        self.disk = FakeDisk(self.folder)
        self.limits = StoreLimits()
        self.model = MemoryStore(size=file_message_size)
        self.store = self.reopen()
        self.now = 1000

    def reopen(self) -> FileStore:
        return FileStore(self.path, self.limits, clock=self.clock, segment_size=600, disk=self.disk)

    def teardown(self) -> None:
        self.store.abandon()
        shutil.rmtree(self.folder, ignore_errors=True)

    def both(self, name: str, *args: object) -> None:
        expected = getattr(self.model, name)(*args)
        self.assertEqual(getattr(self.store, name)(*args), expected, name)

    @staticmethod
    def assertEqual(a: object, b: object, what: str = "") -> None:
        assert a == b, "{}: {!r} != {!r}".format(what, a, b)

    @rule(subject=st.sampled_from(SUBJECTS), headers=st.booleans(), size=st.integers(0, 120), dt=st.integers(0, 5))
    def store_one(self, subject: str, headers: bool, size: int, dt: int) -> None:
        self.now += dt
        hdr = HEADERS if headers else None
        data = os.urandom(size)
        try:
            expected = self.model.store(subject, hdr, data, self.now)
        except LimitReached as e:
            try:
                self.store.store(subject, hdr, data, self.now)
            except LimitReached as f:
                self.assertEqual(str(f), str(e))
            else:
                raise AssertionError("the file store took what the model refused")
            return
        self.assertEqual(self.store.store(subject, hdr, data, self.now), expected, "store")

    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        last = self.model.state().last_seq
        seq = data.draw(st.integers(0, last + 1))
        erase = data.draw(st.booleans())
        self.assertEqual(self.store.remove(seq, erase), self.model.remove(seq, erase), "remove")

    @rule(subject=st.sampled_from(FILTERS), seq=st.integers(0, 60), keep=st.sampled_from([0, 0, 1, 3]))
    def purge(self, subject: Optional[str], seq: int, keep: int) -> None:
        self.both("purge", subject, seq, keep)

    @rule(
        max_msgs=st.sampled_from([-1, 5, 20]),
        max_bytes=st.sampled_from([-1, 1500]),
        max_age=st.sampled_from([0, 10]),
        per_subject=st.sampled_from([-1, 2]),
        discard_new=st.booleans(),
        per_new=st.booleans(),
    )
    def set_limits(self, max_msgs: int, max_bytes: int, max_age: int, per_subject: int, discard_new: bool, per_new: bool) -> None:
        self.limits = StoreLimits(max_msgs, max_bytes, max_age, per_subject, discard_new, per_new)
        self.model.set_limits(self.limits)
        self.store.set_limits(self.limits)

    @rule(dt=st.integers(0, 12))
    def expire(self, dt: int) -> None:
        self.now += dt
        self.both("expire", self.now)

    @rule()
    def flush(self) -> None:
        self.clock.advance(0)

    @rule()
    def close_and_reopen(self) -> None:
        self.store.close()
        self.store = self.reopen()

    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """
        kill -9 in mid-write: what was written survives; of a batch
        being written (stored here only, never acknowledged) a prefix
        survives, which the model then takes too.
        """
        self.clock.advance(0)
        names = segments(self.path)
        newest = self.path.child(names[-1]).path if names else None
        before = os.path.getsize(newest) if newest else 0
        extra = []
        if self.limits == StoreLimits() and data.draw(st.booleans()):
            for i in range(data.draw(st.integers(1, 4))):
                subject = data.draw(st.sampled_from(SUBJECTS))
                extra.append((subject, None, b"extra%d" % i, self.now))
                self.store.store(*extra[-1])
            self.clock.advance(0)
        self.store.abandon()
        if extra and newest is not None and segments(self.path)[-1] == names[-1]:
            after = os.path.getsize(newest)
            with open(newest, "r+b") as f:
                f.truncate(data.draw(st.integers(before, after)))
        self.store = self.reopen()
        for subject, hdr, body, ts in extra:
            m = self.store.load(self.model.state().last_seq + 1)
            if m is None:
                break
            self.assertEqual((m.subject, m.data), (subject, body), "torn batch")
            self.model.store(subject, hdr, body, ts)

    @rule(data=st.data(), code=st.sampled_from([errno.ENOSPC, errno.EIO]))
    def disk_fails(self, data: st.DataObject, code: int) -> None:
        """
        A write fails: the messages it held are lost and told so (errback,
        never acknowledged; those written before, when a segment was full,
        are kept and acknowledged), the deletions since are written once
        the disk is back, and nothing written before is lost.
        """
        self.clock.advance(0)
        last = self.model.state().last_seq
        for seq in data.draw(st.lists(st.integers(1, last + 1), max_size=3)):
            self.assertEqual(self.store.remove(seq), self.model.remove(seq), "remove")
        stored = []
        kept: List[int] = []
        lost: List[int] = []
        for i in range(data.draw(st.integers(0, 3))):
            try:
                stored.append(self.model.store("a.x", None, b"lost%d" % i, self.now))
            except LimitReached:
                self.assertRaises(LimitReached, self.store.store, "a.x", None, b"lost%d" % i, self.now)
                continue
            self.assertEqual(self.store.store("a.x", None, b"lost%d" % i, self.now), stored[-1], "store")
            self.store.when_durable(
                lambda seq=stored[-1]: kept.append(seq),  # type: ignore[misc]
                lambda error, seq=stored[-1]: lost.append(seq),  # type: ignore[misc]
            )
        self.disk.error = code
        self.clock.advance(0)
        self.assertEqual(sorted(kept + lost), stored, "each told once")
        for seq in lost:
            self.model.remove(seq)
        if lost:
            self.assertRaises(StoreError, self.store.store, "b", None, b"", self.now)
        self.disk.error = None
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual(self.store.health, "ok", "recovered")

    @staticmethod
    def assertRaises(kind: "type[BaseException]", f: object, *args: object) -> None:
        try:
            f(*args)  # type: ignore[operator]
        except kind:
            return
        raise AssertionError("{} not raised".format(kind.__name__))

    @invariant()
    def same(self) -> None:
        model, store = self.model, self.store
        self.assertEqual(store.state(), model.state(), "state")
        last = model.state().last_seq
        for seq in range(0, last + 2):
            self.assertEqual(store.load(seq), model.load(seq), "load {}".format(seq))
        for f in FILTERS:
            self.assertEqual(store.load_last(f), model.load_last(f), "load_last {}".format(f))
            self.assertEqual(store.subjects(f), model.subjects(f), "subjects {}".format(f))
            for start in (0, 1, last // 2, last, last + 1):
                self.assertEqual(store.load_next(start, f), model.load_next(start, f), "load_next {} {}".format(start, f))
                for lps in (False, True):
                    self.assertEqual(store.num_pending(start, f, lps), model.num_pending(start, f, lps), "num_pending")
        self.assertEqual(store.deleted(), model.deleted(), "deleted")
        self.assertEqual(store.next_expiry(), model.next_expiry(), "next_expiry")


class StoreModelTests(SynchronousTestCase):
    def test_model(self) -> None:
        """Hypothesis drives L{StoreMachine}."""
        run_state_machine_as_test(StoreMachine, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=30, deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ))


class ConsumerStoreTests(SynchronousTestCase):
    """What a consumer finds again after a close, a crash, a compaction and a failing disk."""

    def setUp(self) -> None:
        self.path = FilePath(self.mktemp())
        self.clock = Clock()
        self.disk = FakeDisk(os.path.dirname(self.path.path) or ".")

    def open(self, **kw: object) -> FileConsumerStore:
        kw.setdefault("clock", self.clock)
        kw.setdefault("disk", self.disk)
        store = FileConsumerStore(self.path, **kw)  # type: ignore[arg-type]
        self.addCleanup(store.close)
        return store

    def test_new(self) -> None:
        self.assertEqual(self.open().load(), EMPTY_CONSUMER_STATE)

    def test_deliveries_and_acks(self) -> None:
        """Written once per turn, when_durable after the write; a crash keeps what was written."""
        store = self.open()
        writes = self.disk.writes
        store.update_delivered(1, 10, 1, 100)
        store.update_delivered(2, 11, 1, 101)
        store.update_delivered(3, 12, 2, 102)
        store.update_acks(1, 10, [11])
        durable: List[bool] = []
        store.when_durable(lambda: durable.append(True))
        self.assertEqual(durable, [])
        self.clock.advance(0)
        self.assertEqual((durable, self.disk.writes - writes), ([True], 1))
        store.update_delivered(4, 13, 1, 103)  # never written
        expected = ConsumerState(3, 12, 1, 10, {12: (3, 102)}, {12: 2})
        store.abandon()
        self.assertEqual(self.open().load(), expected)

    def test_pull_round_records(self) -> None:
        """
        A fetch of 100 and its acks, as a pull consumer makes them in a
        turn each: a crash after the writes finds them all, and the log
        holds one record per turn, not one per message (a tenth of the size).
        """
        store = self.open()
        model = MemoryConsumerStore()
        start = os.path.getsize(self.path.child("consumer.log").path)
        for s in (store, model):
            for n in range(1, 101):
                s.update_delivered(n, 1000 + n, 1, 5000)
            s.update_delivered(101, 7, 3, 5000)  # a redelivery in the round
            s.update_delivered(102, 1102, 1, 5000)
        self.clock.advance(0)
        order = list(range(1, 103))
        random.Random(3).shuffle(order)
        for s in (store, model):
            for n in order:
                sseq = 7 if n == 101 else 1000 + n
                s.update_acks(0, 0, [sseq])
            s.update_acks(102, 1102, [])
        durable: List[bool] = []
        store.when_durable(lambda: durable.append(True))
        self.clock.advance(0)
        self.assertEqual(durable, [True])
        self.assertLess(os.path.getsize(self.path.child("consumer.log").path) - start, 2200)
        expected = model.load()
        self.assertEqual(expected, ConsumerState(102, 1102, 102, 1102, {}, {}))
        store.abandon()
        self.assertEqual(self.open().load(), expected)

    def test_update(self) -> None:
        store = self.open()
        store.update_delivered(1, 10, 1, 100)
        state = ConsumerState(5, 50, 5, 50, {}, {})
        store.update(state)
        store.close()
        self.assertEqual(self.open().load(), state)

    def test_compaction(self) -> None:
        """Past compact_size the log is folded into a snapshot; nothing is lost on the way."""
        store = self.open(compact_size=2000)
        model = MemoryConsumerStore()
        for n in range(1, 400):
            for s in (store, model):
                s.update_delivered(n, n + 100, 1, n)
                if n % 3 == 0:
                    s.update_acks(n - 2, n + 98, [n + 100])
            if n % 7 == 0:
                self.clock.advance(0)
        self.clock.advance(0)
        self.assertLess(os.path.getsize(self.path.child("consumer.log").path), 5000)
        store.abandon()
        self.assertEqual(self.open().load(), model.load())

    def test_stale_log(self) -> None:
        """A crash between a new snapshot and a new log: the old log is not replayed on top."""
        store = self.open(compact_size=200)
        store.update_delivered(1, 10, 1, 100)
        self.clock.advance(0)
        old = self.path.child("consumer.log").getContent()
        store.update_acks(1, 10, [10])
        for n in range(2, 20):
            store.update_delivered(n, 10 + n, 1, 100)
            store.update_acks(n, 10 + n, [10 + n])
        self.clock.advance(0)
        expected = store.load()
        store.abandon()
        self.path.child("consumer.log").setContent(old)
        self.assertEqual(self.open().load(), expected)

    def test_torn_log(self) -> None:
        """A torn last write: the state is that of a prefix of the updates."""
        store = self.open()
        model = MemoryConsumerStore()
        states = [model.load()]
        for n in range(1, 30):
            for s in (store, model):
                s.update_delivered(n, n, 1, n)
            states.append(model.load())
            for s in (store, model):
                s.update_acks(n - 1, n - 1, [n - 1])
            states.append(model.load())
            self.clock.advance(0)
        store.abandon()
        log = self.path.child("consumer.log")
        content = log.getContent()
        rng = random.Random(7)
        for _ in range(20):
            log.setContent(content[: rng.randrange(len(content))])
            with capturedLogs():
                found = FileConsumerStore(self.path, clock=self.clock, disk=self.disk)
            self.assertIn(found.load(), states)
            found.abandon()
            log.setContent(content)

    def test_flipped_byte(self) -> None:
        """A flipped byte in the log costs the update it is in; the rest is replayed, with a warning."""
        store = self.open()
        store.update_delivered(1, 10, 1, 100)
        store.update_delivered(2, 11, 1, 101)
        store.update_delivered(3, 12, 1, 102)
        self.clock.advance(0)
        store.abandon()
        log = self.path.child("consumer.log")
        data = bytearray(log.getContent())
        data[data.find(struct.pack("<QQ", 2, 11)) + 3] ^= 0x10
        log.setContent(bytes(data))
        with capturedLogs() as events:
            state = self.open().load()
        self.assertEqual(state, ConsumerState(3, 12, 0, 0, {10: (1, 100), 12: (3, 102)}, {}))
        warnings = [formatEvent(e) for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn(log.path, warnings[0])

    def test_failing_disk(self) -> None:
        """A write that fails: errback, state kept in memory, written when the disk is back."""
        store = self.open()
        store.update_delivered(1, 10, 1, 100)
        self.clock.advance(0)
        self.disk.error = errno.EIO
        store.update_acks(1, 10, [10])
        failures: List[StoreError] = []
        store.when_durable(lambda: self.fail("durable"), failures.append)
        later: List[bool] = []
        store.when_durable(lambda: later.append(True))  # (no errback: called once it is written)
        self.clock.advance(0)
        self.assertIsInstance(failures[0], StoreUnavailable)
        self.assertEqual(store.load().ack_floor_stream, 10)
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual(later, [])
        self.disk.error = None
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual(store.health, "ok")
        self.assertEqual(later, [True])
        store.abandon()
        self.assertEqual(self.open().load(), ConsumerState(1, 10, 1, 10, {}, {}))

    def test_fsync_fails(self) -> None:
        """As the message store: a failing periodic fsync refuses until the retry's snapshot holds; the state is kept."""
        store = self.open(sync_interval=1.0)
        store.update_delivered(1, 10, 1, 100)
        self.clock.advance(0)
        self.disk.error = errno.EIO
        with capturedLogs() as events:
            self.clock.advance(1)
        self.assertEqual(store.health, "unavailable")
        self.assertIn("fsync failed", [formatEvent(e) for e in events if e["log_level"].name == "error"][0])
        store.update_acks(1, 10, [10])
        failures: List[StoreError] = []
        store.when_durable(lambda: self.fail("durable"), failures.append)
        self.assertIsInstance(failures[0], StoreUnavailable)
        later: List[bool] = []
        store.when_durable(lambda: later.append(True))
        self.disk.error = None
        self.clock.advance(filestore.RETRY_INTERVAL)
        self.assertEqual((store.health, later), ("ok", [True]))
        store.abandon()
        self.assertEqual(self.open().load(), ConsumerState(1, 10, 1, 10, {}, {}))

    def test_destroy(self) -> None:
        store = self.open()
        store.update_delivered(1, 10, 1, 100)
        store.destroy()
        self.assertFalse(self.path.exists())


class ConsumerMachine(RuleBasedStateMachine):
    """The file consumer store keeps what the memory one does, over closes and crashes."""

    def __init__(self) -> None:
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="jsconsumer-")
        self.path = FilePath(self.folder).child("c")
        self.clock = Clock()
        self.disk = FakeDisk(self.folder)
        self.model = MemoryConsumerStore()
        self.store = self.reopen()
        self.cseq = 0
        self.sseq = 0

    def reopen(self) -> FileConsumerStore:
        return FileConsumerStore(self.path, clock=self.clock, compact_size=500, disk=self.disk)

    def teardown(self) -> None:
        self.store.abandon()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(count=st.integers(1, 3), gap=st.integers(1, 3))
    def deliver(self, count: int, gap: int) -> None:
        self.cseq += 1
        self.sseq += gap
        for s in (self.store, self.model):
            s.update_delivered(self.cseq, self.sseq, count, self.cseq * 10)

    @rule(counts=st.lists(st.integers(1, 2), min_size=1, max_size=6), gaps=st.lists(st.integers(1, 2), min_size=6, max_size=6))
    def deliver_round(self, counts: List[int], gaps: List[int]) -> None:
        """A pull's round: deliveries at one time (first ones kept as one record), redeliveries among them."""
        now = (self.cseq + 1) * 10
        for count, gap in zip(counts, gaps):
            self.cseq += 1
            self.sseq += gap
            for s in (self.store, self.model):
                s.update_delivered(self.cseq, self.sseq, count, now)

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        pending = sorted(self.model.load().pending)
        acked = data.draw(st.lists(st.sampled_from(pending), max_size=3)) if pending else []
        state = self.model.load()
        floor = data.draw(st.integers(state.ack_floor_stream, max(state.ack_floor_stream, self.sseq)))
        for s in (self.store, self.model):
            s.update_acks(state.ack_floor_consumer + 1, floor, acked)

    @rule()
    def reset(self) -> None:
        state = self.model.load()._replace(pending={}, redelivered={})
        for s in (self.store, self.model):
            s.update(state)

    @rule()
    def flush(self) -> None:
        self.clock.advance(0)

    @rule()
    def close_and_reopen(self) -> None:
        self.store.close()
        self.store = self.reopen()

    @rule()
    def crash(self) -> None:
        self.clock.advance(0)
        self.store.abandon()
        self.store = self.reopen()

    @invariant()
    def same(self) -> None:
        assert self.store.load() == self.model.load(), (self.store.load(), self.model.load())


class ConsumerModelTests(SynchronousTestCase):
    def test_model(self) -> None:
        """Hypothesis drives L{ConsumerMachine}."""
        run_state_machine_as_test(ConsumerMachine, settings=settings(
            max_examples=EXAMPLES, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
        ))
