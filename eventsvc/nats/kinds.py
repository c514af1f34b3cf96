"""
What kind of connection a message comes from or goes to.

Every holder of subscriptions and every source of messages has a
L{Kind}: a client, the in-process API, a route, a gateway, a leaf node we
are the hub of, or the leaf link we dialled to our own hub.  The delivery
rule (L{eventsvc.nats.delivery}) asks a kind its properties, as
nats-server's C{processMsgResults} switches on C{c.kind}; nothing asks
"is it a route" of a connection any more.
"""

from __future__ import annotations

from enum import Enum


class Kind(Enum):
    """
    A connection's kind and the properties the delivery rule asks of it.

    @ivar label: the word the log and the errors use (C{"leaf node"}).
    @ivar remote: whether it is another server holding interest for its
        side (a route, a leaf or a hub): it gets one frame per message,
        naming queue groups, however many subscriptions it has here.
    @ivar leaf: whether it speaks the leaf-node protocol (framed C{LMSG},
        messages carrying the leaf cluster they came from).
    @ivar one_hop: whether what it brings goes to this server's own
        subscribers and leafs only, never on to a route or a gateway (a
        route: its server had its own turn; a hub: its cluster's servers
        have their own links to it).
    @ivar to_gateways: whether what it brings is offered to the gateways
        (a client's, the in-process API's, a leaf's we are the hub of).
    @ivar link: whether it is a link to another server (monitoring lists
        it apart from clients).
    """

    CLIENT = ("client", False, False, False, True, False)
    IN_PROCESS = ("in-process", False, False, False, True, False)
    ROUTE = ("route", True, False, True, False, True)
    GATEWAY = ("gateway", False, False, False, False, True)
    #: A leaf node that dialled us (we are its hub).
    LEAF = ("leaf node", True, True, False, True, True)
    #: The leaf link we dialled to our hub.
    HUB = ("leaf node", True, True, True, False, True)

    def __init__(self, label: str, remote: bool, leaf: bool, one_hop: bool, to_gateways: bool, link: bool) -> None:
        self.label = label
        self.remote = remote
        self.leaf = leaf
        self.one_hop = one_hop
        self.to_gateways = to_gateways
        self.link = link

    def __str__(self) -> str:
        return self.label

    def __format__(self, spec: str) -> str:
        return format(self.label, spec)
