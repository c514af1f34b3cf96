"""
The process shell: what running eventsvc as a program adds to the service.

L{EventService} composes and never ends its process, so that any Twisted
application can embed it.  Under twistd and twist, L{ProcessRunner} wraps
it and adds what a program owes its operator:

  - a listener that cannot start ends the process with one line on stderr
    and exit status 1 (no traceback);
  - SIGTERM and SIGINT shut down gracefully and then stop the reactor (exit
    status 0); a second one stops at once;
  - SIGHUP reloads the configuration; SIGUSR2 enters lame duck mode, after
    which the process stops as on SIGTERM;
  - under twistd, the service's log observer is offered to the Application,
    so that [log] format and level decide what twistd writes.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from eventsvc.service import EventService
from eventsvc.nats.listener import ListenError


class ProcessRunner(MultiService):
    """Runs one L{EventService} as the whole process (its only child)."""

    log = Logger()

    def __init__(self, service: EventService) -> None:
        super().__init__()
        self.service = service
        self.reactor = service.reactor
        self._stopping = False
        service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, self.service.log_observer)
        super().setServiceParent(parent)

    def startService(self) -> None:
        try:
            super().startService()
        except ListenError as e:
            # The real stderr: twistd has redirected sys.stderr into the log
            # by now, and twist has not started logging yet.
            stream = sys.__stderr__ or sys.stderr
            stream.write("eventsvc: {}\n".format(e))
            stream.flush()
            raise SystemExit(1)
        self.service.when_shut_down().addCallback(lambda _: self._stop_reactor())
        self.reactor.callWhenRunning(self._install_signal_handlers)

    def _install_signal_handlers(self) -> None:
        # Over the reactor's own, once it runs.
        def later(f: Any) -> Any:
            return lambda signum, frame: self.reactor.callFromThread(f)

        signal.signal(signal.SIGHUP, later(self.service.reload))
        signal.signal(signal.SIGTERM, later(self.terminate))
        signal.signal(signal.SIGINT, later(self.terminate))
        signal.signal(signal.SIGUSR2, later(self.service.lame_duck))

    def terminate(self) -> None:
        """SIGTERM or SIGINT: a graceful shutdown; the second one stops at once."""
        if self.service.state == "stopping":
            self._stop_reactor()
            return
        self.service.shutdown()

    def _stop_reactor(self) -> None:
        from twisted.internet.error import ReactorNotRunning

        if not self._stopping:
            self._stopping = True
            try:
                self.reactor.stop()
            except ReactorNotRunning:
                pass
