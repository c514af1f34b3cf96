"""
A budget of failed logins per client address, so that a brute force from
one address cannot try a thousand tokens a second (nats-server has none).

Within budget nothing changes: good clients are never slowed.  Past it (more
than C{budget} failures in C{window} seconds), each further attempt from
that address waits C{delay} seconds before its credentials are checked, and
at most C{waiting} attempts from it may wait at once; more are refused
without being checked.  What is remembered is bounded.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Deque, Dict, Optional

#: Addresses remembered at most (the least recently failing go first).
MAX_ADDRESSES = 10000


class AuthThrottle:
    def __init__(self, budget: int = 10, window: float = 10.0, delay: float = 1.0, waiting: int = 8) -> None:
        self.budget = budget
        self.window = window
        self.delay = delay
        self.waiting = waiting
        self._failures: "OrderedDict[str, Deque[float]]" = OrderedDict()
        self._waiting: Dict[str, int] = {}
        #: Attempts delayed, and refused unchecked (for logs and metrics).
        self.delayed = self.refused = 0

    def admit(self, host: str, now: float) -> Optional[float]:
        """
        How long an attempt from C{host} waits before it is checked (0: not
        at all), or None when it is refused unchecked.  A wait is ended with
        L{done_waiting}.
        """
        failures = self._failures.get(host)
        if failures is None:
            return 0.0
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if len(failures) < self.budget:
            return 0.0
        if self._waiting.get(host, 0) >= self.waiting:
            self.refused += 1
            return None
        self._waiting[host] = self._waiting.get(host, 0) + 1
        self.delayed += 1
        return self.delay

    def done_waiting(self, host: str) -> None:
        n = self._waiting.get(host, 0) - 1
        if n > 0:
            self._waiting[host] = n
        else:
            self._waiting.pop(host, None)

    def failed(self, host: str, now: float) -> None:
        failures = self._failures.get(host)
        if failures is None:
            failures = self._failures[host] = deque(maxlen=self.budget * 4)
            if len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)
        else:
            self._failures.move_to_end(host)
        failures.append(now)
