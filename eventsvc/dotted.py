"""Loading an operator's Python object named C{package.module:attribute}."""

from __future__ import annotations

import importlib
from typing import Any


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
    except (ImportError, AttributeError) as e:
        raise ValueError("cannot load {!r}: {}".format(path, e))
