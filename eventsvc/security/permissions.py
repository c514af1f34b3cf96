"""
Publish and subscribe permissions: allow and deny lists with wildcards.

A publish to a literal subject is allowed when it matches an allow pattern
(an empty allow list allows everything) and no deny pattern.  A subscription
subject, which may itself hold wildcards, is allowed when everything it
could match is inside an allow pattern and it is not inside a deny pattern;
a message on a subject that matches a deny pattern is not delivered, even
to a wider subscription that was allowed (C{>} with C{secret.>} denied).
Decisions are cached per subject, so the check on the publish path is one
dict lookup.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from zope.interface import implementer

from eventsvc.nats.interfaces import IPermissions
from eventsvc.nats.subjects import FWC, PWC, subject_matches, valid_subject

_CACHE_LIMIT = 4096


def is_subset(subject: bytes, pattern: bytes) -> bool:
    """Whether every subject C{subject} matches is also matched by C{pattern}."""
    stoks = subject.split(b".")
    ptoks = pattern.split(b".")
    for i, p in enumerate(ptoks):
        if p == FWC:
            return len(stoks) > i
        if i >= len(stoks):
            return False
        s = stoks[i]
        if s == FWC:
            return False
        if p == PWC:
            continue
        if s != p:
            return False
    return len(stoks) == len(ptoks)


def _patterns(values: Iterable[str], what: str) -> Tuple[bytes, ...]:
    out = []
    for value in values:
        pattern = value.encode("utf-8")
        if not valid_subject(pattern):
            raise ValueError("{}: {!r} is not a valid subject".format(what, value))
        out.append(pattern)
    return tuple(out)


@implementer(IPermissions)
class Permissions:
    def __init__(
        self,
        publish_allow: Sequence[str] = (),
        publish_deny: Sequence[str] = (),
        subscribe_allow: Sequence[str] = (),
        subscribe_deny: Sequence[str] = (),
    ) -> None:
        self.publish_allow = _patterns(publish_allow, "publish_allow")
        self.publish_deny = _patterns(publish_deny, "publish_deny")
        self.subscribe_allow = _patterns(subscribe_allow, "subscribe_allow")
        self.subscribe_deny = _patterns(subscribe_deny, "subscribe_deny")
        self._publish: Dict[bytes, bool] = {}
        self._receive: Dict[bytes, bool] = {}

    def may_publish(self, subject: bytes) -> bool:
        decision = self._publish.get(subject)
        if decision is None:
            decision = (
                not self.publish_allow or any(subject_matches(p, subject) for p in self.publish_allow)
            ) and not any(subject_matches(p, subject) for p in self.publish_deny)
            if len(self._publish) >= _CACHE_LIMIT:
                self._publish.clear()
            self._publish[subject] = decision
        return decision

    def may_subscribe(self, subject: bytes, queue: Optional[bytes] = None) -> bool:
        if any(is_subset(subject, p) for p in self.subscribe_deny):
            return False
        return not self.subscribe_allow or any(is_subset(subject, p) for p in self.subscribe_allow)

    def may_receive(self, subject: bytes) -> bool:
        decision = self._receive.get(subject)
        if decision is None:
            decision = not any(subject_matches(p, subject) for p in self.subscribe_deny)
            if len(self._receive) >= _CACHE_LIMIT:
                self._receive.clear()
            self._receive[subject] = decision
        return decision

    def __repr__(self) -> str:
        return "<Permissions pub +{} -{} sub +{} -{}>".format(
            self.publish_allow, self.publish_deny, self.subscribe_allow, self.subscribe_deny
        )


#: The subject spaces of JetStream: its API and acks, key-value buckets and
#: object stores.  A listener for agents opens none of them through a wide
#: allow (C{>}): see L{fence_jetstream}.
JETSTREAM_SPACES = ("$JS", "$KV", "$O")


def fence_jetstream(lists: Dict[str, List[str]]) -> Dict[str, List[str]]:
    """
    C{lists} (the four allow and deny lists) with C{$JS.>}, C{$KV.>} and
    C{$O.>} denied in each direction whose allow list does not name that
    space itself (a pattern starting C{$JS.}, say).  An agent listener's
    users get no stream, consumer or bucket unless the operator wrote one
    in: C{publish_allow = [">"]} is not read as "and administer JetStream".
    """
    out = {name: list(values) for name, values in lists.items()}
    for direction in ("publish", "subscribe"):
        allow = out.setdefault(direction + "_allow", [])
        deny = out.setdefault(direction + "_deny", [])
        for space in JETSTREAM_SPACES:
            if not any(pattern.split(".", 1)[0] == space for pattern in allow):
                deny.append(space + ".>")
    return out


#: What an authenticated agent may do on the agent listener ([gateway]) by default: publish
#: Habitat events, and nothing else (no subscriptions, so no one's replies).
AGENT_DEFAULTS = dict(publish_allow=["habitat.event.*"], subscribe_deny=[">"])


def health_inbox(token: str) -> str:
    """
    The health check's own inbox prefix, derived from the per-start token
    (which only the check and the agent listener know): no other inbox is open to it.
    """
    return "_INBOX.hc" + hashlib.sha256(token.encode("utf-8")).hexdigest()[:24]


def health_check_permissions(token: str) -> Dict[str, List[str]]:
    """The health check's identity: healthcheck.> and its own inbox, nothing else."""
    inbox = health_inbox(token) + ".>"
    return dict(publish_allow=["healthcheck.>", inbox], subscribe_allow=["healthcheck.>", inbox])
