"""
NATS credentials files (C{.creds}): a user JWT and the user's nkey seed,
as C{nsc} writes them and nats-server's leaf remotes read them
(C{credentials}).  A hub in operator mode sends a nonce in its INFO; the
spoke answers with the JWT and the nonce signed with the seed (ed25519),
and the hub checks both against the account the JWT was issued by.

This module reads and signs; it verifies nothing (eventsvc has no operator
mode of its own).
"""

from __future__ import annotations

import base64
import re
from typing import Callable, Tuple

#: nats-server's credsRe: the text between each pair of dashed lines.
_BLOCK = re.compile(rb"\s*(?:(?:[-]{3,}[^\n]*[-]{3,}\n)(.+)(?:\n\s*[-]{3,}[^\n]*[-]{3,}\n))")

_PREFIX_SEED = 18 << 3  # "S"
_PREFIX_USER = 20 << 3  # "U"


class CredentialsError(Exception):
    """A credentials file that cannot be read or is not one."""


def _crc16(data: bytes) -> int:
    """CRC-16/XMODEM, as nkeys checks its keys."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def user_seed(seed: bytes) -> bytes:
    """
    The 32 bytes of an nkey user seed (C{SU...}).

    @raise CredentialsError: not a user seed, or its checksum is wrong.
    """
    text = seed.strip()
    try:
        raw = base64.b32decode(text + b"=" * (-len(text) % 8))
    except ValueError:
        raise CredentialsError("the seed is not base32")
    if len(raw) != 36 or _crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise CredentialsError("the seed's checksum is wrong")
    kind = ((raw[0] & 7) << 5) | ((raw[1] & 248) >> 3)
    if raw[0] & 248 != _PREFIX_SEED or kind != _PREFIX_USER:
        raise CredentialsError("the seed is not a user's (SU...)")
    return raw[2:34]


def read_credentials(path: str) -> Tuple[str, bytes]:
    """
    The user JWT and seed of the credentials file at C{path}.

    @raise CredentialsError: unreadable, or not a credentials file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise CredentialsError("{}: cannot read the credentials: {}".format(path, e.strerror or e))
    blocks = _BLOCK.findall(data)
    if len(blocks) < 2:
        raise CredentialsError("{}: not a NATS credentials file (a user JWT and a seed between dashed lines)".format(path))
    try:
        jwt = blocks[0].strip().decode("ascii")
        seed = user_seed(blocks[1])
    except (UnicodeDecodeError, CredentialsError) as e:
        raise CredentialsError("{}: {}".format(path, e))
    return jwt, seed


def nonce_signer(path: str) -> Callable[[bytes], Tuple[str, str]]:
    """
    A function of a hub's nonce giving (user JWT, signature) for a leaf
    CONNECT, reading C{path} each time (as nats-server does: a rotated
    file is used at the next connect).  The file is read once now, so
    that a bad one stops start-up.

    @raise CredentialsError: the file is unreadable or not credentials.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    read_credentials(path)

    def sign(nonce: bytes) -> Tuple[str, str]:
        jwt, seed = read_credentials(path)
        signature = Ed25519PrivateKey.from_private_bytes(seed).sign(nonce)
        return jwt, base64.urlsafe_b64encode(signature).rstrip(b"=").decode("ascii")

    return sign
