"""
The event service proper: typed events accepted from the broker, kept in a
durable spool, and delivered to handler services at least once.

It uses the NATS engine only through C{Broker.subscribe} and
C{Broker.publish}, as any client would.
"""
