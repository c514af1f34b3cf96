"""
Implementations of the engine's seams: TLS contexts, authenticators,
permissions.  The engine never imports this package; app.py wires it in.

L{TLSFilesError} lives here, not in L{eventsvc.security.tls}, so that
start-up can catch it without importing Twisted's TLS context code
(C{twisted.internet.ssl}, service_identity) for a configuration without TLS.
"""


class TLSFilesError(Exception):
    """A certificate or key file cannot be used."""
