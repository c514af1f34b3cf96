"""
The C{$JS.API} subjects: each request read as nats-server 2.9 reads it and
answered with the JSON it writes (its field order, its errors).

The dispatcher matches the longest verb in L{ROUTES} ("STREAM.INFO",
"CONSUMER.DURABLE.CREATE", ...), passes the tokens after it as
C{Request.args}, and answers C{{"type": ..., **answer}}; a handler that
raises L{ApiError} answers C{{"type": ..., "error": ...}}.  An unknown verb,
or a known one with the wrong number of tokens, is not answered (nats-server
has no subscription for it).  A request without a reply is still done, and
not answered.  The consumers' verbs are C{consumer_api.ROUTES}, merged in.

This module holds no state: the streams are the engine's.
"""

from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from twisted.logger import Logger

from eventsvc.jetstream import errors
from eventsvc.jetstream.errors import ApiError
from eventsvc.jetstream.stream import Stream, config_json, decode_config, dumps, subjects_collide
from eventsvc.jetstream.wire import header, rfc3339

if TYPE_CHECKING:
    from eventsvc.jetstream.engine import JetStream

log = Logger(namespace="eventsvc.jetstream.api")

API_PREFIX = "$JS.API."
#: JSApiNamesLimit, JSApiListLimit, JSMaxSubjectDetails.
NAMES_LIMIT = 1024
LIST_LIMIT = 256
SUBJECT_DETAILS_LIMIT = 100_000

_TYPE = "io.nats.jetstream.api.v1."


class Request(NamedTuple):
    """One API request."""

    subject: str
    #: The tokens after the verb: "STREAM.INFO.ORDERS" -> ["ORDERS"].
    args: List[str]
    reply: Optional[str]
    payload: bytes
    headers: Optional[bytes]


Handler = Callable[["JetStream", Request], Optional[Dict[str, Any]]]


def is_empty_request(payload: bytes) -> bool:
    """nats-server's isEmptyRequest: nothing, C{{}}, or a JSON object without keys."""
    if not payload or payload == b"{}":
        return True
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(value, dict) and not value


def decode_request(payload: bytes, fields: Dict[str, type]) -> Dict[str, Any]:
    """
    A request object as Go unmarshals it into a struct of C{fields}
    (unknown keys ignored, wrong types refused); absent fields are zero.

    @raise ApiError: INVALID_J_S_O_N_ERR.
    """
    try:
        value = json.loads(payload.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise errors.INVALID_J_S_O_N_ERR()
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise errors.INVALID_J_S_O_N_ERR()
    out: Dict[str, Any] = {}
    for name, kind in fields.items():
        given = value.get(name)
        if given is None:
            out[name] = kind()
            continue
        if kind is int:
            if not isinstance(given, int) or isinstance(given, bool):
                raise errors.INVALID_J_S_O_N_ERR()
        elif not isinstance(given, kind):
            raise errors.INVALID_J_S_O_N_ERR()
        out[name] = given
    return out


def _uint(value: int) -> int:
    """A Go uint64 field: a negative number does not decode."""
    if value < 0:
        raise errors.INVALID_J_S_O_N_ERR()
    return value


def _stream(engine: "JetStream", name: str) -> Stream:
    stream = engine.streams.get(name)
    if stream is None:
        raise errors.STREAM_NOT_FOUND_ERR()
    return stream


def refuse_if_owned(engine: "JetStream", stream: Stream, refusal: errors.ErrorKind, what: str) -> None:
    """
    A stream the server owns (the event log's, L{JetStream.owned}) is not
    changed through the API: C{refusal} (nats-server's error for the
    request that failed: its deny_purge and deny_delete words) says so,
    and where its configuration lives.
    """
    if stream.name in engine.owned:
        raise refusal(err="{} not permitted: stream {} is eventsvc's event log; it is configured by "
                          "[events] in the service's configuration file".format(what, stream.name))


# -- handlers -------------------------------------------------------------------


def account_info(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.INFO."""
    return engine.account_info()


def stream_create(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.CREATE.<name>."""
    config = decode_config(request.payload)
    name = request.args[0]
    if config["name"] != name:
        raise errors.STREAM_MISMATCH_ERR()
    if "/" in name or "\\" in name:
        raise errors.STREAM_NAME_CONTAINS_PATH_SEPARATORS_ERR()
    if config["sealed"]:
        raise errors.STREAM_INVALID_CONFIG_F(err="stream configuration for create can not be sealed")
    if config["mirror_direct"] and not config["mirror"]:
        raise errors.STREAM_INVALID_CONFIG_F(err="stream has no mirror but does have mirror direct")
    stream = engine.add_stream(config)
    answer = stream.info(domain=False)
    answer["did_create"] = True
    return answer


def stream_update(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.UPDATE.<name>."""
    from eventsvc.jetstream.stream import check_config

    config = check_config(decode_config(request.payload))
    if config["name"] != request.args[0]:
        raise errors.STREAM_MISMATCH_ERR()
    stream = _stream(engine, request.args[0])
    refuse_if_owned(engine, stream, errors.STREAM_UPDATE_ERR_F, "stream update")
    engine.update_stream(stream, config)
    return stream.info()


def _filtered(engine: "JetStream", subject: str) -> List[Stream]:
    streams = sorted(engine.streams.values(), key=lambda s: s.name)
    if not subject:
        return streams
    return [s for s in streams if any(subjects_collide(subject, own) for own in s.config["subjects"])]


def _page(engine: "JetStream", request: Request, limit: int) -> Tuple[List[Stream], int, int]:
    """
    The page a NAMES or LIST request ({offset, subject}) asks for: the
    streams on it, how many match in all, and the offset taken.
    """
    offset, subject = 0, ""
    if not is_empty_request(request.payload):
        asked = decode_request(request.payload, {"offset": int, "subject": str})
        offset, subject = asked["offset"], asked["subject"]
    streams = _filtered(engine, subject)
    offset = min(max(offset, 0), len(streams))
    return streams[offset:offset + limit], len(streams), offset


def stream_names(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.NAMES ({offset, subject})."""
    page, total, offset = _page(engine, request, NAMES_LIMIT)
    return {"total": total, "offset": offset, "limit": NAMES_LIMIT, "streams": [s.name for s in page] or None}


def stream_list(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.LIST ({offset, subject})."""
    page, total, offset = _page(engine, request, LIST_LIMIT)
    return {"total": total, "offset": offset, "limit": LIST_LIMIT, "streams": [s.info() for s in page]}


def stream_info(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.INFO.<name> ({deleted_details, subjects_filter, offset})."""
    details, subjects, offset = False, "", 0
    if not is_empty_request(request.payload):
        asked = decode_request(request.payload, {"offset": int, "deleted_details": bool, "subjects_filter": str})
        details, subjects, offset = asked["deleted_details"], asked["subjects_filter"], asked["offset"]
    stream = _stream(engine, request.args[0])
    answer: Dict[str, Any] = {"total": 0, "offset": 0, "limit": 0}
    shown: Optional[Dict[str, int]] = None
    if subjects:
        counts = stream.store.subjects(subjects)
        if counts:
            names = sorted(counts)
            offset = min(max(offset, 0), len(names))
            shown = {name: counts[name] for name in names[offset:offset + SUBJECT_DETAILS_LIMIT]}
            answer = {"total": len(names), "offset": offset, "limit": SUBJECT_DETAILS_LIMIT}
    answer.update(stream.info(subjects=shown, deleted_details=details))
    return answer


def stream_delete(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.DELETE.<name> (an empty request)."""
    if not is_empty_request(request.payload):
        raise errors.NOT_EMPTY_REQUEST_ERR()
    stream = _stream(engine, request.args[0])
    refuse_if_owned(engine, stream, errors.STREAM_DELETE_ERR_F, "stream delete")
    engine.delete_stream(stream)
    return {"success": True}


def stream_purge(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.PURGE.<name> ({filter, seq, keep})."""
    subject, seq, keep = "", 0, 0
    if not is_empty_request(request.payload):
        asked = decode_request(request.payload, {"filter": str, "seq": int, "keep": int})
        subject, seq, keep = asked["filter"], _uint(asked["seq"]), _uint(asked["keep"])
        if seq > 0 and keep > 0:
            raise errors.BAD_REQUEST_ERR()
    stream = _stream(engine, request.args[0])
    refuse_if_owned(engine, stream, errors.STREAM_PURGE_FAILED_F, "stream purge")
    purged = stream.purge(subject or None, seq, keep)
    return {"success": True, "purged": purged}


def _message_request(payload: bytes) -> Tuple[int, str, str]:
    asked = decode_request(payload, {"seq": int, "last_by_subj": str, "next_by_subj": str})
    seq, last, after = _uint(asked["seq"]), asked["last_by_subj"], asked["next_by_subj"]
    if (seq > 0 and last) or (seq == 0 and not last and not after) or (last and after):
        raise errors.BAD_REQUEST_ERR()
    return seq, last, after


def stream_msg_get(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.MSG.GET.<name> ({seq | last_by_subj | next_by_subj})."""
    if is_empty_request(request.payload):
        raise errors.BAD_REQUEST_ERR()
    seq, last, after = _message_request(request.payload)
    stream = _stream(engine, request.args[0])
    message = stream.get(seq, last, after)
    if message is None:
        raise errors.NO_MESSAGE_FOUND_ERR()
    body: Dict[str, Any] = {"subject": message.subject, "seq": message.seq}
    if message.headers:
        body["hdrs"] = base64.b64encode(message.headers).decode("ascii")
    if message.data:
        body["data"] = base64.b64encode(message.data).decode("ascii")
    body["time"] = rfc3339(message.ts)
    return {"message": body}


def stream_msg_delete(engine: "JetStream", request: Request) -> Dict[str, Any]:
    """$JS.API.STREAM.MSG.DELETE.<name> ({seq, no_erase})."""
    if is_empty_request(request.payload):
        raise errors.BAD_REQUEST_ERR()
    asked = decode_request(request.payload, {"seq": int, "no_erase": bool})
    stream = _stream(engine, request.args[0])
    refuse_if_owned(engine, stream, errors.STREAM_MSG_DELETE_FAILED_F, "message delete")
    stream.delete_message(_uint(asked["seq"]), erase=not asked["no_erase"])
    return {"success": True}


#: verb -> (response type, handler).
ROUTES: Dict[str, Tuple[str, Handler]] = {
    "INFO": (_TYPE + "account_info_response", account_info),
    "STREAM.CREATE": (_TYPE + "stream_create_response", stream_create),
    "STREAM.UPDATE": (_TYPE + "stream_update_response", stream_update),
    "STREAM.NAMES": (_TYPE + "stream_names_response", stream_names),
    "STREAM.LIST": (_TYPE + "stream_list_response", stream_list),
    "STREAM.INFO": (_TYPE + "stream_info_response", stream_info),
    "STREAM.DELETE": (_TYPE + "stream_delete_response", stream_delete),
    "STREAM.PURGE": (_TYPE + "stream_purge_response", stream_purge),
    "STREAM.MSG.GET": (_TYPE + "stream_msg_get_response", stream_msg_get),
    "STREAM.MSG.DELETE": (_TYPE + "stream_msg_delete_response", stream_msg_delete),
}

#: How many tokens follow each verb (nats-server subscribes to exact
#: patterns: STREAM.INFO.* has one); a verb not listed takes any number.
ARITY: Dict[str, int] = {
    "INFO": 0, "STREAM.CREATE": 1, "STREAM.UPDATE": 1, "STREAM.NAMES": 0, "STREAM.LIST": 0,
    "STREAM.INFO": 1, "STREAM.DELETE": 1, "STREAM.PURGE": 1, "STREAM.MSG.GET": 1, "STREAM.MSG.DELETE": 1,
}

#: What follows C{error} in an error answer, for the responses whose Go
#: struct has fields without omitempty.
ERROR_TAILS: Dict[str, Dict[str, Any]] = {
    "STREAM.INFO": {"total": 0, "offset": 0, "limit": 0},
    "STREAM.PURGE": {"purged": 0},
    "STREAM.NAMES": {"total": 0, "offset": 0, "limit": 0, "streams": None},
    "STREAM.LIST": {"total": 0, "offset": 0, "limit": 0, "streams": []},
}

#: Verbs answered by their handler itself (it needs the reply even to
#: wait): a request without a reply is still passed on.
SELF_ANSWERED = {"CONSUMER.MSG.NEXT"}

# The consumers' verbs live beside the consumers (consumer_api.py), which
# imports this module's Request: merged in once both are defined.
from eventsvc.jetstream import consumer_api  # noqa: E402

ROUTES.update(consumer_api.ROUTES)
ARITY.update(getattr(consumer_api, "ARITY", {}))
ERROR_TAILS.update(getattr(consumer_api, "ERROR_TAILS", {}))


def find_route(rest: str) -> Optional[Tuple[str, List[str]]]:
    """The longest verb of L{ROUTES} that C{rest} (the subject after C{$JS.API.}) starts with, and the tokens after it."""
    tokens = rest.split(".")
    for n in range(len(tokens), 0, -1):
        verb = ".".join(tokens[:n])
        if verb in ROUTES:
            args = tokens[n:]
            arity = ARITY.get(verb)
            if arity is not None and len(args) != arity:
                return None
            return verb, args
    return None


def dispatch(engine: "JetStream", subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
    """Do one C{$JS.API.>} request and answer C{reply}."""
    if not subject.startswith(API_PREFIX):
        return
    found = find_route(subject[len(API_PREFIX):])
    if found is None:
        return
    verb, args = found
    kind, handler = ROUTES[verb]
    request = Request(subject, args, reply, payload, headers)
    failed = False
    try:
        answer = handler(engine, request)
    except ApiError as e:
        answer = {"error": e.as_json()}
        answer.update(ERROR_TAILS.get(verb, {}))
        failed = True
    except RecursionError:
        # JSON nested deeper than Python's decoder goes (about a thousand
        # levels; Go's stops at ten thousand): invalid JSON, as nats-server
        # answers a request too deep for it, not an internal error.
        if verb in SELF_ANSWERED:
            # A pull request is answered with a status, as its other 400s.
            if reply:
                engine.broker.publish(reply, b"", None, b"NATS/1.0 400 Bad Request - exceeded max depth\r\n\r\n")
            engine.count_api(True)
            return
        answer = {"error": errors.INVALID_J_S_O_N_ERR().as_json()}
        answer.update(ERROR_TAILS.get(verb, {}))
        failed = True
    except Exception:
        log.failure("JetStream API request on {subject} failed", subject=subject)
        answer = {"error": errors.STREAM_GENERAL_ERROR_F(err="internal error").as_json()}
        failed = True
    if answer is None:
        return
    if verb == "STREAM.INFO" and header(headers, "Nats-Response-Type") == "create":
        kind = ROUTES["STREAM.CREATE"][0]
    body = dumps(dict({"type": kind}, **answer))
    # Counted once answered, as nats-server's trackAPI (a MSG.GET that
    # finds its message is answered without being counted there too).
    if failed or verb != "STREAM.MSG.GET":
        engine.count_api(failed)
    if reply:
        engine.answer(reply, body)


__all__ = ["Request", "Handler", "ROUTES", "ARITY", "ERROR_TAILS", "dispatch", "find_route", "config_json"]
