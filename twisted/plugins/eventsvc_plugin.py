# Imports nothing of eventsvc: a broken import must never hide the plugin.
from twisted.application.service import ServiceMaker

eventsvc = ServiceMaker(
    "eventsvc",
    "eventsvc.tap",
    "eventsvc: an event service speaking the NATS protocol",
    "eventsvc",
)
