"""
INFO and CONNECT as data (L{eventsvc.nats.greeting}); the byte-for-byte
comparisons with nats-server are in test_interop_protocol.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

from twisted.trial.unittest import SynchronousTestCase

from eventsvc.nats.greeting import ConnectOptions, Greeting, client_info, decode_connect, info_line, lame_duck_info, read_connect
from eventsvc.nats.settings import ClientSettings, ListenerState


class _URLs:
    def __init__(self, urls):
        self.urls = urls

    def current(self):
        return list(self.urls)


def _broker(cluster="", urls=()):
    return SimpleNamespace(
        server_id="NID", server_name="n1", version="2.9.10", implementation="eventsvc/test",
        cluster_name=cluster, connect_urls=_URLs(urls),
    )


class ClientInfoTests(SynchronousTestCase):
    def test_field_order_and_defaults(self) -> None:
        settings = ClientSettings(host="127.0.0.1", port=0)
        state = ListenerState(settings)
        state.port = 4333
        info = client_info(_broker(), settings, state, 7, "10.0.0.9")
        self.assertEqual(list(info), [
            "server_id", "server_name", "version", "proto", "go", "host", "port", "headers",
            "max_payload", "client_id", "client_ip",
        ])
        self.assertEqual((info["port"], info["client_id"], info["client_ip"]), (4333, 7, "10.0.0.9"))

    def test_authentication_tls_cluster_and_urls(self) -> None:
        settings = ClientSettings(tls=object(), tls_verify=True, advertise=True)
        state = ListenerState(settings)
        state.authenticator = object()  # type: ignore[assignment]
        info = client_info(_broker("c1", ["10.0.0.1:4222"]), settings, state, 1, "")
        self.assertEqual(
            [k for k in info if k in ("auth_required", "tls_required", "tls_verify", "cluster", "connect_urls")],
            ["auth_required", "tls_required", "tls_verify", "cluster", "connect_urls"],
        )
        self.assertEqual(info["connect_urls"], ["10.0.0.1:4222"])

    def test_urls_only_where_advertised(self) -> None:
        settings = ClientSettings(advertise=False)
        info = client_info(_broker("c1", ["10.0.0.1:4222"]), settings, ListenerState(settings), 1, "")
        self.assertNotIn("connect_urls", info)

    def test_line(self) -> None:
        self.assertEqual(info_line({"a": 1, "b": [1, 2]}), b'INFO {"a":1,"b":[1,2]} \r\n')

    def test_greeting_line_is_info_line_of_client_info(self) -> None:
        """
        The kept greeting writes what info_line(client_info(...)) writes,
        byte for byte, for every client and after anything it says changes.
        """
        urls = ["10.0.0.1:4222"]
        broker = _broker("c1", urls)
        settings = ClientSettings(tls=object(), tls_verify=True, advertise=True, jetstream_domain="hub")
        state = ListenerState(settings)
        greeting = Greeting()

        def check(cid: int, ip: str) -> None:
            self.assertEqual(greeting.line(broker, settings, state, cid, ip), info_line(client_info(broker, settings, state, cid, ip)))

        check(1, "10.0.0.9")
        check(123456789, "::1")
        check(2, 'a"\\odd\u00e9')  # (never an address, but encoded as JSON all the same)
        state.port = 4333
        check(3, "10.0.0.9")
        state.authenticator = object()  # type: ignore[assignment]
        check(4, "10.0.0.9")
        urls.append("10.0.0.2:4222")
        check(5, "10.0.0.9")
        broker.cluster_name = ""
        del urls[:]
        check(6, "10.0.0.9")
        # Nothing after client_ip at all.
        plain = ClientSettings()
        check_plain = Greeting().line(_broker(), plain, ListenerState(plain), 7, "1.2.3.4")
        self.assertEqual(check_plain, info_line(client_info(_broker(), plain, ListenerState(plain), 7, "1.2.3.4")))
        self.assertTrue(check_plain.endswith(b'"client_id":7,"client_ip":"1.2.3.4"} \r\n'), check_plain)

    def test_lame_duck_names_the_others_only(self) -> None:
        info = {"server_id": "NID", "connect_urls": ["me:4222", "other:4222"]}
        ldm = lame_duck_info(info, ["other:4222"])
        self.assertEqual(ldm, {"server_id": "NID", "connect_urls": ["other:4222"], "ldm": True})
        self.assertEqual(info["connect_urls"], ["me:4222", "other:4222"], "the greeting INFO is not changed")
        self.assertNotIn("connect_urls", lame_duck_info(info, []))


class ConnectTests(SynchronousTestCase):
    def test_defaults_as_nats_server(self) -> None:
        self.assertEqual(ConnectOptions.read({}), ConnectOptions(
            verbose=True, pedantic=True, echo=True, headers=False, no_responders=False, protocol=0))

    def test_only_an_explicit_false_turns_off(self) -> None:
        options = ConnectOptions.read(decode_connect(json.dumps(
            {"verbose": False, "pedantic": None, "echo": False, "headers": True, "no_responders": True,
             "protocol": 1, "name": "n", "lang": "go", "version": "1.2"}).encode()))
        self.assertEqual(options, ConnectOptions(
            verbose=False, pedantic=True, echo=False, headers=True, no_responders=True, protocol=1,
            name="n", lang="go", version="1.2"))

    def test_wrong_types_refused(self) -> None:
        for bad in (b'{"verbose":"yes"}', b'{"protocol":true}', b'{"auth_token":5}', b"[1]", b"{"):
            self.assertRaises(ValueError, decode_connect, bad)
            self.assertRaises(ValueError, decode_connect, bad)

    def test_same_connect_again_is_a_dict_of_its_own(self) -> None:
        """A fleet's identical CONNECTs are decoded once, and each client still gets its own options."""
        arg = b'{"verbose":false,"lang":"go","version":"1.31.0","protocol":1,"headers":true,"no_responders":true}'
        first = decode_connect(arg)
        first["lang"] = "changed by the first client"
        first["extra"] = 1
        second = decode_connect(arg)
        self.assertEqual(second, {"verbose": False, "lang": "go", "version": "1.31.0", "protocol": 1, "headers": True, "no_responders": True})
        self.assertIsNot(second, decode_connect(arg))
        options, taken = read_connect(arg)
        self.assertEqual((options, taken), (second, ConnectOptions.read(second)))
        self.assertEqual(taken, ConnectOptions(verbose=False, headers=True, no_responders=True, protocol=1, lang="go", version="1.31.0"))

    def test_connect_with_credentials_or_nesting_is_not_kept(self) -> None:
        from eventsvc.nats import greeting

        for arg in (b'{"user":"u","pass":"secret"}', b'{"auth_token":"t"}', b'{"lang":"go","tags":["a"]}', b'{"lang":"' + b"x" * 2000 + b'"}'):
            options = decode_connect(arg)
            self.assertNotIn(arg, greeting._DECODED)
            self.assertEqual(decode_connect(arg), options)
        self.patch(greeting, "DECODED_MAX", 2)
        for k in range(5):
            decode_connect(b'{"name":"c%d"}' % k)
            self.assertLessEqual(len(greeting._DECODED), 2)

    def test_field_names_in_any_case(self) -> None:
        """
        nats-server reads CONNECT with Go's encoding/json, which matches a
        key to a field in any case (and C{ſ} as C{s}, the Kelvin sign as
        C{k}): C{"Auth_Token"} is the token, C{"Verbose":false} turns +OK
        off, and the last of two spellings wins.  Other look-alikes are
        not the field (C{"paß"} is not C{"pass"}).
        """
        self.assertEqual(decode_connect(b'{"Auth_Token":"t","USER":"u","Pa\\u017fs":"p","\\u212aind":1}'),
                         {"auth_token": "t", "user": "u", "pass": "p", "\u212aind": 1})
        self.assertEqual(ConnectOptions.read(decode_connect(b'{"Verbose":false,"ECHO":false,"Name":"n"}')),
                         ConnectOptions(verbose=False, echo=False, name="n"))
        self.assertEqual(decode_connect(b'{"verbose":false,"Verbose":true,"VERBOSE":false,"Verbose":true}'), {"verbose": True})
        self.assertEqual(decode_connect(b'{"verbose":false,"Verbose":null}'), {"verbose": False})
        self.assertEqual(decode_connect(b'{"pa\\u00df":"p","n\\u212aey":"k"}'), {"pa\u00df": "p", "nkey": "k"})
        self.assertRaises(ValueError, decode_connect, b'{"Verbose":"yes"}')

    def test_credentials_in_any_case_are_not_kept(self) -> None:
        """A CONNECT whose credentials are spelt in another case is as much a secret (nats-server takes them): never kept."""
        from eventsvc.nats import greeting

        for arg in (b'{"Pass":"s3cret","USER":"bob","verbose":false}', b'{"AUTH_TOKEN":"t"}', b'{"JWT":"j","Sig":"s"}', b'{"\\u0055ser":"u"}'):
            decode_connect(arg)
            self.assertNotIn(arg, greeting._DECODED)

    def test_null_as_go_reads_it(self) -> None:
        """
        Go's decoder leaves a bool, string or number field as it was on a
        C{null}, however it is spelt (so the value before it stands, and
        no value reads as nats-server's default); a slice or a pointer it
        sets to nil.
        """
        self.assertEqual(decode_connect(b'{"verbose":false,"verbose":null}'), {"verbose": False})
        self.assertEqual(ConnectOptions.read(decode_connect(b'{"verbose":false,"verbose":null}')), ConnectOptions(verbose=False))
        self.assertEqual(
            decode_connect(b'{"name":"n","protocol":1,"user":"u","name":null,"PROTOCOL":null,"User":null,"echo":null}'),
            {"name": "n", "protocol": 1, "user": "u"},
        )
        self.assertEqual(ConnectOptions.read(decode_connect(b'{"echo":null,"pedantic":null}')), ConnectOptions())
        self.assertEqual(decode_connect(b'{"import":{"allow":["a"]},"Import":null}'), {"import": None})
        self.assertEqual(decode_connect(b'{"export":null}'), {"export": None})

    def test_types_as_go_checks_them(self) -> None:
        """
        Every value for a field is checked, one a later key overrides too
        (Go reads it, fails, and nats-server closes the connection); an int
        is a 64-bit integer; ClientOpts' C{import} and C{export} are objects
        of C{allow} and C{deny} lists of strings, their names folded too;
        and the JSON is Go's (no C{NaN}, which Python reads).
        """
        for bad in (b'{"verbose":"x","verbose":true}', b'{"Name":1,"name":"n"}', b'{"protocol":9223372036854775808}',
                    b'{"protocol":1.0}', b'{"account":1}', b'{"new_account":"x"}', b'{"import":5}',
                    b'{"export":{"allow":"a"}}', b'{"import":{"deny":[1]}}', b'{"import":[]}', b'{"x":NaN}',
                    b'{"verbose":false,"n":[-Infinity]}'):
            self.assertRaises(ValueError, decode_connect, bad)
        self.assertEqual(decode_connect(b'{"protocol":-9223372036854775808}'), {"protocol": -(1 << 63)})
        self.assertEqual(
            decode_connect(b'{"Import":{"ALLOW":["a",null],"deny":null},"import":{"Deny":["d"]},"tags":{"x":1}}'),
            {"import": {"allow": ["a", ""], "deny": ["d"]}, "tags": {"x": 1}},
        )


class GoJSONTests(SynchronousTestCase):
    """L{eventsvc.nats.gojson}: a struct's fields read as Go's encoding/json reads them."""

    def test_fields_in_any_case_last_wins(self) -> None:
        from eventsvc.nats.gojson import BOOL, STRING, STRINGS, GoStruct

        struct = GoStruct({"deny_pub": STRINGS, "is_hub": BOOL, "cluster": STRING})
        self.assertEqual(struct.decode(b'{"Deny_Pub":["a","b"],"IS_HUB":false,"\\u212aind":1}'),
                         {"deny_pub": ["a", "b"], "is_hub": False, "\u212aind": 1})
        # (A null element keeps what the slice had there: Go decodes into the slice it has.)
        self.assertEqual(struct.decode(b'{"deny_pub":["a","b"],"deny_pub":[null,"c",null]}'), {"deny_pub": ["a", "c", ""]})
        self.assertEqual(struct.decode(b'{"deny_pub":["a"],"deny_pub":null}'), {"deny_pub": None})
        self.assertEqual(struct.decode(b'{"cluster":"c","Cluster":null,"is_hub":true,"is_hub":null}'), {"cluster": "c", "is_hub": True})
        for bad in (b'{"deny_pub":"a"}', b'{"deny_pub":[["a"]]}', b'{"is_hub":1}', b'{"cluster":["c"]}', b"[]", b"{"):
            self.assertRaises(ValueError, struct.decode, bad)
        # A colon in a value is no second key.
        self.assertEqual(struct.decode(b'{"cluster":"a:b","x":"c:"}'), {"cluster": "a:b", "x": "c:"})

    def test_a_slice_decoded_into_again_keeps_its_array(self) -> None:
        """
        A later key for a C{[]string} field decodes into the slice the
        field has, as Go's decoder does: a C{null} element keeps what the
        backing array holds there, past an earlier key's shorter length
        too, within the array's capacity (Go grows a full slice by half,
        at least to 4, copying only its length).  The answers are Go
        1.19's encoding/json, run on these texts.
        """
        from eventsvc.nats.gojson import PERMISSION, STRINGS, GoStruct

        struct = GoStruct({"deny_pub": STRINGS, "import": PERMISSION})
        for text, expected in [
            (b'{"deny_pub":["a","b","c"],"deny_pub":["x"],"deny_pub":[null,null,null]}', {"deny_pub": ["x", "b", "c"]}),
            (b'{"deny_pub":["a","b","c","d","e","f"],"deny_pub":["x"],"deny_pub":[null,null,null,null,null,null,null]}',
             {"deny_pub": ["x", "b", "c", "d", "e", "f", ""]}),
            (b'{"deny_pub":["a","b","c"],"deny_pub":null,"deny_pub":[null]}', {"deny_pub": [""]}),
            (b'{"deny_pub":["a","b","c"],"deny_pub":[],"deny_pub":[null]}', {"deny_pub": [""]}),
            (b'{"import":{"allow":["a","b","c"]},"import":{"allow":["x"]},"Import":{"allow":[null,null,null]}}',
             {"import": {"allow": ["x", "b", "c"]}}),
            (b'{"import":{"allow":["a","b","c"],"allow":["x"],"allow":[null,null]}}', {"import": {"allow": ["x", "b"]}}),
            (b'{"import":{"allow":["a","b","c"]},"import":null,"import":{"allow":[null,null]}}', {"import": {"allow": ["", ""]}}),
        ]:
            self.assertEqual(struct.decode(text), expected, text)

    def test_strings_as_go_reads_them(self) -> None:
        """
        Go's decoder reads a surrogate escape without its pair as U+FFFD (a
        pair as its character), and invalid UTF-8 as one U+FFFD a byte
        (Python's own decoders: the surrogate kept, one U+FFFD for a
        truncated sequence).  A password is compared as Go read it: a
        client sending C{"\\xe2\\x82"} to a user whose password is
        U+FFFD is refused by nats-server, and one sending C{"\\ud800"}
        logs in.  Keys too; a CONNECT without an escape is read as before.
        """
        self.assertEqual(decode_connect(b'{"pass":"\\ud800"}'), {"pass": "\ufffd"})
        self.assertEqual(decode_connect(b'{"pass":"\\udc00\\ud800x\\ud83d\\ude00"}'), {"pass": "\ufffd\ufffdx\U0001f600"})
        self.assertEqual(decode_connect(b'{"pass":"\xe2\x82"}'), {"pass": "\ufffd\ufffd"})
        self.assertEqual(decode_connect(b'{"user":"\xf0\x9f\x98","pass":"\xed\xa0\x80","name":"\xc0\xaf"}'),
                         {"user": "\ufffd" * 3, "pass": "\ufffd" * 3, "name": "\ufffd" * 2})
        # (The ordered reading too: a key twice, a null, a list, an object.)
        self.assertEqual(decode_connect(b'{"User":"\\udfff","pass":null,"x\\ud800":["\\ud800"],"import":{"allow":["\\udbff"]}}'),
                         {"user": "\ufffd", "x\ufffd": ["\ufffd"], "import": {"allow": ["\ufffd"]}})
        self.assertEqual(decode_connect(b'{"name":"\\u00e9\xe2\x82"}'), {"name": "\u00e9\ufffd\ufffd"})

    def test_go_quote(self) -> None:
        """Go's %q, as nats-server words a gateway's name in an error."""
        from eventsvc.nats.gojson import go_quote

        self.assertEqual(go_quote("B"), '"B"')
        self.assertEqual(go_quote('a"b\\c\n\x01\x7f\u00e9\u200b\U0001f600'), '"a\\"b\\\\c\\n\\x01\\x7f\u00e9\\u200b\U0001f600"')
