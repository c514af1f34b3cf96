"""
The twistd/twist plugin's options and service maker.

C{twistd -n eventsvc --config patch.toml}.  Options are checked in
C{postOptions}; a bad configuration ends the program with one line naming
the file, the key and the problem.  C{makeService} only composes.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from eventsvc import config as configuration
from eventsvc.app import EventService, StartupError, make_service


class Options(usage.Options):
    synopsis = "--config PATCH.toml"
    longdesc = "Run eventsvc with the TOML patch PATCH.toml over the built-in defaults."
    optParameters = [["config", "c", None, "the TOML configuration patch"]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config is required (try dev/patch.toml)")
        try:
            self.loaded = configuration.load(self["config"])
        except configuration.ConfigError as e:
            # One line, no usage text and no traceback: the operator's mistake
            # is in the file, not in the command line.
            fail(str(e))


def fail(message: str) -> None:
    sys.stderr.write("eventsvc: {}\n".format(message))
    raise SystemExit(78)  # EX_CONFIG


def makeService(options: Options, reactor: Any = None) -> EventService:
    try:
        service = make_service(options.loaded, reactor)
    except StartupError as e:
        fail(str(e))
    service.exit_on_error = True
    return service
