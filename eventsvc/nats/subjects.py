"""
Subjects: validation and the subscription index.

The index is a token trie in the spirit of nats-server's sublist: each level
maps literal tokens to child nodes and keeps separate children for the ``*``
and ``>`` wildcards, so a match walks at most three branches per token.  A
bounded match cache (L{SubjectCache}) keeps the result for recently
published subjects.  A change to a literal subscription evicts only its own
subject, so churn on ``_INBOX.<id>`` inboxes leaves the cache alone; a
change to a wildcard one whose first token is literal (``_INBOX.<id>.*``,
``devices.*.state``) evicts only the subjects that begin with that token,
found in an index by first token, never by a scan of the whole cache; only
a wildcard in the first token (``>``, ``*.x``) empties the cache, at once.
The broker keeps its delivery plans in a cache of the same kind, told of
the same changes.  Subjects used once (reply inboxes, JetStream acks) take
no place in that cache; their matches are kept by the leading tokens that
decided them instead, until the index changes.

Subjects are ``bytes`` throughout, as they come off the wire.  This module
knows nothing of connections or of the protocol: a subscription's ``owner``
is opaque here.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Dict, List, Optional

PWC = b"*"
FWC = b">"
#: What no token may hold.  (nats-server's IsValidSubject refuses a form
#: feed too, but its SUB does not call it: "SUB c\x0c 1" subscribes there,
#: and so here.)
_BAD_IN_TOKEN = (b" ", b"\t", b"\r", b"\n")

#: How many subjects the match cache keeps before it evicts the oldest (as
#: nats-server).  A wildcard subscription change scans the cache, so it
#: stays small.
CACHE_SIZE = 1024

#: How many lengths of leading tokens a subject used once is looked up by,
#: per token count: a few (one per client's inboxes, one for acks), so that
#: subscriptions that decide at many depths cannot make each lookup long.
ONCE_DEPTHS = 4


class SubjectCache:
    """
    A bounded cache keyed by literal subject, indexed by first token, so
    that a subscription change evicts what it may have changed and nothing
    else.  Read it with C{entries.get(subject)} (a plain dict: the hot path
    pays one C call), or C{lookup(subject)}, the same bound once (C{entries}
    is cleared in place, never replaced); write it with L{put}.
    """

    __slots__ = ("entries", "lookup", "_heads", "size")

    def __init__(self, size: int) -> None:
        self.entries: Dict[bytes, Any] = {}
        self.lookup: Callable[[bytes], Any] = self.entries.get
        self._heads: Dict[bytes, Dict[bytes, None]] = {}
        self.size = size

    def __len__(self) -> int:
        return len(self.entries)

    def put(self, subject: bytes, value: Any) -> None:
        entries = self.entries
        if len(entries) >= self.size:
            # Evict the oldest quarter: dicts keep insertion order.
            for key in list(entries)[: max(1, self.size // 4)]:
                self._drop(key)
        if subject not in entries:
            head = subject.partition(b".")[0]
            group = self._heads.get(head)
            if group is None:
                group = self._heads[head] = {}
            group[subject] = None
        entries[subject] = value

    def take(self, subject: bytes) -> Any:
        """The entry of C{subject}, removed from the cache (None: there is none)."""
        if subject not in self.entries:
            return None
        value = self.entries[subject]
        self._drop(subject)
        return value

    def _drop(self, subject: bytes) -> None:
        del self.entries[subject]
        head = subject.partition(b".")[0]
        group = self._heads.get(head)
        if group is not None:
            group.pop(subject, None)
            if not group:
                del self._heads[head]

    def forget(self, pattern: bytes) -> bool:
        """
        Evict what a change to the subscriptions on C{pattern} may have made
        wrong.  Returns False when that was everything (a wildcard in the
        first token).
        """
        head, dot, _ = pattern.partition(b".")
        if head == PWC or head == FWC:
            self.clear()
            return False
        if PWC not in pattern and FWC not in pattern:
            # A literal subscription matches one subject only: O(1).
            if pattern in self.entries:
                self._drop(pattern)
            return True
        # A wildcard further on matches subjects with this first token only.
        group = self._heads.pop(head, None)
        if group:
            entries = self.entries
            for subject in group:
                del entries[subject]
        return True

    def clear(self) -> None:
        self.entries.clear()
        self._heads.clear()


def valid_subject(subject: bytes) -> bool:
    """
    Whether C{subject} may be subscribed to: non-empty tokens, no white space,
    and C{>} only as the last token.
    """
    if not subject:
        return False
    tokens = subject.split(b".")
    last = len(tokens) - 1
    for i, token in enumerate(tokens):
        if not token:
            return False
        if token == FWC and i != last:
            return False
        for bad in _BAD_IN_TOKEN:
            if bad in token:
                return False
    return True


def _literal_by_scan(subject: bytes) -> bool:
    """L{valid_literal_subject} by looking for wildcard characters and empty tokens (PyPy's)."""
    if not subject:
        return False
    if b"*" not in subject and b">" not in subject:
        # (No wildcard character at all, as nearly every subject published
        # from the process, a PubAck's inbox: only empty tokens to find,
        # without a split.)
        return subject[0] != 46 and subject[-1] != 46 and b".." not in subject
    for token in subject.split(b"."):
        if not token or token == PWC or token == FWC:
            return False
    return True


def _literal_by_split(subject: bytes) -> bool:
    """
    L{valid_literal_subject} by one split and a set's look at its tokens
    (CPython's): on CPython 3.11 each C{bytes.find} parses its arguments as
    a tuple, and each C{in} tries the needle as an integer first, so three
    of either cost twice this, for each PubAck's inbox.  An empty subject
    splits into one empty token.
    """
    return _NOT_LITERAL.isdisjoint(subject.split(b"."))


#: The tokens a subject to publish to may not have.
_NOT_LITERAL = frozenset((b"", PWC, FWC))

#: Whether C{subject} may be published to in pedantic mode: non-empty tokens
#: and no wildcard tokens.  (The same answer either way; PyPy's JIT makes
#: the scan cheaper than the split's new objects, CPython the other way.)
valid_literal_subject = _literal_by_split if sys.implementation.name == "cpython" else _literal_by_scan


def _literal_tokens_by_split(subject: bytes) -> Optional[List[bytes]]:
    """L{literal_tokens} by L{_literal_by_split}'s split, kept (CPython's)."""
    tokens = subject.split(b".")
    return tokens if _NOT_LITERAL.isdisjoint(tokens) else None


def _literal_tokens_by_scan(subject: bytes) -> Optional[List[bytes]]:
    """L{literal_tokens} by L{_literal_by_scan}, then the split (PyPy's)."""
    return subject.split(b".") if _literal_by_scan(subject) else None


#: The tokens of C{subject} when it may be published to (as
#: L{valid_literal_subject} says), else None: one split serves the check
#: and a L{Sublist.match} of the subject (a PubAck's inbox, used once).
literal_tokens = _literal_tokens_by_split if sys.implementation.name == "cpython" else _literal_tokens_by_scan


def subject_matches(pattern: bytes, subject: bytes) -> bool:
    """
    Whether the subscription subject C{pattern} matches the published
    C{subject}, by the same rules as L{Sublist.match}.
    """
    ptoks = pattern.split(b".")
    stoks = subject.split(b".")
    for i, p in enumerate(ptoks):
        if p == FWC:
            return len(stoks) > i
        if i >= len(stoks):
            return False
        if p != PWC and p != stoks[i]:
            return False
    return len(ptoks) == len(stoks)


class Subscription:
    """
    One subscription: who holds it (C{owner}, opaque to the index), its
    subject, optional queue group and sid, and the auto-unsubscribe budget.
    """

    __slots__ = ("owner", "subject", "queue", "sid", "max", "delivered", "origin")

    def __init__(
        self, owner: Any, subject: bytes, queue: Optional[bytes], sid: bytes
    ) -> None:
        self.owner = owner
        self.subject = subject
        self.queue = queue
        self.sid = sid
        #: Deliveries after which the subscription ends; 0 for no limit.
        self.max = 0
        self.delivered = 0
        #: The cluster a leaf node's subscription came from (None for any
        #: other): kept from that cluster's other leaf links.
        self.origin: Optional[bytes] = None

    def __repr__(self) -> str:
        return "<Subscription {!r} sid={!r} queue={!r}>".format(
            self.subject, self.sid, self.queue
        )


class SublistResult:
    """
    The subscriptions that match one subject: every plain subscription, and
    for each queue group the list of its members (one of which gets a
    message).
    """

    __slots__ = ("plain", "queues")

    def __init__(
        self, plain: List[Subscription], queues: List[List[Subscription]]
    ) -> None:
        self.plain = plain
        self.queues = queues


_NO_GROUPS: Any = ()
_EMPTY = SublistResult([], _NO_GROUPS)


class _Node:
    __slots__ = ("level", "plain", "queues")

    def __init__(self) -> None:
        self.level: Optional[_Level] = None
        self.plain: Dict[Subscription, None] = {}
        self.queues: Dict[bytes, Dict[Subscription, None]] = {}

    def empty(self) -> bool:
        return not self.plain and not self.queues and (
            self.level is None or self.level.empty()
        )


class _Level:
    __slots__ = ("nodes", "pwc", "fwc")

    def __init__(self) -> None:
        self.nodes: Dict[bytes, _Node] = {}
        self.pwc: Optional[_Node] = None
        self.fwc: Optional[_Node] = None

    def empty(self) -> bool:
        return not self.nodes and self.pwc is None and self.fwc is None


class Sublist:
    """
    The subscription index.

    @ivar genid: bumped on every change, so that callers may keep their own
        caches derived from match results and drop them when it moves.
    """

    def __init__(self, cache_size: int = CACHE_SIZE) -> None:
        self._root = _Level()
        self._cached = SubjectCache(cache_size)
        self._cache = self._cached.entries
        self.count = 0
        self.genid = 0
        # For /subsz.
        self.inserts = self.removes = self.matches = self.cache_hits = 0
        #: Called after every change with the subscription's subject (a
        #: pattern): the broker drops what it derived from the matches that
        #: pattern may have changed, and only those (L{SubjectCache.forget}).
        self.on_change: Optional[Callable[[bytes], None]] = None
        # Matches of subjects used once (reply inboxes, JetStream acks), by
        # what decided them: (token count, the tokens up to the last one
        # looked up among literal children); kept until the index changes.
        # Each PubAck inbox or ack subject is new, but all of one client's
        # (one consumer's) are decided by the same leading tokens.
        self._once: Dict[tuple, SublistResult] = {}
        self._once_depths: Dict[int, List[int]] = {}
        self._once_genid = 0

    def insert(self, sub: Subscription) -> None:
        """
        Add C{sub}.  The caller has validated its subject with
        L{valid_subject}.
        """
        level = self._root
        node: Optional[_Node] = None
        for token in sub.subject.split(b"."):
            if token == PWC:
                node = level.pwc
                if node is None:
                    node = level.pwc = _Node()
            elif token == FWC:
                node = level.fwc
                if node is None:
                    node = level.fwc = _Node()
            else:
                node = level.nodes.get(token)
                if node is None:
                    node = level.nodes[token] = _Node()
            if node.level is None:
                node.level = _Level()
            level = node.level
        assert node is not None
        if sub.queue is None:
            node.plain[sub] = None
        else:
            node.queues.setdefault(sub.queue, {})[sub] = None
        self.count += 1
        self.inserts += 1
        self._changed(sub.subject)

    def remove(self, sub: Subscription) -> bool:
        """
        Remove C{sub}; prune the nodes it leaves empty.  Returns whether it
        was present.
        """
        if not self._remove(sub):
            return False
        self._changed(sub.subject)
        return True

    def remove_many(self, subs: List[Subscription]) -> List[Subscription]:
        """
        Remove every one of C{subs} (a closing connection's), with one cache
        invalidation for all of them; returns those that were present.
        """
        removed = [sub for sub in subs if self._remove(sub)]
        if removed:
            self.genid += 1
            for sub in removed:
                if not self._forget(sub.subject):
                    break  # a wildcard: everything is forgotten already
        return removed

    def _remove(self, sub: Subscription) -> bool:
        path: List[tuple] = []
        level = self._root
        node: Optional[_Node] = None
        for token in sub.subject.split(b"."):
            if token == PWC:
                node = level.pwc
            elif token == FWC:
                node = level.fwc
            else:
                node = level.nodes.get(token)
            if node is None or node.level is None:
                return False
            path.append((level, token, node))
            level = node.level
        assert node is not None
        if sub.queue is None:
            if sub not in node.plain:
                return False
            del node.plain[sub]
        else:
            group = node.queues.get(sub.queue)
            if group is None or sub not in group:
                return False
            del group[sub]
            if not group:
                del node.queues[sub.queue]
        self.count -= 1
        self.removes += 1
        # Prune from the leaf up, so that removed subjects leave nothing behind.
        for level, token, node in reversed(path):
            if not node.empty():
                break
            if token == PWC:
                level.pwc = None
            elif token == FWC:
                level.fwc = None
            else:
                del level.nodes[token]
        return True

    def _changed(self, pattern: bytes) -> None:
        self.genid += 1
        self._forget(pattern)

    def _forget(self, pattern: bytes) -> bool:
        """
        Drop the cached results a change to C{pattern} may have made wrong,
        here and in the broker (L{on_change}).  Returns False when that was
        everything.
        """
        if self.on_change is not None:
            self.on_change(pattern)
        return self._cached.forget(pattern)

    def match(self, subject: bytes, keep: bool = True, tokens: Optional[List[bytes]] = None) -> SublistResult:
        """
        The subscriptions matching the literal C{subject}.  The result is
        shared with the cache: do not mutate it.  C{keep=False}: a subject
        used once (a reply inbox), matched without taking a place in the
        cache.  C{tokens}: C{subject.split(b".")}, when the caller has it
        (L{literal_tokens}).
        """
        self.matches += 1
        if keep:
            result = self._cache.get(subject)
            if result is not None:
                self.cache_hits += 1
                return result
            if tokens is None:
                tokens = subject.split(b".")
        else:
            # (A subject used once is new: not looked up among the kept
            # ones, whose match would be this one's anyway.)
            if tokens is None:
                tokens = subject.split(b".")
            if self._once_genid != self.genid:
                self._once.clear()
                self._once_depths.clear()
                self._once_genid = self.genid
            n = len(tokens)
            for depth in self._once_depths.get(n, ()):
                result = self._once.get((n, b".".join(tokens[: depth + 1])))
                if result is not None:
                    return result
        plain: List[Subscription] = []
        groups: Dict[bytes, List[Subscription]] = {}
        decided = _match_level(self._root, tokens, 0, plain, groups)
        # (No group: the empty tuple, not a list each time; a kept match
        # is one more object for the collector to walk.)
        result = SublistResult(plain, list(groups.values()) if groups else _NO_GROUPS) if (
            plain or groups
        ) else _EMPTY
        if keep:
            self._cached.put(subject, result)
        else:
            # Any subject of as many tokens that begins with the same ones
            # up to C{decided} walks the same levels and gets this result.
            if len(self._once) >= CACHE_SIZE:
                self._once.clear()
                self._once_depths.clear()
            n = len(tokens)
            depths = self._once_depths.setdefault(n, [])
            if decided not in depths:
                if len(depths) >= ONCE_DEPTHS:
                    return result
                depths.append(decided)
            self._once[(n, b".".join(tokens[: decided + 1]))] = result
        return result

    def cache_stats(self) -> "tuple[int, int, float]":
        """(cached subjects, largest fan-out, average fan-out) of the match cache."""
        fanouts = [len(r.plain) + len(r.queues) for r in self._cache.values()]
        if not fanouts:
            return 0, 0, 0.0
        return len(fanouts), max(fanouts), sum(fanouts) / len(fanouts)

    def all(self) -> List[Subscription]:
        """Every subscription in the index (for monitoring and routes)."""
        out: List[Subscription] = []
        _collect(self._root, out)
        return out


def _add(node: _Node, plain: list, groups: Dict[bytes, list]) -> None:
    if node.plain:
        plain.extend(node.plain)
    for name, members in node.queues.items():
        group = groups.get(name)
        if group is None:
            groups[name] = list(members)
        else:
            group.extend(members)


def _match_level(
    level: _Level, tokens: List[bytes], i: int, plain: list, groups: dict
) -> int:
    """
    Add the subscriptions under C{level} that match C{tokens} from C{i} on.
    Returns the last position whose token was looked up among literal
    children that exist (-1: none): the tokens after it decided nothing.
    """
    last = len(tokens) - 1
    decided = -1
    while True:
        if level.fwc is not None:
            _add(level.fwc, plain, groups)
        pwc = level.pwc
        nodes = level.nodes
        if nodes:
            if i > decided:
                decided = i
            node = nodes.get(tokens[i])
        else:
            node = None
        if i == last:
            # nats-server's order: the literal match, then the '*' match.
            if node is not None:
                _add(node, plain, groups)
            if pwc is not None:
                _add(pwc, plain, groups)
            return decided
        if pwc is not None and pwc.level is not None:
            deeper = _match_level(pwc.level, tokens, i + 1, plain, groups)
            if deeper > decided:
                decided = deeper
        if node is None or node.level is None:
            return decided
        level = node.level
        i += 1


def _collect(level: _Level, out: List[Subscription]) -> None:
    children = list(level.nodes.values())
    if level.pwc is not None:
        children.append(level.pwc)
    if level.fwc is not None:
        children.append(level.fwc)
    for node in children:
        out.extend(node.plain)
        for members in node.queues.values():
            out.extend(members)
        if node.level is not None:
            _collect(node.level, out)
