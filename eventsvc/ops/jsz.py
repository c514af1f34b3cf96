"""
JetStream as the monitor shows it: nats-server 2.9's /jsz (C{JSInfo},
C{AccountDetail}, C{StreamDetail} with its query flags), the C{jetstream}
object of /varz, the Prometheus series per stream and per consumer, and
what /healthz says of a store that cannot write.

Everything is read from the running engine when a page is asked for
(C{engine.streams}, each stream's C{store.state()} and C{info()}, and
each consumer's C{info()}); nothing here adds work to the message path, and nothing here
changes a stream.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

from eventsvc.jetstream.store import StoreState
from eventsvc.jetstream.wire import now_ns, rfc3339 as rfc3339_ns

#: The one account there is (nats-server's global account).
ACCOUNT = "$G"

#: nats-server writes an account without JetStream limits of its own as
#: reserving uint64(-1) (its limits are -1, cast); /jsz readers expect it.
UNLIMITED_RESERVATION = 2**64 - 1

#: How many streams and consumers /jsz describes per reactor turn (some
#: 0.1 ms each in detail): past this, a slice of streams per turn.
DETAILS_PER_TURN = 100

#: A store's C{health} when it writes.
STORE_OK = "ok"


def engine_of(service: Any) -> Any:
    """The service's JetStream engine, or None when C{[jetstream]} is not configured."""
    return getattr(service, "jetstream", None)


def _path(value: Any) -> str:
    """A store_dir as text (a FilePath, a str, or None: memory only)."""
    if value is None:
        return ""
    return str(getattr(value, "path", value))


def config_json(engine: Any) -> Dict[str, Any]:
    """nats-server's C{JetStreamConfig}: the limits of both stores, where they live, the domain."""
    s = engine.settings
    out: Dict[str, Any] = {"max_memory": int(s.max_memory_store), "max_storage": int(s.max_file_store)}
    store_dir = _path(getattr(s, "store_dir", None))
    if store_dir:
        out["store_dir"] = store_dir
    if getattr(s, "domain", None):
        out["domain"] = s.domain
    return out


def api_stats(engine: Any) -> Dict[str, int]:
    """C{$JS.API} requests answered and how many of them were errors (C{JetStreamAPIStats})."""
    stats = getattr(engine, "api_stats", None)
    if stats is not None:
        total, errors = stats() if callable(stats) else stats
    else:
        total, errors = getattr(engine, "api_total", 0), getattr(engine, "api_errors", 0)
    return {"total": int(total), "errors": int(errors)}


def streams_of(engine: Any) -> List[Any]:
    """The engine's streams, by name (nats-server lists them in map order; a stable one reads better)."""
    return [stream for _, stream in sorted(engine.streams.items())]


def consumers_of(stream: Any) -> List[Any]:
    """A stream's consumers by name, without the direct ones of mirrors and sources (nats-server's getPublicConsumers)."""
    return sorted(_public(stream), key=lambda consumer: consumer.name)


def _public(stream: Any) -> List[Any]:
    public = getattr(stream, "public_consumers", None)
    return list(public()) if public is not None else list(stream.consumers.values())


def _storage(stream: Any) -> str:
    return str(stream.config.get("storage", "file"))


def usage(engine: Any, states: Dict[str, StoreState]) -> Tuple[int, int]:
    """(memory, storage): the bytes the memory and the file streams hold, as nats-server counts its usage."""
    memory = storage = 0
    for stream in streams_of(engine):
        size = states[stream.name].bytes
        if _storage(stream) == "memory":
            memory += size
        else:
            storage += size
    return memory, storage


def stats_json(engine: Any, memory: int, storage: int, reserved: int = 0, accounts: int = 1) -> Dict[str, Any]:
    """nats-server's C{JetStreamStats}."""
    return {
        "memory": memory,
        "storage": storage,
        "reserved_memory": reserved,
        "reserved_storage": reserved,
        "accounts": accounts,
        # (replicated assets: none on one node)
        "ha_assets": 0,
        "api": api_stats(engine),
    }


def varz_jetstream(service: Any) -> Dict[str, Any]:
    """/varz's C{jetstream}: C{{}} when off, as nats-server; else its config and stats."""
    engine = engine_of(service)
    if engine is None:
        return {}
    states = {stream.name: stream.store.state() for stream in streams_of(engine)}
    memory, storage = usage(engine, states)
    return {"config": config_json(engine), "stats": stats_json(engine, memory, storage)}


class JszOptions:
    """/jsz's query, read and checked as nats-server's HandleJsz reads it."""

    def __init__(self, args: Dict[bytes, List[bytes]]) -> None:
        """@raise ValueError: a flag or a number nats-server would refuse, with its message."""
        from eventsvc.ops.monitor import arg, arg_bool, arg_int

        self.accounts = arg_bool(args, "accounts")
        self.streams = arg_bool(args, "streams")
        self.consumers = arg_bool(args, "consumers")
        self.config = arg_bool(args, "config")
        self.offset = arg_int(args, "offset")
        self.limit = arg_int(args, "limit") or 1024
        self.leader_only = arg_bool(args, "leader-only")
        self.account = arg(args, "acc")
        # (consumers imply streams, streams imply accounts)
        self.streams = self.streams or self.consumers
        self.accounts = self.accounts or self.streams


def jsz(service: Any, server_id: str, args: Dict[bytes, List[bytes]]) -> "Dict[str, Any] | Tuple[int, str]":
    """
    nats-server's /jsz: the totals, and with C{accounts=1} the account's
    usage, C{streams=1} each stream's state, C{consumers=1} each
    consumer's info and C{config=1} their configurations; C{acc=$G} names
    the account.  Without JetStream it answers as nats-server without
    C{-js} does: C{"disabled": true} and zeros.
    """
    try:
        options = JszOptions(args)
    except ValueError as e:
        return 400, str(e)
    out: Dict[str, Any] = {"server_id": server_id, "now": rfc3339_ns(now_ns())}
    engine = engine_of(service)
    if engine is None:
        out.update(disabled=True, config={"max_memory": 0, "max_storage": 0})
        out.update(
            memory=0, storage=0, reserved_memory=0, reserved_storage=0, accounts=0, ha_assets=0, api={"total": 0, "errors": 0},
        )
        out.update(streams=0, consumers=0, messages=0, bytes=0)
        return out
    streams = streams_of(engine)
    states = {stream.name: stream.store.state() for stream in streams}
    memory, storage = usage(engine, states)
    out["config"] = config_json(engine)
    out.update(stats_json(engine, memory, storage))
    out.update(
        streams=len(streams),
        consumers=sum(len(_public(stream)) for stream in streams),
        messages=sum(state.msgs for state in states.values()),
        bytes=sum(state.bytes for state in states.values()),
    )
    # The one account: named by acc=, or listed with accounts=1 (from offset, up to limit).
    listed = options.account == ACCOUNT or (options.accounts and options.offset <= 0)
    if listed:
        detail = stats_json(engine, memory, storage, reserved=UNLIMITED_RESERVATION, accounts=0)
        account: Dict[str, Any] = dict({"name": ACCOUNT, "id": ACCOUNT}, **detail)
        if options.streams and streams:
            # (omitted when empty, as nats-server's omitempty does)
            def describe(stream: Any) -> Dict[str, Any]:
                return stream_detail(stream, server_id, options)

            details = len(streams) + (out["consumers"] if options.consumers else 0)
            if details > DETAILS_PER_TURN:
                from eventsvc.ops.monitor import Rows

                # Hundreds of streams and consumers are described a slice
                # per reactor turn, as /connz's connections: a page must
                # not stall the clients (1,000 streams with 10 consumers
                # each take 0.7 s).
                per_stream = details / len(streams)
                account["stream_detail"] = Rows(streams, describe, max(1, int(DETAILS_PER_TURN / per_stream)))
            else:
                account["stream_detail"] = [describe(stream) for stream in streams]
        out["account_details"] = [account]
    return out


def stream_detail(stream: Any, leader: str, options: JszOptions) -> Dict[str, Any]:
    """
    nats-server's C{StreamDetail} of one stream: its config and state as
    STREAM.INFO gives them (C{stream.info()}), and its consumers' info.
    """
    info = stream.info(domain=False)
    out: Dict[str, Any] = {
        "name": stream.name,
        "created": info["created"],
        # (one node: it leads every stream)
        "cluster": {"leader": leader},
    }
    if options.config:
        out["config"] = info["config"]
    out["state"] = info["state"]
    public = consumers_of(stream)
    if options.consumers and public:
        infos = []
        for consumer in public:
            consumer_info = dict(consumer.info())
            if not options.config:
                consumer_info.pop("config", None)
            infos.append(consumer_info)
        out["consumer_detail"] = infos
    # A mirror's and each source's lag and last word (ns; -1: none yet), as in STREAM.INFO.
    mirror = getattr(stream, "mirror", None)
    if mirror is not None:
        out["mirror"] = mirror.info()
    if getattr(stream, "sources", None):
        out["sources"] = stream.sources_json()
    return out


def _health(store: Any) -> str:
    """
    A store's C{health}: "ok", "full" (no space, or over quota) or
    "unavailable" (any other write failure), as the file stores say; a store
    that does not say (memory) is always "ok".
    """
    return str(getattr(store, "health", STORE_OK))


def store_trouble(service: Any) -> Optional[str]:
    """
    Why JetStream stores cannot write now (full, or failing), as one line
    naming each stream or consumer with its store's C{error}, or None when
    every one can.  A stream's refuses new messages then; a consumer's
    keeps its acks and deliveries in memory until it can write them.
    """
    engine = engine_of(service)
    if engine is None:
        return None
    troubles = []
    for stream in streams_of(engine):
        stores = [("stream " + stream.name, stream.store)]
        stores += [("consumer {} > {}".format(stream.name, c.name), getattr(c, "store", None)) for c in consumers_of(stream)]
        for what, store in stores:
            health = _health(store)
            if health != STORE_OK:
                error = getattr(store, "error", None)
                troubles.append("JetStream {} store {}{}".format(what, health, ": " + str(error) if error else ""))
    return "; ".join(troubles) or None


def metrics(service: Any) -> Iterable[Any]:
    """The Prometheus families of JetStream: the server's usage, then per stream and per consumer."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.samples import Sample

    engine = engine_of(service)
    if engine is None:
        return
    streams = streams_of(engine)
    states = {stream.name: stream.store.state() for stream in streams}
    memory, storage = usage(engine, states)
    yield GaugeMetricFamily("eventsvc_jetstream_memory_bytes", "Bytes the memory streams hold", value=memory)
    yield GaugeMetricFamily("eventsvc_jetstream_storage_bytes", "Bytes the file streams hold", value=storage)
    yield GaugeMetricFamily("eventsvc_jetstream_max_memory_bytes", "max_memory_store", value=int(engine.settings.max_memory_store))
    yield GaugeMetricFamily("eventsvc_jetstream_max_storage_bytes", "max_file_store", value=int(engine.settings.max_file_store))
    api = api_stats(engine)
    yield CounterMetricFamily("eventsvc_jetstream_api_requests", "$JS.API requests answered", value=api["total"])
    yield CounterMetricFamily("eventsvc_jetstream_api_errors", "$JS.API requests answered with an error", value=api["errors"])
    yield GaugeMetricFamily("eventsvc_jetstream_streams", "Streams", value=len(streams))

    per_stream = {
        key: GaugeMetricFamily("eventsvc_jetstream_stream_" + key, help_, labels=["stream", "storage"])
        for key, help_ in (
            ("messages", "Messages a stream holds"),
            ("bytes", "Bytes a stream holds (as max_bytes counts them)"),
            ("first_seq", "A stream's first sequence"),
            ("last_seq", "A stream's last sequence"),
            ("consumers", "Consumers of a stream"),
            ("writable", "Whether a stream's store takes messages (0: full, read-only or failing)"),
        )
    }
    labels = ["stream", "consumer"]
    per_consumer = {
        key: GaugeMetricFamily("eventsvc_jetstream_consumer_" + key, help_, labels=labels)
        for key, help_ in (
            ("num_pending", "Messages of the stream a consumer has still to deliver"),
            ("num_ack_pending", "Messages delivered and not yet acknowledged"),
            ("num_redelivered", "Messages delivered more than once and not yet acknowledged"),
            ("num_waiting", "Pull requests waiting"),
            ("delivered_consumer_seq", "The last consumer sequence delivered"),
            ("delivered_stream_seq", "The stream sequence of the last delivery"),
            ("ack_floor_consumer_seq", "Every consumer sequence up to this is acknowledged"),
            ("ack_floor_stream_seq", "Every stream sequence up to this is acknowledged"),
        )
    }
    # Samples made here, each series' labels shared by its families
    # (add_metric would build them again for every one: a third of a
    # scrape's time with thousands of consumers).
    stream_samples = [(family.samples, family.name) for family in per_stream.values()]
    consumer_samples = [(family.samples, family.name) for family in per_consumer.values()]
    for stream in streams:
        state = states[stream.name]
        stream_labels = {"stream": stream.name, "storage": _storage(stream)}
        values: Tuple[int, ...] = (
            state.msgs, state.bytes, state.first_seq, state.last_seq, len(_public(stream)), int(_health(stream.store) == STORE_OK),
        )
        for (samples, name), value in zip(stream_samples, values):
            samples.append(Sample(name, stream_labels, value, None))
        for consumer in consumers_of(stream):
            info = consumer.info()
            delivered, floor = info.get("delivered", {}), info.get("ack_floor", {})
            consumer_labels = {"stream": stream.name, "consumer": consumer.name}
            values = (
                info.get("num_pending", 0), info.get("num_ack_pending", 0), info.get("num_redelivered", 0), info.get("num_waiting", 0),
                delivered.get("consumer_seq", 0), delivered.get("stream_seq", 0), floor.get("consumer_seq", 0), floor.get("stream_seq", 0),
            )
            for (samples, name), value in zip(consumer_samples, values):
                samples.append(Sample(name, consumer_labels, value, None))
    yield from per_stream.values()
    yield from per_consumer.values()
