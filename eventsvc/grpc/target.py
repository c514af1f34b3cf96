"""
A C{[handlers]} target that is a Chef Automate service: C{grpc://host:port}
calls its C{HandleEvent(EventMsg)}, one call per event (the call takes one
event), concurrently on one connection.

It is a target like the HTTP one (L{eventsvc.events.handlers}): C{deliver}
returns a Deferred that fails with L{DeliveryFailed}, whose C{retry} the
handler service acts on (backoff, C{max_age}, dead letters, "target down").
Which statuses are retried is L{RETRY}'s business, and documented in
docs/events.md.
"""

from __future__ import annotations

import json
from typing import Any, Dict

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventsvc.events.handlers import DeliveryFailed
from eventsvc.grpc import wire
from eventsvc.grpc.channel import Channel, TransportError
from eventsvc.grpc.convert import ConversionError, to_message

#: The service behind each handler key in Chef Automate.
SERVICES: Dict[str, str] = {
    "event_feed": "chef.automate.domain.event_feed.api.EventFeedService",
    "cfgingest": "chef.automate.domain.ingest.EventHandlerService",
    "feed": "chef.automate.domain.compliance.ingest.ingest.ComplianceIngesterService",
}

#: Statuses that are retried: the target is down, slow or busy
#: (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED), a transaction
#: lost a race (ABORTED), or it failed without saying why (UNKNOWN: what
#: grpc-go answers for any plain Go error, such as event-feed-service's
#: store being down).  Every other status is the target's answer about
#: this event (INVALID_ARGUMENT, FAILED_PRECONDITION, UNIMPLEMENTED, ...):
#: dead-lettered.
RETRY = wire.RETRY_STATUSES | {wire.ABORTED, wire.UNKNOWN}


class GRPCTarget:
    """
    C{HandleEvent} of C{service} through C{channel}.  An OK status is
    delivered, whatever C{EventResponse.success} says: Automate's
    ingest-service answers an empty response (success false) for every
    event it handled.
    """

    log = Logger()

    def __init__(self, handler: str, address: str, channel: Channel, service: str, timeout: float) -> None:
        self.handler = handler
        self.address = address
        self.channel = channel
        self.service = service
        self.path = "/{}/HandleEvent".format(service)
        self.timeout = timeout
        #: Whether the target said UNIMPLEMENTED (warned about once).
        self.unimplemented = False

    def deliver(self, body: bytes) -> Deferred:
        try:
            request = to_message(json.loads(body)).SerializeToString()
        except (ValueError, KeyError, TypeError, AttributeError, ConversionError) as e:
            return fail(DeliveryFailed("cannot be sent as an EventMsg: {}".format(e), retry=False))
        d = self.channel.call(self.path, request, self.timeout)
        d.addCallbacks(_delivered, self._failed)
        return d

    def _failed(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, TransportError):
            raise DeliveryFailed("gRPC {}".format(error.message), retry=True)
        if not isinstance(error, wire.GRPCError):
            raise DeliveryFailed("gRPC call failed: {}: {}".format(failure.type.__name__, failure.getErrorMessage()), retry=True)
        if error.code == wire.UNIMPLEMENTED and not self.unimplemented:
            self.unimplemented = True
            self.log.warn(
                "handler {handler}: {target} answers UNIMPLEMENTED to {path}: it does not take events (Chef Automate's "
                "compliance-service answers so for every one; its Go event service only logged it), so every event "
                "routed to {handler} is dead-lettered; route those types elsewhere in [events.routing], or remove "
                "[handlers] {handler}",
                handler=self.handler, target=self.address, path=self.path,
            )
        raise DeliveryFailed("gRPC {}".format(error), retry=error.code in RETRY)

    def close(self) -> Deferred:
        """Close the connection to the target; fires once it is gone."""
        return self.channel.close()

    def __repr__(self) -> str:
        return self.address


def _delivered(response: bytes) -> None:
    """The EventResponse is not read: an OK status is the answer (see L{GRPCTarget})."""
    return None


def grpc_target(handler: str, host: str, port: int, tls_name: str, reactor: Any, tls: Any, timeout: float) -> GRPCTarget:
    """
    The target of C{[handlers] <handler> = "grpc://host:port"}: mutual TLS
    with C{tls} (a callable from the name to check to client TLS options,
    offering ALPN h2), checking the certificate against C{tls_name} or else
    the host, as Automate's Go client checks the service's name.
    """
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    endpoint = wrapClientTLS(tls(tls_name or host), HostnameEndpoint(reactor, host, port, timeout=max(1, int(timeout))))
    authority = "{}:{}".format("[{}]".format(host) if ":" in host else host, port)
    channel = Channel(endpoint, authority, reactor)
    return GRPCTarget(handler, "grpc://" + authority, channel, SERVICES[handler], timeout)
