"""
The settings of a client listener, shared by its connections: what is
fixed when it is built from the configuration (L{ClientSettings}, frozen),
and the little that changes while it runs (L{ListenerState}).  Every
default comes from L{eventsvc.nats.limits}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from eventsvc.nats import limits
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
    max_payload: int = limits.MAX_PAYLOAD
    max_control_line: int = limits.MAX_CONTROL_LINE
    max_pending: int = limits.MAX_PENDING
    max_connections: int = 65536
    max_subscriptions: int = 0
    ping_interval: float = limits.PING_INTERVAL
    ping_max: int = limits.PING_MAX
    write_deadline: float = limits.WRITE_DEADLINE
    auth_timeout: float = limits.AUTH_TIMEOUT
    #: The authenticator at start (None: no authentication); a reload
    #: replaces the state's.
    authenticator: Optional[IAuthenticator] = None
    #: A TLS server context factory (or connection creator): clients are
    #: greeted in plaintext, then must upgrade to TLS on the same socket.
    tls: Optional[Any] = None
    #: Whether clients must present a certificate (said in INFO).
    tls_verify: bool = False
    tls_timeout: float = limits.TLS_TIMEOUT
    #: Seconds of parsing one read may take before the rest waits a
    #: reactor turn (None: no bound; see Framer.budget).
    parse_budget: Optional[float] = limits.PARSE_BUDGET
    #: The listening socket's backlog (nats-server leaves the system's,
    #: 4096 on current Linux, in force; Twisted's default is 50).
    listen_backlog: int = limits.LISTEN_BACKLOG
    #: An AuthThrottle (failed logins per address), or None.
    auth_throttle: Any = None
    #: Whether JetStream runs ([jetstream]): said in INFO, as nats-server
    #: does, so that clients know the $JS.API is answered; and its domain.
    jetstream: bool = False
    jetstream_domain: str = ""

    @property
    def tls_required(self) -> bool:
        return self.tls is not None


class ListenerState:
    """
    The little that changes while a listener runs, shared by its
    connections: the port it bound (INFO says it), and the authenticator,
    which a reload replaces.
    """

    __slots__ = ("port", "authenticator")

    def __init__(self, settings: ClientSettings) -> None:
        self.port = settings.port
        self.authenticator: Optional[IAuthenticator] = settings.authenticator
