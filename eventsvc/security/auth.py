"""
Authenticators for the client listeners that take logins (the agent
listener, [gateway], and [websocket]): they answer a CONNECT with an
L{Identity}.

Built in: tokens (listed in the config or in a file, plain or stored as
C{sha256:<hex>}), user and password (nats-server style), an HTTP(S)
authenticator that asks a URL about a token, and any Python object named by
dotted path, which is how operators plug in their own logic.  A chain tries
them in order.  Secrets are compared in constant time and never logged:
failures say what kind of credential failed, not what it was.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.logger import Logger
from zope.interface import implementer

from eventsvc import wirejson
from eventsvc.dotted import load_object, settle
from eventsvc.files import FileLock, write_atomic
from eventsvc.nats.interfaces import AuthenticationFailed, IAuthenticator, Identity, IPermissions, PeerInfo
from eventsvc.security.permissions import Permissions, health_check_permissions

HASHED = "sha256:"


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def stored_digest(entry: str) -> bytes:
    """A configured secret as a digest: C{sha256:<hex>} as given, else hashed now."""
    if entry.startswith(HASHED):
        value = bytes.fromhex(entry[len(HASHED):])
        if len(value) != 32:
            raise ValueError("a sha256: entry needs 64 hex digits")
        return value
    return digest(entry)


def _matches(presented: bytes, stored: Iterable[Tuple[str, bytes]]) -> Optional[str]:
    # Every entry is compared, in constant time each: no early exit.
    found = None
    for name, candidate in stored:
        if hmac.compare_digest(presented, candidate) and found is None:
            found = name
    return found


def read_tokens_file(path: str) -> List[str]:
    """One token (or C{sha256:<hex>}) per line; blank lines and # comments ignored."""
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]


@implementer(IAuthenticator)
class TokenAuthenticator:
    """Accepts the tokens it was given; each identity is named by its digest's start."""

    def __init__(self, tokens: Sequence[str], permissions: Optional[IPermissions], name: str = "token") -> None:
        self._tokens = [("{}:{}".format(name, stored_digest(t).hex()[:8]), stored_digest(t)) for t in tokens]
        self._permissions = permissions

    def authenticate(self, connect: Dict[str, Any], peer: PeerInfo) -> Identity:
        token = connect.get("auth_token")
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed("no token")
        name = _matches(digest(token), self._tokens)
        if name is None:
            raise AuthenticationFailed("unknown token")
        return Identity(name, self._permissions)


@implementer(IAuthenticator)
class UserPasswordAuthenticator:
    """nats-server style C{user}/C{pass} in CONNECT."""

    def __init__(self, users: Dict[str, str], permissions: Optional[IPermissions]) -> None:
        self._users = {user: stored_digest(password) for user, password in users.items()}
        self._permissions = permissions

    def authenticate(self, connect: Dict[str, Any], peer: PeerInfo) -> Identity:
        user, password = connect.get("user"), connect.get("pass")
        if not isinstance(user, str) or not isinstance(password, str):
            raise AuthenticationFailed("no user and password")
        stored = self._users.get(user)
        presented = digest(password)
        # Compare even for an unknown user, so timing does not tell users apart.
        if not hmac.compare_digest(presented, stored if stored is not None else digest(secrets.token_hex())) or stored is None:
            raise AuthenticationFailed("bad user or password")
        return Identity("user:" + user, self._permissions)


@implementer(IAuthenticator)
class NamedIdentities:
    """
    Identities listed one by one (C{[[gateway.identities]]}), each with its
    own credential, a token or a user and password, and its own
    permissions: C{entries} are (name, token, user, password, permissions),
    the secrets plain or C{sha256:}.  Identities are named as configured.
    """

    def __init__(self, entries: Sequence[Tuple[str, str, str, str, Optional[IPermissions]]]) -> None:
        self._tokens = [(name, stored_digest(token)) for name, token, _, _, _ in entries if token]
        self._users = {user: (name, stored_digest(password)) for name, _, user, password, _ in entries if user}
        self._permissions = {name: permissions for name, _, _, _, permissions in entries}

    def authenticate(self, connect: Dict[str, Any], peer: PeerInfo) -> Identity:
        token, user, password = connect.get("auth_token"), connect.get("user"), connect.get("pass")
        if isinstance(token, str) and token:
            name = _matches(digest(token), self._tokens)
            if name is None:
                raise AuthenticationFailed("unknown token")
        elif isinstance(user, str) and isinstance(password, str):
            name, stored = self._users.get(user, ("", digest(secrets.token_hex())))
            # Compared even for an unknown user, so timing does not tell users apart.
            if not hmac.compare_digest(digest(password), stored) or not name:
                raise AuthenticationFailed("bad user or password")
        else:
            raise AuthenticationFailed("no token, user or password")
        return Identity(name, self._permissions[name])


@implementer(IAuthenticator)
class HTTPAuthenticator:
    """
    Asks C{url} about a token: POST C{{"token": …}} as JSON.  200 with a JSON
    object accepts (C{name} and C{permissions} optional); 401 and 403
    refuse; anything else is an error (refused, and logged).  Answers are
    cached for C{ttl} seconds, keyed by the token's digest.  Never blocks
    the reactor.
    """

    log = Logger()

    def __init__(self, url: str, ttl: float, permissions: Optional[IPermissions], agent: Any, clock: Any) -> None:
        self.url = url.encode("utf-8")
        self.ttl = ttl
        self._permissions = permissions
        self._agent = agent
        self._clock = clock
        self._cache: "OrderedDict[bytes, Tuple[float, Optional[Identity]]]" = OrderedDict()

    def authenticate(self, connect: Dict[str, Any], peer: PeerInfo) -> Deferred:
        token = connect.get("auth_token")
        if not isinstance(token, str) or not token:
            raise AuthenticationFailed("no token")
        key = digest(token)
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > self._clock.seconds():
                self._cache.move_to_end(key)
                if cached[1] is None:
                    raise AuthenticationFailed("token refused by the authentication service (cached)")
                return cached[1]  # type: ignore[return-value]
            del self._cache[key]
        return ensureDeferred(self._ask(token, key, peer))

    async def _ask(self, token: str, key: bytes, peer: PeerInfo) -> Identity:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers
        from twisted.web.client import FileBodyProducer
        from io import BytesIO

        body = FileBodyProducer(BytesIO(json.dumps({"token": token, "client_ip": peer.host}).encode("utf-8")))
        response = await self._agent.request(
            b"POST", self.url, Headers({b"Content-Type": [b"application/json"]}), body
        )
        data = await readBody(response)
        expires = self._clock.seconds() + self.ttl
        if response.code in (401, 403):
            # Refusals briefly: a token issued a moment ago works soon.
            self._remember(key, self._clock.seconds() + min(self.ttl, REFUSAL_TTL), None)
            raise AuthenticationFailed("token refused by the authentication service")
        if response.code != 200:
            raise AuthenticationFailed("authentication service answered {}".format(response.code))
        try:
            answer = wirejson.loads(data) if data.strip() else {}
            if not isinstance(answer, dict):
                raise ValueError("not an object")
            permissions = self._permissions
            if isinstance(answer.get("permissions"), dict):
                permissions = Permissions(**{k: v for k, v in answer["permissions"].items() if k in _PERMISSION_KEYS})
            identity = Identity("http:" + str(answer.get("name") or key.hex()[:8]), permissions)
        except (ValueError, TypeError) as e:
            raise AuthenticationFailed("authentication service answer unusable: {}".format(e))
        self._remember(key, expires, identity)
        return identity

    def _remember(self, key: bytes, expires: float, identity: Optional[Identity]) -> None:
        # A bounded LRU: past CACHE_SIZE the least recently used answer goes,
        # one at a time (rebuilding the whole cache per new token made bad
        # attempts four times slower at 100% CPU).
        cache = self._cache
        cache[key] = (expires, identity)
        cache.move_to_end(key)
        while len(cache) > CACHE_SIZE:
            cache.popitem(last=False)


_PERMISSION_KEYS = ("publish_allow", "publish_deny", "subscribe_allow", "subscribe_deny")
#: Answers the HTTP authenticator keeps, and how long it keeps a refusal.
CACHE_SIZE = 10000
REFUSAL_TTL = 5.0


@implementer(IAuthenticator)
class FunctionAuthenticator:
    """
    A plain callable C{f(connect, peer)} as an authenticator: it returns (or
    its Deferred or coroutine gives) an L{Identity}, a name, or True to
    accept, and None or False to refuse.
    """

    def __init__(self, function: Callable[..., Any], permissions: Optional[IPermissions], name: str) -> None:
        self._function = function
        self._permissions = permissions
        self._name = name

    def authenticate(self, connect: Dict[str, Any], peer: PeerInfo) -> Deferred:
        d = maybeDeferred(self._function, connect, peer)
        d.addCallback(settle)
        d.addCallback(self._identity)
        return d

    def _identity(self, result: Any) -> Identity:
        if isinstance(result, Identity):
            return result
        if result is None or result is False:
            raise AuthenticationFailed("refused by {}".format(self._name))
        name = result if isinstance(result, str) else self._name
        return Identity(name, self._permissions)


def load_python_authenticator(path: str, permissions: Optional[IPermissions]) -> IAuthenticator:
    """
    The object at C{module:attribute} (or C{module.attribute}): an
    L{IAuthenticator} provider, or a callable used as L{FunctionAuthenticator}.

    @raise ValueError: it cannot be imported, or is neither.
    """
    target = load_object(path)
    if IAuthenticator.providedBy(target):
        return target
    if callable(target):
        return FunctionAuthenticator(target, permissions, "python:" + path)
    raise ValueError("{!r} is neither an authenticator nor callable".format(path))


@implementer(IAuthenticator)
class ChainAuthenticator:
    """Tries each authenticator in turn; the first identity wins."""

    def __init__(self, authenticators: Sequence[IAuthenticator]) -> None:
        self.authenticators = list(authenticators)

    def authenticate(self, connect: Dict[str, Any], peer: PeerInfo) -> Deferred:
        return ensureDeferred(self._first(connect, peer))

    async def _first(self, connect: Dict[str, Any], peer: PeerInfo) -> Identity:
        reasons = []
        for authenticator in self.authenticators:
            try:
                result = settle(authenticator.authenticate(connect, peer))
                if isinstance(result, Deferred):
                    result = await result
                return result
            except AuthenticationFailed as e:
                # Several token lists each say "unknown token": say it once.
                if str(e) not in reasons:
                    reasons.append(str(e))
        raise AuthenticationFailed("; ".join(reasons) or "no authenticator")


class HealthToken:
    """
    A fresh token per start, written to C{path} with mode 0600: it lets the
    local health check use C{healthcheck.>} and its own inbox and nothing else.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = secrets.token_urlsafe(32)
        self.authenticator = TokenAuthenticator([self.token], Permissions(**health_check_permissions(self.token)), name="health-check")
        self._lock = FileLock(path + ".lock")

    def write(self) -> None:
        """
        Hold C{path}.lock for as long as we run (a second agent listener on the
        same file is refused: it would replace our token), then write the token
        atomically, never through a link left at C{path}.

        @raise Locked: another process holds the token file.
        """
        # Its folder is the state directory by default, which a process with
        # only the agent listener (no spool to make it) may be the first to use.
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
        self._lock.acquire()
        try:
            write_atomic(self.path, self.token.encode("ascii") + b"\n", 0o600)
        except BaseException:
            self._lock.release()
            raise

    def remove(self) -> None:
        if not self._lock.held:
            return  # not ours: another process's token
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._lock.release()
