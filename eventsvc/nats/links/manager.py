"""
How a link is kept up: one manager for every kind of server link, that
listens for peers, dials the ones it was told of, and dials them again
when they drop.

Redialling is Twisted's: each peer we keep dialling (a L{DialTarget}) has
its own C{ClientService}, which dials through an endpoint, notices when the
link ends and waits before dialling again.  How long it waits is ours to
say (L{LinkManager.redial_delay}): Twisted's C{backoffPolicy}, doubling
from C{retry_initial} up to C{retry_max}, with jitter; the count it starts
from is the target's failures since its last link was I{up} (its handshake
done, not only its TCP connected: a peer that accepts and then refuses
must not be hammered), and a protocol may ask for a longer wait
(C{not_before}: a leaf loop).  A peer only heard of (gossip) is dialled
once (L{LinkManager.dial_once}).

Subclasses (L{eventsvc.nats.links.route.RouteManager},
L{eventsvc.nats.links.gateway.GatewayManager},
L{eventsvc.nats.links.leaf.LeafManager}) say what a connection is
(L{LinkManager.accepted}, L{LinkManager.dialled}) and what a link's ending
means to them; this module knows nothing of any protocol.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import SSL4ClientEndpoint, TCP4ClientEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from eventsvc.nats.errors import ListenError
from eventsvc.nats.server import Broker

#: Seconds a dial may take to connect (TCP) before it counts as failed.
DIAL_TIMEOUT = 5


def backoff(settings: Any, attempt: int, random: Callable[[], float]) -> float:
    """
    Seconds before dialling again after C{attempt} failures in a row:
    Twisted's C{backoffPolicy}, doubling from C{settings.retry_initial} up
    to C{settings.retry_max}, times a jitter of half to all of it.
    """
    policy = backoffPolicy(settings.retry_initial, settings.retry_max, factor=2.0, jitter=lambda: 0.0)
    return policy(attempt) * (0.5 + 0.5 * random())


class DialTarget:
    """
    A peer a manager keeps dialling (a configured route, a gateway, a leaf
    node's hub): its URL for the next dial, its failures in a row, and
    what the log says of it.

    @ivar attempts: dials (or links) that failed since one was last up.
    @ivar not_before: the clock's time before which it is not dialled again.
    @ivar why: why the last dial or link ended, for the log.
    @ivar connection: the connection of the latest dial (up or not).
    @ivar service: the C{ClientService} that keeps dialling it, while kept.
    """

    def __init__(self) -> None:
        self.attempts = 0
        self.not_before = 0.0
        self.why = ""
        self.connection: Any = None
        self.service: Optional[ClientService] = None

    @property
    def url(self) -> str:
        """The URL the next dial uses."""
        raise NotImplementedError

    def address(self) -> Tuple[str, int]:
        """
        The host and port to dial (from L{url}).

        @raise ValueError: the URL has no host or port.
        """
        raise NotImplementedError

    def label(self) -> str:
        """The target in the log: C{route nats-route://...}, C{gateway B}."""
        raise NotImplementedError

    def failed(self) -> None:
        """A dial or link failed: the next dial may use the next URL."""

    def up(self) -> None:
        """Its link is up (the handshake done): the next failure starts the backoff again."""
        self.attempts = 0


def host_port(url: str, scheme: str, default_port: int = 0) -> Tuple[str, int]:
    """
    The host and port of C{url} (C{scheme} is assumed when it has none).

    @raise ValueError: no host, or no port and no C{default_port}.
    """
    parts = urlsplit(url if "://" in url else scheme + "://" + url)
    port = parts.port or default_port
    if not parts.hostname or not port:
        raise ValueError(url)
    return parts.hostname, port


@implementer(IStreamClientEndpoint)
class _TargetEndpoint:
    """
    Where a target's C{ClientService} dials: the target's URL at the time
    of each dial (it may change between dials), over TLS first when the
    settings have a C{tls_client}.
    """

    def __init__(self, manager: "LinkManager", target: DialTarget) -> None:
        self.manager = manager
        self.target = target

    def connect(self, factory: Any) -> Deferred:
        """Dial the target's URL now; a failure is the manager's to hear of."""
        target, url = self.target, self.target.url
        try:
            host, port = target.address()
        except ValueError:
            self.manager.bad_url(target, url)
            return fail(ValueError(url))
        settings, clock = self.manager.settings, self.manager.clock
        if settings.tls_client is not None:
            tls = settings.tls_client(settings.tls_name or host)
            endpoint: Any = SSL4ClientEndpoint(clock, host, port, tls, timeout=DIAL_TIMEOUT)
        else:
            endpoint = TCP4ClientEndpoint(clock, host, port, timeout=DIAL_TIMEOUT)
        d: Deferred = endpoint.connect(factory)

        def failed(f: Failure) -> Failure:
            self.manager.dial_failed(target, url, f.getErrorMessage())
            return f

        return d.addErrback(failed)

    def __repr__(self) -> str:
        return "<{}>".format(self.target.label())


@implementer(ILogObserver)
def _unheard(event: Dict[str, Any]) -> None:
    """A log observer that keeps nothing."""


class _Redialling(ClientService):
    """
    Twisted's C{ClientService}, whose own log line for each retry ("Scheduling
    retry 3 to connect ...") is left out: L{LinkManager} logs the redial
    itself, with the reason, and counts failures since the link was last up
    rather than since TCP last connected, so the two would disagree.
    """

    _log = Logger(observer=_unheard)


class _Accepting(Factory):
    """The listener's factory: a connection for each peer that dials us."""

    noisy = False

    def __init__(self, manager: "LinkManager") -> None:
        self.manager = manager

    def buildProtocol(self, addr: Any) -> Any:
        """A peer that dialled us."""
        return self.manager.accepted()


class _Dialling(Factory):
    """A dial's factory: the connection to C{target}."""

    noisy = False

    def __init__(self, manager: "LinkManager", target: DialTarget) -> None:
        self.manager = manager
        self.target = target

    def buildProtocol(self, addr: Any) -> Any:
        """The connection we dialled to the target."""
        conn = self.target.connection = self.manager.dialled(self.target)
        return conn


class LinkManager(Service):
    """
    The links of one kind: a listener (when C{settings.accept}), the
    targets kept dialled, each by a C{ClientService}, and one-off dials.

    A subclass sets C{kind_label} and C{listen_what}, builds connections
    (L{accepted}, L{dialled}), and may refine L{redial_delay}.

    @ivar settings: C{host}, C{port}, C{accept}, C{limits},
        C{tls_server}, C{tls_client}, C{tls_name}, C{retry_initial},
        C{retry_max}, and what the connections read.
    @ivar port: the port bound once listening (C{settings.port} until then).
    """

    log = Logger()
    #: The configuration that sets the listener's address, for its error.
    listen_what = ""

    def __init__(self, broker: Broker, reactor: Any, settings: Any, name: str) -> None:
        self.setName(name)
        self.broker = broker
        self.clock = reactor
        self.settings = settings
        self.port = settings.port
        self.listening: Any = None
        self.random = random.Random()
        #: The targets kept dialled (each with its C{service}).
        self.kept: List[DialTarget] = []

    # -- what a subclass says -------------------------------------------------

    def accepted(self) -> Any:
        """A connection for a peer that dialled us."""
        raise NotImplementedError

    def dialled(self, target: DialTarget) -> Any:
        """A connection for our dial to C{target}."""
        raise NotImplementedError

    def redial_delay(self, target: DialTarget) -> Optional[float]:
        """
        Seconds before C{target} is dialled again (L{backoff} from its
        failures, and no sooner than its C{not_before}), or None to stop
        dialling it.
        """
        delay = backoff(self.settings, target.attempts, self.random.random)
        return max(delay, target.not_before - self.clock.seconds())

    def check_credentials(self, options: Dict[str, Any]) -> bool:
        """Whether a peer's CONNECT carries the settings' C{user} and C{password} (any, when there are none)."""
        if not self.settings.user:
            return True
        return options.get("user") == self.settings.user and options.get("pass") == self.settings.password

    # -- listening ------------------------------------------------------------

    def listen(self) -> None:
        """
        Listen for peers on C{settings.host} and C{port}, over TLS when
        C{settings.tls_server} is set (TLS first, as nats-server 2.9).

        @raise ListenError: the address cannot be bound.
        """
        s = self.settings
        factory = _Accepting(self)
        try:
            if s.tls_server is not None:
                self.listening = self.clock.listenSSL(self.port, factory, s.tls_server, interface=s.host)
            else:
                self.listening = self.clock.listenTCP(self.port, factory, backlog=s.limits.listen_backlog, interface=s.host)
        except CannotListenError as e:
            raise ListenError("cannot listen on {}:{} for {}: {}".format(s.host, self.port, self.listen_what, e.socketError))
        self.port = self.listening.getHost().port

    # -- dialling -------------------------------------------------------------

    def keep_dialling(self, target: DialTarget) -> None:
        """Dial C{target} (now, when running) and again whenever its link drops or a dial fails."""
        if target.service is not None:
            return
        target.service = _Redialling(
            _TargetEndpoint(self, target), _Dialling(self, target),
            retryPolicy=lambda failures: self._retry(target), clock=self.clock,
        )
        self.kept.append(target)
        if self.running:
            target.service.startService()

    def dial_once(self, target: DialTarget) -> None:
        """Dial C{target} once: a failure is logged (L{dial_failed}), and not tried again."""
        _TargetEndpoint(self, target).connect(_Dialling(self, target)).addErrback(lambda f: None)

    def dial_failed(self, target: DialTarget, url: str, why: str) -> None:
        """A dial to C{target} at C{url} failed (before any link): C{why} is what the log will say."""
        target.why = why

    def bad_url(self, target: DialTarget, url: str) -> None:
        """C{target}'s URL cannot be dialled: said, and it is dialled no more."""
        self.log.error("{target}: {url} is not host:port", target=target.label(), url=url)
        self._forget(target)

    def _forget(self, target: DialTarget) -> None:
        """Dial C{target} no more, from within its service's own turn (the service stops on the next)."""
        if target in self.kept:
            self.kept.remove(target)
        service, target.service = target.service, None
        if service is not None:
            self.clock.callLater(0, service.stopService)

    def _retry(self, target: DialTarget) -> float:
        """C{ClientService}'s retry policy for C{target}: our delay, said in the log."""
        if not self.running or target not in self.kept:
            return 0.0  # (the service is being stopped)
        delay = self.redial_delay(target)
        label = target.label()
        target.attempts += 1
        target.failed()
        if delay is None:
            self._forget(target)
            return 0.0
        self.log.info("{target}: {why}; dialling again in {delay:.1f}s", target=label, why=target.why, delay=delay)
        return delay

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        """Start dialling the targets kept (a subclass listens and hooks itself to the broker first)."""
        super().startService()
        for target in list(self.kept):
            if target.service is not None:
                target.service.startService()

    def stop_links(self, connections: List[Any]) -> Any:
        """
        Close C{connections} (telling nothing: we are shutting down), stop
        dialling and listening; a Deferred that fires when the listener
        has stopped (not when every link has closed: a peer that never
        answers a TLS close must not hold the process).
        """
        super().stopService()
        for conn in connections:
            conn.close(None, "server shutting down")
        for target in self.kept:
            if target.service is not None and target.service.running:
                target.service.stopService()
        if self.listening is not None:
            listening, self.listening = self.listening, None
            return listening.stopListening()
        return None

