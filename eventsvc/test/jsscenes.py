"""
The JetStream scenes every real client plays (nats-py here, nats.go in
interop/go/jsinterop.go, nats.js in interop/js/jsinterop.mjs), and what each
must report: the same plain JSON-able answer whatever the client and
whatever the server, nats-server -js or eventsvc.

Each scene creates its own stream (named from a prefix, so several clients
can play on one server) and reports only what a user of the client sees.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, Dict

SCENES = ("publish", "pull", "queue", "acks", "redelivery", "kv")

#: What each scene reports, on every client and server.
EXPECTED: Dict[str, Any] = {
    # PubAcks as [seq, duplicate]: the second "id-1" is flagged and not stored again.
    "publish": {"acks": [[1, False], [2, False], [2, True], [3, False]], "messages": 3},
    # 25 messages fetched 10 at a time, in order, each acked: nothing left pending.
    "pull": {"batches": [10, 10, 5], "in_order": True, "num_ack_pending": 0, "num_pending": 0,
             "delivered": 25, "ack_floor": 25},
    # Two members of one deliver group share 50 messages, each delivered once.
    "queue": {"received": 50, "distinct": 50, "both_served": True},
    # a is nakked (back with a delivery count of 2), b terminated (never again), c acked.
    "acks": {"first": ["a", "b", "c"], "again": [["a", 2]], "left": 0},
    # Not acked within ack_wait (1 s): delivered again, the count says 2.
    "redelivery": {"first": ["x", 1], "second": ["x", 2]},
    # Revisions, the latest value, and the watcher's view of puts and a delete.
    "kv": {"revisions": [1, 2, 3], "get": ["blue", 2], "history": 2,
           "watched": [["color", "red", "PUT"], ["color", "blue", "PUT"], ["size", "L", "PUT"], ["size", "", "DEL"]]},
}


async def play(url: str, scene: str, prefix: str) -> Any:
    """Connect to C{url} with nats-py and play C{scene} with names starting C{prefix}."""
    import nats

    nc = await nats.connect(url)
    try:
        return await _SCENES[scene](nc, prefix)
    finally:
        await nc.close()


async def _publish(nc: Any, prefix: str) -> Any:
    js = nc.jetstream()
    stream = prefix.upper() + "_PUB"
    subject = prefix + ".pub.a"
    await js.add_stream(name=stream, subjects=[prefix + ".pub.>"])
    acks = []
    for data, msg_id in ((b"one", None), (b"two", "id-1"), (b"two", "id-1"), (b"three", None)):
        ack = await js.publish(subject, data, headers={"Nats-Msg-Id": msg_id} if msg_id else None)
        assert ack.stream == stream, ack
        acks.append([ack.seq, bool(ack.duplicate)])
    info = await js.stream_info(stream)
    return {"acks": acks, "messages": info.state.messages}


async def _pull(nc: Any, prefix: str) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig

    js = nc.jetstream()
    stream = prefix.upper() + "_PULL"
    await js.add_stream(name=stream, subjects=[prefix + ".pull.>"])
    for i in range(25):
        await js.publish(prefix + ".pull.job", b"m%d" % i)
    psub = await js.pull_subscribe(prefix + ".pull.>", durable="worker", stream=stream,
                                   config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT))
    batches, seen = [], []
    for _ in range(3):
        msgs = await psub.fetch(10, timeout=5)
        batches.append(len(msgs))
        for msg in msgs:
            seen.append(msg.data)
            await msg.ack_sync()
    info = await js.consumer_info(stream, "worker")
    return {"batches": batches, "in_order": seen == [b"m%d" % i for i in range(25)],
            "num_ack_pending": info.num_ack_pending, "num_pending": info.num_pending,
            "delivered": info.delivered.stream_seq, "ack_floor": info.ack_floor.stream_seq}


async def _queue(nc: Any, prefix: str) -> Any:
    js = nc.jetstream()
    stream = prefix.upper() + "_QUEUE"
    await js.add_stream(name=stream, subjects=[prefix + ".queue.>"])
    got: Dict[str, list] = {"one": [], "two": []}
    done = asyncio.Event()

    def member(name: str) -> Callable[[Any], Awaitable[None]]:
        async def handler(msg: Any) -> None:
            got[name].append(msg.data)
            if len(got["one"]) + len(got["two"]) >= 50:
                done.set()
        return handler

    await js.subscribe(prefix + ".queue.>", queue="workers", durable="workers", stream=stream, cb=member("one"))
    await js.subscribe(prefix + ".queue.>", queue="workers", durable="workers", stream=stream, cb=member("two"))
    for i in range(50):
        await js.publish(prefix + ".queue.job", b"q%d" % i)
    try:
        await asyncio.wait_for(done.wait(), 10)
    except asyncio.TimeoutError:
        pass
    await asyncio.sleep(0.3)  # anything delivered twice would come now
    every = got["one"] + got["two"]
    return {"received": len(every), "distinct": len(set(every)), "both_served": bool(got["one"] and got["two"])}


async def _acks(nc: Any, prefix: str) -> Any:
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.api import AckPolicy, ConsumerConfig

    js = nc.jetstream()
    stream = prefix.upper() + "_ACKS"
    await js.add_stream(name=stream, subjects=[prefix + ".acks.>"])
    for word in (b"a", b"b", b"c"):
        await js.publish(prefix + ".acks.x", word)
    psub = await js.pull_subscribe(prefix + ".acks.>", durable="acker", stream=stream,
                                   config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30))
    first = await psub.fetch(3, timeout=5)
    await first[0].nak()
    await first[1].term()
    await first[2].ack_sync()
    again = await psub.fetch(3, timeout=2)
    for msg in again:
        await msg.ack_sync()
    try:
        left = len(await psub.fetch(1, timeout=1))
    except (NatsTimeout, asyncio.TimeoutError):
        left = 0
    return {"first": [m.data.decode() for m in first],
            "again": [[m.data.decode(), m.metadata.num_delivered] for m in again], "left": left}


async def _redelivery(nc: Any, prefix: str) -> Any:
    from nats.js.api import AckPolicy, ConsumerConfig

    js = nc.jetstream()
    stream = prefix.upper() + "_REDO"
    await js.add_stream(name=stream, subjects=[prefix + ".redo.>"])
    await js.publish(prefix + ".redo.x", b"x")
    psub = await js.pull_subscribe(prefix + ".redo.>", durable="slow", stream=stream,
                                   config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=1))
    (first,) = await psub.fetch(1, timeout=5)
    await asyncio.sleep(1.5)
    (second,) = await psub.fetch(1, timeout=5)
    await second.ack_sync()
    return {"first": [first.data.decode(), first.metadata.num_delivered],
            "second": [second.data.decode(), second.metadata.num_delivered]}


async def _kv(nc: Any, prefix: str) -> Any:
    js = nc.jetstream()
    kv = await js.create_key_value(bucket=prefix.upper() + "_CFG", history=5)
    watcher = await kv.watchall()
    revisions = [await kv.put("color", b"red"), await kv.put("color", b"blue"), await kv.put("size", b"L")]
    entry = await kv.get("color")
    history = await kv.history("color")
    await kv.delete("size")
    watched: list = []
    while len(watched) < 4:
        update = await watcher.updates(timeout=5)
        if update is not None:
            watched.append([update.key, (update.value or b"").decode(), update.operation or "PUT"])
    await watcher.stop()
    return {"revisions": revisions, "get": [entry.value.decode(), entry.revision], "history": len(history),
            "watched": watched}


_SCENES: Dict[str, Callable[[Any, str], Awaitable[Any]]] = {
    "publish": _publish, "pull": _pull, "queue": _queue, "acks": _acks, "redelivery": _redelivery, "kv": _kv,
}
