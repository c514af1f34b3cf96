"""
The twistd/twist plugin's options and service maker.

C{twistd -n eventsvc --config patch.toml}.  Options are checked in
C{postOptions}; a bad configuration ends the program with one line naming
the file, the key and the problem.  C{makeService} composes the service and
wraps it in the process shell (L{eventsvc.runner}: signals, exit statuses).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.logger import Logger, LogLevel
from twisted.python import usage

from eventsvc import config as configuration
from eventsvc.app import StartupError, make_service
from eventsvc.ops import jit
from eventsvc.runner import ProcessRunner

log = Logger()


class Options(usage.Options):
    synopsis = "--config PATCH.toml"
    longdesc = (
        "Run eventsvc with the TOML patch PATCH.toml over the built-in defaults "
        "(docs/configuration.md). A bad file stops start-up with one line and exit "
        "status 78. Signals: SIGTERM shuts down gracefully, SIGUSR2 enters lame duck "
        "mode, SIGHUP reloads the file."
    )
    optParameters = [["config", "c", None, "the TOML configuration patch"]]

    def getSynopsis(self) -> str:
        parent = self.parent
        # twist's own synopsis reads "twist [options] plugin [plugin_options]",
        # which Twisted would put in front of ours: say it plainly instead.
        if parent is not None and "reactorName" in parent:
            return "Usage: twist [twist options] eventsvc " + self.synopsis
        return super().getSynopsis()

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


def makeService(options: Options, reactor: Any = None) -> ProcessRunner:
    _set_jit(options.loaded)
    try:
        service = make_service(options.loaded, reactor)
    except StartupError as e:
        fail(str(e))
    runner = ProcessRunner(service)
    _log_under_twist(options, runner)
    return runner


def _set_jit(loaded: configuration.Config) -> None:
    """
    On PyPy, [pypy] jit's parameters, before anything runs: the process's
    own choice, which is why the shell makes it and L{make_service} does
    not (L{eventsvc.ops.jit}).  A parameter this PyPy refuses stops
    start-up as a bad configuration does.
    """
    try:
        applied = jit.apply(loaded.pypy.jit)
    except ValueError as e:
        fail("{}[pypy] jit: {}".format(configuration.in_file(loaded), e))
    if applied is not None:
        log.info("PyPy JIT parameters: {setting} ([pypy] jit)", setting=applied)


def _log_under_twist(options: Options, runner: ProcessRunner) -> None:
    """
    Under twistd, the service offers its observer to the Application.  Under
    twist there is no Application, and twist starts logging only after this
    call, from its own options: let [log] decide the format and the level
    (SIGHUP can change it) and twist's C{--log-file} where the lines go.
    """
    parent = getattr(options, "parent", None)
    # Only twist's options have this key (twistd's are unrelated).
    if parent is None or "fileLogObserverFactory" not in parent:
        return
    observer = runner.service.log_observer
    parent["fileLogObserverFactory"] = observer.write_to
    parent["logFormat"] = observer.format
    # Everything reaches our observer, which filters by [log] level.
    parent["logLevel"] = LogLevel.debug
