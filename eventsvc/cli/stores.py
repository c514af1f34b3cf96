"""
Subcommands over what eventsvc keeps on disk: the dead letters (list them,
put them back for delivery) and the event log, spool or stream (what it
still owes).

Reading needs no running process; a replay goes through the running
service, which spools the event again for the one handler that gave up on
it, so the spool stays the only writer of the spool.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

from eventsvc.cli import wire
from eventsvc.cli.common import EX_FAIL, EX_OK, Failed, load, say
from eventsvc.events.deadletters import REPLAY_PREFIX, read_dead_letters
from eventsvc.events.spool import owed, read_spool
from eventsvc.files import write_atomic


def _when(t: float) -> str:
    if not t:
        return "at an unknown time"
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def dead_letters_list(options: argparse.Namespace) -> int:
    """
    One line per dead letter; with --json one JSON object per line and
    nothing else on standard output (no lines when there are none).
    """
    config = load(options.config)
    path = config.events.dead_letter_file
    try:
        _, records, bad = read_dead_letters(path)
    except OSError as e:
        return say("eventsvc: cannot read the dead letters in {}: {}".format(path, e.strerror or e), EX_FAIL)
    for n in bad:
        say("eventsvc: {}: line {} is not a dead letter (skipped)".format(path, n), EX_FAIL)
    found = [r for r in records if r is not None]
    if not found:
        return EX_OK if options.json else say("no dead letters in {}".format(path), EX_OK)
    for r in found:
        if options.json:
            print(json.dumps(r))
        else:
            print("{}  {}  {}  {} attempts  {}".format(
                _when(r.get("time", 0)), r.get("handler"), r.get("event_id"), r.get("attempts", "?"), r.get("reason", "")))
    return EX_OK


def dead_letters_replay(options: argparse.Namespace) -> int:
    """
    Put dead letters back for delivery, each exactly once per replay: the
    running service spools it again for its handler and acknowledges it,
    and only then is it taken out of the file (under the file's lock, so a
    dead letter written meanwhile is kept).
    """
    config = load(options.config)
    path = config.events.dead_letter_file
    if not options.all and not options.id:
        raise SystemExit(say("eventsvc: dead-letters replay needs --id ID or --all", 2))
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        if options.all:
            return say("nothing to replay: no dead letters in {}".format(path), EX_OK)
        return say("eventsvc: no dead letter in {} has event id {}".format(path, ", ".join(options.id)), EX_FAIL)
    except OSError as e:
        return say("eventsvc: {}: {}".format(path, e.strerror), EX_FAIL)
    try:
        # The service appends under this lock: nothing is written while we work.
        fcntl.flock(fd, fcntl.LOCK_EX)
        lines, records, _ = read_dead_letters(path)
        chosen = [i for i, r in enumerate(records) if r is not None and (options.all or r.get("event_id") in options.id)]
        if not chosen and options.all:
            # Nothing asked for is missing: an empty list replayed is done.
            return say("nothing to replay: no dead letters in {}".format(path), EX_OK)
        if not chosen:
            return say("eventsvc: no dead letter in {} has event id {}".format(path, ", ".join(options.id)), EX_FAIL)
        who = wire.identity(config, options)
        try:
            conn = wire.connect(who, options.timeout, "eventsvc-replay")
        except Failed as e:
            return say("eventsvc: cannot replay through {}: {}".format(who.where, e), EX_FAIL)
        replayed = set()
        failed = 0
        try:
            for i in chosen:
                record = records[i]
                body = json.dumps(record["event"]).encode("utf-8")
                ack = wire.decode_object(wire.request(conn, REPLAY_PREFIX + str(record["handler"]), body).payload, "the acknowledgement")
                if ack.get("success"):
                    replayed.add(i)
                    print("replayed {} to {}".format(record.get("event_id"), record["handler"]))
                else:
                    failed += 1
                    say("eventsvc: {} not replayed: {}".format(record.get("event_id"), ack.get("error")), EX_FAIL)
        except (Failed, OSError) as e:
            say("eventsvc: replay through {} stopped: {}".format(who.where, e), EX_FAIL)
            failed += 1
        finally:
            conn.close()
            if replayed:
                kept = [line for i, line in enumerate(lines) if i not in replayed]
                write_atomic(path, "".join(line + "\n" for line in kept).encode("utf-8"), 0o600)
    finally:
        os.close(fd)
    print("{} replayed, {} left in {}".format(len(replayed), len(lines) - len(replayed), path))
    return EX_FAIL if failed else EX_OK


def spool_stats(options: argparse.Namespace) -> int:
    """
    What the spool still owes, per handler, and how old it is.  With
    --json, standard output is one JSON object whenever the answer is one
    (a spool not made yet owes nothing); a refusal is a line on standard
    error and a non-zero exit, as for every subcommand.
    """
    config = load(options.config)
    if not config.service.enabled:
        return say("eventsvc: no event service runs here ([service] enabled = false in {}): no spool to inspect".format(options.config), EX_FAIL)
    path = config.service.data_dir
    if not path:
        return say('eventsvc: events are kept in memory only ([service] data_dir = "" in {}): no spool to inspect'.format(options.config), EX_FAIL)
    if config.events.log == "stream" and not _spool_files(path):
        return _stream_stats(config, options)
    if not os.path.exists(path):
        if options.json:
            print(json.dumps(_stats(path, 0, 0, 0, 0, {}, exists=False)))
            return EX_OK
        return say("no spool yet at {} (the service has not run with this state directory): nothing owed".format(path), EX_OK)
    try:
        records, size, damage = read_spool(path)
    except OSError as e:
        return say("eventsvc: cannot read the spool in {}: {}".format(path, e.strerror or e), EX_FAIL)
    pending, _ = owed(records)
    now = time.time()
    handlers: Dict[str, Dict[str, Any]] = {}
    for p in pending:
        for h in p.handlers:
            entry = handlers.setdefault(h, {"owed": 0, "oldest": 0.0, "oldest_event": ""})
            entry["owed"] += 1
            if p.accepted and (not entry["oldest"] or p.accepted < entry["oldest"]):
                entry["oldest"], entry["oldest_event"] = p.accepted, p.event_id
    unreadable = sum(d.end - d.start for _, d in damage)
    stats = _stats(path, size, len(records), unreadable, len(pending), handlers)
    if options.json:
        print(json.dumps(stats))
        return EX_OK
    print("spool {}: {} bytes on disk, {} records, {} events still owed".format(path, size, len(records), len(pending)))
    for where, d in damage:
        print("  {}: {} bytes at {}-{} could not be read{}".format(where, d.end - d.start, d.start, d.end, "" if d.inside else " (a torn tail)"))
    for name in sorted(handlers):
        entry = handlers[name]
        age = " (oldest {}, accepted {}, {:.0f}s ago)".format(entry["oldest_event"], _when(entry["oldest"]), now - entry["oldest"]) if entry["oldest"] else ""
        print("  {}: {} owed{}".format(name, entry["owed"], age))
    return EX_OK


def _stream_stats(config: Any, options: argparse.Namespace) -> int:
    """
    spool stats when the log is the events stream ([events] log =
    "stream"): what it owes per handler, read from its files without
    taking its lock (a running service keeps it), as the spool is read.
    """
    from eventsvc.config import events_store_dir
    from eventsvc.events.log import read_owed

    store_dir = events_store_dir(config)
    name = config.events.stream
    folder = os.path.join(store_dir, "streams", name)
    running = _running(store_dir)
    try:
        found = read_owed(store_dir, name)
    except OSError as e:
        return say("eventsvc: cannot read the events stream {} in {}: {}".format(name, folder, e.strerror or e), EX_FAIL)
    if options.json:
        stats: Dict[str, Any] = {"log": "stream", "stream": name, "path": folder, "exists": found is not None,
                                 "running_pid": running}
        if found is None:
            stats.update(messages=0, bytes=0, first_seq=0, last_seq=0, events_owed=0, handlers={})
        else:
            stats.update(messages=found.messages, bytes=found.bytes, first_seq=found.first_seq, last_seq=found.last_seq,
                         events_owed=found.events_owed, handlers=found.handlers)
        print(json.dumps(stats))
        return EX_OK
    if found is None:
        return say("no events stream yet at {} (the service has not run on the stream with this state directory): "
                   "nothing owed".format(folder), EX_OK)
    print("events stream {} in {}: {} events kept ({} bytes, sequences {}-{}), {} still owed".format(
        name, folder, found.messages, found.bytes, found.first_seq, found.last_seq, found.events_owed))
    now = time.time()
    for handler in sorted(found.handlers):
        entry = found.handlers[handler]
        age = " (oldest {}, accepted {}, {:.0f}s ago)".format(
            entry["oldest_event"], _when(entry["oldest"]), now - entry["oldest"]) if entry["oldest"] else ""
        print("  {}: {} owed{}".format(handler, entry["owed"], age))
    if running:
        print("the service is running (pid {}): these are its files as they were read; it records what its handlers "
              "finish within 0.2 s, and /eventz shows each handler's backlog live".format(running))
    return EX_OK


def _running(store_dir: str) -> Optional[int]:
    """
    The PID of a live process holding the events stream's store_dir
    (from the lock file, which holds its PID while it is held), or None;
    the lock itself is not tried, so a service starting meanwhile is
    never refused because of this reading.
    """
    from eventsvc.jetstream.engine import LOCK_FILE

    try:
        with open(os.path.join(store_dir, LOCK_FILE), "rb") as f:
            text = f.read(64).decode("ascii", "replace").strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # (a kill -9 leaves its PID behind)
    except PermissionError:
        pass
    return pid


def _spool_files(path: str) -> bool:
    """Whether a spool is in C{path} (one not carried over into the events stream yet)."""
    from eventsvc.events.spool import LEGACY_NAME, segment_paths

    return bool(segment_paths(path)) or os.path.exists(os.path.join(path, LEGACY_NAME))


def _stats(path: str, size: int, records: int, unreadable: int, events_owed: int, handlers: Dict[str, Any], exists: bool = True) -> Dict[str, Any]:
    """spool stats --json: one object, the same keys whether or not the spool exists yet."""
    return {
        "path": path, "exists": exists, "bytes": size, "records": records, "unreadable_bytes": unreadable,
        "events_owed": events_owed, "handlers": handlers,
    }
