"""
Handler services: each delivers its events to one target, at least once.

A handler keeps its own backlog and a bound on deliveries in flight, so a
target that is down slows nobody else.  A 2xx answer (or a callable that
returns) is delivered; 5xx, 408, 425, 429, timeouts and connection errors
are retried with exponential backoff and jitter, forever or until
C{max_age}; any other answer is dead-lettered: logged, counted and appended
to the dead-letter file.

With C{batch_max} above 1, and a target that takes batches (HTTP targets
do; a Python callable does when it says so, L{takes_batches}), events go
in batches of at most C{batch_max}, in acceptance order: a batch is sent
when it is full, or when its oldest event has waited C{batch_wait}
seconds, whichever comes first.  A batch succeeds or is retried whole; a
permanent refusal splits it in two (and again, down to single events), so
only the events that fail on their own are dead-lettered.
"""

from __future__ import annotations

import bisect
import json
import random
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from eventsvc.dotted import settle
from eventsvc.files import append_locked
from eventsvc.nats.tcp import no_delay

RETRY_CODES = {408, 425, 429}


class DeliveryFailed(Exception):
    """A delivery did not succeed; C{retry} says whether trying again may help."""

    def __init__(self, why: str, retry: bool) -> None:
        super().__init__(why)
        self.retry = retry


class PermanentFailure(Exception):
    """Raised by a Python handler: this event will never succeed; dead-letter it."""


#: Called with the sequence numbers a handler is finished with (delivered
#: or dead-lettered), and the handler's name.
Finished = Callable[[Sequence[int], str], None]


class Delivery:
    __slots__ = ("seq", "event_id", "type_name", "body", "accepted", "attempts", "finished")

    def __init__(
        self, seq: int, event_id: str, body: bytes, accepted: float, finished: Finished, type_name: str = ""
    ):
        self.seq = seq
        self.event_id = event_id
        self.type_name = type_name
        self.body = body
        self.accepted = accepted
        self.attempts = 0
        self.finished = finished


#: Deliveries attempted together: one event, or a batch of them in acceptance order.
Batch = Tuple[Delivery, ...]


def takes_batches(function: Callable[[List[Dict[str, Any]]], Any]) -> Callable[[List[Dict[str, Any]]], Any]:
    """
    Mark a Python handler as taking batches: with C{batch_max} above 1 it
    is called with a list of events (at most C{batch_max}, in acceptance
    order) instead of one event.  Returning delivers all of them; raising
    L{PermanentFailure} splits the batch to find the events that fail on
    their own; any other exception retries the whole batch.
    """
    function.takes_batches = True  # type: ignore[attr-defined]
    return function


class HTTPTarget:
    """
    POST the event as JSON to C{url}; or, for a batch, one POST of a JSON
    array of events, built by joining the bytes as they were published.
    """

    def __init__(self, url: str, agent: Any, clock: Any, timeout: float) -> None:
        self.url = url
        self._url = url.encode("utf-8")
        self._agent = agent
        self._clock = clock
        self._timeout = timeout

    def deliver(self, body: bytes) -> Deferred:
        return ensureDeferred(self._post(body))

    def deliver_batch(self, bodies: Sequence[bytes]) -> Deferred:
        return ensureDeferred(self._post(b"[" + b",".join(bodies) + b"]"))

    async def _post(self, body: bytes) -> None:
        from twisted.web.client import PartialDownloadError, ResponseNeverReceived, readBody
        from twisted.web.http_headers import Headers

        for attempt in (1, 2):
            d = self._agent.request(b"POST", self._url, Headers({b"Content-Type": [b"application/json"]}), _Body(body))
            d.addTimeout(self._timeout, self._clock)
            try:
                response = await d
                try:
                    await readBody(response).addTimeout(self._timeout, self._clock)
                except PartialDownloadError:
                    # A body ended by the connection's close, not at a length
                    # it gave (an HTTP/1.0 target without Content-Length, as
                    # Python's http.server): the status line came whole, and
                    # it is what says whether the event was taken.  Failed,
                    # each such event was sent again until max_age.
                    pass
                break
            except ResponseNeverReceived as e:
                # Most often a kept-alive connection the target closed as the
                # POST went out (an HTTP/1.0 server, a keep-alive timeout):
                # Twisted retries only idempotent methods, so try once more at
                # once (on another connection), rather than back off for up
                # to retry_max with nothing wrong.  The target may have seen
                # it: at least once, as any retry.
                if attempt == 2:
                    raise DeliveryFailed("{}: {}".format(type(e).__name__, e), retry=True)
            except Exception as e:
                raise DeliveryFailed("{}: {}".format(type(e).__name__, e), retry=True)
        code = response.code
        if 200 <= code < 300:
            return
        raise DeliveryFailed("HTTP {}".format(code), retry=code >= 500 or code in RETRY_CODES)

    def __repr__(self) -> str:
        return self.url


@implementer(IBodyProducer)
class _Body:
    """
    A request body already in memory, written at once: Twisted's
    FileBodyProducer reads it back through a cooperator task, a reactor
    turn and a LoopingCall per request.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class NoDelayEndpoints:
    """
    Endpoints for Twisted's HTTP Agent (C{Agent.usingEndpointFactory}) whose
    connections set TCP_NODELAY: a small POST held back by Nagle's algorithm
    waits for the target's delayed ACK.  HTTPS goes through C{policy}.
    """

    def __init__(self, reactor: Any, policy: Any = None) -> None:
        self._reactor = reactor
        self._policy = policy

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        host = uri.host.decode("ascii") if isinstance(uri.host, bytes) else uri.host
        endpoint: Any = HostnameEndpoint(self._reactor, host, uri.port)
        if uri.scheme == b"https":
            policy = self._policy
            if policy is None:
                from twisted.web.client import BrowserLikePolicyForHTTPS

                policy = self._policy = BrowserLikePolicyForHTTPS()
            endpoint = wrapClientTLS(policy.creatorForNetloc(uri.host, uri.port), endpoint)
        return _NoDelayEndpoint(endpoint)


class _NoDelayEndpoint:
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def connect(self, factory: Any) -> Deferred:
        return self._inner.connect(factory).addCallback(self._connected)

    @staticmethod
    def _connected(protocol: Any) -> Any:
        no_delay(protocol.transport)
        return protocol


class CallableTarget:
    """
    A Python callable handler: C{f(event)} gets the decoded event and returns
    a value, a Deferred or a coroutine.  Raising L{PermanentFailure}
    dead-letters the event; any other exception is retried.
    """

    def __init__(self, function: Callable[[Dict[str, Any]], Any], name: str) -> None:
        self._function = function
        self.name = name

    def deliver(self, body: bytes) -> Deferred:
        d = maybeDeferred(self._function, json.loads(body))
        d.addCallback(settle)
        d.addErrback(self._classify)
        return d

    @property
    def batches(self) -> bool:
        """Whether the callable takes lists of events (L{takes_batches})."""
        return bool(getattr(self._function, "takes_batches", False))

    def deliver_batch(self, bodies: Sequence[bytes]) -> Deferred:
        function: Callable[[Any], Any] = self._function
        d = maybeDeferred(function, [json.loads(b) for b in bodies])
        d.addCallback(settle)
        d.addErrback(self._classify)
        return d

    def _classify(self, failure: Failure) -> None:
        if failure.check(PermanentFailure):
            raise DeliveryFailed("{}: {}".format(self.name, failure.getErrorMessage()), retry=False)
        raise DeliveryFailed("{} raised {}: {}".format(self.name, failure.type.__name__, failure.getErrorMessage()), retry=True)

    def __repr__(self) -> str:
        return self.name


class DeadLetters:
    """Appends dead-lettered events, one JSON object per line."""

    def __init__(self, path: Optional[str]) -> None:
        self.path = path

    def write(self, handler: str, delivery: Delivery, reason: str) -> None:
        if not self.path:
            return
        record = {
            "time": time.time(),
            "handler": handler,
            "event_id": delivery.event_id,
            "attempts": delivery.attempts,
            "reason": reason,
            "event": json.loads(delivery.body),
        }
        # Under a lock, never through a link: a dead-letter file outside
        # data_dir may be shared by two processes.
        append_locked(self.path, (json.dumps(record) + "\n").encode("utf-8"))


class LatencyHistogram:
    """Delivery latencies in cumulative buckets, as Prometheus wants them."""

    BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.BOUNDS, seconds)] += 1
        self.total += seconds

    def snapshot(self) -> "tuple[list, float]":
        cumulative, buckets = 0, []
        for bound, count in zip(self.BOUNDS + (float("inf"),), self.counts):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        return buckets, self.total


class HandlerService(Service):
    log = Logger()

    #: How long the backlog must have grown before it is reported.
    BACKLOG_GROWING = 60.0
    #: Seconds between two reports of a target that stays down.
    DOWN_REPORT = 60.0

    def __init__(
        self,
        name: str,
        target: Any,
        clock: Any,
        dead_letters: DeadLetters,
        concurrency: int = 8,
        retry_initial: float = 1.0,
        retry_max: float = 300.0,
        max_age: float = 0.0,
        rng: Optional[random.Random] = None,
        batch_max: int = 1,
        batch_wait: float = 0.0,
    ) -> None:
        self.setName(name)
        #: The handler's name (Service.name, typed as a plain str).
        self.handler = name
        self.target = target
        self.clock = clock
        self.dead_letters = dead_letters
        self.concurrency = concurrency
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.max_age = max_age
        self.batch_max = batch_max
        self.batch_wait = batch_wait
        self.random = rng or random.Random()
        #: Events not yet attempted, in acceptance order.
        self.backlog: Deque[Delivery] = deque()
        #: Batches to attempt before the backlog: retries that are due, and
        #: the halves of a refused batch.
        self.ready: Deque[Batch] = deque()
        #: Attempts in flight (requests), and the events in them.
        self.in_flight = 0
        self._in_flight_events = 0
        self._attempts: Dict[Batch, Deferred] = {}
        #: Batches waiting out their backoff.
        self.waiting: Dict[Batch, Any] = {}
        self._waiting_events = 0
        self._ready_events = 0
        self._batch_timer: Any = None
        self.delivered = self.retried = self.dead_lettered = 0
        #: Requests made (one per event, or per batch).
        self.attempts = 0
        #: The same three counts by event type, for metrics.
        self.by_type: Dict[str, Dict[str, int]] = {"delivered": {}, "retried": {}, "dead_lettered": {}}
        self.latency = LatencyHistogram()
        #: Since when (clock seconds) the backlog has not shrunk, and its
        #: sizes over the last BACKLOG_GROWING seconds: (time, size).
        self.growing_since: Optional[float] = None
        self._samples: Deque[Tuple[float, int]] = deque()
        self._reported_growth = -self.BACKLOG_GROWING
        #: Since when (clock seconds) the target has failed with no success
        #: since (None: it is taking events), why it last failed, and how
        #: many attempts failed meanwhile.
        self.down_since: Optional[float] = None
        self.last_error: Optional[str] = None
        self.failed_attempts = 0
        self._reported_down = 0.0
        #: When a failure was last said at warning level.
        self._failing_said: Optional[float] = None

    @property
    def batching(self) -> bool:
        """Whether events go in batches: C{batch_max} above 1 and a target that takes them."""
        return self.batch_max > 1 and getattr(self.target, "batches", hasattr(self.target, "deliver_batch"))

    def enqueue(self, delivery: Delivery) -> None:
        self.backlog.append(delivery)
        if self._batch_timer is not None and len(self.backlog) < self.batch_max:
            # A batch is waiting for company and this does not fill it: the
            # timer sends it.
            return
        self._pump()

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt C{attempts + 1}: doubling, capped, with jitter (50-100%)."""
        ceiling = min(self.retry_max, self.retry_initial * (2 ** (attempts - 1)))
        return ceiling * (0.5 + 0.5 * self.random.random())

    def _pump(self) -> None:
        while self.running and self.in_flight < self.concurrency:
            if self.ready:
                batch = self.ready.popleft()
                self._ready_events -= len(batch)
                if len(batch) > 1 and not self.batching:
                    # The target stopped taking batches (a reload): one by one.
                    self.ready.extendleft((d,) for d in reversed(batch))
                    self._ready_events += len(batch)
                    continue
                self._attempt(batch)
                continue
            if not self.backlog:
                return
            if self.waiting and self.batching:
                # Batches keep acceptance order: nothing newer starts while
                # a batch waits for its retry.
                return
            if not self.batching:
                self._attempt((self.backlog.popleft(),))
                continue
            if len(self.backlog) < self.batch_max and self.batch_wait > 0:
                # Not full: the oldest waits for company, up to batch_wait.
                due = self.backlog[0].accepted + self.batch_wait
                now = self.clock.seconds()
                if now < due:
                    if self._batch_timer is None:
                        self._batch_timer = self.clock.callLater(due - now, self._batch_due)
                    return
            take = min(self.batch_max, len(self.backlog))
            self._attempt(tuple(self.backlog.popleft() for _ in range(take)))

    def _batch_due(self) -> None:
        self._batch_timer = None
        self._pump()

    def _attempt(self, batch: Batch) -> None:
        self.in_flight += 1
        self._in_flight_events += len(batch)
        self.attempts += 1
        for delivery in batch:
            delivery.attempts += 1
        if self.batching:
            d = maybeDeferred(self.target.deliver_batch, [delivery.body for delivery in batch])
        else:
            d = maybeDeferred(self.target.deliver, batch[0].body)
        self._attempts[batch] = d
        d.addBoth(self._settled, batch)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addErrback(lambda f: self.log.failure("handler {name} bookkeeping failed", f, name=self.name))

    def _settled(self, result: Any, batch: Batch) -> Any:
        self._attempts.pop(batch, None)
        self.in_flight -= 1
        self._in_flight_events -= len(batch)
        return result

    def _succeeded(self, _: Any, batch: Batch) -> None:
        now = self.clock.seconds()
        if self.down_since is not None:
            # Said at the level its failure was said (see _target_failed).
            (self.log.warn if self._failing_said == self.down_since else self.log.info)(
                "handler {name}: {target} is taking events again, after {seconds:.0f}s and {attempts} failed attempts",
                name=self.name, target=self.target, seconds=now - self.down_since, attempts=self.failed_attempts,
            )
            self.down_since = self.last_error = None
            self.failed_attempts = 0
        self.delivered += len(batch)
        counts = self.by_type["delivered"]
        observe = self.latency.observe
        for delivery in batch:
            counts[delivery.type_name] = counts.get(delivery.type_name, 0) + 1
            observe(now - delivery.accepted)
        self._finish(batch)
        self._pump()

    def _finish(self, batch: Sequence[Delivery]) -> None:
        # Every delivery of a batch comes from the same dispatcher.
        if batch:
            batch[0].finished([delivery.seq for delivery in batch], self.handler)

    def _failed(self, failure: Failure, batch: Batch) -> None:
        if not self.running:
            # Stopped mid-delivery: the events stay in the spool for next time.
            return
        if failure.check(DeliveryFailed):
            why, retry = failure.getErrorMessage(), failure.value.retry
        else:
            self.log.failure("handler {name}: delivery of {event_id} failed", failure, name=self.name, event_id=batch[0].event_id)
            why, retry = "{}: {}".format(failure.type.__name__, failure.getErrorMessage()), True
        if not retry and len(batch) > 1:
            # Refused for good: some event in it fails on its own.  Halve
            # it until the ones that fail alone are found.
            half = len(batch) // 2
            self.log.info(
                "handler {name}: a batch of {size} refused by {target} ({why}); trying it in halves",
                name=self.name, size=len(batch), target=self.target, why=why,
            )
            for part in (batch[half:], batch[:half]):
                self.ready.appendleft(part)
                self._ready_events += len(part)
            self._pump()
            return
        now = self.clock.seconds()
        expired: Sequence[Delivery] = ()
        if retry and self.max_age:
            expired = [d for d in batch if now - d.accepted >= self.max_age]
            if expired:
                batch = tuple(d for d in batch if now - d.accepted < self.max_age)
                self._dead_letter(expired, "{} (gave up after {:.0f}s, max_age)".format(why, now - expired[0].accepted))
        if retry:
            self._target_failed(now, why)
        if batch and retry:
            attempts = max(d.attempts for d in batch)
            delay = self.backoff(attempts)
            self.retried += len(batch)
            for delivery in batch:
                self._count("retried", delivery)
            # The first failure is a warning (_target_failed); each retry
            # after it is routine, and summed up once a minute (report_down).
            self.log.info(
                "handler {name}: {what} not delivered to {target} ({why}); attempt {attempt} in {delay:.1f}s",
                name=self.name, what=_describe(batch), target=self.target, why=why,
                attempt=attempts + 1, delay=delay,
            )
            self.waiting[batch] = self.clock.callLater(delay, self._retry, batch)
            self._waiting_events += len(batch)
        elif batch:
            self._dead_letter(batch, why)
        self._pump()

    def _target_failed(self, now: float, why: str) -> None:
        """An attempt failed in a way a retry may mend: the target may be down."""
        self.failed_attempts += 1
        self.last_error = why
        if self.down_since is None:
            self.down_since = self._reported_down = now
            # A warning, unless one was given within DOWN_REPORT seconds: a
            # flaky target (a failure after each success, say) would
            # otherwise warn at every failure.  Then it is info.
            warn = self._failing_said is None or now - self._failing_said >= self.DOWN_REPORT
            if warn:
                self._failing_said = now
            (self.log.warn if warn else self.log.info)(
                "handler {name}: {target} is failing ({why}); its events are kept and retried{until}",
                name=self.name, target=self.target, why=why,
                until=" for up to {:g}s each ([events] max_age), then dead-lettered".format(self.max_age) if self.max_age else " for ever",
            )

    def down_for(self, now: Optional[float] = None) -> float:
        """Seconds the target has been failing with no success since (0: it is not)."""
        if self.down_since is None:
            return 0.0
        return (self.clock.seconds() if now is None else now) - self.down_since

    def oldest_accepted(self) -> Optional[float]:
        """When the oldest event this handler has not finished was accepted (clock seconds), if any."""
        batches = list(self.ready) + list(self.waiting) + list(self._attempts)
        if self.backlog:
            batches.append((self.backlog[0],))
        return min((d.accepted for batch in batches for d in batch), default=None)

    def report_down(self, now: float) -> None:
        """While the target stays down, say so once a minute: attempts, the oldest event, the depth."""
        if self.down_since is None or now - self._reported_down < self.DOWN_REPORT:
            return
        self._reported_down = now
        oldest = self.oldest_accepted()
        self.log.warn(
            "handler {name}: {target} down for {seconds:.0f}s: {attempts} attempts failed, the last with {why}; "
            "{depth} events waiting, the oldest accepted {age:.0f}s ago",
            name=self.name, target=self.target, seconds=now - self.down_since, attempts=self.failed_attempts,
            why=self.last_error, depth=self.backlog_size, age=0.0 if oldest is None else now - oldest,
        )

    def _dead_letter(self, batch: Sequence[Delivery], why: str) -> None:
        written: List[Delivery] = []
        for delivery in batch:
            try:
                self.dead_letters.write(self.handler, delivery, why)
            except OSError as e:
                # A full disk: the event is not finished until its dead
                # letter is written; that is tried again, not the delivery.
                left = tuple(d for d in batch if d not in written)
                delay = self.backoff(max(d.attempts for d in left))
                self.log.error(
                    "handler {name}: cannot write the dead letter of {what} to {path} ({error}); "
                    "kept, trying again in {delay:.1f}s",
                    name=self.name, what=_describe(left), path=self.dead_letters.path, error=e.strerror or e, delay=delay,
                )
                self.waiting[left] = self.clock.callLater(delay, self._dead_letter_again, left, why)
                self._waiting_events += len(left)
                break
            written.append(delivery)
            self.dead_lettered += 1
            self._count("dead_lettered", delivery)
            self.log.warn(
                "handler {name}: {event_id} dead-lettered after {attempts} attempts: {why}",
                name=self.name, event_id=delivery.event_id, attempts=delivery.attempts, why=why,
            )
        self._finish(written)

    def _dead_letter_again(self, batch: Batch, why: str) -> None:
        del self.waiting[batch]
        self._waiting_events -= len(batch)
        self._dead_letter(batch, why)

    def _count(self, what: str, delivery: Delivery) -> None:
        counts = self.by_type[what]
        counts[delivery.type_name] = counts.get(delivery.type_name, 0) + 1

    def _retry(self, batch: Batch) -> None:
        del self.waiting[batch]
        self._waiting_events -= len(batch)
        self.ready.append(batch)
        self._ready_events += len(batch)
        self._pump()

    def startService(self) -> None:
        super().startService()
        self._pump()

    def stopService(self) -> Any:
        # What is not delivered stays in the spool (when there is one).
        result = super().stopService()
        if self._batch_timer is not None and self._batch_timer.active():
            self._batch_timer.cancel()
        self._batch_timer = None
        for call in self.waiting.values():
            if call.active():
                call.cancel()
        self.waiting.clear()
        self._waiting_events = 0
        for d in list(self._attempts.values()):
            d.cancel()
        return result

    @property
    def backlog_size(self) -> int:
        """Events this handler has not finished: waiting, due for retry, or in flight."""
        return len(self.backlog) + self._ready_events + self._waiting_events + self._in_flight_events

    def sample_backlog(self, interval: float) -> None:
        """
        Look at the backlog (L{BacklogWatch} does, every C{interval}
        seconds).  It is growing when it is larger than L{BACKLOG_GROWING}
        seconds ago and has not shrunk since.  That is logged, once a minute
        while it lasts, and shown by the
        C{eventsvc_handler_backlog_growing_seconds} metric.
        """
        now, size = self.clock.seconds(), self.backlog_size
        samples = self._samples
        if samples and size < samples[-1][1]:
            if self.growing_seconds(now) >= self.BACKLOG_GROWING:
                self.log.info("handler {name}: backlog shrinking again ({size} events)", name=self.name, size=size)
            self.growing_since = now
        elif self.growing_since is None:
            self.growing_since = now
        samples.append((now, size))
        # Keep the window, and the one sample at or before its start.
        while len(samples) > 1 and samples[1][0] <= now - self.BACKLOG_GROWING:
            samples.popleft()
        growing = self.growing_seconds(now)
        if growing >= self.BACKLOG_GROWING and now - self._reported_growth >= self.BACKLOG_GROWING:
            self._reported_growth = now
            self.log.warn(
                "handler {name}: backlog growing for {seconds:.0f}s, from {base} to {size} events; "
                "{target} is slower than events arrive (at [service] event_limit producers are refused)",
                name=self.name, seconds=growing, base=samples[0][1], size=size, target=self.target,
            )

    def growing_seconds(self, now: Optional[float] = None) -> float:
        """How long the backlog has been growing (0: it is not)."""
        if now is None:
            now = self.clock.seconds()
        samples = self._samples
        if self.growing_since is None or not samples:
            return 0.0
        since, first = samples[0]
        if since < self.growing_since or now - since < self.BACKLOG_GROWING or samples[-1][1] <= first:
            return 0.0
        return now - self.growing_since


class BacklogWatch(Service):
    """
    Looks at every handler every C{interval} seconds: its backlog
    (L{HandlerService.sample_backlog}) and a target that stays down
    (L{HandlerService.report_down}).
    """

    def __init__(self, handlers: Sequence[HandlerService], clock: Any, interval: float = 5.0) -> None:
        self.setName("backlog-watch")
        self.handlers = handlers
        self.clock = clock
        self.interval = interval
        self._loop: Any = None

    def startService(self) -> None:
        super().startService()
        from twisted.internet.task import LoopingCall

        self._loop = LoopingCall(self.sample)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=False)

    def sample(self) -> None:
        now = self.clock.seconds()
        for handler in self.handlers:
            handler.sample_backlog(self.interval)
            handler.report_down(now)

    def stopService(self) -> Any:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()


def _describe(batch: Sequence[Delivery]) -> str:
    if len(batch) == 1:
        return batch[0].event_id
    return "a batch of {} ({} ... {})".format(len(batch), batch[0].event_id, batch[-1].event_id)


_example_log = Logger(namespace="eventsvc.handler")


def log_event(event: Dict[str, Any]) -> None:
    """
    A handler for development (C{python:eventsvc.events.handlers:log_event}):
    it logs the event it is given.
    """
    _example_log.info(
        "handled event {event_id} ({type}) from {producer}",
        event_id=event.get("event_id"), type=event.get("type", {}).get("name"), producer=event.get("producer", {}).get("id"),
    )
