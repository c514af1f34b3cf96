"""
What a client is told, and what it says back: the INFO a client connection
is greeted with, in nats-server's field order; the INFOs sent to it later
(the cluster's client URLs changed, the server goes into lame duck mode);
and the CONNECT options it answers with, checked for type and read, with
nats-server's defaults, into L{ConnectOptions}.

Nothing here holds state or does I/O: the connection asks, and writes.
"""

from __future__ import annotations

from json.encoder import encode_basestring_ascii
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from eventsvc.nats.frames import info_line
from eventsvc.nats.gojson import BOOL, INT, PERMISSION, STRING, GoStruct

__all__ = ["CLIENT_OPTS", "ConnectOptions", "Greeting", "client_info", "decode_connect", "info_line", "lame_duck_info", "names_account", "read_connect"]

#: nats-server's ClientOpts: the fields it reads from every CONNECT (a
#: link's too, with the link's own), with their Go types.
CLIENT_OPTS = GoStruct({
    "echo": BOOL,
    "verbose": BOOL,
    "pedantic": BOOL,
    "tls_required": BOOL,
    "nkey": STRING,
    "jwt": STRING,
    "sig": STRING,
    "auth_token": STRING,
    "user": STRING,
    "pass": STRING,
    "name": STRING,
    "lang": STRING,
    "version": STRING,
    "protocol": INT,
    "account": STRING,
    "new_account": BOOL,
    "headers": BOOL,
    "no_responders": BOOL,
    # (Routes' and leaf links' permissions; a client may send them too.)
    "import": PERMISSION,
    "export": PERMISSION,
})


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


class Greeting:
    """
    The INFO lines a listener greets its clients with, as L{info_line} of
    L{client_info} writes them, without serialising the whole of it for
    every connection: only C{client_id} and C{client_ip} differ from one
    client to the next.  The rest is asked of C{client_info} each time and
    compared with what the kept line was made from, so a change anywhere
    (the port bound, an authenticator set by a reload, the cluster's URLs)
    makes a new line at once.  (JSON for each client was a fifth of a
    plaintext connection's set-up.)
    """

    __slots__ = ("_made_from", "_head", "_middle", "_tail")

    def __init__(self) -> None:
        self._made_from: Optional[Dict[str, Any]] = None
        self._head = self._middle = self._tail = b""

    def line(self, broker: Any, settings: Any, state: Any, cid: int, client_ip: str) -> bytes:
        """C{info_line(client_info(broker, settings, state, cid, client_ip))}, byte for byte."""
        info = client_info(broker, settings, state, 0, "")
        if info != self._made_from:
            self._head, self._middle, self._tail = _split(info)
            self._made_from = info
        return b"".join((self._head, b"%d" % cid, self._middle, encode_basestring_ascii(client_ip).encode("ascii"), self._tail))


def _split(info: Dict[str, Any]) -> Tuple[bytes, bytes, bytes]:
    """INFO's line around the values of client_id and client_ip (which follow each other)."""
    keys = list(info)
    at = keys.index("client_id")
    assert keys[at + 1] == "client_ip"
    head = info_line({k: info[k] for k in keys[:at]})
    tail = info_line({k: info[k] for k in keys[at + 2:]})
    # '{...}' around each part: the head loses its '}', the tail its '{'.
    head = head[: -len(b"} \r\n")] + (b"," if at else b"") + b'"client_id":'
    rest = tail[len(b"INFO {"):]
    tail = (b"," + rest) if not rest.startswith(b"}") else rest
    return head, b',"client_ip":', tail


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


#: CONNECT arguments decoded lately, by their bytes, and what they decoded
#: to, as options and as L{ConnectOptions} (L{read_connect}): a fleet of one
#: application's clients, and every reconnect of one client, sends the same
#: CONNECT byte for byte, and decoding, checking and reading it was about a
#: tenth of a plaintext connection's CPU.
_DECODED: Dict[bytes, Tuple[Dict[str, Any], "ConnectOptions"]] = {}
#: How many it keeps (all forgotten when full), and how long one may be.
DECODED_MAX = 256
DECODED_ARG_MAX = 1024
#: Fields that say who the client is: a CONNECT with any of them is never
#: kept (its secrets stay with the connection they came on).
_CREDENTIALS = frozenset(("auth_token", "user", "pass", "jwt", "nkey", "sig"))
_SCALARS = (str, int, float, bool, type(None))


def decode_connect(arg: bytes) -> Dict[str, Any]:
    """
    Decode a client's CONNECT as nats-server does (L{CLIENT_OPTS}, read as
    Go reads a struct: L{GoStruct.decode}).  Each call returns a dict of
    its own.

    @raise ValueError: not a JSON object, or a field of the wrong type.
    """
    return read_connect(arg)[0]


def read_connect(arg: bytes) -> Tuple[Dict[str, Any], "ConnectOptions"]:
    """
    L{decode_connect}'s options (a dict of its own each call), and
    L{ConnectOptions.read} of them.

    @raise ValueError: as L{decode_connect}.
    """
    known = _DECODED.get(arg)
    if known is not None:
        return dict(known[0]), known[1]
    options = CLIENT_OPTS.decode(arg)
    read = ConnectOptions.read(options)
    if (len(arg) <= DECODED_ARG_MAX and _CREDENTIALS.isdisjoint(options)
            and all(value.__class__ in _SCALARS for value in options.values())):
        # (Only flat ones: a copy of the kept dict then shares nothing that
        # a caller could change for the next client.)
        if len(_DECODED) >= DECODED_MAX:
            _DECODED.clear()
        _DECODED[arg] = (dict(options), read)
    return options, read


def names_account(options: Dict[str, Any]) -> bool:
    """
    Whether a CONNECT (L{decode_connect}'s options, any connection's)
    names an account (C{account}, C{new_account}): nats-server 2.9 refuses
    it, credentials or none, with C{Authorization Violation} ("we used to
    have this as an optional feature for dynamic sandbox environments. Now
    its considered an error": processConnect).
    """
    return bool(options.get("account") or options.get("new_account"))


class ConnectOptions(NamedTuple):
    """
    What a client's CONNECT asks for, with nats-server's defaults.  (A
    named tuple, not a frozen dataclass: every connection reads one, and
    a frozen dataclass's nine fields were five microseconds of it on
    CPython; the connection takes them all in one unpacking.)
    """

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
        get = options.get
        return cls(
            get("verbose", True) is not False,
            get("pedantic", True) is not False,
            get("echo", True) is not False,
            get("headers") is True,
            get("no_responders") is True,
            get("protocol") or 0,
            get("name") or "",
            get("lang") or "",
            get("version") or "",
        )


#: nats-server's defaults, until a CONNECT says otherwise.
DEFAULT_CONNECT = ConnectOptions()
