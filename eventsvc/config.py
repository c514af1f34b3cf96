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

import os
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Tuple

import toml

LOG_LEVELS = ("debug", "info", "warn", "error", "critical")
LOG_FORMATS = ("text", "json")
HANDLER_NAMES = ("feed", "cfgingest", "event_feed")


class ConfigError(Exception):
    """A problem with the configuration, as one line for the operator."""


@dataclass(frozen=True)
class ServiceConfig:
    #: Address of the event service's NATS listener.
    host: str = "127.0.0.1"
    port: int = 10132
    #: Events accepted and not yet delivered, at most.
    event_limit: int = 100000
    #: Concurrent client connections on the service listener, at most.
    listener_limit: int = 10000


@dataclass(frozen=True)
class TLSConfig:
    cert_path: str = ""
    key_path: str = ""
    root_ca_path: str = ""

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
class LimitsConfig:
    """nats-server's limits, with its defaults and names."""

    max_payload: int = 1024 * 1024
    max_control_line: int = 4096
    max_pending: int = 64 * 1024 * 1024
    #: Subscriptions per connection; 0 for no limit.
    max_subscriptions: int = 0
    ping_interval: float = 120.0
    ping_max: int = 2
    write_deadline: float = 10.0
    auth_timeout: float = 2.0


@dataclass(frozen=True)
class Config:
    service: ServiceConfig = field(default_factory=ServiceConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    log: LogConfig = field(default_factory=LogConfig)
    handlers: HandlersConfig = field(default_factory=HandlersConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: The file this came from ("" for the defaults).
    source: str = ""


_SECTIONS = {
    "service": ServiceConfig,
    "tls": TLSConfig,
    "log": LogConfig,
    "handlers": HandlersConfig,
    "limits": LimitsConfig,
}


def load(path: str) -> Config:
    """
    Read the TOML patch at C{path} over the defaults.

    @raise ConfigError: the file cannot be read, is not TOML, or holds a
        key that is unknown, of the wrong type or out of range.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("{}: cannot read the configuration: {}".format(path, e.strerror or e))
    except UnicodeDecodeError as e:
        raise ConfigError("{}: not UTF-8 text: {}".format(path, e))
    return parse(text, path)


def parse(text: str, path: str = "<config>") -> Config:
    """Like L{load}, from text; relative paths resolve against C{path}'s folder."""
    try:
        patch = toml.loads(text)
    except (toml.TomlDecodeError, IndexError, ValueError, TypeError) as e:
        raise ConfigError("{}: not valid TOML: {}".format(path, e))
    return from_mapping(patch, path)


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
        sections[name] = _section(path, name, cls, value)
    config = Config(source=path, **sections)
    _check(config, path)
    if config.tls.enabled:
        config = _resolve_tls(config, base, path)
    return config


def _kind(value: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "table"}.get(
        type(value), type(value).__name__
    )


def _section(path: str, name: str, cls: type, values: Dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: Dict[str, Any] = {}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(
                "{}: [{}] {}: unknown key (known: {})".format(path, name, key, ", ".join(sorted(known)))
            )
        want = f.type if isinstance(f.type, type) else {"int": int, "float": float, "str": str}[f.type]
        ok = (
            (want is int and isinstance(value, int) and not isinstance(value, bool))
            or (want is float and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (want is str and isinstance(value, str))
        )
        if not ok:
            raise ConfigError(
                "{}: [{}] {}: must be {}, got {} {!r}".format(
                    path, name, key, {int: "an integer", float: "a number", str: "a string"}[want], _kind(value), value
                )
            )
        kwargs[key] = float(value) if want is float else value
    return cls(**kwargs)


def _check(config: Config, path: str) -> None:
    def fail(section: str, key: str, problem: str) -> None:
        raise ConfigError("{}: [{}] {}: {}".format(path, section, key, problem))

    s = config.service
    if not s.host:
        fail("service", "host", "must not be empty (use 0.0.0.0 for every interface)")
    if not 0 <= s.port <= 65535:
        fail("service", "port", "must be between 0 and 65535, got {}".format(s.port))
    if s.event_limit < 1:
        fail("service", "event_limit", "must be at least 1, got {}".format(s.event_limit))
    if s.listener_limit < 1:
        fail("service", "listener_limit", "must be at least 1, got {}".format(s.listener_limit))

    lg = config.log
    if lg.format not in LOG_FORMATS:
        fail("log", "format", "must be one of {}, got {!r}".format(", ".join(LOG_FORMATS), lg.format))
    if lg.level not in LOG_LEVELS:
        fail("log", "level", "must be one of {}, got {!r}".format(", ".join(LOG_LEVELS), lg.level))

    for name in HANDLER_NAMES:
        address = getattr(config.handlers, name)
        if address and handler_address(address) is None:
            fail("handlers", name, "must be host:port or an http:// or https:// URL, got {!r}".format(address))

    lim = config.limits
    if not 1 <= lim.max_payload <= 64 * 1024 * 1024:
        fail("limits", "max_payload", "must be between 1 and 67108864 (64 MiB), got {}".format(lim.max_payload))
    if lim.max_pending < lim.max_payload:
        fail("limits", "max_pending", "must be at least max_payload ({}), got {}".format(lim.max_payload, lim.max_pending))
    if lim.max_control_line < 256:
        fail("limits", "max_control_line", "must be at least 256, got {}".format(lim.max_control_line))
    if lim.max_subscriptions < 0:
        fail("limits", "max_subscriptions", "must be 0 (no limit) or more, got {}".format(lim.max_subscriptions))
    if lim.ping_max < 1:
        fail("limits", "ping_max", "must be at least 1, got {}".format(lim.ping_max))
    for key in ("ping_interval", "write_deadline", "auth_timeout"):
        if not getattr(lim, key) > 0:
            fail("limits", key, "must be a positive number of seconds, got {}".format(getattr(lim, key)))


def handler_address(address: str) -> Optional[Tuple[str, str, int]]:
    """
    Split a handler address into (scheme, host, port): C{host:port} means
    HTTPS; an explicit C{http://} or C{https://} URL is used as given.
    Returns None when it is neither.
    """
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
    values = {}
    for f in fields(TLSConfig):
        value = getattr(config.tls, f.name)
        if not value:
            raise ConfigError(
                "{}: [tls] {}: missing; cert_path, key_path and root_ca_path go together".format(path, f.name)
            )
        values[f.name] = value if os.path.isabs(value) else os.path.normpath(os.path.join(base, value))
    return Config(
        service=config.service,
        tls=TLSConfig(**values),
        log=config.log,
        handlers=config.handlers,
        limits=config.limits,
        source=config.source,
    )
