"""
Links to other servers: the three server-to-server protocols of
nats-server 2.9 (routes, gateways, leaf nodes) and what they share.

  - L{manager}: how a link is kept up (listening, dialling, redialling on
    Twisted's C{ClientService} with C{backoffPolicy}), one C{LinkManager}
    for all three;
  - L{connection}: C{PeerConnection}, what every link speaks through
    (framing under the clients' budget, output, liveness, the peer's
    interest capped and let go of);
  - L{route}: the cluster protocol;
  - L{gateway}: the supercluster's manager, with L{gateway_connection} (one
    connection), L{interest_modes} (what a peer wants, optimistic or
    interest-only), L{replies} (the C{_GR_} reply mapping) and
    L{gateway_messages} (what crosses, both ways);
  - L{leaf}: the leafnode protocol's manager, as hub and as spoke, with
    L{leaf_connection} (one leaf link, and the hubs we dial), and
    L{jsdomain} (which JetStream subjects a leaf link carries, by the two
    sides' domains, and a domain's mapping table).

Everything here stands on the core of L{eventsvc.nats} (the broker, the
parsers, the frames), and nothing in the core imports it.
"""
