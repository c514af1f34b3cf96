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
from typing import IO, Any, Dict, FrozenSet, Optional

from zope.interface import implementer
from twisted.logger import (
    FileLogObserver,
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
#: Levels whose lines the repeat limit never holds back.
_ALWAYS = frozenset((LogLevel.error, LogLevel.critical))


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


class RepeatLimit:
    """
    At most C{burst} lines of one kind (namespace and format) per C{window}
    seconds, by the events' own times; past that they are counted, and the
    first line of the next window says how many were left out.  A client
    that repeats one mistake a thousand times a second must not write
    megabytes of log.
    """

    def __init__(self, burst: int = 20, window: float = 10.0) -> None:
        self.burst = burst
        self.window = window
        #: kind -> [window start, lines written, lines left out]
        self._kinds: Dict[Any, list] = {}

    def __call__(self, event: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """The event to write (perhaps with a note of what was left out), or None."""
        if event.get("log_level") in _ALWAYS and event.get("log_failure") is None:
            return event  # errors are rare and matter: always written
        key = (event.get("log_namespace"), event.get("log_format"))
        now = event.get("log_time", 0.0)
        state = self._kinds.get(key)
        if state is None or now - state[0] >= self.window:
            left_out = state[2] if state is not None else 0
            if len(self._kinds) > 10000:
                self._kinds.clear()
            self._kinds[key] = [now, 1, 0]
            if left_out and event.get("log_format"):
                return dict(event, log_format=event["log_format"] + " ({log_left_out} more like it left out)", log_left_out=left_out)
            return event
        if state[1] < self.burst:
            state[1] += 1
            return event
        state[2] += 1
        return None


@implementer(ILogObserver)
class ConfiguredObserver:
    """
    The observer [log] asks for; its level can change while running (SIGHUP).

    Every event any code emits comes here, written or not (a fleet that
    connects and closes emits one a connection, most of them held back by
    L{RepeatLimit}), so the cheap questions come first: whether the event's
    level passes its namespace's at all (a set of the levels that pass,
    found once per namespace and forgotten when a level changes, where
    Twisted's L{LogLevelFilterPredicate} splits the namespace and compares
    constants in Python for every event), then whether it is one of
    Twisted's plumbing lines (L{demoted}), then the repeat limit; only what
    passes them all is formatted, once, by the file observer.
    """

    def __init__(self, format: str, level: str, stream: Optional[IO[str]] = None) -> None:
        self.format = format
        #: The level rules (a default, and per namespace if any are set on it):
        #: what L{_passing} is worked out from.
        self._predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
        #: namespace -> the levels written for it.
        self._passing: Dict[Any, FrozenSet[Any]] = {}
        #: Changes of the level rules so far.
        self._rules = 0
        self._repeats = RepeatLimit()
        self.write_to(stream if stream is not None else sys.stdout)

    def write_to(self, stream: IO[str]) -> "ConfiguredObserver":
        """Write to C{stream} from now on (twist's C{--log-file} chooses it)."""
        # (Filtered here, so the file observer is called only with what is written.)
        self._observer: ILogObserver = FileLogObserver(stream, event_as_json) if self.format == "json" else textFileLogObserver(stream)
        return self

    def set_level(self, level: str) -> None:
        """Write events at C{level} or above from now on (per-namespace levels set on the rules stay)."""
        self._predicate.defaultLogLevel = _LEVELS[level]
        self._predicate.setLogLevelForNamespace("", _LEVELS[level])
        self._rules += 1
        self._passing.clear()

    def set_level_for_namespace(self, namespace: str, level: str) -> None:
        """Write events of C{namespace} (and the namespaces under it) at C{level} or above."""
        self._predicate.setLogLevelForNamespace(namespace, _LEVELS[level])
        self._rules += 1
        self._passing.clear()

    def _levels_for(self, namespace: Any) -> FrozenSet[Any]:
        """The levels written for C{namespace}, as Twisted's level filter decides (none without a namespace)."""
        rules = self._rules
        if not namespace:
            passing: FrozenSet[Any] = frozenset()
        else:
            least = self._predicate.logLevelForNamespace(namespace)
            passing = frozenset(level for level in _LEVELS.values() if level >= least)
        if len(self._passing) > 10000:
            self._passing.clear()  # (namespaces made up at run time must not grow it for good)
        if rules == self._rules:
            # (Not kept if the levels changed meanwhile: an event logged from a thread.)
            self._passing[namespace] = passing
        return passing

    def __call__(self, event: Dict[str, Any]) -> None:
        namespace = event.get("log_namespace")
        passing = self._passing.get(namespace)
        if passing is None:
            passing = self._levels_for(namespace)
        level = event.get("log_level")
        if level not in passing:
            return
        if level is LogLevel.info and (namespace == "log_legacy" or event.get("log_format") in _PLUMBING_FORMATS):
            # (demoted only ever lowers an info line to debug, and only these.)
            event = demoted(event)
            if event["log_level"] is not level and event["log_level"] not in passing:
                return
        limited = self._repeats(event)
        if limited is not None:
            self._observer(limited)


def make_observer(format: str, level: str, stream: Optional[IO[str]] = None) -> ConfiguredObserver:
    """An observer writing events at C{level} or above, as C{format} ("text" or "json")."""
    return ConfiguredObserver(format, level, stream)
