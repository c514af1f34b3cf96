"""
Operators' Python objects: loading one named C{package.module:attribute},
and taking what it returns (a value, a Deferred or a coroutine).
"""

from __future__ import annotations

import importlib
from typing import Any

from eventsvc.nats.interfaces import settle

__all__ = ["load_object", "settle"]


def load_object(path: str) -> Any:
    """
    The object at C{module:attribute} (or C{module.attribute}).

    @raise ValueError: it cannot be imported; the message says why.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep:
        module_name, _, attribute = path.rpartition(".")
    if not module_name or not attribute:
        raise ValueError("{!r} is not module:attribute".format(path))
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except Exception as e:
        # A module that fails as it is imported (a syntax error, a missing
        # dependency of its own) is the operator's to fix: one line.
        raise ValueError("cannot load {!r}: {}: {}".format(path, type(e).__name__, e))

