"""
The event envelope, its validation, the ten event types and the registry
from type to handlers.

Validation errors name the field (C{type.name}, C{producer.id}, ...), so a
producer told C{success: false} knows what to fix.  This module does no I/O.
"""

from __future__ import annotations

from datetime import datetime
from itertools import repeat
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from eventsvc import wirejson

#: The seed's spelling, "profileUpdate" included.
EVENT_TYPES: Tuple[str, ...] = (
    "compliance_ingest",
    "cfgingest",
    "event_feed",
    "scanJobCreated",
    "scanJobUpdated",
    "scanJobDeleted",
    "profileCreated",
    "profileUpdate",
    "profileDeleted",
    "nodeTerminated",
)

#: The Go event service's routing.
DEFAULT_ROUTING: Dict[str, Tuple[str, ...]] = {
    "compliance_ingest": ("feed",),
    "cfgingest": ("cfgingest",),
    "nodeTerminated": ("cfgingest",),
    "event_feed": ("event_feed",),
    "scanJobCreated": ("event_feed",),
    "scanJobUpdated": ("event_feed",),
    "scanJobDeleted": ("event_feed",),
    "profileCreated": ("event_feed",),
    "profileUpdate": ("event_feed",),
    "profileDeleted": ("event_feed",),
}


class EventError(ValueError):
    """An invalid event; C{field} is the dotted name of what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__("{}: {}".format(field, problem))
        self.field = field


def _string(value: Any, field: str, required: bool = False) -> None:
    if value is None:
        if required:
            raise EventError(field, "required")
        return
    if not isinstance(value, str) or (required and not value):
        raise EventError(field, "must be a non-empty string" if required else "must be a string")


def _strings(value: Any, field: str) -> None:
    if value is None:
        return
    # (map runs the check in C: this is on every event's path.)
    if not isinstance(value, list) or not all(map(isinstance, value, repeat(str))):
        raise EventError(field, "must be a list of strings")


def _object(value: Any, field: str, required: bool = False) -> Optional[Mapping[str, Any]]:
    if value is None:
        if required:
            raise EventError(field, "required")
        return None
    if not isinstance(value, dict):
        raise EventError(field, "must be an object")
    return value


def _timestamp(value: Any, field: str) -> None:
    _string(value, field, required=True)
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise EventError(field, "must be an RFC 3339 timestamp, got {!r}".format(value))


#: The parts of an event with an id, a type and a name, and their fields' dotted names.
_PARTS = tuple(
    (part, tuple((key, part + "." + key) for key in ("id", "object_type", "display_name")))
    for part in ("actor", "object", "target")
)


_KNOWN = frozenset(EVENT_TYPES)


def _strings_or_none(value: Any) -> bool:
    return value is None or (type(value) is list and all(map(isinstance, value, repeat(str))))


def _valid(event: Any, subject_type: Optional[str]) -> bool:
    """
    The same checks as L{validate}, for an event that passes them, with as
    few calls as can be: this runs for every event.  False for anything
    else, which L{validate} then describes.
    """
    if type(event) is not dict:
        return False
    get = event.get
    kind, producer, event_id = get("type"), get("producer"), get("event_id")
    if type(event_id) is not str or not event_id or type(kind) is not dict or type(producer) is not dict:
        return False
    name = kind.get("name")
    if type(name) is not str or name not in _KNOWN or (subject_type is not None and subject_type != name):
        return False
    pid, pname, ptype = producer.get("id"), producer.get("producer_name"), producer.get("producer_type")
    if type(pid) is not str or not pid or not (pname is None or type(pname) is str) or not (ptype is None or type(ptype) is str):
        return False
    if not (_strings_or_none(producer.get("tags")) and _strings_or_none(get("tags")) and _strings_or_none(get("projects"))):
        return False
    verb, data, published = get("verb"), get("data"), get("published")
    if not (verb is None or type(verb) is str) or not (data is None or type(data) is dict):
        return False
    for part in ("actor", "object", "target"):
        value = get(part)
        if value is None:
            continue
        if type(value) is not dict:
            return False
        for key in ("id", "object_type", "display_name"):
            field = value.get(key)
            if field is not None and type(field) is not str:
                return False
    if type(published) is not str or not published:
        return False
    try:
        datetime.fromisoformat(published.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


def validate(event: Any, subject_type: Optional[str] = None) -> Dict[str, Any]:
    """
    Check an event envelope; returns it.  When it was published on
    C{event.<type>}, C{subject_type} must agree with C{type.name}.

    @raise EventError: naming the first field that is wrong.
    """
    if _valid(event, subject_type):
        return event
    return _validate(event, subject_type)


def _validate(event: Any, subject_type: Optional[str]) -> Dict[str, Any]:
    """L{validate}, check by check, naming the first field that is wrong."""
    if not isinstance(event, dict):
        raise EventError("event", "must be a JSON object")
    _string(event.get("event_id"), "event_id", required=True)
    kind = _object(event.get("type"), "type", required=True)
    assert kind is not None
    name = kind.get("name")
    _string(name, "type.name", required=True)
    if name not in EVENT_TYPES:
        raise EventError("type.name", "unknown event type {!r} (known: {})".format(name, ", ".join(EVENT_TYPES)))
    if subject_type is not None and subject_type != name:
        raise EventError("type.name", "is {!r} but the event was published on the subject for {!r}".format(name, subject_type))
    producer = _object(event.get("producer"), "producer", required=True)
    assert producer is not None
    _string(producer.get("id"), "producer.id", required=True)
    _string(producer.get("producer_name"), "producer.producer_name")
    _string(producer.get("producer_type"), "producer.producer_type")
    _strings(producer.get("tags"), "producer.tags")
    _strings(event.get("tags"), "tags")
    _timestamp(event.get("published"), "published")
    _string(event.get("verb"), "verb")
    for part, keys in _PARTS:
        value = _object(event.get(part), part)
        if value is not None:
            for key, where in keys:
                _string(value.get(key), where)
    _object(event.get("data"), "data")
    _strings(event.get("projects"), "projects")
    return event


def parse(payload: bytes, subject_type: Optional[str] = None) -> Dict[str, Any]:
    """Decode and validate a JSON event."""
    try:
        event = wirejson.loads(payload, errors="strict")
    except ValueError as e:
        raise EventError("event", "not JSON: {}".format(e))
    return validate(event, subject_type)


class Registry:
    """Which handlers each event type goes to."""

    def __init__(self, overrides: Optional[Mapping[str, Sequence[str]]] = None) -> None:
        self.routes: Dict[str, Tuple[str, ...]] = dict(DEFAULT_ROUTING)
        for name, handlers in (overrides or {}).items():
            if name not in EVENT_TYPES:
                raise ValueError("unknown event type {!r}".format(name))
            self.routes[name] = tuple(handlers)

    def handlers_for(self, type_name: str) -> Tuple[str, ...]:
        return self.routes.get(type_name, ())

    def routed_to(self, handler: str) -> List[str]:
        """The event types that go to C{handler}, in the order of L{EVENT_TYPES}."""
        return [t for t in EVENT_TYPES if handler in self.handlers_for(t)]

    def handler_names(self) -> List[str]:
        return sorted({h for hs in self.routes.values() for h in hs})
