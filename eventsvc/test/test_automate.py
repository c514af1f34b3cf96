"""
Chef Automate's own patch, as docs/events.md shows it: what eventsvc says
of it at check time, through the admin command as an operator runs it.
"""

from __future__ import annotations

import os
import re

from twisted.trial.unittest import TestCase

from eventsvc.test import process


def automate_patches() -> "list[str]":
    """The TOML blocks of docs/events.md's "Coming from Chef Automate": the patch, then its mended handlers."""
    with open(os.path.join(process.source_tree(), "docs", "events.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Coming from Chef Automate", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```toml\n(.*?)```", section, re.S)


class AutomatePatchTests(TestCase):
    def test_the_seed_patch_is_refused_naming_its_handler_address(self):
        patch, _ = automate_patches()
        path = process.write_config(os.path.abspath(self.mktemp()) + ".toml", patch)
        result = process.cli("check-config", "--config", path)
        self.assertEqual(result.returncode, 78, result.stdout + result.stderr)
        [line] = result.stderr.strip().splitlines()
        self.assertEqual(line, (
            "eventsvc: {}: [handlers] feed: '0.0.0.0:10121' names no host to deliver to (0.0.0.0 is where a server listens, "
            "on every interface); write the target's own address: grpc://<host>:10121 for a Chef Automate service's "
            "HandleEvent (see \"Coming from Chef Automate\" in docs/events.md), or an https:// URL for an HTTP target"
        ).format(path))

    def test_the_mended_patch_runs(self):
        patch, mended = automate_patches()
        folder = os.path.abspath(self.mktemp())
        certs = os.path.join(folder, "certs")
        os.makedirs(certs)
        made = process.cli("certs", "--out", certs)
        self.assertEqual(made.returncode, 0, made.stderr)
        for ours, theirs in (("service.crt", "event-service.crt"), ("service.key", "event-service.key"),
                             ("ca.crt", "Chef_Automate_FAKE_Dev.crt")):
            os.rename(os.path.join(certs, ours), os.path.join(certs, theirs))
        head = patch.split("[handlers]")[0].replace('port = 10132', 'port = 0')
        path = process.write_config(os.path.join(folder, "patch.toml"), head + mended)
        result = process.cli("check-config", "--config", path)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("events are kept in {}".format(os.path.join(folder, "patch.state")), result.stdout)
        self.assertIn("handler feed: grpc://127.0.0.1:10121", result.stdout)
        self.assertIn("handler event_feed: grpc://127.0.0.1:10134", result.stdout)
        self.assertNotIn("warning", result.stdout + result.stderr)
