"""
Reading the dead-letter file ([events] dead_letter_file): one JSON object
per line, written by L{eventsvc.events.handlers.DeadLetters}.  Read by the
admin command (C{eventsvc dead-letters}) and by the console.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Tuple

#: Where C{eventsvc dead-letters replay} puts an event back, for one handler
#: (the dispatcher subscribes to it).  Here, not in the dispatcher, so that the
#: admin command's dead-letters and spool subcommands need not import the
#: event service (Twisted's application framework, the handlers, the
#: listener): about 0.3 s of CPU at each start on PyPy.
REPLAY_PREFIX = "$EVENTSVC.replay."


def read_dead_letters(path: str) -> Tuple[List[str], List[Dict[str, Any]], List[int]]:
    """The file's lines, the records they hold (None for a line that is not one), and the bad line numbers."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return [], [], []
    records: List[Any] = []
    bad = []
    for n, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "event" not in record or "handler" not in record:
                raise ValueError
        except ValueError:
            record = None
            if line.strip():
                bad.append(n)
        records.append(record)
    return lines, records, bad
