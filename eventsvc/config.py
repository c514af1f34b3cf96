"""
Configuration: a TOML patch over built-in defaults, checked into a frozen,
typed L{Config}.

A patch names only what it changes.  Every key is checked for existence,
type and range here, so that nothing later has to; each problem is one
L{ConfigError} whose text names the file, the key and what would fix it.
This module reads files and nothing else: it opens no socket and loads no
certificate.
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union, get_args, get_origin, get_type_hints
from dataclasses import replace

from eventsvc.nats import limits
from eventsvc.ops import jit as pypy_jit

# The standard library's TOML 1.0 reader (tomli, the same code, before 3.11):
# its errors say where and what ("Invalid value (at line 3, column 8)").
if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (PyPy 3.9)
    import tomli as tomllib

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")
HANDLER_NAMES = ("feed", "cfgingest", "event_feed")


class ConfigError(Exception):
    """A problem with the configuration, as one line for the operator."""


@dataclass(frozen=True)
class ServiceConfig:
    #: Run the event service (listener and event layer); false for a gateway-only process.
    enabled: bool = True
    #: Address of the event service's NATS listener.
    host: str = "127.0.0.1"
    port: int = 10132
    #: Events accepted and not yet delivered, at most.
    event_limit: int = 100000
    #: Concurrent client connections on the service listener, at most.
    listener_limit: int = 10000
    #: Where events are kept (the spool), with the dead letters and the
    #: runtime files (the lock, the gateway's health-check token).  Not
    #: written: the state directory, L{default_state_directory}.  Empty
    #: (C{data_dir = ""}): events are held in memory only, and lost at a
    #: crash or a shutdown with a target down.
    data_dir: str = ""
    #: Seconds a graceful shutdown (SIGTERM) may take before it closes anyway.
    shutdown_timeout: float = 10.0
    #: Lame duck mode (SIGUSR2), as nats-server: clients are closed spread
    #: over this many seconds, after the grace period.
    lame_duck_duration: float = 120.0
    #: Seconds between telling clients (INFO ldm) and closing the first.
    lame_duck_grace_period: float = 10.0


@dataclass(frozen=True)
class TLSConfig:
    cert_path: str = ""
    key_path: str = ""
    root_ca_path: str = ""
    #: Seconds a client of a listener with this identity ([service], [grpc])
    #: has to finish its TLS handshake (nats-server's tls { timeout }).
    timeout: float = limits.TLS_TIMEOUT

    #: The keys that name files (they go together, and resolve against the config's folder).
    PATHS = ("cert_path", "key_path", "root_ca_path")

    @property
    def enabled(self) -> bool:
        return bool(self.cert_path or self.key_path or self.root_ca_path)


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "info"


@dataclass(frozen=True)
class HandlersConfig:
    feed: str = ""
    cfgingest: str = ""
    event_feed: str = ""


@dataclass(frozen=True)
class HandlerBatchConfig:
    """
    One handler's own batching ([events.feed], [events.cfgingest],
    [events.event_feed]); what is left out is [events]'s.
    """

    #: 0: [events] batch_max.
    batch_max: int = 0
    #: Negative: [events] batch_wait.
    batch_wait: float = -1.0
    #: For a grpc:// target: the name its certificate must carry (as
    #: Automate's Go client checks the service's name, such as
    #: "event-feed-service"); "": the host in the address.
    tls_name: str = ""


@dataclass(frozen=True)
class EventsConfig:
    """How typed events are taken in and delivered."""

    #: Events are published on <subject_prefix>.<type>.
    subject_prefix: str = "event"
    #: The handlers' queue group: in a cluster each event is handled once.
    queue_group: str = "eventsvc"
    #: Deliveries in flight per handler, at most.
    handler_concurrency: int = 8
    retry_initial: float = 1.0
    retry_max: float = 300.0
    #: Seconds after which an undeliverable event is dead-lettered (it can
    #: be replayed from there); 0: retry forever.  A day: an outage of a
    #: night or a weekend's morning is ridden out, and a target that is
    #: gone for good does not hold events, and the disk, for ever.
    max_age: float = 86400.0
    #: Seconds a handler's target may fail without a success before the
    #: handler counts as down: /healthz and health-check then report it.
    #: 0: never (only the logs say it).
    down_after: float = 300.0
    delivery_timeout: float = 30.0
    #: JSON lines of dead-lettered events (relative to data_dir, else to the config's folder).
    dead_letter_file: str = "dead-letters.jsonl"
    #: Overrides of the type -> handlers routing.
    routing: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    #: Events per delivery, at most: 1 is one event per POST (a JSON
    #: object); above 1, a POST carries a JSON array of up to this many.
    batch_max: int = 1
    #: Seconds an event may wait for others to fill its batch.
    batch_wait: float = 0.005
    #: Where accepted events are kept (with a data_dir): "stream", a
    #: JetStream stream whose durable consumers are the handlers (one store
    #: format with [jetstream], readable by any NATS client); or "spool",
    #: the event layer's own segment files (before issue 29).
    log: str = "stream"
    #: The stream's name, and how long (seconds; 0: for ever) and how many
    #: bytes (-1: no limit) of history it keeps.
    stream: str = "EVENTS"
    stream_max_age: float = 7 * 86400.0
    stream_max_bytes: int = -1
    #: Each handler's own batch_max and batch_wait.
    feed: HandlerBatchConfig = field(default_factory=HandlerBatchConfig)
    cfgingest: HandlerBatchConfig = field(default_factory=HandlerBatchConfig)
    event_feed: HandlerBatchConfig = field(default_factory=HandlerBatchConfig)

    def batching(self, handler: str) -> Tuple[int, float]:
        """C{handler}'s batch_max and batch_wait, its own where it has them."""
        own: HandlerBatchConfig = getattr(self, handler)
        return (
            own.batch_max or self.batch_max,
            own.batch_wait if own.batch_wait >= 0 else self.batch_wait,
        )


@dataclass(frozen=True)
class RoutePermissionsConfig:
    """
    What crosses this server's routes, as nats-server's cluster permissions
    (empty allow lists: everything): import, the subjects whose messages we
    take from peers (and whose interest we tell them); export, the subjects
    whose messages we send them (the interest of theirs we accept).
    """

    import_allow: Tuple[str, ...] = ()
    import_deny: Tuple[str, ...] = ()
    export_allow: Tuple[str, ...] = ()
    export_deny: Tuple[str, ...] = ()


@dataclass(frozen=True)
class ClusterConfig:
    """Routes to other servers (eventsvc or nats-server 2.9) in a full mesh."""

    enabled: bool = False
    name: str = "eventsvc"
    host: str = "0.0.0.0"
    port: int = 6222
    #: Routes to dial, as nats-route://host:port.
    routes: Tuple[str, ...] = ()
    #: Credentials routes must present (and that we present when dialling).
    user: str = ""
    password: str = ""
    #: Whether to accept routes (a gateway-only process may only dial).
    listen: bool = True
    #: Routes over mutual TLS with the [tls] identity and CA (TLS first, as nats-server 2.9).
    tls: bool = False
    #: The name peers' certificates must carry (default: the host of each dialled route).
    tls_name: str = ""
    #: Neither tell peers our service listener's URL nor our clients theirs.
    no_advertise: bool = False
    #: The host (or host:port) clients of other nodes are told for our
    #: service listener (default: its host, or this machine's addresses).
    client_advertise: str = ""
    permissions: RoutePermissionsConfig = field(default_factory=RoutePermissionsConfig)


@dataclass(frozen=True)
class RemoteGatewayConfig:
    """One gateway to dial ([[supercluster.gateways]]): its name and its servers' URLs."""

    name: str = ""
    #: nats://host:port (or host:port) of one or more of its servers.
    urls: Tuple[str, ...] = ()


@dataclass(frozen=True)
class SuperclusterConfig:
    """
    The NATS gateway protocol (nats-server's "gateway" block): this cluster
    as one of a supercluster.  Named so to keep it apart from [gateway],
    our external client listener.
    """

    enabled: bool = False
    #: This cluster's gateway name (every server of the cluster gives the same).
    name: str = ""
    host: str = "0.0.0.0"
    port: int = 7222
    #: host:port the other gateways are told to dial (default: host and port).
    advertise: str = ""
    #: Credentials gateways must present (and that we present when dialling).
    user: str = ""
    password: str = ""
    #: Gateways over mutual TLS with the [tls] identity and CA (TLS first, as nats-server 2.9).
    tls: bool = False
    #: The name peers' certificates must carry (default: the host of each dialled gateway).
    tls_name: str = ""
    gateways: Tuple[RemoteGatewayConfig, ...] = ()
    #: What crosses the gateways, as [cluster.permissions] does for routes.
    permissions: RoutePermissionsConfig = field(default_factory=RoutePermissionsConfig)


@dataclass(frozen=True)
class RemoteLeafConfig:
    """One hub to dial ([[leafnodes.remotes]]), as nats-server's leafnodes remotes."""

    #: nats-leaf://[user:password@]host:port of the hub.
    url: str = ""
    #: Or several of the hub cluster's servers, tried in turn.
    urls: Tuple[str, ...] = ()
    #: Credentials to present (a URL's own user and password come first).
    user: str = ""
    password: str = ""
    #: A token, presented as the CONNECT user (as nats-server's
    #: nats-leaf://TOKEN@host sends it): what an eventsvc hub's token checks.
    token: str = ""
    #: A NATS credentials file (.creds: a user JWT and its nkey seed), for a
    #: hub in operator mode: the hub's nonce is signed with the seed.
    credentials: str = ""
    #: TLS with the [tls] identity and CA (also implied by tls:// URLs, and
    #: done whenever the hub asks for it and [tls] is given).
    tls: bool = False
    #: The name the hub's certificate must carry (default: the host dialled).
    tls_name: str = ""
    #: Subjects not to take from the hub (our interest in them is not told,
    #: and the hub is asked not to send them), as nats-server's.
    deny_imports: Tuple[str, ...] = ()
    #: Subjects not to send the hub.
    deny_exports: Tuple[str, ...] = ()

    def all_urls(self) -> Tuple[str, ...]:
        """C{url} and C{urls}, in that order."""
        return ((self.url,) if self.url else ()) + tuple(self.urls)


@dataclass(frozen=True)
class LeafnodesConfig:
    """
    nats-server's leaf nodes (its "leafnodes" block): accept leaf nodes
    (this server as their hub), and dial hubs (this server as a spoke).
    """

    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 7422
    #: Whether to accept leaf nodes (a spoke may only dial its hubs).
    listen: bool = True
    #: Credentials leaf nodes must present: a user and password, or a token.
    user: str = ""
    password: str = ""
    token: str = ""
    #: Spokes must speak TLS, after INFO as 2.9's leaf links, with a
    #: certificate from the [tls] CA (and the [tls] identity is ours).
    tls: bool = False
    #: The name spokes' certificates must carry ("": any the CA signed).
    tls_name: str = ""
    remotes: Tuple[RemoteLeafConfig, ...] = ()


@dataclass(frozen=True)
class MonitorConfig:
    """nats-server's monitoring endpoints and Prometheus metrics, over HTTP."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8222


#: [limits]: the engine's own object (L{eventsvc.nats.limits.Limits}), read
#: as it is and held by every listener's and link manager's settings.
LimitsConfig = limits.Limits


@dataclass(frozen=True)
class FrontendTLSConfig:
    """One front-end certificate, chosen when a client asks for C{server_name}."""

    server_name: str = ""
    cert_path: str = ""
    key_path: str = ""


@dataclass(frozen=True)
class PermissionsConfig:
    """
    What an authenticated agent may do.  By default it publishes Habitat
    events and nothing else: no subscriptions, so no one else's replies
    (the Go gateway also gave _INBOX.> and, by mistake, >).  Each direction's
    allow and deny lists are a pair: a patch that sets one of them gets an
    empty other, not the default.
    """

    publish_allow: Tuple[str, ...] = ("habitat.event.*",)
    publish_deny: Tuple[str, ...] = ()
    subscribe_allow: Tuple[str, ...] = ()
    subscribe_deny: Tuple[str, ...] = (">",)


@dataclass(frozen=True)
class IdentityConfig:
    """
    One gateway identity ([[gateway.identities]]): its name, its credential
    (a token, or a user and password; plain or sha256:) and the permission
    lists it has of its own; a list it does not set is [gateway.permissions]'.
    """

    name: str = ""
    token: str = ""
    user: str = ""
    password: str = ""
    publish_allow: Optional[Tuple[str, ...]] = None
    publish_deny: Optional[Tuple[str, ...]] = None
    subscribe_allow: Optional[Tuple[str, ...]] = None
    subscribe_deny: Optional[Tuple[str, ...]] = None
    #: Its own inbox: it may subscribe to _INBOX.<name>.> (its client sets
    #: that inbox prefix) and make requests with replies there.
    private_inbox: bool = False


@dataclass(frozen=True)
class ListenerAuthConfig:
    """
    How a client listener's clients log in ([gateway], [websocket]): the
    same keys, checked by one function and built into one chain.
    """

    tokens: Tuple[str, ...] = ()
    tokens_file: str = ""
    users: Dict[str, str] = field(default_factory=dict)
    identities: Tuple[IdentityConfig, ...] = ()
    http_auth_url: str = ""
    http_auth_ttl: float = 60.0
    python_authenticator: str = ""
    permissions: PermissionsConfig = field(default_factory=PermissionsConfig)


@dataclass(frozen=True)
class GatewayConfig(ListenerAuthConfig):
    enabled: bool = False
    host: str = "0.0.0.0"
    port: int = 4222
    max_connections: int = 10000
    auth_timeout: float = limits.AUTH_TIMEOUT
    #: Seconds an agent has to finish its TLS handshake (nats-server's tls { timeout }).
    tls_timeout: float = limits.TLS_TIMEOUT
    disable_frontend_tls: bool = False
    frontend_tls: Tuple[FrontendTLSConfig, ...] = ()
    health_token_file: str = "gateway-health.token"


@dataclass(frozen=True)
class WebSocketConfig(ListenerAuthConfig):
    """
    NATS over WebSocket, for browsers (nats-server's websocket block).  TLS
    is under the WebSocket (wss://), from cert_path and key_path, unless
    no_tls.  Clients authenticate as at the gateway, with the same keys.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8080
    no_tls: bool = False
    cert_path: str = ""
    key_path: str = ""
    #: Refuse pages whose Origin is not this listener's own host and port.
    same_origin: bool = False
    #: Pages allowed to connect ("https://console.example.com"); empty: any.
    allowed_origins: Tuple[str, ...] = ()
    #: permessage-deflate, when the client offers it.
    compression: bool = False
    #: Seconds a connection has to finish the HTTP upgrade.
    handshake_timeout: float = 2.0
    max_connections: int = 10000
    auth_timeout: float = limits.AUTH_TIMEOUT


@dataclass(frozen=True)
class ConsoleConfig:
    """
    The live console page, served by the monitor at /.  It connects to the
    [websocket] listener as one of its identities (a read-only one: the
    page can do only what that identity's permissions allow).
    """

    enabled: bool = False
    #: The name of a [[websocket.identities]] entry.
    identity: str = "console"
    #: Where the page connects ("" : ws:// or wss:// to the page's own host
    #: and the [websocket] port).
    websocket_url: str = ""


@dataclass(frozen=True)
class GRPCConfig:
    """
    Chef Automate's gRPC EventService API (Publish, Subscribe, Start,
    Stop), over mutual TLS with the [tls] identity; on when written.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    #: Automate's event service serves it on 10132, which is [service]
    #: port (NATS) here.
    port: int = 10133


@dataclass(frozen=True)
class JetStreamConfig:
    """
    nats-server's JetStream on this server (streams, consumers, the
    $JS.API); on when written.
    """

    enabled: bool = False
    #: Where streams and consumers are kept (relative to the configuration
    #: file's folder); "" (not written): <state directory>/jetstream,
    #: the folder [service] data_dir defaults to.
    store_dir: str = ""
    #: Bytes all memory streams may hold ("1G", "512M" or a number); -1:
    #: 75% of the machine's memory, as nats-server.
    max_memory_store: int = -1
    #: Bytes all file streams may hold; -1: 75% of the disk space free
    #: under store_dir at start, as nats-server.
    max_file_store: int = -1
    #: The JetStream domain ("": none): the API is also $JS.<domain>.API.>.
    domain: str = ""
    #: How often the file store syncs to the disk ("2m", "30s"), or
    #: "always" (after every write).
    sync_interval: str = "2m"
    #: The account's limits, as a nats-server account's jetstream block
    #: (eventsvc has one account): streams it may have, consumers one
    #: stream may have, the largest max_ack_pending of a consumer; 0 or
    #: -1: none.
    max_streams: int = -1
    max_consumers: int = -1
    max_ack_pending: int = -1
    #: The largest max_bytes a memory (file) stream may have ("1M" or a
    #: number); 0 or -1: none.
    memory_max_stream_bytes: int = -1
    storage_max_stream_bytes: int = -1
    #: Whether every stream must have a max_bytes.
    max_bytes_required: bool = False


@dataclass(frozen=True)
class PyPyConfig:
    """What eventsvc sets at start-up when it runs on PyPy (nothing on CPython)."""

    #: PyPy's JIT parameters, as C{pypy --jit} takes them ("threshold=300,
    #: function_threshold=500"), over PyPy's own; "": eventsvc sets none
    #: (PyPy's own, or C{pypy --jit}'s); "off": no JIT (L{eventsvc.ops.jit}).
    jit: str = pypy_jit.DEFAULT


@dataclass(frozen=True)
class Config:
    service: ServiceConfig = field(default_factory=ServiceConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    log: LogConfig = field(default_factory=LogConfig)
    handlers: HandlersConfig = field(default_factory=HandlersConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    supercluster: SuperclusterConfig = field(default_factory=SuperclusterConfig)
    leafnodes: LeafnodesConfig = field(default_factory=LeafnodesConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    grpc: GRPCConfig = field(default_factory=GRPCConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    jetstream: JetStreamConfig = field(default_factory=JetStreamConfig)
    pypy: PyPyConfig = field(default_factory=PyPyConfig)
    #: The file this came from ("" for the defaults).
    source: str = ""


_SECTIONS = {
    "service": ServiceConfig,
    "gateway": GatewayConfig,
    "tls": TLSConfig,
    "log": LogConfig,
    "handlers": HandlersConfig,
    "events": EventsConfig,
    "cluster": ClusterConfig,
    "supercluster": SuperclusterConfig,
    "leafnodes": LeafnodesConfig,
    "websocket": WebSocketConfig,
    "console": ConsoleConfig,
    "grpc": GRPCConfig,
    "monitor": MonitorConfig,
    "limits": LimitsConfig,
    "jetstream": JetStreamConfig,
    "pypy": PyPyConfig,
}


def load(path: str) -> Config:
    """
    Read the TOML patch at C{path} over the defaults.

    @raise ConfigError: the file cannot be read, is not TOML, or holds a
        key that is unknown, of the wrong type or out of range.
    """
    try:
        # utf-8-sig: a byte-order mark some Windows editors write is not a syntax error.
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("{}: cannot read the configuration: {}".format(path, e.strerror or e))
    except UnicodeDecodeError as e:
        raise ConfigError("{}: not UTF-8 text: {}".format(path, e))
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> Config:
    """Like L{load}, from text; relative paths resolve against C{path}'s folder."""
    try:
        patch = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(toml_error(path, text, e))
    return from_mapping(patch, path)


_WHERE = re.compile(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$")
_KEY_TUPLE = re.compile(r"\(((?:'[^']*'(?:, )?)+),?\)")


def toml_error(path: str, text: str, error: Exception) -> str:
    """
    One line for a TOML syntax error, as for the semantic ones: the file,
    the line and column, what is wrong, and the line itself.
    """
    message = str(error)
    where = _WHERE.search(message)
    message = message[: where.start()] if where else message
    # "Cannot declare ('a', 'b') twice": name the table as it is written.
    message = _KEY_TUPLE.sub(lambda m: ".".join(re.findall(r"'([^']*)'", m.group(1))), message)
    message = message[:1].lower() + message[1:]
    if where and where.group(1):
        number, column = int(where.group(1)), int(where.group(2))
        lines = text.splitlines()
        shown = lines[number - 1].strip() if 0 < number <= len(lines) else ""
        return "{}: line {}, column {}: not valid TOML: {}{}".format(
            path, number, column, message, ": {}".format(shown) if shown else "")
    return "{}: not valid TOML: {}{}".format(path, message, " at the end of the file" if where else "")


def from_mapping(patch: Mapping[str, Any], path: str = "<config>") -> Config:
    """Build a L{Config} from an already decoded patch."""
    base = os.path.dirname(os.path.abspath(path)) if path and not path.startswith("<") else os.getcwd()
    sections: Dict[str, Any] = {}
    for name, value in patch.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(
                "{}: unknown section [{}] (known: {})".format(path, name, ", ".join(sorted(_SECTIONS)))
            )
        if not isinstance(value, dict):
            raise ConfigError("{}: [{}] must be a table, not a {}".format(path, name, _kind(value)))
        if "enabled" in _field_names(cls) and "enabled" not in value:
            # As nats-server: a section that is written is on, unless it
            # says enabled = false (absent sections keep their defaults).
            value = dict(value, enabled=True)
        if name == "jetstream":
            value = _jetstream_sizes(path, value)
        sections[name] = _section(path, name, cls, value)
    for name in ("gateway", "websocket"):
        if name in patch and isinstance(patch[name].get("permissions"), dict):
            sections[name] = replace(sections[name], permissions=_pair_lists(sections[name].permissions, patch[name]["permissions"]))
    config = Config(source=path, **sections)
    _check(config, path)
    if config.tls.enabled:
        config = _resolve_tls(config, base, path)
    gw = config.gateway
    written = patch.get("service")
    if isinstance(written, dict) and "data_dir" in written:
        data_dir = _resolve(base, config.service.data_dir)
    else:
        data_dir = default_state_directory(path)
    if config.leafnodes.remotes:
        config = replace(config, leafnodes=replace(config.leafnodes, remotes=tuple(
            replace(r, credentials=_resolve(base, r.credentials)) for r in config.leafnodes.remotes
        )))
    ws = config.websocket
    js = config.jetstream
    if js.enabled:
        store_dir = _resolve(base, js.store_dir) if js.store_dir else (os.path.join(data_dir, "jetstream") if data_dir else "")
        config = replace(config, jetstream=replace(js, store_dir=store_dir))
    config = replace(
        config,
        service=replace(config.service, data_dir=data_dir),
        websocket=replace(
            ws, tokens_file=_resolve(base, ws.tokens_file),
            cert_path=_resolve(base, ws.cert_path), key_path=_resolve(base, ws.key_path),
        ),
        events=replace(config.events, dead_letter_file=_resolve(data_dir or base, config.events.dead_letter_file)),
        gateway=replace(
            gw,
            tokens_file=_resolve(base, gw.tokens_file),
            health_token_file=_resolve(data_dir or base, gw.health_token_file),
            frontend_tls=tuple(
                replace(e, cert_path=_resolve(base, e.cert_path), key_path=_resolve(base, e.key_path))
                for e in gw.frontend_tls
            ),
        ),
    )
    return config


def warnings(config: Config) -> List[str]:
    """
    What will run but may refuse or lose events, or does not mean what it
    seems to: C{check-config} prints these, and start-up logs them.
    """
    out: List[str] = []
    path = config.source or "the configuration"
    if config.jetstream.enabled and not config.jetstream.store_dir:
        out.append(
            "{}: [jetstream] has no store_dir (and there is no state directory), so streams are kept in memory "
            "only: every stream, message and consumer is lost when the process stops (name a folder in "
            "[jetstream] store_dir)".format(path)
        )
    if config.jetstream.enabled and config.cluster.enabled:
        out.append(
            "{}: [jetstream] with [cluster]: this node's streams are its own (there is no clustered JetStream), and "
            "its $JS.API is answered for the whole cluster through the routes; give [jetstream] to one node of the "
            "cluster: a route between two servers that both run JetStream is refused (each answers only its own "
            "clients then), and a JetStream cluster is nats-server's, reached over a leaf link".format(path)
        )
    if not config.service.enabled:
        return out
    if not config.service.data_dir:
        out.append(
            "{}: [service] data_dir is empty, so events are kept in memory only: every event acknowledged and not yet "
            "delivered is lost if the process crashes, or stops while a target is down (remove the key to keep them "
            "in the state directory, or name a folder)".format(path)
        )
    ev = config.events
    if config.service.data_dir and ev.log == "stream" and ev.stream_max_age > 0 and (ev.max_age == 0 or ev.max_age > ev.stream_max_age):
        out.append(
            "{}: [events] stream_max_age ({:g}s) is shorter than the time a handler may retry an event ([events] max_age: "
            "{}), so an event its target refuses that long leaves the stream's history and is not delivered after a "
            "restart (make stream_max_age longer, or 0)".format(path, ev.stream_max_age, "{:g}s".format(ev.max_age) if ev.max_age else "for ever")
        )
    from eventsvc.events.types import Registry

    registry = Registry(config.events.routing)
    for name in HANDLER_NAMES:
        types = registry.routed_to(name)
        address = getattr(config.handlers, name)
        if types and not address:
            out.append("{}: [handlers] {} has no address, so {} will be refused (set it, or route them elsewhere in [events.routing])".format(
                path, name, ", ".join(types)))
        if address and not address.startswith(("python:", "http://", "https://", "grpc://")):
            _, host, port = handler_address(address)  # type: ignore[misc]
            trust = "with the [tls] identity" if config.tls.enabled else "trusting the system's CAs (no [tls])"
            out.append(
                "{}: [handlers] {} = {!r} means POST https://{}:{}/events, {}; write that URL to say so. In Chef "
                "Automate this key named a gRPC HandleEvent service, which does not take these POSTs: for that write "
                "grpc://{}:{} (see \"Coming from Chef Automate\" in docs/events.md)".format(
                    path, name, address, host, port, trust, host, port)
            )
    return out


_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024 ** 2, "mb": 1024 ** 2, "g": 1024 ** 3, "gb": 1024 ** 3,
               "t": 1024 ** 4, "tb": 1024 ** 4}
_SIZE = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")


def parse_size(value: Any) -> Optional[int]:
    """A size as nats-server reads one (C{1073741824}, C{"1G"}, C{"512MB"}; 1024-based), or None if it is not one."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        return None
    match = _SIZE.match(value)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        return None
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_duration(text: str) -> Optional[float]:
    """Seconds of a duration such as C{"2m"}, C{"30s"}, C{"500ms"}, C{"1h"}, or None."""
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


#: [jetstream]'s keys that are sizes in bytes.
_JETSTREAM_SIZES = ("max_memory_store", "max_file_store", "memory_max_stream_bytes", "storage_max_stream_bytes")


def _jetstream_sizes(path: str, values: Dict[str, Any]) -> Dict[str, Any]:
    """[jetstream]'s sizes, written as numbers or as "1G", read into bytes."""
    values = dict(values)
    for key in _JETSTREAM_SIZES:
        if key in values:
            size = parse_size(values[key])
            if size is None:
                raise ConfigError("{}: [jetstream] {}: must be a size in bytes, such as 1073741824 or \"1G\" "
                                  "(K, M, G, T: 1024-based), got {!r}".format(path, key, values[key]))
            values[key] = size
    return values


def where_events_are_kept(config: Config) -> str:
    """One line for check-config and the start-up log: where events are kept, and what that promises."""
    if not config.service.data_dir:
        return "events are kept in memory only ([service] data_dir = \"\"): lost at a crash"
    if config.events.log == "spool":
        return "events are kept in {} (the spool: an acknowledged event survives a crash and a restart)".format(config.service.data_dir)
    return "events are kept in {} (the JetStream stream {} under {}: an acknowledged event survives a crash and a restart)".format(
        config.service.data_dir, config.events.stream, events_store_dir(config))


def events_store_dir(config: Config) -> str:
    """Where the events stream is kept: [jetstream] store_dir when it is on, else data_dir's jetstream folder."""
    if config.jetstream.enabled and config.jetstream.store_dir:
        return config.jetstream.store_dir
    return os.path.join(config.service.data_dir, "jetstream")


def in_file(config: Config) -> str:
    """The configuration file, as the start of an error line naming one of its keys ("" without a file)."""
    return "{}: ".format(config.source) if config.source else ""


def address_keys(section: str, config: Config) -> str:
    """Which keys set C{section}'s listening address, for a "cannot listen" line."""
    keys = "[{}] host and port".format(section)
    return "{} in {}".format(keys, config.source) if config.source else keys


def default_state_directory(path: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """
    Where events and runtime files are kept when C{[service] data_dir} is
    not written: systemd's C{$STATE_DIRECTORY} (the unit's
    C{StateDirectory=}; its first entry when it names several), else a
    folder beside the configuration file named after it
    (C{/etc/eventsvc/patch.toml} -> C{/etc/eventsvc/patch.state}), so that
    two configurations in one folder never share a spool.  A configuration
    read from no file has no folder to be beside: "" (memory only, and
    start-up warns) unless C{$STATE_DIRECTORY} is set.
    """
    environ = os.environ if environ is None else environ
    state = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return os.path.abspath(state)
    if not path or path.startswith("<"):
        return ""
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(os.path.dirname(os.path.abspath(path)), stem + ".state")


def _pair_lists(permissions: "PermissionsConfig", written: Mapping[str, Any]) -> "PermissionsConfig":
    """
    Allow and deny lists go in pairs: a patch that writes one list of a
    direction gets an empty other one, not the default (subscribe_allow
    = ["x.>"] must not keep the default subscribe_deny = [">"]).
    """
    changes: Dict[str, Tuple[str, ...]] = {}
    for direction in ("publish", "subscribe"):
        allow, deny = direction + "_allow", direction + "_deny"
        if (allow in written) != (deny in written):
            changes[deny if allow in written else allow] = ()
    return replace(permissions, **changes)


def _field_names(cls: type) -> "set[str]":
    return {f.name for f in fields(cls)}


def _resolve(base: str, value: str) -> str:
    return value if not value or os.path.isabs(value) else os.path.normpath(os.path.join(base, value))


def _link_subjects(permissions: "RoutePermissionsConfig") -> List[Tuple[str, str]]:
    """Every (key, subject) of a link's import/export lists ([cluster] or [supercluster] permissions)."""
    return [(key, subject) for key in ("import_allow", "import_deny", "export_allow", "export_deny") for subject in getattr(permissions, key)]


def _valid_subject(subject: str) -> bool:
    from eventsvc.nats.subjects import valid_subject

    return valid_subject(subject.encode("utf-8"))


def _valid_secret(value: str) -> bool:
    """A plain secret, or sha256: and 64 hex digits."""
    return not value.startswith("sha256:") or (len(value) == 71 and all(c in "0123456789abcdefABCDEF" for c in value[7:]))


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _field_types(cls: type) -> Dict[str, Any]:
    """The real types of a section's fields (annotations are strings here: postponed evaluation)."""
    types = _TYPES.get(cls)
    if types is None:
        types = _TYPES[cls] = get_type_hints(cls)
    return types


_TYPES: Dict[type, Dict[str, Any]] = {}


def _unwrap_optional(kind: Any) -> Any:
    """C{Optional[X]} is read as C{X} (None is only ever a default)."""
    if get_origin(kind) is Union:
        args = [a for a in get_args(kind) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return kind


def _section(path: str, name: str, cls: type, values: Dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    types = _field_types(cls)
    kwargs: Dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(
                "{}: [{}] {}: unknown key (known: {})".format(path, name, key, ", ".join(sorted(known)))
            )
        kwargs[key] = _value(path, name, key, _unwrap_optional(types[key]), value)
    return cls(**kwargs)


def _value(path: str, name: str, key: str, kind: Any, value: Any) -> Any:
    """One key's value, checked against its field's type."""
    where = "[{}] {}".format(name, key)
    origin, args = get_origin(kind), get_args(kind)
    if isinstance(kind, type) and is_dataclass(kind):
        if not isinstance(value, dict):
            raise ConfigError("{}: {}: must be a table, got {}".format(path, where, _kind(value)))
        return _section(path, "{}.{}".format(name, key), kind, value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = args[0]
        if isinstance(item, type) and is_dataclass(item):
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError("{}: {}: must be an array of tables ([[{}.{}]])".format(path, where, name, key))
            return tuple(_section(path, "{}.{}".format(name, key), item, v) for v in value)
        if item is str:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError("{}: {}: must be a list of strings, got {!r}".format(path, where, value))
            return tuple(value)
    if origin is dict and args and args[0] is str:
        inner = args[1]
        if get_origin(inner) is tuple and get_args(inner) == (str, Ellipsis):
            if not isinstance(value, dict) or not all(
                isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value.values()
            ):
                raise ConfigError("{}: {}: must be a table of lists of strings".format(path, where))
            return {k: tuple(v) for k, v in value.items()}
        if inner is str:
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise ConfigError("{}: {}: must be a table of strings".format(path, where))
            return dict(value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError("{}: {}: must be true or false, got {} {!r}".format(path, where, _kind(value), value))
        return value
    if kind in (int, float, str):
        ok = (
            (kind is int and isinstance(value, int) and not isinstance(value, bool))
            or (kind is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (kind is str and isinstance(value, str))
        )
        if not ok:
            raise ConfigError(
                "{}: {}: must be {}, got {} {!r}".format(
                    path, where, {int: "an integer", float: "a number", str: "a string"}[kind], _kind(value), value
                )
            )
        return float(value) if kind is float else value
    raise TypeError("[{}] {}: no reader for fields of type {!r}".format(name, key, kind))


#: How a checker reports a problem: fail(section, key, problem) raises ConfigError.
_Fail = Callable[[str, str, str], None]


def _check_service(config: Config, fail: _Fail) -> None:
    """[service]: its address, limits and shutdown timings."""
    s = config.service
    if not s.host:
        fail("service", "host", "must not be empty (use 0.0.0.0 for every interface)")
    if not 0 <= s.port <= 65535:
        fail("service", "port", "must be between 0 and 65535, got {}".format(s.port))
    if s.event_limit < 1:
        fail("service", "event_limit", "must be at least 1, got {}".format(s.event_limit))
    if s.listener_limit < 1:
        fail("service", "listener_limit", "must be at least 1, got {}".format(s.listener_limit))
    if not s.shutdown_timeout > 0:
        fail("service", "shutdown_timeout", "must be a positive number of seconds, got {}".format(s.shutdown_timeout))
    if not s.lame_duck_duration > 0:
        fail("service", "lame_duck_duration", "must be a positive number of seconds, got {}".format(s.lame_duck_duration))
    if not 0 <= s.lame_duck_grace_period < s.lame_duck_duration:
        fail("service", "lame_duck_grace_period", "must be 0 or more seconds and less than lame_duck_duration ({}), got {}".format(
            s.lame_duck_duration, s.lame_duck_grace_period))


def _check_log(config: Config, fail: _Fail) -> None:
    """[log]: format and level."""
    lg = config.log
    if lg.format not in LOG_FORMATS:
        fail("log", "format", "must be one of {}, got {!r}".format(", ".join(LOG_FORMATS), lg.format))
    if lg.level not in LOG_LEVELS:
        fail("log", "level", "must be one of {}, got {!r}".format(", ".join(LOG_LEVELS), lg.level))


def _check_handlers(config: Config, fail: _Fail) -> None:
    """[handlers]: every address is one we can deliver to ([events.<name>] tls_name only for grpc://)."""
    for name in HANDLER_NAMES:
        address = getattr(config.handlers, name)
        if address and not address.startswith("python:"):
            target = handler_address(address)
            if target is None:
                fail("handlers", name, "must be host:port, an http:// or https:// URL, grpc://host:port, or python:module:callable, got {!r}".format(address))
            elif target[1] in _ANY_ADDRESS:
                fail("handlers", name, (
                    "{!r} names no host to deliver to ({} is where a server listens, on every interface); write the "
                    "target's own address: grpc://<host>:{} for a Chef Automate service's HandleEvent (see \"Coming "
                    "from Chef Automate\" in docs/events.md), or an https:// URL for an HTTP target"
                ).format(address, target[1], target[2]))
            elif target[0] == "grpc" and not config.tls.enabled:
                fail("handlers", name, (
                    "{!r} is a gRPC target, called over mutual TLS with the [tls] identity (as Chef Automate's services "
                    "require): set [tls] cert_path, key_path and root_ca_path"
                ).format(address))
        if getattr(config.events, name).tls_name and not address.startswith("grpc://"):
            fail("events." + name, "tls_name", "names the certificate of a grpc:// target, and [handlers] {} is {!r}".format(
                name, address))


def _check_events(config: Config, fail: _Fail) -> None:
    """[events]: subjects, retries, batching (also per handler) and routing."""
    from eventsvc.events.types import EVENT_TYPES

    ev = config.events
    if not ev.subject_prefix or not _valid_subject(ev.subject_prefix) or "*" in ev.subject_prefix.split(".") or ">" in ev.subject_prefix.split("."):
        fail("events", "subject_prefix", "must be a literal subject such as \"event\", got {!r}".format(ev.subject_prefix))
    if not ev.queue_group or not _valid_subject(ev.queue_group):
        fail("events", "queue_group", "must be a name without spaces, got {!r}".format(ev.queue_group))
    if ev.handler_concurrency < 1:
        fail("events", "handler_concurrency", "must be at least 1")
    if not ev.retry_initial > 0:
        fail("events", "retry_initial", "must be a positive number of seconds")
    if ev.retry_max < ev.retry_initial:
        fail("events", "retry_max", "must be at least retry_initial ({})".format(ev.retry_initial))
    if ev.max_age < 0:
        fail("events", "max_age", "must be 0 (retry forever) or more seconds")
    if ev.down_after < 0:
        fail("events", "down_after", "must be 0 (never reported) or more seconds, got {}".format(ev.down_after))
    if not ev.delivery_timeout > 0:
        fail("events", "delivery_timeout", "must be a positive number of seconds")
    if ev.log not in ("stream", "spool"):
        fail("events", "log", "must be \"stream\" (a JetStream stream) or \"spool\" (the event layer's own files), got {!r}".format(ev.log))
    if not ev.stream or any(c in ev.stream for c in " .*>\t\r\n/\\") or len(ev.stream) > 255:
        fail("events", "stream", "must be a stream name (no spaces, dots, wildcards or slashes), got {!r}".format(ev.stream))
    if ev.stream_max_age < 0:
        fail("events", "stream_max_age", "must be 0 (keep for ever) or more seconds, got {}".format(ev.stream_max_age))
    if ev.stream_max_bytes == 0 or ev.stream_max_bytes < -1:
        fail("events", "stream_max_bytes", "must be -1 (no limit) or a positive number of bytes, got {}".format(ev.stream_max_bytes))
    for where, batch_max, batch_wait in [("events", ev.batch_max, ev.batch_wait)] + [
        ("events." + name, getattr(ev, name).batch_max, getattr(ev, name).batch_wait) for name in HANDLER_NAMES
    ]:
        inherit = where != "events"
        if not (1 <= batch_max <= 10000 or (inherit and batch_max == 0)):
            fail(where, "batch_max", "must be between 1 and 10000{}, got {}".format(" (0: [events] batch_max)" if inherit else "", batch_max))
        if not (0 <= batch_wait <= 60 or (inherit and batch_wait < 0)):
            fail(where, "batch_wait", "must be between 0 and 60 seconds{}, got {}".format(" (negative: [events] batch_wait)" if inherit else "", batch_wait))
    for type_name, handlers in ev.routing.items():
        if type_name not in EVENT_TYPES:
            fail("events.routing", type_name, "unknown event type (known: {})".format(", ".join(EVENT_TYPES)))
        for handler in handlers:
            if handler not in HANDLER_NAMES:
                fail("events.routing", type_name, "unknown handler {!r} (known: {})".format(handler, ", ".join(HANDLER_NAMES)))


def _check_gateway(config: Config, fail: _Fail) -> None:
    """[gateway], the agents' listener: its address, front-end TLS and logins."""
    s, gw = config.service, config.gateway
    if gw.enabled:
        if not 0 <= gw.port <= 65535:
            fail("gateway", "port", "must be between 0 and 65535, got {}".format(gw.port))
        if gw.port and gw.port == s.port and gw.host == s.host:
            fail("gateway", "port", "is the service's port too ({}); give them different ports".format(gw.port))
        if gw.max_connections < 1:
            fail("gateway", "max_connections", "must be at least 1, got {}".format(gw.max_connections))
        if not gw.auth_timeout > 0:
            fail("gateway", "auth_timeout", "must be a positive number of seconds")
        _check_tls_timeout(fail, "gateway", "tls_timeout", gw.tls_timeout)
        if not gw.http_auth_ttl >= 0:
            fail("gateway", "http_auth_ttl", "must be 0 or more seconds")
        if not gw.disable_frontend_tls and not gw.frontend_tls:
            fail("gateway", "frontend_tls", "needs at least one [[gateway.frontend_tls]] entry, or disable_frontend_tls = true")
        for i, entry in enumerate(gw.frontend_tls):
            for key in ("server_name", "cert_path", "key_path"):
                if not getattr(entry, key):
                    fail("gateway.frontend_tls", key, "missing in entry {}".format(i + 1))
        _check_auth("gateway", gw, fail)


def _check_auth(name: str, sec: Any, fail: _Fail) -> None:
    """The authentication keys a client listener shares ([gateway], [websocket])."""
    if not (sec.tokens or sec.tokens_file or sec.users or sec.identities or sec.http_auth_url or sec.python_authenticator):
        fail(name, "tokens", "no way for {} to authenticate: set tokens".format("agents" if name == "gateway" else "clients") + ", tokens_file, users, identities, http_auth_url or python_authenticator")
    for token in sec.tokens:
        if not _valid_secret(token):
            fail(name, "tokens", "a sha256: entry needs 64 hex digits")
    names, users = set(), set(sec.users)
    for i, ident in enumerate(sec.identities):
        where = "entry {} ({})".format(i + 1, ident.name or "no name")
        if not ident.name:
            fail(name + ".identities", "name", "missing in " + where)
        if ident.name in names:
            fail(name + ".identities", "name", "{!r} is used twice".format(ident.name))
        names.add(ident.name)
        if bool(ident.token) == bool(ident.user or ident.password):
            fail(name + ".identities", "token", "{}: give a token, or a user and password (one of the two)".format(where))
        if ident.user and not ident.password or ident.password and not ident.user:
            fail(name + ".identities", "user", "{}: a user needs a password, and a password a user".format(where))
        if ident.user in users:
            fail(name + ".identities", "user", "{}: user {!r} is listed twice (here or in [{}.users])".format(where, ident.user, name))
        if ident.user:
            users.add(ident.user)
        for key in ("token", "password"):
            if not _valid_secret(getattr(ident, key)):
                fail(name + ".identities", key, "{}: a sha256: entry needs 64 hex digits".format(where))
        if ident.private_inbox and any(c in ident.name for c in ".*> \t\r\n"):
            fail(name + ".identities", "private_inbox", "{}: the name becomes the inbox _INBOX.<name>: use a name without dots, wildcards or spaces".format(where))
        for key in ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny"):
            for subject in getattr(ident, key) or ():
                if not _valid_subject(subject):
                    fail(name + ".identities", key, "{}: {!r} is not a valid subject".format(where, subject))
    if sec.http_auth_url and not sec.http_auth_url.startswith(("http://", "https://")):
        fail(name, "http_auth_url", "must be an http:// or https:// URL")
    for key in ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny"):
        for subject in getattr(sec.permissions, key):
            if not _valid_subject(subject):
                fail(name + ".permissions", key, "{!r} is not a valid subject".format(subject))


def _check_cluster(config: Config, fail: _Fail) -> None:
    """[cluster]: name, routes, advertised address, permissions, TLS."""
    cl = config.cluster
    if cl.enabled:
        if not 0 <= cl.port <= 65535:
            fail("cluster", "port", "must be between 0 and 65535, got {}".format(cl.port))
        if not cl.name or " " in cl.name:
            fail("cluster", "name", "must be a name without spaces")
        if cl.client_advertise:
            _, colon, given = cl.client_advertise.rpartition(":")
            if " " in cl.client_advertise or (colon and not cl.client_advertise.endswith("]") and not (given.isdigit() and 0 < int(given) < 65536)):
                fail("cluster", "client_advertise", "must be host or host:port, got {!r}".format(cl.client_advertise))
        for url in cl.routes:
            from urllib.parse import urlsplit

            parts = urlsplit(url)
            if parts.scheme != "nats-route" or not parts.hostname or not parts.port:
                fail("cluster", "routes", "{!r} is not nats-route://host:port".format(url))
        if not cl.listen and not cl.routes:
            fail("cluster", "routes", "listen = false needs at least one route to dial")
        for key, subject in _link_subjects(cl.permissions):
            if not _valid_subject(subject):
                fail("cluster.permissions", key, "{!r} is not a valid subject".format(subject))
        if cl.tls and not config.tls.enabled:
            fail("cluster", "tls", "needs [tls] cert_path, key_path and root_ca_path (the routes' identity and CA)")


def _check_supercluster(config: Config, fail: _Fail) -> None:
    """[supercluster]: our gateway name, the remote gateways, permissions, TLS."""
    sc = config.supercluster
    if sc.enabled:
        from urllib.parse import urlsplit

        if not sc.name or any(c in sc.name for c in " \t\r\n"):
            fail("supercluster", "name", "must be this cluster's gateway name, without spaces")
        if not 0 <= sc.port <= 65535:
            fail("supercluster", "port", "must be between 0 and 65535, got {}".format(sc.port))
        if sc.advertise:
            host, colon, given = sc.advertise.rpartition(":")
            if not colon or not host or not given.isdigit() or not 0 < int(given) < 65536:
                fail("supercluster", "advertise", "must be host:port, got {!r}".format(sc.advertise))
        names = set()
        for i, remote in enumerate(sc.gateways):
            where = "[[supercluster.gateways]] #{}".format(i + 1)
            if not remote.name or any(c in remote.name for c in " \t\r\n"):
                fail("supercluster.gateways", "name", "{}: must be the remote cluster's gateway name, without spaces".format(where))
            if remote.name == sc.name:
                fail("supercluster.gateways", "name", "{}: {!r} is this cluster's own name".format(where, remote.name))
            if remote.name in names:
                fail("supercluster.gateways", "name", "{}: {!r} is given twice".format(where, remote.name))
            names.add(remote.name)
            if not remote.urls:
                fail("supercluster.gateways", "urls", "{} ({}): needs at least one URL".format(where, remote.name))
            for url in remote.urls:
                parts = urlsplit(url if "://" in url else "nats://" + url)
                try:
                    valid = bool(parts.port) and bool(parts.hostname)
                except ValueError:
                    valid = False
                if parts.scheme not in ("nats", "tls") or not valid:
                    fail("supercluster.gateways", "urls", "{} ({}): {!r} is not nats://host:port".format(where, remote.name, url))
        for key, subject in _link_subjects(sc.permissions):
            if not _valid_subject(subject):
                fail("supercluster.permissions", key, "{!r} is not a valid subject".format(subject))
        if sc.tls and not config.tls.enabled:
            fail("supercluster", "tls", "needs [tls] cert_path, key_path and root_ca_path (the gateways' identity and CA)")


def _check_leafnodes(config: Config, fail: _Fail) -> None:
    """[leafnodes]: the listener's credentials, and every remote's URLs, credentials and deny lists."""
    from urllib.parse import urlsplit

    ln, tls = config.leafnodes, config.tls.enabled
    if not ln.enabled:
        return
    if ln.tls and not tls:
        fail("leafnodes", "tls", "needs [tls] cert_path, key_path and root_ca_path (our identity and the spokes' CA)")
    if not 0 <= ln.port <= 65535:
        fail("leafnodes", "port", "must be between 0 and 65535, got {}".format(ln.port))
    if ln.token and ln.user:
        fail("leafnodes", "token", "give a token or a user and password, not both")
    if ln.user and not ln.password:
        fail("leafnodes", "password", "a user needs a password")
    if not ln.listen and not ln.remotes:
        fail("leafnodes", "remotes", "listen = false needs at least one [[leafnodes.remotes]] to dial")
    for i, remote in enumerate(ln.remotes):
        where = "[[leafnodes.remotes]] #{}".format(i + 1)
        urls = remote.all_urls()
        if not urls:
            fail("leafnodes.remotes", "url", "{}: needs a url (nats-leaf://host:port) or urls".format(where))
        if remote.token and remote.user:
            fail("leafnodes.remotes", "token", "{}: give a token or a user and password, not both".format(where))
        if remote.credentials and (remote.token or remote.user):
            fail("leafnodes.remotes", "credentials", "{}: give credentials, a token, or a user and password: one of them".format(where))
        for url in urls:
            parts = urlsplit(url)
            try:
                valid = bool(parts.port) and bool(parts.hostname)
            except ValueError:
                valid = False
            if parts.scheme in ("ws", "wss"):
                fail("leafnodes.remotes", "url", "{}: {!r}: leaf links over WebSocket are not supported yet".format(where, url))
            if parts.scheme not in ("nats-leaf", "nats", "tls") or not valid:
                fail("leafnodes.remotes", "url", "{}: {!r} is not nats-leaf://host:port (or tls://host:port)".format(where, url))
            if (remote.tls or parts.scheme == "tls") and not tls:
                fail("leafnodes.remotes", "tls", "{}: TLS needs [tls] cert_path, key_path and root_ca_path (our identity and the hub's CA)".format(where))
        for key, subjects in (("deny_imports", remote.deny_imports), ("deny_exports", remote.deny_exports)):
            for subject in subjects:
                if not _valid_subject(subject):
                    fail("leafnodes.remotes", key, "{}: {!r} is not a valid subject".format(where, subject))


def _check_something_to_run(config: Config, fail: _Fail) -> None:
    """With [service] off, [gateway] must be on."""
    if not config.service.enabled and not config.gateway.enabled:
        fail("service", "enabled", "with the service off, [gateway] must be enabled (or there is nothing to run)")


def _check_websocket(config: Config, fail: _Fail) -> None:
    """[websocket]: its port (not another listener's), TLS, origins, timeouts and logins."""
    ws = config.websocket
    if ws.enabled:
        if not 0 <= ws.port <= 65535:
            fail("websocket", "port", "must be between 0 and 65535, got {}".format(ws.port))
        for section in ("service", "gateway", "monitor"):
            other = getattr(config, section)
            same_host = other.host == ws.host or "0.0.0.0" in (other.host, ws.host)
            if getattr(other, "enabled", True) and ws.port and other.port == ws.port and same_host:
                fail("websocket", "port", "is the {} port too ({}); give them different ports".format(section, ws.port))
        if ws.no_tls and (ws.cert_path or ws.key_path):
            fail("websocket", "no_tls", "is true, and cert_path or key_path is set: choose one")
        if not ws.no_tls and not (ws.cert_path and ws.key_path):
            fail("websocket", "cert_path", "a WebSocket listener needs TLS (cert_path and key_path), or no_tls = true (as nats-server)")
        for origin in ws.allowed_origins:
            from eventsvc.nats.origins import origin_of

            try:
                origin_of(origin)
            except ValueError as e:
                fail("websocket", "allowed_origins", str(e))
        if not ws.handshake_timeout > 0:
            fail("websocket", "handshake_timeout", "must be a positive number of seconds")
        if ws.max_connections < 1:
            fail("websocket", "max_connections", "must be at least 1, got {}".format(ws.max_connections))
        if not ws.auth_timeout > 0:
            fail("websocket", "auth_timeout", "must be a positive number of seconds")
        _check_auth("websocket", ws, fail)


def _check_console(config: Config, fail: _Fail) -> None:
    """[console]: needs the monitor and the WebSocket listener, and an identity it can log in as."""
    ws, co = config.websocket, config.console
    if co.enabled:
        if not config.monitor.enabled:
            fail("console", "enabled", "the console is served by the monitor: add a [monitor] section")
        if not ws.enabled:
            fail("console", "enabled", "the console talks NATS over WebSocket: add a [websocket] section")
        identity = next((i for i in ws.identities if i.name == co.identity), None)
        if identity is None:
            fail("console", "identity", "{!r} is not a [[websocket.identities]] name (the console connects as it)".format(co.identity))
        elif (identity.token or identity.password).startswith("sha256:"):
            fail("console", "identity", "{!r} has a sha256: secret: the page needs the secret itself to log in".format(co.identity))
        if co.websocket_url and not co.websocket_url.startswith(("ws://", "wss://")):
            fail("console", "websocket_url", "must be a ws:// or wss:// URL, got {!r}".format(co.websocket_url))


def _check_grpc(config: Config, fail: _Fail) -> None:
    """[grpc]: needs the service and [tls], and a port of its own."""
    rpc = config.grpc
    if rpc.enabled:
        if not config.service.enabled:
            fail("grpc", "enabled", "the gRPC API publishes to the event service: it needs [service] enabled")
        if not rpc.host:
            fail("grpc", "host", "must not be empty (use 0.0.0.0 for every interface)")
        if not 0 <= rpc.port <= 65535:
            fail("grpc", "port", "must be between 0 and 65535, got {}".format(rpc.port))
        for section in ("service", "gateway", "websocket", "monitor"):
            other = getattr(config, section)
            if rpc.port and getattr(other, "enabled", True) and other.port == rpc.port and other.host == rpc.host:
                fail("grpc", "port", "is the {} port too ({}); give them different ports".format(section, rpc.port))
        if not config.tls.enabled:
            fail("grpc", "enabled", "the gRPC API uses mutual TLS, as Chef Automate's does: set [tls] cert_path, key_path "
                 "and root_ca_path (its identity, and the CA of the clients' certificates)")


def _check_monitor(config: Config, fail: _Fail) -> None:
    """[monitor]: its port."""
    mon = config.monitor
    if mon.enabled and not 0 <= mon.port <= 65535:
        fail("monitor", "port", "must be between 0 and 65535, got {}".format(mon.port))


def _check_limits(config: Config, fail: _Fail) -> None:
    """[limits]: every limit in its range."""
    lim = config.limits
    if not 1 <= lim.max_payload <= 64 * 1024 * 1024:
        fail("limits", "max_payload", "must be between 1 and 67108864 (64 MiB), got {}".format(lim.max_payload))
    if lim.max_pending < lim.max_payload:
        fail("limits", "max_pending", "must be at least max_payload ({}), got {}".format(lim.max_payload, lim.max_pending))
    if lim.max_control_line < 256:
        fail("limits", "max_control_line", "must be at least 256, got {}".format(lim.max_control_line))
    if lim.max_subscriptions < 0:
        fail("limits", "max_subscriptions", "must be 0 (no limit) or more, got {}".format(lim.max_subscriptions))
    if lim.max_link_subscriptions < 0:
        fail("limits", "max_link_subscriptions", "must be 0 (no cap) or more, got {}".format(lim.max_link_subscriptions))
    if not 1 <= lim.listen_backlog <= 65535:
        fail("limits", "listen_backlog", "must be between 1 and 65535, got {}".format(lim.listen_backlog))
    if lim.ping_max < 1:
        fail("limits", "ping_max", "must be at least 1, got {}".format(lim.ping_max))
    for key in ("ping_interval", "write_deadline", "auth_timeout"):
        if not getattr(lim, key) > 0:
            fail("limits", key, "must be a positive number of seconds, got {}".format(getattr(lim, key)))


#: The largest [jetstream] size: an int64, as nats-server reads it.
_MAX_SIZE = 2 ** 63 - 1


def _check_jetstream(config: Config, fail: _Fail) -> None:
    """[jetstream]: sizes, the domain and the sync interval."""
    js = config.jetstream
    if not js.enabled:
        return
    for key in ("max_memory_store", "max_file_store"):
        if getattr(js, key) < -1:
            fail("jetstream", key, "must be a size in bytes (or -1: 75% of the memory or disk, as nats-server), got {}".format(getattr(js, key)))
        if getattr(js, key) > _MAX_SIZE:
            # nats-server reads it into an int64; anything bigger is a typo.
            fail("jetstream", key, "must be at most 8E (9223372036854775807 bytes), got {}".format(getattr(js, key)))
    for key in ("max_streams", "max_consumers", "max_ack_pending"):
        if not -1 <= getattr(js, key) <= _MAX_SIZE:
            fail("jetstream", key, "must be a number (0 or -1: no limit), got {}".format(getattr(js, key)))
    for key in ("memory_max_stream_bytes", "storage_max_stream_bytes"):
        if not -1 <= getattr(js, key) <= _MAX_SIZE:
            fail("jetstream", key, "must be a size in bytes up to 8E (0 or -1: no limit), got {}".format(getattr(js, key)))
    if js.domain and (any(c in js.domain for c in " \t\r\n.*>") or not js.domain.isprintable()):
        fail("jetstream", "domain", "must be one subject token (no spaces, '.', '*' or '>'), got {!r}".format(js.domain))
    if js.sync_interval != "always" and (parse_duration(js.sync_interval) or 0) <= 0:
        fail("jetstream", "sync_interval", "must be a duration such as \"2m\" or \"30s\", or \"always\", got {!r}".format(js.sync_interval))


def _check_pypy(config: Config, fail: _Fail) -> None:
    """[pypy]: JIT parameters PyPy knows, in their ranges (checked on CPython too: the file is the same)."""
    problem = pypy_jit.problem(config.pypy.jit)
    if problem:
        fail("pypy", "jit", problem)


#: Every section's checker, in the order their errors are reported (the first one wins).
def _check_tls_timeout(fail: _Fail, section: str, key: str, seconds: float) -> None:
    """A TLS handshake's clock: a positive, finite number of seconds (nats-server's tls { timeout })."""
    if not 0 < seconds < math.inf:
        fail(section, key, "must be a positive number of seconds (the time a client has to finish its TLS handshake; "
                           "default {:g}), got {}".format(limits.TLS_TIMEOUT, seconds))


def _check_tls(config: Config, fail: _Fail) -> None:
    """[tls]: its handshake clock (the paths are checked as they resolve)."""
    _check_tls_timeout(fail, "tls", "timeout", config.tls.timeout)


_CHECKS: Tuple[Callable[[Config, _Fail], None], ...] = (
    _check_tls, _check_service, _check_log, _check_handlers, _check_events, _check_gateway, _check_cluster,
    _check_supercluster, _check_leafnodes, _check_something_to_run, _check_websocket, _check_console,
    _check_grpc, _check_monitor, _check_limits, _check_jetstream, _check_pypy,
)


def _check(config: Config, path: str) -> None:
    """
    Check C{config} (read from C{path}) section by section.

    @raise ConfigError: at the first problem, naming the file, the section
        and the key ("<path>: [section] key: problem").
    """
    def fail(section: str, key: str, problem: str) -> None:
        raise ConfigError("{}: [{}] {}: {}".format(path, section, key, problem))

    for check in _CHECKS:
        check(config, fail)


#: Host names that mean "every interface" to a server, and no one host to a client.
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def handler_address(address: str) -> Optional[Tuple[str, str, int]]:
    """
    Split a handler address into (scheme, host, port): C{host:port} means
    HTTPS; an explicit C{http://} or C{https://} URL is used as given;
    C{grpc://host:port} (a port, and nothing after it) is a gRPC target.
    Returns None when it is none of these.
    """
    if address.startswith("grpc://"):
        host, sep, port = address[len("grpc://"):].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
            return None
        return "grpc", host.strip("[]"), int(port)
    scheme = "https"
    rest = address
    for prefix in ("http://", "https://"):
        if address.startswith(prefix):
            scheme = prefix[:-3]
            rest = address[len(prefix):].split("/", 1)[0]
            break
    host, sep, port = rest.rpartition(":")
    if not sep:
        if scheme == "https" and rest == address:
            return None
        return (scheme, rest, 443 if scheme == "https" else 80) if rest else None
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return scheme, host.strip("[]"), int(port)


def _resolve_tls(config: Config, base: str, path: str) -> Config:
    values: Dict[str, str] = {}
    for name in TLSConfig.PATHS:
        value = getattr(config.tls, name)
        if not value:
            raise ConfigError(
                "{}: [tls] {}: missing; cert_path, key_path and root_ca_path go together".format(path, name)
            )
        values[name] = value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
    return replace(config, tls=TLSConfig(values["cert_path"], values["key_path"], values["root_ca_path"], config.tls.timeout))
