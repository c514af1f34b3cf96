"""NATS credentials files: reading them, nkey seeds, and signing a hub's nonce."""

from __future__ import annotations

import base64
import os

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.security.creds import CredentialsError, nonce_signer, read_credentials, user_seed
from eventsvc.test import leafcreds


class CredentialsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.makedirs(self.directory)
        self.files = leafcreds.write(self.directory)

    def test_read(self) -> None:
        jwt, seed = read_credentials(self.files["user.creds"])
        self.assertTrue(jwt.startswith("eyJ"))
        self.assertEqual(jwt.count("."), 2)
        self.assertEqual(len(seed), 32)

    def test_the_signature_verifies_with_the_users_public_key(self) -> None:
        """The user's public key (the JWT's subject) checks our signature of the nonce, as the hub does."""
        import json

        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        jwt, sig = nonce_signer(self.files["user.creds"])(b"r4nd0m-n0nce")
        claims = json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))
        raw = base64.b32decode(claims["sub"] + "=" * (-len(claims["sub"]) % 8))
        key = Ed25519PublicKey.from_public_bytes(raw[1:33])
        key.verify(base64.urlsafe_b64decode(sig + "=="), b"r4nd0m-n0nce")  # raises if wrong
        self.assertNotIn("=", sig)

    def test_bad_files(self) -> None:
        def write(name: str, text: str) -> str:
            path = os.path.join(self.directory, name)
            with open(path, "w") as f:
                f.write(text)
            return path

        for path, fragment in (
            (os.path.join(self.directory, "missing.creds"), "cannot read"),
            (write("empty.creds", ""), "not a NATS credentials file"),
            (write("jwt-only.creds", leafcreds.USER_CREDS.split("*")[0]), "not a NATS credentials file"),
            (write("flipped.creds", leafcreds.USER_CREDS.replace("SUA", "SUB", 1)), "checksum"),
        ):
            with self.assertRaises(CredentialsError) as caught:
                nonce_signer(path)
            self.assertIn(fragment, str(caught.exception))
            self.assertIn(path, str(caught.exception))

    def test_seed_kinds(self) -> None:
        from eventsvc.security.creds import _crc16

        def seed_of(kind: int, key: bytes) -> bytes:
            raw = bytes([(18 << 3) | (kind >> 5), (kind & 31) << 3]) + key
            raw += _crc16(raw).to_bytes(2, "little")
            return base64.b32encode(raw).rstrip(b"=")

        jwt, key = read_credentials(self.files["user.creds"])
        self.assertEqual(user_seed(seed_of(20 << 3, key)), key)  # a user's: SU...
        with self.assertRaises(CredentialsError) as caught:
            user_seed(seed_of(0, key))  # an account's: SA...
        self.assertIn("not a user's", str(caught.exception))
        with self.assertRaises(CredentialsError):
            user_seed(b"not base32!")
