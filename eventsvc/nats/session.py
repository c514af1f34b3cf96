"""
How a client connection moves through its states, as one state machine.

::

    greeting ──tls_begun──▶ handshaking ─┐        (a TLS listener)
       │                                 │
       ├──────────── begin ──────────────┤
       ▼                                 ▼
     open (no authentication)        awaiting_connect (authentication required)
       │ connect_accepted                │ checking (CONNECT with credentials)
       ▼                                 ▼
     ready ◀──── connect_accepted ──── authenticating
       │ checking (new credentials) ──────▲
       ▼
     closed  ◀── close, from every state (refused, timed out, lost, shut down)

The listener feeds C{refused} (it is full), the TLS upgrade C{tls_begun}
and C{begin} (its handshake is done), the connection the rest.  The
session owns the session's clocks: the TLS handshake timeout, and the
authentication timeout from C{begin} until the CONNECT is accepted; when
one runs out it tells the connection (C{timed_out(which)}).

Reads from the transport are the connection's; the session only says
whether operations may be parsed (C{guarded}: nothing but CONNECT until
authenticated) and whether the connection has been greeted.
"""

from __future__ import annotations

from typing import Any, Callable

from automat import MethodicalMachine

from eventsvc.nats.timers import cancel

HANDSHAKE = "handshake"
AUTHENTICATION = "authentication"


class Session:
    """
    The session of one client connection.

    @ivar auth_required: whether CONNECT must authenticate before anything
        else is allowed.
    """

    _machine = MethodicalMachine()

    def __init__(self, clock: Any, auth_required: bool, auth_timeout: float, tls_timeout: float,
                 timed_out: Callable[[str], None]) -> None:
        self.clock = clock
        self.auth_required = auth_required
        self.auth_timeout = auth_timeout
        self.tls_timeout = tls_timeout
        #: Called with HANDSHAKE or AUTHENTICATION when that clock runs out.
        self._timed_out = timed_out
        self._handshake_timer: Any = None
        self._auth_timer: Any = None

    # -- what it says ---------------------------------------------------------

    @_machine.serializer()
    def state(self, state: str) -> str:
        """The state's name: greeting, handshaking, open, awaiting_connect, authenticating, ready or closed."""
        return state

    @property
    def greeted(self) -> bool:
        return self.state() != "greeting"

    @property
    def handshaking(self) -> bool:
        return self.state() == "handshaking"

    @property
    def connected(self) -> bool:
        """Whether a CONNECT has been accepted."""
        return self.state() == "ready"

    @property
    def closed(self) -> bool:
        return self.state() == "closed"

    def start(self) -> None:
        """Greeted (and through TLS, if any): the session's clock starts."""
        if self.auth_required:
            self._begin_guarded()
        else:
            self._begin_open()

    # -- states ---------------------------------------------------------------

    @_machine.state(initial=True, serialized="greeting")
    def _greeting(self) -> None:
        "Built; INFO not written yet."

    @_machine.state(serialized="handshaking")
    def _handshaking(self) -> None:
        "INFO written in plaintext; the client's TLS handshake is under way."

    @_machine.state(serialized="open")
    def _open(self) -> None:
        "No authentication: operations are allowed, CONNECT or not."

    @_machine.state(serialized="awaiting_connect")
    def _awaiting_connect(self) -> None:
        "Authentication required: nothing but CONNECT is allowed."

    @_machine.state(serialized="authenticating")
    def _authenticating(self) -> None:
        "A CONNECT's credentials are being checked; the client waits."

    @_machine.state(serialized="ready")
    def _ready(self) -> None:
        "CONNECT accepted."

    @_machine.state(serialized="closed")
    def _closed(self) -> None:
        "Gone; nothing more happens."

    # -- inputs ---------------------------------------------------------------

    @_machine.input()
    def tls_begun(self) -> None:
        "INFO is written; the TLS layer waits for the client's handshake."

    @_machine.input()
    def _begin_open(self) -> None:
        "Greeted, no authentication required."

    @_machine.input()
    def _begin_guarded(self) -> None:
        "Greeted, authentication required."

    @_machine.input()
    def checking(self) -> None:
        "A CONNECT brought credentials that must be checked."

    @_machine.input()
    def connect_accepted(self) -> None:
        "A CONNECT was accepted (its credentials, if checked, too)."

    @_machine.input()
    def close(self) -> None:
        "The connection ends, for whatever reason."

    @_machine.input()
    def _clock_ran_out(self, which: str) -> None:
        "The handshake or the authentication took too long."

    # -- outputs --------------------------------------------------------------

    @_machine.output()
    def _start_handshake_clock(self) -> None:
        self._handshake_timer = self.clock.callLater(self.tls_timeout, self._clock_ran_out, HANDSHAKE)

    @_machine.output()
    def _stop_handshake_clock(self) -> None:
        self._handshake_timer = cancel(self._handshake_timer)

    @_machine.output()
    def _start_auth_clock(self) -> None:
        self._auth_timer = self.clock.callLater(self.auth_timeout, self._clock_ran_out, AUTHENTICATION)

    @_machine.output()
    def _stop_clocks(self) -> None:
        self._handshake_timer = cancel(self._handshake_timer)
        self._auth_timer = cancel(self._auth_timer)

    @_machine.output()
    def _tell_timed_out(self, which: str) -> None:
        self._handshake_timer = self._auth_timer = None
        self._timed_out(which)

    _greeting.upon(tls_begun, enter=_handshaking, outputs=[_start_handshake_clock])
    _greeting.upon(_begin_open, enter=_open, outputs=[])
    _greeting.upon(_begin_guarded, enter=_awaiting_connect, outputs=[_start_auth_clock])
    _handshaking.upon(_begin_open, enter=_open, outputs=[_stop_handshake_clock])
    _handshaking.upon(_begin_guarded, enter=_awaiting_connect, outputs=[_stop_handshake_clock, _start_auth_clock])
    _open.upon(connect_accepted, enter=_ready, outputs=[])
    _ready.upon(connect_accepted, enter=_ready, outputs=[])
    _awaiting_connect.upon(checking, enter=_authenticating, outputs=[])
    _ready.upon(checking, enter=_authenticating, outputs=[])
    _authenticating.upon(connect_accepted, enter=_ready, outputs=[_stop_clocks])
    _handshaking.upon(_clock_ran_out, enter=_closed, outputs=[_tell_timed_out])
    _awaiting_connect.upon(_clock_ran_out, enter=_closed, outputs=[_tell_timed_out])
    _authenticating.upon(_clock_ran_out, enter=_closed, outputs=[_tell_timed_out])
    for _state in (_greeting, _handshaking, _open, _awaiting_connect, _authenticating, _ready):
        _state.upon(close, enter=_closed, outputs=[_stop_clocks])
    _closed.upon(close, enter=_closed, outputs=[])
    del _state
