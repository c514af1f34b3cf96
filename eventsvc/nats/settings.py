"""
The settings of a client listener, shared by its connections: what is
fixed when it is built from the configuration (L{ClientSettings}, frozen, holding the
[limits] it runs with as one L{Limits}), and the little that changes while
it runs (L{ListenerState}).  Every default comes from L{eventsvc.nats.limits}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from eventsvc.nats.greeting import Greeting
from eventsvc.nats.limits import PARSE_BUDGET, TLS_TIMEOUT, Limits
from eventsvc.nats.interfaces import IAuthenticator


@dataclass(frozen=True)
class ClientSettings:
    """
    Everything a connection needs to know about the listener it came in on,
    built once from the configuration and shared by all its connections.
    What changes while the listener runs is in L{ListenerState}.
    """

    #: The listener's name ("service", "gateway"), for logs and monitoring.
    name: str = ""
    #: Whether its clients are told the cluster's client URLs
    #: (connect_urls): the service listener's are, the gateway's not.
    advertise: bool = False
    host: str = "0.0.0.0"
    #: The port configured (0: any); the port bound is the state's.
    port: int = 4222
    #: [limits], as this listener runs with them (its own auth_timeout, if it has one).
    limits: Limits = Limits()
    max_connections: int = 65536
    #: The authenticator at start (None: no authentication); a reload
    #: replaces the state's.
    authenticator: Optional[IAuthenticator] = None
    #: A TLS server context factory (or connection creator): clients are
    #: greeted in plaintext, then must upgrade to TLS on the same socket.
    tls: Optional[Any] = None
    #: Whether clients must present a certificate (said in INFO).
    tls_verify: bool = False
    tls_timeout: float = TLS_TIMEOUT
    #: Seconds of parsing one read may take before the rest waits a
    #: reactor turn (None: no bound; see Framer.budget).
    parse_budget: Optional[float] = PARSE_BUDGET
    #: An AuthThrottle (failed logins per address), or None.
    auth_throttle: Any = None
    #: Whether JetStream runs ([jetstream]): said in INFO, as nats-server
    #: does, so that clients know the $JS.API is answered; and its domain.
    jetstream: bool = False
    jetstream_domain: str = ""

    @property
    def tls_required(self) -> bool:
        """Whether clients must upgrade to TLS (said in INFO)."""
        return self.tls is not None

    # What the connections read, from the limits (client.py reads them here).

    @property
    def max_payload(self) -> int:
        """[limits] max_payload."""
        return self.limits.max_payload

    @property
    def max_control_line(self) -> int:
        """[limits] max_control_line."""
        return self.limits.max_control_line

    @property
    def max_pending(self) -> int:
        """[limits] max_pending."""
        return self.limits.max_pending

    @property
    def max_subscriptions(self) -> int:
        """[limits] max_subscriptions (0: no limit)."""
        return self.limits.max_subscriptions

    @property
    def ping_interval(self) -> float:
        """[limits] ping_interval."""
        return self.limits.ping_interval

    @property
    def ping_max(self) -> int:
        """[limits] ping_max."""
        return self.limits.ping_max

    @property
    def write_deadline(self) -> float:
        """[limits] write_deadline."""
        return self.limits.write_deadline

    @property
    def auth_timeout(self) -> float:
        """The listener's auth_timeout ([limits], or its own section's)."""
        return self.limits.auth_timeout

    @property
    def listen_backlog(self) -> int:
        """[limits] listen_backlog: the listening socket's backlog (nats-server leaves the system's, 4096 on current Linux)."""
        return self.limits.listen_backlog


class ListenerState:
    """
    The little that changes while a listener runs, shared by its
    connections: the port it bound (INFO says it), and the authenticator,
    which a reload replaces.
    """

    __slots__ = ("port", "authenticator", "greeting")

    def __init__(self, settings: ClientSettings) -> None:
        self.port = settings.port
        self.authenticator: Optional[IAuthenticator] = settings.authenticator
        #: The INFO line the connections are greeted with, kept (greeting.Greeting).
        self.greeting = Greeting()
