"""
What clients are told about the cluster: the client URLs of this server and
of every server a route joins it to (C{connect_urls} in INFO), so that a
client can reconnect to another node when its own goes away.

As nats-server 2.9: the list is empty until a route brings URLs; then it is
ours first and the peers' after, and every client that understands async
INFO (protocol 1) is sent a new INFO whenever it changes.  A route carries
our own URLs to peers (unless C{[cluster] no_advertise}).
"""

from __future__ import annotations

import socket
from typing import Callable, Dict, Iterable, List, Optional


class ConnectURLs:
    """
    Our client URLs and, counted by how many routes brought each, our
    peers'.  C{on_change} is called when the list clients see changes.
    """

    def __init__(self) -> None:
        #: Our own client URLs (a function: the port is known once listening).
        self.own: Callable[[], List[str]] = list
        self.on_change: Optional[Callable[[], None]] = None
        self._peers: Dict[str, int] = {}
        self._updated = False

    def current(self) -> List[str]:
        """What INFO carries: nothing before any route brought URLs."""
        if not self._updated:
            return []
        own = self.own()
        return own + [url for url in self._peers if url not in own]

    def others(self) -> List[str]:
        """The peers' URLs only (a lame-duck INFO points clients there)."""
        own = self.own()
        return [url for url in self._peers if url not in own]

    def add(self, urls: Iterable[str]) -> None:
        changed = False
        for url in urls:
            n = self._peers.get(url, 0)
            self._peers[url] = n + 1
            changed = changed or n == 0
        self._changed(changed)

    def remove(self, urls: Iterable[str]) -> None:
        changed = False
        for url in urls:
            n = self._peers.get(url, 0)
            if n > 1:
                self._peers[url] = n - 1
            elif n == 1:
                del self._peers[url]
                changed = True
        self._changed(changed)

    def _changed(self, changed: bool) -> None:
        if changed:
            self._updated = True
            if self.on_change is not None:
                self.on_change()


def client_urls(host: str, port: int, advertise: str = "") -> List[str]:
    """
    The URLs clients can reach a listener on: C{advertise} when given
    (C{host} or C{host:port}); for a wildcard host, every address of this
    machine that is not loopback; else C{host:port}.
    """
    if advertise:
        name, _, given = advertise.rpartition(":") if ":" in advertise else (advertise, "", "")
        return [_join(name or advertise, int(given) if given else port)]
    if host in ("", "0.0.0.0", "::"):
        found: List[str] = []
        try:
            infos = socket.getaddrinfo(socket.gethostname(), None, proto=socket.IPPROTO_TCP)
        except OSError:
            infos = []
        for family, _, _, _, address in infos:
            ip = str(address[0])
            if family == socket.AF_INET6 and host != "::":
                continue
            if ip.startswith("127.") or ip == "::1":
                continue
            url = _join(ip, port)
            if url not in found:
                found.append(url)
        return found
    return [_join(host, port)]


def _join(host: str, port: int) -> str:
    host = host.strip("[]")
    return "[{}]:{}".format(host, port) if ":" in host else "{}:{}".format(host, port)
