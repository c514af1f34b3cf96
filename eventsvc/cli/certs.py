"""The certs subcommand: a FAKE development CA and certificates."""

from __future__ import annotations

import argparse
import os

from eventsvc.cli.common import EX_FAIL, EX_OK, say
from eventsvc.files import write_atomic

_NOTICE = b"# FAKE development certificate made by `eventsvc certs` - NOT FOR PRODUCTION\n"


def certs(options: argparse.Namespace) -> int:
    from eventsvc.security import certs as minting

    out = options.out
    names = [n for n in options.names.split(",") if n]
    files = ["ca.crt", "ca.key"] + [r + ext for r in ("service", "gateway", "client") for ext in (".crt", ".key")]
    existing = [f for f in files if os.path.exists(os.path.join(out, f))]
    if existing and not options.force:
        return say("eventsvc: {} already holds {}; use --force to replace them".format(out, ", ".join(existing)), EX_FAIL)
    try:
        os.makedirs(out, exist_ok=True)
        ca = minting.make_ca()
        minted = {"ca": ca}
        for role in ("service", "gateway", "client"):
            minted[role] = minting.make_cert(ca, "eventsvc-" + role, names)
        for role, m in minted.items():
            write_atomic(os.path.join(out, role + ".crt"), _NOTICE + m.cert_pem, 0o644)
            write_atomic(os.path.join(out, role + ".key"), _NOTICE + m.key_pem, 0o600)
    except OSError as e:
        return say("eventsvc: cannot write certificates to {}: {}".format(out, e.strerror or e), EX_FAIL)
    return say("wrote a FAKE development CA and service, gateway and client certificates for {} to {}".format(", ".join(names), out), EX_OK)
