"""
Where events go: the [handlers] targets and the event layer's services,
and the [grpc] Publish API that takes events in.

L{add_events} puts the handlers, the dispatcher and the backlog watch in
the service; L{handler_target} turns a [handlers] address (https://,
http://, grpc://, python:) into a delivery target, also on reload.
L{eventsvc.app} composes them; nothing here imports it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults

from eventsvc.config import HANDLER_NAMES, Config, address_keys, handler_address, in_file
from eventsvc.dotted import load_object
from eventsvc.nats.server import Broker
from eventsvc.service import EventService, StartupError


def add_events(config: Config, broker: Broker, reactor: Any, top: EventService) -> None:
    """
    Put the event layer in C{top}: one L{HandlerService} per [handlers]
    address, the dispatcher (with the spool when there is a data_dir) and
    the backlog watch; C{top.events} is the dispatcher.
    """
    from eventsvc.events.dispatch import EventDispatcher
    from eventsvc.events.handlers import BacklogWatch, DeadLetters, HandlerService
    from eventsvc.events.spool import Spool
    from eventsvc.events.types import Registry

    ev = config.events
    data_dir = config.service.data_dir
    dead_letters = DeadLetters(ev.dead_letter_file)
    handlers: Dict[str, HandlerService] = {}
    agents: List[Any] = []
    # Stopped after the handlers (a MultiService stops in reverse order).
    TargetConnections(handlers).setServiceParent(top)
    for name in HANDLER_NAMES:
        address = getattr(config.handlers, name)
        if not address:
            continue
        target = handler_target(name, address, config, reactor, agents)
        batch_max, batch_wait = ev.batching(name)
        handler = HandlerService(
            name, target, reactor, dead_letters,
            concurrency=ev.handler_concurrency, retry_initial=ev.retry_initial,
            retry_max=ev.retry_max, max_age=ev.max_age, batch_max=batch_max, batch_wait=batch_wait,
        )
        handler.setServiceParent(top)
        handlers[name] = handler
    spool: Any = None
    if data_dir and ev.log == "spool":
        from eventsvc.config import events_store_dir
        from eventsvc.events.log import StreamLeftBehind

        # Going back from the stream: what it still owes must not be stranded.
        StreamLeftBehind(events_store_dir(config), ev.stream, top.jetstream).setServiceParent(top)
        spool = Spool(data_dir)
    elif data_dir and (handlers or _stream_kept(config)):
        # (Without a handler no event is accepted: no stream is made, and a
        # server with [jetstream] for other uses shows only its own streams.
        # A stream made before is still the log: not a client's stream on
        # <prefix>.>, and its handlers' consumers go, L{StreamLog.open}.)
        spool = _stream_log(config, broker, reactor, top, tuple(handlers))
    def make_targets(new: Config) -> Dict[str, Any]:
        """The delivery targets of a new configuration, for the handlers that run."""
        shared: List[Any] = []
        return {
            name: handler_target(name, getattr(new.handlers, name), new, reactor, shared)
            for name in handlers if getattr(new.handlers, name)
        }

    dispatcher = EventDispatcher(
        broker, Registry(ev.routing), handlers, config.service.event_limit, reactor,
        spool=spool, prefix=ev.subject_prefix, queue_group=ev.queue_group, make_targets=make_targets,
    )
    dispatcher.setServiceParent(top)
    BacklogWatch(list(handlers.values()), reactor).setServiceParent(top)
    top.events = dispatcher


def _stream_kept(config: Config) -> bool:
    """Whether the events stream ([events] stream) was made in its store before."""
    from eventsvc.config import events_store_dir

    return os.path.exists(os.path.join(events_store_dir(config), "streams", config.events.stream, "meta.json"))


def _stream_log(config: Config, broker: Broker, reactor: Any, top: EventService, handlers: Tuple[str, ...]) -> Any:
    """
    The event log on a JetStream stream ([events] log = "stream"): on
    [jetstream]'s engine, or, without that section, on an engine of its
    own under data_dir/jetstream that answers no $JS.API (L{EventsJetStream}).
    """
    from eventsvc.config import events_store_dir
    from eventsvc.events.log import EventsJetStream, StreamLog
    from eventsvc.jetstream.engine import JetStreamService, JetStreamSettings

    ev = config.events
    engine = top.jetstream
    if engine is None:
        engine = EventsJetStream(broker, JetStreamSettings(store_dir=events_store_dir(config)), reactor)
        # Started before the dispatcher, stopped after it.
        JetStreamService(engine).setServiceParent(top)
    return StreamLog(engine, handlers, ev.subject_prefix, ev.stream, ev.stream_max_age, ev.stream_max_bytes,
                     spool_dir=config.service.data_dir)


class TargetConnections(Service):
    """At a stop, once the handlers have stopped, close what their targets keep open (gRPC connections)."""

    def __init__(self, handlers: Dict[str, Any]) -> None:
        self.setName("target-connections")
        self.handlers = handlers

    def stopService(self) -> Any:
        """
        Close every target that keeps connections open (those with a
        C{close}); fires once they are closed, so that a stop leaves no
        socket behind.
        """
        super().stopService()
        closing = []
        for handler in self.handlers.values():
            close = getattr(handler.target, "close", None)
            if close is not None:
                closing.append(close())
        waited = [d for d in closing if isinstance(d, Deferred)]
        return gatherResults(waited, consumeErrors=True) if waited else None


def handler_target(name: str, address: str, config: Config, reactor: Any, agents: List[Any]) -> Any:
    """The delivery target for a [handlers] address (one HTTP agent shared, made on first use)."""
    from eventsvc.events.handlers import CallableTarget, HTTPTarget

    if address.startswith("python:"):
        try:
            return CallableTarget(load_object(address[len("python:"):]), address)
        except ValueError as e:
            raise StartupError("{}[handlers] {}: {}".format(in_file(config), name, e))
    if address.startswith("grpc://"):
        from eventsvc.grpc.target import grpc_target

        from eventsvc.security.tls import peer_tls

        _, host, port = handler_address(address)  # type: ignore[misc]
        _, tls_client = peer_tls(config.tls.cert_path, config.tls.key_path, config.tls.root_ca_path, alpn=(b"h2",))
        return grpc_target(name, host, port, getattr(config.events, name).tls_name, reactor, tls_client, config.events.delivery_timeout)
    if not agents:
        agents.append(handler_agent(config, reactor))
    scheme, host, port = handler_address(address)  # type: ignore[misc]
    url = address if address.startswith(("http://", "https://")) else "https://{}:{}/events".format(host, port)
    return HTTPTarget(url, agents[0], reactor, config.events.delivery_timeout)


def handler_agent(config: Config, reactor: Any) -> Any:
    """An HTTP client; HTTPS with the service's mutual-TLS identity when [tls] is set."""
    from twisted.web.client import Agent, HTTPConnectionPool

    from eventsvc.events.handlers import NoDelayEndpoints

    pool = HTTPConnectionPool(reactor, persistent=True)
    # Twisted keeps 2 idle connections per host by default: with more
    # deliveries in flight, every extra one opened (and, with TLS,
    # handshook) a connection per event.
    pool.maxPersistentPerHost = config.events.handler_concurrency
    if config.tls.enabled:
        from eventsvc.security.tls import MutualTLSPolicy, load_certificates, load_identity

        policy = MutualTLSPolicy(
            load_certificates(config.tls.root_ca_path, "[tls] root_ca_path"),
            load_identity(config.tls.cert_path, config.tls.key_path, "[tls]"),
        )
        return Agent.usingEndpointFactory(reactor, NoDelayEndpoints(reactor, policy), pool=pool)
    return Agent.usingEndpointFactory(reactor, NoDelayEndpoints(reactor), pool=pool)


def grpc_listener(config: Config, broker: Broker, reactor: Any) -> Any:
    """The [grpc] listener: Chef Automate's EventService API, mutual TLS with the [tls] identity, h2 by ALPN."""
    from twisted.internet import ssl

    from eventsvc.grpc.publish import EventAPI, GRPCListener
    from eventsvc.security.tls import chain_of, load_identity, load_trust

    identity = load_identity(config.tls.cert_path, config.tls.key_path, "[tls]")
    # Twisted's own ALPN choice: a client that offers ALPN without h2 is not
    # a gRPC client, and its handshake fails.  The cert file's further
    # certificates (its intermediate CAs) are sent after its first.
    options = ssl.CertificateOptions(
        privateKey=identity.privateKey.original, certificate=identity.original, extraCertChain=chain_of(identity),
        trustRoot=load_trust(config.tls.root_ca_path, "[tls] root_ca_path"), raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        acceptableProtocols=[b"h2"],
    )
    api = EventAPI(broker, reactor, config.events.subject_prefix, config.events.delivery_timeout)
    return GRPCListener(api, config.grpc.host, config.grpc.port, options, reactor, address_keys("grpc", config),
                        max_message=config.limits.max_payload + 65536, handshake_timeout=config.tls.timeout)
