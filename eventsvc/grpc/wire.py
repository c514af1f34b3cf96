"""
gRPC over HTTP/2, the parts that are not HTTP/2: message framing, status
codes, timeouts and the headers a call carries (the gRPC "PROTOCOL-HTTP2"
document).  Pure functions and data; no I/O, no Twisted, no h2.
"""

from __future__ import annotations

import struct
from typing import Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, unquote

#: Status codes (google.rpc.Code), by name and number.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16

STATUS_NAMES: Dict[int, str] = {
    value: name for name, value in list(globals().items()) if name.isupper() and isinstance(value, int)
}

#: Statuses after which the same call may succeed later: the event is
#: retried.  Any other status is the target's answer about this event, and
#: it is dead-lettered.
RETRY_STATUSES = frozenset({UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED})

#: The status an HTTP answer without grpc-status stands for (the gRPC
#: document's "HTTP to gRPC Status Code Mapping"): a proxy or a server that
#: is not gRPC answered.
_FROM_HTTP = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED, 404: UNIMPLEMENTED,
              429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE, 504: UNAVAILABLE}

#: The largest message taken by default (grpc-go's and grpcio's default).
MAX_MESSAGE = 4 * 1024 * 1024

_PREFIX = struct.Struct(">BI")


class GRPCError(Exception):
    """A call ended with a status other than OK; C{code} and C{message} are the peer's (or ours)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def name(self) -> str:
        return status_name(self.code)

    def __str__(self) -> str:
        return "{}{}".format(self.name, ": " + self.message if self.message else "")


def status_name(code: int) -> str:
    """C{UNAVAILABLE} for 14; C{status 99} for a code gRPC does not define."""
    return STATUS_NAMES.get(code, "status {}".format(code))


def frame(message: bytes) -> bytes:
    """One length-prefixed message, uncompressed."""
    return _PREFIX.pack(0, len(message)) + message


class MessageReader:
    """
    Length-prefixed messages out of DATA frames, as they arrive in pieces.
    Refuses a compressed message (none is ever asked for) and one larger
    than C{limit} as soon as its prefix is read, before buffering it.
    """

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> List[bytes]:
        """
        The messages completed by C{data}.

        @raise GRPCError: RESOURCE_EXHAUSTED for a message over the limit,
            INTERNAL for a compressed one.
        """
        buffer = self._buffer
        buffer += data
        out = []
        while len(buffer) >= 5:
            flag, length = _PREFIX.unpack_from(buffer)
            if flag:
                raise GRPCError(INTERNAL, "compressed message, and no grpc-encoding was agreed")
            if length > self.limit:
                raise GRPCError(RESOURCE_EXHAUSTED, "message of {} bytes, more than the {} allowed".format(length, self.limit))
            if len(buffer) < 5 + length:
                break
            out.append(bytes(buffer[5:5 + length]))
            del buffer[:5 + length]
        return out

    @property
    def partial(self) -> bool:
        """Whether part of a message is still waiting for the rest."""
        return bool(self._buffer)


def encode_timeout(seconds: float) -> str:
    """A grpc-timeout value: at most 8 digits, in the finest unit that fits."""
    for unit, scale in (("n", 1e9), ("u", 1e6), ("m", 1e3), ("S", 1.0), ("M", 1 / 60.0), ("H", 1 / 3600.0)):
        value = int(seconds * scale + 0.999999)
        if value < 100000000:
            return "{}{}".format(max(value, 1), unit)
    return "99999999H"


def decode_timeout(value: str) -> Optional[float]:
    """Seconds of a grpc-timeout value; None when it is not one."""
    scales = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
    if len(value) < 2 or len(value) > 9 or value[-1] not in scales or not value[:-1].isdigit():
        return None
    return int(value[:-1]) * scales[value[-1]]


def encode_message(text: str) -> str:
    """grpc-message: percent-encoded UTF-8 (the header must be printable ASCII)."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")


def request_headers(authority: str, path: str, timeout: float) -> List[Tuple[str, str]]:
    """The headers of a unary call to C{path} (C{/package.Service/Method})."""
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", path),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("grpc-timeout", encode_timeout(timeout)),
        ("user-agent", "eventsvc-grpc"),
    ]


def response_headers() -> List[Tuple[str, str]]:
    return [(":status", "200"), ("content-type", "application/grpc")]


def trailers(code: int, message: str = "") -> List[Tuple[str, str]]:
    out = [("grpc-status", str(code))]
    if message:
        out.append(("grpc-message", encode_message(message)))
    return out


def status_of(headers: Sequence[Tuple[str, str]], trailing: Sequence[Tuple[str, str]]) -> Tuple[int, str]:
    """
    The status a call ended with, from its response headers and trailers (a
    "trailers-only" answer carries it in the headers).  An answer with no
    grpc-status is mapped from its HTTP status.
    """
    found = dict(headers)
    found.update(trailing)
    status = found.get("grpc-status")
    if status is not None:
        if not status.isdigit():
            return UNKNOWN, "grpc-status {!r} is not a number".format(status)
        return int(status), unquote(found.get("grpc-message", ""))
    http = found.get(":status", "")
    if http != "200":
        code = _FROM_HTTP.get(int(http) if http.isdigit() else 0, UNKNOWN)
        return code, "HTTP {} and no grpc-status: not a gRPC server, or a proxy answered".format(http or "(none)")
    return UNKNOWN, "the call ended with no grpc-status"


def decode_headers(raw: Sequence[Tuple[bytes, bytes]]) -> List[Tuple[str, str]]:
    """h2's header pairs (bytes) as text; bytes that are not UTF-8 are replaced, never raised on."""
    return [(k.decode("utf-8", "replace"), v.decode("utf-8", "replace")) for k, v in raw]
