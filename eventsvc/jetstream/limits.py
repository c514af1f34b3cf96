"""
The account's JetStream limits ([jetstream] max_streams, max_consumers,
max_ack_pending, memory_max_stream_bytes, storage_max_stream_bytes,
max_bytes_required), checked as nats-server 2.9.10 checks a limited
account's (eventsvc has one account, so its limits are the server's).

It knows the rules and their errors only: the engine and the consumer
checks call it with the configuration at hand; it keeps no state.
"""

from __future__ import annotations

from typing import Any, Dict, NamedTuple

from eventsvc.jetstream import errors


class AccountLimits(NamedTuple):
    """
    A nats-server account's C{JetStreamAccountLimits}; 0 or -1 is no limit
    (as nats-server tests them: only a positive limit is one).
    """

    #: [jetstream] max_memory_store and max_file_store as written (-1: not
    #: written); only reported, the engine checks the resolved ones.
    max_memory: int = -1
    max_storage: int = -1
    #: Streams the account may have.
    max_streams: int = -1
    #: Consumers each stream may have (nats-server 2.9 counts them per stream).
    max_consumers: int = -1
    #: The largest max_ack_pending of a consumer, and the default of one that acks.
    max_ack_pending: int = -1
    #: The largest max_bytes of a memory (file) stream.
    memory_max_stream_bytes: int = -1
    storage_max_stream_bytes: int = -1
    #: Whether a stream must say max_bytes.
    max_bytes_required: bool = False

    def as_json(self) -> Dict[str, Any]:
        """C{$JS.API.INFO}'s C{limits}, keys in nats-server's order."""
        return {
            "max_memory": self.max_memory, "max_storage": self.max_storage, "max_streams": self.max_streams,
            "max_consumers": self.max_consumers, "max_ack_pending": self.max_ack_pending,
            "memory_max_stream_bytes": self.memory_max_stream_bytes,
            "storage_max_stream_bytes": self.storage_max_stream_bytes, "max_bytes_required": self.max_bytes_required,
        }


def check_new_stream(limits: AccountLimits, raw: Dict[str, Any], streams: int) -> None:
    """
    nats-server's C{jsNonClusteredStreamLimitsCheck} before a STREAM.CREATE
    (with the request's configuration, before its defaults): the number of
    streams (the same stream again counts too, as there), then the
    stream's max_consumers against the account's.

    @param streams: how many streams there are.
    @raise ApiError: 10027 or 10026.
    """
    if limits.max_streams > 0 and streams >= limits.max_streams:
        raise errors.MAXIMUM_STREAMS_LIMIT_ERR()
    if raw.get("max_consumers", 0) > 0 and limits.max_consumers > 0 and raw["max_consumers"] > limits.max_consumers:
        raise errors.MAXIMUM_CONSUMERS_LIMIT_ERR()


def check_max_bytes(limits: AccountLimits, config: Dict[str, Any]) -> None:
    """
    The end of nats-server's C{checkStreamCfg}, for a create and an update
    alike: a stream must say max_bytes if the account says so, and no more
    than its storage's max stream bytes.

    @raise ApiError: 10113 or 10122.
    """
    cap = limits.memory_max_stream_bytes if config["storage"] == "memory" else limits.storage_max_stream_bytes
    if limits.max_bytes_required and config["max_bytes"] <= 0:
        raise errors.STREAM_MAX_BYTES_REQUIRED()
    if cap > 0 and config["max_bytes"] > cap:
        raise errors.STREAM_MAX_STREAM_BYTES_EXCEEDED()


def stream_bytes_cap(limits: AccountLimits, storage: str) -> int:
    """memory_max_stream_bytes or storage_max_stream_bytes, for C{storage} ("memory" or "file")."""
    return limits.memory_max_stream_bytes if storage == "memory" else limits.storage_max_stream_bytes


def default_max_ack_pending(limits: AccountLimits, default: int) -> int:
    """The max_ack_pending of a consumer that acks and says none: C{default}, or the account's if smaller."""
    if 0 < limits.max_ack_pending < default:
        return limits.max_ack_pending
    return default


def check_max_ack_pending(limits: AccountLimits, max_ack_pending: int) -> None:
    """
    A consumer's max_ack_pending against the account's (nats-server's
    C{checkConsumerCfg}).

    @raise ApiError: 10121, naming the limit.
    """
    if limits.max_ack_pending > 0 and max_ack_pending > limits.max_ack_pending:
        raise errors.CONSUMER_MAX_PENDING_ACK_EXCESS_ERR_F(limit=limits.max_ack_pending)


def max_consumers(limits: AccountLimits, stream_max: int) -> int:
    """
    How many consumers a stream whose max_consumers is C{stream_max} may
    have (nats-server's C{addConsumer}: the account's limit where the
    stream has none or a larger one); 0 or less: no limit.
    """
    if stream_max <= 0 or 0 < limits.max_consumers < stream_max:
        return limits.max_consumers
    return stream_max
