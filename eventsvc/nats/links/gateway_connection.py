"""
One gateway connection (nats-server 2.9's supercluster protocol), dialled
or accepted, and the gateways we dial (L{RemoteGateway}).

A dialled connection carries our messages and brings back the peer's
interest (kept by L{eventsvc.nats.links.interest_modes.RemoteInterest}); an
accepted one brings the peer's messages (handed to the manager,
L{eventsvc.nats.links.gateway.GatewayManager}, which knows the cluster's
interest, the forwarding plans and the reply mapping).

What it must not do: know about events, tokens or HTTP.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set, Tuple

from eventsvc.nats.frames import RMSG, account_line, connect_line, link_message
from eventsvc.nats.greeting import names_account
from eventsvc.nats.kinds import Kind
from eventsvc.nats.links.connection import PEER_CONNECT, PeerConnection
from eventsvc.nats.links.interest_modes import CMD_ALL_SUBS_COMPLETE, CMD_ALL_SUBS_START, CMD_GOSSIP, RemoteInterest
from eventsvc.nats.links.manager import DialTarget, host_port
from eventsvc.nats.links.replies import gateway_hash
from eventsvc.nats.parser import GatewayParser, ProtocolViolation
from eventsvc.nats.subjects import valid_subject

if TYPE_CHECKING:
    from eventsvc.nats.links.gateway import GatewayManager

GLOBAL = b"$G"
#: Gateways ping at least this often, busy or not (nats-server's rule).
MAX_PING_INTERVAL = 15.0


class GatewayConnection(PeerConnection):
    """
    One gateway connection, dialled (C{remote} given: it carries our
    messages and brings back the peer's interest) or accepted (it brings
    the peer's messages and carries our cluster's interest): a
    L{PeerConnection} speaking the gateway protocol (L{GatewayParser}).
    """

    kind = Kind.GATEWAY
    speaks = "gateway"

    def __init__(self, manager: "GatewayManager", remote: Optional["RemoteGateway"] = None) -> None:
        settings = manager.settings
        super().__init__(manager, min(settings.limits.ping_interval, MAX_PING_INTERVAL), GatewayParser)
        self.remote = remote
        #: The remote gateway's (cluster's) name, and its hash in routed replies.
        self.name = remote.name if remote is not None else ""
        self.hash = remote.hash if remote is not None else b""
        self.connect_seen = False  # accepted: its CONNECT came
        self.interest = RemoteInterest(self, changed=manager.forget_plans)
        #: Whether the peer takes HMSG (else headers are dropped, as nats-server does).
        self.peer_headers = True
        #: Accounts we told the peer (A-) we have no interest in.
        self.refused_accounts: Set[bytes] = set()
        #: For /gatewayz (its own numbering: gateways are not clients).
        self.cid = manager.next_cid()
        #: Prefixes of the peer's interest a dialled connection does not keep
        #: (its plain JetStream API, when both clusters run JetStream: L{GatewayManager.jetstream_fence}).
        self.js_fence: Tuple[bytes, ...] = ()

    @property
    def dialled(self) -> bool:
        """Whether we dialled the gateway (it carries our messages)."""
        return self.remote is not None

    def describe(self) -> str:
        """The remote gateway's name for the log, or its host."""
        return self.name or self.host

    # -- connection ----------------------------------------------------------

    def connectionMade(self) -> None:
        """The connection is up: an accepted one sends INFO; the handshake clock starts."""
        super().connectionMade()
        if not self.dialled:
            self.send(self.manager.info_line())
            self.flush()
        self.start_handshake_clock()

    def lost(self, why: str) -> None:
        """The connection ended: the manager hears of it, and the peer's interest goes."""
        self.manager.lost(self, why)
        # (Its RemoteInterest goes with it, by the cyclic collector.)
        self.interest_gone()

    # -- output ------------------------------------------------------------------

    def send_message(
        self, subject: bytes, reply: Optional[bytes], queues: Sequence[bytes], size: int, tail: bytes, hdr_len: int, body: bytes,
    ) -> None:
        """An RMSG (or HMSG) in C{$G} to the peer, naming C{queues} if any."""
        self.out.append(link_message(RMSG, subject, reply, queues, size, tail, hdr_len, body, headers=self.peer_headers))
        self.out_msgs += 1
        self.out_bytes += size
        self.broker.mark_dirty(self)

    # -- the handshake -------------------------------------------------------------

    def op_connect(self, arg: bytes) -> None:
        """C{CONNECT} on an accepted gateway: it must be a gateway, with our credentials."""
        if self.dialled:
            return  # (nats-server's dialled side ignores one too)
        # (nats-server's order: ClientOpts and the credentials, then its own
        # struct: processConnect, processGatewayConnect.)
        said = self.read_connect(arg)
        if not self.manager.check_credentials(said) or names_account(said):
            self.log.warn("gateway {name} from {host}:{port} refused: wrong credentials", name=said.get("gateway"), host=self.host, port=self.port)
            raise ProtocolViolation("Authorization Violation", "gateway credentials refused")
        options = self.read_connect(arg, PEER_CONNECT)
        if not options.get("gateway"):
            self.log.warn("{host}:{port} dialled the gateway port without being a gateway", host=self.host, port=self.port)
            raise ProtocolViolation("attempted to connect to gateway port", "not a gateway")
        self.connect_seen = True

    def op_info(self, arg: bytes) -> None:
        """C{INFO}: the peer's (registering the connection), or an interest-mode command or gossip."""
        info = self.json_object(arg, "INFO")
        if self.dialled:
            self._info_from_peer(info)
        elif not self.connect_seen:
            raise ProtocolViolation("Authorization Violation", "INFO before CONNECT on gateway")
        elif not self.registered:
            name = info.get("gateway")
            if not isinstance(name, str) or not name:
                raise ProtocolViolation(None, "gateway INFO without a gateway name")
            if info.get("server_id") == self.broker.server_id or name == self.manager.settings.name:
                self.close(None, "connected to ourselves")
                return
            self.name, self.hash = name, gateway_hash(name)
            self.remote_id, self.remote_info = str(info.get("server_id", "")), info
            self.manager.inbound_up(self)

    def _info_from_peer(self, info: Dict[str, Any]) -> None:
        first = not self.remote_id
        name = info.get("gateway")
        if not name:
            self.log.warn("gateway {name} at {host}:{port} is not a gateway port", name=self.name, host=self.host, port=self.port)
            self.close('Attempt to connect to gateway "{}" using wrong port'.format(self.name), "wrong port")
            return
        if name != self.name:
            if not first and info.get("gateway_cmd") == CMD_GOSSIP:
                self.manager.heard_of(info)
                return
            self.log.warn("gateway {name} at {host}:{port} says it is {other}: closing it", name=self.name, host=self.host, port=self.port, other=name)
            self.close(
                'Connection from "{}" rejected, wanted to connect to "{}", this is "{}"'.format(self.manager.settings.name, self.name, name),
                "wrong gateway",
            )
            return
        urls = info.get("gateway_urls")
        if isinstance(urls, list):
            self.manager.learn_urls(self.name, [u for u in urls if isinstance(u, str)])
        if first:
            server_id = str(info.get("server_id", ""))
            if server_id == self.broker.server_id:
                self.close(None, "connected to ourselves")
                return
            self.remote_id, self.remote_info = server_id, info
            self.js_fence = self.manager.jetstream_fence(self, info)
            self.interest.interest_only = bool(info.get("gateway_iom"))
            self.manager.forget_plans(None)
            self.peer_headers = bool(info.get("headers"))
            self.send(connect_line(self.manager.connect_options()))
            self.send(self.manager.info_line())
            if not self.manager.outbound_up(self):
                self.close(None, "duplicate gateway to {}".format(self.name))
            return
        cmd = info.get("gateway_cmd")
        if cmd in (CMD_ALL_SUBS_START, CMD_ALL_SUBS_COMPLETE):
            payload = info.get("gateway_cmd_payload")
            try:
                account = base64.b64decode(payload, validate=True) if isinstance(payload, str) else b""
            except ValueError:
                account = b""
            if not account:
                raise ProtocolViolation(
                    "Account absent from receive-all-subscriptions-{} command".format("start" if cmd == CMD_ALL_SUBS_START else "complete"),
                    "gateway command without an account",
                )
            if account == GLOBAL:
                if cmd == CMD_ALL_SUBS_START:
                    self.interest.start()
                else:
                    self.interest.complete()
                    self.log.info("gateway {name}: interest-only mode", name=self.name)

    # -- interest (the peer's, on a dialled connection) -------------------------------

    def _outbound_only(self, verb: str) -> None:
        if not self.dialled:
            raise ProtocolViolation(None, "{} from gateway on inbound connection".format(verb))

    def op_rs_plus(self, account: bytes, subject: bytes, queue: Optional[bytes], weight: int) -> None:
        """C{RS+} on a dialled gateway: the peer's interest (unless we do not export it)."""
        self._outbound_only("RS+")
        if account == GLOBAL and valid_subject(subject):
            exports = self.manager.settings.exports
            if exports is not None and not exports.may_subscribe(subject, queue):
                self.log.debug("gateway {name}: not exporting {subject}", name=self.name, subject=subject)
                return
            if self.js_fence and subject.startswith(self.js_fence):
                return  # (its own JetStream's: our clients have ours)
            self.interest.rs_plus(subject, queue)
            self.keeps_interest(self.interest.held)

    def drop_fenced_interest(self) -> None:
        """The peer's interest under L{js_fence}, kept before the fence was up, goes (as an C{RS-} would take it)."""
        fence = self.js_fence
        for subject, queue in [key for key in self.interest.subs if key[0].startswith(fence)] if fence else ():
            self.interest.rs_minus(subject, queue)
        self.keeps_interest(self.interest.held)

    def op_rs_minus(self, account: bytes, subject: bytes, queue: Optional[bytes]) -> None:
        """C{RS-} on a dialled gateway: no interest (optimistic mode) or interest that ends."""
        self._outbound_only("RS-")
        if account == GLOBAL:
            # (In optimistic mode an RS- is kept: the subjects of no interest count too.)
            self.interest.rs_minus(subject, queue)
            self.keeps_interest(self.interest.held)

    def op_account(self, account: bytes, interested: bool) -> None:
        """C{A+}/C{A-} on a dialled gateway: the peer's interest in the whole account."""
        self._outbound_only("A+" if interested else "A-")
        if account == GLOBAL:
            self.interest.account(interested)

    # -- messages (the peer's, on an accepted connection) -------------------------------

    def _take(self, account: bytes, subject: bytes) -> bool:
        if self.dialled or not self.registered:
            return False
        if account != GLOBAL:
            if account not in self.refused_accounts:
                # As nats-server: tell it once that we have nobody there.
                self.refused_accounts.add(account)
                self.send(account_line(account, False))
            return False
        return True

    def publish(self, src: Any, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> int:
        """An RMSG in C{$G} without queue names (the framing loop counts it)."""
        if self._take(GLOBAL, subject):
            return self.manager.received(self, subject, reply, (), size, tail, -1, b"")
        return 0

    def publish_batch(self, src: Any, subject: bytes, tails: List[bytes], size: int) -> None:
        """Such RMSGs to one subject without a reply, in order."""
        if self._take(GLOBAL, subject):
            self.manager.received_batch(self, subject, tails, size)

    def op_pub(self, subject: bytes, reply: Optional[bytes], size: int, tail: bytes) -> None:
        """A message without queue names (what the framing loop's fast branch hands over)."""
        self.publish(self, subject, reply, size, tail)

    def op_rmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], size: int, tail: bytes) -> None:
        """An RMSG from another cluster, naming queue groups or not."""
        if self._take(account, subject):
            self.manager.received(self, subject, reply, queues, size, tail, -1, b"")

    def op_rhmsg(self, account: bytes, subject: bytes, reply: Optional[bytes], queues: List[bytes], hdr_len: int, total: int, body: bytes) -> None:
        """An HMSG (with headers) from another cluster."""
        self.in_msgs += 1
        self.in_bytes += total
        if self._take(account, subject):
            self.manager.received(self, subject, reply, queues, total, b"", hdr_len, body)


class RemoteGateway(DialTarget):
    """A gateway we dial: configured, or implicit (heard of, dialled until it fails)."""

    def __init__(self, name: str, urls: Sequence[str], implicit: bool = False) -> None:
        super().__init__()
        self.name = name
        self.hash = gateway_hash(name)
        self.urls: List[str] = []
        self.implicit = implicit
        self.add(urls)

    def add(self, urls: Sequence[str]) -> None:
        """URLs heard of for this gateway (gossip, INFO), kept once each."""
        for url in urls:
            url = url if "://" in url else "nats://" + url
            if url not in self.urls:
                self.urls.append(url)

    @property
    def url(self) -> str:
        """The URL the next dial uses: its URLs in turn, one more at each failure."""
        return self.urls[self.attempts % len(self.urls)] if self.urls else ""

    def address(self) -> Tuple[str, int]:
        """The host and port of the next dial."""
        return host_port(self.url, "nats")

    def label(self) -> str:
        """C{gateway <name>}, for the log."""
        return "gateway " + self.name
