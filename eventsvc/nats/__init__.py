"""
The NATS engine: protocol, subject index, broker and listeners.

It knows nothing of events, tokens, certificates or HTTP; other packages
plug into it through L{eventsvc.nats.interfaces}.
"""
