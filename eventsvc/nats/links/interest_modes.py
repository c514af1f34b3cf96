"""
A gateway's interest modes, as nats-server 2.9 keeps them for the peer of
an outbound connection: what the peer wants of the C{$G} account
(L{RemoteInterest}), and the INFO commands that switch an account from
I{optimistic} to I{interest-only} (L{command_info}).

Pure bookkeeping: no connection, no clock, no broker.
"""

from __future__ import annotations

import base64
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from eventsvc.nats.frames import gateway_info_line
from eventsvc.nats.subjects import Sublist, Subscription, subject_matches

#: INFO gateway_cmd values.
CMD_GOSSIP, CMD_ALL_SUBS_START, CMD_ALL_SUBS_COMPLETE = 1, 2, 3
OPTIMISTIC, TRANSITIONING, INTEREST_ONLY = "Optimistic", "Transitioning", "Interest-Only"


def command_info(gateway: str, cmd: int, account: bytes) -> bytes:
    """An interest-mode command, in nats-server's shape (its Info with zero values)."""
    return gateway_info_line({
        "server_id": "", "server_name": "", "version": "", "proto": 0, "go": "", "host": "", "port": 0,
        "headers": False, "max_payload": 0, "gateway": gateway, "gateway_cmd": cmd,
        "gateway_cmd_payload": base64.b64encode(account).decode("ascii"),
    })


class RemoteInterest:
    """
    What the peer of an outbound connection wants of the C{$G} account,
    as nats-server's C{outsie}: unknown (nothing heard yet), none (C{A-}),
    or an entry with a mode, the subjects it has no interest in
    (optimistic) and a sublist of what it asked for.  Pure bookkeeping.
    """

    def __init__(self, owner: Any, interest_only: bool = False, changed: Optional[Callable[[Optional[bytes]], None]] = None) -> None:
        self.owner = owner
        #: Told what changed: the subject or pattern, or None for anything.
        self.changed: Callable[[Optional[bytes]], None] = changed or (lambda pattern: None)
        #: The peer said every account is switched to interest-only at once
        #: (INFO gateway_iom): until it says so for an account, nothing goes.
        self.interest_only = interest_only
        self.state = "unknown"  # or "none" (A-), or "entry"
        self.mode = OPTIMISTIC
        self.ni: Set[bytes] = set()
        self.sublist = Sublist()
        self.subs: Dict[Tuple[bytes, Optional[bytes]], Subscription] = {}
        self.queue_subs = 0

    def _entry(self) -> None:
        if self.state != "entry":
            self.state, self.mode, self.ni = "entry", OPTIMISTIC, set()
            self.changed(None)

    def wants(self, subject: bytes) -> Tuple[bool, List[bytes]]:
        """(plain interest, the queue groups with members there) for a message on C{subject}."""
        if self.state == "none":
            return False, []
        if self.state == "unknown":
            return not self.interest_only, []
        plain = self.mode != INTEREST_ONLY and subject not in self.ni
        result = self.sublist.match(subject)
        if result.plain:
            plain = True
        return plain, [group[0].queue for group in result.queues if group and group[0].queue is not None]

    def rs_plus(self, subject: bytes, queue: Optional[bytes]) -> None:
        """C{RS+} from the peer: interest where the mode keeps it (a queue group's always; a plain subject's in interest-only mode, or it ends a no-interest entry)."""
        if self.state == "entry":
            use_sublist = queue is not None or self.mode != OPTIMISTIC
        elif queue is None:
            return
        else:
            self._entry()
            use_sublist = True
        if not use_sublist:
            if b"*" in subject or b">" in subject:
                self.ni = {s for s in self.ni if not subject_matches(subject, s)}
            else:
                self.ni.discard(subject)
            self.changed(subject)
            return
        key = (subject, queue)
        if key in self.subs:
            return
        sub = Subscription(self.owner, subject, queue, b"")
        self.subs[key] = sub
        self.sublist.insert(sub)
        if queue is not None:
            self.queue_subs += 1
        self.changed(subject)

    def rs_minus(self, subject: bytes, queue: Optional[bytes]) -> None:
        """C{RS-} from the peer: no interest in a subject (optimistic mode), or interest that ends (interest-only mode, queue groups)."""
        if self.state == "entry":
            use_sublist = queue is not None or self.mode != OPTIMISTIC
        elif queue is not None:
            return
        else:
            self._entry()
            use_sublist = False
        if not use_sublist:
            self.ni.add(subject)
            self.changed(subject)
            return
        sub = self.subs.pop((subject, queue), None)
        if sub is None:
            return
        self.sublist.remove(sub)
        if queue is not None:
            self.queue_subs -= 1
        self.changed(subject)
        if not self.subs and self.mode == OPTIMISTIC and not self.ni:
            self.state = "unknown"
            self.changed(None)

    def account(self, interested: bool) -> None:
        """C{A+} (True) or C{A-} (False) for the account."""
        if interested:
            if self.state == "none" or (self.state == "entry" and self.queue_subs == 0):
                self._forget()
        elif self.state == "entry" and self.queue_subs > 0:
            self.ni = set()  # (nats-server keeps the queue members and clears the rest)
        else:
            self._forget()
            self.state = "none"
        self.changed(None)

    @property
    def held(self) -> int:
        """How many entries it keeps: subscriptions, and subjects of no interest (what the cap per link counts)."""
        return len(self.subs) + len(self.ni)

    def _forget(self) -> None:
        self.changed(None)
        self.state, self.mode, self.ni = "unknown", OPTIMISTIC, set()
        # (A new index, not a million removals in one turn.)
        self.sublist = Sublist()
        self.subs = {}
        self.queue_subs = 0

    def start(self) -> None:
        """The peer starts sending all its interest (gateway_cmd 2)."""
        self._entry()
        self.mode = TRANSITIONING
        self.changed(None)

    def complete(self) -> None:
        """All its interest has been sent (gateway_cmd 3): only that goes from now on."""
        if self.state == "entry":
            self.ni = set()
            self.mode = INTEREST_ONLY
            self.changed(None)
