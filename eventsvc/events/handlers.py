"""
Handler services: each delivers its events to one target, at least once.

A handler keeps its own backlog and a bound on deliveries in flight, so a
target that is down slows nobody else.  A 2xx answer (or a callable that
returns) is delivered; 5xx, 408, 425, 429, timeouts and connection errors
are retried with exponential backoff and jitter, forever or until
C{max_age}; any other answer is dead-lettered: logged, counted and appended
to the dead-letter file.
"""

from __future__ import annotations

import bisect
import json
import random
import time
from collections import deque
from typing import Any, Callable, Deque, Dict, Optional

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

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


class Delivery:
    __slots__ = ("seq", "event_id", "type_name", "body", "accepted", "attempts", "finished")

    def __init__(
        self, seq: int, event_id: str, body: bytes, accepted: float, finished: Callable[[int, str], None], type_name: str = ""
    ):
        self.seq = seq
        self.event_id = event_id
        self.type_name = type_name
        self.body = body
        self.accepted = accepted
        self.attempts = 0
        self.finished = finished


class HTTPTarget:
    """POST the event as JSON to C{url}."""

    def __init__(self, url: str, agent: Any, clock: Any, timeout: float) -> None:
        self.url = url
        self._url = url.encode("utf-8")
        self._agent = agent
        self._clock = clock
        self._timeout = timeout

    def deliver(self, body: bytes) -> Deferred:
        return ensureDeferred(self._post(body))

    async def _post(self, body: bytes) -> None:
        from twisted.web.client import FileBodyProducer, readBody
        from twisted.web.http_headers import Headers
        from io import BytesIO

        d = self._agent.request(
            b"POST", self._url, Headers({b"Content-Type": [b"application/json"]}), FileBodyProducer(BytesIO(body))
        )
        d.addTimeout(self._timeout, self._clock)
        try:
            response = await d
            await readBody(response).addTimeout(self._timeout, self._clock)
        except Exception as e:
            raise DeliveryFailed("{}: {}".format(type(e).__name__, e), retry=True)
        code = response.code
        if 200 <= code < 300:
            return
        raise DeliveryFailed("HTTP {}".format(code), retry=code >= 500 or code in RETRY_CODES)

    def __repr__(self) -> str:
        return self.url


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
        self.random = rng or random.Random()
        self.backlog: Deque[Delivery] = deque()
        self.in_flight = 0
        self._attempts: Dict[Delivery, Deferred] = {}
        self.waiting: Dict[Delivery, Any] = {}
        self.delivered = self.retried = self.dead_lettered = 0
        #: The same three counts by event type, for metrics.
        self.by_type: Dict[str, Dict[str, int]] = {"delivered": {}, "retried": {}, "dead_lettered": {}}
        self.latency = LatencyHistogram()

    def enqueue(self, delivery: Delivery) -> None:
        self.backlog.append(delivery)
        self._pump()

    def backoff(self, attempts: int) -> float:
        """Seconds before attempt C{attempts + 1}: doubling, capped, with jitter (50-100%)."""
        ceiling = min(self.retry_max, self.retry_initial * (2 ** (attempts - 1)))
        return ceiling * (0.5 + 0.5 * self.random.random())

    def _pump(self) -> None:
        while self.running and self.backlog and self.in_flight < self.concurrency:
            self._attempt(self.backlog.popleft())

    def _attempt(self, delivery: Delivery) -> None:
        self.in_flight += 1
        delivery.attempts += 1
        d = maybeDeferred(self.target.deliver, delivery.body)
        self._attempts[delivery] = d
        d.addBoth(self._settled, delivery)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(delivery,), errbackArgs=(delivery,))
        d.addErrback(lambda f: self.log.failure("handler {name} bookkeeping failed", f, name=self.name))

    def _settled(self, result: Any, delivery: Delivery) -> Any:
        self._attempts.pop(delivery, None)
        return result

    def _succeeded(self, _: Any, delivery: Delivery) -> None:
        self.in_flight -= 1
        self.delivered += 1
        self._count("delivered", delivery)
        self.latency.observe(self.clock.seconds() - delivery.accepted)
        delivery.finished(delivery.seq, self.handler)
        self._pump()

    def _failed(self, failure: Failure, delivery: Delivery) -> None:
        self.in_flight -= 1
        if not self.running:
            # Stopped mid-delivery: the event stays in the spool for next time.
            return
        if failure.check(DeliveryFailed):
            why, retry = failure.getErrorMessage(), failure.value.retry
        else:
            self.log.failure("handler {name}: delivery of {event_id} failed", failure, name=self.name, event_id=delivery.event_id)
            why, retry = "{}: {}".format(failure.type.__name__, failure.getErrorMessage()), True
        age = self.clock.seconds() - delivery.accepted
        if retry and (not self.max_age or age < self.max_age):
            delay = self.backoff(delivery.attempts)
            self.retried += 1
            self._count("retried", delivery)
            self.log.info(
                "handler {name}: {event_id} not delivered to {target} ({why}); attempt {attempt} in {delay:.1f}s",
                name=self.name, event_id=delivery.event_id, target=self.target, why=why,
                attempt=delivery.attempts + 1, delay=delay,
            )
            self.waiting[delivery] = self.clock.callLater(delay, self._retry, delivery)
        else:
            if retry:
                why = "{} (gave up after {:.0f}s, max_age)".format(why, age)
            self.dead_lettered += 1
            self._count("dead_lettered", delivery)
            self.log.warn(
                "handler {name}: {event_id} dead-lettered after {attempts} attempts: {why}",
                name=self.name, event_id=delivery.event_id, attempts=delivery.attempts, why=why,
            )
            self.dead_letters.write(self.handler, delivery, why)
            delivery.finished(delivery.seq, self.handler)
        self._pump()

    def _count(self, what: str, delivery: Delivery) -> None:
        counts = self.by_type[what]
        counts[delivery.type_name] = counts.get(delivery.type_name, 0) + 1

    def _retry(self, delivery: Delivery) -> None:
        del self.waiting[delivery]
        self.backlog.append(delivery)
        self._pump()

    def startService(self) -> None:
        super().startService()
        self._pump()

    def stopService(self) -> Any:
        # What is not delivered stays in the spool (when there is one).
        result = super().stopService()
        for call in self.waiting.values():
            if call.active():
                call.cancel()
        self.waiting.clear()
        for d in list(self._attempts.values()):
            d.cancel()
        return result

    @property
    def backlog_size(self) -> int:
        return len(self.backlog) + len(self.waiting) + self.in_flight


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
