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
"""

from __future__ import annotations

import json
from typing import Any, Union


def loads(data: Union[bytes, str], errors: str = "replace") -> Any:
    """
    Parse C{data}; bytes are UTF-8.  C{errors="replace"} turns invalid
    sequences into U+FFFD, as Go's encoding/json (and so nats-server) does
    inside strings; C{"strict"} refuses them.

    @raise ValueError: not UTF-8 (strict), or not JSON; the message is
        plain ASCII with the position, safe to log and to send back.
    """
    text = data.decode("utf-8", errors) if isinstance(data, (bytes, bytearray)) else data
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        near = text[e.pos : e.pos + 12]
        raise ValueError(
            "not valid JSON at line {} column {} (char {}, near {})".format(e.lineno, e.colno, e.pos, ascii(near))
        ) from None
