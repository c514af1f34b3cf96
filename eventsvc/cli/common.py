"""What every subcommand shares: exit codes, loading the configuration, saying one line."""

from __future__ import annotations

import sys
from typing import List

from eventsvc import config as configuration

EX_OK, EX_FAIL, EX_USAGE, EX_CONFIG = 0, 1, 2, 78

EXIT_CODES = "exit status: 0 done, 1 failed or unhealthy, 2 wrong command line, 78 configuration problem"


class Failed(Exception):
    """The subcommand could not do its work; the message is the line the user sees."""


def load(path: str) -> configuration.Config:
    """The configuration, or exit 78 with the one line that says what is wrong."""
    try:
        return configuration.load(path)
    except configuration.ConfigError as e:
        raise SystemExit(say("eventsvc: {}".format(e), EX_CONFIG))


def say(line: str, code: int) -> int:
    """Print C{line} (to standard error unless C{code} is success) and return C{code}."""
    (sys.stdout if code == EX_OK else sys.stderr).write(line + "\n")
    return code


def routed_to(config: configuration.Config, handler: str) -> List[str]:
    """The event types C{config} routes to the handler named C{handler} ([handlers] key)."""
    from eventsvc.events.types import Registry

    return Registry(config.events.routing).routed_to(handler)
