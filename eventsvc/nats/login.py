"""
The login part of a client connection: a CONNECT's credentials checked by
the listener's authenticator, past the failed-login budget of the client's
address, and checked again when a reload brings new authenticators.

It decides nothing about the connection: it tells its owner the outcome
(L{ILoginOwner}), and the owner applies it (permissions, the session's
state, closing).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventsvc.nats.framing import AUTHORIZATION_VIOLATION, ProtocolViolation
from eventsvc.nats.interfaces import AuthenticationFailed, IAuthenticator, Identity, PeerInfo, settle


class ILoginOwner(Protocol):
    """What a L{Login} tells, and asks, the connection it belongs to."""

    cid: int
    peer: PeerInfo
    closed: bool

    def logged_in(self, identity: Identity) -> None:
        """The credentials were accepted."""

    def login_refused(self, why: str) -> None:
        """The credentials were refused (or the authenticator failed): close."""

    def identity_changed(self, identity: Identity) -> int:
        """Checked again after a reload and accepted: apply; returns subscriptions removed."""


def credentials(options: Optional[Dict[str, Any]]) -> tuple:
    """What in CONNECT options identifies the client (a new one must be checked)."""
    if not options:
        return ()
    return tuple(options.get(k) for k in ("auth_token", "user", "pass", "jwt", "nkey", "sig"))


class Login:
    """
    @ivar options: the CONNECT options last checked (kept to check them
        again on reload), or None.
    """

    log = Logger()

    def __init__(self, owner: ILoginOwner, clock: Any, throttle: Any, auth_timeout: float) -> None:
        self.owner = owner
        self.clock = clock
        #: An AuthThrottle (failed logins per address), or None.
        self.throttle = throttle
        self.auth_timeout = auth_timeout
        self.options: Optional[Dict[str, Any]] = None
        self._waiting: Any = None

    def needed(self, authenticator: Optional[IAuthenticator], options: Dict[str, Any], logged_in: bool) -> bool:
        """Whether C{options} must be checked: the first CONNECT, or a later one with other credentials."""
        if authenticator is None:
            return False
        return not (logged_in and credentials(options) == credentials(self.options))

    def check(self, authenticator: IAuthenticator, options: Dict[str, Any]) -> None:
        """
        Check C{options}; the owner hears of the outcome, now or later.

        @raise ProtocolViolation: the address is past its failed-login
            budget: refused without a check.
        """
        self.options = options
        owner = self.owner
        wait = self.throttle.admit(owner.peer.host, self.clock.seconds()) if self.throttle is not None else 0.0
        if wait is None:
            self.log.info("client {cid} from {host}: too many failed logins from there; refused unchecked", cid=owner.cid, host=owner.peer.host)
            raise ProtocolViolation(AUTHORIZATION_VIOLATION, "login throttled")
        if wait:
            # Past the address's failure budget: the check waits.
            self._waiting = self.clock.callLater(wait, self._check, authenticator, options, True)
        else:
            self._check(authenticator, options, False)

    def _check(self, authenticator: IAuthenticator, options: Dict[str, Any], waited: bool) -> None:
        if waited:
            self._waiting = None
            self.throttle.done_waiting(self.owner.peer.host)
            if self.owner.closed:
                return
        d = maybeDeferred(authenticator.authenticate, options, self.owner.peer)
        d.addCallback(settle)
        d.addCallbacks(self._accepted, self._refused)

    def _accepted(self, identity: Identity) -> None:
        if not self.owner.closed:
            self.owner.logged_in(identity)

    def _refused(self, failure: Failure) -> None:
        owner = self.owner
        if owner.closed:
            return
        if failure.check(AuthenticationFailed):
            why = "authentication failed: {}".format(failure.getErrorMessage())
            if self.throttle is not None:
                self.throttle.failed(owner.peer.host, self.clock.seconds())
        else:
            self.log.failure("authenticator failed for client {cid}", failure, cid=owner.cid)
            why = "authenticator error"
        self.log.info("client {cid} from {host}: {why}", cid=owner.cid, host=owner.peer.host, why=why)
        owner.login_refused(why)

    def check_again(self, authenticator: IAuthenticator) -> Deferred:
        """
        Ask C{authenticator} again about the accepted CONNECT (the
        configuration was reloaded), as nats-server does: refused, the owner
        is told to close; accepted, of its new identity.  An authenticator
        that fails otherwise, or does not answer within the auth timeout,
        leaves the connection as it was (logged): a reload must not cut
        every agent because a service is slow.  Fires with how many
        subscriptions were removed (-1: closed).
        """
        if self.owner.closed or self.options is None:
            return succeed(0)
        d = maybeDeferred(authenticator.authenticate, self.options, self.owner.peer)
        d.addCallback(settle)
        d.addTimeout(self.auth_timeout, self.clock)
        d.addCallbacks(self._accepted_again, self._refused_again)
        return d

    def _accepted_again(self, identity: Identity) -> int:
        if self.owner.closed:
            return 0
        return self.owner.identity_changed(identity)

    def _refused_again(self, failure: Failure) -> int:
        owner = self.owner
        if owner.closed:
            return 0
        if failure.check(AuthenticationFailed):
            self._refused(failure)
            return -1
        self.log.warn(
            "client {cid} from {host}: could not be checked again ({why}); it keeps its permissions",
            cid=owner.cid, host=owner.peer.host, why=failure.getErrorMessage() or type(failure.value).__name__,
        )
        return 0

    def cancel(self) -> None:
        """The connection is gone: a check waiting for the throttle is dropped."""
        waiting, self._waiting = self._waiting, None
        if waiting is not None and waiting.active():
            waiting.cancel()
            self.throttle.done_waiting(self.owner.peer.host)
