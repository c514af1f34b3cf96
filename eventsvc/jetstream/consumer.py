"""
One JetStream consumer's rules, as nats-server 2.9's C{consumer.go} has
them: which messages of its stream it delivers (deliver policy, filter),
to whom (a push consumer's deliver subject, a pull consumer's waiting
requests), what it waits for (acknowledgements, within C{ack_wait} or the
backoff, at most C{max_ack_pending} outstanding) and what it keeps over a
restart (through its L{ConsumerStore}).

Deliveries go through the broker's in-process API (L{Broker.deliver_as}):
the subscriber sees the stream message's subject, its stored headers, and
the reply C{$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer
seq>.<ts>.<pending>} its acknowledgement is sent to.  No Deferred is made
per message, the ack reply is built with C{%} formatting, and a consumer
has one timer for C{ack_wait} however many messages are outstanding.

This module knows nothing of the C{$JS.API} subjects (L{consumer_api}
answers them) nor of how a stream stores its messages beyond the
L{MessageStore} interface.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from eventsvc.jetstream import errors, limits
from eventsvc.jetstream.errors import ApiError
from eventsvc.jetstream.store import EMPTY_CONSUMER_STATE, ConsumerState, ConsumerStore, StoredMessage
from eventsvc.jetstream.wire import parse_rfc3339, rfc3339
from eventsvc.nats.subjects import Subscription, subject_matches, valid_subject

if TYPE_CHECKING:  # pragma: no cover
    from eventsvc.jetstream.stream import Stream

SECOND = 1_000_000_000
MILLISECOND = 1_000_000
#: nats-server's defaults (consumer.go, jetstream_api.go).
ACK_WAIT_DEFAULT = 30 * SECOND
#: How long a pull request counts as wanted though nobody is known to
#: subscribe its inbox, on a server with gateways or leaf nodes
#: (nats-server's defaultGatewayRecentSubExpiration), in nanoseconds.
RECENT_REQUEST = 2_000_000_000

#: How often a push consumer looks at the gateways' interest in its deliver subject (nats-server: 1 s).
GATEWAY_INTEREST_CHECK = 1.0
DELETE_WAIT_DEFAULT = 5 * SECOND
MAX_ACK_PENDING_DEFAULT = 1000
WAIT_QUEUE_DEFAULT_MAX = 512
MAX_NAME_LEN = 255
MAX_DESCRIPTION_LEN = 4 * 1024
#: A pull request takes no message in its last moments (at most this, a
#: tenth of its expires at most): the client has given up or is about to.
EXPIRY_MARGIN = 2 * MILLISECOND
#: Flow control: bytes a push consumer may have outstanding at most
#: (C{JsFlowControlMaxPending}); it starts at a sixteenth and doubles with
#: every answered request.
FLOW_CONTROL_MAX_PENDING = 32 * 1024 * 1024
#: Replay original: a gap between two stored messages shorter than this is
#: not waited for (nats-server's C{loopAndGatherMsgs}: C{delay > time.Millisecond}).
REPLAY_MIN_GAP = MILLISECOND
#: Messages one consumer sends in one reactor turn; the rest go in the
#: next turns, so a redelivery storm (ack_wait 1 ms over thousands of
#: messages) or a large backlog leaves the reactor to other clients between.
DELIVER_BUDGET = 1000

#: Ack replies a consumer keeps with the numbers they name, at most
#: (L{Consumer._replies}): past it they are forgotten, and parsed when heard.
ACK_REPLIES_KEPT = 2048

DELIVER_POLICIES = ("all", "last", "new", "by_start_sequence", "by_start_time", "last_per_subject")
ACK_POLICIES = ("none", "all", "explicit")
REPLAY_POLICIES = ("instant", "original")

ACK_ACK = b"+ACK"
ACK_OK = b"+OK"
ACK_NAK = b"-NAK"
ACK_PROGRESS = b"+WPI"
ACK_NEXT = b"+NXT"
ACK_TERM = b"+TERM"

_NAME_CHARS = string.ascii_letters + string.digits

#: A ConsumerConfig's fields as nats-server writes them (its json tags, in
#: order), each with its kind and whether it is left out when empty.
_FIELDS: List[Tuple[str, str, bool]] = [
    ("durable_name", "str", True),
    ("name", "str", True),
    ("description", "str", True),
    ("deliver_policy", "deliver", False),
    ("opt_start_seq", "uint", True),
    ("opt_start_time", "time", True),
    ("ack_policy", "ack", False),
    ("ack_wait", "int", True),
    ("max_deliver", "int", True),
    ("backoff", "durations", True),
    ("filter_subject", "str", True),
    ("replay_policy", "replay", False),
    ("rate_limit_bps", "uint", True),
    ("sample_freq", "str", True),
    ("max_waiting", "int", True),
    ("max_ack_pending", "int", True),
    ("idle_heartbeat", "int", True),
    ("flow_control", "bool", True),
    ("headers_only", "bool", True),
    ("max_batch", "int", True),
    ("max_expires", "int", True),
    ("max_bytes", "int", True),
    ("deliver_subject", "str", True),
    ("deliver_group", "str", True),
    ("inactive_threshold", "int", True),
    ("num_replicas", "int", False),
    ("mem_storage", "bool", True),
    ("direct", "bool", True),
]

_ZERO: Dict[str, Any] = {
    "str": "", "uint": 0, "int": 0, "time": None, "durations": [], "bool": False,
    "deliver": "all", "ack": "none", "replay": "instant",
}
_ENUMS = {"deliver": DELIVER_POLICIES, "ack": ACK_POLICIES, "replay": REPLAY_POLICIES}

_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_UNITS = {"ns": 1, "us": 1000, "\u00b5s": 1000, "\u03bcs": 1000, "ms": MILLISECOND, "s": SECOND, "m": 60 * SECOND, "h": 3600 * SECOND}


def parse_go_duration(text: str) -> int:
    """A Go duration (C{"1.5s"}, C{"2m30s"}) in nanoseconds; ValueError if it is not one."""
    text = text.strip()
    sign = 1
    if text[:1] in ("-", "+"):
        sign, text = (-1 if text[0] == "-" else 1), text[1:]
    if text == "0":
        return 0
    total, pos = 0.0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos or match.group(1) in ("", "."):
            raise ValueError("time: invalid duration " + text)
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError("time: invalid duration " + text)
    return sign * int(total)


def go_duration(ns: int) -> str:
    """C{ns} as Go's C{time.Duration.String} writes it (C{1m30s}, C{1.5s}, C{250ms})."""
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < SECOND:
        for unit, size in (("ms", MILLISECOND), ("\u00b5s", 1000), ("ns", 1)):
            if ns >= size:
                return sign + _fraction(ns, size) + unit
    hours, rest = divmod(ns, 3600 * SECOND)
    minutes, rest = divmod(rest, 60 * SECOND)
    text = _fraction(rest, SECOND) + "s"
    if hours:
        return "%s%dh%dm%s" % (sign, hours, minutes, text)
    if minutes:
        return "%s%dm%s" % (sign, minutes, text)
    return sign + text


def _fraction(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    if not part:
        return str(whole)
    digits = len(str(unit)) - 1
    return "%d.%s" % (whole, ("%0*d" % (digits, part)).rstrip("0"))


def _bad_json() -> ApiError:
    return errors.INVALID_J_S_O_N_ERR()


def _parse_field(kind: str, value: Any) -> Any:
    """One field of a ConsumerConfig as Go's json would take it; ApiError(invalid JSON) if it would not."""
    if value is None:
        return _ZERO[kind]
    if kind == "str":
        if not isinstance(value, str):
            raise _bad_json()
        return value
    if kind in ("int", "uint"):
        if isinstance(value, bool) or not isinstance(value, int) or (kind == "uint" and value < 0):
            raise _bad_json()
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _bad_json()
        return value
    if kind == "time":
        if not isinstance(value, str):
            raise _bad_json()
        try:
            parse_rfc3339(value)
        except ValueError:
            raise _bad_json()
        return value
    if kind == "durations":
        if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
            raise _bad_json()
        return list(value)
    if not isinstance(value, str) or value not in _ENUMS[kind]:
        raise _bad_json()
    return value


def valid_name(name: str) -> bool:
    """nats-server's C{isValidName}: not empty, no whitespace, C{.}, C{*} or C{>}."""
    return bool(name) and not any(c in name for c in " \t\r\n\f.*>")


def subject_is_subset(subject: str, test: str) -> bool:
    """nats-server's C{subjectIsSubsetMatch}: whether every subject C{subject} matches, C{test} matches too."""
    stoks = subject.split(".")
    ttoks = test.split(".")
    for i, t in enumerate(ttoks):
        if i >= len(stoks):
            return False
        s = stoks[i]
        if t == ">":
            return True
        if s == ">":
            return False
        if t == "*":
            continue
        if s == "*" or s != t:
            return False
    return len(stoks) == len(ttoks)


def _has_wildcard(subject: str) -> bool:
    return "*" in subject.split(".") or ">" in subject.split(".")


def _valid_filter(filter_subject: str, subjects: List[str]) -> bool:
    if not valid_subject(filter_subject.encode("utf-8")):
        return False
    wild = _has_wildcard(filter_subject)
    for subject in subjects:
        if subject_is_subset(filter_subject, subject):
            return True
        if wild and subject_is_subset(subject, filter_subject):
            return True
    return False


def parse_config(raw: Any) -> Dict[str, Any]:
    """
    A request's C{config} object read as Go reads a ConsumerConfig: every
    field at its zero value when absent, a wrong type is C{invalid JSON}.
    Unknown fields are ignored, as Go does.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _bad_json()
    return {name: _parse_field(kind, raw.get(name)) for name, kind, _ in _FIELDS}


def as_json(config: Dict[str, Any]) -> Dict[str, Any]:
    """A full config as nats-server writes it: its order, empty fields left out."""
    out: Dict[str, Any] = {}
    for name, kind, omit in _FIELDS:
        value = config.get(name, _ZERO[kind])
        if omit and (value is None or value == _ZERO[kind]):
            continue
        out[name] = value
    return out


def full_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """Every field of a config, those L{as_json} left out at their zero values (a config read back from a file)."""
    return {name: config.get(name, _ZERO[kind]) for name, kind, _ in _FIELDS}


def is_durable(config: Dict[str, Any]) -> bool:
    """A durable consumer has a C{durable_name} (2.9: the others are ephemerals, named or not)."""
    return bool(config.get("durable_name"))


def public_consumers(stream: Any) -> List[Any]:
    """
    A stream's consumers that clients made: not the C{direct} ones a
    mirror or source asks for, which nats-server neither counts, lists nor
    keeps (its C{getPublicConsumers}).
    """
    return [c for c in stream.consumers.values() if not c.config.get("direct")]


def check_config(stream: "Stream", raw: Any, durable_name: Optional[str] = None) -> Dict[str, Any]:
    """
    The consumer config C{raw} (a request's C{config}) with nats-server's
    defaults, checked as nats-server checks it (C{setConsumerConfigDefaults},
    C{checkConsumerCfg}, and C{addConsumer}'s name, limit and work queue
    rules); raises L{ApiError}.  C{durable_name}: the name the request's
    subject gives (C{CONSUMER.CREATE.<stream>.<name>}), which becomes
    C{name}.  Returns the config in full (L{as_json} writes it).

    The limit and work queue rules are skipped when the consumer exists
    already (the request is then an update, see L{Consumer.update}).
    """
    config = raw if isinstance(raw, dict) and set(raw) == {name for name, _, _ in _FIELDS} else parse_config(raw)
    config = dict(config)
    if durable_name:
        config["name"] = durable_name
    scfg = stream.config
    account = stream.engine.settings.limits
    push = bool(config["deliver_subject"])
    explicit = config["ack_policy"] in ("explicit", "all")
    # setConsumerConfigDefaults
    if not push and config["max_waiting"] == 0:
        config["max_waiting"] = WAIT_QUEUE_DEFAULT_MAX
    if config["ack_wait"] == 0 and explicit:
        config["ack_wait"] = ACK_WAIT_DEFAULT
    if config["max_deliver"] == 0:
        config["max_deliver"] = -1
    if config["backoff"]:
        config["ack_wait"] = config["backoff"][0]
    if explicit and config["max_ack_pending"] == 0:
        config["max_ack_pending"] = limits.default_max_ack_pending(account, MAX_ACK_PENDING_DEFAULT)
    # checkConsumerCfg
    if config["num_replicas"] > 0 and config["num_replicas"] > scfg.get("num_replicas", 1):
        raise errors.CONSUMER_REPLICAS_EXCEEDS_STREAM()
    if config["num_replicas"] < 0:
        raise errors.REPLICAS_COUNT_CANNOT_BE_NEGATIVE()
    if config["backoff"] and config["max_deliver"] <= len(config["backoff"]):
        raise errors.CONSUMER_MAX_DELIVER_BACKOFF_ERR()
    if len(config["description"]) > MAX_DESCRIPTION_LEN:
        raise errors.CONSUMER_DESCRIPTION_TOO_LONG_ERR_F(max=MAX_DESCRIPTION_LEN)
    if push:
        deliver = config["deliver_subject"]
        if _has_wildcard(deliver):
            raise errors.CONSUMER_DELIVER_TO_WILDCARDS_ERR()
        if not valid_subject(deliver.encode("utf-8")):
            raise errors.CONSUMER_INVALID_DELIVER_SUBJECT()
        if any(subject_is_subset(deliver, subject) for subject in scfg.get("subjects") or []):
            raise errors.CONSUMER_DELIVER_CYCLE_ERR()
        if config["max_waiting"] != 0:
            raise errors.CONSUMER_PUSH_MAX_WAITING_ERR()
        if config["max_ack_pending"] > 0 and config["ack_policy"] == "none":
            raise errors.CONSUMER_MAX_PENDING_ACK_POLICY_REQUIRED_ERR()
        if 0 < config["idle_heartbeat"] < 100 * MILLISECOND:
            raise errors.CONSUMER_SMALL_HEARTBEAT_ERR()
    else:
        if config["ack_policy"] == "none" and scfg.get("retention") == "workqueue":
            raise errors.CONSUMER_PULL_REQUIRES_ACK_ERR()
        if config["rate_limit_bps"] > 0:
            raise errors.CONSUMER_PULL_WITH_RATE_LIMIT_ERR()
        if config["max_waiting"] < 0:
            raise errors.CONSUMER_MAX_WAITING_NEGATIVE_ERR()
        if config["idle_heartbeat"] > 0:
            raise errors.CONSUMER_H_B_REQUIRES_PUSH_ERR()
        if config["flow_control"]:
            raise errors.CONSUMER_F_C_REQUIRES_PUSH_ERR()
        if config["max_batch"] < 0:
            raise errors.CONSUMER_MAX_REQUEST_BATCH_NEGATIVE_ERR()
        if config["max_expires"] != 0 and config["max_expires"] < MILLISECOND:
            raise errors.CONSUMER_MAX_REQUEST_EXPIRES_TO_SMALL()
    limits.check_max_ack_pending(account, config["max_ack_pending"])
    if config["direct"]:
        if not push:
            raise errors.CONSUMER_DIRECT_REQUIRES_PUSH_ERR()
        if is_durable(config):
            raise errors.CONSUMER_DIRECT_REQUIRES_EPHEMERAL_ERR()
    if config["filter_subject"] and not _valid_filter(config["filter_subject"], list(scfg.get("subjects") or [])):
        raise errors.CONSUMER_FILTER_NOT_SUBSET_ERR()
    _check_start(config)
    if config["sample_freq"]:
        text = config["sample_freq"]
        text = text[:-1] if text.endswith("%") else text
        if not text.isdigit():
            raise errors.CONSUMER_INVALID_SAMPLING_ERR_F(err='strconv.Atoi: parsing "%s": invalid syntax' % text)
    if config["flow_control"] and config["idle_heartbeat"] == 0:
        raise errors.CONSUMER_WITH_FLOW_CONTROL_NEEDS_HEARTBEATS()
    if config["durable_name"] and config["name"] and config["durable_name"] != config["name"]:
        raise errors.CONSUMER_CREATE_DURABLE_AND_NAME_MISMATCH()
    # addConsumer's rules: the name, the stream's limit, work queues.
    name = config["durable_name"] or config["name"]
    if name:
        if len(name) > MAX_NAME_LEN:
            raise errors.CONSUMER_NAME_TOO_LONG_ERR_F(max=MAX_NAME_LEN)
        if not valid_name(name):
            raise errors.CONSUMER_BAD_DURABLE_NAME_ERR()
    if not is_durable(config) and config["inactive_threshold"] <= 0:
        config["inactive_threshold"] = DELETE_WAIT_DEFAULT
    if name and name in stream.consumers:
        return config
    max_consumers = limits.max_consumers(account, scfg.get("max_consumers", -1))
    if max_consumers > 0 and not config["direct"] and len(public_consumers(stream)) >= max_consumers:
        raise errors.MAXIMUM_CONSUMERS_LIMIT_ERR()
    if scfg.get("retention") == "workqueue" and not config["direct"]:
        if config["ack_policy"] != "explicit":
            raise errors.CONSUMER_W_Q_REQUIRES_EXPLICIT_ACK_ERR()
        if stream.consumers:
            mine = config["filter_subject"]
            if not mine:
                raise errors.CONSUMER_W_Q_MULTIPLE_UNFILTERED_ERR()
            for other in stream.consumers.values():
                theirs = other.config.get("filter_subject")
                if not theirs or subject_is_subset(mine, theirs) or subject_is_subset(theirs, mine):
                    raise errors.CONSUMER_W_Q_CONSUMER_NOT_UNIQUE_ERR()
        if config["deliver_policy"] != "all":
            raise errors.CONSUMER_W_Q_CONSUMER_NOT_DELIVER_ALL_ERR()
    return config


def _check_start(config: Dict[str, Any]) -> None:
    """The deliver policy against C{opt_start_seq} and C{opt_start_time}, with nats-server's words."""
    policy = config["deliver_policy"]
    seq, when = config["opt_start_seq"], config["opt_start_time"]
    words = {
        "all": "all", "last": "last", "last_per_subject": "last per subject", "new": "new",
        "by_start_sequence": "by start sequence", "by_start_time": "by start time",
    }[policy]

    def bad(start: str) -> ApiError:
        return errors.CONSUMER_INVALID_POLICY_ERR_F(
            err="consumer delivery policy is deliver %s, but optional start %s is also set" % (words, start)
        )

    def unset(what: str) -> ApiError:
        return errors.CONSUMER_INVALID_POLICY_ERR_F(
            err="consumer delivery policy is deliver %s, but optional %s is not set" % (words, what)
        )

    if policy in ("all", "last", "last_per_subject", "new"):
        if seq > 0:
            raise bad("sequence")
        if when is not None:
            raise bad("time")
        if policy == "last_per_subject" and not config["filter_subject"]:
            raise unset("filter subject")
    elif policy == "by_start_sequence":
        if seq == 0:
            raise unset("start sequence")
        if when is not None:
            raise bad("time")
    else:
        if when is None:
            raise unset("start time")
        if seq != 0:
            raise bad("start sequence")


def check_update(old: Dict[str, Any], new: Dict[str, Any], deliver_bound: bool) -> None:
    """
    nats-server's C{checkNewConsumerConfig}: what an existing consumer's
    config may not change; raises L{ApiError} (C{CONSUMER_CREATE_ERR_F} with
    nats-server's words).  C{deliver_bound}: whether the old deliver subject
    has subscribers (then it may not change).
    """
    if old == new:
        return
    for key, what in (
        ("deliver_policy", "deliver policy"), ("opt_start_seq", "start sequence"),
        ("opt_start_time", "start time"), ("ack_policy", "ack policy"), ("replay_policy", "replay policy"),
        ("idle_heartbeat", "heart beats"), ("flow_control", "flow control"), ("max_waiting", "max waiting"),
    ):
        if old[key] != new[key]:
            raise errors.CONSUMER_CREATE_ERR_F(err="%s can not be updated" % what)
    if old["deliver_subject"] != new["deliver_subject"]:
        if not old["deliver_subject"]:
            raise errors.CONSUMER_CREATE_ERR_F(err="can not update pull consumer to push based")
        if not new["deliver_subject"]:
            raise errors.CONSUMER_CREATE_ERR_F(err="can not update push consumer to pull based")
        if deliver_bound:
            raise errors.CONSUMER_NAME_EXIST_ERR()
    if new["backoff"] and new["max_deliver"] <= len(new["backoff"]):
        raise errors.CONSUMER_MAX_DELIVER_BACKOFF_ERR()


def new_consumer_name() -> str:
    """An ephemeral's name: eight letters and digits, as nats-server makes them."""
    return "".join(random.choice(_NAME_CHARS) for _ in range(8))


class NextRequest:
    """A pull request waiting for messages (nats-server's C{waitingRequest})."""

    __slots__ = ("reply", "n", "d", "b", "expires", "last", "received", "hb", "hbt", "no_wait", "genid", "interest", "unheard")

    def __init__(self, reply: str, batch: int, max_bytes: int, expires: int, received: int, hb: int, no_wait: bool) -> None:
        self.reply = reply
        #: Messages still wanted, and delivered so far.
        self.n = batch
        self.d = 0
        #: Bytes still allowed (0: no limit).
        self.b = max_bytes
        #: When it ends (ns; 0: never).
        self.expires = expires
        #: The last moment a message may be given to it (ns; 0: no end):
        #: just before it ends, or nearly (L{Consumer._next_waiting}).
        self.last = expires - min(EXPIRY_MARGIN, (expires - received) // 10) if expires else 0
        self.received = received
        #: Its idle heartbeat interval and when the next is due (ns; 0: none).
        self.hb = hb
        self.hbt = received + hb if hb > 0 else 0
        self.no_wait = no_wait
        #: The index generation its interest was last checked at, and the answer.
        self.genid = -1
        self.interest = True
        #: Whether a batch sent to it reached nobody (L{Consumer._send_batch}): it is ended.
        self.unheard = False


def go_json_error(text: bytes, error: ValueError) -> str:
    """Go's words for bad JSON (what nats-server puts after C{400 Bad Request - }), as near as Python's error tells."""
    position = getattr(error, "pos", None)
    if position is None or position >= len(text):
        return "unexpected end of JSON input"
    before = text[:position].rstrip()
    looking = "object key string" if before.endswith((b"{", b",")) and b"{" in before else "beginning of value"
    if looking == "object key string":
        return "invalid character %s looking for beginning of object key string" % _go_quote(text[position:position + 1])
    return "invalid character %s looking for beginning of value" % _go_quote(text[position:position + 1])


def _go_quote(char: bytes) -> str:
    return "'%s'" % char.decode("utf-8", "replace")


def parse_next_request(payload: bytes, now: int) -> Tuple[int, int, int, bool, int]:
    """
    A C{MSG.NEXT} payload (nats-server's C{nextReqFromMsg}): empty is one
    message, a number a batch, JSON a full request.  Returns (batch,
    max_bytes, expires at (ns, 0: never), no_wait, heartbeat (ns)); raises
    ValueError with the words of a 400 answer.
    """
    text = payload.strip()
    if not text:
        return 1, 0, 0, False, 0
    if text[:1] == b"{":
        try:
            request = json.loads(text)
        except ValueError as e:
            raise ValueError(go_json_error(text, e))
        if not isinstance(request, dict):
            raise ValueError("invalid request")
        values = []
        for key, kind in (("batch", "int"), ("max_bytes", "int"), ("expires", "int"), ("idle_heartbeat", "int"), ("no_wait", "bool")):
            try:
                values.append(_parse_field(kind, request.get(key)))
            except ApiError:
                raise ValueError("json: cannot unmarshal %s into Go struct field of type %s" % (type(request.get(key)).__name__, kind))
        batch, max_bytes, expires, hb, no_wait = values
        if hb > 0 and hb * 2 > expires:
            raise ValueError("heartbeat value too large")
        return batch, max_bytes, (now + expires if expires else 0), no_wait, hb
    try:
        return int(text), 0, 0, False, 0
    except ValueError:
        return 1, 0, 0, False, 0


class Consumer:
    """
    One consumer of a stream: its config, its place in the stream, what it
    has delivered and what is still to be acknowledged.

    The stream calls L{stored} for every new message, L{purged} after a
    purge, L{needs} for interest retention, L{stop} and L{delete}; the API
    calls L{info}, L{next_request} (pull), L{update}; the engine routes
    acknowledgements to L{ack}.  Everything runs in the reactor thread.

    @ivar sseq: the next stream sequence to look at (nats-server's C{sseq}).
    @ivar dseq: the next consumer sequence to give.
    @ivar pending: delivered and not acknowledged: stream seq -> [consumer
        seq, delivered at (ns)]; in delivery order.
    """

    log = Logger()

    def __init__(self, stream: "Stream", name: str, config: Dict[str, Any], store: ConsumerStore, created: int) -> None:
        self.stream = stream
        self.name = name
        self.config = config = full_config(config)
        self.store = store
        self.created = created
        engine = stream.engine
        self.broker = engine.broker
        self.clock = engine.clock
        self.now: Callable[[], int] = engine.now
        self.closed = False
        #: Whether an owner in this process delivers it (L{deliver_in_process}):
        #: the stream then does not tell it of each message it stores.
        self.fed_in_process = False
        self._filter: Optional[str] = None
        self._filter_wild = False
        #: The filter as the store is asked: None when it takes every
        #: subject of the stream (clients filter on a stream's only subject,
        #: and a store serves "everything" fastest).
        self._store_filter: Optional[str] = None
        self._set_filter()
        self._ack_prefix = "$JS.ACK.%s.%s." % (stream.name, name)
        # (A name may hold a "%", as nats-server's may: escaped in the formats.)
        prefix = self._ack_prefix.replace("%", "%%")
        #: A delivery's ack reply, bytes as it goes out (a str formatted
        #: and encoded cost CPython a third more).
        self._reply_format = (prefix + "%d.%d.%d.%d.%d").encode("utf-8")
        #: A first delivery's (L{_pull_run}): its count, 1, written in, a
        #: number fewer to format (about 570 instructions on CPython 3.11).
        self._first_reply_format = (prefix + "1.%d.%d.%d.%d").encode("utf-8")
        #: The ack replies sent and not heard yet, each with the numbers it
        #: names (delivered count, stream and consumer sequences): an ack
        #: found here is spared its subject's split and three int() calls
        #: (7,690 instructions on CPython 3.11; the entry's put and pop, some
        #: 3,100).  A parse done ahead,
        #: nothing more: one not here (heard before, sent before a restart,
        #: forgotten at L{ACK_REPLIES_KEPT}) is parsed as it was.  None
        #: while acks do not come to L{_ack_message} (the engine routes
        #: them, or there are none).
        self._replies: Optional[Dict[bytes, Tuple[int, int, int]]] = None
        self._retention = stream.config.get("retention", "limits")
        self.sseq = 1
        self.dseq = 1
        self.adflr = 0
        self.asflr = 0
        self.pending: Dict[int, List[int]] = {}
        #: No sequence below it is pending (L{ack_in_process}'s start; None: unknown).
        self._oldest_pending: Optional[int] = None
        #: Redeliveries so far per stream seq (delivered count - 1).
        self.rdc: Dict[int, int] = {}
        self._rdq: Deque[int] = deque()
        self._rdqi: Set[int] = set()
        #: deliver_policy last_per_subject: the sequences to send first, then where to go on.
        self._lss: Optional[List[int]] = None
        self._lss_resume = 0
        #: Cached count of messages left to deliver (None: count again).
        self._npc: Optional[int] = None
        self.waiting: Deque[NextRequest] = deque()
        self._waiting_last = 0
        #: When it last delivered and last had an ack (ns; 0: never).
        self.last_delivered = 0
        self.last_acked = 0
        self.active = False
        self._delivering = False
        self._again = False
        #: Whether the last round stopped at max_ack_pending, and whether the last message taken came from the skip list.
        self._stalled = False
        self._from_lss = False
        self._ack_timer: Optional[IDelayedCall] = None
        self._wait_timer: Optional[IDelayedCall] = None
        self._wait_timer_at = 0
        self._hb_timer: Optional[IDelayedCall] = None
        self._inactive_timer: Optional[IDelayedCall] = None
        self._subs: List[Any] = []
        self._listener: Optional[Callable[[Subscription, int], None]] = None
        self._interest_check: Optional[IDelayedCall] = None
        self._gateway_watch: Optional[IDelayedCall] = None
        #: The next turn's delivery, when this turn's budget ran out.
        self._more: Optional[IDelayedCall] = None
        #: A pull round's deliveries not yet handed to the broker, all to
        #: the pull request answered at C{_batch_to}: (subject, payload,
        #: reply, headers) and the stream seqs (L{_send_batch}).
        self._batch: List[Tuple[str, bytes, Optional[bytes], Optional[bytes]]] = []
        self._batch_seqs: List[int] = []
        self._batch_to = ""
        #: The request L{_batch_to} names (told when nobody took its batch).
        self._batch_request: Optional[NextRequest] = None
        # Flow control (push): bytes sent since the last answered request.
        self._pbytes = 0
        self._pblimit = FLOW_CONTROL_MAX_PENDING
        self._maxpb = FLOW_CONTROL_MAX_PENDING // 16 if config.get("flow_control") else 0
        self._fcid = ""
        self._fcsz = 0
        #: Replay original (nats-server's C{o.replay}): paced until it has
        #: taken the stream's last message of when it started (L{start}),
        #: instant from then on.  C{_replay_lts} is the stored time of the
        #: last message sent, C{_replay_timer} the wait for the next one,
        #: whose sequence is C{_replay_seq}; C{_replay_due} lets it go.
        self._replay = config.get("replay_policy") == "original"
        self._replay_through = 0
        self._replay_lts = 0
        self._replay_timer: Optional[IDelayedCall] = None
        self._replay_seq = 0
        self._replay_due = 0
        if self.push:
            self.active = self.broker.has_interest(config["deliver_subject"])
        state = store.load()
        if state != EMPTY_CONSUMER_STATE:
            self._apply_state(state)
        else:
            self._select_start()

    # -- set-up --------------------------------------------------------------------

    def _set_filter(self) -> None:
        self._filter = self.config.get("filter_subject") or None
        self._filter_wild = self._filter is not None and _has_wildcard(self._filter)
        subjects = self.stream.config.get("subjects") or []
        wanted = self._filter
        if wanted is not None and subjects and all(subject_is_subset(subject, wanted) for subject in subjects):
            wanted = None
        self._store_filter = wanted

    @property
    def push(self) -> bool:
        """Whether it delivers to a deliver subject (else clients pull)."""
        return bool(self.config.get("deliver_subject"))

    @property
    def durable(self) -> bool:
        return is_durable(self.config)

    def _apply_state(self, state: ConsumerState) -> None:
        """Resume from what the store kept (nats-server's C{applyState})."""
        self.sseq = state.delivered_stream + 1
        self.dseq = state.delivered_consumer + 1
        self.adflr = state.ack_floor_consumer
        self.asflr = state.ack_floor_stream
        self.pending = {seq: [dseq, ts] for seq, (dseq, ts) in sorted(state.pending.items()) if seq > self.asflr}
        self._oldest_pending = None
        self.rdc = {seq: count - 1 for seq, count in state.redelivered.items() if count > 1 and seq > self.asflr}

    def _select_start(self) -> None:
        """Where a new consumer starts (nats-server's C{selectStartingSeqNo}); the store keeps it."""
        store = self.stream.store
        state = store.state()
        config = self.config
        policy = config["deliver_policy"]
        if config.get("opt_start_seq"):
            sseq = config["opt_start_seq"]
        elif policy == "all":
            sseq = state.first_seq
        elif policy == "last":
            sseq = state.last_seq
            if self._filter:
                last = store.load_last(self._filter)
                sseq = last.seq if last is not None else 0
        elif policy == "last_per_subject":
            lasts = sorted(self._last_per_subject())
            if lasts:
                self._lss, self._lss_resume = lasts, state.last_seq
                sseq = lasts[0]
            else:
                sseq = state.last_seq
        elif policy == "by_start_time":
            when = parse_rfc3339(config["opt_start_time"])
            sseq = state.last_seq + 1
            message = store.load_next(state.first_seq)
            while message is not None:
                if message.ts >= when:
                    sseq = message.seq
                    break
                message = store.load_next(message.seq + 1)
        else:
            sseq = state.last_seq + 1
        if state.first_seq == 0:
            sseq = 1
        elif sseq < state.first_seq:
            sseq = state.first_seq
        elif sseq > state.last_seq:
            sseq = state.last_seq + 1
        self.sseq = sseq
        self.dseq = 1
        self.adflr = 0
        self.asflr = sseq - 1
        if sseq > 1:
            self.store.update(ConsumerState(0, sseq - 1, 0, sseq - 1, {}, {}))

    def _last_per_subject(self) -> List[int]:
        store = self.stream.store
        seqs = []
        for subject in store.subjects(self._filter):
            last = store.load_last(subject)
            if last is not None:
                seqs.append(last.seq)
        return seqs

    def start(self) -> None:
        """Begin: listen for acks, flow control and interest, start the timers, deliver what is there."""
        engine = self.stream.engine
        if engine.settings.per_consumer_acks and engine.answers_api:
            # Its own ack subject, as nats-server's ackSubj: links tell the
            # other side of this consumer's acks only, not of every ack
            # (a hub's whole $JS.ACK.> crossed to each spoke, to be dropped).
            self._subs.append(self.broker.subscribe_raw(
                "$JS.ACK.%s.%s.*.*.*.*.*" % (self.stream.name, self.name), self._ack_message))
            if self.config["ack_policy"] != "none":
                self._replies = {}
        if self.config.get("flow_control"):
            self._subs.append(
                self.broker.subscribe("$JS.FC.%s.%s.*" % (self.stream.name, self.name), self._flow_control_answer)
            )
        if self.push:
            self._listener = self._subscription_changed
            self.broker.subscription_listeners.append(self._listener)
            if not self.active:
                self._arm_inactive()
            if self.broker.gateways is not None:
                self._gateway_watch = self.clock.callLater(GATEWAY_INTEREST_CHECK, self._watch_gateway_interest)
            if self.config.get("idle_heartbeat"):
                self._hb_timer = self.clock.callLater(self.config["idle_heartbeat"] / SECOND, self._heartbeat)
        else:
            self._waiting_last = self.now()
            self._arm_inactive()
        if self._replay:
            self._replay_through = self.stream.store.state().last_seq
        if self.pending:
            self._arm_ack_timer(self.config.get("ack_wait") or ACK_WAIT_DEFAULT)
        self._deliver()

    # -- what the stream tells it -------------------------------------------------

    def matches(self, subject: str) -> bool:
        """Whether C{subject} passes the filter."""
        if self._filter is None:
            return True
        if not self._filter_wild:
            return subject == self._filter
        return subject_matches(self._filter.encode("utf-8"), subject.encode("utf-8"))

    def stored(self, seq: int, subject: str) -> None:
        """A new message is in the stream: count it, and deliver if someone waits."""
        if self.closed or not self.matches(subject):
            return
        if self._npc is not None:
            if self.config["deliver_policy"] == "last_per_subject":
                self._npc = None
            elif seq >= self.sseq:
                self._npc += 1
        if self.push:
            if self.active:
                self._deliver()
        elif self.waiting:
            self._deliver()

    def purged(self, seq: int = 0, subject: Optional[str] = None) -> None:
        """
        Messages were purged or deleted: the floors move past what is gone
        (nats-server's C{consumer.purge}) and the pending count is redone.
        With C{seq} and C{subject} (one message removed: a delete, a limit)
        only that one is accounted for, which costs nothing per message.
        """
        if self.closed:
            return
        if seq and subject is not None:
            if self.matches(subject) and self._npc and seq >= self.sseq:
                self._npc -= 1
            if seq in self.pending:
                del self.pending[seq]
                self.rdc.pop(seq, None)
                self._remove_redelivery(seq)
                self.store.update_acks(self.adflr, self.asflr, (seq,))
            return
        state = self.stream.store.state()
        first = state.first_seq if state.msgs else state.last_seq + 1
        self._npc = None
        changed = False
        if self.sseq < first:
            self.sseq = first
            changed = True
        if self.asflr < first - 1:
            self.asflr = first - 1
            self.adflr = self.dseq - 1
            changed = True
        store = self.stream.store
        for seq in [seq for seq in self.pending if seq < first or store.load(seq) is None]:
            del self.pending[seq]
            self.rdc.pop(seq, None)
            self._remove_redelivery(seq)
            changed = True
        if not self.pending:
            self.adflr, self.asflr = self.dseq - 1, max(self.asflr, self.sseq - 1)
        if changed:
            self.store.update(self._state())
        self._deliver()

    def needs(self, seq: int, subject: str) -> bool:
        """Interest retention: whether this consumer has still to acknowledge C{seq} (nats-server's C{needAck})."""
        if self.closed or not self.matches(subject):
            return False
        if seq <= self.asflr:
            return False
        if self.config["ack_policy"] != "explicit":
            return True
        return seq >= self.sseq or seq in self.pending

    def _state(self) -> ConsumerState:
        return ConsumerState(
            self.dseq - 1, self.sseq - 1, self.adflr, self.asflr,
            {seq: (p[0], p[1]) for seq, p in self.pending.items()},
            {seq: n + 1 for seq, n in self.rdc.items()},
        )

    # -- delivery ------------------------------------------------------------------

    def _num_pending(self) -> int:
        """How many messages are left to deliver (nats-server's C{numPending}), counted once and then kept."""
        if self._npc is None:
            self._npc = self.stream.store.num_pending(
                self.sseq, self._store_filter, self.config["deliver_policy"] == "last_per_subject"
            )
        return self._npc

    def _add_redelivery(self, seq: int) -> None:
        if seq not in self._rdqi:
            self._rdqi.add(seq)
            self._rdq.append(seq)

    def _remove_redelivery(self, seq: int) -> None:
        if seq in self._rdqi:
            self._rdqi.discard(seq)
            self._rdq.remove(seq)

    def _take_next(self) -> Optional[Tuple[StoredMessage, int]]:
        """The next message to send and its delivery count (nats-server's C{getNextMsg}), or None."""
        store = self.stream.store
        while self._rdq:
            max_deliver = self.config.get("max_deliver", -1)
            seq = self._rdq.popleft()
            self._rdqi.discard(seq)
            if seq not in self.pending:
                continue
            count = self.rdc.get(seq, 0) + 1
            self.rdc[seq] = count
            dc = count + 1
            if max_deliver > 0 and dc > max_deliver:
                if dc == max_deliver + 1:
                    self._advisory_max_deliveries(seq, dc - 1)
                del self.pending[seq]
                continue
            message = store.load(seq)
            if message is None:
                del self.pending[seq]
                self.rdc.pop(seq, None)
                continue
            self._from_lss = False
            return message, dc
        max_pending = self.config.get("max_ack_pending", 0)
        if max_pending > 0 and len(self.pending) >= max_pending:
            self._stalled = True
            return None
        seq = self.sseq
        if not self._lss:
            self._from_lss = False
        else:
            self._from_lss = True
            seq = self._lss.pop(0)
            if not self._lss:
                self._lss = None
                self.sseq = max(self.sseq, self._lss_resume + 1)
        message = store.load_next(seq, self._store_filter)
        if self._filter is not None and self._store_filter is None:
            # The stream's subjects may have changed since the filter was judged.
            while message is not None and not self.matches(message.subject):
                message = store.load_next(message.seq + 1, self._store_filter)
        if message is None:
            last = store.state().last_seq
            if last + 1 > self.sseq:
                self.sseq = last + 1
            return None
        if message.seq >= self.sseq:
            self.sseq = message.seq + 1
        return message, 1

    def _put_back(self, message: StoredMessage, dc: int) -> None:
        """Undo L{_take_next}: nobody could take C{message} now."""
        if dc > 1:
            self.rdc[message.seq] -= 1
            if not self.rdc[message.seq]:
                del self.rdc[message.seq]
            self._rdqi.add(message.seq)
            self._rdq.appendleft(message.seq)
        elif self._from_lss:
            self._lss = [message.seq] + (self._lss or [])
        else:
            self.sseq = message.seq

    def _deliver(self) -> None:
        """
        Send what can be sent now: to the deliver subject while it has
        interest (and flow control allows), or to the waiting pull requests.
        A callback that acknowledges from inside a delivery (in-process
        subscribers do) only asks for another round.
        """
        if self.closed:
            return
        if self._delivering:
            self._again = True
            return
        self._delivering = True
        self._stalled = False
        sent = 0
        try:
            while True:
                self._again = False
                sent += self._deliver_round(DELIVER_BUDGET - sent)
                if sent >= DELIVER_BUDGET:
                    break
                if not self._again:
                    break
        finally:
            self._delivering = False
            if self._batch:
                # (A round that raised: what it took is sent all the same.)
                self._send_batch()
            if sent:
                self.broker.flush()
        if sent >= DELIVER_BUDGET:
            # More may be due: in the next turn, after the other clients.
            if self._more is None or not self._more.active():
                self._more = self.clock.callLater(0, self._deliver)
            return
        if not self.push and self.waiting and self._replay_timer is None:
            # Out of messages (not stalled on max_ack_pending): no-wait requests that got some are done.
            # (Not while replay original waits for the next: that one is coming.)
            self._process_waiting(not self._stalled)

    def _deliver_round(self, budget: int) -> int:
        push = self.push
        sent = 0
        headers_only = self.config.get("headers_only")
        explicit = self.config["ack_policy"] != "none"
        broker = self.broker
        deliver_subject = self.config.get("deliver_subject", "")
        store = self.store
        # One time for the round (it runs in one turn, and what it sends goes
        # at that turn's end): its deliveries are then one record of the
        # consumer store's, not one each.
        now = self.now()
        # A pull request's run of first deliveries in one go (L{_pull_run})
        # when nothing asks for a look at each message: no headers-only
        # rewrite, no replay pacing, no wildcard filter to check again here.
        runs = not push and explicit and not headers_only and not self._replay and not (
            self._filter_wild and self._store_filter is None)
        while not self.closed and sent < budget:
            if push:
                if not self.active or (self._maxpb and self._pbytes > self._maxpb):
                    break
            elif not self.waiting:
                break
            if self._replay_timer is not None:
                self._send_batch()
                return sent
            if runs and len(self.waiting) == 1 and not self._rdq and not self._lss and self._npc is not None:
                taken_run = self._pull_run(budget - sent, now)
                if taken_run:
                    sent += taken_run
                    continue
            taken = self._take_next()
            if taken is None:
                break
            message, dc = taken
            if self._replay and not self._replay_now(message):
                self._put_back(message, dc)
                self._send_batch()
                return sent
            if dc == 1 and self._npc:
                self._npc -= 1
            pending = self._npc if self._npc is not None else self._num_pending()
            subject, seq = message.subject, message.seq
            reply = self._reply_format % (dc, seq, self.dseq, message.ts, pending)
            headers, data = message.headers, message.data
            if headers_only:
                headers = (headers[:-2] if headers else b"NATS/1.0\r\n") + b"Nats-Msg-Size: %d\r\n\r\n" % len(data)
                data = b""
            size = len(subject) + len(reply) + len(headers or b"") + len(data)
            if not subject.isascii():
                # (nats-server counts its UTF-8 bytes, a Go string's len; the reply is bytes.)
                size += len(subject.encode()) - len(subject)
            if push:
                target = deliver_subject
            else:
                request = self._next_waiting(size, now)
                if request is None:
                    if dc == 1 and self._npc is not None:
                        self._npc += 1
                    self._put_back(message, dc)
                    break
                target = request.reply
            dseq = self.dseq
            self.dseq += 1
            if push:
                count = broker.deliver_as(target, subject, data, reply, headers, flush=False)
            else:
                # A pull request's messages go to the broker together
                # (L{_send_batch}): one plan lookup for the batch, not one
                # a message.  Whether anyone took them is known then.
                if target != self._batch_to:
                    self._send_batch()
                    self._batch_to = target
                    self._batch_request = request
                self._batch.append((subject, data, reply, headers))
                self._batch_seqs.append(seq)
            sent += 1
            if self._replay:
                self._replay_lts, self._replay_due = message.ts, 0
            self.last_delivered = now
            if explicit:
                entry = self.pending.get(seq)
                if entry is None:
                    self.pending[seq] = [dseq, now]
                else:
                    entry[0], entry[1] = dseq, now
                replies = self._replies
                if replies is not None:
                    if len(replies) >= ACK_REPLIES_KEPT:
                        replies.clear()
                    replies[reply] = (dc, seq, dseq)
                if self._ack_timer is None:
                    self._arm_ack_timer(self.config["ack_wait"])
                store.update_delivered(dseq, seq, dc, now)
            else:
                self.adflr, self.asflr = dseq, seq
                store.update_delivered(dseq, seq, dc, now)
                store.update_acks(dseq, seq, (seq,))
                if self._retention != "limits":
                    self.stream.ack_message(seq)
            if push:
                if self._maxpb:
                    self._pbytes += size
                    if not self._fcid and self._pbytes > self._maxpb // 2:
                        self._send_flow_control()
                    elif self._fcid and self._pbytes - self._fcsz >= self._maxpb:
                        self._fcsz += size
                if count == 0:
                    # Nobody took it: not active until someone subscribes.
                    self.active = False
                    self._arm_inactive()
            else:
                self._waiting_last = now
        if self._batch:
            self._send_batch()
        if self._replay and sent < budget and self.sseq > self._replay_through:
            # Caught up with what the stream held at the start: new messages go at once.
            self._replay = False
        return sent

    def _pull_run(self, room: int, now: int) -> int:
        """
        L{_deliver_round}'s loop for the first deliveries to the one
        waiting pull request, when it asks for nothing a message at a time
        (no max_bytes, not at its end, heard): up to C{room} messages, as
        many as it still wants and C{max_ack_pending} allows, each taken,
        recorded pending and held for the request as the loop would, and
        given to the consumer store as one run.  Returns how many it took;
        0 leaves the message to the loop, which says why it stops (the
        408, 409, the stall, the end of the stream).
        """
        request = self.waiting[0]
        if request.b or request.unheard or (request.last and now >= request.last):
            return 0
        genid = self.broker.sublist.genid
        if request.genid != genid:
            request.interest = self.broker.has_interest(request.reply)
            request.genid = genid
        if not (request.interest or self._young(request, now)):
            return 0
        pending = self.pending
        wanted = request.n if request.n < room else room
        max_pending = self.config.get("max_ack_pending", 0)
        if max_pending > 0 and max_pending - len(pending) < wanted:
            wanted = max_pending - len(pending)
        if wanted <= 0:
            return 0
        target = request.reply
        if target != self._batch_to:
            self._send_batch()
            if self._rdq:
                # (What the last batch's request did not take goes first.)
                return 0
            self._batch_to = target
            self._batch_request = request
        store = self.stream.store
        load, load_next, store_filter = store.load, store.load_next, self._store_filter
        everything = store_filter is None
        # A filter the store was not given (it named every subject the
        # stream had): the stream's subjects may have changed since, so each
        # message's subject is compared; one that differs is the loop's.
        only = self._filter if store_filter is None else None
        reply_format = self._first_reply_format
        hold, held_seqs = self._batch.append, self._batch_seqs
        replies = self._replies
        if replies is not None and len(replies) > ACK_REPLIES_KEPT - wanted:
            replies.clear()
        npc = self._npc or 0
        first = dseq = self.dseq
        seq = self.sseq
        end = first + wanted
        while dseq < end:
            if everything:
                # (Most often the very next one: read without load_next's
                # search.  One gone, or damaged and so read as gone with
                # the store's error, is passed over as load_next passes
                # over a gap.)
                message = load(seq)
                if message is None:
                    message = load_next(seq + 1, None)
            else:
                message = load_next(seq, store_filter)
            if message is None or (only is not None and message.subject != only):
                break
            seq = message.seq
            if npc:
                npc -= 1
            reply = reply_format % (seq, dseq, message.ts, npc)
            hold((message.subject, message.data, reply, message.headers))
            if replies is not None:
                replies[reply] = (1, seq, dseq)
            held_seqs.append(seq)
            # (A first delivery: its entry made afresh, as the loop leaves it.)
            pending[seq] = [dseq, now]
            dseq += 1
            seq += 1
        taken = dseq - first
        if not taken:
            return 0
        self.sseq, self.dseq, self._npc = seq, dseq, npc
        request.d += taken
        request.n -= taken
        if request.n <= 0:
            self.waiting.popleft()
        elif request.hb:
            request.hbt = now + request.hb
        self.last_delivered = self._waiting_last = now
        if self._ack_timer is None:
            self._arm_ack_timer(self.config["ack_wait"])
        self.store.update_delivered_run(first, held_seqs[-taken:], now)
        return taken

    def _send_batch(self) -> None:
        """
        Hand the pull round's messages held for one request to the broker
        (before anything else is sent to it: L{_status} calls this too).
        Those nobody took are redelivered, in another round.  When nobody
        took any, the request is ended with a 408 at the next look, as
        nats-server drops a request without interest (and ends one whose
        subscriber may not receive the messages at its end): it was served again
        in the next round (a young request on a server with leaf nodes or
        gateways, a subscriber that may not receive the subjects), each
        time counting a delivery of what reached nobody, until
        C{max_deliver} dropped the message.
        """
        batch, seqs = self._batch, self._batch_seqs
        if not batch:
            return
        self._batch, self._batch_seqs = [], []
        counts = self.broker.deliver_as_many(self._batch_to, batch)
        if not any(counts) and self._batch_request is not None:
            self._batch_request.unheard = True
        if 0 in counts and self.config["ack_policy"] != "none":
            for seq, count in zip(seqs, counts):
                if count == 0 and seq in self.pending:
                    self._add_redelivery(seq)
            self._again = True

    def _replay_now(self, message: StoredMessage) -> bool:
        """
        Replay original: whether C{message} may go now, or else wait for
        the gap between its stored time and the last sent one's
        (nats-server sleeps in its delivery loop; here a timer brings the
        next round, and nothing is sent before it).
        """
        if message.seq == self._replay_due or not self._replay_lts:
            return True
        gap = message.ts - self._replay_lts
        if gap <= REPLAY_MIN_GAP:
            return True
        self._replay_seq = message.seq
        self._replay_timer = self.clock.callLater(gap / SECOND, self._replay_waited)
        return False

    def _replay_waited(self) -> None:
        self._replay_timer = None
        self._replay_due = self._replay_seq
        self._deliver()

    def _next_waiting(self, size: int, now: int) -> Optional[NextRequest]:
        """The pull request the next message (of C{size} bytes) goes to at C{now} (nats-server's C{nextWaiting})."""
        waiting = self.waiting
        genid = self.broker.sublist.genid
        while waiting:
            request = waiting[0]
            if request.last and now >= request.last:
                # Over, or nearly: clients give up at expires (nats-py asks
                # for 100 us less than it waits), and a message taken in the
                # last instant would reach a fetch that has returned, to be
                # found by the next one as if it were its own.
                self._status(request.reply, "408 Request Timeout", request.n, request.b)
                waiting.popleft()
                continue
            if request.unheard:
                # (Its status, for a subscriber that hears that but not the
                # messages, as nats-server's 408 at the end.)
                self._status(request.reply, "408 Request Timeout", request.n, request.b)
                waiting.popleft()
                continue
            if request.b > 0:
                if size <= request.b:
                    request.b -= size
                    if request.b == 0:
                        request.n = 1
                else:
                    self._status(request.reply, "409 Message Size Exceeds MaxBytes", request.n, request.b)
                    waiting.popleft()
                    continue
            if request.genid != genid:
                request.interest = self.broker.has_interest(request.reply)
                request.genid = genid
            if request.interest or self._young(request, now):
                request.d += 1
                request.n -= 1
                if request.n <= 0:
                    waiting.popleft()
                else:
                    if len(waiting) > 1:
                        waiting.rotate(-1)
                    if request.hb:
                        request.hbt = now + request.hb
                return request
            waiting.popleft()
        return None

    def _status(self, reply: str, status: str, messages: int = -1, size: int = 0) -> None:
        """A pull request's status message (C{NATS/1.0 408 Request Timeout}, with the pending counts when given)."""
        if self._batch:
            # After the messages a round holds (an expiring request's among them).
            self._send_batch()
        if messages >= 0:
            headers = b"NATS/1.0 %s\r\nNats-Pending-Messages: %d\r\nNats-Pending-Bytes: %d\r\n\r\n" % (
                status.encode("utf-8"), messages, size,
            )
        else:
            headers = b"NATS/1.0 %s\r\n\r\n" % status.encode("utf-8")
        self.broker.publish(reply, b"", None, headers)

    # -- pull requests -------------------------------------------------------------

    def next_request(self, reply: str, payload: bytes) -> None:
        """A C{CONSUMER.MSG.NEXT} request (or an ack's C{+NXT}), answered at C{reply} (nats-server's C{processNextMsgRequest})."""
        if self.closed or not reply:
            return
        if self.push:
            self._status(reply, "409 Consumer is push based")
            return
        now = self.now()
        try:
            batch, max_bytes, expires, no_wait, hb = parse_next_request(payload, now)
        except ValueError as e:
            self._status(reply, "400 Bad Request - %s" % (e,))
            return
        config = self.config
        if config.get("max_batch", 0) > 0 and batch > config["max_batch"]:
            self._status(reply, "409 Exceeded MaxRequestBatch of %d" % config["max_batch"])
            return
        if expires and config.get("max_expires", 0) > 0 and expires > now + config["max_expires"]:
            self._status(reply, "409 Exceeded MaxRequestExpires of %s" % go_duration(config["max_expires"]))
            return
        if max_bytes > 0 and config.get("max_bytes", 0) > 0 and max_bytes > config["max_bytes"]:
            self._status(reply, "409 Exceeded MaxRequestMaxBytes of %d" % config["max_bytes"])
            return
        max_waiting = config.get("max_waiting") or WAIT_QUEUE_DEFAULT_MAX
        if len(self.waiting) >= max_waiting:
            self._process_waiting(False)
        if no_wait:
            available = self._num_pending() + len(self._rdq)
            if available == 0 and not expires:
                self._waiting_last = now
                self._status(reply, "404 No Messages")
                return
            if available > 0:
                wanted = self._process_waiting(False)
                if available < wanted:
                    self._waiting_last = now
                    self._status(reply, "408 Requests Pending")
                    return
        if len(self.waiting) >= max_waiting:
            self._status(reply, "409 Exceeded MaxWaiting")
            return
        self.waiting.append(NextRequest(reply, max(batch, 1), max_bytes, expires, now, hb, no_wait))
        self._waiting_last = now
        self._deliver()
        self._arm_wait_timer()

    def _process_waiting(self, eos: bool) -> int:
        """
        End the requests that expired (408 Request Timeout), the no-wait ones
        that got something when there is no more (C{eos}), and those nobody
        listens to any more; send the idle heartbeats due.  Returns how many
        messages the rest still want (nats-server's C{processWaiting}).
        """
        if not self.waiting:
            return 0
        now = self.now()
        genid = self.broker.sublist.genid
        wanted = 0
        keep: Deque[NextRequest] = deque()
        for request in self.waiting:
            if (eos and request.no_wait and request.d > 0) or (request.expires and now >= request.expires):
                self._status(request.reply, "408 Request Timeout", request.n, request.b)
                continue
            if request.genid != genid:
                request.interest = self.broker.has_interest(request.reply)
                request.genid = genid
            if request.unheard:
                self._status(request.reply, "408 Request Timeout", request.n, request.b)
                continue
            if not (request.interest or self._young(request, now)):
                continue
            wanted += request.n
            if request.hbt and now >= request.hbt:
                self._idle_heartbeat(request.reply)
                request.hbt = now + request.hb
            keep.append(request)
        self.waiting = keep
        self._arm_wait_timer()
        return wanted

    def _young(self, request: "NextRequest", now: int) -> bool:
        """
        Whether C{request} is too young to be dropped for want of interest in
        its inbox, on a server with gateways or leaf nodes (nats-server's
        C{defaultGatewayRecentSubExpiration}, applied when
        C{s.leafNodeEnabled || s.gateway.enabled}): a request that came
        over a gateway can arrive before the RS+ for its inbox, which the
        other server sends on its other connection at the same moment, and
        a leaf link can hide a gateway (or routes) on its far side, where
        the request and its inbox's interest took different paths before
        they met on the link.
        """
        broker = self.broker
        return (broker.gateways is not None or broker.leafnodes_enabled) and now - request.received < RECENT_REQUEST
    def _arm_wait_timer(self) -> None:
        """One timer for the waiting requests: the earliest expiry or heartbeat."""
        at = 0
        for request in self.waiting:
            for when in (request.expires, request.hbt):
                if when and (not at or when < at):
                    at = when
        if self._wait_timer is not None and self._wait_timer.active():
            if at and at == self._wait_timer_at:
                return
            self._wait_timer.cancel()
        self._wait_timer = None
        if at:
            self._wait_timer_at = at
            self._wait_timer = self.clock.callLater(max(at - self.now(), 0) / SECOND, self._wait_timer_fired)

    def _wait_timer_fired(self) -> None:
        self._wait_timer = None
        if not self.closed:
            self._process_waiting(True)
            self._deliver()

    # -- acknowledgements ----------------------------------------------------------

    def _ack_message(self, subject: bytes, reply: Optional[bytes], payload: bytes, headers: Optional[bytes]) -> None:
        """
        A message on the ack subject, subject and reply as they came
        (L{Broker.subscribe_raw}): L{ack} without decoding the subject.
        """
        if self.closed or self.fed_in_process:
            return
        replies = self._replies
        numbers = replies.pop(subject, None) if replies is not None else None
        if numbers is not None:
            dc, sseq, dseq = numbers
        else:
            # (Nine tokens, the first two $JS and ACK: the subscription's.)
            tokens = subject.split(b".")
            if len(tokens) != 9:
                return
            try:
                dc, sseq, dseq = int(tokens[4]), int(tokens[5]), int(tokens[6])
            except ValueError:
                return
        if reply is None and payload == ACK_ACK:
            # (Most acks: L{_ack_parsed}'s first case, without its call.)
            max_pending = self.config.get("max_ack_pending", 0)
            stalled = max_pending > 0 and len(self.pending) >= max_pending
            self._acked(sseq, dseq)
            if self._rdq or stalled:
                self._deliver()
            return
        try:
            self._ack_parsed(dc, sseq, dseq, None if reply is None else reply.decode("utf-8", "replace"), payload)
        except RecursionError:
            # "+NXT" with JSON nested past the decoder's depth: dropped, as
            # nats-server drops an ack it cannot read (no traceback per message).
            pass

    def ack(self, subject: str, reply: Optional[str], payload: bytes, tokens: Optional[List[str]] = None) -> None:
        """
        A message on this consumer's ack subject (nats-server's
        C{processAck}): C{+ACK} (or nothing), C{-NAK} with an optional
        delay, C{+WPI}, C{+TERM}, C{+NXT} with a pull request.  With a
        reply, the sender is answered once the ack is kept (C{AckSync}).
        C{tokens}: C{subject} split at its dots, when the caller has them.
        A consumer fed in process (an event handler's) takes acks from its
        owner only (L{ack_in_process}): an ack subject is easily guessed
        (explicit acks need only the stream sequence), and a client's
        C{+ACK}, C{+TERM} or C{-NAK} would take the event from the handler.
        """
        if self.closed or self.fed_in_process:
            return
        if tokens is None:
            tokens = subject.split(".")
        if len(tokens) != 9 or tokens[0] != "$JS" or tokens[1] != "ACK":
            return
        try:
            dc, sseq, dseq = int(tokens[4]), int(tokens[5]), int(tokens[6])
        except ValueError:
            return
        self._ack_parsed(dc, sseq, dseq, reply, payload)

    def _ack_parsed(self, dc: int, sseq: int, dseq: int, reply: Optional[str], payload: bytes) -> None:
        """L{ack} of the delivery its subject names (count C{dc}, stream and consumer sequences)."""
        skip_reply = sseq == 0
        max_pending = self.config.get("max_ack_pending", 0)
        stalled = max_pending > 0 and len(self.pending) >= max_pending
        body = payload
        if not body or body == ACK_ACK or body == ACK_OK:
            self._acked(sseq, dseq)
        elif body.startswith(ACK_NEXT):
            self._acked(sseq, dseq)
            if reply:
                self.next_request(reply, body[len(ACK_NEXT):])
            skip_reply = True
        elif body.startswith(ACK_NAK):
            self._nak(sseq, dseq, dc, body[len(ACK_NAK):])
        elif body == ACK_PROGRESS:
            entry = self.pending.get(sseq)
            if entry is not None:
                entry[1] = self.now()
                self._remove_redelivery(sseq)
        elif body == ACK_TERM:
            self._acked(sseq, dseq)
            self._advisory("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED", "terminated", sseq, dseq, dc)
        if reply and not skip_reply:
            broker = self.broker
            self.store.when_durable(lambda: broker.publish(reply, b""))
        if self._rdq or stalled:
            self._deliver()

    def _acked(self, sseq: int, dseq: int) -> None:
        """nats-server's C{processAckMsg}: floors, pending, and the stream told (workqueue, interest)."""
        policy = self.config["ack_policy"]
        pending = self.pending
        acked: Sequence[int] = ()
        if policy == "explicit":
            entry = pending.pop(sseq, None)
            if entry is not None:
                dseq = entry[0]
                acked = [sseq]
            if not pending:
                self.adflr, self.asflr = self.dseq - 1, self.sseq - 1
            elif dseq == self.adflr + 1:
                # The floor goes up to just below the oldest still pending
                # (the first in the dict: first deliveries go in stream order).
                oldest_seq = next(iter(pending))
                self.adflr, self.asflr = pending[oldest_seq][0] - 1, oldest_seq - 1
            # (Most acks are of first deliveries: nothing to forget.)
            if self.rdc:
                self.rdc.pop(sseq, None)
            if sseq in self._rdqi:
                self._remove_redelivery(sseq)
        elif policy == "all":
            if dseq <= self.adflr or sseq <= self.asflr:
                return
            gap_from = self.asflr
            self.adflr, self.asflr = dseq, sseq
            for seq in [seq for seq in pending if seq <= sseq]:
                del pending[seq]
                self.rdc.pop(seq, None)
                self._remove_redelivery(seq)
            acked = list(range(gap_from + 1, sseq + 1))
        else:
            return
        if not pending and self._replies:
            # (Nothing awaits an ack: the replies kept are of deliveries
            # acked already, otherwise (ack_policy all: the last ack acks
            # every earlier one) or a redelivered message's first; kept,
            # they would stay until the bound.)
            self._replies.clear()
        self.last_acked = self.now()
        # (For ack_policy all, the floors say it all.)
        self.store.update_acks(self.adflr, self.asflr, acked if policy == "explicit" else ())
        if acked and self._retention != "limits":
            for seq in acked:
                self.stream.ack_message(seq)

    def _nak(self, sseq: int, dseq: int, dc: int, argument: bytes) -> None:
        """nats-server's C{processNak}: redeliver now, or after the delay asked (JSON C{{"delay": ns}} or a Go duration)."""
        if dseq <= self.adflr or dseq >= self.dseq:
            return
        entry = self.pending.get(sseq)
        if self.pending and entry is None:
            return
        self._advisory("$JS.EVENT.ADVISORY.CONSUMER.MSG_NAKED", "nak", sseq, dseq, dc)
        text = argument.strip()
        if text:
            delay: Optional[int] = None
            try:
                if text[:1] == b"{":
                    options = json.loads(text)
                    value = options.get("delay", 0) if isinstance(options, dict) else None
                    if isinstance(value, int) and not isinstance(value, bool):
                        delay = value
                else:
                    delay = parse_go_duration(text.decode("utf-8"))
            except ValueError:
                delay = None
            if delay is None:
                self.log.warn(
                    "JetStream consumer {stream} > {consumer}: bad NAK delay value {value!r}",
                    stream=self.stream.name, consumer=self.name, value=text,
                )
            else:
                self._remove_redelivery(sseq)
                if entry is not None:
                    # Due again when its delay is over: it counts as sent ack_wait ago, plus the delay.
                    entry[1] = self.now() - self.config["ack_wait"] + delay
                    self.store.update_delivered(entry[0], sseq, dc, entry[1])
                    self._arm_ack_timer(10 * MILLISECOND, reset=True)
                return
        self._add_redelivery(sseq)

    # -- the ack_wait timer --------------------------------------------------------

    def _arm_ack_timer(self, delay_ns: int, reset: bool = False) -> None:
        if self._ack_timer is not None and self._ack_timer.active():
            if not reset:
                return
            self._ack_timer.cancel()
        self._ack_timer = self.clock.callLater((delay_ns + MILLISECOND) / SECOND, self._check_pending)

    def _check_pending(self) -> None:
        """
        The one ack timer fired (nats-server's C{checkPending}): what waited
        longer than C{ack_wait} (or its backoff step) goes to the redelivery
        queue, oldest first; the timer is set for the next one due.
        """
        self._ack_timer = None
        if self.closed:
            return
        now = self.now()
        ttl = self.config["ack_wait"]
        backoff = self.config.get("backoff") or []
        next_due = backoff[-1] if backoff else ttl
        first = self.stream.store.state().first_seq
        expired: List[int] = []
        gone = False
        for seq, entry in list(self.pending.items()):
            if seq < first:
                del self.pending[seq]
                self.rdc.pop(seq, None)
                self._remove_redelivery(seq)
                gone = True
                continue
            elapsed, deadline = now - entry[1], ttl
            if backoff:
                index = self.rdc.get(seq, 0)
                following = index + 1
                if index + 1 >= len(backoff):
                    index = following = len(backoff) - 1
                deadline = backoff[index]
                if backoff[following] < next_due:
                    next_due = backoff[following]
            if elapsed >= deadline:
                if seq not in self._rdqi:
                    expired.append(seq)
            elif deadline - elapsed < next_due:
                next_due = deadline - elapsed
        if expired:
            expired.sort()
            offset = now - self.pending[expired[0]][1]
            for seq in expired:
                self._add_redelivery(seq)
                self.pending[seq][1] += offset
        if self.pending:
            self._arm_ack_timer(next_due)
        if gone:
            self.store.update(self._state())
        if expired:
            self._deliver()

    # -- push: interest, heartbeats, flow control, inactivity -----------------------

    def _subscription_changed(self, sub: Subscription, delta: int) -> None:
        """A subscription came or went somewhere: if it may be on the deliver subject, look again soon."""
        deliver = self.config["deliver_subject"].encode("utf-8")
        subject = sub.subject
        if subject != deliver and not ((b"*" in subject or b">" in subject) and subject_matches(subject, deliver)):
            return
        if self._interest_check is None or not self._interest_check.active():
            # Not from inside the index change: after it, in the next turn.
            self._interest_check = self.clock.callLater(0, self._check_interest)

    def _check_interest(self) -> None:
        self._interest_check = None
        if self.closed:
            return
        active = self.broker.has_interest(self.config["deliver_subject"])
        was, self.active = self.active, active
        if active:
            self._cancel(self._inactive_timer)
            self._inactive_timer = None
            if not was:
                self._deliver()
        else:
            self._arm_inactive()

    def _watch_gateway_interest(self) -> None:
        """
        nats-server's C{watchGWinterest}: another cluster's interest in the
        deliver subject comes and goes without a subscription here (an
        C{RS+} over a gateway, a negative answer), so look every
        L{GATEWAY_INTEREST_CHECK} seconds.
        """
        self._gateway_watch = None
        if self.closed:
            return
        if self.broker.has_interest(self.config["deliver_subject"]) != self.active:
            self._check_interest()
        self._gateway_watch = self.clock.callLater(GATEWAY_INTEREST_CHECK, self._watch_gateway_interest)

    def _heartbeat(self) -> None:
        """The push idle heartbeat timer: a heartbeat if nothing was sent for C{idle_heartbeat}."""
        self._hb_timer = None
        if self.closed:
            return
        interval = self.config["idle_heartbeat"]
        idle = self.now() - self.last_delivered
        if idle >= interval or not self.last_delivered:
            if self.active:
                self._idle_heartbeat(self.config["deliver_subject"])
            wait = interval
        else:
            wait = interval - idle
        self._hb_timer = self.clock.callLater(wait / SECOND, self._heartbeat)

    def _idle_heartbeat(self, subject: str) -> None:
        """C{NATS/1.0 100 Idle Heartbeat} with the last sequences (and the flow control request it is stalled on)."""
        headers = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: %d\r\nNats-Last-Stream: %d\r\n" % (
            self.dseq - 1, self.sseq - 1,
        )
        if self._fcid:
            headers += b"Nats-Consumer-Stalled: %s\r\n" % self._fcid.encode("utf-8")
        self.broker.publish(subject, b"", None, headers + b"\r\n")

    def _send_flow_control(self) -> None:
        """C{NATS/1.0 100 FlowControl Request}: deliveries stall when the client does not answer it."""
        reply = "$JS.FC.%s.%s.%s" % (self.stream.name, self.name, "".join(random.choice(_NAME_CHARS) for _ in range(4)))
        self._fcsz, self._fcid = self._pbytes, reply
        self.broker.deliver_as(
            self.config["deliver_subject"], self.config["deliver_subject"], b"", reply,
            b"NATS/1.0 100 FlowControl Request\r\n\r\n", flush=False,
        )

    def _flow_control_answer(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """The client answered a flow control request: the window grows, and deliveries go on."""
        if subject != self._fcid or self.closed:
            return
        if self._maxpb < self._pblimit:
            self._maxpb = min(self._maxpb * 2, self._pblimit)
        self._pbytes = max(self._pbytes - self._fcsz, 0)
        self._fcid, self._fcsz = "", 0
        self._deliver()

    def _arm_inactive(self) -> None:
        """Start the inactivity timer (C{inactive_threshold}) unless it runs already."""
        threshold = self.config.get("inactive_threshold", 0)
        if threshold <= 0 or self.closed:
            return
        if self._inactive_timer is not None and self._inactive_timer.active():
            return
        self._inactive_timer = self.clock.callLater(threshold / SECOND, self._inactive)

    def _inactive(self) -> None:
        """
        The inactivity timer (nats-server's C{deleteNotActive}): a push
        consumer nobody listens to, or a pull consumer nobody asked for
        C{inactive_threshold}, is deleted.
        """
        self._inactive_timer = None
        if self.closed:
            return
        threshold = self.config["inactive_threshold"]
        if self.push:
            if self.active:
                return
        else:
            elapsed = self.now() - self._waiting_last
            if elapsed < threshold:
                self._inactive_timer = self.clock.callLater((threshold - elapsed) / SECOND, self._inactive)
                return
            self._process_waiting(True)
            if self.waiting:
                self._inactive_timer = self.clock.callLater(threshold / SECOND, self._inactive)
                return
        self.log.info(
            "JetStream consumer {stream} > {consumer} deleted: inactive for {threshold}",
            stream=self.stream.name, consumer=self.name, threshold=go_duration(threshold),
        )
        self.delete()
        self.release_interest()
        if self.stream.consumers.get(self.name) is self:
            self.stream.detach(self.name)

    # -- advisories ----------------------------------------------------------------

    def _advisory(self, prefix: str, kind: str, sseq: int, dseq: int, dc: int) -> None:
        """A NAK or TERM advisory (C{io.nats.jetstream.advisory.v1.<kind>}), only when someone listens."""
        subject = "%s.%s.%s" % (prefix, self.stream.name, self.name)
        if not self.broker.has_interest(subject):
            return
        body = {
            "type": "io.nats.jetstream.advisory.v1.%s" % kind,
            "id": new_consumer_name() + new_consumer_name(),
            "timestamp": rfc3339(self.now()),
            "stream": self.stream.name,
            "consumer": self.name,
            "consumer_seq": dseq,
            "stream_seq": sseq,
            "deliveries": dc,
        }
        self.broker.publish(subject, json.dumps(body, separators=(",", ":")).encode("utf-8"))

    def _advisory_max_deliveries(self, sseq: int, dc: int) -> None:
        subject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.%s.%s" % (self.stream.name, self.name)
        if not self.broker.has_interest(subject):
            return
        body = {
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": new_consumer_name() + new_consumer_name(),
            "timestamp": rfc3339(self.now()),
            "stream": self.stream.name,
            "consumer": self.name,
            "stream_seq": sseq,
            "deliveries": dc,
        }
        self.broker.publish(subject, json.dumps(body, separators=(",", ":")).encode("utf-8"))

    # -- an owner in this process ---------------------------------------------------

    def deliver_in_process(self, seqs: List[int], through: int = 0) -> None:
        """
        An owner in this process that has the messages in hand (the event
        log, L{eventsvc.events.log}) delivers them itself: the stream
        sequences C{seqs} (ascending, not delivered before) become pending
        as a delivery would make them, in one store record, without being
        loaded or sent; the others up to C{through} (or the last of
        C{seqs}) are passed over, as those a filter leaves out, and with
        nothing pending the floors move past them.  Explicit acks; nobody
        should pull.
        """
        self.fed_in_process = True
        last = max(seqs[-1] if seqs else 0, through)
        if self.closed or last < self.sseq:
            return
        now = self.now()
        store = self.store
        pending = self.pending
        first = dseq = self.dseq
        for seq in seqs:
            pending[seq] = [dseq, now]
            dseq += 1
        self.dseq = dseq
        if seqs:
            # (One record for the run: one per message cost a sixth of an event's CPU.)
            store.update_delivered_run(first, seqs, now)
        self.sseq = last + 1
        self._npc = None
        if seqs:
            self.last_delivered = now
        if not pending:
            self.adflr, self.asflr = self.dseq - 1, last
            store.update(self._state())

    def ack_in_process(self, seqs: List[int]) -> None:
        """
        The owner of L{deliver_in_process} is done with C{seqs}:
        acknowledged, as C{+ACK} would, in one store record for all.
        """
        if self.closed:
            return
        pending = self.pending
        acked = [seq for seq in seqs if pending.pop(seq, None) is not None]
        if not acked:
            return
        if self.rdc or self._rdqi:
            # (Only after a redelivery, which the log's handlers never ask for.)
            for seq in acked:
                self.rdc.pop(seq, None)
                self._remove_redelivery(seq)
        if not pending:
            self.adflr, self.asflr = self.dseq - 1, self.sseq - 1
        else:
            # (Delivered in stream order: the oldest still pending is the
            # first at or after the last one found.  Not next(iter(pending)):
            # a dict acked from the front is walked over its removed
            # entries each time, which with a backlog of thousands cost
            # more than the rest of the event.)
            oldest = self._oldest_pending
            if oldest is None or oldest > self.sseq:
                oldest = min(pending)
            else:
                while oldest not in pending:
                    oldest += 1
            self._oldest_pending = oldest
            self.adflr, self.asflr = pending[oldest][0] - 1, oldest - 1
        self.last_acked = self.now()
        self.store.update_acks(self.adflr, self.asflr, acked)
        if self._retention != "limits":
            for seq in acked:
                self.stream.ack_message(seq)

    # -- info, update, end ---------------------------------------------------------

    def info(self) -> Dict[str, Any]:
        """The ConsumerInfo JSON, nats-server 2.9's fields in its order."""
        if not self.push and self.waiting:
            self._process_waiting(False)
        delivered: Dict[str, Any] = {"consumer_seq": self.dseq - 1, "stream_seq": self.sseq - 1}
        if self.last_delivered:
            delivered["last_active"] = rfc3339(self.last_delivered)
        ack_floor: Dict[str, Any] = {"consumer_seq": self.adflr, "stream_seq": self.asflr}
        if self.last_acked:
            ack_floor["last_active"] = rfc3339(self.last_acked)
        info: Dict[str, Any] = {
            "stream_name": self.stream.name,
            "name": self.name,
            "created": rfc3339(self.created),
            "config": as_json(self.config),
            "delivered": delivered,
            "ack_floor": ack_floor,
            "num_ack_pending": len(self.pending),
            "num_redelivered": len(self.rdc),
            "num_waiting": len(self.waiting),
            "num_pending": self._num_pending(),
        }
        if self.push and self.active:
            info["push_bound"] = True
        return info

    def update(self, config: Dict[str, Any]) -> None:
        """
        Take a new config of an existing consumer (a create request naming
        it), as nats-server's C{updateConfig}: L{check_update} says what may
        change; raises L{ApiError}.
        """
        old = self.config
        bound = bool(old.get("deliver_subject")) and self.broker.has_interest(old["deliver_subject"])
        check_update(old, config, bound)
        if old == config:
            return
        self.config = config
        if config["filter_subject"] != old["filter_subject"]:
            # 2.9 lets the filter change: what is left to deliver is counted again.
            self._set_filter()
            self._npc = None
        if config.get("deliver_subject") != old.get("deliver_subject"):
            # Everything outstanding goes to the new subject.
            for seq in sorted(self.pending):
                self._add_redelivery(seq)
            self.active = self.broker.has_interest(config["deliver_subject"])
        if config.get("inactive_threshold") != old.get("inactive_threshold"):
            self._cancel(self._inactive_timer)
            self._inactive_timer = None
            if not self.push or not self.active:
                self._arm_inactive()
        if config.get("ack_wait") != old.get("ack_wait") and self.pending:
            self._arm_ack_timer(100 * MILLISECOND, reset=True)
        self._deliver()

    def _cancel(self, call: Optional[IDelayedCall]) -> None:
        if call is not None and call.active():
            call.cancel()

    def _close(self) -> None:
        self.closed = True
        for call in (self._ack_timer, self._wait_timer, self._hb_timer, self._inactive_timer, self._interest_check, self._more,
                     self._gateway_watch, self._replay_timer):
            self._cancel(call)
        self._gateway_watch = self._replay_timer = None
        self._ack_timer = self._wait_timer = self._hb_timer = self._inactive_timer = self._interest_check = None
        self._more = None
        for sub in self._subs:
            sub.unsubscribe()
        self._subs = []
        self._replies = None
        if self._listener is not None:
            try:
                self.broker.subscription_listeners.remove(self._listener)
            except ValueError:
                pass
            self._listener = None

    def stop(self) -> None:
        """The server stops: timers end, the state is written; nothing is sent."""
        if self.closed:
            return
        self._close()
        self.waiting.clear()
        self.store.close()

    def release_interest(self) -> None:
        """
        Deleted while its stream lives (by request, or inactive): on an
        interest stream, what only this consumer still needed goes, as
        nats-server's consumer delete removes it.  Each message is offered
        to the stream as acknowledged; a deleted consumer needs nothing,
        so the stream keeps only what another consumer needs.
        """
        if self._retention != "interest":
            return
        state = self.stream.store.state()
        for seq in range(max(self.asflr + 1, state.first_seq), state.last_seq + 1):
            self.stream.ack_message(seq)

    def delete(self) -> None:
        """Deleted (by request, with its stream, or inactive): waiting pulls hear 409 Consumer Deleted; the state goes."""
        if self.closed:
            return
        self._close()
        waiting, self.waiting = self.waiting, deque()
        for request in waiting:
            self._status(request.reply, "409 Consumer Deleted")
        self.store.destroy()
