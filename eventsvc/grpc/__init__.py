"""
Chef Automate's own wire: gRPC over HTTP/2, on Twisted with h2.

C{HandleEvent} targets (L{eventsvc.grpc.target}) and the C{EventService}
API (L{eventsvc.grpc.publish}), both over mutual TLS with the [tls]
identity.  The event layer sees a target like any other (C{deliver(body)});
the API publishes on the broker as a NATS producer would.  The NATS engine
knows nothing of this package.
"""
