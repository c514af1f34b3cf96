"""
The process lifecycle of one configuration: L{EventService}.

It starts and stops the parts L{eventsvc.app.make_service} put in it,
answers the health check, applies a reload (each part takes its own share,
L{IReloadable}), and runs lame duck mode and the graceful shutdown.  It
never ends the process: signals, exit statuses and stopping the reactor
belong to the process shell (L{eventsvc.runner}, L{eventsvc.tap}).

Also here: L{StartupError} (what the assembly raises for a file or
plug-in it cannot use) and L{DataDirLock}, which keeps a second process
off the same data_dir.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import fields as dataclass_fields
from typing import Any, Callable, List, Optional, Protocol, runtime_checkable

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import deferLater
from twisted.logger import Logger

from eventsvc import __version__
from eventsvc import config as config_module
from eventsvc.config import HANDLER_NAMES, Config
from eventsvc.files import FileLock, Locked
from eventsvc.nats.listener import ListenError, ListenerService
from eventsvc.nats.server import Broker
from eventsvc.ops.logs import make_observer


class EventService(MultiService):
    """
    The whole of eventsvc for one configuration.

    @ivar broker: the NATS broker, whose C{subscribe}/C{publish} is the
        in-process API.

    It never ends the process: a failure to start raises L{ListenError}
    (or L{StartupError} from L{make_service}), and L{shutdown} returns a
    Deferred that fires once everything is drained and closed.  Signals,
    exit statuses and stopping the reactor are the process shell's
    (L{eventsvc.runner}), for twistd and twist.
    """

    log = Logger()

    def __init__(self, config: Config, broker: Broker, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.broker = broker
        self.reactor = reactor
        self.log_observer = make_observer(config.log.format, config.log.level)
        #: The event dispatcher (its counters and queue depth).
        self.events: Any = None
        #: The JetStream engine ([jetstream]), or None.
        self.jetstream: Any = None
        #: "starting", "running", "lame duck" or "stopping" (what /healthz reports).
        self.state = "starting"
        self.config_loaded = time.time()
        self._told_lame_duck = False
        self._random = random.Random()
        self._health_subscription: Any = None
        self._shutting_down: Optional[Deferred] = None
        self._shut_down: List[Deferred] = []

    def startService(self) -> None:
        """
        Log what runs and what the configuration warns of, start every part
        in order, and answer the health check.

        @raise ListenError: a part cannot start (an address in use, a
            locked file); what had started is stopped again.
        """
        self.log.info("eventsvc {version} starting (config: {source})", version=__version__, source=self.config.source or "defaults")
        if self.config.service.enabled:
            self.log.info("{where}", where=config_module.where_events_are_kept(self.config))
        for warning in config_module.warnings(self.config):
            self.log.warn("{problem}", problem=warning)
        try:
            super().startService()
            self.state = "running"
            # After every listener's own line: what waits for this one knows
            # each port is bound (a port in use ends the start instead).
            self.log.info("eventsvc {version} started", version=__version__)
            # Asked through the agent listener (the health-check token) or, on a node
            # without one, through the service listener (its certificate).
            self._health_subscription = self.broker.subscribe(self.health_subject(), self._answer_health)
        except ListenError:
            self.stopService()
            raise

    def stopService(self) -> Any:
        """Stop answering the health check and stop every part (in reverse order); a Deferred."""
        self.state = "stopping"
        if self._health_subscription is not None:
            self._health_subscription.unsubscribe()
            self._health_subscription = None
        return super().stopService()

    # -- health -------------------------------------------------------------

    def health(self) -> "tuple[bool, str]":
        """
        Whether this process is fit to serve, and why not: running (not
        starting, in lame duck mode or shutting down), every configured
        route up, and the event store and every JetStream store taking
        writes.  /healthz and C{eventsvc health-check} both report this.
        """
        if self.state != "running":
            return False, "eventsvc is {}".format(_STATE_WORDS.get(self.state, self.state))
        store = self.events.store if self.events is not None else None
        if store is not None and store["state"] != "ok":
            # ("store full: no space left on device in <data_dir>"): delivering, not accepting.
            return False, store["error"]
        from eventsvc.ops.jsz import store_trouble as jetstream_store_trouble  # (JetStream's code only when asked)

        trouble = jetstream_store_trouble(self)
        if trouble is not None:
            # ("JetStream stream ORDERS store full: ..."): publishes to it are refused.
            return False, trouble
        cluster = self._named("cluster")
        if cluster is not None:
            up = {r.solicited for r in cluster.routes.values() if r.solicited}
            down = [url for url in cluster.configured if url not in up]
            if down:
                return False, "route down: {}".format(", ".join(down))
        supercluster = self._named("supercluster")
        if supercluster is not None:
            down = supercluster.down()
            if down:
                return False, "gateway down: {}".format(", ".join(down))
        leafnodes = self._named("leafnodes")
        if leafnodes is not None:
            down = leafnodes.down()
            if down:
                return False, "leaf node remote down: {}".format(", ".join(down))
        down_after = self.config.events.down_after
        if self.events is not None and down_after:
            now = self.reactor.seconds()
            down = [
                "{} ({}) for {:.0f}s: {}".format(name, h.target, h.down_for(now), h.last_error)
                for name, h in sorted(self.events.handlers.items()) if h.down_for(now) >= down_after
            ]
            if down:
                return False, "handler down: {}".format("; ".join(down))
        return True, ""

    def health_subject(self) -> str:
        """Where the health check asks (the health-check identity may): this server's own subject."""
        return "healthcheck.status." + self.broker.server_id

    def _answer_health(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        if reply:
            ok, why = self.health()
            body = {"status": "ok"} if ok else {"status": "unavailable", "error": why}
            self.broker.publish(reply, json.dumps(body).encode("utf-8"))

    # -- reload -------------------------------------------------------------

    def reload(self, new: Optional[Config] = None) -> bool:
        """
        Apply what can change while running of C{new} (by default, the
        configuration file read again): tokens, users, authenticators and
        permissions, the log level, handler addresses, routing, batching and
        event_limit.  Anything else is reported as needing a restart.  An
        invalid configuration changes nothing.  Each service takes its own
        part (L{IReloadable}).
        """
        source = new.source if new is not None else self.config.source
        try:
            if new is None:
                new = config_module.load(source)
            # Every service works out its part first: a bad one refuses the
            # whole reload before anything has changed.
            apply = [service.prepare_reload(new) for service in self if isinstance(service, IReloadable)]
        except (config_module.ConfigError, StartupError, ValueError) as e:
            self.log.error("reload refused, the running configuration stays: {error}", error=str(e))
            return False
        for step in apply:
            step()
        self.log_observer.set_level(new.log.level)
        restart = needs_restart(self.config, new)
        self.config = new
        self.config_loaded = time.time()
        self.log.info(
            "configuration reloaded from {source}{restart}",
            source=source,
            restart="; these need a restart to change: " + ", ".join(restart) if restart else "",
        )
        return True

    # -- graceful shutdown and lame duck ------------------------------------

    def shutdown(self) -> Any:
        """
        Stop taking connections, tell clients (INFO with ldm), give handlers
        up to [service] shutdown_timeout to deliver what they hold (with a
        spool, what is not delivered stays there), close the clients once
        what they are owed is written.  Returns a Deferred that fires then
        (the same one if a shutdown is already under way); the process shell
        stops the reactor when it does.
        """
        if self._shutting_down is not None:
            return self._shutting_down
        self.state = "stopping"
        timeout = self.config.service.shutdown_timeout
        self.log.info("shutting down: no new connections, up to {timeout}s to finish", timeout=timeout)
        self._shutting_down = ensureDeferred(self._shutdown(timeout))
        self._shutting_down.addBoth(self._finished_shutdown)
        return self._shutting_down

    def when_shut_down(self) -> Deferred:
        """A Deferred that fires when a shutdown (L{shutdown}, or the end of L{lame_duck}) has finished."""
        d: Deferred = Deferred()
        self._shut_down.append(d)
        return d

    def _finished_shutdown(self, result: Any) -> Any:
        waiting, self._shut_down = self._shut_down, []
        for d in waiting:
            d.callback(None)
        return result

    def lame_duck(self) -> Any:
        """
        nats-server's lame duck mode (SIGUSR2): stop taking connections, tell
        clients and routes (INFO with ldm), wait [service]
        lame_duck_grace_period, then close the clients spread over the rest
        of lame_duck_duration, so that a fleet reconnects elsewhere over
        time and not all at once; then shut down as on SIGTERM.
        """
        if self.state != "running":
            return None
        self.state = "lame duck"
        return ensureDeferred(self._lame_duck())

    async def _lame_duck(self) -> None:
        s = self.config.service
        grace, duration = s.lame_duck_grace_period, s.lame_duck_duration
        self.log.info(
            "entering lame duck mode: no new connections; closing clients in {grace}s, spread over {spread}s",
            grace=grace, spread=max(duration - grace, 0.0),
        )
        await self._stop_accepting_and_tell()
        await deferLater(self.reactor, grace, lambda: None)
        clients = self._client_connections()
        if clients and self.state == "lame duck":
            self.log.info("lame duck: closing {count} clients", count=len(clients))
        interval, batch = lame_duck_pace(len(clients), duration - grace)
        for i, conn in enumerate(clients):
            if self.state != "lame duck":
                return  # SIGTERM came: the shutdown closes the rest
            conn.close(None, "Server Shutdown")  # type: ignore[attr-defined]
            if i < len(clients) - 1 and (i + 1) % batch == 0:
                # As nats-server: a random pause of at least half the interval.
                pause = interval * (0.5 + 0.5 * self._random.random())
                await deferLater(self.reactor, pause, lambda: None)
        if self.state == "lame duck":
            self.shutdown()

    async def _stop_accepting_and_tell(self) -> None:
        """Stop every client listener, then INFO with ldm to clients and routes (once)."""
        for service in self:
            if isinstance(service, ListenerService):
                await maybeDeferred(service.stop_accepting)
        if self._told_lame_duck:
            return
        self._told_lame_duck = True
        for conn in self._client_connections():
            conn.lame_duck()  # type: ignore[attr-defined]
        cluster = self._named("cluster")
        if cluster is not None:
            cluster.lame_duck()
        self.broker.flush()

    def _client_connections(self) -> List[Any]:
        return [c for c in self.broker.clients.values() if hasattr(c, "lame_duck")]

    def _where_kept(self) -> str:
        """Where the events not yet delivered at a stop wait: the spool, or the events stream."""
        name = getattr(self.events.spool, "name", None)
        return "kept in the stream {}".format(name) if name else "kept in the spool"

    async def _shutdown(self, timeout: float) -> None:
        deadline = self.reactor.seconds() + timeout
        await self._stop_accepting_and_tell()
        handlers = list(self.events.handlers.values()) if self.events is not None else []
        durable = self.events is not None and self.events.spool is not None
        while self.reactor.seconds() < deadline:
            # With a spool only what is in flight is waited for; without
            # one, everything held is delivered or lost.
            owed = sum(h.in_flight if durable else h.backlog_size for h in handlers)
            if not owed:
                break
            await deferLater(self.reactor, 0.05, lambda: None)
        left = sum(h.backlog_size for h in handlers)
        if left:
            self.log.warn(
                "{count} events not yet delivered at shutdown: {fate}",
                count=left, fate=self._where_kept() if durable else "lost (no [service] data_dir)",
            )
        # Close the clients ourselves, and wait until each has taken what it
        # is owed (the ldm INFO, and every message held for a slow reader,
        # as nats-server sends them before its close): stopping the reactor
        # at once would drop bytes still in the transports' buffers.  The
        # wait is what is left of shutdown_timeout (half a second at
        # least); a peer that stops reading is cut after write_deadline.
        closing = self._client_connections()
        for conn in closing:
            conn.close(None, "Server Shutdown")
        linger = self.reactor.seconds() + max(deadline - self.reactor.seconds(), 0.5)
        while any(not c.lost for c in closing) and self.reactor.seconds() < linger:
            await deferLater(self.reactor, 0.01, lambda: None)

    def _named(self, name: str) -> Any:
        try:
            return self.getServiceNamed(name)
        except KeyError:
            return None


_STATE_WORDS = {"starting": "starting", "stopping": "shutting down", "lame duck": "in lame duck mode"}

_RELOADABLE = {
    ("log", "level"), ("handlers", "feed"), ("handlers", "cfgingest"), ("handlers", "event_feed"),
    ("events", "routing"), ("service", "event_limit"),
    ("events", "batch_max"), ("events", "batch_wait"),
} | {("events", name) for name in HANDLER_NAMES} | {
    # How clients log in, on both listeners that share those keys (AuthenticatedListener).
    (section, f.name) for section in ("gateway", "websocket") for f in dataclass_fields(config_module.ListenerAuthConfig)
}


def needs_restart(old: Config, new: Config) -> List[str]:
    """The keys that differ between C{old} and C{new} and take effect only after a restart ("[section] key")."""
    changed = []
    for section in ("service", "tls", "gateway", "log", "handlers", "events", "cluster", "supercluster", "leafnodes", "websocket", "console", "grpc", "monitor", "limits", "jetstream", "pypy"):
        before, after = getattr(old, section), getattr(new, section)
        for f in dataclass_fields(before):
            if getattr(before, f.name) != getattr(after, f.name) and (section, f.name) not in _RELOADABLE:
                changed.append("[{}] {}".format(section, f.name))
    for section, key in (("handlers", n) for n in HANDLER_NAMES):
        if bool(getattr(old.handlers, key)) != bool(getattr(new.handlers, key)):
            changed.append("[handlers] {} (added or removed)".format(key))
    return changed


def lame_duck_pace(clients: int, spread: float) -> "tuple[float, int]":
    """
    nats-server's pace for closing C{clients} over C{spread} seconds: the
    pause between closes (at most 1 s), and how many close per pause (more
    than one only when there are more clients than milliseconds).
    """
    if clients <= 0:
        return 0.0, 1
    if spread <= 0:
        spread = 1.0
    interval = spread / clients
    if interval < 0.001:
        return 0.001, max(1, int(clients / (spread * 1000)))
    return min(interval, 1.0), 1


class StartupError(Exception):
    """Something the configuration names cannot be used (one line, for the operator)."""


@runtime_checkable
class IReloadable(Protocol):
    """
    A service that takes what it can of a new configuration (SIGHUP).
    C{prepare_reload} works everything out and raises (ConfigError,
    StartupError, ValueError) on a bad configuration, changing nothing;
    the callable it returns applies it.
    """

    def prepare_reload(self, config: Config) -> Callable[[], None]:
        """
        Work out this service's share of C{config}.

        @return: a callable that applies it (and cannot fail).
        @raise ValueError: (or ConfigError, StartupError) C{config} cannot be
            applied; nothing has changed.
        """
        ...


class DataDirLock(Service):
    """
    Holds C{data_dir}/eventsvc.lock while the service runs: a second process
    on the same data_dir would replace the spool the first still writes to.
    Started before the spool is opened, stopped after it is closed.
    """

    def __init__(self, data_dir: str) -> None:
        """
        @param data_dir: [service] data_dir; the lock file is
            C{eventsvc.lock} in it.
        """
        self.setName("data_dir")
        self.data_dir = data_dir
        self.lock = FileLock(os.path.join(data_dir, "eventsvc.lock"))

    def startService(self) -> None:
        """
        Create the data_dir if need be and take its lock.

        @raise ListenError: it cannot be created or locked, or another
            process holds it (the line names that process).
        """
        try:
            os.makedirs(self.data_dir, exist_ok=True)
        except OSError as e:
            raise ListenError("{} ([service] data_dir): cannot create: {}".format(self.data_dir, e.strerror))
        try:
            self.lock.acquire()
        except Locked as e:
            raise ListenError(
                "{} ([service] data_dir) is in use by another eventsvc process ({}); "
                "stop it, or give this one its own data_dir".format(self.data_dir, e.holder)
            )
        except OSError as e:
            raise ListenError("{} ([service] data_dir): cannot lock: {}".format(self.data_dir, e.strerror))
        super().startService()

    def stopService(self) -> Any:
        """Let the lock go (the spool, stopped before, no longer writes)."""
        super().stopService()
        self.lock.release()

