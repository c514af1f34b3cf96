"""
JetStream domains across leaf links: the one rule nats-server 2.9 applies
when a leaf link comes up, and the domain's subject mapping.

nats-server (C{addLeafNodeConnection}, C{generateJSMappingTable}) does,
on both sides of a link bound to a non-system account:
  - denies C{$JS.API.>}, C{$KV.>} and C{$OBJ.>} both ways: no interest in
    them is told, no message on them crosses.  Each side's plain API stays
    its own;
  - maps C{$JS.<domain>.API.INFO}, C{.STREAM.>}, ... to C{$JS.API...}
    when it runs JetStream with a domain, and tells the other side of the
    mapping's sources (C{LS+ $JS.hub.API.STREAM.>}...): a request for its
    domain, from anywhere, is answered there;
  - denies publishing C{$JS.<its domain>.API.>} outward when the domains
    differ (or it has no JetStream).

eventsvc's mapping is a subscription of the JetStream engine
(L{eventsvc.jetstream.engine}, from L{mapping_table}), and a subscription
does not take the message from the others as a nats-server account mapping
does.  So the outward deny of our own domain's API holds whatever the other
side's domain: with the same domain on both sides (a misconfiguration) a
request is then answered by the side it was made on, once, as with two
nats-servers, and never bounces back and forth.

A JetStream delivery crosses a link (leaf, route or gateway) on its
deliver subject with the reply C{<ack subject>@<stream subject>}
(nats-server's framing, made by L{eventsvc.nats.server.Broker.deliver_as});
L{split_ack_reply} reads it (L{eventsvc.nats.server.Broker.deliver_crossed}).

What it must not do: know about streams, consumers or what the API
answers; it names subject spaces only (the mapping table is nats-server's,
by the API's first token).
"""

from __future__ import annotations

from typing import Dict, Tuple

#: What no leaf link carries either way (nats-server's denyAllClientJs).
DENY_ALL_CLIENT_JS = ("$JS.API.>", "$KV.>", "$OBJ.>")

#: What of C{$JS.<domain>.API.} maps to what (nats-server's generateJSMappingTable).
_MAPPED = (
    ("INFO", "$JS.API.INFO"),
    ("STREAM.>", "$JS.API.STREAM.>"),
    ("CONSUMER.>", "$JS.API.CONSUMER.>"),
    ("DIRECT.>", "$JS.API.DIRECT.>"),
    ("META.>", "$JS.API.META.>"),
    ("SERVER.>", "$JS.API.SERVER.>"),
    ("ACCOUNT.>", "$JS.API.ACCOUNT.>"),
    ("$KV.>", "$KV.>"),
    ("$OBJ.>", "$OBJ.>"),
)


def domain_api(domain: str) -> str:
    """C{$JS.<domain>.API.>}: a domain's API, as other domains reach it."""
    return "$JS.{}.API.>".format(domain)


def mapping_table(domain: str) -> Dict[str, str]:
    """C{$JS.<domain>.API.<x>} -> what it is answered as here, for every mapped C{x}."""
    return {"$JS.{}.API.{}".format(domain, source): to for source, to in _MAPPED}


def map_subject(source: str, to: str, subject: str) -> str:
    """
    C{subject}, which C{source} matches, rewritten to C{to}: a literal for
    a literal, and the tokens under a C{>} carried over.
    """
    if not source.endswith(">"):
        return to
    return to[:-1] + subject[len(source) - 1:]


def _prefixes(patterns: Tuple[str, ...]) -> Tuple[bytes, ...]:
    # Every pattern here is a literal prefix and ">".
    return tuple(p[:-1].encode("utf-8") for p in patterns)


#: L{DENY_ALL_CLIENT_JS} as the prefixes a subject inside them starts with.
DENY_ALL_CLIENT_JS_PREFIXES = _prefixes(DENY_ALL_CLIENT_JS)


class LeafJetStreamRule:
    """
    What one leaf link lets through of JetStream, decided when it comes up.

    @ivar deny_both: patterns no interest is told in, and no message crosses
        on, either way.
    @ivar deny_out: patterns no message is sent to the other side on.
    @ivar same_domain: whether both sides run JetStream in the same domain
        (nats-server would extend one JetStream over the link with a shared
        system account; eventsvc has none, so each side answers its own).
    @ivar notice: what nats-server logs for the denies, worded as it does.
    """

    def __init__(self, deny_both: Tuple[str, ...], deny_out: Tuple[str, ...], same_domain: bool, notice: str) -> None:
        self.deny_both = deny_both
        self.deny_out = deny_out
        self.same_domain = same_domain
        self.notice = notice
        # Every pattern is "<literal>.>": a subject, or interest, is inside
        # one when it starts with its literal part.
        self._both = _prefixes(deny_both)
        self._out = _prefixes(deny_both + deny_out)

    def blocks(self, subject: bytes) -> bool:
        """Whether messages on C{subject} (or interest wholly inside it) may not cross either way."""
        return subject.startswith(self._both)

    def blocks_out(self, subject: bytes) -> bool:
        """Whether messages on C{subject} (or interest wholly inside it) may not be sent to the other side."""
        return subject.startswith(self._out)

    def __repr__(self) -> str:
        return "<LeafJetStreamRule both={} out={}>".format(self.deny_both, self.deny_out)


def leaf_rule(jetstream: bool, domain: str, remote_domain: str, remote_jetstream: bool = False) -> LeafJetStreamRule:
    """
    The rule for a leaf link between us (C{jetstream} on or not, in
    C{domain}) and a side in C{remote_domain} that runs JetStream or not
    (C{remote_jetstream}), as its CONNECT or INFO says.
    """
    denies = "[{}]".format(" ".join(DENY_ALL_CLIENT_JS))
    if domain != remote_domain or not jetstream:
        notice = 'JetStream Not Extended, adding deny {} for account "$G"'.format(denies)
    else:
        notice = 'Adding deny {} for account "$G"'.format(denies)
    deny_out: Tuple[str, ...] = ()
    if jetstream and domain:
        deny_out = (domain_api(domain),)
        notice += '; adding deny "{}" for outgoing messages'.format(deny_out[0])
    same = jetstream and remote_jetstream and domain == remote_domain
    return LeafJetStreamRule(DENY_ALL_CLIENT_JS, deny_out, same, notice)


#: The prefix of JetStream's ack subjects, the replies of its deliveries.
ACK_PREFIX = b"$JS.ACK."


def split_ack_reply(reply: bytes) -> "Tuple[bytes, bytes] | None":
    """
    A delivery that crossed a link as nats-server sends it (on the deliver
    subject, the reply C{$JS.ACK...@<stream subject>}): (the ack reply, the
    subject its subscribers are to see), or None for any other reply.
    """
    if not reply.startswith(ACK_PREFIX):
        return None
    reply, at, subject = reply.rpartition(b"@")
    if not at or not subject:
        return None
    return reply, subject
