"""
The object store through real clients (nats-py's C{create_object_store},
nats.go's C{ObjectStore} in interop/go/objinterop.go), against a real
eventsvc process and, as the contract, C{nats-server -js}.

An object is a meta message (C{$O.<bucket>.M.<name>}, rolled up) and
chunks of 128 KiB (C{$O.<bucket>.C.<nuid>}); what the server must give is
plain JetStream: rollups, purge by subject, last-by-subject gets, wildcard
last-message gets and ordered push consumers with flow control.  The scene
tests play put, get, info, list, update, links, watch, delete, status and
seal with each client (nats.js v3's @nats-io/obj too, interop/js/objinterop.mjs)
and expect the same answer from both servers.
L{BigObjectTests} puts objects of 10 and 64 MiB into a file store, restarts
the server, reads them back and checks the digests, then deletes them and
checks the space is given back; it does the same on nats-server in the
same run and prints both servers' times and memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import platform
import signal
import sys
import time
from typing import Any, Dict, List, Tuple

from twisted.internet import threads
from twisted.trial.unittest import SkipTest, TestCase

from eventsvc.test import process
from eventsvc.test.test_interop_jetstream import eventsvc_server, go_program, jetstream_missing, missing, run_json

try:
    import nats
except ImportError:  # pragma: no cover - the test extra installs it
    nats = None  # type: ignore[assignment]

MiB = 1024 * 1024

#: What nats.go's object scene (objinterop.go's objectScene) reports, on both servers.
GO_EXPECTED: Dict[str, Any] = {
    "initial_nil": True,
    # 3 x 128 KiB + 100 bytes: four chunks, the digest the client computed, the bytes back.
    "big": [393316, 4, True, True],
    "small": [12, 3, "five byte chunks", "test", "0123456789ab"],
    "replaced": "alpha two",
    # UpdateMeta renames: the new name serves the old chunks, the old name is gone.
    "renamed": ["renamed", "changed", "0123456789ab", True],
    # A link to an object, a link to a bucket, a link to an object in the other bucket.
    "links": [True, "GO_FILES_OTHER", "in the other bucket"],
    # Deleted: Get says not found, GetInfo with ShowDeleted says deleted, size 0.
    "deleted": [True, True, 0],
    "list": ["a.txt", "link.bin", "other", "renamed", "there.link"],
    "status": ["GO_FILES", "go scene", "JetStream", False],
    "stream": [["$O.GO_FILES.C.>", "$O.GO_FILES.M.>"], True, "DiscardNew"],
    "watched": [["big.bin", False], ["a.txt", False], ["small", False], ["a.txt", False], ["renamed", False],
                ["link.bin", False], ["other", False], ["there.link", False], ["big.bin", True]],
    # Sealed: Status says so and a put is refused.
    "sealed": [True, True],
    "bucket_gone": True,
    # A watcher with IgnoreDeletes: the current metas, then its nil.
    "current": ["a.txt", "link.bin", "other", "renamed", "there.link"],
    # ObjectStoreNames (nats.go 1.22.1 gives the streams' names) and ObjectStores.
    "buckets": [["OBJ_GO_FILES", "OBJ_GO_FILES_OTHER"], ["GO_FILES", "GO_FILES_OTHER"]],
}

#: What nats.js v3's object scene (interop/js/objinterop.mjs) reports, on both servers.
JS_EXPECTED: Dict[str, Any] = {
    "big": [393316, 4, True, True],
    "small": [12, 3, "five byte chunks", "0123456789ab"],
    "replaced": "alpha two",
    "renamed": ["renamed", "changed", "0123456789ab", True],
    "links": [True, "JS_FILES_OTHER", "in the other bucket"],
    # Deleted: get gives nothing, info says deleted.
    "deleted": [True, True],
    "list": ["a.txt", "link.bin", "other", "renamed", "there.link"],
    "status": ["JS_FILES", "js scene", "JetStream", False],
    "watched": GO_EXPECTED["watched"],
    "sealed": [True, True],
    "bucket_gone": True,
}

#: What the nats-py scene (L{natspy_scene}) reports, on both servers.
PY_EXPECTED: Dict[str, Any] = {
    "bad_name": "InvalidBucketNameError",
    "config": {"name": "OBJ_PY_FILES", "description": "py scene", "subjects": ["$O.PY_FILES.C.>", "$O.PY_FILES.M.>"],
               "discard": "new", "allow_rollup_hdrs": True, "allow_direct": True, "storage": "file",
               "max_msgs_per_subject": -1},
    "initial": None,
    "big": [393316, 4, True, True],
    "meta": [12, 3, "five byte chunks", {"X-Kind": "test"}, 5, b"0123456789ab"],
    "replaced": [b"alpha two", 1],
    "updated": "changed",
    "list": [["a.txt", False], ["big.bin", False], ["small", False]],
    "deleted": ["ObjectNotFoundError", True, 0],
    "list_after": [["a.txt", False], ["big.bin", True], ["small", False]],
    "watched": [["big.bin", False], ["a.txt", False], ["small", False], ["a.txt", False], ["small", False],
                ["big.bin", True]],
    "no_more": True,
    # The deleted object's chunks are purged: only the three meta messages and a.txt's and small's chunks.
    "messages": 3 + 1 + 3,
    "sealed": [True, "BadRequestError"],
    "gone": "BucketNotFoundError",
}


def digest(data: bytes) -> str:
    """The object store's digest of C{data}, as the clients write it."""
    return "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


async def natspy_scene(url: str) -> Dict[str, Any]:
    """
    nats-py's object store: create (and a refused name), watch, put bytes,
    a string and an object with meta and 5-byte chunks, get, replace,
    update_meta, list, delete, get a deleted object, status, seal and
    delete the bucket; what a user of nats-py sees.
    """
    from nats.js import api, errors

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        out: Dict[str, Any] = {}
        try:
            await js.create_object_store(bucket="not ok!")
        except errors.InvalidBucketNameError as e:
            out["bad_name"] = type(e).__name__
        obs = await js.create_object_store("PY_FILES", config=api.ObjectStoreConfig(description="py scene"))
        config = (await obs.status()).stream_info.config
        out["config"] = {"name": config.name, "description": config.description, "subjects": config.subjects,
                         "discard": config.discard, "allow_rollup_hdrs": config.allow_rollup_hdrs,
                         "allow_direct": config.allow_direct, "storage": config.storage,
                         "max_msgs_per_subject": config.max_msgs_per_subject}
        watcher = await obs.watch()
        out["initial"] = await watcher.updates(timeout=5)
        big = os.urandom(3 * 128 * 1024 + 100)
        info = await obs.put("big.bin", big)
        got = await obs.get("big.bin")
        out["big"] = [info.size, info.chunks, info.digest == digest(big), got.data == big]
        await obs.put("a.txt", "alpha")
        await obs.put("small", b"0123456789ab", meta=api.ObjectMeta(
            description="five byte chunks", headers={"X-Kind": "test"},
            options=api.ObjectMetaOptions(max_chunk_size=5)))
        small = await obs.get("small")
        assert small.info.options is not None
        out["meta"] = [small.info.size, small.info.chunks, small.info.description, small.info.headers,
                       small.info.options.max_chunk_size, small.data]
        await obs.put("a.txt", b"alpha two")
        replaced = await obs.get("a.txt")
        out["replaced"] = [replaced.data, replaced.info.chunks]
        meta = small.info.meta
        meta.description = "changed"
        await obs.update_meta("small", meta)
        out["updated"] = (await obs.get_info("small")).description
        out["list"] = sorted([e.name, bool(e.deleted)] for e in await obs.list())
        await obs.delete("big.bin")
        try:
            await obs.get("big.bin")
        except errors.ObjectNotFoundError as e:
            gone = type(e).__name__
        shown = await obs.get("big.bin", show_deleted=True)
        out["deleted"] = [gone, shown.info.deleted, shown.info.size]
        out["list_after"] = sorted([e.name, bool(e.deleted)] for e in await obs.list())
        watched = []
        for _ in range(6):
            update = await watcher.updates(timeout=5)
            watched.append([update.name, bool(update.deleted)])
        out["watched"] = watched
        try:
            await watcher.updates(timeout=0.5)
            out["no_more"] = False
        except nats.errors.TimeoutError:
            out["no_more"] = True
        await watcher.stop()
        out["messages"] = (await obs.status()).stream_info.state.messages
        await obs.seal()
        try:
            await obs.put("late", b"refused")
            refused = "stored"
        except errors.BadRequestError as e:
            refused = type(e).__name__
        out["sealed"] = [(await obs.status()).sealed, refused]
        await js.delete_object_store("PY_FILES")
        try:
            await js.object_store("PY_FILES")
        except errors.BucketNotFoundError as e:
            out["gone"] = type(e).__name__
        return out
    finally:
        await nc.close()


class _ObjectScenes(TestCase):
    """Each client's object scene; a subclass says how to start its server."""

    timeout = 120

    def start_server(self, store: str) -> process.ServerProcess:
        """The server under test, not yet started, keeping its JetStream files in C{store}."""
        raise NotImplementedError

    async def url(self) -> str:
        store = os.path.abspath(self.mktemp())
        port = await process.started(self, self.start_server(store))
        return "nats://127.0.0.1:%d" % port

    async def test_natspy(self) -> None:
        """nats-py: put, get, info, list, update_meta, watch, delete, status, seal, delete the bucket."""
        if nats is None:
            missing("nats-py is not installed (pip install nats-py)")
        url = await self.url()
        got = await threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(natspy_scene(url), 60)))
        self.assertEqual(got, PY_EXPECTED)

    async def test_js(self) -> None:
        """nats.js v3 (@nats-io/obj): putBlob, getBlob, info, update, list, watch, link, linkStore, delete, status, seal."""
        path = os.path.join(process.source_tree(), "interop", "js")
        if not os.path.isdir(os.path.join(path, "node_modules", "@nats-io", "obj")):
            missing("nats.js's object store is not installed: npm ci --prefix interop/js")
        node = process.require("node")
        url = await self.url()
        got = await threads.deferToThread(run_json, [node, "--no-warnings", "objinterop.mjs", url, "js"], path)
        self.assertEqual(got, JS_EXPECTED)

    async def test_go(self) -> None:
        """nats.go: Put, Get, GetInfo, UpdateMeta, List, Watch, AddLink, AddBucketLink, Delete, Status, Seal."""
        program = go_program()
        url = await self.url()
        got = await threads.deferToThread(run_json, [program, "os", url, "scene", "go"])
        self.assertEqual(got, GO_EXPECTED)


def reference_server(store: str) -> process.ServerProcess:
    """nats-server -js with its file store in C{store}."""
    return process.nats_server("-js", "-sd", store)


class EventsvcObjectStoreTests(_ObjectScenes):
    """The scenes against eventsvc with a [jetstream] section (a file store)."""

    def start_server(self, store: str) -> process.ServerProcess:
        return eventsvc_server(store)


class ReferenceObjectStoreTests(_ObjectScenes):
    """The same scenes against nats-server -js: the contract."""

    def start_server(self, store: str) -> process.ServerProcess:
        return reference_server(store)


del _ObjectScenes  # only its subclasses run


def memory(pid: int) -> Tuple[int, int]:
    """(resident, peak resident) bytes of process C{pid}, from /proc."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    return int(fields["VmRSS"][0]) * 1024, int(fields["VmHWM"][0]) * 1024


def reset_peak(pid: int) -> None:
    """Start C{pid}'s peak resident size again from now (Linux's clear_refs 5)."""
    with open("/proc/%d/clear_refs" % pid, "w") as f:
        f.write("5")


def file_bytes(folder: str) -> int:
    """The bytes of every file under C{folder}."""
    return sum(os.path.getsize(os.path.join(d, name)) for d, _, names in os.walk(folder) for name in names)


async def stream_state(url: str, stream: str) -> Any:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state
    finally:
        await nc.close()


async def natspy_get(url: str, bucket: str, name: str) -> str:
    """nats-py's get of C{name}: the digest of what it read."""
    nc = await nats.connect(url)
    try:
        obs = await nc.jetstream().object_store(bucket)
        return digest((await obs.get(name)).data or b"")
    finally:
        await nc.close()


async def natspy_delete(url: str, bucket: str, names: List[str]) -> None:
    nc = await nats.connect(url)
    try:
        obs = await nc.jetstream().object_store(bucket)
        for name in names:
            await obs.delete(name)
    finally:
        await nc.close()


def in_loop(coroutine: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coroutine, 120))


#: The objects of the big test: name and size.
BIG = (("ten", 10 * MiB), ("sixty-four", 64 * MiB))


class BigObjectTests(TestCase):
    """
    Objects of 10 and 64 MiB in a file store, through a restart, on eventsvc
    and on nats-server in the same run: digests, time and memory.
    """

    timeout = 600

    def play(self, name: str, make: Any, stop_signal: int) -> Dict[str, Any]:
        """
        On the server C{make} gives: nats.go puts both objects, the server is
        stopped with C{stop_signal} and started again on the same files,
        nats.go reads both back and nats-py the 10 MiB one, then nats-py
        deletes both.  Runs in a thread; the figures for the report.
        """
        program = go_program()
        store = os.path.abspath(self.mktemp())
        server = make(store)
        server.start()
        self.addCleanup(server.stop)
        url = "nats://127.0.0.1:%d" % server.port
        assert server.process is not None
        pid = server.process.pid
        figures: Dict[str, Any] = {"server": name, "rss_idle": memory(pid)[0]}
        reset_peak(pid)
        put: Dict[str, Any] = {}
        for obj, size in BIG:
            put[obj] = run_json([program, "os", url, "put", "BIG", obj, str(size)])
            self.assertEqual((put[obj]["size"], put[obj]["chunks"]), (size, size // (128 * 1024)), name)
            self.assertEqual(put[obj]["info_digest"], put[obj]["digest"], name)
            figures["put_" + obj] = put[obj]["seconds"]
        figures["rss_peak_put"] = memory(pid)[1]
        stored = in_loop(stream_state(url, "OBJ_BIG"))
        self.assertEqual(stored.messages, 10 * 8 + 64 * 8 + 2, name)
        self.assertGreater(stored.bytes, 74 * MiB, name)

        # The same files, a new process.
        server.stop(stop_signal)
        server = make(store)
        server.start()
        self.addCleanup(server.stop)
        url = "nats://127.0.0.1:%d" % server.port
        assert server.process is not None
        pid = server.process.pid
        figures["rss_restarted"] = memory(pid)[0]
        reset_peak(pid)
        for obj, size in BIG:
            got = run_json([program, "os", url, "get", "BIG", obj])
            self.assertEqual((got["size"], got["digest"]), (size, put[obj]["digest"]), name)
            figures["get_" + obj] = got["seconds"]
        figures["rss_peak_get"] = memory(pid)[1]
        self.assertEqual(in_loop(natspy_get(url, "BIG", "ten")), put["ten"]["digest"], name)
        self.assertEqual(in_loop(stream_state(url, "OBJ_BIG")).messages, stored.messages, name)

        # Deleting both purges their chunks: two meta messages are left, and the files go.
        figures["files_before_delete"] = file_bytes(store)
        in_loop(natspy_delete(url, "BIG", [obj for obj, _ in BIG]))
        left = in_loop(stream_state(url, "OBJ_BIG"))
        self.assertEqual((left.messages, left.last_seq), (2, stored.last_seq + 2), name)
        figures["first_seq_after_delete"] = left.first_seq
        if name == "eventsvc":
            # The two delete markers are all that is left.  nats-server 2.9.10 says
            # 127 here: its file store keeps a stale first after purges by subject.
            self.assertEqual(left.first_seq, stored.last_seq + 1)
        self.assertLess(left.bytes, 4096, name)
        # eventsvc removes a segment once its messages are all gone (a file of the
        # last, partly filled segment is left); nats-server 2.9.10 keeps ~3 MiB here.
        enough = MiB if name == "eventsvc" else figures["files_before_delete"] // 10
        deadline = time.monotonic() + 10
        while file_bytes(store) > enough and time.monotonic() < deadline:
            time.sleep(0.1)
        figures["files_after_delete"] = file_bytes(store)
        self.assertLess(figures["files_after_delete"], enough, name)
        return figures

    async def test_big_objects(self) -> None:
        """
        10 and 64 MiB objects: put, restart (eventsvc killed with SIGKILL, its
        PubAck promising the chunk reached the OS), get with both clients, the
        digests equal; delete gives the space back.  Then the same on
        nats-server (stopped with SIGTERM), and the figures of both.
        """
        if nats is None:
            missing("nats-py is not installed (pip install nats-py)")
        if not os.path.exists("/proc/self/clear_refs"):
            raise SkipTest("needs Linux's /proc to measure memory")
        ours = await threads.deferToThread(self.play, "eventsvc", eventsvc_server, signal.SIGKILL)
        theirs = await threads.deferToThread(self.play, "nats-server", reference_server, signal.SIGTERM)
        report(ours, theirs)
        # Memory: on CPython the server holds a few reads of chunks and the push
        # consumer's flow control window (32 MiB at most), never a whole object.
        # PyPy's collector lets the heap grow by up to 82% (PYPY_GC_MAJOR_COLLECT)
        # of its ~330 MiB before a major collection, and a fresh process's JIT
        # is cold: wider bounds there.
        pypy = platform.python_implementation() == "PyPy"
        bound, factor = (192 * MiB, 20) if pypy else (64 * MiB, 10)
        self.assertLess(ours["rss_peak_put"] - ours["rss_idle"], bound)
        self.assertLess(ours["rss_peak_get"] - ours["rss_restarted"], bound)
        for key in ("put_sixty-four", "get_sixty-four"):
            self.assertLess(ours[key], max(factor * theirs[key], 5.0), key)


def report(ours: Dict[str, Any], theirs: Dict[str, Any]) -> None:
    """Print both servers' figures and eventsvc's ratio to nats-server, for the record."""
    lines = ["", "object store, 10 and 64 MiB in a file store (nats.go puts and gets):"]
    for key in ("put_ten", "put_sixty-four", "get_ten", "get_sixty-four"):
        lines.append("  {:20} eventsvc {:7.3f} s   nats-server {:7.3f} s   ratio {:5.2f}".format(
            key, ours[key], theirs[key], ours[key] / theirs[key]))
    for key, base in (("rss_peak_put", "rss_idle"), ("rss_peak_get", "rss_restarted")):
        lines.append("  {:20} eventsvc {:5.0f} MiB (+{:.0f})   nats-server {:5.0f} MiB (+{:.0f})".format(
            key, ours[key] / MiB, (ours[key] - ours[base]) / MiB, theirs[key] / MiB, (theirs[key] - theirs[base]) / MiB))
    lines.append("  {:20} eventsvc {}   nats-server {}".format("first_seq_after_del",
        ours["first_seq_after_delete"], theirs["first_seq_after_delete"]))
    for key in ("files_before_delete", "files_after_delete"):
        lines.append("  {:20} eventsvc {:11,d} B   nats-server {:11,d} B".format(key, ours[key], theirs[key]))
    sys.stderr.write("\n".join(lines) + "\n")


#: What an object store's writer and reader of bucket C{files} may publish at an
#: agent listener (docs/jetstream.md's table): the writer puts and deletes, the
#: reader gets and lists.  Both subscribe to C{_INBOX.>}; the reader also to
#: C{$O.files.>}, the subjects its ordered consumer's messages carry (without
#: it the fence's C{$O.>} deny drops them, as nats-server's deny does).
WRITER = ["$JS.API.STREAM.INFO.OBJ_files", "$JS.API.STREAM.MSG.GET.OBJ_files", "$JS.API.STREAM.PURGE.OBJ_files",
          "$O.files.>"]
READER = ["$JS.API.STREAM.NAMES", "$JS.API.STREAM.INFO.OBJ_files", "$JS.API.STREAM.MSG.GET.OBJ_files",
          "$JS.API.CONSUMER.CREATE.OBJ_files", "$JS.API.CONSUMER.CREATE.OBJ_files.>", "$JS.FC.OBJ_files.>"]


class ObjectStorePermissionTests(TestCase):
    """
    The publish and subscribe allow lists docs/jetstream.md gives an object
    store's writer and reader, at the agent listener ([gateway], whose
    identities get no C{$JS}, C{$O} unless named): each can do its part
    and no more.
    """

    timeout = 120

    async def test_writer_and_reader(self) -> None:
        """The writer puts and deletes; the reader gets and lists, and its put is refused and stores nothing."""
        if nats is None:
            missing("nats-py is not installed (pip install nats-py)")
        reason = jetstream_missing()
        if reason:
            raise SkipTest(reason)
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)

        def allow(names: List[str]) -> str:
            return "[" + ", ".join('"%s"' % name for name in names) + "]"

        path = process.write_config(os.path.join(folder, "eventsvc.toml"), (
            '[service]\nhost = "127.0.0.1"\nport = 0\n[jetstream]\nstore_dir = "{store}"\n'
            '[gateway]\nhost = "127.0.0.1"\nport = {port}\ndisable_frontend_tls = true\n'
            '[[gateway.identities]]\nname = "writer"\ntoken = "writer-token"\n'
            'publish_allow = {writer}\nsubscribe_allow = ["_INBOX.>"]\n'
            '[[gateway.identities]]\nname = "reader"\ntoken = "reader-token"\n'
            'publish_allow = {reader}\nsubscribe_allow = ["_INBOX.>", "$O.files.>"]\n'
        ).format(store=os.path.join(folder, "jetstream"), port=0, writer=allow(WRITER), reader=allow(READER)))
        server = process.eventsvc(path, expect=("service", "gateway"))
        await process.started(self, server)
        admin_url = "nats://127.0.0.1:%d" % server.ports["service"]
        agent_url = "nats://127.0.0.1:%d" % server.ports["gateway"]

        async def scenario() -> Dict[str, Any]:
            from nats.js import errors

            out: Dict[str, Any] = {}
            admin = await nats.connect(admin_url)
            await admin.jetstream().create_object_store("files")
            refusals: List[str] = []

            async def refused(e: Exception) -> None:
                refusals.append(str(e))

            writer = await nats.connect(agent_url, token="writer-token", error_cb=refused)
            wobs = await writer.jetstream().object_store("files")
            data = os.urandom(300 * 1024)
            out["put"] = (await wobs.put("report.pdf", data)).chunks
            await wobs.put("old.txt", b"to be deleted")
            await wobs.delete("old.txt")
            reader = await nats.connect(agent_url, token="reader-token", error_cb=refused)
            robs = await reader.jetstream(timeout=1).object_store("files")
            out["get"] = (await robs.get("report.pdf")).data == data
            out["list"] = sorted([e.name, bool(e.deleted)] for e in await robs.list())
            before = (await admin.jetstream().stream_info("OBJ_files")).state.messages
            try:
                await robs.put("intruder", b"x")
                out["reader_put"] = "stored"
            except (nats.errors.TimeoutError, errors.Error) as e:
                out["reader_put"] = type(e).__name__
            await reader.flush()
            out["stored_after"] = (await admin.jetstream().stream_info("OBJ_files")).state.messages - before
            out["refusals"] = sorted({r.split(" to ")[0] for r in refusals})
            for nc in (reader, writer, admin):
                await nc.close()
            return out

        got = await threads.deferToThread(lambda: asyncio.run(asyncio.wait_for(scenario(), 60)))
        self.assertEqual(got, {
            "put": 3, "get": True, "list": [["old.txt", True], ["report.pdf", False]],
            "reader_put": "TimeoutError", "stored_after": 0,
            "refusals": ["nats: permissions violation for publish"],
        })
