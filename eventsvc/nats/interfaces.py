"""
The seams other parts of eventsvc plug into the NATS engine.

The engine defines them and calls them; it never imports an implementation.
Authentication answers a CONNECT with an L{Identity} (or a failure), and an
identity may carry L{IPermissions} that the connection consults on every
publish and subscribe.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, cast

from twisted.internet.defer import ensureDeferred

from zope.interface import Interface


class AuthenticationFailed(Exception):
    """
    The credentials in a CONNECT were refused.  The client is told
    C{Authorization Violation}; the message is logged and must never contain
    the secret itself.
    """


class IPermissions(Interface):
    """What an identity may publish to and subscribe to."""

    def may_publish(subject: bytes) -> bool:
        """Whether a publish to the literal C{subject} is allowed."""

    def may_subscribe(subject: bytes, queue: Optional[bytes]) -> bool:
        """Whether a subscription to C{subject} (in C{queue}) is allowed."""

    def may_receive(subject: bytes) -> bool:
        """
        Whether a message on the literal C{subject} may be delivered: a
        wildcard subscription that was allowed may still cover subjects the
        identity must not see (subscribe to C{>} with C{secret.>} denied).
        The engine asks once per subject and subscriber, not per message.
        """


class Identity:
    """
    Who a connection is, once authenticated: a name for logs and monitoring,
    and the permissions (L{None} means unrestricted).
    """

    __slots__ = ("name", "permissions")

    def __init__(self, name: str, permissions: Optional[IPermissions] = None):
        self.name = name
        self.permissions = permissions

    def __repr__(self) -> str:
        return "<Identity {!r}>".format(self.name)


class IAuthenticator(Interface):
    """Decides whether a client's CONNECT may proceed."""

    def authenticate(connect: Dict[str, Any], peer: "PeerInfo") -> Any:
        """
        Examine the decoded CONNECT options.

        @return: an L{Identity}, or a Deferred (or coroutine) firing with
            one; fail with L{AuthenticationFailed} to refuse.  The engine
            applies the listener's auth timeout.
        """


class PeerInfo:
    """What the engine knows of the other end when it authenticates it."""

    __slots__ = ("host", "port", "certificate")

    def __init__(self, host: str, port: int, certificate: Optional[object] = None):
        self.host = host
        self.port = port
        #: The peer's verified TLS certificate, where the listener has one.
        self.certificate = certificate


def settle(result: Any) -> Any:
    """
    What a plug-in returned, as a value or a Deferred: a coroutine becomes a
    Deferred (an authenticator or a handler may be written either way).
    """
    if inspect.isawaitable(result) and not hasattr(result, "addCallbacks"):
        return ensureDeferred(cast(Any, result))
    return result
