"""
JSON that arrived from outside: a CONNECT or INFO line, an event, an
authentication service's answer, a file an operator passed.

Why not plain C{json.loads}: on PyPy 3.9 (7.3.11) the JSON decoder puts the
raw first byte of an unexpected character into its error message
(C{Unexpected '\\xed'}), which leaves a C{str} that is not valid inside, and
formatting it later (C{"{}".format(error)}, C{json.dumps}) raises
C{SystemError} (an RPython C{CheckError}).  A producer publishing a
malformed event would then get no acknowledgement at all.  So bytes are
decoded here first, and a decoding error is described from its position,
never from the decoder's own message.

Nesting is bounded (L{MAX_DEPTH}): a CONNECT of two thousand brackets from
a client that has not even logged in made the decoder raise RecursionError
out of the protocol code, with a 2 KB traceback logged per attempt.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, Union

#: Deepest nesting of arrays and objects accepted (events and CONNECTs
#: need a handful).
MAX_DEPTH = 64
_STRUCTURE = re.compile(r'[\[\]{}"\\]')


def depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON C{text} (brackets inside strings do not count)."""
    deepest = level = 0
    in_string = False
    skip = -1  # the position a backslash escapes
    for m in _STRUCTURE.finditer(text):
        pos, c = m.start(), m.group()
        if pos == skip:
            continue
        if in_string:
            if c == "\\":
                skip = pos + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c == "[" or c == "{":
            level += 1
            if level > deepest:
                deepest = level
        elif c == "]" or c == "}":
            level -= 1
    return deepest


def _not_json(name: str) -> Any:
    raise ValueError("not JSON: {}".format(name))


#: The decoder that refuses NaN and the infinities, made once (C{json.loads}
#: with an argument makes one a call).
_STANDARD = json.JSONDecoder(parse_constant=_not_json)
#: The decoding of the rest: on PyPy C{json.loads} without arguments (its
#: fast decoder: a JSONDecoder's is Python, eight times slower on a
#: CONNECT), on CPython a decoder made once (C{json.loads}'s own checks
#: were some 4,000 instructions of a CONNECT's 67,000).
_decode = json.loads if sys.implementation.name == "pypy" else json.JSONDecoder().decode


def loads(data: Union[bytes, str], errors: str = "replace", standard: bool = False) -> Any:
    """
    Parse C{data}; bytes are UTF-8.  C{errors="replace"} turns invalid
    sequences into U+FFFD, as Go's encoding/json (and so nats-server) does
    inside strings; C{"strict"} refuses them.  C{standard}: C{NaN},
    C{Infinity} and C{-Infinity} are refused, as Go's decoder refuses them
    (Python's reads them as floats).

    @raise ValueError: not UTF-8 (strict), or not JSON; the message is
        plain ASCII with the position, safe to log and to send back.
    """
    text = data.decode("utf-8", errors) if isinstance(data, (bytes, bytearray)) else data
    # Counting brackets is C-fast; only text with many of them is scanned.
    if text.count("[") + text.count("{") > MAX_DEPTH and depth(text) > MAX_DEPTH:
        raise ValueError("JSON nested deeper than {} levels".format(MAX_DEPTH))
    try:
        if standard and ("NaN" in text or "Infinity" in text):
            # (Only then: on PyPy only json.loads without arguments is its
            # fast decoder; a JSONDecoder's is Python, eight times slower.)
            return _STANDARD.decode(text)
        return _decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except json.JSONDecodeError as e:
        near = text[e.pos : e.pos + 12]
        raise ValueError(
            "not valid JSON at line {} column {} (char {}, near {})".format(e.lineno, e.colno, e.pos, ascii(near))
        ) from None
