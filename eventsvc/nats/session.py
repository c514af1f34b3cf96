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

The machine is a table, L{TRANSITIONS}: (state, input) to the next state
and the outputs, which run after the state has changed.  An input in a
state that does not take it raises L{NoTransition} (a programming error,
never silently ignored).  It was an Automat C{MethodicalMachine}, which
builds a new function for each input it is given: that was 9% of a TLS
connection's set-up on PyPy, and a fifth of a plaintext one's on CPython;
a table lookup is what remains of it here.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from eventsvc.nats.timers import cancel

HANDSHAKE = "handshake"
AUTHENTICATION = "authentication"

#: The states, by name (what L{Session.state} says).
GREETING = "greeting"  # Built; INFO not written yet.
HANDSHAKING = "handshaking"  # INFO written in plaintext; the client's TLS handshake is under way.
OPEN = "open"  # No authentication: operations are allowed, CONNECT or not.
AWAITING_CONNECT = "awaiting_connect"  # Authentication required: nothing but CONNECT is allowed.
AUTHENTICATING = "authenticating"  # A CONNECT's credentials are being checked; the client waits.
READY = "ready"  # CONNECT accepted.
CLOSED = "closed"  # Gone; nothing more happens.

STATES = (GREETING, HANDSHAKING, OPEN, AWAITING_CONNECT, AUTHENTICATING, READY, CLOSED)

#: (state, input) -> (next state, outputs: the names of Session methods,
#: called in order, with the input's arguments, once the state is the next).
TRANSITIONS: Dict[Tuple[str, str], Tuple[str, Tuple[str, ...]]] = {
    (GREETING, "tls_begun"): (HANDSHAKING, ("_start_handshake_clock",)),
    (GREETING, "_begin_open"): (OPEN, ()),
    (GREETING, "_begin_guarded"): (AWAITING_CONNECT, ("_start_auth_clock",)),
    (HANDSHAKING, "_begin_open"): (OPEN, ("_stop_handshake_clock",)),
    (HANDSHAKING, "_begin_guarded"): (AWAITING_CONNECT, ("_stop_handshake_clock", "_start_auth_clock")),
    (OPEN, "connect_accepted"): (READY, ()),
    (READY, "connect_accepted"): (READY, ()),
    (AWAITING_CONNECT, "checking"): (AUTHENTICATING, ()),
    (READY, "checking"): (AUTHENTICATING, ()),
    (AUTHENTICATING, "connect_accepted"): (READY, ("_stop_clocks",)),
    (HANDSHAKING, "_clock_ran_out"): (CLOSED, ("_tell_timed_out",)),
    (AWAITING_CONNECT, "_clock_ran_out"): (CLOSED, ("_tell_timed_out",)),
    (AUTHENTICATING, "_clock_ran_out"): (CLOSED, ("_tell_timed_out",)),
    (CLOSED, "close"): (CLOSED, ()),
}
for _state in (GREETING, HANDSHAKING, OPEN, AWAITING_CONNECT, AUTHENTICATING, READY):
    TRANSITIONS[_state, "close"] = (CLOSED, ("_stop_clocks", "_let_go"))
del _state


class NoTransition(Exception):
    """An input in a state that does not take it: a programming error."""

    def __init__(self, state: str, input: str) -> None:
        super().__init__("no transition for input {} in state {}".format(input, state))
        self.state = state
        self.input = input


class Session:
    """
    The session of one client connection.

    @ivar auth_required: whether CONNECT must authenticate before anything
        else is allowed.
    """

    __slots__ = ("clock", "auth_required", "auth_timeout", "tls_timeout", "_timed_out", "_handshake_timer", "_auth_timer", "_state")

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
        self._state = GREETING

    # -- what it says ---------------------------------------------------------

    def state(self) -> str:
        """The state's name: greeting, handshaking, open, awaiting_connect, authenticating, ready or closed."""
        return self._state

    @property
    def greeted(self) -> bool:
        return self._state != GREETING

    @property
    def handshaking(self) -> bool:
        return self._state == HANDSHAKING

    @property
    def connected(self) -> bool:
        """Whether a CONNECT has been accepted."""
        return self._state == READY

    @property
    def closed(self) -> bool:
        return self._state == CLOSED

    def start(self) -> None:
        """Greeted (and through TLS, if any): the session's clock starts."""
        self._input("_begin_guarded" if self.auth_required else "_begin_open")

    # -- inputs ---------------------------------------------------------------

    def _input(self, name: str, *args: Any) -> None:
        try:
            state, outputs = TRANSITIONS[self._state, name]
        except KeyError:
            raise NoTransition(self._state, name) from None
        self._state = state
        for output in outputs:
            getattr(self, output)(*args)

    def tls_begun(self) -> None:
        "INFO is written; the TLS layer waits for the client's handshake."
        self._input("tls_begun")

    def checking(self) -> None:
        "A CONNECT brought credentials that must be checked."
        self._input("checking")

    def connect_accepted(self) -> None:
        "A CONNECT was accepted (its credentials, if checked, too)."
        self._input("connect_accepted")

    def close(self) -> None:
        "The connection ends, for whatever reason."
        self._input("close")

    def _clock_ran_out(self, which: str) -> None:
        "The handshake or the authentication took too long."
        self._input("_clock_ran_out", which)

    # -- outputs --------------------------------------------------------------

    def _start_handshake_clock(self) -> None:
        self._handshake_timer = self.clock.callLater(self.tls_timeout, self._clock_ran_out, HANDSHAKE)

    def _stop_handshake_clock(self) -> None:
        self._handshake_timer = cancel(self._handshake_timer)

    def _start_auth_clock(self) -> None:
        self._auth_timer = self.clock.callLater(self.auth_timeout, self._clock_ran_out, AUTHENTICATION)

    def _stop_clocks(self) -> None:
        self._handshake_timer = cancel(self._handshake_timer)
        self._auth_timer = cancel(self._auth_timer)

    def _tell_timed_out(self, which: str) -> None:
        self._handshake_timer = self._auth_timer = None
        timed_out = self._timed_out
        self._let_go()
        timed_out(which)

    def _let_go(self) -> None:
        # Closed, no clock runs: the connection (whose method it holds) is
        # not held by its session, which it holds (freed without the cycle
        # collector).
        self._timed_out = _never_called


def _never_called(which: str) -> None:
    """A closed session's C{timed_out}: no clock runs once it is closed."""
