"""
The configuration patch: defaults, the seed's keys, and errors that name
the file and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from twisted.trial.unittest import SynchronousTestCase

from eventsvc import config
from eventsvc.config import ConfigError


class DefaultsTests(SynchronousTestCase):
    def test_empty_patch(self) -> None:
        c = config.parse("", "/etc/eventsvc/patch.toml")
        self.assertEqual(c.service.event_limit, 100000)
        self.assertEqual(c.service.listener_limit, 10000)
        self.assertEqual(c.limits.max_payload, 1024 * 1024)
        self.assertEqual(c.limits.max_control_line, 4096)
        self.assertEqual(c.limits.max_pending, 64 * 1024 * 1024)
        self.assertEqual(c.limits.ping_interval, 120.0)
        self.assertEqual(c.limits.ping_max, 2)
        self.assertEqual(c.limits.auth_timeout, 2.0)
        self.assertEqual(c.log.format, "text")
        self.assertFalse(c.tls.enabled)

    def test_seed_keys(self) -> None:
        c = config.parse(
            """
            [service]
            host = "0.0.0.0"
            port = 10132
            event_limit = 5
            listener_limit = 7
            [tls]
            cert_path = "certs/service.crt"
            key_path = "/abs/service.key"
            root_ca_path = "../ca.crt"
            [log]
            format = "json"
            level = "debug"
            [handlers]
            feed = "localhost:10121"
            cfgingest = "https://cfg.example:443/x"
            event_feed = "http://127.0.0.1:8080"
            """,
            "/etc/eventsvc/patch.toml",
        )
        self.assertEqual((c.service.host, c.service.port, c.service.event_limit, c.service.listener_limit), ("0.0.0.0", 10132, 5, 7))
        # Relative paths resolve against the config file's folder.
        self.assertEqual(c.tls.cert_path, "/etc/eventsvc/certs/service.crt")
        self.assertEqual(c.tls.key_path, "/abs/service.key")
        self.assertEqual(c.tls.root_ca_path, "/etc/ca.crt")
        self.assertEqual((c.log.format, c.log.level), ("json", "debug"))
        self.assertEqual(config.handler_address(c.handlers.feed), ("https", "localhost", 10121))
        self.assertEqual(config.handler_address(c.handlers.cfgingest), ("https", "cfg.example", 443))
        self.assertEqual(config.handler_address(c.handlers.event_feed), ("http", "127.0.0.1", 8080))

    def test_float_accepts_integer(self) -> None:
        c = config.parse("[limits]\nping_interval = 30\n")
        self.assertEqual(c.limits.ping_interval, 30.0)

    def test_load_file(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("[service]\nport = 4333\n")
        c = config.load(path)
        self.assertEqual(c.service.port, 4333)
        self.assertEqual(c.source, path)


class StateDirectoryTests(SynchronousTestCase):
    """Events are kept unless the operator opts out, and where is chosen as operators expect."""

    def setUp(self) -> None:
        self.patch(config.os, "environ", {})

    def test_beside_the_config_file_by_default(self) -> None:
        c = config.parse("", "/etc/eventsvc/patch.toml")
        self.assertEqual(c.service.data_dir, "/etc/eventsvc/patch.state")
        # Dead letters and runtime files live there too.
        self.assertEqual(c.events.dead_letter_file, "/etc/eventsvc/patch.state/dead-letters.jsonl")
        self.assertEqual([w for w in config.warnings(c) if "data_dir" in w], [])
        self.assertIn("events are kept in /etc/eventsvc/patch.state", config.where_events_are_kept(c))

    def test_two_configs_in_one_folder_never_share_it(self) -> None:
        self.assertNotEqual(
            config.parse("", "/srv/gateway.toml").service.data_dir, config.parse("", "/srv/service.toml").service.data_dir
        )

    def test_systemd_state_directory(self) -> None:
        self.patch(config.os, "environ", {"STATE_DIRECTORY": "/var/lib/eventsvc:/var/lib/other"})
        self.assertEqual(config.parse("", "/etc/eventsvc/patch.toml").service.data_dir, "/var/lib/eventsvc")
        # Written, the key wins.
        c = config.parse('[service]\ndata_dir = "spool"\n', "/etc/eventsvc/patch.toml")
        self.assertEqual(c.service.data_dir, "/etc/eventsvc/spool")

    def test_memory_only_is_a_choice_with_a_warning(self) -> None:
        c = config.parse('[service]\ndata_dir = ""\n', "/etc/eventsvc/patch.toml")
        self.assertEqual(c.service.data_dir, "")
        [warning] = [w for w in config.warnings(c) if "data_dir" in w]
        self.assertIn("events are kept in memory only", warning)
        self.assertIn("lost if the process crashes", warning)
        self.assertIn("memory only", config.where_events_are_kept(c))
        # Dead letters, with no state directory, stay beside the configuration.
        self.assertEqual(c.events.dead_letter_file, "/etc/eventsvc/dead-letters.jsonl")

    def test_no_file_no_folder(self) -> None:
        """A configuration read from no file has nothing to be beside: memory, and it is said."""
        c = config.parse("")
        self.assertEqual(c.service.data_dir, "")
        self.assertEqual(len([w for w in config.warnings(c) if "memory only" in w]), 1)


class HandlerAddressTests(SynchronousTestCase):
    """Chef Automate's handler addresses: what they would mean here is said, or refused when it cannot work."""

    def assertRefused(self, address: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.parse('[handlers]\nfeed = "%s"\n' % address, "patch.toml")
        message = str(caught.exception)
        self.assertTrue(message.startswith("patch.toml: [handlers] feed: "), message)
        self.assertIn("names no host to deliver to", message)
        self.assertIn("Coming from Chef Automate", message)

    def test_any_address_refused(self) -> None:
        for address in ("0.0.0.0:10121", "[::]:10121", "https://0.0.0.0:10121/events"):
            self.assertRefused(address)

    def test_bare_host_port_is_said_to_be_https(self) -> None:
        c = config.parse('[handlers]\nfeed = "feed.internal:10121"\nevent_feed = "https://f.internal/e"\n', "/etc/p.toml")
        [warning] = [w for w in config.warnings(c) if "[handlers] feed =" in w]
        self.assertIn("[handlers] feed = 'feed.internal:10121' means POST https://feed.internal:10121/events", warning)
        self.assertIn("trusting the system's CAs (no [tls])", warning)
        self.assertIn("gRPC HandleEvent", warning)


class ErrorTests(SynchronousTestCase):
    def test_max_link_subscriptions(self) -> None:
        self.assertEqual(config.parse("").limits.max_link_subscriptions, 1000000)
        self.assertEqual(config.parse("[limits]\nmax_link_subscriptions = 0\n").limits.max_link_subscriptions, 0)
        self.assertConfigError("[limits]\nmax_link_subscriptions = -1\n", "[limits] max_link_subscriptions", "0 (no cap) or more")

    def assertConfigError(self, text: str, *fragments: str) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.parse(text, "patch.toml")
        message = str(caught.exception)
        self.assertTrue(message.startswith("patch.toml: "), message)
        self.assertNotIn("\n", message)
        for fragment in fragments:
            self.assertIn(fragment, message)

    def test_unknown_key(self) -> None:
        self.assertConfigError("[service]\nprot = 1\n", "[service] prot", "unknown key", "port")

    def test_unknown_section(self) -> None:
        self.assertConfigError("[sevrice]\nport = 1\n", "unknown section [sevrice]")

    def test_section_not_table(self) -> None:
        self.assertConfigError('service = "x"\n', "[service] must be a table")

    def test_wrong_type(self) -> None:
        self.assertConfigError('[service]\nport = "4222"\n', "[service] port", "must be an integer", "string")
        self.assertConfigError("[service]\nport = true\n", "[service] port", "must be an integer", "boolean")
        self.assertConfigError("[log]\nlevel = 3\n", "[log] level", "must be a string")
        self.assertConfigError("[limits]\nping_interval = \"2m\"\n", "[limits] ping_interval", "must be a number")

    def test_impossible_values(self) -> None:
        self.assertConfigError("[service]\nport = 70000\n", "[service] port", "between 0 and 65535")
        self.assertConfigError("[service]\nevent_limit = 0\n", "[service] event_limit", "at least 1")
        self.assertConfigError("[service]\nlistener_limit = -5\n", "[service] listener_limit")
        self.assertConfigError('[service]\nhost = ""\n', "[service] host")
        self.assertConfigError('[log]\nformat = "xml"\n', "[log] format", "text, json", "'xml'")
        self.assertConfigError('[log]\nlevel = "loud"\n', "[log] level")
        self.assertConfigError('[handlers]\nfeed = "nohost"\n', "[handlers] feed", "host:port")
        self.assertConfigError('[handlers]\nfeed = "h:notaport"\n', "[handlers] feed")
        self.assertConfigError("[limits]\nmax_payload = 0\n", "[limits] max_payload")
        self.assertConfigError("[limits]\nmax_payload = 2000\nmax_pending = 1000\n", "[limits] max_pending", "at least max_payload")
        self.assertConfigError("[limits]\nping_max = 0\n", "[limits] ping_max")
        self.assertConfigError("[limits]\nauth_timeout = 0\n", "[limits] auth_timeout", "positive")
        cluster = "[cluster]\nenabled = true\n"
        self.assertConfigError(cluster + 'client_advertise = "h:99999"\n', "[cluster] client_advertise", "host:port")
        self.assertConfigError(cluster + 'client_advertise = "a b"\n', "[cluster] client_advertise")
        self.assertEqual(config.parse(cluster + 'client_advertise = "nats.example.com:4222"\n').cluster.client_advertise, "nats.example.com:4222")
        self.assertConfigError(cluster + '[cluster.permissions]\nexport_allow = ["a..b"]\n', "[cluster.permissions] export_allow", "not a valid subject")
        self.assertConfigError(cluster + '[cluster.permissions]\nimport = ["a"]\n', "[cluster.permissions] import", "unknown key")
        parsed = config.parse(cluster + '[cluster.permissions]\nimport_allow = ["in.>"]\n')
        self.assertEqual((parsed.cluster.permissions.import_allow, parsed.cluster.permissions.export_allow), (("in.>",), ()))

    def test_batching(self) -> None:
        parsed = config.parse("[events]\nbatch_max = 100\nbatch_wait = 0.01\n[events.feed]\nbatch_max = 10\n[events.cfgingest]\nbatch_wait = 0\n")
        self.assertEqual(parsed.events.batching("feed"), (10, 0.01))
        self.assertEqual(parsed.events.batching("cfgingest"), (100, 0.0))
        self.assertEqual(parsed.events.batching("event_feed"), (100, 0.01))
        self.assertEqual(config.parse("").events.batching("feed"), (1, 0.005))
        self.assertConfigError("[events]\nbatch_max = 0\n", "[events] batch_max", "between 1 and 10000")
        self.assertConfigError("[events]\nbatch_wait = -1\n", "[events] batch_wait", "between 0 and 60")
        self.assertConfigError("[events.feed]\nbatch_max = -1\n", "[events.feed] batch_max", "0: [events] batch_max")
        self.assertConfigError("[events.feed]\nbatch_size = 5\n", "[events.feed] batch_size", "unknown key")
        self.assertConfigError("[events]\nfeed = 5\n", "[events] feed", "must be a table")

    def test_gateway_identities(self) -> None:
        base = "[gateway]\nenabled = true\ndisable_frontend_tls = true\n"
        parsed = config.parse(base + '[[gateway.identities]]\nname = "a"\ntoken = "t"\nsubscribe_allow = [">"]\n')
        (ident,) = parsed.gateway.identities
        self.assertEqual((ident.name, ident.subscribe_allow, ident.publish_allow), ("a", (">",), None))
        entry = "[[gateway.identities]]\n"
        self.assertConfigError(base + entry + 'token = "t"\n', "[gateway.identities] name", "missing in entry 1")
        self.assertConfigError(base + entry + 'name = "a"\n', "[gateway.identities] token", "one of the two")
        self.assertConfigError(base + entry + 'name = "a"\ntoken = "t"\nuser = "u"\npassword = "p"\n', "one of the two")
        self.assertConfigError(base + entry + 'name = "a"\nuser = "u"\n', "[gateway.identities] user", "needs a password")
        self.assertConfigError(base + (entry + 'name = "a"\ntoken = "t"\n') * 2, "[gateway.identities] name", "used twice")
        self.assertConfigError(base + entry + 'name = "a"\ntoken = "sha256:00"\n', "[gateway.identities] token", "64 hex")
        self.assertConfigError(base + entry + 'name = "a"\ntoken = "t"\nsubscribe_deny = ["a..b"]\n', "subscribe_deny", "not a valid subject")
        self.assertConfigError(base + '[gateway.users]\nu = "p"\n' + entry + 'name = "a"\nuser = "u"\npassword = "p"\n', "listed twice")

    def test_gateway(self) -> None:
        self.assertConfigError("[gateway]\nenabled = 1\n", "[gateway] enabled", "true or false")
        self.assertConfigError('[gateway]\nenabled = true\ntokens = ["t"]\n', "[gateway] frontend_tls", "disable_frontend_tls")
        self.assertConfigError("[gateway]\nenabled = true\ndisable_frontend_tls = true\n", "[gateway] tokens", "no way for agents")
        self.assertConfigError('[gateway]\ntokens = "t"\n', "[gateway] tokens", "list of strings")
        self.assertConfigError(
            '[gateway]\nenabled = true\ndisable_frontend_tls = true\ntokens = ["sha256:abc"]\n', "[gateway] tokens", "64 hex"
        )
        self.assertConfigError('[[gateway.frontend_tls]]\nserver = "x"\n', "[gateway.frontend_tls] server", "unknown key")
        self.assertConfigError(
            '[gateway]\nenabled = true\ndisable_frontend_tls = true\ntokens = ["t"]\n[gateway.permissions]\npublish_allow = ["a..b"]\n',
            "[gateway.permissions] publish_allow",
            "not a valid subject",
        )
        self.assertConfigError(
            '[service]\nport = 4222\nhost = "0.0.0.0"\n[gateway]\nenabled = true\ndisable_frontend_tls = true\ntokens = ["t"]\n',
            "[gateway] port",
            "service's port",
        )

    def test_gateway_paths_resolve(self) -> None:
        c = config.parse(
            '[gateway]\nenabled = true\ntokens_file = "t.txt"\n[[gateway.frontend_tls]]\nserver_name = "a"\n'
            'cert_path = "c/a.crt"\nkey_path = "/k/a.key"\n',
            "/etc/eventsvc/patch.toml",
        )
        self.assertEqual(c.gateway.tokens_file, "/etc/eventsvc/t.txt")
        # A runtime file: in the state directory, not beside the configuration.
        self.assertEqual(c.gateway.health_token_file, "/etc/eventsvc/patch.state/gateway-health.token")
        self.assertEqual(c.gateway.frontend_tls[0].cert_path, "/etc/eventsvc/c/a.crt")
        self.assertEqual(c.gateway.frontend_tls[0].key_path, "/k/a.key")
        # Agents subscribe to nothing by default (no one's replies).
        self.assertEqual(c.gateway.permissions.subscribe_allow, ())
        self.assertEqual(c.gateway.permissions.subscribe_deny, (">",))
        self.assertEqual(c.gateway.permissions.publish_allow, ("habitat.event.*",))

    def test_permission_lists_go_in_pairs(self) -> None:
        base = '[gateway]\ndisable_frontend_tls = true\ntokens = ["t"]\n[gateway.permissions]\n'
        c = config.parse(base + 'subscribe_allow = ["status.>"]\n')
        # Writing the allow list drops the default deny-everything, not the other way round.
        self.assertEqual((c.gateway.permissions.subscribe_allow, c.gateway.permissions.subscribe_deny), (("status.>",), ()))
        c = config.parse(base + 'publish_deny = ["habitat.event.secret"]\n')
        self.assertEqual((c.gateway.permissions.publish_allow, c.gateway.permissions.publish_deny), ((), ("habitat.event.secret",)))
        self.assertEqual(c.gateway.permissions.subscribe_deny, (">",))

    def test_private_inbox_needs_a_plain_name(self) -> None:
        self.assertConfigError(
            '[gateway]\ndisable_frontend_tls = true\n[[gateway.identities]]\nname = "a.b"\ntoken = "t"\nprivate_inbox = true\n',
            "[gateway.identities] private_inbox", "without dots",
        )

    def test_tls_timeout(self) -> None:
        """[tls] timeout and [gateway] tls_timeout: seconds (nats-server's tls { timeout }, default 2), never negative or a word."""
        self.assertEqual((config.parse("").tls.timeout, config.parse("").gateway.tls_timeout), (2.0, 2.0))
        c = config.parse('[tls]\ncert_path = "a.crt"\nkey_path = "a.key"\nroot_ca_path = "ca.crt"\ntimeout = 5\n'
                         '[gateway]\ntls_timeout = 0.5\ndisable_frontend_tls = true\ntokens = ["t"]\n', "/etc/e/e.toml")
        self.assertEqual((c.tls.timeout, c.tls.cert_path, c.gateway.tls_timeout), (5.0, "/etc/e/a.crt", 0.5))
        for value in ("-1", "0", "nan", "inf"):
            self.assertConfigError("[tls]\ntimeout = {}\n".format(value), "[tls] timeout: must be a positive number of seconds",
                                   "default 2")
        self.assertConfigError('[tls]\ntimeout = "3s"\n', "[tls] timeout", "must be a number", "string")
        self.assertConfigError("[tls]\ntimeout = true\n", "[tls] timeout", "must be a number")
        self.assertConfigError('[gateway]\ntls_timeout = -2\ndisable_frontend_tls = true\ntokens = ["t"]\n',
                               "[gateway] tls_timeout: must be a positive number of seconds")

    def test_tls_keys_go_together(self) -> None:
        self.assertConfigError('[tls]\ncert_path = "a.crt"\n', "[tls] key_path", "go together")

    def test_not_toml(self) -> None:
        self.assertConfigError("[service\nport = 1\n", "not valid TOML")

    def test_missing_file(self) -> None:
        path = os.path.join(self.mktemp(), "nope.toml")
        with self.assertRaises(ConfigError) as caught:
            config.load(path)
        self.assertIn(path, str(caught.exception))
        self.assertIn("cannot read", str(caught.exception))


class SectionPresenceTests(SynchronousTestCase):
    """A section that is written is on unless it says enabled = false, as in nats-server."""

    def test_written_sections_are_on(self) -> None:
        c = config.parse('[monitor]\nport = 8223\n[cluster]\nport = 6223\n[gateway]\ndisable_frontend_tls = true\ntokens = ["t"]\n')
        self.assertTrue(c.monitor.enabled)
        self.assertTrue(c.cluster.enabled)
        self.assertTrue(c.gateway.enabled)

    def test_an_empty_section_is_on(self) -> None:
        self.assertTrue(config.parse("[monitor]\n").monitor.enabled)

    def test_enabled_false_turns_it_off(self) -> None:
        c = config.parse("[monitor]\nenabled = false\nport = 8223\n[cluster]\nenabled = false\n")
        self.assertFalse(c.monitor.enabled)
        self.assertFalse(c.cluster.enabled)

    def test_absent_sections_keep_their_defaults(self) -> None:
        c = config.parse('[service]\nport = 4222\n')
        self.assertTrue(c.service.enabled)
        self.assertFalse(c.monitor.enabled)
        self.assertFalse(c.cluster.enabled)
        self.assertFalse(c.gateway.enabled)

    def test_a_half_written_gateway_is_checked(self) -> None:
        # Written means on, so what it lacks is an error, not silence.
        e = self.assertRaises(config.ConfigError, config.parse, "[gateway]\nport = 4223\n", "p.toml")
        self.assertIn("p.toml: [gateway] frontend_tls", str(e))


@dataclass(frozen=True)
class _Inner:
    depth: int = 0


@dataclass(frozen=True)
class _Section:
    """Spelt as a newer codebase would: builtin generics, and a nested class no table names."""

    subjects: tuple[str, ...] = ()
    maybe: Optional[tuple[str, ...]] = None
    routes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    inner: _Inner = field(default_factory=_Inner)
    entries: tuple[_Inner, ...] = ()
    ratio: float = 1.0


class FieldTypeTests(SynchronousTestCase):
    """Keys are read by their fields' real types, not by how the annotations are spelt."""

    def test_builtin_generics_and_any_class_name(self) -> None:
        got = config._section("<t>", "s", _Section, {
            "subjects": ["a.b"], "maybe": ["x"], "routes": {"k": ["v"]}, "inner": {"depth": 3},
            "entries": [{"depth": 1}, {"depth": 2}], "ratio": 2,
        })
        self.assertEqual(got, _Section(("a.b",), ("x",), {"k": ("v",)}, _Inner(3), (_Inner(1), _Inner(2)), 2.0))
        self.assertIsInstance(got.ratio, float)
        with self.assertRaises(ConfigError) as caught:
            config._section("<t>", "s", _Section, {"entries": [{"depth": "deep"}]})
        self.assertIn("[s.entries] depth: must be an integer", str(caught.exception))
        with self.assertRaises(ConfigError) as caught:
            config._section("<t>", "s", _Section, {"subjects": "a"})
        self.assertIn("[s] subjects: must be a list of strings", str(caught.exception))


class SuperclusterConfigTests(SynchronousTestCase):
    """[supercluster]: the NATS gateway protocol, apart from our [gateway] listener."""

    check = ErrorTests.assertConfigError

    def test_read(self) -> None:
        c = config.parse(
            '[supercluster]\nname = "event-service"\nport = 10147\n'
            '[[supercluster.gateways]]\nname = "event-gateway"\nurls = ["nats://127.0.0.1:10148", "10.0.0.2:10148"]\n'
        )
        self.assertTrue(c.supercluster.enabled)
        self.assertEqual(c.supercluster.name, "event-service")
        self.assertEqual(c.supercluster.port, 10147)
        self.assertEqual(
            c.supercluster.gateways,
            (config.RemoteGatewayConfig("event-gateway", ("nats://127.0.0.1:10148", "10.0.0.2:10148")),),
        )
        self.assertFalse(c.gateway.enabled)  # (the client listener is another thing)

    def test_mistakes(self) -> None:
        check = self.check
        check("[supercluster]\nport = 1\n", "[supercluster] name", "gateway name")
        check('[supercluster]\nname = "a b"\n', "[supercluster] name", "without spaces")
        check('[supercluster]\nname = "a"\nport = 70000\n', "[supercluster] port")
        check('[supercluster]\nname = "a"\nadvertise = "nohost"\n', "[supercluster] advertise", "host:port")
        check('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "b"\n', "[supercluster.gateways] urls", "#1 (b)", "at least one URL")
        check('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "b"\nurls = ["http://x:1"]\n', "[supercluster.gateways] urls", "nats://host:port")
        check('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "b"\nurls = ["nats://x:port"]\n', "[supercluster.gateways] urls")
        check('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "a"\nurls = ["x:1"]\n', "own name")
        check(
            '[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "b"\nurls = ["x:1"]\n[[supercluster.gateways]]\nname = "b"\nurls = ["x:2"]\n',
            "#2", "given twice",
        )
        check('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nurls = ["x:1"]\n', "[supercluster.gateways] name")
        check('[supercluster]\nname = "a"\ntls = true\n', "[supercluster] tls", "[tls]")
        check('[supercluster]\nname = "a"\n[[supercluster.gateways]]\nname = "b"\nurl = ["x:1"]\n', "unknown key", "urls")


class LeafnodesConfigTests(SynchronousTestCase):
    """[leafnodes] and [[leafnodes.remotes]], as nats-server's leafnodes block."""

    check = ErrorTests.assertConfigError

    def test_read(self) -> None:
        c = config.parse(
            '[leafnodes]\nport = 7422\nuser = "spoke"\npassword = "pw"\n'
            '[[leafnodes.remotes]]\nurl = "nats-leaf://hub.example:7422"\ntoken = "t"\n'
            '[[leafnodes.remotes]]\nurls = ["nats-leaf://a:7422", "nats-leaf://u:p@b:7422"]\n'
        )
        self.assertTrue(c.leafnodes.enabled and c.leafnodes.listen)
        self.assertEqual((c.leafnodes.user, c.leafnodes.password), ("spoke", "pw"))
        self.assertEqual(c.leafnodes.remotes[0], config.RemoteLeafConfig(url="nats-leaf://hub.example:7422", token="t"))
        self.assertEqual(c.leafnodes.remotes[1].urls, ("nats-leaf://a:7422", "nats-leaf://u:p@b:7422"))
        self.assertFalse(config.parse('[service]\nport = 4222\n').leafnodes.enabled)

    def test_mistakes(self) -> None:
        check = self.check
        check("[leafnodes]\nport = 70000\n", "[leafnodes] port")
        check('[leafnodes]\nuser = "u"\n', "[leafnodes] password", "needs a password")
        check('[leafnodes]\nuser = "u"\npassword = "p"\ntoken = "t"\n', "[leafnodes] token", "not both")
        check("[leafnodes]\nlisten = false\n", "[leafnodes] remotes", "at least one")
        check("[leafnodes]\n[[leafnodes.remotes]]\nuser = \"u\"\n", "[leafnodes.remotes] url", "#1", "needs a url")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "http://x:1"\n', "[leafnodes.remotes] url", "nats-leaf://host:port")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "nats-leaf://x"\n', "[leafnodes.remotes] url", "nats-leaf://host:port")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "tls://x:1"\n', "[leafnodes.remotes] tls", "#1", "needs [tls]")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "nats-leaf://x:1"\ntls = true\n', "[leafnodes.remotes] tls", "needs [tls]")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "ws://x:1"\n', "[leafnodes.remotes] url", "WebSocket", "not supported yet")
        check('[leafnodes]\ntls = true\n', "[leafnodes] tls", "needs [tls]")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "nats-leaf://x:1"\ntoken = "t"\nuser = "u"\n', "[leafnodes.remotes] token", "not both")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "nats-leaf://x:1"\ncredentials = "a.creds"\nuser = "u"\n', "[leafnodes.remotes] credentials", "one of them")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurl = "nats-leaf://x:1"\nseed = "SU"\n', "unknown key")
        check('[leafnodes]\n[[leafnodes.remotes]]\nurls = ["nats-leaf://x:1", "nats-leaf://y:1"]\ndeny_imports = ["a..b"]\n',
              "[leafnodes.remotes] deny_imports", "#1", "'a..b' is not a valid subject")

    def test_credentials_path_is_the_files(self) -> None:
        import os

        c = config.parse('[leafnodes]\n[[leafnodes.remotes]]\nurl = "nats-leaf://x:1"\ncredentials = "edge.creds"\n', "/etc/eventsvc/patch.toml")
        self.assertEqual(c.leafnodes.remotes[0].credentials, os.path.normpath("/etc/eventsvc/edge.creds"))


class WebSocketConfigTests(SynchronousTestCase):
    """[websocket] (nats-server's websocket block, with the gateway's authentication keys) and [console]."""

    check = ErrorTests.assertConfigError
    OPEN = '[websocket]\nno_tls = true\ntokens = ["t"]\n'
    CONSOLE = (
        '[websocket]\nno_tls = true\n[[websocket.identities]]\nname = "console"\ntoken = "c"\n'
        'subscribe_allow = [">"]\npublish_deny = [">"]\n[monitor]\n'
    )

    def test_read(self) -> None:
        c = config.parse(
            '[websocket]\nport = 9090\ncert_path = "ws.crt"\nkey_path = "ws.key"\nsame_origin = true\n'
            'allowed_origins = ["https://a.example"]\ncompression = true\ntokens = ["t"]\n'
            '[websocket.permissions]\nsubscribe_allow = ["app.>"]\n',
            "/etc/eventsvc/patch.toml",
        )
        ws = c.websocket
        self.assertTrue(ws.enabled and ws.same_origin and ws.compression)
        self.assertEqual((ws.host, ws.port), ("127.0.0.1", 9090))
        self.assertEqual((ws.cert_path, ws.key_path), ("/etc/eventsvc/ws.crt", "/etc/eventsvc/ws.key"))
        self.assertEqual(ws.allowed_origins, ("https://a.example",))
        # A written list replaces its pair: subscribe_deny no longer has the default ">".
        self.assertEqual((ws.permissions.subscribe_allow, ws.permissions.subscribe_deny), (("app.>",), ()))
        self.assertFalse(config.parse("[service]\n").websocket.enabled)
        self.assertFalse(config.parse("[service]\n").console.enabled)

    def test_mistakes(self) -> None:
        check = self.check
        check('[websocket]\ntokens = ["t"]\n', "[websocket] cert_path", "no_tls = true")
        check('[websocket]\nno_tls = true\ncert_path = "a"\ntokens = ["t"]\n', "[websocket] no_tls", "choose one")
        check("[websocket]\nno_tls = true\n", "[websocket] tokens", "no way for clients to authenticate")
        check(self.OPEN + "port = 70000\n", "[websocket] port")
        check(self.OPEN + "port = 10132\n", "[websocket] port", "service port")
        check(self.OPEN + 'allowed_origins = ["console.example"]\n', "[websocket] allowed_origins", "not an http")
        check(self.OPEN + "handshake_timeout = 0\n", "[websocket] handshake_timeout")
        check('[websocket]\nno_tls = true\n[[websocket.identities]]\nname = "x"\n', "[websocket.identities] token", "one of the two")
        check(self.OPEN + "[console]\n", "[console] enabled", "[monitor]")
        check("[monitor]\n[console]\n", "[console] enabled", "[websocket]")
        check(self.OPEN + "[monitor]\n[console]\n", "[console] identity", "'console' is not a [[websocket.identities]] name")
        check(self.CONSOLE + '[console]\nwebsocket_url = "http://x"\n', "[console] websocket_url", "ws://")
        check(self.CONSOLE.replace('token = "c"', 'token = "sha256:' + "0" * 64 + '"') + "[console]\n",
              "[console] identity", "the secret itself")

    def test_console(self) -> None:
        c = config.parse(self.CONSOLE + "[console]\n")
        self.assertEqual((c.console.enabled, c.console.identity, c.console.websocket_url), (True, "console", ""))


class ExampleConfigTests(SynchronousTestCase):
    """Every example configuration in dev/ loads and builds a service, as check-config would."""

    def test_dev_configs(self) -> None:
        import glob
        import os

        from twisted.internet.testing import MemoryReactorClock

        from eventsvc.app import make_service
        from eventsvc.test import process

        paths = sorted(glob.glob(os.path.join(process.source_tree(), "dev", "*.toml")))
        self.assertIn("service-supercluster.toml", [os.path.basename(p) for p in paths])
        self.assertIn("edge-leafnodes.toml", [os.path.basename(p) for p in paths])
        for path in paths:
            c = config.load(path)
            names = {s.name for s in make_service(c, MemoryReactorClock())}
            if c.supercluster.enabled:
                self.assertIn("supercluster", names, path)
            if c.leafnodes.enabled:
                self.assertIn("leafnodes", names, path)
