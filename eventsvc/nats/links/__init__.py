"""
Links to other servers: the three server-to-server protocols of
nats-server 2.9 (routes, gateways, leaf nodes) and what they share.

L{connection} is the link both ends speak through (framing, output,
liveness, the peer's interest capped and let go of); L{manager} listens,
dials and redials; L{route}, L{gateway} and L{leaf} hold each protocol's
handshake, interest and messages.  Everything here stands on the core of
L{eventsvc.nats} (the broker, the parsers, the frames) and nothing in the
core imports it.
"""
