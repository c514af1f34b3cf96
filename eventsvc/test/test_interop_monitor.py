"""
The monitoring endpoints of eventsvc and of nats-server for the same scene:
the same field names, and the same values where the scene decides them.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.request

from twisted.internet import threads
from twisted.trial.unittest import TestCase

from eventsvc.test import process

# Fields of nats-server's /varz that have no meaning here (no accounts).
VARZ_ABSENT = {"system_account"}
# Values the scene decides.
VARZ_SAME = (
    "proto", "max_connections", "ping_interval", "ping_max", "auth_timeout", "max_control_line", "max_payload",
    "max_pending", "tls_timeout", "write_deadline", "connections", "total_connections", "routes", "remotes",
    "leafnodes", "in_msgs", "out_msgs", "in_bytes", "out_bytes", "slow_consumers", "http_base_path", "https_port",
)
CONN_SAME = (
    "kind", "type", "ip", "pending_bytes", "in_msgs", "out_msgs", "in_bytes", "out_bytes", "subscriptions",
    "name", "lang", "version", "subscriptions_list", "reason",
)


def scene(port: int) -> list:
    """Two clients that stay (returned, keep them open) and one that comes and goes."""
    a = socket.create_connection(("127.0.0.1", port))
    a.recv(4096)
    a.sendall(b'CONNECT {"verbose":false,"name":"alice","lang":"python","version":"1.0"}\r\nSUB foo 1\r\nSUB bar q 2\r\nPING\r\n')
    _until(a, b"PONG\r\n")
    b = socket.create_connection(("127.0.0.1", port))
    b.recv(4096)
    b.sendall(b'CONNECT {"verbose":false}\r\nPUB foo 5\r\nhello\r\nPUB bar 3\r\nabc\r\nPING\r\n')
    _until(b, b"PONG\r\n")
    _until(a, b"abc\r\n")
    c = socket.create_connection(("127.0.0.1", port))
    c.recv(4096)
    c.sendall(b'CONNECT {"verbose":false,"name":"brief"}\r\nPING\r\n')
    _until(c, b"PONG\r\n")
    c.close()
    time.sleep(0.3)
    return [a, b]


def _until(sock, end: bytes) -> None:
    data = b""
    while not data.endswith(end):
        data += sock.recv(4096)


def fetch(port: int, path: str) -> "tuple[int, dict]":
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def fetch_text(port: int, path: str) -> "tuple[int, str]":
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


# /connz orders: the scene decides them (no ties).
SORTED = ("sort=cid", "sort=subs", "sort=msgs_to", "sort=msgs_from", "sort=bytes_to", "sort=bytes_from", "cid={second}",
          "state=closed&sort=reason", "state=closed&sort=stop", "limit=0", "offset=5")
# Parameters nats-server refuses, with its status and words.
REFUSED = ("sort=bogus", "sort=stop", "sort=reason", "offset=x", "limit=1.5", "state=weird", "subs=maybe")


# What the scene's subscriptions look like on both (cid apart, compared by
# position). msgs apart: nats-server counts every subscription's messages,
# eventsvc only those of a subscription with an auto-unsubscribe max (its
# delivery path does not touch the subscription otherwise).
SUB_SAME = ("account", "subject", "qgroup", "sid", "max")


def scene_subs(listed: list, first_cid: int, scene_subjects: "tuple[str, ...]" = ("foo", "bar")) -> list:
    """The scene's subscriptions in a list (not the servers' own), cid counted from the scene's first, in subject order."""
    rows = [dict(row, cid=row["cid"] - first_cid) for row in listed if row["subject"] in scene_subjects]
    return sorted(rows, key=lambda row: row["subject"])


class MonitorInteropTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        # Both monitors where the kernel puts them (nats-server's -m -1), read from the logs.
        self.reference = process.nats_server("-m", "-1", expect=("http",))
        self.reference.start()
        self.addCleanup(self.reference.stop)
        self.nats_http = self.reference.ports["http"]
        path = process.write_config(
            os.path.join(self.mktemp() + ".toml"),
            '[service]\nhost = "127.0.0.1"\nport = 0\nlistener_limit = 65536\n[monitor]\nenabled = true\nport = 0\n',
        )
        self.ours = process.eventsvc(path, expect=("service", "monitor"))
        self.ours.start()
        self.addCleanup(self.ours.stop)
        self.http = self.ours.ports["monitor"]

    def test_same_fields_same_values(self):
        def run():
            problems = []
            open_sockets = scene(self.reference.port) + scene(self.ours.port)
            pages = {}
            for name, http in (("nats-server", self.nats_http), ("eventsvc", self.http)):
                pages[name] = {p: fetch(http, p) for p in ("/varz", "/connz?subs=1", "/connz?state=closed", "/subsz", "/routez", "/healthz")}
            ref, ours = pages["nats-server"], pages["eventsvc"]
            for path in ref:
                if ref[path][0] != ours[path][0]:
                    problems.append("{}: status {} vs {}".format(path, ref[path][0], ours[path][0]))
                missing = set(ref[path][1]) - set(ours[path][1]) - VARZ_ABSENT
                if missing:
                    problems.append("{}: eventsvc lacks {}".format(path, sorted(missing)))
            rv, ov = ref["/varz"][1], ours["/varz"][1]
            for key in VARZ_SAME:
                if rv.get(key) != ov.get(key):
                    problems.append("/varz {}: {!r} vs {!r}".format(key, rv.get(key), ov.get(key)))
            for path in ("/connz?subs=1", "/connz?state=closed"):
                rc, oc = ref[path][1]["connections"], ours[path][1]["connections"]
                if len(rc) != len(oc):
                    problems.append("{}: {} vs {} connections".format(path, len(rc), len(oc)))
                for r, o in zip(rc, oc):
                    missing = set(r) - set(o)
                    if missing:
                        problems.append("{} connection lacks {}".format(path, sorted(missing)))
                    for key in CONN_SAME:
                        if key == "pending_bytes" and "closed" in path:
                            # What nats-server still held when the socket closed: timing.
                            continue
                        ref_value, our_value = r.get(key), o.get(key)
                        if key == "subscriptions_list" and ref_value and our_value:
                            # nats-server lists a connection's subscriptions from a Go map: any order.
                            ref_value, our_value = sorted(ref_value), sorted(our_value)
                        if ref_value != our_value:
                            problems.append("{} {}: {!r} vs {!r}".format(path, key, ref_value, our_value))
                for key in ("num_connections", "total", "offset", "limit"):
                    if ref[path][1][key] != ours[path][1][key]:
                        problems.append("{} {}: {!r} vs {!r}".format(path, key, ref[path][1][key], ours[path][1][key]))
            # nats-server's first client id is not 1 (it has internal clients):
            # compare positions in the scene, counted from each one's first.
            first = {http: fetch(http, "/connz?state=any")[1]["connections"][0]["cid"] for http in (self.nats_http, self.http)}
            for query in SORTED:
                pages = []
                for http in (self.nats_http, self.http):
                    code, page = fetch(http, "/connz?" + query.format(second=first[http] + 1))
                    pages.append((code, [c["cid"] - first[http] for c in page["connections"]], page["limit"], page["offset"]))
                if pages[0] != pages[1]:
                    problems.append("/connz?{}: {} vs {}".format(query, pages[0], pages[1]))
            for query in REFUSED:
                path = "/connz?" + query
                r, o = fetch_text(self.nats_http, path), fetch_text(self.http, path)
                if r != o:
                    problems.append("{}: {!r} vs {!r}".format(path, r, o))
            if ref["/routez"][1]["num_routes"] != ours["/routez"][1]["num_routes"]:
                problems.append("/routez num_routes differs")
            if ref["/healthz"][1] != ours["/healthz"][1]:
                problems.append("/healthz differs")
            for sock in open_sockets:
                sock.close()
            return problems

        d = threads.deferToThread(run)
        d.addCallback(lambda problems: self.assertEqual(problems, [], "\n".join(problems)))
        return d

    def test_subscription_lists(self):
        """/subsz?subs=1 (with test, offset and limit) and /connz?subs=detail: nats-server's shapes, and its values where the scene decides them."""

        def run():
            problems = []
            open_sockets = scene(self.reference.port) + scene(self.ours.port)
            first = {http: fetch(http, "/connz?state=any")[1]["connections"][0]["cid"] for http in (self.nats_http, self.http)}
            ref, ours = ({path: fetch(http, path) for path in (
                "/subsz?subs=1", "/subsz?subs=1&test=foo", "/subsz?subs=1&test=nothing", "/subsz?subs=1&offset=1&limit=2",
                "/connz?subs=detail", "/connz?subs=Detail",
            )} for http in (self.nats_http, self.http))
            for path in ref:
                (rcode, rbody), (ocode, obody) = ref[path], ours[path]
                if rcode != ocode:
                    problems.append("{}: status {} vs {}".format(path, rcode, ocode))
                if list(rbody) != list(obody):
                    problems.append("{}: keys {} vs {}".format(path, list(rbody), list(obody)))
            for path in ("/subsz?subs=1", "/subsz?subs=1&test=foo"):
                rows = [scene_subs(side[path][1].get("subscriptions_list", []), first[http])
                        for side, http in ((ref, self.nats_http), (ours, self.http))]
                if [sorted(r) for r in rows[0]] != [sorted(o) for o in rows[1]]:
                    problems.append("{}: fields {} vs {}".format(path, rows[0], rows[1]))
                for r, o in zip(*rows):
                    for key in SUB_SAME + ("cid",):
                        if r.get(key) != o.get(key):
                            problems.append("{} {} {}: {!r} vs {!r}".format(path, r["subject"], key, r.get(key), o.get(key)))
                if len(rows[0]) != len(rows[1]) or not rows[0]:
                    problems.append("{}: {} vs {} of the scene's subscriptions".format(path, len(rows[0]), len(rows[1])))
            page = "/subsz?subs=1&offset=1&limit=2"
            for key in ("total", "offset", "limit"):
                if ref[page][1].get(key) != ours[page][1].get(key):
                    problems.append("{} {}: {!r} vs {!r}".format(page, key, ref[page][1].get(key), ours[page][1].get(key)))
            for path in ("/connz?subs=detail", "/connz?subs=Detail"):
                for r, o in zip(ref[path][1]["connections"], ours[path][1]["connections"]):
                    if ("subscriptions_list" in r, "subscriptions_list_detail" in r) != ("subscriptions_list" in o, "subscriptions_list_detail" in o):
                        problems.append("{}: lists {} vs {}".format(path, sorted(r), sorted(o)))
                    rows = [scene_subs([dict(row, account="") for row in c.get("subscriptions_list_detail", [])], first[http])
                            for c, http in ((r, self.nats_http), (o, self.http))]
                    if [sorted(x) for x in rows[0]] != [sorted(x) for x in rows[1]]:
                        problems.append("{}: fields {} vs {}".format(path, rows[0], rows[1]))
                    for a, b in zip(*rows):
                        for key in SUB_SAME + ("cid",):
                            if a.get(key) != b.get(key):
                                problems.append("{} {} {}: {!r} vs {!r}".format(path, a["subject"], key, a.get(key), b.get(key)))
            for query in ("subs=detail", "subs=2", "test=foo.*", "test=", "limit=x"):
                path = "/subsz?" + query
                r, o = fetch_text(self.nats_http, path), fetch_text(self.http, path)
                if r[0] != o[0] or (r[0] != 200 and r != o):
                    problems.append("{}: {!r} vs {!r}".format(path, r, o))
            for sock in open_sockets:
                sock.close()
            return problems

        d = threads.deferToThread(run)
        d.addCallback(lambda problems: self.assertEqual(problems, [], "\n".join(problems)))
        return d
