"""
One stream's rules over its store, as nats-server 2.9 keeps them: the
configuration (defaults, checks, what an update may change), the publish
path (dedupe window, expectations, rollups, limits, retention, republish,
the PubAck sent only once the store says the message is durable), purges,
deletes, the direct get, and sources from the server's other streams.

A stream meets the broker only through its in-process API (it subscribes
to its subjects and publishes PubAcks and direct-get answers), and its
consumers only through the calls the consumers' contract names:
C{stored}, C{purged}, C{needs}, C{stop}, C{delete}.  It knows nothing of
the C{$JS.API} subjects: L{eventsvc.jetstream.api} turns requests into
calls here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from twisted.logger import Logger

from eventsvc.files import write_atomic
from eventsvc.jetstream import errors
from eventsvc.jetstream.errors import ApiError
from eventsvc.jetstream.limits import stream_bytes_cap
from eventsvc.jetstream.memstore import MemoryConsumerStore, MemoryStore, message_size
from eventsvc.jetstream.sourcing import SourceLink, index_name, last_copies
from eventsvc.jetstream.store import (
    ConsumerStore,
    StoreError,
    LimitReached,
    MessageStore,
    StoredMessage,
    StoreFull,
    StoreLimits,
    StoreUnavailable,
)
from eventsvc.jetstream.wire import header, parse_headers, parse_rfc3339, rfc3339

if TYPE_CHECKING:
    from eventsvc.jetstream.engine import JetStream

#: nats-server's JSMaxNameLen and JSMaxDescriptionLen.
MAX_NAME_LEN = 255
MAX_DESCRIPTION_LEN = 4 * 1024
#: StreamDefaultDuplicatesWindow: two minutes, in nanoseconds.
DEFAULT_DUPLICATE_WINDOW = 120 * 1_000_000_000
#: A hundred milliseconds: the smallest max_age and duplicate_window.
MIN_WINDOW = 100 * 1_000_000
#: StreamMaxReplicas.
MAX_REPLICAS = 5
MAX_INT32 = 2 ** 31 - 1
MAX_INT64 = 2 ** 63 - 1

#: Whether a PubAck is made by one %-format of its sequence (CPython: a
#: third of the str, encode and two concatenations), or by those (PyPy,
#: whose JIT makes them cheaper than the format).
_ACK_BY_FORMAT = sys.implementation.name == "cpython"

_INT = "int"
_STR = "str"
_BOOL = "bool"
_SUBJECTS = "subjects"
_ANY = "any"

#: StreamConfig's fields in nats-server's order, with their JSON kind;
#: enumerations carry their allowed values.
FIELDS: Tuple[Tuple[str, Any], ...] = (
    ("name", _STR),
    ("description", _STR),
    ("subjects", _SUBJECTS),
    ("retention", ("limits", "interest", "workqueue")),
    ("max_consumers", _INT),
    ("max_msgs", _INT),
    ("max_bytes", _INT),
    ("max_age", _INT),
    ("max_msgs_per_subject", _INT),
    ("max_msg_size", _INT),
    ("discard", ("old", "new")),
    ("storage", ("file", "memory")),
    ("num_replicas", _INT),
    ("no_ack", _BOOL),
    ("template_owner", _STR),
    ("duplicate_window", _INT),
    ("placement", _ANY),
    ("mirror", _ANY),
    ("sources", _ANY),
    ("republish", _ANY),
    ("allow_direct", _BOOL),
    ("mirror_direct", _BOOL),
    ("discard_new_per_subject", _BOOL),
    ("sealed", _BOOL),
    ("deny_delete", _BOOL),
    ("deny_purge", _BOOL),
    ("allow_rollup_hdrs", _BOOL),
)

#: Written only when not empty/zero (Go's omitempty).
_OMIT_EMPTY = {
    "description", "subjects", "max_msg_size", "no_ack", "template_owner", "duplicate_window",
    "placement", "mirror", "sources", "republish", "discard_new_per_subject",
}
_ZERO: Dict[Any, Any] = {_INT: 0, _STR: "", _BOOL: False, _SUBJECTS: None, _ANY: None}


def decode_config(payload: bytes) -> Dict[str, Any]:
    """
    A StreamConfig request as Go's C{json.Unmarshal} reads it: unknown keys
    are ignored, a known key of the wrong type (or an unknown enumeration
    value, or a number out of range) is not JSON of the struct.

    @raise ApiError: C{INVALID_J_S_O_N_ERR}.
    """
    try:
        raw = json.loads(payload.decode("utf-8")) if payload.strip() else None
    except (ValueError, UnicodeDecodeError):
        raise errors.INVALID_J_S_O_N_ERR()
    if raw is None and payload.strip() == b"null":
        raw = {}
    if not isinstance(raw, dict):
        raise errors.INVALID_J_S_O_N_ERR()
    config: Dict[str, Any] = {}
    for name, kind in FIELDS:
        value = raw.get(name)
        if value is None:
            value = _ZERO[kind] if not isinstance(kind, tuple) else ""
        elif isinstance(kind, tuple):
            if value not in kind:
                raise errors.INVALID_J_S_O_N_ERR()
        elif kind == _INT:
            if not isinstance(value, int) or isinstance(value, bool) or not -MAX_INT64 - 1 <= value <= MAX_INT64:
                raise errors.INVALID_J_S_O_N_ERR()
            if name == "max_msg_size" and not -MAX_INT32 - 1 <= value <= MAX_INT32:
                raise errors.INVALID_J_S_O_N_ERR()
        elif kind == _STR and not isinstance(value, str):
            raise errors.INVALID_J_S_O_N_ERR()
        elif kind == _BOOL and not isinstance(value, bool):
            raise errors.INVALID_J_S_O_N_ERR()
        elif kind == _SUBJECTS and not (isinstance(value, list) and all(isinstance(s, str) for s in value)):
            raise errors.INVALID_J_S_O_N_ERR()
        elif name == "republish":
            value = _decode_republish(value)
        elif name == "sources":
            value = _decode_sources(value)
        elif name == "mirror":
            decoded = _decode_sources([value])
            value = decoded[0] if decoded else None
        config[name] = value
    return config


def _decode_republish(value: Any) -> Dict[str, Any]:
    """RePublish {src, dest, headers_only} as Go reads it."""
    if not isinstance(value, dict):
        raise errors.INVALID_J_S_O_N_ERR()
    out: Dict[str, Any] = {}
    for key, kind in (("src", str), ("dest", str), ("headers_only", bool)):
        given = value.get(key)
        if given is None:
            given = kind()
        if not isinstance(given, kind):
            raise errors.INVALID_J_S_O_N_ERR()
        out[key] = given
    return out


def _decode_sources(value: Any) -> List[Dict[str, Any]]:
    """StreamSource list as Go reads it: {name, opt_start_seq, opt_start_time, filter_subject, external}."""
    if not isinstance(value, list):
        raise errors.INVALID_J_S_O_N_ERR()
    out = []
    for item in value:
        if item is None:
            continue
        if not isinstance(item, dict):
            raise errors.INVALID_J_S_O_N_ERR()
        name = item.get("name") or ""
        start_seq = item.get("opt_start_seq") or 0
        start_time = item.get("opt_start_time") or ""
        filter_subject = item.get("filter_subject") or ""
        external = item.get("external")
        if isinstance(external, dict):
            api, deliver = external.get("api") or "", external.get("deliver") or ""
            if not isinstance(api, str) or not isinstance(deliver, str):
                raise errors.INVALID_J_S_O_N_ERR()
            external = {"api": api, "deliver": deliver}
        if (not isinstance(name, str) or not isinstance(filter_subject, str) or not isinstance(start_time, str)
                or not isinstance(start_seq, int) or isinstance(start_seq, bool) or start_seq < 0
                or not (external is None or isinstance(external, dict))):
            raise errors.INVALID_J_S_O_N_ERR()
        if start_time:
            try:
                start_time = rfc3339(parse_rfc3339(start_time))
            except ValueError:
                raise errors.INVALID_J_S_O_N_ERR()
        out.append({"name": name, "opt_start_seq": start_seq, "opt_start_time": start_time,
                    "filter_subject": filter_subject, "external": external})
    return out


def source_json(source: Dict[str, Any]) -> Dict[str, Any]:
    """A StreamSource as nats-server writes it (empty fields left out; external always has both prefixes)."""
    out: Dict[str, Any] = {"name": source["name"]}
    for key in ("opt_start_seq", "opt_start_time", "filter_subject"):
        if source.get(key):
            out[key] = source[key]
    external = source.get("external")
    if external is not None:
        out["external"] = {"api": external.get("api") or "", "deliver": external.get("deliver") or ""}
    return out


def republish_json(republish: Dict[str, Any]) -> Dict[str, Any]:
    """RePublish as nats-server writes it (src and headers_only omitted when empty)."""
    out: Dict[str, Any] = {}
    if republish.get("src"):
        out["src"] = republish["src"]
    out["dest"] = republish.get("dest", "")
    if republish.get("headers_only"):
        out["headers_only"] = True
    return out


_PLACEHOLDER = re.compile(r"^(?:\$(\d+)|\{\{\s*wildcard\s*\(\s*(\d+)\s*\)\s*\}\})$")


class SubjectTransform:
    """
    nats-server's subject transform for republish (its C{newTransform}):
    each C{*} of C{src} is named in C{dest} as C{$N} or C{{{wildcard(N)}}},
    a trailing C{>} carries over; C{dest} has no C{*} of its own.
    """

    def __init__(self, src: str, dest: str) -> None:
        """@raise ValueError: the pair is not a transform nats-server accepts."""
        if not _valid_subject(src) or not _valid_subject(dest):
            raise ValueError("invalid subject")
        self.src = src.split(".")
        self.dest = dest.split(".")
        self.src_pattern = src
        if "*" in self.dest or (self.src[-1] == ">") != (self.dest[-1] == ">"):
            raise ValueError("wildcards do not match")
        stars = [i for i, token in enumerate(self.src) if token == "*"]
        self.plan: List[Tuple[str, Any]] = []
        used = set()
        for token in self.dest:
            match = _PLACEHOLDER.match(token)
            if token == ">":
                self.plan.append((">", None))
            elif match:
                n = int(match.group(1) or match.group(2))
                if not 1 <= n <= len(stars):
                    raise ValueError("wildcard index out of range")
                used.add(n)
                self.plan.append(("*", stars[n - 1]))
            elif token.startswith("{{"):
                raise ValueError("unsupported mapping function")
            else:
                self.plan.append(("", token))
        if len(used) < len(stars):
            raise ValueError("not all wildcards are used")

    def match(self, subject: str) -> Optional[str]:
        """C{subject} transformed, or None if C{src} does not match it."""
        if not _subject_matches(self.src_pattern, subject):
            return None
        tokens = subject.split(".")
        out = []
        for kind, value in self.plan:
            if kind == ">":
                out.append(".".join(tokens[len(self.src) - 1:]))
            elif kind == "*":
                out.append(tokens[value])
            else:
                out.append(value)
        return ".".join(out)


def _subject_matches(pattern: str, subject: str) -> bool:
    from eventsvc.nats.subjects import subject_matches

    return subject_matches(pattern.encode("utf-8"), subject.encode("utf-8"))


def subjects_collide(a: str, b: str) -> bool:
    """Whether some literal subject matches both C{a} and C{b} (nats-server's SubjectsCollide)."""
    ta, tb = a.split("."), b.split(".")
    for x, y in zip(ta, tb):
        if x == ">" or y == ">":
            return True
        if x != y and x != "*" and y != "*":
            return False
    return len(ta) == len(tb)


def subject_is_subset(subject: str, of: str) -> bool:
    """Whether every subject C{subject} matches is matched by C{of} (subjectIsSubsetMatch)."""
    ts, to = subject.split("."), of.split(".")
    for i, t in enumerate(to):
        if t == ">":
            return True
        if i >= len(ts):
            return False
        s = ts[i]
        if s == ">":
            return False
        if t != "*" and s != t:
            return False
        if t == "*" and s == ">":
            return False
    return len(ts) == len(to)


def _valid_subject(subject: str) -> bool:
    if not subject or any(c in subject for c in " \t\r\n"):
        return False
    tokens = subject.split(".")
    for i, token in enumerate(tokens):
        if not token or (">" in token and (token != ">" or i != len(tokens) - 1)) or ("*" in token and token != "*"):
            return False
    return True


def _invalid(text: str) -> ApiError:
    return errors.STREAM_INVALID_CONFIG_F(err=text)


def check_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """
    nats-server's C{checkStreamCfg}: C{config} (from L{decode_config})
    with the defaults filled in, or the error nats-server gives.

    @raise ApiError: the configuration is refused.
    """
    cfg = dict(config)
    name = cfg["name"]
    if not name or any(c in name for c in " \t\r\n\f.*>"):
        raise _invalid("stream name is required and can not contain '.', '*', '>'")
    if len(name) > MAX_NAME_LEN:
        raise _invalid("stream name is too long, maximum allowed is {}".format(MAX_NAME_LEN))
    if len(cfg["description"]) > MAX_DESCRIPTION_LEN:
        raise _invalid("stream description is too long, maximum allowed is {}".format(MAX_DESCRIPTION_LEN))
    cfg["retention"] = cfg["retention"] or "limits"
    cfg["discard"] = cfg["discard"] or "old"
    cfg["storage"] = cfg["storage"] or "file"
    if cfg["num_replicas"] == 0:
        cfg["num_replicas"] = 1
    if cfg["num_replicas"] > MAX_REPLICAS:
        raise _invalid("maximum replicas is {}".format(MAX_REPLICAS))
    if cfg["num_replicas"] < 0:
        raise errors.REPLICAS_COUNT_CANNOT_BE_NEGATIVE()
    for key in ("max_msgs", "max_msgs_per_subject", "max_bytes", "max_msg_size", "max_consumers"):
        if cfg[key] == 0:
            cfg[key] = -1
    if cfg["duplicate_window"] == 0 and not cfg["mirror"]:
        window = DEFAULT_DUPLICATE_WINDOW
        cfg["duplicate_window"] = cfg["max_age"] if cfg["max_age"] != 0 and cfg["max_age"] < window else window
    if 0 < cfg["max_age"] < MIN_WINDOW:
        raise _invalid("max age needs to be >= 100ms")
    if cfg["duplicate_window"] < 0:
        raise _invalid("duplicates window can not be negative")
    if cfg["max_age"] != 0 and cfg["duplicate_window"] > cfg["max_age"]:
        raise _invalid("duplicates window can not be larger then max age")
    if 0 < cfg["duplicate_window"] < MIN_WINDOW:
        raise _invalid("duplicates window needs to be >= 100ms")
    if cfg["deny_purge"] and cfg["allow_rollup_hdrs"]:
        raise _invalid("roll-ups require the purge permission")
    if cfg["discard_new_per_subject"]:
        if cfg["discard"] != "new":
            raise _invalid("discard new per subject requires discard new policy to be set")
        if cfg["max_msgs_per_subject"] <= 0:
            raise _invalid("discard new per subject requires max msgs per subject > 0")
    _check_origins(cfg)
    subjects = cfg["subjects"]
    if not subjects:
        cfg["subjects"] = [] if cfg["sources"] or cfg["mirror"] else [name]
    else:
        seen = set()
        for subject in subjects:
            if subject in seen:
                raise _invalid("duplicate subjects detected")
            if subject_is_subset(subject, "$JS.API.>"):
                raise _invalid("subjects overlap with jetstream api")
            if not _valid_subject(subject):
                raise _invalid("invalid subject")
            seen.add(subject)
        # Distinct literal subjects never collide: only pairs with a
        # wildcard are compared (in nats-server's order, so the same pair
        # is named), which keeps a stream of 100,000 literal subjects from
        # holding the reactor for an hour.
        wildcards = [s for s in subjects if "*" in s.split(".") or ">" in s.split(".")]
        wild = set(wildcards)
        for subject in subjects:
            others = subjects if subject in wild else wildcards
            for other in others:
                if other != subject and subjects_collide(other, subject):
                    raise _invalid("subject {} overlaps with {}".format(json.dumps(subject), json.dumps(other)))
    republish = cfg["republish"]
    if republish:
        republish = cfg["republish"] = dict(republish, src=republish["src"] or ">")
        if not any(subjects_collide(republish["src"], subject) for subject in cfg["subjects"]):
            raise _invalid("stream configuration for republish source is not valid subset of subjects")
        if any(subjects_collide(republish["dest"], subject) for subject in cfg["subjects"]):
            raise _invalid("stream configuration for republish destination forms a cycle")
        try:
            SubjectTransform(republish["src"], republish["dest"])
        except ValueError:
            raise _invalid("stream configuration for republish not valid")
    return cfg


def _check_origins(cfg: Dict[str, Any]) -> None:
    """
    The mirror's and sources' rules that need no other stream (the
    engine checks the rest): a mirror has no subjects and no sources, and
    external prefixes are subjects without wildcards, the API's apart from
    this server's C{$JS.API}.
    """
    mirror = cfg["mirror"]
    origins = list(cfg["sources"] or ())
    if mirror:
        if cfg["subjects"]:
            raise errors.MIRROR_WITH_SUBJECTS_ERR()
        if cfg["sources"]:
            raise errors.MIRROR_WITH_SOURCES_ERR()
        origins.append(mirror)
    for origin in origins:
        if not origin["name"]:
            raise _invalid("stream source name is required" if origin is not mirror else "stream mirror name is required")
    for origin in origins:
        deliver = (origin["external"] or {}).get("deliver") or ""
        if deliver and not _valid_publish_subject(deliver):
            raise errors.STREAM_INVALID_EXTERNAL_DELIVERY_SUBJ_ERR_F(prefix=deliver)
    for origin in origins:
        api = (origin["external"] or {}).get("api") or ""
        if not api:
            continue
        if not _valid_publish_subject(api):
            raise _invalid("stream external api prefix {} must be a valid subject without wildcards".format(json.dumps(api)))
        if subjects_collide(api, "$JS.API"):
            raise errors.STREAM_EXTERNAL_API_OVERLAP_ERR_F(prefix=api, subject="$JS.API")


def _valid_publish_subject(subject: str) -> bool:
    return _valid_subject(subject) and not any(token in ("*", ">") for token in subject.split("."))


def check_update(old: Dict[str, Any], new: Dict[str, Any]) -> Dict[str, Any]:
    """
    nats-server's C{configUpdateCheck} (without the limits, which are the
    engine's): C{new} (already through L{check_config}) if it may replace
    C{old}.

    @raise ApiError: the update is refused.
    """
    cfg = dict(new)
    if cfg["name"] != old["name"]:
        raise _invalid("stream configuration name must match original")
    if cfg["max_consumers"] != old["max_consumers"]:
        raise _invalid("stream configuration update can not change MaxConsumers")
    if cfg["storage"] != old["storage"]:
        raise _invalid("stream configuration update can not change storage type")
    if cfg["retention"] != old["retention"]:
        raise _invalid("stream configuration update can not change retention policy")
    if old["template_owner"]:
        raise _invalid("stream configuration update not allowed on template owned stream")
    if cfg["template_owner"]:
        raise _invalid("stream configuration update can not be owned by a template")
    if not cfg["sealed"] and old["sealed"]:
        raise _invalid("stream configuration update can not unseal a sealed stream")
    if not cfg["deny_delete"] and old["deny_delete"]:
        raise _invalid("stream configuration update can not cancel deny message deletes")
    if not cfg["deny_purge"] and old["deny_purge"]:
        raise _invalid("stream configuration update can not cancel deny purge")
    if (cfg["mirror"] or None) != (old["mirror"] or None):
        raise errors.STREAM_MIRROR_NOT_UPDATABLE_ERR()
    if (cfg["republish"] or None) != (old["republish"] or None):
        raise _invalid("stream configuration update can not change RePublish")
    if cfg["sealed"]:
        cfg.update(max_age=0, discard="new", deny_delete=True, deny_purge=True, allow_rollup_hdrs=False)
    return cfg


def config_json(config: Dict[str, Any]) -> Dict[str, Any]:
    """The StreamConfig as nats-server writes it (its order, omitempty fields left out)."""
    out: Dict[str, Any] = {}
    for name, kind in FIELDS:
        value: Any = config.get(name)
        if name in _OMIT_EMPTY and not value:
            continue
        if value is None:
            value = _ZERO[kind] if not isinstance(kind, tuple) else ""
        if name == "republish":
            value = republish_json(value)
        elif name == "sources":
            value = [source_json(source) for source in value]
        elif name == "mirror":
            value = source_json(value)
        out[name] = value
    return out


def store_limits(config: Dict[str, Any]) -> StoreLimits:
    """The limits a store enforces itself, from a normalized configuration."""
    return StoreLimits(
        max_msgs=config["max_msgs"],
        max_bytes=config["max_bytes"],
        max_age=config["max_age"],
        max_msgs_per_subject=config["max_msgs_per_subject"],
        discard_new=config["discard"] == "new",
        discard_new_per_subject=config["discard_new_per_subject"],
    )


def _file_stores() -> Any:
    """eventsvc.jetstream.filestore, or None in a tree without it (file streams are then kept in memory)."""
    import importlib

    try:
        return importlib.import_module("eventsvc.jetstream.filestore")
    except ImportError:  # pragma: no cover (depends on the tree)
        return None


def _sync(sync_interval: float) -> Any:
    """[jetstream] sync_interval as the file stores take it: seconds, or "always" (0)."""
    return "always" if sync_interval <= 0 else sync_interval


def open_store(config: Dict[str, Any], directory: Optional[str], clock: Any = None, sync_interval: float = 120.0,
               segment_size: Optional[int] = None) -> MessageStore:
    """
    The store for a stream: the file store for C{storage: file} with a
    folder, else the memory store.  The one place a stream's store is
    chosen.

    @param directory: the stream's C{msgs/} folder (file streams with a
        store_dir), or None.
    @raise StoreUnavailable: the folder cannot be used.
    """
    limits = store_limits(config)
    filestore = _file_stores()
    if directory is None or config["storage"] != "file" or filestore is None:
        return MemoryStore(limits)
    from twisted.python.filepath import FilePath

    if segment_size is None:
        segment_size = filestore.SEGMENT_SIZE
    store: MessageStore = filestore.FileStore(FilePath(directory), limits, clock, -1, _sync(sync_interval), segment_size)
    return store


def open_consumer_store(stream_config: Dict[str, Any], directory: Optional[str], clock: Any = None,
                        sync_interval: float = 120.0) -> ConsumerStore:
    """A consumer's state store, beside its stream's (file streams with a folder keep it in C{state/})."""
    filestore = _file_stores()
    if directory is None or stream_config["storage"] != "file" or filestore is None:
        return MemoryConsumerStore()
    from twisted.python.filepath import FilePath

    store: ConsumerStore = filestore.FileConsumerStore(FilePath(directory), clock, _sync(sync_interval))
    return store


def _go_header_value(value: str) -> str:
    return value.replace("\r", " ").replace("\n", " ")


class _Dedupe:
    """The duplicate window: Nats-Msg-Id -> (seq, ts ns), oldest first."""

    def __init__(self) -> None:
        self.ids: Dict[str, Tuple[int, int]] = {}

    def find(self, msg_id: str) -> Optional[int]:
        entry = self.ids.get(msg_id)
        return entry[0] if entry is not None else None

    def add(self, msg_id: str, seq: int, ts: int) -> None:
        self.ids.pop(msg_id, None)
        self.ids[msg_id] = (seq, ts)

    def expire(self, now: int, window: int) -> Optional[int]:
        """Forget the ids older than C{window}; when the next one expires (ns), or None."""
        ids = self.ids
        while ids:
            msg_id, (_, ts) = next(iter(ids.items()))
            if now - ts >= window:
                del ids[msg_id]
            else:
                return ts + window
        return None


class Stream:
    """
    One stream: its configuration, its store, its consumers, and the
    subscriptions that feed it.

    @ivar config: the normalized StreamConfig (as STREAM.INFO echoes it).
    @ivar consumers: its consumers by name (L{attach}, L{detach}).
    """

    log = Logger()

    def __init__(self, engine: "JetStream", config: Dict[str, Any], store: MessageStore, created: int,
                 directory: Optional[str] = None) -> None:
        """
        @param directory: store_dir/streams/<name>, where its metadata and
            its consumers' are kept; None for a JetStream without a
            store_dir.
        """
        self.engine = engine
        self.name: str = config["name"]
        self.config = config
        self.store = store
        self.created = created
        self.directory = directory
        self.consumers: Dict[str, Any] = {}
        #: This stream's own sources, by index name (L{eventsvc.jetstream.sourcing.index_name}), and its mirror.
        self.sources: Dict[str, SourceLink] = {}
        self.mirror: Optional[SourceLink] = None
        self._subscriptions: List[Any] = []
        self._direct: List[Any] = []
        #: A mirror's subscriptions to its origin's direct gets (L{serve_mirror_direct}).
        self._mirror_direct: List[Any] = []
        self._dedupe = _Dedupe()
        self._dedupe_timer: Any = None
        self._expiry_timer: Any = None
        self._expiry_at: Optional[int] = None
        self._last_msg_id = ""
        self._closed = False
        #: The store's bytes as last told to the engine (its usage sum),
        #: and the messages stored since.
        self._bytes = 0
        self._unaccounted = 0
        self._pub_ack_prefix = self._ack_prefix()
        #: A PubAck as a %-format of its sequence (the stream's name may hold a %).
        self._pub_ack_form = self._pub_ack_prefix.replace(b"%", b"%%") + b"%d}"
        self._republish: Optional[SubjectTransform] = None
        #: The config L{append} last worked out, and whether it needs no checks.
        self._append_config: Optional[Dict[str, Any]] = None
        self._append_plain = False
        #: The config L{process} and L{store_mirrored} last worked out, and
        #: the server's limit and the account's per-stream cap for its
        #: storage (-1, 0: none), which frozen settings fix per config.
        self._process_config: Optional[Dict[str, Any]] = None
        #: The publishes waiting on the store's next write under one waiter
        #: (seq, reply, Nats-Msg-Id), the store's group epoch and the store
        #: it was taken from (L{_when_durable}).
        self._durable_group: Optional[List[Tuple[int, Optional[str], str]]] = None
        self._durable_epoch = -1
        self._durable_store: Any = None
        self._store_limit = -1
        self._stream_cap = 0
        #: Whether a message without headers has checks to pass under
        #: that config (sealed, a max_msg_size: L{process}).
        self._process_checks = True
        if config["republish"]:
            self._republish = SubjectTransform(config["republish"]["src"], config["republish"]["dest"])
        store.on_removed(self._removed_by_store)
        files = _file_stores()
        if files is not None and isinstance(store, files.FileStore):
            # A file store calls back a group commit's waiters together:
            # their PubAcks go out together.
            store.around_ready = (engine.hold_answers, engine.release_answers)

    # -- life ---------------------------------------------------------------

    def account(self) -> None:
        """Tell the engine how many bytes the store holds now (after anything that stores or removes)."""
        self._unaccounted = 0
        now = self.store.state().bytes
        if now != self._bytes:
            self.engine.account(self.config["storage"], now - self._bytes)
            self._bytes = now

    def start(self) -> None:
        """Subscribe to the subjects (and the direct get), rebuild the dedupe window, arm the timers."""
        self.account()
        self._subscribe()
        self._rebuild_dedupe()
        self._schedule_expiry()

    def _ack_prefix(self) -> bytes:
        domain = self.engine.settings.domain
        if domain:
            return ('{"stream":%s, "domain":%s, "seq":' % (json.dumps(self.name), json.dumps(domain))).encode("utf-8")
        return ('{"stream":%s, "seq":' % json.dumps(self.name)).encode("utf-8")

    def _subscribe(self) -> None:
        broker = self.engine.broker
        for subscription in self._subscriptions:
            subscription.unsubscribe()
        # (A stream fed in process takes nothing from the broker: L{JetStream.fed_in_process}.)
        subjects = [] if self.name in getattr(self.engine, "fed_in_process", ()) else self.config["subjects"]
        self._subscriptions = [broker.subscribe(subject, self._publish) for subject in subjects]
        for subscription in self._direct:
            subscription.unsubscribe()
        self._direct = []
        if self.config["allow_direct"]:
            prefixes = ["$JS.API.DIRECT.GET." + self.name]
            if self.engine.settings.domain:
                prefixes.append("$JS.{}.API.DIRECT.GET.{}".format(self.engine.settings.domain, self.name))
            for prefix in prefixes:
                self._direct += [
                    broker.subscribe(prefix, self._direct_get, queue="_sys_"),
                    broker.subscribe(prefix + ".>", self._direct_get_last, queue="_sys_"),
                ]

    def serve_mirror_direct(self) -> None:
        """
        A mirror with C{mirror_direct}, caught up with its origin, answers
        the origin's direct gets too, in their queue group (nats-server's
        C{subscribeToMirrorDirect}).
        """
        if self._mirror_direct or self._closed or not self.config["mirror_direct"] or not self.config["mirror"]:
            return
        prefix = "$JS.API.DIRECT.GET." + self.config["mirror"]["name"]
        broker = self.engine.broker
        self._mirror_direct = [
            broker.subscribe(prefix, self._direct_get, queue="_sys_"),
            broker.subscribe(prefix + ".>", self._direct_get_last, queue="_sys_"),
        ]

    def _unsubscribe(self) -> None:
        for subscription in self._subscriptions + self._direct + self._mirror_direct:
            subscription.unsubscribe()
        self._subscriptions, self._direct, self._mirror_direct = [], [], []
        for timer in (self._dedupe_timer, self._expiry_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._dedupe_timer = self._expiry_timer = None

    def stop(self) -> None:
        """Shut down: stop the consumers, close the store (what is buffered is written)."""
        if self._closed:
            return
        self._closed = True
        self._unsubscribe()
        self.unlink_sources()
        for consumer in list(self.consumers.values()):
            consumer.stop()
        self.store.close()
        self._forget_usage()

    def delete(self) -> None:
        """The stream is deleted: its consumers, its messages and its files go."""
        self._closed = True
        self._unsubscribe()
        self.unlink_sources()
        for consumer in list(self.consumers.values()):
            consumer.delete()
        self.consumers.clear()
        self.store.destroy()
        self._forget_usage()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _forget_usage(self) -> None:
        if self._bytes:
            self.engine.account(self.config["storage"], -self._bytes)
            self._bytes = 0

    def save(self) -> None:
        """Write the stream's metadata (config and created) atomically, if it has a directory."""
        if self.directory is None:
            return
        os.makedirs(self.directory, exist_ok=True)
        body = {"config": config_json(self.config), "created": self.created}
        write_atomic(os.path.join(self.directory, "meta.json"), json.dumps(body, separators=(",", ":")).encode("utf-8"))

    def update(self, config: Dict[str, Any]) -> None:
        """Take a new configuration (checked by L{check_update} and the engine's limits)."""
        self.config = config
        before = self.store.state()
        self.store.set_limits(store_limits(config))
        self.account()
        if self.store.state() != before:
            for consumer in list(self.consumers.values()):
                consumer.purged()
        self.save()
        self._subscribe()
        self._schedule_expiry()
        if self._dedupe_timer is not None and self._dedupe_timer.active():
            self._dedupe_timer.cancel()
        self._dedupe_timer = None
        self._expire_dedupe()

    # -- sources ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether the stream was stopped or deleted."""
        return self._closed

    def link_sources(self, restored: bool = False) -> None:
        """
        Follow the configured mirror and sources (after a create, an
        update, a restart): a link for each new one, a new link for one
        whose configuration changed, none for one removed.  C{restored}:
        the stream was just read back from store_dir; a source of which it
        holds no copy then starts at the time of its last message, as
        nats-server's (C{startingSequenceForSources}), not from the origin's
        first, which it may have held and lost to its limits.
        """
        if self._closed:
            return
        mirror = self.config["mirror"]
        if mirror and self.mirror is None:
            self.mirror = SourceLink(self, mirror, mirror=True)
            self.mirror.start()
        wanted = {index_name(source): source for source in self.config["sources"] or ()}
        for iname in list(self.sources):
            if iname not in wanted or self.sources[iname].config != wanted[iname]:
                self.sources.pop(iname).stop()
        last_ts = self.store.state().last_ts if restored else 0
        new = [iname for iname in wanted if iname not in self.sources]
        # Where each new one resumes: one walk back through the stream for all.
        copied = last_copies(self.store, set(new)) if new else {}
        for iname in new:
            link = self.sources[iname] = SourceLink(self, wanted[iname], since=last_ts)
            link.start(copied.get(iname, 0))

    def unlink_sources(self) -> None:
        """Let go of every origin (a stop, a delete)."""
        for link in self.sources.values():
            link.stop()
        if self.mirror is not None:
            self.mirror.stop()

    def sources_json(self) -> List[Dict[str, Any]]:
        """StreamSourceInfo of each source: name, external, lag, active (ns since the origin last spoke; -1: never)."""
        return [link.info() for link in self.sources.values()]

    def skip_to(self, seq: int) -> None:
        """
        A mirror's next sequence is C{seq}: the ones before it that are not
        here the origin no longer has (nats-server's C{skipMsgs}).  An
        empty store just moves on; otherwise each skipped sequence is
        used and deleted, so that the next one stored is C{seq}.
        """
        state = self.store.state()
        if seq <= state.last_seq + 1:
            return
        if not state.msgs:
            self.store.skip(seq)
            return
        # The store skips only when empty: each sequence is used and deleted,
        # with the limits lifted meanwhile, lest a placeholder push out a
        # message the mirror holds (max_msgs) or be refused (discard new).
        self.store.set_limits(StoreLimits())
        try:
            for _ in range(state.last_seq + 1, seq):
                skipped = self.store.store("", None, b"", self.engine.now())
                self.store.remove(skipped)
        finally:
            self.store.set_limits(store_limits(self.config))
        self.account()

    def is_duplicate(self, headers: Optional[bytes]) -> bool:
        """Whether a message with these headers would be taken as a duplicate (its Nats-Msg-Id is in the window)."""
        msg_id = header(headers, "Nats-Msg-Id") if headers and b"Nats-Msg-Id" in headers else None
        return msg_id is not None and msg_id != "" and self._dedupe.find(msg_id) is not None

    def store_mirrored(self, subject: str, headers: Optional[bytes], payload: bytes, seq: int, ts: int) -> bool:
        """
        A mirror's copy of the origin's message C{seq} stored at that
        sequence with the origin's time (C{processJetStreamMsg} with its
        C{lseq} and C{ts}); False if it was not kept (the mirror's next
        sequence is not C{seq}, or the store refused it).
        """
        if self._closed:
            return False
        config = self.config
        if config is not self._process_config:
            self._take_limits(config)
        limit, cap = self._store_limit, self._stream_cap
        usage = self.engine.usage(config["storage"]) if limit >= 0 or cap > 0 else 0
        if 0 <= limit <= usage:
            self.log.warn("stream {stream}: the mirror's message {seq} not kept: insufficient resources",
                          stream=self.name, seq=seq)
            return False
        if self.store.last_seq() != seq - 1:
            return False
        try:
            stored = self.store.store(subject, headers, payload, ts or self.engine.now())
        except StoreError:
            return False
        self._unaccounted += 1
        if self._unaccounted >= 64 or self._near_limit(config, 64 * (len(payload) + 128)):
            self.account()
        for consumer in list(self.consumers.values()):
            consumer.stored(stored, subject)
        if self._expiry_at is None and self.config["max_age"] > 0:
            self._schedule_expiry()
        return True

    # -- consumers ----------------------------------------------------------

    def public_consumers(self) -> List[Any]:
        """The consumers clients made (L{eventsvc.jetstream.consumer.public_consumers})."""
        return [c for c in self.consumers.values() if not c.config.get("direct")]

    def consumer_directory(self, name: str) -> Optional[str]:
        """store_dir/streams/<stream>/consumers/<name>, or None without a store_dir."""
        return os.path.join(self.directory, "consumers", name) if self.directory is not None else None

    def new_consumer_store(self, name: str, config: Dict[str, Any], created: int) -> ConsumerStore:
        """Persist a consumer's config and created time (with a store_dir) and give its state store."""
        if config.get("direct"):
            # A mirror's or source's consumer: asked for again after a restart, never kept.
            return MemoryConsumerStore()
        directory = self.consumer_directory(name)
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            body = {"name": name, "config": config, "created": created}
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            meta = os.path.join(directory, "meta.json")
            try:
                with open(meta, "rb") as f:
                    kept = f.read() == data
            except OSError:
                kept = False
            if not kept:
                # (A restart restores it as it was: nothing to write, which
                # also lets a server start on a full disk.)
                write_atomic(meta, data)
        state = os.path.join(directory, "state") if directory is not None and self.config["storage"] == "file" else None
        return open_consumer_store(self.config, state, self.engine.clock, self.engine.settings.sync_interval)

    def attach(self, consumer: Any) -> None:
        """A consumer is ready: it is told of every message stored from now on."""
        self.consumers[consumer.name] = consumer

    def detach(self, name: str) -> None:
        """
        Forget a consumer (its C{delete} removed its store; its folder goes
        here).  On an interest stream the consumer has already let go of
        what only it needed (its C{release_interest}).
        """
        if self.consumers.pop(name, None) is None or self._closed:
            return
        directory = self.consumer_directory(name)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    def ack_message(self, seq: int) -> None:
        """A consumer acknowledged C{seq}: workqueue removes it, interest when no one else needs it."""
        retention = self.config["retention"]
        if retention == "limits":
            return
        if retention == "interest":
            message = self.store.load(seq)
            if message is None:
                return
            if any(c.needs(seq, message.subject) for c in self.consumers.values()):
                return
        if self.store.remove(seq):
            self.account()
            self._schedule_expiry()

    def _removed_by_store(self, seq: int, subject: str) -> None:
        """
        The store dropped a message (limits, age): each consumer accounts
        for that one message, which costs nothing per message; a full
        recount here made every publish past max_msgs scan the stream
        (3,900 publishes/s against 60,000 with 20,000 messages kept).
        """
        for consumer in list(self.consumers.values()):
            consumer.purged(seq, subject)

    # -- publishing -----------------------------------------------------------

    def _publish(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """A message on one of the stream's subjects (the broker's callback)."""
        if self._closed:
            return
        try:
            self.process(subject, reply, payload, headers)
        except Exception:
            self.log.failure("stream {stream}: a message on {subject} was not stored", stream=self.name, subject=subject)
            self._nak(reply, errors.STREAM_STORE_FAILED_F(err="internal error"))

    def _stored_size(self, subject: str, headers: Optional[bytes], payload: bytes) -> int:
        """What the message will count in the account's usage, as its store counts it."""
        if isinstance(self.store, MemoryStore):
            # Memory streams, and file streams of a JetStream without store_dir.
            return message_size(subject, headers, payload)
        return int(_file_stores().file_message_size(subject, headers, payload))

    def _nak(self, reply: Optional[str], error: ApiError) -> None:
        if reply and not self.config["no_ack"]:
            body = {"error": error.as_json(), "stream": self.name, "seq": 0}
            self.engine.answer(reply, dumps(body))

    def _ack(self, reply: Optional[str], seq: int, duplicate: bool = False) -> None:
        if reply and not self.config["no_ack"]:
            tail = b',"duplicate": true}' if duplicate else b"}"
            self.engine.answer(reply, self._pub_ack_prefix + str(seq).encode("ascii") + tail)

    def process(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> Optional[int]:
        """
        nats-server's C{processJetStreamMsg}: check the message, store it,
        and answer C{reply} (a PubAck once the store says it is durable,
        or the error).  Returns the sequence, or None if not stored.
        """
        config = self.config
        if config is not self._process_config:
            self._take_limits(config)
        if headers or self._process_checks:
            # (A message without headers to a stream neither sealed nor with
            # a max_msg_size, what nearly every publish is, has nothing to
            # be checked for here: L{_checked} is not called.)
            checked = self._checked(config, subject, reply, payload, headers)
            if checked is None:
                return None
            msg_id, rollup = checked
            size = (len(headers) if headers else 0) + len(payload)
        else:
            msg_id = rollup = ""
            size = len(payload)
        limit, cap = self._store_limit, self._stream_cap
        # (One read of the account's usage serves both this check and the
        # one after the store, which changes it only through account().)
        usage = self.engine.usage(config["storage"]) if limit >= 0 or cap > 0 else 0
        if 0 <= limit <= usage:
            # (the server's store is full: nats-server's js.limitsExceeded)
            self._nak(reply, errors.INSUFFICIENT_RESOURCES_ERR())
            return None
        if cap > 0 and usage + self._stored_size(subject, headers, payload) > cap:
            # nats-server's jsa.limitsExceeded: the account's whole usage,
            # this message in it, against the per-stream cap.  nats-server
            # stores the message, looks and takes it back, so its sequence
            # is used (and shows as deleted): the same here.
            seq = self._store(subject, headers, payload, self.engine.now(), reply)
            if seq is None:
                return None
            self.store.remove(seq)
            self.account()
            self._nak(reply, errors.ACCOUNT_RESOURCES_EXCEEDED_ERR())
            return None
        now = self.engine.now()
        if config["retention"] == "interest" and not self._interested(subject):
            # No consumer would ever see it: nats-server skips the sequence.
            seq = self._store(subject, headers, payload, now, reply)
            if seq is None:
                return None
            self.store.remove(seq)
            self.account()
            self._remember(msg_id, seq, now)
            self._ack(reply, seq)
            return seq
        target = None
        if self._republish is not None:
            target = self._republish.match(subject)
            last_on_subject = 0
            if target is not None:
                previous = self.store.load_last(subject)
                last_on_subject = previous.seq if previous is not None else 0
        # (L{_store}, inline: this runs for every message.)
        try:
            seq = self.store.store(subject, headers, payload, now)
        except StoreFull:
            self._nak(reply, errors.INSUFFICIENT_RESOURCES_ERR())
            return None
        except (LimitReached, StoreUnavailable) as e:
            self._nak(reply, errors.STREAM_STORE_FAILED_F(err=str(e)))
            return None
        self._last_msg_id = msg_id
        if msg_id:
            self._remember(msg_id, seq, now)
        if rollup:
            self._purge(subject if rollup == "sub" else None, 0, 1)
        # Counting the store's bytes costs a state(); it is done every 64
        # messages while the account has room for 64 more of this size
        # (so the count can never lag past the limit), after each one
        # nearer (L{_near_limit}, against the usage read above).
        self._unaccounted += 1
        if self._unaccounted >= 64:
            self.account()
        elif limit >= 0 or cap > 0:
            room = usage + 64 * (size + 64)
            if 0 <= limit <= room or 0 < cap <= room:
                self.account()
        if target is not None:
            self._republish_message(target, subject, seq, last_on_subject, headers, payload)
        if reply and not config["no_ack"]:
            group = self._durable_group
            store = self.store
            if group is not None and store is self._durable_store and store.group_epoch() == self._durable_epoch:
                # (L{_when_durable}'s usual case, inline: the write its
                # group waits for will take this message too.)
                group.append((seq, reply, msg_id))
            else:
                self._when_durable(seq, reply, msg_id)
        elif msg_id:
            self._when_durable(seq, None, msg_id)
        if self.consumers:
            for consumer in list(self.consumers.values()):
                consumer.stored(seq, subject)
        if self._expiry_at is None and config["max_age"] > 0:
            self._schedule_expiry()
        return seq

    def _checked(self, config: Dict[str, Any], subject: str, reply: Optional[str], payload: bytes,
                 headers: Optional[bytes]) -> Optional[Tuple[str, str]]:
        """
        L{process}'s checks of a message before it is stored: the stream
        sealed, the C{Nats-} headers' asks (a duplicate id is answered
        here) and the message's size.  Returns its C{Nats-Msg-Id} and
        C{Nats-Rollup} ("" for none), or None if it was answered and is
        not to be stored.
        """
        if config["sealed"]:
            self._nak(reply, errors.STREAM_SEALED_ERR())
            return None
        msg_id = ""
        rollup = ""
        # (find, not "in": CPython 3.11's "in" on bytes costs twice as much.)
        if headers and headers.find(b"Nats-") >= 0 and (
            headers.find(b"Nats-Msg-Id") >= 0 or headers.find(b"Nats-Expected-") >= 0 or headers.find(b"Nats-Rollup") >= 0
        ):
            # (Only these headers ask anything of the stream; a block with
            # others alone, as a source's Nats-Stream-Source, is not parsed.)
            values = parse_headers(headers)[1]

            def header_value(name: str) -> Optional[str]:
                found = values.get(name)
                return found[0] if found else None

            expected = header_value("Nats-Expected-Stream")
            if expected and expected != self.name:
                self._nak(reply, errors.STREAM_NOT_MATCH_ERR())
                return None
            msg_id = header_value("Nats-Msg-Id") or ""
            if msg_id:
                self._expire_dedupe()
                seq = self._dedupe.find(msg_id)
                if seq is not None:
                    self._ack(reply, seq, duplicate=True)
                    return None
            text = header_value("Nats-Expected-Last-Subject-Sequence")
            if text is not None:
                wanted = _parse_uint(text)
                last = self.store.load_last(subject)
                found = last.seq if last is not None else 0
                if wanted is None or found != wanted:
                    self._nak(reply, errors.STREAM_WRONG_LAST_SEQUENCE_ERR_F(seq=found))
                    return None
            text = header_value("Nats-Expected-Last-Sequence")
            if text is not None:
                wanted = _parse_uint(text)
                last_seq = self.store.state().last_seq
                if wanted is None or wanted != last_seq:
                    self._nak(reply, errors.STREAM_WRONG_LAST_SEQUENCE_ERR_F(seq=last_seq))
                    return None
            expected_id = header_value("Nats-Expected-Last-Msg-Id")
            if expected_id and expected_id != self._last_msg_id:
                self._nak(reply, errors.STREAM_WRONG_LAST_MSG_I_D_ERR_F(id=self._last_msg_id))
                return None
            rollup = header_value("Nats-Rollup") or ""
            if rollup:
                if not config["allow_rollup_hdrs"] or config["deny_purge"]:
                    self._nak(reply, errors.STREAM_ROLLUP_FAILED_F(err="rollup not permitted"))
                    return None
                if rollup not in ("sub", "all"):
                    # nats-server drops it with no answer.
                    return None
        size = (len(headers) if headers else 0) + len(payload)
        if config["max_msg_size"] >= 0 and size > config["max_msg_size"]:
            self._nak(reply, errors.STREAM_MESSAGE_EXCEEDS_MAXIMUM_ERR())
            return None
        if headers and len(headers) > 65535:
            self._nak(reply, errors.STREAM_HEADER_EXCEEDS_MAXIMUM_ERR())
            return None
        return msg_id, rollup

    def append(self, subject: str, headers: Optional[bytes], payload: bytes) -> Optional[int]:
        """
        Store a message from a feeder in this process (the event log:
        L{JetStream.fed_in_process}), which sends no reply and none of
        the C{Nats-} headers a client may: what L{process} does for such a
        message, in fewer steps (the stream's, the server's and the
        account's limits, the store, the consumers told).
        Returns the sequence, or None if it was refused; the feeder asks
        the store's C{when_durable} itself.
        """
        config = self.config
        if config is not self._append_config:
            self._append_config = config
            self._append_plain = self._plain_for_append(config)
        if not self._append_plain or self._closed:
            return self._append_checked(subject, headers, payload)
        # Nothing to check (limits retention, no republish, no message size
        # limit, not sealed, no server limits: worked out once per config):
        # this runs for every event.
        try:
            seq = self.store.store(subject, headers, payload, self.engine.now())
        except (StoreFull, LimitReached, StoreUnavailable):
            return None
        self._unaccounted += 1
        if self._unaccounted >= 64:
            self.account()
        for consumer in self.consumers.values():
            # (The feeder's own consumers learn of it from the feeder:
            # L{Consumer.deliver_in_process}.)
            if not consumer.fed_in_process:
                consumer.stored(seq, subject)
        if self._expiry_at is None and config["max_age"] > 0:
            self._schedule_expiry()
        return seq

    def _take_limits(self, config: Dict[str, Any]) -> None:
        """
        Work out, once per config, the server's limit (C{max_file_store},
        C{max_memory_store}) and the account's per-stream cap for its
        storage, which L{process} and L{store_mirrored} check each message
        against (what L{JetStream.limits_exceeded} and
        L{JetStream.near_limit} say, without asking the settings each time).
        """
        settings = self.engine.settings
        storage = config["storage"]
        self._store_limit = settings.max_memory_store if storage == "memory" else settings.max_file_store
        self._stream_cap = stream_bytes_cap(settings.limits, storage)
        self._process_checks = bool(config["sealed"]) or config["max_msg_size"] >= 0
        self._process_config = config

    def _near_limit(self, config: Dict[str, Any], room: int) -> bool:
        """L{JetStream.near_limit} for this stream's storage, from the limits L{_take_limits} found."""
        limit, cap = self._store_limit, self._stream_cap
        if limit < 0 and cap <= 0:
            return False
        usage = self.engine.usage(config["storage"]) + room
        return (0 <= limit <= usage) or (0 < cap <= usage)

    def _plain_for_append(self, config: Dict[str, Any]) -> bool:
        """Whether L{append} under C{config} has nothing to check but the store's own limits."""
        settings = self.engine.settings
        storage = config["storage"]
        limit = settings.max_memory_store if storage == "memory" else settings.max_file_store
        return (
            config["retention"] == "limits" and self._republish is None and not config["sealed"]
            and config["max_msg_size"] < 0 and limit < 0 and stream_bytes_cap(settings.limits, storage) <= 0
        )

    def _append_checked(self, subject: str, headers: Optional[bytes], payload: bytes) -> Optional[int]:
        """L{append} with every check (a limit of the stream or of the server, or not limits retention)."""
        config = self.config
        if config["retention"] != "limits" or self._republish is not None:
            return self.process(subject, None, payload, headers)
        if self._closed or config["sealed"]:
            return None
        size = (len(headers) if headers else 0) + len(payload)
        if config["max_msg_size"] >= 0 and size > config["max_msg_size"]:
            return None
        engine = self.engine
        storage = config["storage"]
        if engine.limits_exceeded(storage):
            return None
        cap = stream_bytes_cap(engine.settings.limits, storage)
        if cap > 0 and engine.usage(storage) + self._stored_size(subject, headers, payload) > cap:
            return None
        try:
            seq = self.store.store(subject, headers, payload, engine.now())
        except (StoreFull, LimitReached, StoreUnavailable):
            return None
        self._unaccounted += 1
        if self._unaccounted >= 64 or engine.near_limit(storage, 64 * (size + 64)):
            self.account()
        # (mirrors and sources of this stream are consumers too: told here;
        # the event log's own handlers are handed their events by the log)
        for consumer in list(self.consumers.values()):
            if not consumer.fed_in_process:
                consumer.stored(seq, subject)
        if self._expiry_at is None and config["max_age"] > 0:
            self._schedule_expiry()
        return seq

    def _when_durable(self, seq: int, reply: Optional[str], msg_id: str) -> None:
        """
        PubAck C{seq} once the store has it durable; if its write fails,
        refuse it and forget its id.  The messages one write of the store
        takes share one waiter (L{MessageStore.group_epoch}): a window of
        asynchronous publishes costs a list entry each, not two closures.
        """
        store = self.store
        epoch = store.group_epoch()
        group = self._durable_group
        if group is not None and epoch is not None and epoch == self._durable_epoch and store is self._durable_store:
            group.append((seq, reply, msg_id))
            return
        group = [(seq, reply, msg_id)]
        if epoch is None:
            self._durable_group = None
        else:
            self._durable_group, self._durable_epoch, self._durable_store = group, epoch, store
        store.when_durable(lambda: self._durable(group), lambda error: self._lost(group, error))

    def _durable(self, group: List[Tuple[int, Optional[str], str]]) -> None:
        """The messages of C{group} are durable: their PubAcks, in order."""
        if group is self._durable_group:
            self._durable_group = None
        # (A reply is in the group only when it is to be answered: L{process}.)
        if _ACK_BY_FORMAT:
            form = self._pub_ack_form
            answers = [(reply, form % seq) for seq, reply, _ in group if reply]
        else:
            prefix = self._pub_ack_prefix
            answers = [(reply, prefix + str(seq).encode("ascii") + b"}") for seq, reply, _ in group if reply]
        if answers:
            self.engine.answer_many(answers)

    def _lost(self, group: List[Tuple[int, Optional[str], str]], error: StoreError) -> None:
        """The write of C{group}'s messages failed: each is refused, its id forgotten."""
        if group is self._durable_group:
            self._durable_group = None
        for seq, reply, msg_id in group:
            self.log.warn("stream {stream}: message {seq} was not written ({error}); not acknowledged",
                          stream=self.name, seq=seq, error=error)
            if msg_id and self._dedupe.find(msg_id) == seq:
                # Its publisher will send it again, with the same id.
                del self._dedupe.ids[msg_id]
        self.account()
        for consumer in list(self.consumers.values()):
            consumer.purged()
        for seq, reply, msg_id in group:
            if isinstance(error, StoreFull):
                self._nak(reply, errors.INSUFFICIENT_RESOURCES_ERR())
            else:
                self._nak(reply, errors.STREAM_STORE_FAILED_F(err=str(error) or "store write failed"))

    def _republish_message(self, target: str, subject: str, seq: int, last: int, headers: Optional[bytes], payload: bytes) -> None:
        """The stored message again on C{target}, with nats-server's republish headers."""
        only = bool(self.config["republish"].get("headers_only"))
        extra = "Nats-Stream: {}\r\nNats-Subject: {}\r\nNats-Sequence: {}\r\nNats-Last-Sequence: {}\r\n".format(
            _go_header_value(self.name), subject, seq, last)
        if only:
            extra += "Nats-Msg-Size: {}\r\n".format(len(payload))
        if headers and len(headers) > 4:
            block = headers[:-2] + extra.encode("utf-8") + b"\r\n"
        else:
            block = b"NATS/1.0\r\n" + extra.encode("utf-8") + b"\r\n"
        self.engine.broker.publish(target, b"" if only else payload, headers=block)

    def _store(self, subject: str, headers: Optional[bytes], payload: bytes, now: int, reply: Optional[str]) -> Optional[int]:
        try:
            return self.store.store(subject, headers, payload, now)
        except StoreFull:
            self._nak(reply, errors.INSUFFICIENT_RESOURCES_ERR())
        except (LimitReached, StoreUnavailable) as e:
            self._nak(reply, errors.STREAM_STORE_FAILED_F(err=str(e)))
        return None

    def _interested(self, subject: str) -> bool:
        for consumer in self.consumers.values():
            wanted = (getattr(consumer, "config", None) or {}).get("filter_subject") or ""
            if not wanted or subject_is_subset(subject, wanted):
                return True
        return False

    def _remember(self, msg_id: str, seq: int, now: int) -> None:
        self._last_msg_id = msg_id
        if msg_id and self.config["duplicate_window"] > 0:
            self._dedupe.add(msg_id, seq, now)
            if self._dedupe_timer is None:
                self._dedupe_timer = self.engine.clock.callLater(
                    self.config["duplicate_window"] / 1e9, self._dedupe_tick)

    def _dedupe_tick(self) -> None:
        self._dedupe_timer = None
        self._expire_dedupe()

    def _expire_dedupe(self) -> None:
        """Forget the ids past the window; the timer is armed for the next one."""
        next_at = self._dedupe.expire(self.engine.now(), self.config["duplicate_window"])
        if next_at is not None and self._dedupe_timer is None:
            delay = max(0.05, (next_at - self.engine.now()) / 1e9)
            self._dedupe_timer = self.engine.clock.callLater(delay, self._dedupe_tick)

    def _rebuild_dedupe(self) -> None:
        """After a restart: the ids of the messages still inside the window (nats-server's rebuildDedupe)."""
        window = self.config["duplicate_window"]
        if window <= 0:
            return
        now = self.engine.now()
        state = self.store.state()
        if not state.msgs:
            return
        # Backwards from the last message, as far as the window goes: a
        # long stream is not read whole at start.
        inside: List[StoredMessage] = []
        seq = state.last_seq
        while seq >= state.first_seq:
            message = self.store.load(seq)
            seq -= 1
            if message is None:
                continue
            if now - message.ts >= window:
                break
            inside.append(message)
        for message in reversed(inside):
            msg_id = header(message.headers, "Nats-Msg-Id") if message.headers else None
            if msg_id:
                self._remember(msg_id, message.seq, message.ts)
        last = self.store.load(state.last_seq)
        if last is not None and last.headers:
            self._last_msg_id = header(last.headers, "Nats-Msg-Id") or ""

    # -- age ----------------------------------------------------------------

    def _schedule_expiry(self) -> None:
        if self._closed:
            return
        when = self.store.next_expiry()
        if when == self._expiry_at and self._expiry_timer is not None:
            return
        if self._expiry_timer is not None and self._expiry_timer.active():
            self._expiry_timer.cancel()
        self._expiry_timer = None
        self._expiry_at = when
        if when is not None:
            delay = max(0.0, (when - self.engine.now()) / 1e9)
            self._expiry_timer = self.engine.clock.callLater(delay, self._expire)

    def _expire(self) -> None:
        self._expiry_timer = None
        self._expiry_at = None
        self.store.expire(self.engine.now())
        self.account()
        self._schedule_expiry()

    # -- purge, delete, get ----------------------------------------------------

    def _purge(self, subject: Optional[str], seq: int, keep: int) -> int:
        count = self.store.purge(subject or None, seq, keep)
        self.account()
        if count:
            for consumer in list(self.consumers.values()):
                consumer.purged()
            self._schedule_expiry()
        return count

    def purge(self, subject: Optional[str] = None, seq: int = 0, keep: int = 0) -> int:
        """STREAM.PURGE: how many messages went.  @raise ApiError: sealed or deny_purge."""
        if self.config["sealed"]:
            raise errors.STREAM_SEALED_ERR()
        if self.config["deny_purge"]:
            raise errors.STREAM_PURGE_FAILED_F(err="stream purge not permitted")
        return self._purge(subject, seq, keep)

    def delete_message(self, seq: int, erase: bool = True) -> None:
        """STREAM.MSG.DELETE.  @raise ApiError: sealed, deny_delete, or no such message."""
        if self.config["sealed"]:
            raise errors.STREAM_SEALED_ERR()
        if self.config["deny_delete"]:
            raise errors.STREAM_MSG_DELETE_FAILED_F(err="message delete not permitted")
        if not self.store.remove(seq, erase):
            raise errors.STREAM_MSG_DELETE_FAILED_F(err="no message found")
        self.account()
        for consumer in list(self.consumers.values()):
            consumer.purged()
        self._schedule_expiry()

    def get(self, seq: int = 0, last_by_subject: str = "", next_by_subject: str = "") -> Optional[StoredMessage]:
        """A message by sequence, last for a subject, or next at seq for a subject (nats-server's order)."""
        if seq > 0 and not next_by_subject:
            return self.store.load(seq)
        if next_by_subject:
            return self.store.load_next(seq, next_by_subject)
        return self.store.load_last(last_by_subject)

    def _direct_get(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """$JS.API.DIRECT.GET.<stream> with {seq | last_by_subj | next_by_subj}."""
        if not reply:
            return
        if not payload:
            return self._direct_status(reply, "408 Empty Request")
        try:
            request = json.loads(payload.decode("utf-8"))
            if not isinstance(request, dict):
                raise ValueError("not an object")
            seq = request.get("seq") or 0
            last = request.get("last_by_subj") or ""
            after = request.get("next_by_subj") or ""
            if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(last, str) or not isinstance(after, str):
                raise ValueError("bad types")
        except (ValueError, UnicodeDecodeError):
            return self._direct_status(reply, "408 Malformed Request")
        if not seq and not last and not after:
            return self._direct_status(reply, "408 Empty Request")
        if (seq and last) or (last and after):
            return self._direct_status(reply, "408 Bad Request")
        self._direct_answer(reply, self.get(seq, last, after))

    def _direct_get_last(self, subject: str, reply: Optional[str], payload: bytes, headers: Optional[bytes]) -> None:
        """$JS.API.DIRECT.GET.<stream>.<subject>: the last message on that subject."""
        if not reply:
            return
        if payload:
            return self._direct_status(reply, "408 Bad Request")
        skip = 5 if subject.startswith("$JS.API.") else 6
        key = subject.split(".", skip)[skip] if subject.count(".") >= skip else ""
        if not key:
            return self._direct_status(reply, "408 Bad Request")
        self._direct_answer(reply, self.get(last_by_subject=key))

    def _direct_status(self, reply: str, status: str) -> None:
        self.engine.answer(reply, b"", ("NATS/1.0 " + status + "\r\n\r\n").encode("ascii"))

    def _direct_answer(self, reply: str, message: Optional[StoredMessage]) -> None:
        if message is None:
            return self._direct_status(reply, "404 Message Not Found")
        extra = "Nats-Stream: {}\r\nNats-Subject: {}\r\nNats-Sequence: {}\r\nNats-Time-Stamp: {}\r\n\r\n".format(
            _go_header_value(self.name), _go_header_value(message.subject), message.seq, rfc3339(message.ts))
        if message.headers and len(message.headers) > 4:
            block = message.headers[:-2] + extra.encode("utf-8")
        else:
            block = b"NATS/1.0\r\n" + extra.encode("utf-8")
        self.engine.answer(reply, message.data, block)

    # -- info -----------------------------------------------------------------

    def state_json(self, subjects: Optional[Dict[str, int]] = None, deleted_details: bool = False) -> Dict[str, Any]:
        """StreamState as nats-server writes it (with C{subjects}: their counts, as asked for)."""
        state = self.store.state()
        out: Dict[str, Any] = {
            "messages": state.msgs,
            "bytes": state.bytes,
            "first_seq": state.first_seq,
            "first_ts": rfc3339(state.first_ts),
            "last_seq": state.last_seq,
            "last_ts": rfc3339(state.last_ts),
        }
        if state.num_subjects:
            out["num_subjects"] = state.num_subjects
        if subjects:
            out["subjects"] = subjects
        if state.num_deleted:
            out["num_deleted"] = state.num_deleted
        if deleted_details and state.num_deleted:
            out["deleted"] = self.store.deleted()
        out["consumer_count"] = len(self.public_consumers())
        return out

    def info(self, domain: bool = True, subjects: Optional[Dict[str, int]] = None, deleted_details: bool = False) -> Dict[str, Any]:
        """StreamInfo: config, created, state; with C{domain}, as STREAM.INFO: the domain (if any), mirror and sources."""
        out: Dict[str, Any] = {
            "config": config_json(self.config),
            "created": rfc3339(self.created),
            "state": self.state_json(subjects, deleted_details),
        }
        if domain and self.engine.settings.domain:
            out["domain"] = self.engine.settings.domain
        # (STREAM.CREATE's answer has neither, as nats-server's)
        if domain and self.mirror is not None:
            out["mirror"] = self.mirror.info()
        if domain and self.sources:
            out["sources"] = self.sources_json()
        return out


def _parse_uint(text: str) -> Optional[int]:
    """A header's unsigned number (nats-server's parseInt64 of the value), or None if it is not one."""
    text = text.strip()
    return int(text) if text.isdigit() else None


def dumps(value: Any) -> bytes:
    """JSON as Go's encoding/json writes it: compact, with <, > and & escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("utf-8")


__all__ = [
    "Stream", "check_config", "check_update", "config_json", "decode_config", "dumps", "open_store",
    "open_consumer_store", "store_limits", "subjects_collide", "subject_is_subset",
]
