"""
The C{$JS.API.CONSUMER.*} requests, as nats-server 2.9.10's
C{jetstream_api.go} answers them: create (ephemeral, durable, and 2.9's
C{CONSUMER.CREATE.<stream>.<name>[.<filter>]}), info, delete, names, list
(paged by C{offset}) and C{MSG.NEXT}.

L{ROUTES} is merged into L{eventsvc.jetstream.api}'s table, which finds the
handler by verb, passes the tokens after it as C{args}, and writes the
answer (C{{"type": ..., **answer}}, or the L{ApiError} raised).  The rules
of a consumer are L{eventsvc.jetstream.consumer}'s; this module only reads
requests, finds streams and consumers, and shapes answers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from twisted.logger import Logger

from eventsvc.jetstream import errors
from eventsvc.jetstream.consumer import Consumer, as_json, check_config, new_consumer_name, parse_config, public_consumers

if TYPE_CHECKING:  # pragma: no cover
    from eventsvc.jetstream.stream import Stream

log = Logger()

#: nats-server's page sizes (C{JSApiNamesLimit}, C{JSApiListLimit}).
NAMES_LIMIT = 1024
LIST_LIMIT = 256

Handler = Callable[[Any, Any], Optional[Dict[str, Any]]]


def _stream(js: Any, name: str) -> "Stream":
    stream = js.streams.get(name)
    if stream is None:
        raise errors.STREAM_NOT_FOUND_ERR()
    return stream


def _consumer(stream: "Stream", name: str) -> Consumer:
    consumer = stream.consumers.get(name)
    if consumer is None:
        raise errors.CONSUMER_NOT_FOUND_ERR()
    return consumer


def refuse_if_owned(js: Any, stream: "Stream", name: str, refusal: errors.ErrorKind, what: str) -> None:
    """
    A consumer the server owns (an event handler's, L{JetStream.owned}) is
    not changed or deleted through the API: C{refusal} (nats-server's
    error for the request that failed) says so, and what it follows.
    """
    if name in js.owned.get(stream.name, ()):
        raise refusal(err="{} not permitted: consumer {} of stream {} is eventsvc handler {}'s progress; it "
                          "follows [events] and [handlers] in the service's configuration file".format(
                              what, name, stream.name, name))


def is_empty_request(payload: bytes) -> bool:
    """nats-server's C{isEmptyRequest}: nothing, or an empty JSON object."""
    if not payload.strip() or payload == b"{}":
        return True
    try:
        value = json.loads(payload)
    except ValueError:
        return False
    return isinstance(value, dict) and not value


def _offset(payload: bytes) -> int:
    """A paged request's C{offset} (0 for an empty request); invalid JSON is refused."""
    if is_empty_request(payload):
        return 0
    try:
        request = json.loads(payload)
    except ValueError:
        raise errors.INVALID_J_S_O_N_ERR()
    if not isinstance(request, dict):
        raise errors.INVALID_J_S_O_N_ERR()
    offset = request.get("offset", 0)
    if offset is None:
        return 0
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise errors.INVALID_J_S_O_N_ERR()
    return max(offset, 0)


def create_consumer(js: Any, stream: "Stream", config: Dict[str, Any]) -> Consumer:
    """
    Make (or, when it exists, update) the consumer C{config} describes
    (nats-server's C{addConsumer}); C{config} is a request's, read by
    L{parse_config}.  Raises L{ApiError}.
    """
    name = config.get("durable_name") or config.get("name") or ""
    config = check_config(stream, config)
    existing = stream.consumers.get(name) if name else None
    if existing is not None:
        existing.update(config)
        return existing
    if not name:
        name = new_consumer_name()
        while name in stream.consumers:
            name = new_consumer_name()
    created = js.now()
    try:
        store = stream.new_consumer_store(name, as_json(config), created)
    except errors.ApiError:
        raise
    except Exception as e:
        log.failure("consumer store for {stream} > {consumer} failed", stream=stream.name, consumer=name)
        raise errors.CONSUMER_STORE_FAILED_ERR_F(err=e)
    consumer = Consumer(stream, name, config, store, created)
    stream.attach(consumer)
    return consumer


def _create(js: Any, request: Any, durable: bool) -> Dict[str, Any]:
    """C{CONSUMER.CREATE} and C{CONSUMER.DURABLE.CREATE} (nats-server's C{jsConsumerCreateRequest})."""
    args: List[str] = list(request.args)
    try:
        body = json.loads(request.payload)
    except ValueError:
        raise errors.INVALID_J_S_O_N_ERR()
    if not isinstance(body, dict):
        raise errors.INVALID_J_S_O_N_ERR()
    stream_name = body.get("stream_name", "")
    if not isinstance(stream_name, str):
        raise errors.INVALID_J_S_O_N_ERR()
    config = parse_config(body.get("config"))
    if not args:
        raise errors.STREAM_MISMATCH_ERR()
    subject_stream = args[0]
    consumer_name = args[1] if len(args) > 1 else ""
    # nats-server takes a filter from the subject only when it has two
    # tokens or more (CREATE.<stream>.<name>.<one token> has none).
    filter_subject = ".".join(args[2:]) if len(args) > 3 else ""
    if durable and len(args) != 2:
        raise errors.CONSUMER_DURABLE_NAME_NOT_IN_SUBJECT_ERR()
    if subject_stream != stream_name:
        raise errors.STREAM_MISMATCH_ERR()
    if consumer_name and ("/" in consumer_name or "\\" in consumer_name):
        raise errors.CONSUMER_NAME_CONTAINS_PATH_SEPARATORS_ERR()
    if durable:
        if not config["durable_name"]:
            raise errors.CONSUMER_DURABLE_NAME_NOT_SET_ERR()
        if consumer_name != config["durable_name"]:
            raise errors.CONSUMER_DURABLE_NAME_NOT_MATCH_SUBJECT_ERR()
    elif consumer_name:
        if config["durable_name"] and consumer_name != config["durable_name"]:
            raise errors.CONSUMER_DURABLE_NAME_NOT_MATCH_SUBJECT_ERR()
        config["name"] = consumer_name
    elif config["durable_name"]:
        raise errors.CONSUMER_EPHEMERAL_WITH_DURABLE_NAME_ERR()
    if filter_subject and config["filter_subject"] != filter_subject:
        raise errors.CONSUMER_CREATE_FILTER_SUBJECT_MISMATCH_ERR()
    if config["num_replicas"] > 1:
        raise errors.STREAM_REPLICAS_NOT_SUPPORTED_ERR()
    stream = _stream(js, stream_name)
    name = config["durable_name"] or config["name"]
    existing = stream.consumers.get(name) if name else None
    if existing is not None and name in js.owned.get(stream.name, ()):
        if check_config(stream, config) != existing.config:
            refuse_if_owned(js, stream, name, errors.CONSUMER_CREATE_ERR_F, "consumer update")
    existed = existing is not None
    consumer = create_consumer(js, stream, config)
    info = consumer.info()
    if not existed:
        consumer.start()
    return info


def consumer_create(js: Any, request: Any) -> Dict[str, Any]:
    """C{CONSUMER.CREATE.<stream>[.<name>[.<filter>]]}."""
    return _create(js, request, durable=False)


def consumer_durable_create(js: Any, request: Any) -> Dict[str, Any]:
    """C{CONSUMER.DURABLE.CREATE.<stream>.<durable>} (the pre-2.9 form clients still send)."""
    return _create(js, request, durable=True)


def _stream_and_consumer(js: Any, request: Any) -> Tuple["Stream", str]:
    args = list(request.args)
    if len(args) != 2:
        raise errors.CONSUMER_NOT_FOUND_ERR()
    return _stream(js, args[0]), args[1]


def consumer_info(js: Any, request: Any) -> Dict[str, Any]:
    """C{CONSUMER.INFO.<stream>.<consumer>}."""
    if not is_empty_request(request.payload):
        raise errors.NOT_EMPTY_REQUEST_ERR()
    stream, name = _stream_and_consumer(js, request)
    return _consumer(stream, name).info()


def consumer_delete(js: Any, request: Any) -> Dict[str, Any]:
    """C{CONSUMER.DELETE.<stream>.<consumer>}: waiting pull requests hear 409 Consumer Deleted."""
    if not is_empty_request(request.payload):
        raise errors.NOT_EMPTY_REQUEST_ERR()
    stream, name = _stream_and_consumer(js, request)
    consumer = _consumer(stream, name)
    refuse_if_owned(js, stream, name, errors.STREAM_GENERAL_ERROR_F, "consumer delete")
    consumer.delete()
    consumer.release_interest()
    stream.detach(name)
    return {"success": True}


def _page(js: Any, request: Any, limit: int) -> Tuple[List[Consumer], int, int]:
    offset = _offset(request.payload)
    args = list(request.args)
    stream = _stream(js, args[0] if args else "")
    consumers = sorted(public_consumers(stream), key=lambda c: c.name)
    total = len(consumers)
    offset = min(offset, total)
    return consumers[offset:offset + limit], total, offset


def consumer_names(js: Any, request: Any) -> Dict[str, Any]:
    """C{CONSUMER.NAMES.<stream>}: the names, sorted, 1024 a page."""
    page, total, offset = _page(js, request, NAMES_LIMIT)
    return {"total": total, "offset": offset, "limit": NAMES_LIMIT, "consumers": [c.name for c in page]}


def consumer_list(js: Any, request: Any) -> Dict[str, Any]:
    """C{CONSUMER.LIST.<stream>}: each consumer's info, sorted by name, 256 a page."""
    page, total, offset = _page(js, request, LIST_LIMIT)
    return {"total": total, "offset": offset, "limit": LIST_LIMIT, "consumers": [c.info() for c in page]}


def consumer_next(js: Any, request: Any) -> None:
    """
    C{CONSUMER.MSG.NEXT.<stream>.<consumer>}: the consumer answers at the
    reply itself.  An unknown stream or consumer gets no answer, as from
    nats-server (whose consumer would have had the only subscription).
    """
    args = list(request.args)
    if len(args) != 2 or not request.reply:
        return None
    stream = js.streams.get(args[0])
    consumer = stream.consumers.get(args[1]) if stream is not None else None
    if consumer is None:
        return None
    if args[1] in js.owned.get(stream.name, ()):
        # An event handler's consumer is fed in process; a client pulling
        # from it would take (and could ack) events the handler then never
        # delivers.  Its own consumer on the stream reads the same events.
        consumer._status(request.reply, "409 Consumer is eventsvc handler %s's, fed by the service" % (args[1],))
        return None
    consumer.next_request(request.reply, request.payload)
    return None


_T = "io.nats.jetstream.api.v1."

ROUTES: Dict[str, Tuple[str, Handler]] = {
    "CONSUMER.CREATE": (_T + "consumer_create_response", consumer_create),
    "CONSUMER.DURABLE.CREATE": (_T + "consumer_create_response", consumer_durable_create),
    "CONSUMER.INFO": (_T + "consumer_info_response", consumer_info),
    "CONSUMER.DELETE": (_T + "consumer_delete_response", consumer_delete),
    "CONSUMER.NAMES": (_T + "consumer_names_response", consumer_names),
    "CONSUMER.LIST": (_T + "consumer_list_response", consumer_list),
    "CONSUMER.MSG.NEXT": ("", consumer_next),
}

#: How many tokens follow each verb (nats-server's subscriptions: INFO.*.*,
#: NAMES.*, ...); CONSUMER.CREATE takes one or more.
ARITY: Dict[str, int] = {
    "CONSUMER.DURABLE.CREATE": 2, "CONSUMER.INFO": 2, "CONSUMER.DELETE": 2,
    "CONSUMER.NAMES": 1, "CONSUMER.LIST": 1, "CONSUMER.MSG.NEXT": 2,
}

#: What follows C{error} in an error answer (the Go structs' fields without omitempty).
ERROR_TAILS: Dict[str, Dict[str, Any]] = {
    "CONSUMER.NAMES": {"total": 0, "offset": 0, "limit": 0, "consumers": []},
    "CONSUMER.LIST": {"total": 0, "offset": 0, "limit": 0, "consumers": []},
}
