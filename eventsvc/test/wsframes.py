"""
The client side of RFC 6455, as much as the tests need to look at frames
byte by byte: an upgrade request, masked client frames, and a reader of
server frames (opcode, FIN, RSV1, payload).  Not used by the server, which
frames with autobahn.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time
import zlib
from typing import Any, List, Optional, Tuple

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10

Frame = Tuple[int, bool, bool, bytes]  # opcode, fin, rsv1, payload


def upgrade_request(host: str, path: str = "/", origin: str = "", deflate: bool = False, key: Optional[str] = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode("ascii")
    lines = [
        "GET {} HTTP/1.1".format(path), "Host: {}".format(host), "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Key: {}".format(key), "Sec-WebSocket-Version: 13",
    ]
    if origin:
        lines.append("Origin: {}".format(origin))
    if deflate:
        lines.append("Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; server_no_context_takeover")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def header(length: int, opcode: int = BINARY, fin: bool = True, rsv1: bool = False, mask: Optional[bytes] = b"\x01\x02\x03\x04") -> bytes:
    """A client frame's header declaring C{length} bytes of payload (masked unless C{mask} is None)."""
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    return head + (mask or b"")


def frame(
    payload: bytes, opcode: int = BINARY, fin: bool = True, mask: Optional[bytes] = b"\x01\x02\x03\x04", rsv1: bool = False,
) -> bytes:
    """One client frame: masked, unless C{mask} is None (which a server must refuse)."""
    if mask is None:
        return header(len(payload), opcode, fin, rsv1, None) + payload
    n = len(payload)
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big") if n else b""
    return header(n, opcode, fin, rsv1, mask) + masked


def deflate(payload: bytes) -> bytes:
    """A permessage-deflate message's payload (RFC 7692 7.2.1: raw deflate, sync flush, its tail stripped)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def read_frames(data: bytes) -> Tuple[List[Frame], bytes]:
    """Whole (unmasked, server) frames at the start of C{data}, and what is left."""
    frames: List[Frame] = []
    while len(data) >= 2:
        first, second = data[0], data[1]
        n, at = second & 0x7F, 2
        if n == 126:
            if len(data) < 4:
                break
            n, at = struct.unpack("!H", data[2:4])[0], 4
        elif n == 127:
            if len(data) < 10:
                break
            n, at = struct.unpack("!Q", data[2:10])[0], 10
        if second & 0x80:
            raise ValueError("a server frame must not be masked")
        if len(data) < at + n:
            break
        frames.append((first & 0x0F, bool(first & 0x80), bool(first & 0x40), data[at:at + n]))
        data = data[at + n:]
    return frames, data


def inflate(payload: bytes) -> bytes:
    """A permessage-deflate message's payload, inflated (RFC 7692 section 7.2.2)."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(payload + b"\x00\x00\xff\xff")


class RawClient:
    """A blocking WebSocket client on a real socket, for interop tests."""

    def __init__(
        self, port: int, origin: str = "", deflate: bool = False, path: str = "/", timeout: float = 5, tls: Any = None,
    ) -> None:
        """C{tls}: an C{ssl.SSLContext} for wss:// (the server's name is taken to be localhost)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        self.sock.sendall(upgrade_request("127.0.0.1:{}".format(port), path=path, origin=origin, deflate=deflate))
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            head += chunk
        self.response, _, self.buffer = head.partition(b"\r\n\r\n")
        self.status = int(self.response.split(b" ", 2)[1]) if self.response else 0

    def send(self, payload: bytes, opcode: int = BINARY) -> None:
        self.sock.sendall(frame(payload, opcode))

    def frames(self, until: bytes = b"", timeout: float = 5.0, count: int = 0) -> List[Frame]:
        """Frames until their payloads (inflated) end with C{until}, or C{count} of them, or a close."""
        got: List[Frame] = []
        deadline = time.monotonic() + timeout
        while True:
            more, self.buffer = read_frames(self.buffer)
            got.extend(more)
            text = b"".join(inflate(p) if rsv1 else p for op, _, rsv1, p in got if op in (TEXT, BINARY))
            if (until and text.endswith(until)) or (count and len(got) >= count) or any(op == CLOSE for op, _, _, _ in got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError("no {!r} after {}s; frames so far: {!r}".format(until, timeout, got))
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return got
            self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


def payloads(frames: List[Frame]) -> bytes:
    return b"".join(inflate(p) if rsv1 else p for op, _, rsv1, p in frames if op in (TEXT, BINARY))
