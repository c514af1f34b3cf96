"""
The JetStream of one server: its streams, their files under store_dir,
the account's limits and API counters, the C{$JS.API} and C{$JS.ACK.>}
subscriptions (or each consumer's own ack subscription, as nats-server's:
L{JetStreamSettings.per_consumer_acks}), and the start and stop that
restore and close it all.

It meets the broker only through the in-process API (subscribe, publish);
nothing in L{eventsvc.nats} knows of it but the INFO flag and, as in
nats-server, the leaf links' rule for JetStream's subject spaces
(L{eventsvc.nats.links.jsdomain}, whose mapping table of the domain's API
this engine subscribes).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.logger import Logger

from eventsvc.files import FileLock, Locked
from eventsvc.jetstream import api, errors, limits
from eventsvc.jetstream.limits import AccountLimits
from eventsvc.jetstream.store import StoreError
from eventsvc.jetstream.stream import Stream, check_config, check_update, decode_config, open_store
from eventsvc.nats.links.jsdomain import map_subject, mapping_table

#: The API's own subjects (nats-server's jsAllAPI, less the ">").
API_PREFIX = "$JS.API."

#: Bytes a stream without max_bytes reserves: nats-server's checkBytesLimits counts it as 1.
_UNLIMITED_RESERVATION = 1

#: The lock file in store_dir that one process holds while it runs.
LOCK_FILE = "jetstream.lock"


class JetStreamSettings(NamedTuple):
    """What [jetstream] says, resolved."""

    #: Where streams and consumers are kept (store_dir/streams/...); None: memory only, nothing kept.
    store_dir: Optional[str] = None
    #: Bytes all memory streams may hold, and all file streams (-1: no limit).
    max_memory_store: int = -1
    max_file_store: int = -1
    #: The JetStream domain ("": none).
    domain: str = ""
    #: Seconds between file store syncs; 0: sync every write ("always").
    sync_interval: float = 120.0
    #: The account's limits ([jetstream] max_streams...).
    limits: AccountLimits = AccountLimits()
    #: Whether each consumer subscribes its own ack subject
    #: (C{$JS.ACK.<stream>.<consumer>.*.*.*.*.*}, as nats-server), so that
    #: routes, leaf links and gateways tell the other side of those only
    #: (with one C{$JS.ACK.>}, each ack to a hub crossed to every spoke to
    #: be dropped), and an ack for a consumer that is gone meets no
    #: subscriber; else one C{$JS.ACK.>} takes every ack.  Everywhere by
    #: default: since the broker keeps the plans of subjects used once by
    #: their match (L{eventsvc.nats.delivery.ONCE_PLANS}), acks interleaved
    #: over consumers cost no more than through C{$JS.ACK.>}
    #: (bench/jsacks.py).  False is kept for embedding and for the tests
    #: that hold the engine to both shapes.
    per_consumer_acks: bool = True


class JetStream:
    """
    The streams of one server.

    @ivar streams: by name.
    @ivar clock: the reactor (or a task.Clock) for every timer.
    """

    log = Logger()

    #: Whether L{start} answers clients (C{$JS.API}, C{$JS.ACK}); an engine
    #: that only keeps streams fed and read in process (the event log's
    #: own, L{eventsvc.events.log.EventsJetStream}) says False.
    answers_api = True

    def __init__(self, broker: Any, settings: JetStreamSettings, clock: Any, now: Optional[Callable[[], int]] = None) -> None:
        self.broker = broker
        self.settings = settings
        self.clock = clock
        #: The time in nanoseconds since the epoch (tests pass a fake): the
        #: time source itself, not a method around it, for the consumers and
        #: links that ask it for every message.
        self.now: Callable[[], int] = now or time.time_ns
        self.streams: Dict[str, Stream] = {}
        self.api_total = 0
        self.api_errors = 0
        #: Bytes held per storage ("memory", "file"), as the streams account them.
        self._usage: Dict[str, int] = {"memory": 0, "file": 0}
        self._subscriptions: List[Any] = []
        self._lock: Optional[FileLock] = None
        self.running = False
        #: Answers held while a store calls back a group commit's waiters
        #: (L{hold_answers}), and how deep the holds are.
        self._held: List[Tuple[str, bytes]] = []
        self._holding = 0
        #: Streams fed in process by another part of the server (the event
        #: log, L{eventsvc.events.log}), named before L{start}: their
        #: subjects are not captured from the broker (what is published there
        #: goes to that part, which stores it itself), and their file stores
        #: fsync every write whatever sync_interval says (the part answers
        #: its publishers from the durable callback).
        self.fed_in_process: Set[str] = set()
        #: Streams another part of the server owns (the event log), by name,
        #: each with the consumers it owns there: the API refuses to update,
        #: purge or delete them (L{eventsvc.jetstream.api.refuse_if_owned},
        #: L{eventsvc.jetstream.consumer_api.refuse_if_owned}); reading them,
        #: and clients' own consumers on them, stay open.
        self.owned: Dict[str, Set[str]] = {}

    # -- life -----------------------------------------------------------------

    def start(self) -> None:
        """
        Take store_dir's lock, restore the streams (then their consumers)
        and answer the API (unless L{answers_api} is False).

        @raise OSError: store_dir cannot be created or locked (L{Locked}).
        """
        if self.settings.store_dir:
            os.makedirs(os.path.join(self.settings.store_dir, "streams"), exist_ok=True)
            # Not eventsvc.lock: that is [service] data_dir's, and a store_dir
            # that is the data_dir would lock this process out by itself.
            self._lock = FileLock(os.path.join(self.settings.store_dir, LOCK_FILE))
            self._lock.acquire()
            self._restore()
        if self.answers_api:
            self._answer()
            self.log.info("JetStream on: {streams} streams ({where})", streams=len(self.streams),
                          where=self.settings.store_dir or "memory only")
        else:
            self.log.info("event log store open: {streams} streams ({where}); JetStream is off for clients "
                          "(no [jetstream] section: no $JS.API)", streams=len(self.streams),
                          where=self.settings.store_dir or "memory only")
        self.running = True
        # Mirrors and sources ask for their consumers through the API,
        # which answers from here on (a restored origin included).
        self._link_sources(restored=True)

    def _answer(self) -> None:
        """Subscribe the API, the acks (unless each consumer subscribes its own) and the domain's mapped API."""
        broker = self.broker
        if b"$JS.ACK." not in broker.used_once:
            # Each ack subject names one delivery: the broker keeps no plan for it.
            broker.used_once += (b"$JS.ACK.",)
        self._subscriptions = [broker.subscribe(pattern, self._api) for pattern in api_patterns("$JS.API.")]
        if not self.settings.per_consumer_acks:
            self._subscriptions.append(broker.subscribe("$JS.ACK.>", self._ack))
        if self.settings.domain:
            self._subscriptions.extend(
                broker.subscribe(source, self._mapped(source, to)) for source, to in domain_mappings(self.settings.domain))

    @property
    def answering(self) -> bool:
        """Whether clients' C{$JS.API} requests and acks are answered (subscribed) now."""
        return bool(self._subscriptions)

    def stop(self) -> None:
        """Stop answering, stop every stream (its store writes what it buffers) and let store_dir go."""
        self.running = False
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        self._subscriptions = []
        for stream in list(self.streams.values()):
            try:
                stream.stop()
            except Exception:
                self.log.failure("stream {stream} did not close cleanly", stream=stream.name)
        self.streams.clear()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _stream_directory(self, name: str) -> Optional[str]:
        if not self.settings.store_dir:
            return None
        return os.path.join(self.settings.store_dir, "streams", name)

    def _open(self, config: Dict[str, Any], created: int) -> Stream:
        directory = self._stream_directory(config["name"])
        msgs = os.path.join(directory, "msgs") if directory is not None and config["storage"] == "file" else None
        if config["name"] in self.fed_in_process:
            store = open_store(config, msgs, self.clock, 0.0, _small_disk_segments(msgs))
        else:
            store = open_store(config, msgs, self.clock, self.settings.sync_interval)
        return Stream(self, config, store, created, directory)

    def _restore(self) -> None:
        """Every stream under store_dir/streams, then its consumers."""
        assert self.settings.store_dir
        root = os.path.join(self.settings.store_dir, "streams")
        for name in sorted(os.listdir(root)):
            meta = os.path.join(root, name, "meta.json")
            try:
                with open(meta, "rb") as f:
                    saved = json.loads(f.read())
                config = check_config(decode_config(json.dumps(saved["config"]).encode("utf-8")))
                created = int(saved["created"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError, errors.ApiError) as e:
                self.log.error("stream {name} not restored: {meta} cannot be read ({error}); it is left as it is",
                               name=name, meta=meta, error=e)
                continue
            try:
                stream = self._open(config, created)
            except StoreError as e:
                self.log.error("stream {name} not restored: its store cannot be opened ({error})", name=name, error=e)
                continue
            self.streams[stream.name] = stream
            stream.start()
            self.restore_consumers(stream)

    def restore_consumers(self, stream: Stream) -> None:
        """
        The consumers kept under the stream's consumers/ folder, made again
        with L{eventsvc.jetstream.consumer.Consumer} (the hook J-consumers'
        part fills: until consumer.py is there, consumers are not restored
        and their folders are left untouched).
        """
        if stream.directory is None:
            return
        folder = os.path.join(stream.directory, "consumers")
        if not os.path.isdir(folder):
            return
        try:
            from eventsvc.jetstream.consumer import Consumer  # type: ignore[attr-defined]
        except ImportError:
            self.log.warn("stream {stream}: consumers are kept but cannot be restored (no consumer support in this build)",
                          stream=stream.name)
            return
        for name in sorted(os.listdir(folder)):
            meta = os.path.join(folder, name, "meta.json")
            try:
                with open(meta, "rb") as f:
                    saved = json.loads(f.read())
                config, created = saved["config"], int(saved["created"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as e:
                self.log.error("consumer {stream} > {name} not restored: {meta} cannot be read ({error})",
                               stream=stream.name, name=name, meta=meta, error=e)
                continue
            store = stream.new_consumer_store(name, config, created)
            consumer = Consumer(stream, name, config, store, created)
            stream.attach(consumer)
            consumer.start()

    # -- the API's operations ---------------------------------------------------

    def _reserved(self, storage: str, besides: str = "") -> int:
        return sum(
            s.config["max_bytes"] for s in self.streams.values()
            if s.config["storage"] == storage and s.config["max_bytes"] > 0 and s.name != besides
        )

    def _check_reservation(self, config: Dict[str, Any], besides: str = "") -> None:
        """nats-server's checkBytesLimits against the server's max_memory_store / max_file_store."""
        storage = config["storage"] or "file"
        limit = self.settings.max_memory_store if storage == "memory" else self.settings.max_file_store
        if limit < 0:
            return
        wanted = config["max_bytes"] if config["max_bytes"] > 0 else _UNLIMITED_RESERVATION
        if self._reserved(storage, besides) + wanted > limit:
            raise errors.MEMORY_RESOURCES_EXCEEDED_ERR() if storage == "memory" else errors.STORAGE_RESOURCES_EXCEEDED_ERR()

    def _check_overlap(self, config: Dict[str, Any], besides: str = "") -> None:
        """
        STREAM_SUBJECT_OVERLAP_ERR if a subject of C{config} collides with
        another stream's.  Two literal subjects collide only when equal, so
        only pairs with a wildcard are compared: linear in the subjects
        for the usual lists of literals, where comparing every pair held
        the reactor for seconds with a few thousand.
        """
        from eventsvc.jetstream.stream import subjects_collide

        literals: Set[str] = set()
        wildcards: List[str] = []
        for stream in self.streams.values():
            if stream.name == besides:
                continue
            for own in stream.config["subjects"]:
                if _has_wildcard(own):
                    wildcards.append(own)
                else:
                    literals.add(own)
        for subject in config["subjects"]:
            if _has_wildcard(subject):
                if any(subjects_collide(subject, own) for own in literals) or \
                        any(subjects_collide(subject, own) for own in wildcards):
                    raise errors.STREAM_SUBJECT_OVERLAP_ERR()
            elif subject in literals or any(subjects_collide(subject, own) for own in wildcards):
                raise errors.STREAM_SUBJECT_OVERLAP_ERR()

    def add_stream(self, raw: Dict[str, Any]) -> Stream:
        """
        STREAM.CREATE with a decoded configuration: checked, reserved,
        made, saved and started; the same configuration again is the
        stream there already.

        @raise ApiError: as nats-server refuses it.
        """
        limits.check_new_stream(self.settings.limits, raw, len(self.streams))
        self._check_reservation(raw)
        config = check_config(raw)
        self._inherit_direct(config)
        limits.check_max_bytes(self.settings.limits, config)
        if config["num_replicas"] > 1:
            raise replicas_error()
        existing = self.streams.get(config["name"])
        if existing is not None:
            if existing.config == config:
                return existing
            raise errors.STREAM_NAME_EXIST_ERR()
        self._check_reservation(config)
        self._check_overlap(config)
        self._check_sources(config)
        try:
            stream = self._open(config, self.now())
        except StoreError as e:
            self.log.error("stream {name}: its store cannot be made ({error})", name=config["name"], error=e)
            raise errors.STREAM_CREATE_ERR_F(err="error creating store for stream")
        try:
            stream.save()
        except OSError as e:
            stream.store.destroy()
            raise errors.STREAM_CREATE_ERR_F(err="error creating store for stream: {}".format(e.strerror or e))
        self.streams[stream.name] = stream
        stream.start()
        self._link_sources()
        return stream

    def update_stream(self, stream: Stream, config: Dict[str, Any]) -> None:
        """STREAM.UPDATE with a checked configuration.  @raise ApiError: refused."""
        config = dict(config)
        self._inherit_direct(config)
        limits.check_max_bytes(self.settings.limits, config)
        new = check_update(stream.config, config)
        if new["num_replicas"] > 1:
            raise replicas_error()
        self._check_reservation(new, besides=stream.name)
        self._check_overlap(new, besides=stream.name)
        self._check_sources(new)
        stream.update(new)
        self._link_sources()

    def _inherit_direct(self, config: Dict[str, Any]) -> None:
        """A mirror of a stream here answers its direct gets too when the origin allows them (nats-server's mirror_direct)."""
        mirror = config.get("mirror")
        if mirror and not mirror.get("external"):
            origin = self.streams.get(mirror["name"])
            if origin is not None:
                config["mirror_direct"] = bool(origin.config["allow_direct"])

    def _check_sources(self, config: Dict[str, Any]) -> None:
        """
        nats-server's checks of a stream's mirror and sources that need the
        other streams of this server (origins behind an external API are
        not looked up): sizes, filters, delivery prefixes against the
        origins' subjects, cycles.
        """
        from eventsvc.jetstream.stream import subjects_collide

        mirror = config.get("mirror")
        origin_subjects: List[str] = []
        if mirror and not mirror.get("external"):
            origin = self.streams.get(mirror["name"])
            if origin is not None:
                origin_subjects += origin.config["subjects"]
                if config["max_msg_size"] > 0 and origin.config["max_msg_size"] > 0 and config["max_msg_size"] < origin.config["max_msg_size"]:
                    raise errors.MIRROR_MAX_MESSAGE_SIZE_TOO_BIG_ERR()
                wanted = mirror["filter_subject"]
                if wanted and origin.config["subjects"] and not any(subjects_collide(own, wanted) for own in origin.config["subjects"]):
                    raise errors.STREAM_INVALID_CONFIG_F(err="mirror '{}' filter subject '{}' does not overlap with any origin stream subject".format(
                        mirror["name"], wanted))
        sources = config["sources"] or []
        for source in sources:
            origin = self.streams.get(source["name"]) if not source.get("external") else None
            if origin is None:
                continue
            origin_subjects += origin.config["subjects"]
            if config["max_msg_size"] > 0 and origin.config["max_msg_size"] > 0 and config["max_msg_size"] < origin.config["max_msg_size"]:
                raise errors.SOURCE_MAX_MESSAGE_SIZE_TOO_BIG_ERR()
            wanted = source["filter_subject"]
            if wanted and origin_subjects and not any(subjects_collide(own, wanted) for own in origin_subjects):
                raise errors.STREAM_INVALID_CONFIG_F(err="source '{}' filter subject '{}' does not overlap with any origin stream subject".format(
                    source["name"], wanted))
        for origin_config in ([mirror] if mirror else []) + list(sources):
            prefix = (origin_config.get("external") or {}).get("deliver") or ""
            for subject in origin_subjects if prefix else ():
                if subjects_collide(subject, "{}.{}".format(prefix, subject)):
                    raise errors.STREAM_EXTERNAL_DEL_PREFIX_OVERLAPS_ERR_F(prefix=prefix, subject=subject)
        # nats-server's walk: a source (or mirror) on this server already visited is a cycle.
        visited = set()
        todo = [config]
        while todo:
            current = todo.pop(0)
            visited.add(current["name"])
            for source in list(current["sources"] or ()) + ([current["mirror"]] if current.get("mirror") else []):
                if source.get("external"):
                    continue
                if source["name"] in visited:
                    raise errors.STREAM_INVALID_CONFIG_F(err="detected cycle")
                origin = self.streams.get(source["name"])
                if origin is not None:
                    todo.append(origin.config)

    def _link_sources(self, restored: bool = False) -> None:
        """Every stream follows those of its sources that exist (after a create, an update, a restart)."""
        for stream in list(self.streams.values()):
            if stream.config["sources"] or stream.sources or stream.config["mirror"]:
                stream.link_sources(restored)

    def delete_stream(self, stream: Stream) -> None:
        """STREAM.DELETE: the stream, its consumers and its files."""
        self.streams.pop(stream.name, None)
        stream.delete()

    def account(self, storage: str, delta: int) -> None:
        """A stream of C{storage} holds C{delta} bytes more (or fewer): kept so that a publish's check is cheap."""
        self._usage[storage] = self._usage.get(storage, 0) + delta

    def usage(self, storage: str) -> int:
        """Bytes the streams of C{storage} ("memory" or "file") hold."""
        return self._usage.get(storage, 0)

    def near_limit(self, storage: str, room: int) -> bool:
        """Whether C{storage} has less than C{room} bytes left before its limit (streams then count every message)."""
        limit = self.settings.max_memory_store if storage == "memory" else self.settings.max_file_store
        cap = limits.stream_bytes_cap(self.settings.limits, storage)
        return (limit >= 0 and self.usage(storage) + room >= limit) or (cap > 0 and self.usage(storage) + room >= cap)

    def limits_exceeded(self, storage: str) -> bool:
        """Whether the server's store for C{storage} is full (nats-server's js.limitsExceeded)."""
        limit = self.settings.max_memory_store if storage == "memory" else self.settings.max_file_store
        return limit >= 0 and self.usage(storage) >= limit

    def answer(self, reply: str, payload: bytes, headers: Optional[bytes] = None) -> None:
        """
        Publish an answer (a PubAck, an API answer, a direct get) to a
        client's reply subject.  A reply subject the broker refuses (a
        wildcard in it) gets nothing: the request was done all the same,
        and the store calling back with a PubAck must not see an error.
        """
        if headers is None:
            # As the event service's acks: a reply inbox is used once, so
            # its delivery plan is not cached (where it would push out
            # the plans of busy subjects); an invalid one is skipped.
            if self._holding:
                self._held.append((reply, payload))
            else:
                self.broker.publish_many([(reply, payload)])
            return
        try:
            self.broker.publish(reply, payload, headers=headers)
        except ValueError:
            self.log.debug("no answer to the invalid reply subject {reply!r}", reply=reply)

    def answer_many(self, answers: List[Tuple[str, bytes]]) -> None:
        """Several answers without headers (a durable group's PubAcks), in order: written out together."""
        if self._holding:
            self._held += answers
        else:
            self.broker.publish_many(answers)

    def hold_answers(self) -> None:
        """
        Hold the answers without headers (PubAcks, their refusals) until
        L{release_answers}: a store calls it around a group commit's
        waiters, so that their PubAcks go out in one write, not in one
        each (the async publish's PubAcks were a third of its time).
        """
        self._holding += 1

    def release_answers(self) -> None:
        """The end of a L{hold_answers}: what it held goes out, in order."""
        self._holding -= 1
        if not self._holding and self._held:
            held, self._held = self._held, []
            self.broker.publish_many(held)

    def count_api(self, failed: bool) -> None:
        """One API request answered (an error too, if C{failed})."""
        self.api_total += 1
        if failed:
            self.api_errors += 1

    def account_info(self) -> Dict[str, Any]:
        """The account's usage, limits and API counters (JetStreamAccountStats)."""
        for stream in self.streams.values():
            stream.account()
        consumers = sum(len(s.public_consumers()) for s in self.streams.values())
        info: Dict[str, Any] = {
            "memory": self.usage("memory"),
            "storage": self.usage("file"),
            "streams": len(self.streams),
            "consumers": consumers,
            "limits": self.settings.limits.as_json(),
        }
        if self.settings.domain:
            info["domain"] = self.settings.domain
        info["api"] = {"total": self.api_total, "errors": self.api_errors}
        return info

    # -- subscriptions ----------------------------------------------------------

    def _api(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        api.dispatch(self, subject, reply, payload, headers)

    def _mapped(self, source: str, to: str) -> Callable[[str, Optional[str], bytes, Optional[bytes]], None]:
        """
        A subscriber to C{source} that hands what it gets on as C{to}: to
        the API, or published again ($KV, $OBJ), as nats-server's account
        mapping of the domain's API does (see
        L{eventsvc.nats.links.jsdomain}, which keeps our own domain's API
        from leaving by a leaf link, as the mapping would)).
        """
        publish = self.broker.publish

        def mapped(subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
            target = map_subject(source, to, subject)
            if target.startswith(API_PREFIX):
                # Straight to the API, as the mapping's only subscriber: a
                # request subject may carry a wildcard token (a filtered
                # CONSUMER.CREATE names its filter), which no publish may.
                api.dispatch(self, target, reply, payload, headers)
            else:
                publish(target, payload, reply, headers)
        return mapped


    def _ack(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """$JS.ACK.<stream>.<consumer>.…: to that consumer (an unknown one is ignored, as nats-server)."""
        tokens = subject.split(".")
        if len(tokens) < 4:
            return
        stream = self.streams.get(tokens[2])
        consumer = stream.consumers.get(tokens[3]) if stream is not None else None
        if consumer is not None:
            try:
                consumer.ack(subject, reply, payload, tokens)
            except RecursionError:
                # "+NXT" with JSON nested past the decoder's depth: dropped, as
                # nats-server drops an ack it cannot read (no traceback per message).
                pass

def _small_disk_segments(directory: Optional[str]) -> Optional[int]:
    """
    Segments of an eighth of a disk smaller than 64 MiB (at least 64 KiB),
    for a stream fed in process: on a small disk that fills, room comes
    back a segment at a time (as the event spool did); None: the default.
    """
    if directory is None:
        return None
    folder = directory
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    total = st.f_blocks * st.f_frsize
    if not total or total >= 64 * 1024 * 1024:
        return None
    return max(total // 8, 64 * 1024)


def _has_wildcard(subject: str) -> bool:
    """Whether a token of C{subject} is C{*} or C{>}."""
    return any(token in ("*", ">") for token in subject.split("."))


def domain_mappings(domain: str) -> List[Tuple[str, str]]:
    """
    The domain's mappings (nats-server's table, L{mapping_table}) that
    something here answers: C{$JS.<domain>.API.INFO}, C{.STREAM.>} and
    C{.CONSUMER.>} (the verbs of L{api_patterns}), and C{.$KV.>} and
    C{.$OBJ.>} (a stream's subjects).  The rest stay unsubscribed so that
    their requester hears "no responders" at once: C{DIRECT.>}, which each
    stream with allow_direct answers under the domain itself, and C{META},
    C{SERVER} and C{ACCOUNT}, which are a cluster's.
    """
    served = {pattern[len(API_PREFIX):] for pattern in api_patterns(API_PREFIX)}
    out = []
    for source, to in sorted(mapping_table(domain).items()):
        if not to.startswith(API_PREFIX) or to[len(API_PREFIX):] in served:
            out.append((source, to))
    return out


def api_patterns(prefix: str) -> List[str]:
    """
    The subjects the API subscribes to: one per first token of its verbs
    (C{$JS.API.STREAM.>}, C{$JS.API.INFO}...), not C{$JS.API.>}, so that
    a direct get for a stream that has none (C{$JS.API.DIRECT.GET.NOPE})
    finds no subscriber and its requester gets "no responders" at once, as
    from later nats-servers (nats-py's suite expects it; 2.9.10 lets such a
    request time out).
    """
    patterns = set()
    for verb in api.ROUTES:
        first, _, rest = verb.partition(".")
        patterns.add(prefix + first + (".>" if rest else ""))
    return sorted(patterns)


def replicas_error() -> errors.ApiError:
    """num_replicas > 1: nats-server's error, saying where replication is to be had."""
    error = errors.STREAM_REPLICAS_NOT_SUPPORTED_ERR()
    error.description += (
        " (eventsvc keeps one copy of a stream: to replicate it, link this server as a leaf node to a "
        "nats-server JetStream cluster and create the stream there)"
    )
    return error


class JetStreamService(Service):
    """L{JetStream} as a service: started after the broker exists, stopped before the listeners close."""

    def __init__(self, jetstream: JetStream) -> None:
        self.setName("jetstream")
        self.jetstream = jetstream

    def startService(self) -> None:
        """
        Start JetStream.

        @raise ListenError: store_dir cannot be used (the line names it).
        """
        from eventsvc.nats.errors import ListenError

        where = self.jetstream.settings.store_dir
        try:
            self.jetstream.start()
        except Locked as e:
            raise ListenError("{} ([jetstream] store_dir) is in use by another eventsvc process ({}); "
                              "stop it, or give this one its own store_dir".format(where, e.holder))
        except OSError as e:
            raise ListenError("{} ([jetstream] store_dir): cannot be used: {}".format(where, e.strerror or e))
        super().startService()

    def stopService(self) -> Any:
        """Stop JetStream: every store closed, buffered writes on the disk."""
        super().stopService()
        self.jetstream.stop()
