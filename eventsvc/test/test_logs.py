"""
The configured log observer's level rules (L{eventsvc.ops.logs}): what a
user sees written at each level, after a level change (SIGHUP) and per
namespace.
"""

from __future__ import annotations

import io
import json

from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from eventsvc.ops.logs import make_observer


class LevelTests(SynchronousTestCase):
    def emit_all(self, observer, namespace="eventsvc.nats.client"):
        log = Logger(observer=observer, namespace=namespace)
        log.debug("a debug line")
        log.info("an info line")
        log.warn("a warn line")
        log.error("an error line")

    def written(self, out):
        return [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]

    def test_default_level(self) -> None:
        out = io.StringIO()
        self.emit_all(make_observer("text", "info", out))
        self.assertEqual(self.written(out), ["an info line", "a warn line", "an error line"])

    def test_set_level_lowers_and_raises(self) -> None:
        """A reload's new [log] level holds for what is logged from then on, in both directions."""
        out = io.StringIO()
        observer = make_observer("text", "info", out)
        self.emit_all(observer)
        observer.set_level("debug")
        self.emit_all(observer)
        observer.set_level("error")
        self.emit_all(observer)
        self.assertEqual(self.written(out), [
            "an info line", "a warn line", "an error line",
            "a debug line", "an info line", "a warn line", "an error line",
            "an error line",
        ])

    def test_level_per_namespace(self) -> None:
        """A namespace's own level holds for it and the namespaces under it, not for others."""
        out = io.StringIO()
        observer = make_observer("text", "warn", out)
        self.emit_all(observer, "eventsvc.nats.client")  # the level in force remembered for it
        observer.set_level_for_namespace("eventsvc.nats", "debug")
        self.emit_all(observer, "eventsvc.nats.client")
        self.emit_all(observer, "eventsvc.jetstream")
        self.assertEqual(self.written(out), [
            "a warn line", "an error line",
            "a debug line", "an info line", "a warn line", "an error line",
            "a warn line", "an error line",
        ])
        observer.set_level("error")
        self.emit_all(observer, "eventsvc.nats.client")
        self.emit_all(observer, "eventsvc.jetstream")
        self.assertEqual(self.written(out)[8:], [
            "a debug line", "an info line", "a warn line", "an error line", "an error line"])

    def test_event_without_namespace_or_level_not_written(self) -> None:
        """As Twisted's level filter: an event that names no namespace or no level is not written."""
        out = io.StringIO()
        observer = make_observer("text", "debug", out)
        observer({"log_level": LogLevel.error, "log_format": "no namespace", "log_time": 1.0})
        observer({"log_level": LogLevel.error, "log_namespace": "", "log_format": "empty namespace", "log_time": 1.0})
        observer({"log_namespace": "x", "log_format": "no level", "log_time": 1.0})
        observer({"log_level": LogLevel.error, "log_namespace": "x", "log_format": "written", "log_time": 1.0})
        self.assertEqual(self.written(out), ["written"])

    def test_json_at_level_after_change(self) -> None:
        out = io.StringIO()
        observer = make_observer("json", "warn", out)
        log = Logger(observer=observer, namespace="eventsvc.test")
        log.info("quiet {x}", x=1)
        observer.set_level("info")
        log.info("heard {x}", x=2)
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([(r["level"], r["namespace"], r["message"], r["x"]) for r in records],
                         [("info", "eventsvc.test", "heard 2", 2)])

    def test_plumbing_line_demoted_below_info(self) -> None:
        """Twisted's factory lines are debug: left out at info, written at debug."""
        for level, expected in (("info", []), ("debug", ["Starting factory '<F>'"])):
            out = io.StringIO()
            Logger(observer=make_observer("text", level, out), namespace="twisted.web.client").info(
                "Starting factory {factory!r}", factory="<F>")
            self.assertEqual(self.written(out), expected)

    def test_repeat_limit_keeps_errors(self) -> None:
        """A flood of one info line is cut at the repeat limit; errors are not."""
        out = io.StringIO()
        observer = make_observer("text", "info", out)
        log = Logger(observer=observer, namespace="eventsvc.nats.client")
        for _ in range(50):
            log.info("closed")
            log.error("broken")
        lines = self.written(out)
        self.assertEqual((lines.count("closed"), lines.count("broken")), (20, 50))
