"""
The JSON event envelope (docs/events.md) and Automate's C{EventMsg}, each
made from the other.  They carry the same fields; what differs:

  - C{published} is RFC 3339 text in JSON and a C{Timestamp} in gRPC: the
    same instant, written back in UTC (C{...Z}).  Text with no zone is UTC.
  - C{data} is a JSON object in one and a C{Struct} in the other, whose
    numbers are doubles: an integral number comes back as an integer (as
    Go's protojson writes it), so C{42} stays C{42}.
  - proto3 does not tell an empty string from an absent one: an empty
    field is left out of the JSON, a part (C{actor}, ...) that is absent
    stays absent.

No I/O; validation is the event layer's (L{eventsvc.events.types}).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict

from google.protobuf import json_format

from eventsvc.grpc.generated import event_pb2

_PARTS = ("actor", "object", "target")
_PART_KEYS = ("id", "object_type", "display_name")
#: Integers a double holds exactly.
_EXACT = 2 ** 53


class ConversionError(ValueError):
    """The event cannot be written as an EventMsg; the text names the field."""


def to_message(event: Dict[str, Any]) -> event_pb2.EventMsg:
    """
    An C{EventMsg} from a JSON envelope that passed validation.

    @raise ConversionError: C{published} or C{data} cannot be carried (a
        timestamp out of a Timestamp's range, a number that is not finite).
    """
    msg = event_pb2.EventMsg(event_id=event["event_id"])
    msg.type.name = event["type"]["name"]
    producer = event["producer"]
    msg.producer.id = producer["id"]
    msg.producer.producer_name = producer.get("producer_name") or ""
    msg.producer.producer_type = producer.get("producer_type") or ""
    msg.producer.tags.extend(producer.get("tags") or ())
    msg.tags.extend(event.get("tags") or ())
    _set_published(msg, event["published"])
    for part in _PARTS:
        value = event.get(part)
        if value is not None:
            target = getattr(msg, part)
            target.SetInParent()
            for key in _PART_KEYS:
                setattr(target, key, value.get(key) or "")
    msg.verb = event.get("verb") or ""
    data = event.get("data")
    if data is not None:
        try:
            msg.data.update(data)
        except (ValueError, TypeError) as e:
            raise ConversionError("data: cannot be a protobuf Struct: {}".format(e))
    msg.projects.extend(event.get("projects") or ())
    return msg


def _set_published(msg: event_pb2.EventMsg, text: str) -> None:
    try:
        msg.published.FromJsonString(text)
        return
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        msg.published.FromDatetime(moment)
    except (ValueError, OverflowError) as e:
        raise ConversionError("published: {!r} cannot be a protobuf Timestamp: {}".format(text, e))


def to_event(msg: event_pb2.EventMsg) -> Dict[str, Any]:
    """The JSON envelope of an C{EventMsg} (for the event layer to validate)."""
    event: Dict[str, Any] = {"event_id": msg.event_id, "type": {"name": msg.type.name}}
    producer: Dict[str, Any] = {"id": msg.producer.id}
    if msg.producer.producer_name:
        producer["producer_name"] = msg.producer.producer_name
    if msg.producer.producer_type:
        producer["producer_type"] = msg.producer.producer_type
    producer["tags"] = list(msg.producer.tags)
    event["producer"] = producer
    event["tags"] = list(msg.tags)
    if msg.HasField("published"):
        event["published"] = msg.published.ToJsonString()
    for part in _PARTS:
        if msg.HasField(part):
            value = getattr(msg, part)
            event[part] = {key: getattr(value, key) for key in _PART_KEYS if getattr(value, key)}
    if msg.verb:
        event["verb"] = msg.verb
    if msg.HasField("data"):
        event["data"] = _integral(json_format.MessageToDict(msg.data))
    event["projects"] = list(msg.projects)
    return event


def _integral(value: Any) -> Any:
    """Struct's doubles that hold integers, as integers (what protojson writes)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and -_EXACT <= value <= _EXACT else value
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value
