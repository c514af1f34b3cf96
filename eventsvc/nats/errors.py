"""
Errors and their wording that every floor of the engine uses: the client
connection, the links and the listeners alike import them from here, so
that no link has to import a client or a listener module for them.
"""

from __future__ import annotations

from typing import Optional

from twisted.python.failure import Failure


class ListenError(Exception):
    """The listener could not bind its address."""


def failure_reason(reason: Optional[Failure]) -> str:
    """pyOpenSSL's error list, or the failure's message, as one phrase."""
    if reason is None:
        return "connection lost"
    args = getattr(reason.value, "args", None)
    if args and isinstance(args[0], list) and args[0]:
        return "; ".join(str(e[-1]) for e in args[0] if isinstance(e, tuple)) or str(args[0])
    return reason.getErrorMessage() or type(reason.value).__name__
