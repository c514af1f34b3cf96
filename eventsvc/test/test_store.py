"""
A full disk (or a read-only or failing one) under the event store, in
memory: a fake disk layer with a few kilobytes of room (L{SmallDisk}), a
fake clock, and the dispatcher and handlers of test_events.  What a
publisher, a target and a restart see: a refusal that says why, nothing
acknowledged lost, no event sent again because its done mark could not be
written, space reclaimed, and accepting again once there is room.
"""

from __future__ import annotations

import errno
import json
import os
import random
from collections import Counter
from typing import Optional

from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.events.spool import Disk, Spool, StoreError, read_spool
from eventsvc.test.eventsamples import payload
from eventsvc.test.test_events import RecordingTarget, Setup


class SmallDisk(Disk):
    """
    A disk of C{capacity} bytes for the spool's folder (the segments in it
    count), which writes what fits and then fails with ENOSPC, as a real
    one does; or, with C{error} set, fails every write (or only fsync, with
    C{fsync_only}) with that errno.
    """

    def __init__(self, directory: str, capacity: int = 1 << 30) -> None:
        self.directory = directory
        self.capacity = capacity
        self.error: Optional[int] = None
        self.fsync_only = False

    def used(self) -> int:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return 0
        return sum(os.path.getsize(os.path.join(self.directory, n)) for n in names if n.endswith(".spool"))

    def _raise(self, code: int) -> None:
        raise OSError(code, os.strerror(code))

    def create(self, path: str) -> int:
        if self.error is not None and not self.fsync_only:
            self._raise(self.error)
        return super().create(path)

    def write(self, fd: int, data: bytes) -> None:
        if self.error is not None and not self.fsync_only:
            self._raise(self.error)
        room = self.capacity - self.used()
        if len(data) > room:
            os.write(fd, data[:max(room, 0)])
            self._raise(errno.ENOSPC)
        super().write(fd, data)

    def fsync(self, fd: int) -> None:
        if self.error is not None:
            self._raise(self.error)
        super().fsync(fd)

    def space(self, directory: str) -> "tuple[int, int]":
        return max(self.capacity - self.used(), 0), self.capacity


BODY = b'{"pad": "' + b"x" * 400 + b'"}'


class SpoolOnAFullDisk(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.disk = SmallDisk(self.path)
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) for e in self.logged)

    def fill(self, spool: Spool, handlers=("feed",)) -> "tuple[list, StoreError]":
        """Accept (syncing after each) until the store refuses: the kept sequence numbers and the refusal."""
        kept = []
        for i in range(10000):
            try:
                seq = spool.accept("e-%d" % i, handlers, BODY)
            except StoreError as e:
                return kept, e
            if spool.sync() == []:
                kept.append(seq)
        self.fail("never full")

    def reopened(self) -> dict:
        return {p.seq: sorted(p.handlers) for p in Spool(self.path).open()}

    def test_refused_with_why_and_nothing_kept_is_lost(self) -> None:
        self.disk.capacity = 20000
        spool = Spool(self.path, disk=self.disk)
        spool.open()
        kept, refusal = self.fill(spool)
        self.assertGreater(len(kept), 30)
        self.assertEqual(refusal.reason, "store_full")
        self.assertTrue(str(refusal).startswith("store full: no space left on device in %s; " % self.path), str(refusal))
        self.assertEqual((spool.state, spool.error), ("full", "store full: no space left on device in %s" % self.path))
        # Every further publish is refused at once, without touching the disk.
        self.assertRaises(StoreError, spool.accept, "late", ["feed"], BODY)
        spool.close()
        # What was kept is owed after a restart; the refused one is not; and
        # the record cut short by ENOSPC is not left in the segment.
        self.assertEqual(self.reopened(), {seq: ["feed"] for seq in kept})
        _, _, damage = read_spool(self.path)
        self.assertEqual(damage, [])
        self.assertIn("store full: no space left on device in %s; refusing new events" % self.path, self.log_text())

    def test_accepted_since_the_last_sync_is_lost_not_acknowledged(self) -> None:
        """Group commit: the events of a turn whose sync fails are returned as lost, and forgotten."""
        spool = Spool(self.path, disk=self.disk)
        spool.open()
        first = spool.accept("first", ["feed"], BODY)
        self.assertEqual(spool.sync(), [])
        turn = [spool.accept("t-%d" % i, ["feed"], BODY) for i in range(3)]
        self.disk.error, self.disk.fsync_only = errno.EIO, True
        self.assertEqual(spool.sync(), turn)
        self.assertEqual((spool.state, spool.error), ("read-only", "store read-only: input/output error in %s" % self.path))
        self.assertEqual(spool.sync(), [])
        spool.close()
        self.assertEqual(self.reopened(), {first: ["feed"]})

    def test_done_marks_held_space_reclaimed_and_accepting_resumes(self) -> None:
        """
        On a full disk the events held are delivered: their done marks wait
        in memory, the segments that owe nothing go (the one being written
        too), and the store takes events again by itself.
        """
        self.disk.capacity = 30000
        spool = Spool(self.path, segment_size=8000, disk=self.disk)
        spool.open()
        kept, _ = self.fill(spool, handlers=("feed", "cfgingest"))
        self.assertEqual(spool.state, "full")
        # One handler finishes every event: nothing can be written.
        spool.done_many(kept, "feed")
        self.assertEqual(spool.held, len(kept))
        self.assertEqual(spool.sync(), [])
        # The other finishes all but the last: every segment but the last's goes.
        spool.done_many(kept[:-1], "cfgingest")
        spool.sync()
        self.assertEqual(spool.state, "ok")
        self.assertEqual(spool.held, 0)
        self.assertEqual(len(spool.segments()), 2, spool.segments())
        self.assertIn("writable again", self.log_text())
        new = spool.accept("after", ["feed"], BODY)
        self.assertEqual(spool.sync(), [])
        spool.close()
        # After a restart: the last event for cfgingest alone, and the new one.
        self.assertEqual(self.reopened(), {kept[-1]: ["cfgingest"], new: ["feed"]})

    def test_one_segment_filling_the_disk_is_reclaimed(self) -> None:
        """The issue's case: a segment larger than the disk, delivered while full, goes."""
        self.disk.capacity = 20000
        spool = Spool(self.path, disk=self.disk)
        spool.open()
        kept, _ = self.fill(spool)
        self.assertEqual(len(spool.segments()), 1)
        for seq in kept:
            spool.done(seq, "feed")
        spool.sync()
        self.assertEqual(spool.state, "ok")
        self.assertLess(self.disk.used(), 100)
        self.assertEqual(spool.sync(), [])
        spool.accept("again", ["feed"], BODY)
        self.assertEqual(spool.sync(), [])
        spool.close()
        self.assertEqual([p.event_id for p in Spool(self.path).open()], ["again"])

    def test_a_small_disk_with_a_steady_flow_never_fills(self) -> None:
        """
        Segments are an eighth of a small disk: with one event always
        owed (a steady flow, delivered a step behind), segments that owe
        nothing go and the disk never fills (one 4 MiB segment would).
        """
        self.disk.capacity = 200 * 1024
        spool = Spool(self.path, disk=self.disk)
        spool.open()
        self.assertEqual(spool.segment_size, 64 * 1024)
        previous = None
        for i in range(2000):
            seq = spool.accept("e-%d" % i, ["feed"], BODY)
            if previous is not None:
                spool.done(previous, "feed")
            self.assertEqual(spool.sync(), [])
            previous = seq
        self.assertEqual(spool.state, "ok")
        self.assertLess(self.disk.used(), 3 * 64 * 1024)
        spool.close()
        self.assertEqual([p.event_id for p in Spool(self.path).open()], ["e-1999"])

    def test_read_only_and_io_errors_are_states(self) -> None:
        for code, state, reason in [
            (errno.EROFS, "read-only", "store_read_only"),
            (errno.EIO, "read-only", "store_read_only"),
            (errno.EDQUOT, "full", "store_full"),
        ]:
            path = self.mktemp()
            disk = SmallDisk(path)
            spool = Spool(path, disk=disk)
            spool.open()
            before = spool.accept("before", ["feed"], BODY)
            spool.sync()
            disk.error = code
            if code == errno.EDQUOT:
                # (A quota says nothing of statvfs: the write is the probe.)
                disk.space = lambda directory: (1 << 30, 1 << 31)  # type: ignore[method-assign]
            for attempt in range(3):
                with self.assertRaises(StoreError) as caught:
                    spool.accept("during", ["feed"], BODY * 200)
                self.assertEqual(caught.exception.reason, reason, code)
            self.assertEqual((spool.state, spool.error.split(":")[0]), (state, "store " + state))
            spool.done(before, "feed")
            self.assertEqual(spool.sync(), [])
            self.assertEqual(spool.state, state)
            disk.error = None
            spool.sync()
            self.assertEqual(spool.state, "ok", code)
            after = spool.accept("after", ["feed"], BODY)
            self.assertEqual(spool.sync(), [])
            spool.close()
            self.assertEqual([p.seq for p in Spool(path).open()], [after], code)

    def test_a_held_done_mark_survives_its_new_segment_going(self) -> None:
        """
        A done mark held while the store failed is written to the next
        segment; when that one owes nothing and goes, the mark is written
        again first, as any done record for an event of another segment.
        """
        spool = Spool(self.path, segment_size=600, disk=self.disk)
        spool.open()
        x = spool.accept("x", ["feed", "cfgingest"], BODY)
        spool.sync()
        self.disk.error = errno.EIO
        refused = spool.accept("refused", ["feed"], BODY)
        self.assertEqual(spool.sync(), [refused])
        spool.done(x, "feed")
        self.assertEqual(spool.held, 1)
        self.disk.error = None
        spool.sync()
        self.assertEqual((spool.state, spool.held), ("ok", 0))
        w = spool.accept("w", ["feed"], BODY)
        spool.sync()
        spool.done(w, "feed")
        # Past segment_size: the segment with the mark (and w, done) rolls and goes.
        spool.accept("v", ["feed"], BODY)
        spool.sync()
        spool.close()
        self.assertEqual({p.event_id: list(p.handlers) for p in Spool(self.path).open()}, {"x": ["cfgingest"], "v": ["feed"]})

    def test_opening_on_a_full_disk_serves_read_only(self) -> None:
        spool = Spool(self.path, segment_size=4000)
        spool.open()
        seqs = [spool.accept("e-%d" % i, ["feed"], BODY) for i in range(30)]
        spool.done_many(seqs[:5], "feed")
        spool.close()
        self.disk.capacity = self.disk.used()
        again = Spool(self.path, segment_size=4000, disk=self.disk)
        pending = again.open()
        self.assertEqual([p.seq for p in pending], seqs[5:])
        self.assertEqual(again.state, "full")
        self.assertIn("serving read-only: delivering the 25 events held", self.log_text())
        self.assertRaises(StoreError, again.accept, "refused", ["feed"], BODY)
        again.done_many(seqs[5:], "feed")
        again.sync()
        self.assertEqual(again.state, "ok")
        new = again.accept("new", ["feed"], BODY)
        again.close()
        self.assertEqual(self.reopened(), {new: ["feed"]})

    def test_against_a_model_with_a_disk_that_fills_and_fails(self) -> None:
        """
        Random accepts, syncs, deliveries, restarts, a disk that fills and
        empties and one that fails: after every restart every event kept
        (its sync did not return it) and not finished in memory is owed,
        with at least its handlers; and no refused event ever comes back.
        """
        rng = random.Random(26)
        seen = Counter()
        for run in range(10):
            path = self.mktemp()
            disk = SmallDisk(path, capacity=rng.choice([6000, 12000, 40000]))
            size = rng.choice([1500, 4000, 1 << 20])
            spool = Spool(path, segment_size=size, disk=disk)
            spool.open()
            model: dict = {}
            unsynced: dict = {}
            refused: set = set()
            ids: dict = {}
            for step in range(400):
                roll = rng.random()
                seen[spool.state] += 1
                if roll < 0.4:
                    handlers = rng.sample(["feed", "cfgingest"], rng.randint(1, 2))
                    try:
                        seq = spool.accept("e-%d" % step, handlers, b'{"s": "%s"}' % (b"y" * rng.randint(10, 900)))
                    except StoreError:
                        refused.add("e-%d" % step)
                        continue
                    unsynced[seq] = set(handlers)
                    ids[seq] = "e-%d" % step
                elif roll < 0.55:
                    lost = spool.sync()
                    refused.update(ids[seq] for seq in lost)
                    for seq, handlers in unsynced.items():
                        if seq not in lost:
                            model[seq] = handlers
                    unsynced = {}
                elif roll < 0.9 and model:
                    seq = rng.choice(sorted(model))
                    handler = rng.choice(sorted(model[seq]))
                    spool.done(seq, handler)
                    model[seq].discard(handler)
                    if not model[seq]:
                        del model[seq]
                elif roll < 0.95:
                    disk.error = rng.choice([None, None, errno.EIO, errno.EROFS])
                    disk.fsync_only = rng.random() < 0.5
                else:
                    lost = spool.sync()
                    refused.update(ids[seq] for seq in lost)
                    model.update((s, h) for s, h in unsynced.items() if s not in lost)
                    unsynced = {}
                    spool.close()
                    # Closed writable, with no done mark held: nothing may come back.
                    exact = spool.state == "ok" and not spool.held
                    disk.error = None
                    spool = Spool(path, segment_size=size, disk=disk)
                    owed = spool.open()
                    got = {p.seq: set(p.handlers) for p in owed}
                    for seq, handlers in model.items():
                        self.assertLessEqual(handlers, got.get(seq, set()), (run, step, seq))
                    if exact:
                        self.assertEqual(got, model, (run, step))
                        seen["exact"] += 1
                    self.assertFalse(refused & {p.event_id for p in owed}, (run, step))
                    # (Sequence numbers go on from the segments left: keyed afresh.)
                    ids = {p.seq: p.event_id for p in owed}
                    # Done marks held in memory at the restart may come back (at least once).
                    model = got
                    seen["restarts"] += 1
            spool.close()
            seen["refused"] += len(refused)
        # (The walk went through every state.)
        self.assertGreater(min(seen[k] for k in ("ok", "full", "read-only", "restarts", "refused", "exact")), 10, seen)


class DispatcherOnAFullDisk(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = self.mktemp()
        self.disk = SmallDisk(self.path, capacity=40000)

    def test_every_publish_answered_and_no_redelivery(self) -> None:
        """
        The issue's scenario in memory: a target answering 503 (held), a disk
        that fills, then the target recovers.  Every publish has an answer;
        the refused say why; every acknowledged event is delivered exactly
        once although its done mark could not be written; space comes back
        and publishing is accepted again.
        """
        target = RecordingTarget(["hold"] * 10000)
        s = Setup(self, targets={"feed": target}, spool_path=self.path, disk=self.disk, concurrency=1000)
        for i in range(200):
            s.publish("compliance_ingest", payload("compliance_ingest", "ev-%d" % i, data={"pad": "p" * 300}), reply="ack.%d" % i)
        self.assertEqual(len(s.acks), 200)
        acked = [a["event_id"] for a in s.acks if a["success"]]
        refused = [a for a in s.acks if not a["success"]]
        self.assertGreater(len(acked), 20)
        self.assertGreater(len(refused), 20)
        self.assertTrue(all(a["error"].startswith("store full: no space left on device in " + self.path) for a in refused), refused[0])
        self.assertEqual(s.dispatcher.refused_by_reason, {"store_full": len(refused)})
        self.assertEqual(s.dispatcher.store, {"kind": "file", "path": self.path, "state": "full", "error": s.spool.error})
        # Only what was acknowledged went to the target.
        self.assertEqual(target.event_ids(), acked)
        # The target recovers: every held delivery succeeds.
        for d in target.held:
            d.callback(None)
        s.clock.advance(s.dispatcher.DONE_SYNC)
        s.clock.advance(s.dispatcher.STORE_RETRY)
        self.assertEqual(Counter(target.event_ids()), Counter(acked))
        self.assertEqual(s.dispatcher.pending, 0)
        self.assertEqual(s.spool.state, "ok")
        self.assertEqual(s.dispatcher.store["state"], "ok")
        self.assertLess(self.disk.used(), 1000)
        # And it accepts again.
        target.outcomes = []
        s.acks.clear()
        s.publish("compliance_ingest", payload("compliance_ingest", "after"), reply="ack.after")
        self.assertEqual(s.acks, [{"success": True, "event_id": "after"}])
        s.dispatcher.stopService()
        self.assertEqual([p.event_id for p in Spool(self.path).open()], [])

    def test_turns_of_many_events_filling_the_disk(self) -> None:
        """Forty events a turn, the disk filling in one of them: each has one answer, and only the acknowledged are delivered."""
        target = RecordingTarget(["hold"] * 10000)
        s = Setup(self, targets={"feed": target}, spool_path=self.path, disk=self.disk, concurrency=1000)
        for turn in range(5):
            for i in range(40):
                n = turn * 40 + i
                s.publish("compliance_ingest", payload("compliance_ingest", "ev-%d" % n, data={"pad": "p" * 300}),
                          reply="ack.%d" % n, turn=False)
            s.clock.advance(0)
        self.assertEqual(sorted(a["event_id"] for a in s.acks), sorted("ev-%d" % n for n in range(200)))
        acked = [a["event_id"] for a in s.acks if a["success"]]
        self.assertTrue(0 < len(acked) < 200, len(acked))
        self.assertEqual(sorted(target.event_ids()), sorted(acked))
        self.assertEqual(s.dispatcher.accepted + s.dispatcher.refused, 200)
        s.dispatcher.stopService()
        self.assertEqual(sorted(p.event_id for p in Spool(self.path).open()), sorted(acked))

    def test_a_turn_whose_sync_fails_is_refused_not_acknowledged(self) -> None:
        target = RecordingTarget()
        s = Setup(self, targets={"cfgingest": target}, spool_path=self.path, disk=self.disk)
        self.disk.error, self.disk.fsync_only = errno.EIO, True
        for i in range(3):
            s.publish("cfgingest", payload("cfgingest", "t-%d" % i), reply="ack.%d" % i, turn=False)
        s.clock.advance(0)
        self.assertEqual([a["success"] for a in s.acks], [False] * 3)
        self.assertIn("store read-only: input/output error in", s.acks[0]["error"])
        self.assertEqual(s.dispatcher.refused_by_reason, {"store_read_only": 3})
        self.assertEqual((s.dispatcher.accepted, target.bodies), (0, []))
        # The disk mends: the next retry finds it, and publishing works again.
        self.disk.error = None
        s.clock.advance(s.dispatcher.STORE_RETRY)
        self.assertEqual(s.dispatcher.store["state"], "ok")
        s.publish("cfgingest", payload("cfgingest", "later"), reply="ack.later")
        self.assertEqual(s.acks[-1], {"success": True, "event_id": "later"})
        self.assertEqual(target.event_ids(), ["later"])

    def test_memory_store(self) -> None:
        s = Setup(self)
        self.assertEqual(s.dispatcher.store, {"kind": "memory", "path": None, "state": "ok", "error": None})

    def test_starting_on_a_full_disk_delivers_what_it_holds(self) -> None:
        hold = RecordingTarget(["hold"] * 100)
        s = Setup(self, targets={"cfgingest": hold}, spool_path=self.path)
        for i in range(20):
            s.publish("cfgingest", payload("cfgingest", "kept-%d" % i), reply="ack.%d" % i)
        s.dispatcher.stopService()
        self.disk.capacity = self.disk.used()
        target = RecordingTarget()
        s2 = Setup(self, targets={"cfgingest": target}, spool_path=self.path, disk=self.disk)
        self.assertEqual(sorted(target.event_ids()), sorted("kept-%d" % i for i in range(20)))
        s2.clock.advance(s2.dispatcher.STORE_RETRY)
        self.assertEqual(s2.spool.state, "ok")
        s2.publish("cfgingest", payload("cfgingest", "new"), reply="ack.new")
        self.assertEqual(s2.acks[-1], {"success": True, "event_id": "new"})


class DeadLettersOnAFullDisk(SynchronousTestCase):
    def test_dead_letter_that_cannot_be_written_is_kept_and_written_later(self) -> None:
        """A refused event is finished only once its dead letter is written: never lost, never sent again."""
        from eventsvc.events.handlers import DeliveryFailed

        target = RecordingTarget([DeliveryFailed("HTTP 400", retry=False)])
        s = Setup(self, targets={"cfgingest": target})
        handler = s.handlers["cfgingest"]
        real = handler.dead_letters.write
        failures = [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))] * 2

        def write(*args):
            if failures:
                raise failures.pop()
            real(*args)

        handler.dead_letters.write = write  # type: ignore[method-assign]
        s.publish("cfgingest", payload("cfgingest", "bad-1"))
        self.assertEqual((handler.dead_lettered, handler.backlog_size, s.dispatcher.pending), (0, 1, 1))
        s.clock.advance(handler.retry_max)
        self.assertEqual((handler.dead_lettered, handler.backlog_size, s.dispatcher.pending), (0, 1, 1))
        s.clock.advance(handler.retry_max)
        self.assertEqual((handler.dead_lettered, handler.backlog_size, s.dispatcher.pending), (1, 0, 0))
        with open(s.dead_path) as f:
            self.assertEqual([json.loads(line)["event_id"] for line in f], ["bad-1"])
        # Sent once: the dead letter was retried, not the delivery.
        self.assertEqual(target.event_ids(), ["bad-1"])


class UnreadableSpool(SynchronousTestCase):
    def test_one_line_not_a_traceback(self) -> None:
        """A spool that cannot even be read stops the start with one line naming data_dir (ListenError, as a port in use)."""
        from eventsvc.nats.listener import ListenError

        path = self.mktemp()
        os.makedirs(os.path.join(path, "events-00000001.spool"))
        with self.assertRaises(ListenError) as caught:
            Setup(self, spool_path=path)
        message = str(caught.exception)
        self.assertTrue(message.startswith(path + ": cannot read the spool: "), message)
        self.assertTrue(message.endswith(" ([service] data_dir)"), message)
        self.assertNotIn("\n", message)
