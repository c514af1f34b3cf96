"""
PyPy's JIT parameters, set when eventsvc starts as a program ([pypy] jit).

PyPy compiles a loop after it has run C{threshold} times and a function
after C{function_threshold} calls (1039 and 1619 by default): a server's
code that runs once a connection, or once a read, runs interpreted for its
first thousands of connections and hundreds of thousands of messages.
eventsvc lowers the loop threshold at start-up on PyPy (L{DEFAULT}; the
figures are in docs/performance.md, "PyPy's warm-up"), and an operator
changes or turns that off with [pypy] jit.

This module checks a setting (L{problem}, for the configuration) and
applies it (L{apply}); CPython has no JIT, and nothing is done there.  It
imports nothing (the configuration's checks use it).  Only
the process shell (L{eventsvc.tap}) applies it, never L{make_service}: an
application that embeds eventsvc owns its interpreter's settings.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

#: What eventsvc sets on PyPy unless [pypy] jit says otherwise.
DEFAULT = "threshold=300"

#: The parameters [pypy] jit may set (C{pypy --jit help}), with their least
#: and greatest values.  PyPy refuses a trace_limit above 16384 with an
#: internal error, not a message: it is checked here instead.
PARAMETERS: Dict[str, Tuple[int, int]] = {
    "threshold": (1, 2 ** 31 - 1),
    "function_threshold": (1, 2 ** 31 - 1),
    "trace_eagerness": (1, 2 ** 31 - 1),
    "decay": (0, 1000),
    "trace_limit": (1, 16384),
    "loop_longevity": (1, 2 ** 31 - 1),
    "inlining": (0, 1),
    "max_unroll_recursion": (0, 2 ** 31 - 1),
    "max_unroll_loops": (0, 2 ** 31 - 1),
    "max_retrace_guards": (0, 2 ** 31 - 1),
    "retrace_limit": (0, 2 ** 31 - 1),
    "disable_unrolling": (0, 2 ** 31 - 1),
}

def parse(setting: str) -> List[Tuple[str, int]]:
    """
    The parameters C{setting} names, in order: C{"name=value,..."} as
    C{pypy --jit} takes it; C{""} and C{"off"} name none.

    @raise ValueError: a name PyPy does not know, a value that is not a
        whole number or is out of its range, or a part without C{=};
        the message says which and what would do.
    """
    if setting in ("", "off"):
        return []
    out = []
    for part in setting.split(","):
        name, equals, value = part.strip().partition("=")
        name, value = name.strip(), value.strip()
        if not equals or not name:
            raise ValueError("{!r} is not name=value (write \"threshold=300,function_threshold=500\", \"\" for PyPy's own "
                             "parameters, or \"off\")".format(part.strip()))
        if name not in PARAMETERS:
            raise ValueError("unknown JIT parameter {!r} (known: {})".format(name, ", ".join(sorted(PARAMETERS))))
        least, most = PARAMETERS[name]
        # ASCII digits (and a sign) only: Python's int() also takes "3_00"
        # and other scripts' digits, which PyPy's parser refuses at start-up.
        digits = value[1:] if value[:1] in ("+", "-") else value
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError("{} must be a whole number, got {!r}".format(name, value))
        number = int(value)
        if not least <= number <= most:
            raise ValueError("{} must be between {} and {}, got {}".format(name, least, most, number))
        out.append((name, number))
    return out


def problem(setting: str) -> Optional[str]:
    """What is wrong with C{setting} (L{parse}), or None."""
    try:
        parse(setting)
    except ValueError as e:
        return str(e)
    return None


def _interpreter_jit() -> Optional[Any]:
    """PyPy's C{pypyjit} module; None on an interpreter without a JIT."""
    try:
        import pypyjit  # type: ignore[import-not-found]
    except ImportError:
        return None
    return pypyjit


def apply(setting: str) -> Optional[str]:
    """
    Set C{setting} (checked by L{problem}) as PyPy's JIT parameters: on
    top of PyPy's own defaults, not of anything set before; C{""} leaves
    them as they are (PyPy's own, or what C{pypy --jit} said), C{"off"}
    turns the JIT off.  Returns what was set (as PyPy's parser takes it:
    "threshold = 300" is set as "threshold=300"), None when nothing was
    (no JIT, or C{""}).

    @raise ValueError: the interpreter refused it (a parameter this PyPy
        does not have).
    """
    jit = _interpreter_jit()
    if jit is None or setting == "":
        return None
    # Written again as PyPy's parser takes it: it refuses the blanks around
    # "=" (a "threshold = 300" that L{parse} accepts) with no word of why.
    setting = "off" if setting == "off" else ",".join("{}={}".format(name, number) for name, number in parse(setting))
    try:
        jit.set_param("default")
        jit.set_param(setting)
    except (ValueError, SystemError) as e:
        jit.set_param("default")
        raise ValueError("this PyPy refused {!r}: {}".format(setting, e))
    return setting
