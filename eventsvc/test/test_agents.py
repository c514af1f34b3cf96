"""
The agent listener ([gateway]): token-authenticated clients under
permissions, on the same broker as the service listener, in memory.
(nats-server's gateways, [supercluster], are test_supercluster's.)
"""

from __future__ import annotations

import json
import os
import stat

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web import resource, server

from eventsvc import config
from eventsvc.app import StartupError, make_service
from eventsvc.nats.interfaces import AuthenticationFailed, PeerInfo
from eventsvc.security.auth import HTTPAuthenticator, digest
from eventsvc.security.permissions import AGENT_DEFAULTS, Permissions, is_subset
from eventsvc.test import authplugins
from eventsvc.test.helpers import FakeClient

TOKEN = "agent-token-1234567890"


def build(test: SynchronousTestCase, extra: str = "", clock=None):
    directory = test.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "patch.toml")
    with open(path, "w") as f:
        f.write(
            '[service]\nport = 0\n[gateway]\nenabled = true\nport = 0\ndisable_frontend_tls = true\n'
            'tokens = ["%s", "sha256:%s"]\n%s' % (TOKEN, digest("hashed-token").hex(), extra)
        )
    reactor_ = clock or MemoryReactorClock()
    svc = make_service(config.load(path), reactor_)
    svc.startService()
    test.addCleanup(svc.stopService)
    return svc, reactor_, directory


def connect(svc, name: str, connect_line: bytes = None) -> FakeClient:
    factory = svc.getServiceNamed(name).factory
    proto = factory.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    client = FakeClient(proto, transport)
    client.received()
    if connect_line:
        client.send(connect_line)
    return client


def token_connect(token: str) -> bytes:
    return b'CONNECT {"verbose":false,"pedantic":false,"auth_token":"%s"}\r\n' % token.encode()


class AgentAuthTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.logged = []
        globalLogPublisher.addObserver(self.logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.logged.append)

    def log_text(self) -> str:
        return "\n".join(formatEvent(e) + json.dumps({k: str(v) for k, v in e.items()}) for e in self.logged)

    def test_info_requires_auth(self) -> None:
        svc, _, _ = build(self)
        c = connect(svc, "gateway")
        info = json.loads(c.transport.value()[5:].split(b"\r\n")[0])
        self.assertTrue(info["auth_required"])

    def test_good_tokens(self) -> None:
        svc, _, _ = build(self)
        for token in (TOKEN, "hashed-token"):
            c = connect(svc, "gateway", token_connect(token) + b"PING\r\n")
            self.assertEqual(c.received(), b"PONG\r\n")

    def test_refusals(self) -> None:
        svc, _, _ = build(self)
        for line in (token_connect("wrong-token-xyz"), b'CONNECT {"verbose":false}\r\n', b"PING\r\n"):
            c = connect(svc, "gateway", line + b"PING\r\n")
            self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")
            self.assertTrue(c.closed)
        text = self.log_text()
        self.assertIn("authentication failed", text)
        self.assertNotIn("wrong-token-xyz", text)
        # The health token, the identities and the tokens each refused it: said once.
        refusals = [formatEvent(e) for e in self.logged if "authentication failed" in formatEvent(e)]
        self.assertIn("authentication failed: unknown token", refusals[0])
        self.assertNotIn("unknown token; unknown token", refusals[0])

    def test_listening_lines_say_what_is_required(self) -> None:
        build(self)
        lines = [formatEvent(e) for e in self.logged if "listening for NATS clients" in formatEvent(e)]
        self.assertTrue(any(line.startswith("service listening") and line.endswith(": plaintext, no authentication") for line in lines), lines)
        self.assertTrue(any(line.startswith("gateway listening") and line.endswith(": plaintext, authentication required") for line in lines), lines)

    def test_timeout(self) -> None:
        svc, clock, _ = build(self)
        c = connect(svc, "gateway")
        clock.advance(2.1)
        self.assertEqual(c.received(), b"-ERR 'Authentication Timeout'\r\n")

    def test_default_permissions(self) -> None:
        svc, _, _ = build(self)
        c = connect(svc, "gateway", token_connect(TOKEN))
        c.send(
            b"SUB > 1\r\nSUB habitat.> 2\r\nSUB _INBOX.abc.* 3\r\nPUB foo 0\r\n\r\n"
            b"PUB habitat.event.x _INBOX.steer 0\r\n\r\nPUB habitat.event.healthcheck 0\r\n\r\nPING\r\n"
        )
        self.assertEqual(
            c.received(),
            b"-ERR 'Permissions Violation for Subscription to \">\"'\r\n"
            b"-ERR 'Permissions Violation for Subscription to \"habitat.>\"'\r\n"
            # No one's replies: agents subscribe to nothing, inboxes included.
            b"-ERR 'Permissions Violation for Subscription to \"_INBOX.abc.*\"'\r\n"
            b"-ERR 'Permissions Violation for Publish to \"foo\"'\r\n"
            # A reply subject it may not subscribe to would steer someone's answer.
            b"-ERR 'Permissions Violation for Publish to \"habitat.event.x\" with reply \"_INBOX.steer\"'\r\n"
            b"PONG\r\n",
        )
        self.assertFalse(c.closed)

    def test_permissions_on_the_batched_path(self) -> None:
        """A plain agent's PUBs are batched; refused ones are reported in order, allowed ones delivered."""
        svc, _, _ = build(self)
        consumer = connect(svc, "service", b'CONNECT {"verbose":false}\r\nSUB > 1\r\n')
        agent = connect(svc, "gateway", token_connect(TOKEN))
        self.assertTrue(agent.proto.plain)
        agent.send(
            b"PUB habitat.event.a 1\r\n1\r\n" * 3 + b"PUB secret 1\r\nx\r\n" + b"PUB habitat.event.a 1\r\n2\r\n" * 2 + b"PING\r\n"
        )
        self.assertEqual(agent.received(), b"-ERR 'Permissions Violation for Publish to \"secret\"'\r\nPONG\r\n")
        self.assertEqual(consumer.received(), b"MSG habitat.event.a 1 1\r\n1\r\n" * 3 + b"MSG habitat.event.a 1 1\r\n2\r\n" * 2)
        self.assertEqual(agent.proto.in_msgs, 6)

    def test_deny_filters_a_wider_subscription(self) -> None:
        """
        C{>} is allowed, C{secret.>} denied: the wide subscription is kept
        but never given a denied subject, on the plain, batched, header and
        queue paths, as nats-server filters at delivery.
        """
        svc, _, _ = build(self, '[gateway.permissions]\nsubscribe_allow = [">"]\nsubscribe_deny = ["secret.>"]\npublish_allow = [">"]\n')
        agent = connect(svc, "gateway", token_connect(TOKEN)[:-3] + b',"headers":true}\r\n')
        agent.send(b"SUB > 1\r\nSUB secret.> 2\r\nSUB *.x q 3\r\nPING\r\n")
        self.assertEqual(agent.received(), b"-ERR 'Permissions Violation for Subscription to \"secret.>\"'\r\nPONG\r\n")
        producer = connect(svc, "service", b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
        producer.send(
            b"PUB secret.x 1\r\na\r\n" * 3
            + b"PUB open.x 1\r\nb\r\n" * 2
            + b"PUB secret.x r 1\r\nc\r\n"
            + b"HPUB secret.y 12 13\r\nNATS/1.0\r\n\r\nd\r\n"
            + b"PUB secret 1\r\ne\r\n"
        )
        frames = agent.received().split(b"MSG ")
        self.assertEqual(sorted(frames[1:]), [b"open.x 1 1\r\nb\r\n"] * 2 + [b"open.x 3 1\r\nb\r\n"] * 2 + [b"secret 1 1\r\ne\r\n"])
        # Nobody may receive it: a request gets "no responders", not silence.
        producer.send(b"SUB inbox 9\r\nHPUB secret.z inbox 12 12\r\nNATS/1.0\r\n\r\n\r\n")
        self.assertIn(b"NATS/1.0 503", producer.received())

    def test_jetstream_is_fenced_unless_named(self) -> None:
        """
        An agent allowed C{>} still may not touch C{$JS}, C{$KV} or C{$O}
        (publish or subscribe): the API request gets nats-server's
        permission error and reaches no one.  An operator who names a
        JetStream subject in an allow list opens that space.
        """
        svc, _, _ = build(self, '[gateway.permissions]\nsubscribe_allow = [">"]\npublish_allow = [">"]\n')
        api = connect(svc, "service", b'CONNECT {"verbose":false}\r\nSUB $JS.API.> 1\r\n')
        agent = connect(svc, "gateway", token_connect(TOKEN))
        agent.send(
            b"PUB $JS.API.STREAM.DELETE.orders 0\r\n\r\nPUB $KV.cfg.k 1\r\nv\r\n"
            b"SUB $O.> 1\r\nPUB open.x 0\r\n\r\nPING\r\n"
        )
        self.assertEqual(
            agent.received(),
            b"-ERR 'Permissions Violation for Publish to \"$JS.API.STREAM.DELETE.orders\"'\r\n"
            b"-ERR 'Permissions Violation for Publish to \"$KV.cfg.k\"'\r\n"
            b"-ERR 'Permissions Violation for Subscription to \"$O.>\"'\r\nPONG\r\n",
        )
        self.assertEqual(api.received(), b"")
        svc, _, _ = build(self, '[gateway.permissions]\npublish_allow = ["$JS.API.STREAM.INFO.*"]\n')
        api = connect(svc, "service", b'CONNECT {"verbose":false}\r\nSUB $JS.API.> 1\r\n')
        agent = connect(svc, "gateway", token_connect(TOKEN))
        agent.send(b"PUB $JS.API.STREAM.INFO.orders 0\r\n\r\nPING\r\n")
        self.assertEqual(agent.received(), b"PONG\r\n")
        self.assertEqual(api.received(), b"MSG $JS.API.STREAM.INFO.orders 1 0\r\n\r\n")

    def test_agent_listener_to_service_and_back(self) -> None:
        """A request published at the agent listener reaches the service; the reply comes back once."""
        svc, _, _ = build(self, '[[gateway.identities]]\nname = "a1"\ntoken = "a1-token"\nprivate_inbox = true\n')
        consumer = connect(svc, "service", b'CONNECT {"verbose":false}\r\nSUB habitat.event.> automate 1\r\n')
        agent = connect(svc, "gateway", token_connect("a1-token"))
        agent.send(b"SUB _INBOX.a1.* 9\r\nPUB habitat.event.service_started _INBOX.a1.1 2\r\nhi\r\nPING\r\n")
        self.assertEqual(agent.received(), b"PONG\r\n")
        self.assertEqual(consumer.received(), b"MSG habitat.event.service_started 1 _INBOX.a1.1 2\r\nhi\r\n")
        consumer.send(b"PUB _INBOX.a1.1 2\r\nok\r\n")
        self.assertEqual(agent.received(), b"MSG _INBOX.a1.1 9 2\r\nok\r\n")
        # Its inbox is its own: not another identity's, not the whole of _INBOX.
        agent.send(b"SUB _INBOX.a2.* 10\r\nSUB _INBOX.> 11\r\n")
        self.assertEqual(agent.received().count(b"Permissions Violation for Subscription"), 2)

    def test_health_token(self) -> None:
        svc, _, _ = build(self)
        health = svc.getServiceNamed("gateway").health
        mode = stat.S_IMODE(os.stat(health.path).st_mode)
        self.assertEqual(mode, 0o600)
        with open(health.path) as f:
            token = f.read().strip()
        c = connect(svc, "gateway", token_connect(token))
        c.send(b"SUB healthcheck.x 1\r\nPUB healthcheck.x 1\r\na\r\nPUB habitat.event.x 0\r\n\r\nPING\r\n")
        self.assertEqual(
            c.received(),
            b"MSG healthcheck.x 1 1\r\na\r\n-ERR 'Permissions Violation for Publish to \"habitat.event.x\"'\r\nPONG\r\n",
        )
        self.assertEqual(c.proto.identity.name.split(":")[0], "health-check")

    def test_fresh_token_each_start_and_removed_at_stop(self) -> None:
        svc, _, directory = build(self)
        path = svc.getServiceNamed("gateway").health.path
        with open(path) as f:
            first = f.read()
        svc.stopService()
        self.assertFalse(os.path.exists(path))
        svc2, _, _ = build(self)
        with open(svc2.getServiceNamed("gateway").health.path) as f:
            self.assertNotEqual(f.read(), first)

    def test_users(self) -> None:
        svc, _, _ = build(self, '[gateway.users]\nhab = "s3cret"\n')
        ok = connect(svc, "gateway", b'CONNECT {"verbose":false,"user":"hab","pass":"s3cret"}\r\nPING\r\n')
        self.assertEqual(ok.received(), b"PONG\r\n")
        bad = connect(svc, "gateway", b'CONNECT {"verbose":false,"user":"hab","pass":"nope"}\r\nPING\r\n')
        self.assertEqual(bad.received(), b"-ERR 'Authorization Violation'\r\n")

    def test_reload_applies_to_connected_agents(self) -> None:
        """
        As nats-server on reload: a client whose token was removed is told
        and closed; the others keep their connection under the new
        permissions, losing the subscriptions those no longer allow.
        """
        perms = '[gateway.permissions]\nsubscribe_allow = ["_INBOX.>", %s]\n'
        svc, _, directory = build(self, perms % '"status.>"')
        kept = connect(svc, "gateway", token_connect(TOKEN) + b"SUB status.x 2\r\nSUB _INBOX.y 3\r\nPING\r\n")
        revoked = connect(svc, "gateway", token_connect("hashed-token") + b"PING\r\n")
        self.assertEqual((kept.received(), revoked.received()), (b"PONG\r\n", b"PONG\r\n"))
        untouched = connect(svc, "service", b'CONNECT {"verbose":false}\r\nSUB status.x 1\r\n')
        with open(os.path.join(directory, "patch.toml"), "w") as f:
            f.write(
                '[service]\nport = 0\n[gateway]\nenabled = true\nport = 0\ndisable_frontend_tls = true\n'
                'tokens = ["%s"]\n%s' % (TOKEN, perms % "")
            )
        self.assertTrue(svc.reload())
        self.assertEqual(revoked.received(), b"-ERR 'Authorization Violation'\r\n")
        self.assertTrue(revoked.closed)
        self.assertEqual(kept.received(), b"-ERR 'Permissions Violation for Subscription to \"status.x\" (sid \"2\")'\r\n")
        self.assertFalse(kept.closed)
        self.assertEqual(sorted(kept.proto.subs), [b"3"])
        # What is still allowed still arrives; the service's own client is left alone.
        publisher = connect(svc, "service", b'CONNECT {"verbose":false}\r\nPUB status.x 1\r\na\r\nPUB _INBOX.y 1\r\nb\r\n')
        self.assertEqual(kept.received(), b"MSG _INBOX.y 3 1\r\nb\r\n")
        self.assertEqual(untouched.received(), b"MSG status.x 1 1\r\na\r\n")
        del publisher

    def test_reload_takes_a_configuration_object(self) -> None:
        """An embedding application reloads with a Config it built, no file read."""
        svc, _, directory = build(self)
        new = config.parse(
            '[service]\nport = 0\n[gateway]\nenabled = true\nport = 0\ndisable_frontend_tls = true\ntokens = ["other"]\n',
            os.path.join(directory, "patch.toml"),
        )
        self.assertTrue(svc.reload(new))
        refused = connect(svc, "gateway", token_connect(TOKEN) + b"PING\r\n")
        self.assertEqual(refused.received(), b"-ERR 'Authorization Violation'\r\n")
        self.assertEqual(connect(svc, "gateway", token_connect("other") + b"PING\r\n").received(), b"PONG\r\n")

    def test_reload_is_all_or_nothing(self) -> None:
        """One service refusing its part of a reload leaves every service as it was."""
        from twisted.application.service import Service

        svc, _, directory = build(self)

        class Refusing(Service):
            def prepare_reload(self, config):
                raise ValueError("no")

        Refusing().setServiceParent(svc)
        new = config.parse(
            '[service]\nport = 0\n[gateway]\nenabled = true\nport = 0\ndisable_frontend_tls = true\ntokens = ["other"]\n',
            os.path.join(directory, "patch.toml"),
        )
        self.assertFalse(svc.reload(new))
        self.assertEqual(connect(svc, "gateway", token_connect(TOKEN) + b"PING\r\n").received(), b"PONG\r\n")

    def test_reload_without_gateway_changes_leaves_agents_alone(self) -> None:
        svc, _, directory = build(self)
        agent = connect(svc, "gateway", token_connect(TOKEN) + b"SUB _INBOX.y 3\r\n")
        calls = []
        agent.proto.reauthorize = lambda authenticator: calls.append(authenticator)
        with open(os.path.join(directory, "patch.toml"), "a") as f:
            f.write('[log]\nlevel = "debug"\n')
        self.assertTrue(svc.reload())
        self.assertEqual(calls, [])

    def test_identities_have_their_own_permissions(self) -> None:
        """[[gateway.identities]]: a name, a credential, and lists of its own (the rest the agents')."""
        svc, _, _ = build(self, (
            '[[gateway.identities]]\nname = "automate"\ntoken = "sha256:%s"\nsubscribe_allow = ["habitat.event.>", "_INBOX.>"]\n'
            '[[gateway.identities]]\nname = "ops"\nuser = "ops"\npassword = "pw"\npublish_allow = ["ops.>"]\n'
        ) % digest("automate-token").hex())
        automate = connect(svc, "gateway", token_connect("automate-token") + b"SUB habitat.event.> 1\r\nPING\r\n")
        self.assertEqual(automate.received(), b"PONG\r\n")
        self.assertEqual(automate.proto.identity.name, "automate")
        ops = connect(svc, "gateway", b'CONNECT {"verbose":false,"user":"ops","pass":"pw"}\r\nPUB habitat.event.x 0\r\n\r\nPUB ops.x 0\r\n\r\nSUB habitat.> 2\r\nPING\r\n')
        self.assertEqual(ops.received(), (
            b"-ERR 'Permissions Violation for Publish to \"habitat.event.x\"'\r\n"
            b"-ERR 'Permissions Violation for Subscription to \"habitat.>\"'\r\nPONG\r\n"
        ))
        # An agent with a plain token keeps the agents' permissions; and what
        # automate may see, it gets.
        agent = connect(svc, "gateway", token_connect(TOKEN) + b"PUB habitat.event.x 2\r\nhi\r\nSUB habitat.event.> 3\r\nPING\r\n")
        self.assertEqual(agent.received(), b"-ERR 'Permissions Violation for Subscription to \"habitat.event.>\"'\r\nPONG\r\n")
        self.assertEqual(automate.received(), b"MSG habitat.event.x 1 2\r\nhi\r\n")
        for wrong in (token_connect("nope-token"), b'CONNECT {"verbose":false,"user":"ops","pass":"no"}\r\n'):
            refused = connect(svc, "gateway", wrong + b"PING\r\n")
            self.assertEqual(refused.received(), b"-ERR 'Authorization Violation'\r\n")

    def test_tokens_file(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        with open(os.path.join(directory, "tokens"), "w") as f:
            f.write("# agents\nfile-token-1\n\nsha256:%s\n" % digest("file-token-2").hex())
        svc, _, _ = build(self, 'tokens_file = "%s"\n' % os.path.abspath(os.path.join(directory, "tokens")))
        for token in ("file-token-1", "file-token-2"):
            self.assertEqual(connect(svc, "gateway", token_connect(token) + b"PING\r\n").received(), b"PONG\r\n")

    def test_python_authenticator(self) -> None:
        svc, clock, _ = build(self, 'python_authenticator = "eventsvc.test.authplugins:only_open_sesame"\n')
        ok = connect(svc, "gateway", token_connect("open-sesame") + b"PUB foo 0\r\n\r\nPING\r\n")
        # The plug-in's identities get the agents' default permissions.
        self.assertEqual(ok.received(), b"-ERR 'Permissions Violation for Publish to \"foo\"'\r\nPONG\r\n")
        self.assertEqual(ok.proto.identity.name, "sesame")
        bad = connect(svc, "gateway", token_connect("abracadabra") + b"PING\r\n")
        self.assertEqual(bad.received(), b"-ERR 'Authorization Violation'\r\n")

    def test_python_authenticator_coroutine(self) -> None:
        svc, _, _ = build(self, 'python_authenticator = "eventsvc.test.authplugins.coroutine_check"\n')
        ok = connect(svc, "gateway", token_connect("async-ok") + b"PING\r\n")
        self.assertEqual(ok.received(), b"PONG\r\n")
        self.assertEqual(ok.proto.identity.name, "coroutine")

    def test_python_authenticator_raises(self) -> None:
        svc, _, _ = build(self, 'python_authenticator = "eventsvc.test.authplugins:broken"\n')
        c = connect(svc, "gateway", token_connect("anything-at-all") + b"PING\r\n")
        self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn("anything-at-all", self.log_text())

    def test_python_authenticator_too_slow(self) -> None:
        svc, clock, _ = build(self, 'python_authenticator = "eventsvc.test.authplugins:never"\n')
        c = connect(svc, "gateway", token_connect("slow-token") + b"PING\r\n")
        clock.advance(2.1)
        self.assertEqual(c.received(), b"-ERR 'Authentication Timeout'\r\n")
        self.assertTrue(c.closed)

    def test_python_authenticator_missing(self) -> None:
        with self.assertRaises(StartupError) as caught:
            build(self, 'python_authenticator = "no.such.module:thing"\n')
        self.assertIn("[gateway] python_authenticator", str(caught.exception))


class PermissionTests(SynchronousTestCase):
    def test_subset(self) -> None:
        self.assertTrue(is_subset(b"_INBOX.abc.*", b"_INBOX.>"))
        self.assertTrue(is_subset(b"a.b", b"a.*"))
        self.assertFalse(is_subset(b"a.*", b"a.b"))
        self.assertFalse(is_subset(b">", b"_INBOX.>"))
        self.assertFalse(is_subset(b"a.>", b"a.*"))
        self.assertTrue(is_subset(b"a.*.c", b"a.>"))

    def test_allow_and_deny(self) -> None:
        p = Permissions(publish_allow=["a.>"], publish_deny=["a.secret"], subscribe_allow=["a.>"], subscribe_deny=["a.secret.>"])
        self.assertTrue(p.may_publish(b"a.b"))
        self.assertFalse(p.may_publish(b"a.secret"))
        self.assertFalse(p.may_publish(b"b"))
        self.assertTrue(p.may_subscribe(b"a.*"))
        self.assertFalse(p.may_subscribe(b"a.secret.x"))
        self.assertFalse(p.may_subscribe(b">"))
        self.assertTrue(p.may_receive(b"a.b"))
        self.assertTrue(p.may_receive(b"a.secret"))
        self.assertFalse(p.may_receive(b"a.secret.x"))

    def test_agent_defaults(self) -> None:
        p = Permissions(**AGENT_DEFAULTS)
        self.assertTrue(p.may_publish(b"habitat.event.healthcheck"))
        self.assertFalse(p.may_publish(b"habitat.event.a.b"))
        self.assertFalse(p.may_subscribe(b">"))
        self.assertFalse(p.may_subscribe(b"_INBOX.x.*"))
        self.assertFalse(p.may_publish(b"_INBOX.x"))


class Answers(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.asked = 0

    def render_POST(self, request):
        self.asked += 1
        token = json.loads(request.content.read())["token"]
        request.setHeader(b"content-type", b"application/json")
        if token == "http-good":
            return json.dumps({"name": "agent-7", "permissions": {"publish_allow": ["x.>"]}}).encode()
        if token == "http-broken":
            request.setResponseCode(500)
            return b"oops"
        request.setResponseCode(401)
        return b"{}"


class HTTPAuthenticatorTests(TestCase):
    """Against a real twisted.web server on loopback."""

    def setUp(self):
        from twisted.web.client import Agent

        self.answers = Answers()
        self.port = reactor.listenTCP(0, server.Site(self.answers), interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        from twisted.web.client import HTTPConnectionPool

        pool = HTTPConnectionPool(reactor, persistent=False)
        self.clock = Clock()
        url = "http://127.0.0.1:%d/auth" % self.port.getHost().port
        self.auth = HTTPAuthenticator(url, 60, None, Agent(reactor, pool=pool), self.clock)

    @defer.inlineCallbacks
    def test_accepts_and_caches(self):
        peer = PeerInfo("127.0.0.1", 1)
        identity = yield self.auth.authenticate({"auth_token": "http-good"}, peer)
        self.assertEqual(identity.name, "http:agent-7")
        self.assertTrue(identity.permissions.may_publish(b"x.y"))
        self.assertFalse(identity.permissions.may_publish(b"z"))
        again = yield defer.maybeDeferred(self.auth.authenticate, {"auth_token": "http-good"}, peer)
        self.assertEqual(again.name, "http:agent-7")
        self.assertEqual(self.answers.asked, 1)
        self.clock.advance(61)
        yield self.auth.authenticate({"auth_token": "http-good"}, peer)
        self.assertEqual(self.answers.asked, 2)

    @defer.inlineCallbacks
    def test_refuses(self):
        peer = PeerInfo("127.0.0.1", 1)
        for token in ("http-bad", "http-broken"):
            with self.assertRaises(AuthenticationFailed) as caught:
                yield self.auth.authenticate({"auth_token": token}, peer)
            self.assertNotIn(token, str(caught.exception))


class LoginThrottleTests(SynchronousTestCase):
    """A brute force from one address is slowed; good clients elsewhere are not."""

    def test_failures_past_the_budget_wait_then_are_refused_unchecked(self) -> None:
        svc, clock, _ = build(self)
        for _ in range(10):
            c = connect(svc, "gateway", token_connect("guess-guess-guess"))
            self.assertEqual(c.received(), b"-ERR 'Authorization Violation'\r\n")
        # Over budget: the next attempts from that address wait a second...
        waiting = [connect(svc, "gateway", token_connect("guess-guess-guess") + b"PING\r\n") for _ in range(8)]
        self.assertEqual([w.received() for w in waiting], [b""] * 8)
        # ...at most eight at once; more are refused without a check.
        extra = connect(svc, "gateway", token_connect(TOKEN))
        self.assertEqual(extra.received(), b"-ERR 'Authorization Violation'\r\n")
        clock.advance(1.0)
        self.assertEqual({w.received() for w in waiting}, {b"-ERR 'Authorization Violation'\r\n"})
        # A good token from that address still gets in, a second late.
        good = connect(svc, "gateway", token_connect(TOKEN) + b"PING\r\n")
        self.assertEqual(good.received(), b"")
        clock.advance(1.0)
        self.assertEqual(good.received(), b"PONG\r\n")

    def test_other_addresses_are_not_slowed(self) -> None:
        from twisted.internet.address import IPv4Address

        svc, clock, _ = build(self)
        for _ in range(30):
            connect(svc, "gateway", token_connect("guess-guess-guess"))
        factory = svc.getServiceNamed("gateway").factory
        proto = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "10.9.9.9", 40000))
        proto.makeConnection(transport)
        proto.dataReceived(token_connect(TOKEN) + b"PING\r\n")
        self.assertTrue(transport.value().endswith(b"PONG\r\n"))

    def test_budget_recovers(self) -> None:
        svc, clock, _ = build(self)
        for _ in range(10):
            connect(svc, "gateway", token_connect("guess-guess-guess"))
        clock.advance(10.5)
        c = connect(svc, "gateway", token_connect(TOKEN) + b"PING\r\n")
        self.assertEqual(c.received(), b"PONG\r\n")


class HTTPAuthCacheTests(SynchronousTestCase):
    def test_bounded_lru(self) -> None:
        from eventsvc.security import auth

        clock = Clock()
        a = HTTPAuthenticator("http://127.0.0.1:9/auth", 60.0, None, None, clock)
        for i in range(auth.CACHE_SIZE):
            a._remember(b"k%d" % i, 100.0, None)
        # The oldest is used again, so it stays; the next oldest goes.
        a._cache.move_to_end(b"k0")
        a._remember(b"new", 100.0, None)
        self.assertEqual(len(a._cache), auth.CACHE_SIZE)
        self.assertIn(b"k0", a._cache)
        self.assertNotIn(b"k1", a._cache)

    def test_expired_answers_are_asked_again(self) -> None:
        clock = Clock()
        a = HTTPAuthenticator("http://127.0.0.1:9/auth", 60.0, None, None, clock)
        a._remember(digest("tok"), 5.0, None)
        self.assertRaises(AuthenticationFailed, a.authenticate, {"auth_token": "tok"}, PeerInfo("h", 1))
        clock.advance(6)
        asked = []
        a._ask = lambda token, key, peer: asked.append(token) or defer.succeed(None)
        a.authenticate({"auth_token": "tok"}, PeerInfo("h", 1))
        self.assertEqual(asked, ["tok"])
        self.assertNotIn(digest("tok"), a._cache)
