"""
eventsvc: an event service that speaks the NATS protocol, on Twisted.

C{eventsvc.app.make_service(config, reactor)} returns the whole service as a
Twisted C{MultiService}, for C{twistd eventsvc} or for embedding.
"""

__version__ = "0.1.0"
