"""
Implementations of the engine's seams: TLS contexts, authenticators,
permissions.  The engine never imports this package; app.py wires it in.
"""
