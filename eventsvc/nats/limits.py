"""
The engine's protocol limits, nats-server's defaults, written once, and
L{Limits}, the one object that holds them: the configuration reads
[limits] into it, and every settings class (a client listener's, the
routes', the gateways', the leaf nodes') holds it instead of a copy of
each field.
"""

from dataclasses import dataclass

#: Largest payload a PUB/HPUB (or a routed RMSG/HMSG) may carry.
MAX_PAYLOAD = 1024 * 1024
#: Longest control line (the protocol line before a payload).
MAX_CONTROL_LINE = 4096
#: Bytes held for a slow consumer before it is closed.
MAX_PENDING = 64 * 1024 * 1024
#: Connections the kernel queues before they are accepted (a reconnect
#: storm): nats-server gets the system's, 4096 on current Linux.
LISTEN_BACKLOG = 4096
#: Seconds between PINGs to a quiet client or route, and how many may go
#: unanswered before it is stale.
PING_INTERVAL = 120.0
PING_MAX = 2
#: Seconds a consumer's transport may stay paused before it is cut off.
WRITE_DEADLINE = 10.0
#: Seconds a client has to send an accepted CONNECT (where one is required),
#: and to finish its TLS handshake.
AUTH_TIMEOUT = 2.0
TLS_TIMEOUT = 2.0
#: Seconds of parsing one read may take before the rest waits a reactor turn.
PARSE_BUDGET = 0.01
#: Entries of a peer's interest (subject and queue pairs) one route, gateway
#: or leaf link may hold; past it the link closes.  nats-server has no cap: this
#: one is far above what a real peer sends (a route carries one entry per
#: distinct subject and queue of the whole other server, a leaf link those of
#: one spoke) and stops a flood at about 1.3 GB (docs/configuration.md).
MAX_LINK_SUBSCRIPTIONS = 1000000


@dataclass(frozen=True)
class Limits:
    """
    nats-server's limits, with its defaults and names: the [limits]
    section as the configuration reads it, and what every listener and
    link manager runs with.  (A listener may run with its own
    C{auth_timeout}: L{dataclasses.replace} gives it its own copy.)
    """

    max_payload: int = MAX_PAYLOAD
    max_control_line: int = MAX_CONTROL_LINE
    max_pending: int = MAX_PENDING
    #: Subscriptions per client connection; 0 for no limit.
    max_subscriptions: int = 0
    #: Entries of a peer's interest per route, gateway or leaf link; 0 for
    #: no cap (docs/configuration.md says why this default).
    max_link_subscriptions: int = MAX_LINK_SUBSCRIPTIONS
    ping_interval: float = PING_INTERVAL
    ping_max: int = PING_MAX
    write_deadline: float = WRITE_DEADLINE
    auth_timeout: float = AUTH_TIMEOUT
    #: Connections the kernel may queue for each listener before they are
    #: accepted (a reconnect storm): nats-server gets the system's, 4096.
    listen_backlog: int = LISTEN_BACKLOG
