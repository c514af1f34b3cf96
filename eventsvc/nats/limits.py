"""
The engine's protocol limits, nats-server's defaults, written once: the
configuration ([limits]), the connection settings and the parsers all take
them from here.
"""

#: Largest payload a PUB/HPUB (or a routed RMSG/HMSG) may carry.
MAX_PAYLOAD = 1024 * 1024
#: Longest control line (the protocol line before a payload).
MAX_CONTROL_LINE = 4096
#: Bytes held for a slow consumer before it is closed.
MAX_PENDING = 64 * 1024 * 1024
#: Connections the kernel queues before they are accepted (a reconnect
#: storm): nats-server gets the system's, 4096 on current Linux.
LISTEN_BACKLOG = 4096
