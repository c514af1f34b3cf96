"""The one way a connection part drops a delayed call it may hold."""

from __future__ import annotations

from typing import Any


def cancel(timer: Any) -> Any:
    """
    Cancel C{timer} (an C{IDelayedCall}, or None) if it is still pending;
    returns None, to store in its place: C{self._timer = cancel(self._timer)}.
    """
    if timer is not None and timer.active():
        timer.cancel()
    return None
