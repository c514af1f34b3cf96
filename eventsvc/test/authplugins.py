"""Authenticators named by dotted path in the tests' configurations."""

from twisted.internet.defer import Deferred

from eventsvc.nats.interfaces import Identity

PENDING = []


def only_open_sesame(connect, peer):
    """Accepts the token "open-sesame" with the configured permissions."""
    return "sesame" if connect.get("auth_token") == "open-sesame" else None


async def coroutine_check(connect, peer):
    return Identity("coroutine") if connect.get("auth_token") == "async-ok" else False


def broken(connect, peer):
    raise RuntimeError("the operator's plug-in has a bug")


def never(connect, peer):
    d = Deferred()
    PENDING.append(d)
    return d
