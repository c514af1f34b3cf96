"""
Liveness: the pinger of a client connection or a route.

Every C{interval} the pinger sends PING, unless the peer showed signs of
life within the interval (a client's reads or its own PING: nats-server's
rule, so busy connections are not pinged at all); past C{ping_max} PINGs
without a PONG the connection is stale, and C{stale} is called.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from eventsvc.nats.timers import cancel

PING = b"PING\r\n"
PONG = b"PONG\r\n"


class Pinger:
    """
    @ivar pings_out: PINGs sent and not answered.
    """

    __slots__ = (
        "clock", "interval", "ping_max", "_send", "_stale", "_last_heard", "pings_out", "last_ping_in", "_timer",
        "rtt", "_sent_at",
    )

    def __init__(
        self,
        clock: Any,
        interval: float,
        ping_max: int,
        send: Callable[[bytes], None],
        stale: Callable[[], None],
        last_heard: Optional[Callable[[], float]] = None,
    ) -> None:
        self.clock = clock
        self.interval = interval
        self.ping_max = ping_max
        #: Queue bytes for the peer and write them out.
        self._send = send
        self._stale = stale
        #: When the peer last sent anything (None: always ping, as routes are).
        self._last_heard = last_heard
        self.pings_out = 0
        self.last_ping_in = -1.0
        self._timer: Any = None
        #: Seconds from our last answered PING to its PONG (0: none answered yet).
        self.rtt = 0.0
        self._sent_at = -1.0

    def start(self) -> None:
        if self._timer is None:
            self._timer = self.clock.callLater(self.interval, self._due)

    def stop(self) -> None:
        self._timer = cancel(self._timer)

    def pong_received(self) -> None:
        self.pings_out = 0
        if self._sent_at >= 0:
            self.rtt = max(self.clock.seconds() - self._sent_at, 0.0)
            self._sent_at = -1.0

    def ping_now(self) -> None:
        """A PING at once (a link just up, to know its round trip, as nats-server's first PING)."""
        self.pings_out += 1
        self._sent_at = self.clock.seconds()
        self._send(PING)

    def ping_received(self) -> None:
        """The peer pinged us: it is alive (and is answered by the connection)."""
        self.last_ping_in = self.clock.seconds()

    def _due(self) -> None:
        interval = self.interval
        self._timer = self.clock.callLater(interval, self._due)
        if self._last_heard is not None:
            now = self.clock.seconds()
            # As nats-server: no PING while the peer shows signs of life.
            if now - self._last_heard() < interval or now - self.last_ping_in < interval:
                return
        if self.pings_out + 1 > self.ping_max:
            self.stop()
            self._stale()
            return
        self.pings_out += 1
        if self._sent_at < 0:
            self._sent_at = self.clock.seconds()
        self._send(PING)
