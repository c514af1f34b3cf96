"""
How the JetStream API writes times and headers: RFC 3339 times with
nanoseconds (Go's C{time.Time} in JSON), and C{NATS/1.0} header blocks,
status lines included (C{NATS/1.0 404 No Messages}).
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Dict, List, Optional, Tuple

ZERO_TIME = "0001-01-01T00:00:00Z"

_RFC3339 = re.compile(r"^(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|z|[+-]\d\d:\d\d)$")


def now_ns() -> int:
    """The time now, in nanoseconds since the epoch."""
    return time.time_ns()


def rfc3339(ns: int) -> str:
    """C{ns} since the epoch as Go writes a UTC C{time.Time} (no trailing zeros); 0 is Go's zero time."""
    if ns <= 0:
        return ZERO_TIME
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if fraction:
        text += "." + ("%09d" % fraction).rstrip("0")
    return text + "Z"


def parse_rfc3339(text: str) -> int:
    """An RFC 3339 time as nanoseconds since the epoch; raises ValueError if it is not one."""
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError("not an RFC 3339 time: {!r}".format(text))
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    seconds = calendar.timegm((int(year), int(month), int(day), int(hour), int(minute), int(second), 0, 0, 0))
    if zone not in ("Z", "z"):
        sign = 1 if zone[0] == "+" else -1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    nanos = int((fraction or "0").ljust(9, "0"))
    return seconds * 1_000_000_000 + nanos


def header_block(headers: List[Tuple[str, str]], status: str = "") -> bytes:
    """
    A C{NATS/1.0} block: the status line (C{"404 No Messages"}, say),
    then each header, then the blank line.
    """
    lines = ["NATS/1.0 " + status if status else "NATS/1.0"]
    lines.extend("{}: {}".format(name, value) for name, value in headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


def parse_headers(block: Optional[bytes]) -> Tuple[str, Dict[str, List[str]]]:
    """
    A header block as (status, {name: [values]}); names keep their case,
    as nats-server's lookups are case-sensitive (C{Nats-Msg-Id}).  The
    status is the text after C{NATS/1.0} (often empty).
    """
    if not block:
        return "", {}
    text = block.decode("utf-8", "replace")
    lines = text.split("\r\n")
    status = lines[0][len("NATS/1.0"):].strip() if lines[0].startswith("NATS/1.0") else ""
    headers: Dict[str, List[str]] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            continue
        headers.setdefault(name.strip(), []).append(value.strip())
    return status, headers


def header(block: Optional[bytes], name: str) -> Optional[str]:
    """The first value of header C{name} in C{block}, or None (a fast path for the publish checks)."""
    if not block or name.encode("ascii") not in block:
        return None
    values = parse_headers(block)[1].get(name)
    return values[0] if values else None
