"""
Composition: turn a L{Config} into the running service.

C{make_service(config, reactor)} is the embedding API: it returns a
C{MultiService} holding the listeners (and, as they land, routes, handlers
and monitoring) that any Twisted application can parent.  Nothing here
parses protocol or formats logs; it only wires parts together.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from eventsvc import __version__
from eventsvc.config import Config
from eventsvc.nats.client import ClientSettings
from eventsvc.nats.listener import ClientFactory, ListenError, ListenerService
from eventsvc.nats.server import Broker
from eventsvc.ops.logs import make_observer
from eventsvc.security.tls import mutual_tls_server


class EventService(MultiService):
    """
    The whole of eventsvc for one configuration.

    @ivar broker: the NATS broker, whose C{subscribe}/C{publish} is the
        in-process API.
    @ivar exit_on_error: turn a failure to start (a port in use) into a
        one-line C{SystemExit}, as a command-line program should; embedders
        leave it false and get the L{ListenError}.
    """

    log = Logger()

    def __init__(self, config: Config, broker: Broker) -> None:
        super().__init__()
        self.config = config
        self.broker = broker
        self.exit_on_error = False
        self.log_observer = make_observer(config.log.format, config.log.level)

    def setServiceParent(self, parent: Any) -> None:
        # Under twistd the parent is the Application: offer it our observer,
        # so that [log] format and level decide what twistd writes.
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        self.log.info("eventsvc {version} starting (config: {source})", version=__version__, source=self.config.source or "defaults")
        try:
            super().startService()
        except ListenError as e:
            self.stopService()
            if self.exit_on_error:
                # The real stderr: twistd has redirected sys.stderr into the
                # log by now, and twist has not started logging yet.
                stream = sys.__stderr__ or sys.stderr
                stream.write("eventsvc: {}\n".format(e))
                stream.flush()
                raise SystemExit(1)
            raise


def make_service(config: Config, reactor: Optional[Any] = None) -> EventService:
    """
    Build the service for C{config}.  C{reactor} defaults to the global one;
    pass another (or a fake) to embed or test.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    broker = Broker()
    top = EventService(config, broker)
    service, limits = config.service, config.limits
    context = None
    if config.tls.enabled:
        # Raises TLSFilesError naming the file and key.
        context = mutual_tls_server(config.tls.cert_path, config.tls.key_path, config.tls.root_ca_path)
    settings = ClientSettings(
        host=service.host,
        port=service.port,
        max_payload=limits.max_payload,
        max_control_line=limits.max_control_line,
        max_pending=limits.max_pending,
        max_connections=service.listener_limit,
        max_subscriptions=limits.max_subscriptions,
        ping_interval=limits.ping_interval,
        ping_max=limits.ping_max,
        write_deadline=limits.write_deadline,
        auth_timeout=limits.auth_timeout,
        tls=context,
        tls_verify=context is not None,
    )
    where = "[service] host and port in {}".format(config.source) if config.source else "[service] host and port"
    ListenerService("service", ClientFactory(broker, settings, reactor), service.host, service.port, reactor, where).setServiceParent(top)
    return top
