"""
One leaf link (nats-server 2.9's leafnode protocol), dialled to a hub (an
I{uplink}) or accepted from a spoke (a I{downleaf}), and the hubs we dial
(L{RemoteLeaf}): the handshake both ways, the other side's interest
(C{LS+}/C{LS-}), what we tell it (C{smap}), its messages, and loop
detection's words.  The manager (L{eventsvc.nats.links.leaf.LeafManager})
decides who hears of what, and keeps the links up.

What it must not do: know about events, tokens of the event gateway, or HTTP.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

from eventsvc.nats.frames import LMSG, connect_line, info_line, ls_line
from eventsvc.nats.gojson import BOOL, STRING, STRINGS, GoStruct, go_quote
from eventsvc.nats.greeting import names_account
from eventsvc.nats.kinds import Kind
from eventsvc.nats.links.connection import PeerConnection
from eventsvc.nats.links.jsdomain import ACK_PREFIX, LeafJetStreamRule, leaf_rule
from eventsvc.nats.links.manager import DialTarget, host_port
from eventsvc.nats.parser import AUTHORIZATION_VIOLATION, LeafParser, ProtocolViolation
from eventsvc.nats.subjects import Subscription, valid_subject
from eventsvc.nats.upgrade import start_tls

if TYPE_CHECKING:
    from eventsvc.nats.links.leaf import LeafManager

#: The prefix of the loop-detection subjects (nats-server's).
LDS_PREFIX = b"$LDS."
#: How long a spoke waits before dialling again after a loop or a cluster
#: name clash (nats-server's leafNodeReconnectDelayAfterLoopDetected).
LOOP_DELAY = 30.0
LOOP_ERROR = 'Loop detected for leafnode account="$G". Delaying attempt to reconnect for 30s'
SAME_CLUSTER_ERROR = "remote leafnode has same cluster name"
#: nats-server's leafConnectInfo: what it reads from a spoke's CONNECT
#: after ClientOpts (L{PeerConnection.read_connect}).
LEAF_CONNECT = GoStruct({
    "version": STRING,
    "jwt": STRING,
    "sig": STRING,
    "user": STRING,
    "pass": STRING,
    "tls_required": BOOL,
    "compression": BOOL,
    "server_id": STRING,
    "domain": STRING,
    "name": STRING,
    "is_hub": BOOL,
    "cluster": STRING,
    "headers": BOOL,
    "jetstream": BOOL,
    "deny_pub": STRINGS,
    "gateway": STRING,
})
DUPLICATE_ERROR = "Duplicate Remote LeafNode Connection"

#: The digits of a nuid (nats-server's unique ids: loop subjects, nonces).
NUID_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def loop_subject() -> bytes:
    """A fresh C{$LDS.<nuid>} subject (22 base-62 characters, as nats-server's nuid)."""
    return LDS_PREFIX + "".join(NUID_ALPHABET[b % 62] for b in os.urandom(22)).encode("ascii")


def interest_key(sub: Subscription) -> bytes:
    """How interest is keyed on a leaf link: C{subject} or C{subject queue}."""
    return sub.subject if sub.queue is None else sub.subject + b" " + sub.queue


class LeafConnection(PeerConnection):
    """
    One leaf link: dialled (C{remote} given, an uplink to a hub) or
    accepted (a downleaf).  An uplink's kind is C{Kind.HUB}, one hop as a
    route's: what it brings goes to our clients and downleafs, never on to
    a route or a gateway.  A downleaf is a source like a client (its messages go to
    routes and gateways too), but never gets its own messages back.
    """

    kind = Kind.LEAF
    speaks = "leaf node link"
    echo = False
    frame_head = LMSG

    def __init__(self, manager: "LeafManager", remote: Optional["RemoteLeaf"] = None) -> None:
        settings = manager.settings
        super().__init__(manager, settings.limits.ping_interval, LeafParser)
        self.remote = remote
        if remote is not None:
            #: An uplink: what our hub brings goes to our clients and leafs only.
            self.kind = Kind.HUB
        #: What we take from the hub (IPermissions over our deny_imports;
        #: None: everything).  What the other side is not to get (our
        #: deny_exports, a spoke's deny_pub) is its may_receive.
        self.imports: Any = None
        if remote is not None:
            self.imports = remote.imports
            if remote.exports is not None:
                self.may_receive = remote.exports.may_publish
        #: What we told the other side: interest key -> count (nats-server's smap).
        self.smap: Dict[bytes, int] = {}
        #: The other side's server name and cluster, and that cluster as the
        #: origin of its subscriptions and messages (b"": none).
        self.remote_name = ""
        self.remote_cluster = ""
        self.cluster_origin = b""
        #: Whether the other side runs JetStream, and its domain ("": none), from its INFO or CONNECT.
        self.remote_jetstream = False
        self.remote_domain = ""
        #: Which JetStream subjects the link carries (L{fence}, when it comes up; until then none).
        self.js_rule: LeafJetStreamRule = leaf_rule(False, "", "")
        #: The handshake is done: interest and messages may flow.
        self.up = False
        self.cid = manager.next_cid()

    @property
    def dialled(self) -> bool:
        """Whether we dialled the link (an uplink to our hub)."""
        return self.remote is not None

    def describe(self) -> str:
        """The other side's name for the log: its server name, its id, or its address."""
        return self.remote_name or self.remote_id or "{}:{}".format(self.host, self.port)

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        """The link is up: an accepted one sends INFO (and starts TLS when the listener has it); the handshake clock starts."""
        super().connectionMade()
        if not self.dialled:
            self.send(self.manager.info_line(self))
            self.flush()
            tls = self.manager.settings.tls_accept
            if tls is not None:
                # INFO in plaintext, then TLS on the same socket (2.9's leaf
                # links): what the spoke writes next is its handshake.
                start_tls(self.transport, tls)
        self.start_handshake_clock()

    def warn_unregistered(self) -> bool:
        # A remote that fails is dialled again, and that says why.
        """Whether a link that ends before it was up warns: an accepted one (a remote is dialled again, and that says why)."""
        return not self.dialled

    def lost(self, why: str) -> None:
        """The link ended: its interest is let go of in slices, and the manager hears of it."""
        subs = list(self.subs.values())
        self.subs.clear()
        self.let_go(subs, self._remove_remote if self.kind is Kind.HUB else self.broker.remove_subscriptions)
        self.manager.leaf_lost(self, why)

    def _remove_remote(self, subs: List[Subscription]) -> None:
        for sub in subs:
            self.broker.remove_remote_subscription(sub, gateways=False)

    # -- the handshake ---------------------------------------------------------------

    def op_info(self, arg: bytes) -> None:
        """C{INFO} from the other side: on an uplink the hub's (we answer CONNECT), later ones update it."""
        info = self.json_object(arg, "INFO")
        remote = self.remote
        if remote is None:
            return  # a spoke has nothing to tell us by INFO
        if not self.remote_id:
            if not info.get("client_id") or not isinstance(info.get("leafnode_urls"), list):
                # (A client, route or gateway port answers without these.)
                self.log.warn("leaf node remote {url}: that is not a leaf node port", url=remote.url)
                self.close(None, "attempted to connect to wrong port")
                return
            if info.get("server_id") == self.broker.server_id:
                self.close(None, "connected to ourselves")
                return
            tls = self.manager.settings.tls_dial
            if info.get("tls_required") or remote.tls:
                if tls is None:
                    self.log.warn("leaf node remote {url} requires TLS: give [tls] and tls = true for it", url=remote.url)
                    self.close(None, "hub requires TLS")
                    return
                if not info.get("tls_required"):
                    self.log.warn("leaf node remote {url} does not speak TLS: not sending it our credentials", url=remote.url)
                    self.close(None, "hub without TLS")
                    return
                # The hub's certificate must carry its name (tls_name, or the host dialled).
                start_tls(self.transport, tls(remote.tls_name or urlsplit(remote.url).hostname or self.host))
                secure = True
            else:
                secure = False
            self._met(info, info.get("server_id"), info.get("server_name"), info.get("cluster"))
            nonce = info.get("nonce")
            try:
                options = self.manager.connect_options(remote, secure, nonce.encode("utf-8") if isinstance(nonce, str) else b"")
            except Exception as e:
                # (A credentials file gone bad since start-up: said, and dialled again.)
                self.log.error("leaf node remote {url}: cannot sign in: {why}", url=remote.url, why=e)
                self.close(None, "credentials: {}".format(e))
                return
            self.send(connect_line(options))
            if not info.get("info_on_connect"):
                self._bound()  # (an older hub says nothing more)
            return
        if info.get("connect_info") and not self.up:
            self._bound()

    def op_connect(self, arg: bytes) -> None:
        """C{CONNECT} from a spoke: its credentials and cluster checked; the link is up."""
        if self.dialled or self.up:
            return
        # (nats-server's order: ClientOpts and the credentials, lang, then
        # its own struct: processConnect, processLeafNodeConnect.)
        said = self.read_connect(arg)
        if not self.manager.check_credentials(said) or names_account(said):
            self.log.warn("leaf node from {host}:{port} refused: wrong credentials", host=self.host, port=self.port)
            raise ProtocolViolation(AUTHORIZATION_VIOLATION, "leaf node credentials refused")
        if said.get("lang"):
            self.log.warn("{host}:{port}: a client dialled the leaf node port", host=self.host, port=self.port)
            raise ProtocolViolation("attempted to connect to leaf node port", "a client dialled the leaf node port")
        options = self.read_connect(arg, LEAF_CONNECT)
        cluster = options.get("cluster") or ""
        if cluster and cluster == self.broker.cluster_name:
            self.log.warn("leaf node from {host}:{port} refused: its cluster is ours ({name})", host=self.host, port=self.port, name=cluster)
            raise ProtocolViolation(SAME_CLUSTER_ERROR, "leaf node of our own cluster")
        if options.get("gateway"):
            raise ProtocolViolation(
                "Rejecting connection from gateway {} on the leafnode port".format(go_quote(options["gateway"])),
                "a gateway dialled the leaf node port",
            )
        if options.get("is_hub"):
            # (It would make us its spoke: not supported.)
            raise ProtocolViolation(None, "a hub dialled us as its spoke")
        self._met(options, options.get("server_id"), options.get("name"), cluster)
        deny = options.get("deny_pub")
        denied = self.manager.settings.denied
        if isinstance(deny, list) and deny and denied is not None:
            # What the spoke does not import: not sent it, as nats-server does.
            try:
                self.may_receive = denied([s for s in deny if isinstance(s, str)]).may_publish
            except ValueError:
                raise ProtocolViolation(None, "bad deny_pub in leaf CONNECT")
        info = self.manager.info(self)
        info.update(connect_info=True, remote_account="$G")
        self.send(info_line(info))
        self._bound()

    def _met(self, said: Dict[str, Any], server_id: Any, name: Any, cluster: Any) -> None:
        """Who the other side is, from its INFO (a hub) or CONNECT (a spoke)."""
        self.remote_info = said
        self.remote_id = str(server_id or "")
        self.remote_name = str(name or self.remote_id)
        self.remote_cluster = cluster if isinstance(cluster, str) else ""
        self.cluster_origin = self.remote_cluster.encode("utf-8")
        self.headers = bool(said.get("headers"))
        domain = said.get("domain")
        self.remote_domain = domain if isinstance(domain, str) else ""
        self.remote_jetstream = said.get("jetstream") is True

    def fence(self, rule: LeafJetStreamRule) -> None:
        """
        Take C{rule}: what it denies outward joins what the other side is not
        to get (a message plan asks C{may_receive} once per subject); what
        it denies both ways is not taken in (L{_takes}), nor interest in it
        (L{op_ls_plus}).  The manager calls it as the link comes up, before
        any interest crosses.
        """
        self.js_rule = rule
        exports = self.may_receive
        if exports is None:
            self.may_receive = lambda subject: not rule.blocks_out(subject)
        else:
            self.may_receive = lambda subject: not rule.blocks_out(subject) and exports(subject)

    def _bound(self) -> None:
        """The handshake is done: register, and tell the other side our interest."""
        self.up = self.registered = True
        self.handshake_done()
        self.pinger.start()
        self.manager.leaf_up(self)
        self.first_ping()

    # -- interest ------------------------------------------------------------------

    def _bound_only(self, verb: str) -> None:
        if not self.up:
            raise ProtocolViolation(AUTHORIZATION_VIOLATION, "{} before the leaf node handshake".format(verb))

    def op_ls_plus(self, subject: bytes, queue: Optional[bytes], weight: int) -> None:
        """C{LS+}: the other side's interest (our own loop-detection subject coming back is a loop)."""
        self._bound_only("LS+")
        if subject == self.manager.lds:
            self.manager.loop_detected(self)
            return
        if not valid_subject(subject) or self.js_rule.blocks_out(subject):
            # (Interest in what we never send it is not kept: $JS.API.>
            # from a nats-server hub, its service import.)
            return
        sub = self.new_interest(subject, queue, self.cluster_origin or None)
        if sub is None:
            return
        if self.kind is Kind.HUB:
            self.broker.add_remote_subscription(sub, gateways=False)
        else:
            self.broker.add_subscription(sub)

    def op_ls_minus(self, subject: bytes, queue: Optional[bytes]) -> None:
        """C{LS-}: the other side's interest ends."""
        self._bound_only("LS-")
        sub = self.subs.pop((subject, queue), None)
        if sub is None:
            return
        if self.kind is Kind.HUB:
            self.broker.remove_remote_subscription(sub, gateways=False)
        else:
            self.broker.remove_subscription(sub)

    def tell(self, sub: Subscription, delta: int) -> None:
        """Another owner's subscription came or went: the other side hears when its count for the key changes as it must."""
        key = interest_key(sub)
        n = self.smap.get(key, 0)
        update = sub.queue is not None or n == 0 or n + delta <= 0
        n += delta
        if n > 0:
            self.smap[key] = n
        else:
            self.smap.pop(key, None)
        if update:
            self.send(ls_line(key, max(n, 0)))

    # -- messages ------------------------------------------------------------------

    def _takes(self, verb: str, subject: bytes) -> bool:
        """
        Whether a message on C{subject} is delivered: the link must be up,
        and a subject we do not import, or the JetStream rule denies, is dropped.
        """
        self._bound_only(verb)
        if subject[:1] == b"$" and self.js_rule.blocks(subject):
            return False
        return self.imports is None or self.imports.may_publish(subject)

    def publish(self, src: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        """An LMSG without queue names (the framing loop counts it)."""
        if not self._takes("LMSG", subject):
            return 0
        if reply is not None and reply.startswith(ACK_PREFIX):
            count = self.broker.deliver_crossed(self, subject, reply, (), size, tail, -1, b"")
            if count is not None:
                return count
        return self.broker.deliver(self, subject, reply, size, tail)

    def publish_batch(self, src: Any, subject: bytes, tails: List[bytes], size: int) -> None:
        """Several LMSGs to one subject without a reply or queue names, in order."""
        if self._takes("LMSG", subject):
            self.broker.deliver_batch(self, subject, tails, size)

    def op_pub(self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> None:
        """An LMSG without queue names (what the framing loop's fast branch hands over)."""
        self.publish(self, subject, reply, size, tail)

    def op_lmsg(self, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes) -> None:
        """An LMSG naming queue groups: one member of each named group here."""
        if self._takes("LMSG", subject) and (reply is None or not reply.startswith(ACK_PREFIX) or self.broker.deliver_crossed(
                self, subject, reply, queues, size, tail, -1, b"") is None):
            self.broker.deliver(self, subject, reply, size, tail, queues=queues)

    def op_lhmsg(self, subject: bytes, reply: Optional[bytes], queues: List[bytes], hdr_len: int, total: int, body: bytes) -> None:
        """An HMSG (with headers), naming queue groups or not."""
        takes = self._takes("HMSG", subject)
        self.in_msgs += 1
        self.in_bytes += total
        if not takes:
            return
        if reply is not None and reply.startswith(ACK_PREFIX) and self.broker.deliver_crossed(
                self, subject, reply, queues, total, b"", hdr_len, body) is not None:
            return
        self.broker.deliver_message(self, subject, reply, total, b"", hdr_len, body, queues)

    def op_err(self, arg: bytes) -> None:
        """C{-ERR} from the other side: a loop or same-cluster error delays our next dial; the link closes."""
        text = arg.decode("utf-8", "replace")
        if self.dialled and ("Loop detected" in text or SAME_CLUSTER_ERROR in text):
            self.manager.delay(self.remote, LOOP_DELAY)
        super().op_err(arg)


class RemoteLeaf(DialTarget):
    """A hub to dial ([[leafnodes.remotes]]): its URLs, tried in turn, and our credentials."""

    def __init__(
        self, urls: Tuple[str, ...], user: str = "", password: str = "", tls: bool = False, tls_name: str = "",
        deny_imports: Tuple[str, ...] = (), imports: Any = None, exports: Any = None, signer: Any = None,
    ) -> None:
        super().__init__()
        self.urls = urls
        #: None, or a function of the hub's nonce giving (user JWT,
        #: signature): credentials for a hub in operator mode.
        self.signer = signer
        #: What not to take from the hub (its subjects, and IPermissions over
        #: them), and what not to send it (IPermissions): None lets all through.
        self.deny_imports = deny_imports
        self.imports, self.exports = imports, exports
        self.user, self.password = user, password
        #: Whether the link must be TLS (a tls:// URL, or tls = true).
        self.tls = tls or any(u.startswith("tls://") for u in urls)
        self.tls_name = tls_name
        self.index = 0
        #: Its link, while up.
        self.conn: Optional[LeafConnection] = None

    @property
    def url(self) -> str:
        """The URL the next dial uses (the remote's URLs in turn)."""
        return self.urls[self.index % len(self.urls)]

    def address(self) -> Tuple[str, int]:
        """The hub's host and port (7422 when the URL has none)."""
        return host_port(self.url, "nats-leaf", 7422)

    def label(self) -> str:
        """C{leaf node remote <url>}, for the log."""
        return "leaf node remote " + self.url

    def failed(self) -> None:
        """A dial or link failed: the next dial tries the hub's next URL."""
        if len(self.urls) > 1:
            self.index += 1

    def credentials(self) -> Tuple[str, str]:
        """The URL's user and password if it has them, else the configured ones."""
        parts = urlsplit(self.url)
        if parts.username:
            return unquote(parts.username), unquote(parts.password or "")
        return self.user, self.password
