"""Sample events, one per type, as producers would publish them."""

import json

from eventsvc.events.types import EVENT_TYPES


def event(type_name: str, event_id: str = "", **extra) -> dict:
    body = {
        "event_id": event_id or "evt-" + type_name,
        "type": {"name": type_name},
        "producer": {"id": "urn:chef:svc:test", "producer_name": "tests", "producer_type": "service", "tags": ["t"]},
        "tags": ["a"],
        "published": "2026-11-28T01:02:03Z",
        "actor": {"id": "user:1", "object_type": "user", "display_name": "Ada"},
        "verb": "create",
        "object": {"id": "obj:1", "object_type": "node", "display_name": "web-1"},
        "target": {"id": "t:1", "object_type": "thing", "display_name": "x"},
        "data": {"k": 1},
        "projects": ["p1"],
    }
    body.update(extra)
    return body


def payload(type_name: str, event_id: str = "", **extra) -> bytes:
    return json.dumps(event(type_name, event_id, **extra)).encode()


ALL = {name: payload(name) for name in EVENT_TYPES}
