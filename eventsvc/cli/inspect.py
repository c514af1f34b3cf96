"""
Subcommands that read the configuration and say what it will do:
check-config and config show.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Dict, List, Sequence

import toml

from eventsvc import config as configuration
from eventsvc.cli.common import EX_CONFIG, EX_OK, load, routed_to, say


def check_config(options: argparse.Namespace) -> int:
    """
    Load the configuration and everything it names, as start-up would, and
    describe what will run; warn about what would refuse events.
    """
    from twisted.internet.testing import MemoryReactorClock

    from eventsvc.app import StartupError, make_service

    config = load(options.config)
    try:
        make_service(config, MemoryReactorClock())
    except StartupError as e:
        return say("eventsvc: {}".format(e), EX_CONFIG)
    lines = ["ok: {}".format(options.config)]
    lines += ["  " + line for line in describe(config)]
    lines += ["warning: " + line for line in configuration.warnings(config)]
    return say("\n".join(lines), EX_OK)


def describe(config: configuration.Config) -> List[str]:
    """What a configuration will run, one line per part, as check-config prints it."""
    out = []
    s, tls, gw, cl = config.service, config.tls, config.gateway, config.cluster
    if s.enabled:
        security = (
            "mutual TLS (client certificates signed by {})".format(tls.root_ca_path) if tls.enabled
            else "plaintext, no client certificates, no authentication"
        )
        out.append("service listener on {}:{}: {}; at most {} connections".format(s.host, s.port, security, s.listener_limit))
    if gw.enabled:
        if gw.disable_frontend_tls:
            front = "plaintext (disable_frontend_tls)"
        else:
            front = "TLS by SNI ({})".format(", ".join(e.server_name for e in gw.frontend_tls))
        auth = _logins(gw)
        out.append("gateway listener on {}:{}: {}; authentication: {}; at most {} connections".format(
            gw.host, gw.port, front, ", ".join(auth), gw.max_connections))
        out += _may(gw, "gateway agents", "gateway identity")
        out.append("health-check token file: {}".format(gw.health_token_file))
    ws = config.websocket
    if ws.enabled:
        origins = "pages from {}".format(", ".join(ws.allowed_origins)) if ws.allowed_origins else "pages from any origin"
        if ws.same_origin:
            origins += " (same origin only)"
        out.append("websocket listener on {}:{}: {}; authentication: {}; {}; at most {} connections".format(
            ws.host, ws.port, "plaintext ws:// (no_tls)" if ws.no_tls else "TLS wss:// ({})".format(ws.cert_path),
            ", ".join(_logins(ws)), origins, ws.max_connections))
        out += _may(ws, "websocket clients", "websocket identity")
    if config.monitor.enabled:
        out.append("monitor on http://{}:{}/ (/healthz /varz /connz /subsz /routez /gatewayz /leafz /eventz /metrics)".format(
            config.monitor.host, config.monitor.port))
    if config.console.enabled:
        out.append("console on http://{}:{}/, connecting as websocket identity {!r}".format(
            config.monitor.host, config.monitor.port, config.console.identity))
    if cl.enabled:
        parts = ["cluster {}".format(cl.name)]
        if cl.listen:
            parts.append("accepting routes on {}:{}".format(cl.host, cl.port))
        if cl.routes:
            parts.append("dialling {}".format(", ".join(cl.routes)))
        parts.append("mutual TLS" if cl.tls else "plaintext routes")
        if cl.user:
            parts.append("route credentials required")
        out.append(", ".join(parts))
    js = config.jetstream
    if js.enabled:
        memory = "{} bytes".format(js.max_memory_store) if js.max_memory_store >= 0 else "75% of the memory"
        disk = "{} bytes".format(js.max_file_store) if js.max_file_store >= 0 else "75% of the disk free at start"
        out.append("JetStream: streams kept in {}; memory streams at most {}, file streams at most {}{}; sync {}".format(
            js.store_dir or "memory only (no store_dir, no state directory)", memory, disk,
            "; domain {}".format(js.domain) if js.domain else "",
            "after every write" if js.sync_interval == "always" else "every {}".format(js.sync_interval)))
    if s.enabled:
        out.append(configuration.where_events_are_kept(config) + "; dead letters: {}".format(config.events.dead_letter_file))
        ev = config.events
        out.append("{}; {}".format(
            "an event its target has not taken within {:g}s is dead-lettered ([events] max_age)".format(ev.max_age)
            if ev.max_age else "an event its target refuses for now is retried for ever ([events] max_age = 0)",
            "a handler whose target fails for {:g}s makes /healthz and health-check fail ([events] down_after)".format(ev.down_after)
            if ev.down_after else "a failing target shows only in the logs and metrics ([events] down_after = 0)",
        ))
        out.append("events on {}.<type> (queue group {}), at most {} waiting".format(
            config.events.subject_prefix, config.events.queue_group, s.event_limit))
        for name in configuration.HANDLER_NAMES:
            address = getattr(config.handlers, name)
            types = routed_to(config, name)
            out.append("handler {}: {} <- {}".format(name, address or "(no address)", ", ".join(types) or "no event types"))
    return out


def _may(sec: Any, clients: str, identity: str) -> List[str]:
    """
    What a listener's clients may do, one line for those logging in with
    its tokens, users or authenticators and one per named identity, read
    from the very L{Permissions} the service builds (defaults and paired
    lists applied), so the text cannot drift from what a client meets.
    """
    from eventsvc.listeners import identity_permissions
    from eventsvc.security.permissions import Permissions

    keys = ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny")
    out = ["{} may {}".format(clients, _reach(Permissions(**{k: list(getattr(sec.permissions, k)) for k in keys})))]
    for i in sec.identities:
        out.append("{} {} may {}".format(identity, i.name, _reach(Permissions(**identity_permissions(i, sec.permissions)))))
    return out


def _reach(permissions: Any) -> str:
    """"publish to X and subscribe to Y" for one set of permissions."""
    return "publish to {} and subscribe to {}".format(
        _subjects(permissions.publish_allow, permissions.publish_deny),
        _subjects(permissions.subscribe_allow, permissions.subscribe_deny),
    )


def _subjects(allow: Sequence[bytes], deny: Sequence[bytes]) -> str:
    """
    One direction in words, as L{Permissions} decides it: an empty allow
    list is everything; an allowed pattern wholly inside a denied one
    allows nothing; a denied pattern is named only where it cuts into
    what is allowed.
    """
    from eventsvc.security.permissions import is_subset

    allowed = [a for a in (allow or (b">",)) if not any(is_subset(a, d) for d in deny)]
    if not allowed:
        return "nothing"
    text = "anything" if allowed == [b">"] else ", ".join(a.decode("utf-8") for a in allowed)
    cuts = [d.decode("utf-8") for d in deny if any(_overlap(a, d) for a in allowed)]
    return text + (" (except {})".format(", ".join(cuts)) if cuts else "")


def _overlap(a: bytes, b: bytes) -> bool:
    """Whether some subject matches both patterns."""
    at, bt = a.split(b"."), b.split(b".")
    for i in range(max(len(at), len(bt))):
        if i >= len(at) or i >= len(bt):
            return False
        x, y = at[i], bt[i]
        if x == b">" or y == b">":
            return True
        if x != y and b"*" not in (x, y):
            return False
    return True


def config_show(options: argparse.Namespace) -> int:
    """The effective configuration: every key, defaults filled in, secrets redacted, as TOML."""
    config = load(options.config)
    print("# The effective configuration of {}: defaults filled in, secrets redacted.".format(options.config))
    print(toml.dumps(effective(config)), end="")
    return EX_OK


#: Keys whose values are secrets, wherever they are.
_SECRET_KEYS = {"tokens", "token", "password"}
REDACTED = "<redacted>"


def _logins(sec: Any) -> List[str]:
    """How a listener's clients may log in, for its line."""
    auth = []
    if sec.tokens or sec.tokens_file:
        auth.append("tokens ({} listed{})".format(len(sec.tokens), ", and " + sec.tokens_file if sec.tokens_file else ""))
    if sec.users:
        auth.append("users ({})".format(len(sec.users)))
    if sec.identities:
        auth.append("identities ({})".format(", ".join(i.name for i in sec.identities)))
    if sec.http_auth_url:
        auth.append("HTTP check at {}".format(sec.http_auth_url))
    if sec.python_authenticator:
        auth.append("python:{}".format(sec.python_authenticator))
    return auth


def effective(config: configuration.Config) -> Dict[str, Any]:
    """C{config} as nested tables, with every secret replaced by L{REDACTED}."""
    tree = dataclasses.asdict(config)
    tree.pop("source", None)
    return _redact(tree)


def _redact(value: Any, key: str = "") -> Any:
    if key in _SECRET_KEYS and value:
        return [REDACTED for _ in value] if isinstance(value, (list, tuple)) else REDACTED
    if key == "users" and isinstance(value, dict):
        return {user: REDACTED for user in value}
    if key == "http_auth_url" and "@" in str(value):
        scheme, _, rest = str(value).partition("://")
        return "{}://{}@{}".format(scheme, REDACTED, rest.rpartition("@")[2])
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_redact(v) for v in value]
    return value
