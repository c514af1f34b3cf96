"""
Which web pages may open a connection: nats-server's origin check for its
WebSocket listener (C{same_origin}, C{allowed_origins}).  Plain parsing, no
I/O: the configuration checks its origins with it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple
from urllib.parse import urlsplit


@dataclass(frozen=True)
class OriginPolicy:
    """
    Which web pages may open a connection (nats-server's checkOrigin).  With
    neither C{same_origin} nor C{allowed_origins}, any; a request without an
    Origin header (not from a browser) is always let through, as RFC 6455
    section 1.6 and nats-server have it.
    """

    same_origin: bool = False
    #: (scheme, host, port) triples: "https://console.example.com" is
    #: ("https", "console.example.com", 443).
    allowed: Tuple[Tuple[str, str, int], ...] = ()

    @classmethod
    def from_urls(cls, same_origin: bool, urls: Tuple[str, ...]) -> "OriginPolicy":
        """@raise ValueError: one of C{urls} is not an http(s) origin."""
        return cls(same_origin, tuple(origin_of(url) for url in urls))

    def refusal(self, origin: str, host: str, secure: bool) -> Optional[str]:
        """Why a request from page C{origin} to C{host} (its Host header) is refused; None if it is not."""
        if not origin or not (self.same_origin or self.allowed):
            return None
        try:
            theirs = origin_of(origin)
        except ValueError as e:
            return str(e)
        if self.same_origin:
            try:
                ours = _host_port(host, secure)
            except ValueError as e:
                return "bad Host header: {}".format(e)
            if theirs[1:] != ours:
                return "not same origin"
        if self.allowed and theirs not in self.allowed:
            return "not in the allowed list"
        return None


def origin_of(url: str) -> Tuple[str, str, int]:
    """An origin as (scheme, host, port), the port filled in from the scheme."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("{!r} is not an http:// or https:// origin".format(url))
    host, port = _host_port(parts.netloc, parts.scheme == "https")
    return parts.scheme, host, port


def _host_port(netloc: str, secure: bool) -> Tuple[str, int]:
    parts = urlsplit("//" + netloc)
    port = parts.port  # (raises ValueError when it is not a number)
    if not parts.hostname:
        raise ValueError("no host in {!r}".format(netloc))
    return parts.hostname.lower(), port if port is not None else (443 if secure else 80)
