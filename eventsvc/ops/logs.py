"""
Log observers chosen by configuration: text or JSON lines, filtered by level.

Code that logs uses C{twisted.logger.Logger} with structured keys and never
knows which format is in force.  A JSON line carries the time, level,
namespace, the formatted message and the event's own simple keys, so a log
shipper can index them.  The observer writes to standard output (the
journal, under systemd).
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from typing import IO, Any, Dict, Optional

from zope.interface import implementer
from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEvent,
    textFileLogObserver,
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
# Keys of Twisted's own, or of the legacy log API, that are not the event's data.
_INTERNAL = {"format", "message", "isError", "time", "system", "why", "failure", "printed"}
_SIMPLE = (str, int, float, bool, type(None))


#: Twisted's own lines about its plumbing (a port opened or closed, an HTTP
#: client factory started per connection): debug, not info.
_PLUMBING_FORMATS = {"Starting factory {factory!r}", "Stopping factory {factory!r}"}
_PLUMBING_LEGACY = re.compile(r"^(\S+ starting on \d+|\(\S+ Port \d+ Closed\))$")


def demoted(event: Dict[str, Any]) -> Dict[str, Any]:
    """C{event}, at debug level when it is one of Twisted's plumbing lines."""
    if event.get("log_level") is not LogLevel.info:
        return event
    plumbing = event.get("log_format") in _PLUMBING_FORMATS
    if not plumbing and event.get("log_namespace") == "log_legacy":
        message: Any = event.get("message")
        plumbing = bool(message) and isinstance(message[0], str) and _PLUMBING_LEGACY.match(message[0]) is not None
    if plumbing:
        return dict(event, log_level=LogLevel.debug)
    return event


def event_as_json(event: Dict[str, Any]) -> str:
    """One event as one line of JSON."""
    level = event.get("log_level")
    record: Dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(timespec="milliseconds"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    for key, value in event.items():
        if not key.startswith("log_") and key not in _INTERNAL and isinstance(value, _SIMPLE):
            record.setdefault(key, value)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, default=str) + "\n"


@implementer(ILogObserver)
class ConfiguredObserver:
    """The observer [log] asks for; its level can change while running (SIGHUP)."""

    def __init__(self, format: str, level: str, stream: Optional[IO[str]] = None) -> None:
        self.format = format
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
        self.write_to(stream if stream is not None else sys.stdout)

    def write_to(self, stream: IO[str]) -> "ConfiguredObserver":
        """Write to C{stream} from now on (twist's C{--log-file} chooses it)."""
        inner: ILogObserver = FileLogObserver(stream, event_as_json) if self.format == "json" else textFileLogObserver(stream)
        self._observer = FilteringLogObserver(inner, [self._predicate])
        return self

    def set_level(self, level: str) -> None:
        self._predicate.defaultLogLevel = _LEVELS[level]

    def __call__(self, event: Dict[str, Any]) -> None:
        self._observer(demoted(event))


def make_observer(format: str, level: str, stream: Optional[IO[str]] = None) -> ConfiguredObserver:
    """An observer writing events at C{level} or above, as C{format} ("text" or "json")."""
    return ConfiguredObserver(format, level, stream)
