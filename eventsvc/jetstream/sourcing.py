"""
A stream's mirror and sources, as nats-server 2.9.10 keeps them
(server/stream.go: C{setupMirrorConsumer}, C{setSourceConsumer},
C{processInboundMirrorMsg}, C{processInboundSourceMsg}).

One design for every origin, on this server or behind a link, in this
domain or another: a L{SourceLink} asks the origin's API
(C{<api>.CONSUMER.CREATE.<stream>}, C{$JS.API} or the C{external.api}
prefix) for an ephemeral push consumer (C{direct}, no acks, flow control,
a heartbeat every second) delivering to a subject of its own, and takes
what arrives:

  - a mirror stores each message at the origin's sequence, with the
    origin's time; a gap in the stream sequences that the consumer's
    delivery sequence says is no loss (the origin expired or deleted
    those) is skipped; any other gap makes a new consumer from the last
    sequence kept;
  - a source stores each message as a publish, with
    C{Nats-Stream-Source: <name>[:<hash of api>] <origin seq>}, the header
    by which it finds where to resume after a restart.

Flow control requests are answered, a heartbeat whose last delivery is
not the last one seen (a message lost on the way), or three seconds
without a word from the origin (a link down), makes a new consumer from
the last sequence kept, at most one every two seconds.  The old one ends
by itself on the origin (an ephemeral without interest).

It meets the origin only through the broker, as any client would: it
does not know whether the origin is a L{Stream} of this process.  It must
not store anything twice: it keeps the last sequence it holds, and takes
only the one after it.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from twisted.logger import Logger

from eventsvc.jetstream.wire import header, parse_headers, parse_rfc3339, rfc3339

if TYPE_CHECKING:  # pragma: no cover
    from eventsvc.jetstream.stream import Stream

#: nats-server's sourceHealthCheckInterval: the consumer's heartbeat, and the tick of the stall check.
HEALTH_CHECK_INTERVAL = 1.0
#: sourceConsumerRetryThreshold: at most one consumer request in this many seconds.
RETRY_THRESHOLD = 2.0
#: How long a consumer create waits for its answer before asking again.
CREATE_TIMEOUT = 5.0
#: A mirror with mirror_direct answers its origin's direct gets once fewer than
#: this many messages are left to copy (nats-server's dgetCaughtUpThresh).
DIRECT_CAUGHT_UP = 10
#: The consumers' ack_wait (22 hours, in nanoseconds): they never redeliver.
ACK_WAIT = 22 * 3600 * 1_000_000_000

_DIGITS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_API = "$JS.API"
_HEADER = "Nats-Stream-Source"


def go_hash(name: str, size: int = 8) -> str:
    """nats-server's C{getHashSize}: sha256 of C{name}, its first bytes in base 62."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return "".join(_DIGITS[b % 62] for b in digest[:size])


def _random_token(size: int = 8) -> str:
    return "".join(random.choice(_DIGITS) for _ in range(size))


def index_name(source: Dict[str, Any]) -> str:
    """The name a source is known by in C{Nats-Stream-Source} (nats-server's C{iname})."""
    external = source.get("external")
    if external:
        return "{}:{}".format(source["name"], go_hash(external.get("api") or ""))
    return str(source["name"])


def parse_ack_reply(reply: str) -> Optional[Tuple[str, int, int, int, int, int]]:
    """
    C{$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>}:
    (consumer, delivered count, stream seq, delivery seq, ts, pending), or
    None when the reply is not one (nats-server's C{replyInfo}).
    """
    tokens = reply.split(".")
    if len(tokens) != 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
        return None
    try:
        return tokens[3], int(tokens[4]), int(tokens[5]), int(tokens[6]), int(tokens[7]), int(tokens[8])
    except ValueError:
        return None


def source_value(value: str) -> Tuple[str, int]:
    """A C{Nats-Stream-Source} value: (index name, origin seq); ("", 0) if it is not one (C{streamAndSeq})."""
    if value.startswith("$JS.ACK."):
        parsed = value.split(".")
        if len(parsed) == 9 and parsed[5].isdigit():
            return parsed[2], int(parsed[5])
        return "", 0
    fields = value.split()
    if len(fields) != 2 or not fields[1].isdigit():
        return "", 0
    return fields[0], int(fields[1])


def is_control(payload: bytes, headers: Optional[bytes]) -> bool:
    """A heartbeat or a flow control request (nats-server's C{isControlMsg})."""
    return not payload and bool(headers) and headers.startswith(b"NATS/1.0 100 ")  # type: ignore[union-attr]


class SourceLink:
    """
    One mirror or source of a stream (nats-server's C{sourceInfo}).

    @ivar sseq: the last origin sequence this stream holds from it.
    @ivar dseq: the consumer's last delivery sequence seen (0: none yet).
    @ivar lag: what the origin has that is not here yet, as its last delivery said.
    @ivar last: when (ns) the origin last said anything (0: never).
    @ivar error: the last consumer create's error (an ApiError's JSON), or None.
    """

    log = Logger()

    def __init__(self, stream: "Stream", config: Dict[str, Any], mirror: bool = False, since: int = 0) -> None:
        """
        @param since: for a source, the time (ns) to start at when the
            stream holds no copy from it (0: the configured start, or all).
        """
        self.stream = stream
        self.engine = stream.engine
        #: The clock's seconds and the engine's nanoseconds, asked for every message.
        self._seconds = self.engine.clock.seconds
        self._now = self.engine.now
        self.config = config
        self.mirror = mirror
        self.name: str = config["name"]
        self.iname = index_name(config)
        external = config.get("external") or {}
        self.api: str = external.get("api") or _API
        self.deliver_prefix: str = external.get("deliver") or ""
        self.since = since
        self.sseq = 0
        self.dseq = 0
        self.lag = 0
        self.last = 0
        self.error: Optional[Dict[str, Any]] = None
        #: The consumer messages are taken from (its name, from the create's answer).
        self.cname = ""
        #: When the last consumer was asked for (clock seconds), and whether its answer is awaited.
        self._requested = -RETRY_THRESHOLD
        self._in_progress = False
        #: When (clock seconds) the origin was last heard from, for the stall check.
        self._heard = 0.0
        self._deliveries: Any = None
        self._answer: Any = None
        self._timeout: Any = None
        self._retry: Any = None
        self._ticker: Any = None
        #: The retry's start sequence (0: from the last one kept).
        self._retry_seq = 0
        self._running = False

    # -- life ---------------------------------------------------------------------

    def start(self, last_copied: Optional[int] = None) -> None:
        """
        Find where to resume (the store's last copy; C{last_copied}: found
        already, by L{last_copies}) and, on the next turn, ask the origin
        for a consumer from there: as from nats-server, a create is
        answered with the stream as made.
        """
        self._running = True
        if self.mirror:
            self.sseq = self.stream.store.state().last_seq
        else:
            self.sseq = self._last_copied() if last_copied is None else last_copied
        self._retry = self.engine.clock.callLater(0, self._retry_now)

    def stop(self) -> None:
        """Let go of the origin: no more deliveries taken, no timers (the origin's consumer ends by itself)."""
        self._running = False
        self._cancel_consumer()
        for call in (self._retry, self._ticker):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._ticker = None

    def _last_copied(self) -> int:
        """The origin sequence of the last message this stream holds from it (C{setStartingSequenceForSource})."""
        return last_copies(self.stream.store, {self.iname}).get(self.iname, 0)

    def _cancel_consumer(self) -> None:
        for sub in (self._deliveries, self._answer):
            if sub is not None:
                sub.unsubscribe()
        self._deliveries = self._answer = None
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self._in_progress = False
        self.cname = ""
        self.dseq = 0

    def _schedule_retry(self, seq: int = 0) -> None:
        """Ask again as soon as the retry threshold allows (C{scheduleSetSourceConsumerRetryAsap})."""
        if not self._running:
            return
        if self._retry is not None and self._retry.active():
            return
        wait = max(0.0, RETRY_THRESHOLD - (self.engine.clock.seconds() - self._requested))
        self._retry_seq = seq
        self._retry = self.engine.clock.callLater(wait + 0.01 + random.random() * 0.05, self._retry_now)

    def _retry_now(self) -> None:
        self._retry = None
        self._setup(self._retry_seq)

    def restart(self, seq: int = 0) -> None:
        """A new consumer from C{seq} (0: the one after the last kept): a gap, a stall, a lost link."""
        if self.mirror:
            self.sseq = self.stream.store.state().last_seq
        self._setup(seq)

    # -- the consumer -------------------------------------------------------------

    def _request(self, seq: int) -> Tuple[str, Dict[str, Any]]:
        """The consumer create's subject and body, as nats-server words them."""
        deliver = self._deliver_subject()
        config: Dict[str, Any] = {
            "deliver_policy": "all",
            "ack_policy": "none",
            "ack_wait": ACK_WAIT,
            "max_deliver": 1,
            "replay_policy": "instant",
            "flow_control": True,
            "idle_heartbeat": int(HEALTH_CHECK_INTERVAL * 1_000_000_000),
            "deliver_subject": deliver,
            "direct": True,
        }
        source = self.config
        if self.mirror:
            state = self.stream.store.state()
            start = state.last_seq + 1
            if state.msgs == 0 and state.first_seq == 0:
                start = 0
                if source.get("opt_start_seq"):
                    start = source["opt_start_seq"]
                elif source.get("opt_start_time"):
                    config["opt_start_time"] = source["opt_start_time"]
                    config["deliver_policy"] = "by_start_time"
            if start:
                config["opt_start_seq"] = start
                config["deliver_policy"] = "by_start_sequence"
        else:
            start = seq or self.sseq + 1
            if start <= 1:
                if source.get("opt_start_seq"):
                    config["opt_start_seq"] = source["opt_start_seq"]
                    config["deliver_policy"] = "by_start_sequence"
                elif source.get("opt_start_time"):
                    # (a configured start before what the stream last held: from there)
                    configured = parse_rfc3339(source["opt_start_time"])
                    config["opt_start_time"] = rfc3339(max(configured, self.since))
                    config["deliver_policy"] = "by_start_time"
                elif self.since:
                    config["opt_start_time"] = rfc3339(self.since)
                    config["deliver_policy"] = "by_start_time"
            else:
                config["opt_start_seq"] = start
                config["deliver_policy"] = "by_start_sequence"
        filter_subject = source.get("filter_subject") or ""
        if filter_subject:
            config["filter_subject"] = filter_subject
            config["name"] = "{}-{}".format("mirror" if self.mirror else "src", go_hash(_random_token(22)))
            subject = "{}.CONSUMER.CREATE.{}.{}.{}".format(self.api, self.name, config["name"], filter_subject)
        else:
            subject = "{}.CONSUMER.CREATE.{}".format(self.api, self.name)
        return subject.replace("..", "."), {"stream_name": self.name, "config": config}

    def _deliver_subject(self) -> str:
        kind = "M" if self.mirror else "S"
        if self.deliver_prefix:
            return "{}.{}.{}".format(self.deliver_prefix, kind, _random_token()).replace("..", ".")
        return "$JS.{}.{}".format(kind, _random_token())

    def _setup(self, seq: int = 0) -> None:
        """Ask the origin for a consumer from C{seq} (0: after the last kept): C{setSourceConsumer}."""
        if not self._running:
            return
        self._cancel_consumer()
        clock = self.engine.clock
        if clock.seconds() - self._requested < RETRY_THRESHOLD:
            self._schedule_retry(seq)
            return
        self._requested = clock.seconds()
        subject, body = self._request(seq)
        broker = self.engine.broker
        reply = "$JSC.R." + _random_token()
        # The deliveries' subscription is made before the request goes
        # out: across a link, the origin may deliver as soon as it has it.
        self._deliveries = broker.subscribe(body["config"]["deliver_subject"], self._delivered)
        self._answer = broker.subscribe(reply, self._created)
        self._in_progress = True
        self._timeout = clock.callLater(CREATE_TIMEOUT, self._no_answer)
        self.log.debug("stream {stream}: asking {subject} for a {kind} consumer from {start}",
                       stream=self.stream.name, subject=subject, kind="mirror" if self.mirror else "source",
                       start=body["config"].get("opt_start_seq", 0))
        try:
            broker.publish(subject, json.dumps(body, separators=(",", ":")).encode("utf-8"), reply)
        except ValueError as e:
            self.error = {"code": 500, "err_code": 10045, "description": str(e)}
            self._cancel_consumer()
            self._schedule_retry(seq)

    def _no_answer(self) -> None:
        """Five seconds without an answer (the origin unreachable): ask again."""
        self._timeout = None
        if self._answer is not None:
            self._answer.unsubscribe()
            self._answer = None
        self._in_progress = False
        self._schedule_retry()

    def _created(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """The consumer create's answer."""
        if self._answer is not None:
            self._answer.unsubscribe()
            self._answer = None
        if self._timeout is not None and self._timeout.active():
            self._timeout.cancel()
        self._timeout = None
        self._in_progress = False
        if not self._running:
            return
        try:
            answer = json.loads(payload.decode("utf-8"))
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            self.log.warn("stream {stream}: bad consumer create answer from {origin}: {payload!r}",
                          stream=self.stream.name, origin=self.name, payload=payload[:200])
            self.error = {"code": 400, "err_code": 10025, "description": "invalid JSON"}
            self._schedule_retry()
            return
        error = answer.get("error")
        if error or not isinstance(answer.get("config"), dict):
            refusal = error if isinstance(error, dict) else {"code": 500, "description": "no consumer"}
            # Said once per kind of refusal: it is asked again every two
            # seconds (an origin not made yet would fill the log).
            say = self.log.warn if refusal != self.error else self.log.debug
            say("stream {stream}: the origin {origin} refused a {kind} consumer: {error} (asking again every {every} s)",
                stream=self.stream.name, origin=self.name, kind="mirror" if self.mirror else "source",
                error=refusal.get("description"), every=RETRY_THRESHOLD)
            self.error = refusal
            self._cancel_consumer()
            self._schedule_retry()
            return
        self.error = None
        name = str(answer.get("name") or "")
        if self.cname and self.cname == name:
            # It delivered before its answer came: what was taken stands.
            self._consumer_ready()
            return
        delivered = ((answer.get("delivered") or {}).get("stream_seq") or 0) if isinstance(answer.get("delivered"), dict) else 0
        if self.mirror:
            last = self.stream.store.state().last_seq
            if last != delivered and delivered > last:
                # The origin no longer has what comes next: skip to where it starts.
                self.stream.skip_to(delivered + 1)
            self.sseq = delivered
        elif self.sseq != delivered:
            # As nats-server: only a start past what was kept moves it on.
            if delivered > self.sseq:
                self.sseq = delivered
        self.cname = name
        self.dseq = 0
        self._consumer_ready()

    def _consumer_ready(self) -> None:
        self._heard = self.engine.clock.seconds()
        if self._ticker is None or not self._ticker.active():
            self._ticker = self.engine.clock.callLater(HEALTH_CHECK_INTERVAL, self._tick)

    def _tick(self) -> None:
        """Every second: three without a word from the origin is a stall, and a new consumer."""
        self._ticker = None
        if not self._running:
            return
        if self.cname and self.engine.clock.seconds() - self._heard > 3 * HEALTH_CHECK_INTERVAL:
            self.log.info("stream {stream}: no word from {origin} for {seconds} s; asking again from {seq}",
                          stream=self.stream.name, origin=self.name, seconds=3 * HEALTH_CHECK_INTERVAL,
                          seq=self.sseq + 1)
            self.restart()
        self._ticker = self.engine.clock.callLater(HEALTH_CHECK_INTERVAL, self._tick)

    # -- what arrives ---------------------------------------------------------------

    def _delivered(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """A delivery, a heartbeat or a flow control request on the deliver subject."""
        if not self._running:
            return
        # (A delivery that crossed a link as "<ack>@<subject>" was split by
        # the broker before it reached this subscriber: Broker.deliver_crossed.)
        if is_control(payload, headers):
            self._heard = self.engine.clock.seconds()
            self.last = self.engine.now()
            if reply:
                self.engine.broker.publish(reply, b"")
                return
            values = parse_headers(headers)[1]
            last = values.get("Nats-Last-Consumer")
            if last and last[0].isdigit() and int(last[0]) > 0 and int(last[0]) != self.dseq and self.cname:
                self.log.info("stream {stream}: {origin} delivered up to {last}, {seen} seen here; asking again",
                              stream=self.stream.name, origin=self.name, last=last[0], seen=self.dseq)
                self.restart()
                return
            stalled = values.get("Nats-Consumer-Stalled")
            if stalled:
                self.engine.broker.publish(stalled[0], b"")
            return
        parsed = parse_ack_reply(reply or "")
        if parsed is None:
            return
        if not self.cname and self._in_progress:
            # Delivered before the create's answer came (the origin is in
            # this process, or quick): this subject is the new consumer's.
            self.cname = parsed[0]
        if parsed[0] != self.cname:
            return  # an older consumer's
        _, dc, sseq, dseq, ts, pending = parsed
        self._heard = self._seconds()
        self.last = self._now()
        if dc > 1:
            return
        if self.mirror:
            self._mirrored(subject, headers, payload, sseq, dseq, ts, pending)
        else:
            self._sourced(subject, headers, payload, sseq, dseq, pending)

    def _mirrored(self, subject: str, headers: Optional[bytes], payload: bytes, sseq: int, dseq: int, ts: int,
                  pending: int) -> None:
        """C{processInboundMirrorMsg}: store at the origin's sequence, or skip, or ask again."""
        if sseq <= self.sseq:
            return
        if sseq != self.sseq + 1:
            if self.dseq and dseq != self.dseq + 1:
                self.restart()
                return
            # The delivery sequence follows on: the origin has nothing in between.
            self.stream.skip_to(sseq)
        self.dseq, self.sseq = dseq, sseq
        self.lag = max(0, pending - 1)
        if pending < DIRECT_CAUGHT_UP:
            self.stream.serve_mirror_direct()
        stored = self.stream.store_mirrored(subject, headers, payload, sseq, ts)
        if not stored:
            # Not kept (a full store, a failed write): from the last kept again.
            self.restart()

    def _sourced(self, subject: str, headers: Optional[bytes], payload: bytes, sseq: int, dseq: int, pending: int) -> None:
        """C{processInboundSourceMsg}: a publish with Nats-Stream-Source, in delivery order."""
        if self.dseq and dseq != self.dseq + 1:
            if dseq > self.dseq:
                self.restart(self.sseq + 1)
            return
        if sseq <= self.sseq:
            # Already here (a consumer started before what was kept).
            self.dseq = dseq
            return
        self.dseq, self.sseq = dseq, sseq
        self.lag = max(0, pending - 1)
        block = _with_source(headers, "{} {}".format(self.iname, sseq))
        if self.stream.process(subject, None, payload, block) is None and not self.stream.closed \
                and not self.stream.is_duplicate(block):
            # Not kept (sealed, full, a refused expectation): from the last
            # one kept again, as nats-server retries on every error but a
            # duplicate (its Nats-Msg-Id seen in the window: taken as done).
            self.sseq = self._last_copied()
            self.restart(self.sseq + 1)

    # -- info -----------------------------------------------------------------------

    def info(self) -> Dict[str, Any]:
        """StreamSourceInfo: name, external, lag, active (ns since the origin last spoke; -1: never), error."""
        out: Dict[str, Any] = {"name": self.name}
        external = self.config.get("external")
        if external:
            out["external"] = {"api": external.get("api") or "", "deliver": external.get("deliver") or ""}
        out["lag"] = self.lag
        out["active"] = self.engine.now() - self.last if self.last else -1
        if self.error:
            out["error"] = self.error
        return out


def last_copies(store: Any, inames: "set[str]") -> Dict[str, int]:
    """
    For each source of C{inames}, the origin sequence of the last message
    C{store} holds from it (absent: none): one walk back from the end,
    which stops once every one is found (C{startingSequenceForSources}).
    """
    found: Dict[str, int] = {}
    state = store.state()
    seq = state.last_seq
    while seq >= state.first_seq and seq > 0 and len(found) < len(inames):
        message = store.load(seq)
        seq -= 1
        if message is None or not message.headers or b"Nats-Stream-Source" not in message.headers:
            continue
        value = header(message.headers, _HEADER)
        if not value:
            continue
        iname, origin_seq = source_value(value)
        if iname in inames and iname not in found:
            found[iname] = origin_seq
    return found


def _with_source(headers: Optional[bytes], value: str) -> bytes:
    """The header block with C{Nats-Stream-Source: value}, an earlier one (a chain of sources) removed."""
    if headers and len(headers) > 4:
        if b"Nats-Stream-Source:" in headers:
            status, values = parse_headers(headers)
            kept = [(k, v) for k, vs in values.items() if k != _HEADER for v in vs]
            headers = ("NATS/1.0" + (" " + status if status else "") + "\r\n" +
                       "".join("{}: {}\r\n".format(k, v) for k, v in kept) + "\r\n").encode("utf-8")
        return headers[:-2] + "{}: {}\r\n\r\n".format(_HEADER, value).encode("utf-8")
    return "NATS/1.0\r\n{}: {}\r\n\r\n".format(_HEADER, value).encode("utf-8")


__all__ = ["SourceLink", "go_hash", "index_name", "last_copies", "parse_ack_reply", "source_value", "is_control"]
