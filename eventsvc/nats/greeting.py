"""
What a client is told, and what it says back: the INFO a client connection
is greeted with, in nats-server's field order; the INFOs sent to it later
(the cluster's client URLs changed, the server goes into lame duck mode);
and the CONNECT options it answers with, checked for type and read, with
nats-server's defaults, into L{ConnectOptions}.

Nothing here holds state or does I/O: the connection asks, and writes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List

from eventsvc import wirejson
from eventsvc.nats.frames import info_line

__all__ = ["ConnectOptions", "client_info", "decode_connect", "info_line", "lame_duck_info"]

#: CONNECT fields we read, with the JSON types nats-server accepts for them.
CONNECT_TYPES: Dict[str, tuple] = {
    "verbose": (bool,),
    "pedantic": (bool,),
    "echo": (bool,),
    "headers": (bool,),
    "no_responders": (bool,),
    "tls_required": (bool,),
    "protocol": (int,),
    "auth_token": (str,),
    "user": (str,),
    "pass": (str,),
    "name": (str,),
    "lang": (str,),
    "version": (str,),
    "jwt": (str,),
    "nkey": (str,),
    "sig": (str,),
}



def client_info(broker: Any, settings: Any, state: Any, cid: int, client_ip: str) -> Dict[str, Any]:
    """
    The INFO a client is greeted with, in nats-server's field order.
    C{settings}: the listener's (ClientSettings); C{state}: what changes
    while it runs (ListenerState: the port bound, the authenticator).
    """
    info: Dict[str, Any] = {
        "server_id": broker.server_id,
        "server_name": broker.server_name,
        "version": broker.version,
        "proto": 1,
        "go": broker.implementation,
        "host": settings.host,
        "port": state.port,
        "headers": True,
    }
    if state.authenticator is not None:
        info["auth_required"] = True
    if settings.tls_required:
        info["tls_required"] = True
    if settings.tls_verify:
        info["tls_verify"] = True
    info["max_payload"] = settings.max_payload
    if settings.jetstream:
        info["jetstream"] = True
    info["client_id"] = cid
    info["client_ip"] = client_ip
    if broker.cluster_name:
        info["cluster"] = broker.cluster_name
    if settings.jetstream_domain:
        info["domain"] = settings.jetstream_domain
    if settings.advertise:
        urls = broker.connect_urls.current()
        if urls:
            info["connect_urls"] = urls
    return info


def lame_duck_info(info: Dict[str, Any], others: List[str]) -> Dict[str, Any]:
    """
    The INFO that tells a client this server is going away: as nats-server,
    C{ldm} set, and the cluster's other nodes (never this one) as where to go.
    """
    info = dict(info)
    info.pop("connect_urls", None)
    if others:
        info["connect_urls"] = others
    info["ldm"] = True
    return info


def decode_connect(arg: bytes) -> Dict[str, Any]:
    """
    Decode CONNECT's JSON, checking the type of every field we read.

    @raise ValueError: not a JSON object, or a field of the wrong type.
    """
    options = wirejson.loads(arg)
    if not isinstance(options, dict):
        raise ValueError("CONNECT options are not an object")
    for key, types in CONNECT_TYPES.items():
        value = options.get(key)
        if value is None:
            continue
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise ValueError("CONNECT field {} has the wrong type".format(key))
    return options


@dataclass(frozen=True)
class ConnectOptions:
    """What a client's CONNECT asks for, with nats-server's defaults."""

    verbose: bool = True
    pedantic: bool = True
    echo: bool = True
    headers: bool = False
    no_responders: bool = False
    protocol: int = 0
    name: str = ""
    lang: str = ""
    version: str = ""

    @classmethod
    def read(cls, options: Dict[str, Any]) -> "ConnectOptions":
        """From L{decode_connect}'s result: only an explicit false turns a default-on option off."""
        return cls(
            verbose=options.get("verbose", True) is not False,
            pedantic=options.get("pedantic", True) is not False,
            echo=options.get("echo", True) is not False,
            headers=options.get("headers") is True,
            no_responders=options.get("no_responders") is True,
            protocol=options.get("protocol") or 0,
            name=options.get("name") or "",
            lang=options.get("lang") or "",
            version=options.get("version") or "",
        )
