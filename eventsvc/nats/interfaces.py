"""
The seams other parts of eventsvc plug into the NATS engine.

The engine defines them and calls them; it never imports an implementation.
Authentication answers a CONNECT with an L{Identity} (or a failure), and an
identity may carry L{IPermissions} that the connection consults on every
publish and subscribe.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, cast

from twisted.internet.defer import ensureDeferred

from zope.interface import Interface

if TYPE_CHECKING:  # pragma: no cover
    from eventsvc.nats.kinds import Kind
    from eventsvc.nats.subjects import Subscription


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


class ISource(Protocol):
    """
    What the broker asks of where a message comes from: a client, a link,
    the in-process API, or a gateway's routed reply.

    @ivar kind: its L{Kind}, all the delivery rule asks of who it is.
    @ivar echo: whether it wants its own publishes back.
    @ivar cluster_origin: a leaf link's leaf cluster (C{b""}: none).
    @ivar message_origin: the leaf cluster a route's C{LMSG} being
        delivered names (None: none).
    """

    kind: "Kind"
    echo: bool
    cluster_origin: bytes
    message_origin: Optional[bytes]


class ISubscriber(ISource, Protocol):
    """
    What the broker may ask of whoever holds subscriptions: client
    connections, routes, leaf links and the in-process subscriber.

    @ivar cid: its connection id (0: none, a link or the in-process subscriber).
    @ivar out: frames waiting for the next flush.
    @ivar dirty: whether it is queued for the next flush.
    @ivar headers: whether it negotiated headers (HMSG) support.
    @ivar frame_head: a remote owner's frame verb (C{b"RMSG $G "},
        C{b"LMSG "}); its messages are one frame per owner, naming queue
        groups, not one per subscription.
    @ivar may_receive: None, or whether a message on a subject may be
        delivered to it (its permissions deny some subjects that a wider
        subscription of its covers); asked once per subject, when the
        delivery plan is made.
    """

    cid: int
    out: List[bytes]
    dirty: bool
    headers: bool
    frame_head: bytes
    may_receive: Optional[Callable[[bytes], bool]]
    in_msgs: int
    in_bytes: int
    out_msgs: int
    out_bytes: int

    def flush(self) -> bool:
        """Write what C{out} holds; True asks the producer to stall."""

    def stall(self, consumer: Any) -> None:
        """Stop reading for a while: C{consumer}, which it fed, is over its stall mark."""

    def remove_subscription(self, sub: "Subscription") -> None:
        """End C{sub} (its auto-unsubscribe maximum was reached)."""
