"""The certs subcommand: a FAKE development CA and certificates."""

from __future__ import annotations

import argparse
import os
from typing import Dict, Tuple

from eventsvc.cli.common import EX_FAIL, EX_OK, EX_USAGE, say
from eventsvc.files import write_atomic

_NOTICE = b"# FAKE development certificate made by `eventsvc certs` - NOT FOR PRODUCTION\n"

#: What certs writes, in this order: the CA, then one certificate per role.
ROLES = ("ca", "service", "gateway", "client")


def file_names(options: argparse.Namespace) -> Dict[str, Tuple[str, str]]:
    """
    Each role's certificate and key file: --<role>-cert and --<role>-key
    (relative to --out, or absolute), by default <role>.crt and <role>.key.
    Automate's layout, say: --ca-cert root_ca.crt.
    """
    names = {}
    for role in ROLES:
        option = role.replace("-", "_")
        cert = getattr(options, option + "_cert", None) or role + ".crt"
        key = getattr(options, option + "_key", None) or role + ".key"
        names[role] = (os.path.join(options.out, cert), os.path.join(options.out, key))
    return names


def certs(options: argparse.Namespace) -> int:
    from eventsvc.security import certs as minting

    out = options.out
    names = [n for n in options.names.split(",") if n]
    files = file_names(options)
    paths = [p for pair in files.values() for p in pair]
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        return say("eventsvc: certs would write {} twice: give each certificate and key its own name".format(", ".join(twice)), EX_USAGE)
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not options.force:
        return say("eventsvc: {} already there; use --force to replace them".format(", ".join(existing)), EX_FAIL)
    written = []
    try:
        ca = minting.make_ca()
        minted = {"ca": ca}
        for role in ROLES[1:]:
            minted[role] = minting.make_cert(ca, "eventsvc-" + role, names)
        for role in ROLES:
            cert, key = files[role]
            for path in (cert, key):
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            write_atomic(cert, _NOTICE + minted[role].cert_pem, 0o644)
            write_atomic(key, _NOTICE + minted[role].key_pem, 0o600)
            written += [cert, key]
    except OSError as e:
        return say("eventsvc: cannot write certificates to {}: {}".format(e.filename or out, e.strerror or e), EX_FAIL)
    default = all(files[r] == (os.path.join(out, r + ".crt"), os.path.join(out, r + ".key")) for r in ROLES)
    where = out if default else ", ".join(written)
    return say("wrote a FAKE development CA and service, gateway and client certificates for {} to {}".format(", ".join(names), where), EX_OK)
