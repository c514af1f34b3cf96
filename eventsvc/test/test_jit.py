"""
[pypy] jit: PyPy's JIT parameters, checked by the configuration on every
interpreter and set by the process shell at start-up on PyPy only.  The
interpreter's C{pypyjit} is replaced by a recorder: no test changes the
JIT of the process running the tests.
"""

from __future__ import annotations

import io
from typing import List

from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from eventsvc import config, tap
from eventsvc.config import ConfigError
from eventsvc.ops import jit
from eventsvc.service import needs_restart


class FakeJIT:
    """What eventsvc calls of PyPy's C{pypyjit}, recorded; refuses the names in C{unknown} as PyPy does."""

    def __init__(self, unknown: "tuple[str, ...]" = ()) -> None:
        self.calls: List[str] = []
        self.unknown = unknown

    def set_param(self, setting: str) -> None:
        if any(name in setting for name in self.unknown):
            raise ValueError("error in JIT parameters string")
        self.calls.append(setting)


class CheckTests(SynchronousTestCase):
    """A bad setting is refused with a line naming the file, [pypy] jit and what would do."""

    def refused(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            config.parse(text, "/etc/eventsvc/patch.toml")
        message = str(caught.exception)
        self.assertTrue(message.startswith("/etc/eventsvc/patch.toml: [pypy] jit: "), message)
        self.assertNotIn("\n", message)
        return message

    def test_default_lowers_the_loop_threshold(self) -> None:
        self.assertEqual(config.parse("").pypy.jit, "threshold=300")
        self.assertEqual(jit.parse(jit.DEFAULT), [("threshold", 300)])

    def test_settings_accepted(self) -> None:
        for setting, parsed in (
            ("threshold=500, function_threshold=800", [("threshold", 500), ("function_threshold", 800)]),
            ("trace_limit=16384", [("trace_limit", 16384)]),
            ("inlining=0", [("inlining", 0)]),
            ("", []),
            ("off", []),
        ):
            self.assertEqual(config.parse('[pypy]\njit = "{}"\n'.format(setting)).pypy.jit, setting)
            self.assertEqual(jit.parse(setting), parsed)

    def test_unknown_parameter(self) -> None:
        message = self.refused('[pypy]\njit = "threshold=300,treshold=200"\n')
        self.assertIn("unknown JIT parameter 'treshold'", message)
        self.assertIn("function_threshold", message)

    def test_not_a_number(self) -> None:
        self.assertIn("threshold must be a whole number, got 'low'", self.refused('[pypy]\njit = "threshold=low"\n'))

    def test_out_of_range(self) -> None:
        self.assertIn("threshold must be between 1 and", self.refused('[pypy]\njit = "threshold=0"\n'))
        # PyPy itself answers this one with an internal error, not a message.
        self.assertIn("trace_limit must be between 1 and 16384, got 20000", self.refused('[pypy]\njit = "trace_limit=20000"\n'))
        self.assertIn("inlining must be between 0 and 1", self.refused('[pypy]\njit = "inlining=2"\n'))

    def test_not_name_value(self) -> None:
        message = self.refused('[pypy]\njit = "threshold"\n')
        self.assertIn("'threshold' is not name=value", message)
        self.assertIn('"" for PyPy\'s own', message)
        self.assertIn("is not name=value", self.refused('[pypy]\njit = "threshold=300,"\n'))

    def test_digits_pypy_does_not_read(self) -> None:
        """Python's int() reads "3_00" and other scripts' digits; PyPy's parser refuses them at start-up: the check does too."""
        for value in ("3_00", "\u0663\u0660\u0660", "", "+"):
            self.assertIn("threshold must be a whole number, got {!r}".format(value),
                          self.refused('[pypy]\njit = "threshold={}"\n'.format(value)))

    def test_wrong_type(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config.parse("[pypy]\njit = 300\n", "p.toml")
        self.assertIn("[pypy] jit", str(caught.exception))

    def test_a_change_needs_a_restart(self) -> None:
        """Compiled code keeps the parameters it was compiled under: a SIGHUP says so, and changes nothing."""
        old, new = config.parse(""), config.parse('[pypy]\njit = ""\n')
        self.assertEqual(needs_restart(old, new), ["[pypy] jit"])


class ApplyTests(SynchronousTestCase):
    """The process shell sets [pypy] jit before it builds the service, on PyPy only."""

    def start(self, text: str, fake: "FakeJIT | None") -> "tuple[io.StringIO, List[dict]]":
        self.patch(jit, "_interpreter_jit", lambda: fake)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[service]\nhost = "127.0.0.1"\nport = 0\n' + text)
        stderr = io.StringIO()
        self.patch(tap.sys, "stderr", stderr)
        events: List[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        options = tap.Options()
        options.parseOptions(["--config", path])
        tap.makeService(options, MemoryReactorClock())
        return stderr, events

    def jit_lines(self, events: List[dict]) -> List[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in events if e.get("log_namespace") == "eventsvc.tap" and e["log_level"] == LogLevel.info]

    def test_default_applied_over_pypys_own(self) -> None:
        fake = FakeJIT()
        _, events = self.start("", fake)
        self.assertEqual(fake.calls, ["default", "threshold=300"])
        self.assertEqual(self.jit_lines(events), ["PyPy JIT parameters: threshold=300 ([pypy] jit)"])

    def test_operator_setting_applied(self) -> None:
        fake = FakeJIT()
        self.start('[pypy]\njit = "threshold=500,function_threshold=800"\n', fake)
        self.assertEqual(fake.calls, ["default", "threshold=500,function_threshold=800"])

    def test_blanks_around_equals(self) -> None:
        """C{threshold = 300}, which the check accepts, is set as PyPy's parser takes it (it refuses the blanks)."""
        fake = FakeJIT()
        _, events = self.start('[pypy]\njit = "threshold = 300 , function_threshold= 500"\n', fake)
        self.assertEqual(fake.calls, ["default", "threshold=300,function_threshold=500"])
        self.assertEqual(self.jit_lines(events), ["PyPy JIT parameters: threshold=300,function_threshold=500 ([pypy] jit)"])

    def test_accepted_is_what_pypy_takes(self) -> None:
        """
        On PyPy, every form the check accepts is set by PyPy's own
        C{pypyjit} without an error (PyPy's parser is stricter than int()).
        """
        real = jit._interpreter_jit()
        if real is None:
            raise SkipTest("no PyPy JIT in this interpreter (CPython)")
        self.addCleanup(real.set_param, "default")
        for setting in ("threshold=300", "threshold = 300", " threshold=+300 ,function_threshold=0500", "off"):
            self.assertIsNone(jit.problem(setting), setting)
            jit.apply(setting)

    def test_off(self) -> None:
        fake = FakeJIT()
        self.start('[pypy]\njit = "off"\n', fake)
        self.assertEqual(fake.calls, ["default", "off"])

    def test_empty_sets_nothing(self) -> None:
        """C{jit = ""}: whatever the interpreter was started with (C{pypy --jit ...}) stays."""
        fake = FakeJIT()
        _, events = self.start('[pypy]\njit = ""\n', fake)
        self.assertEqual(fake.calls, [])
        self.assertEqual(self.jit_lines(events), [])

    def test_cpython_untouched(self) -> None:
        """Without PyPy's JIT nothing is set and nothing is said."""
        _, events = self.start('[pypy]\njit = "threshold=200"\n', None)
        self.assertEqual(self.jit_lines(events), [])

    def test_refused_by_this_pypy(self) -> None:
        """A parameter an older or newer PyPy does not have stops start-up with one line, and the JIT is left at PyPy's own."""
        fake = FakeJIT(unknown=("max_unroll_loops",))
        with self.assertRaises(SystemExit) as caught:
            self.start('[pypy]\njit = "threshold=300,max_unroll_loops=2"\n', fake)
        self.assertEqual(caught.exception.code, 78)
        stderr = tap.sys.stderr.getvalue()
        self.assertEqual(stderr.count("\n"), 1)
        self.assertIn("[pypy] jit: this PyPy refused 'threshold=300,max_unroll_loops=2'", stderr)
        self.assertEqual(fake.calls, ["default", "default"])

    def test_embedding_sets_nothing(self) -> None:
        """make_service, the embedding API, leaves the interpreter's JIT to the application."""
        from eventsvc.app import make_service

        fake = FakeJIT()
        self.patch(jit, "_interpreter_jit", lambda: fake)
        make_service(config.parse(""), MemoryReactorClock())
        self.assertEqual(fake.calls, [])
