"""
Log observers chosen by configuration: text or JSON lines, filtered by level.

Code that logs uses C{twisted.logger.Logger} and never knows which format is
in force.  The observer writes to standard output (the journal, under
systemd).
"""

from __future__ import annotations

import sys
from typing import IO, Optional

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    jsonFileLogObserver,
    textFileLogObserver,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}


def make_observer(format: str, level: str, stream: Optional[IO[str]] = None) -> ILogObserver:
    """An observer writing events at C{level} or above, as C{format} ("text" or "json")."""
    stream = stream if stream is not None else sys.stdout
    if format == "json":
        inner = jsonFileLogObserver(stream, recordSeparator="")
    else:
        inner = textFileLogObserver(stream)
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(inner, [predicate])

