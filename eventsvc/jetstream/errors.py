"""
JetStream's API errors, as nats-server 2.9 answers them.

Every refusal of a C{$JS.API} request is C{{"error": {"code", "err_code",
"description"}}}: C{code} is HTTP-like, C{err_code} is the number clients
match on (nats.go's C{ErrStreamNotFound} is 10059, nats-py's
C{NotFoundError} is 404 with it), and C{description} is the text.  The
table below is nats-server 2.9.10's C{jetstream_errors_generated.go}, one
line per error, names as there without the C{JS} prefix; a C{{name}} in a
description is filled by L{ErrorKind.__call__}.

This module knows no stream and no consumer: it only names refusals.
"""

from __future__ import annotations

from typing import Any, Dict


class ApiError(Exception):
    """
    A refused JetStream API request: raise it from a handler and the
    dispatcher answers C{{"type": ..., "error": self.as_json()}}.
    """

    def __init__(self, code: int, err_code: int, description: str) -> None:
        Exception.__init__(self, description)
        self.code = code
        self.err_code = err_code
        self.description = description

    def as_json(self) -> Dict[str, Any]:
        """The C{error} object of an API answer."""
        return {"code": self.code, "err_code": self.err_code, "description": self.description}

    def __repr__(self) -> str:
        return "ApiError({}, {}, {!r})".format(self.code, self.err_code, self.description)


class ErrorKind:
    """One of nats-server's JetStream errors: call it to make the L{ApiError}."""

    def __init__(self, code: int, err_code: int, description: str) -> None:
        self.code = code
        self.err_code = err_code
        self.description = description

    def __call__(self, **values: Any) -> ApiError:
        """
        The error, with each C{{name}} of the description replaced by
        C{values[name]} (as nats-server's C{NewJS...Error(err)} does).
        """
        text = self.description
        for name, value in values.items():
            text = text.replace("{" + name + "}", str(value))
        return ApiError(self.code, self.err_code, text)

    def matches(self, error: ApiError) -> bool:
        """Whether C{error} is one of these."""
        return error.err_code == self.err_code


_E = ErrorKind

# -- nats-server 2.9.10, jetstream_errors_generated.go ----------------------
ACCOUNT_RESOURCES_EXCEEDED_ERR = _E(400, 10002, "resource limits exceeded for account")
BAD_REQUEST_ERR = _E(400, 10003, "bad request")
CLUSTER_INCOMPLETE_ERR = _E(503, 10004, "incomplete results")
CLUSTER_NO_PEERS_ERR_F = _E(400, 10005, "{err}")
CLUSTER_NOT_ACTIVE_ERR = _E(500, 10006, "JetStream not in clustered mode")
CLUSTER_NOT_ASSIGNED_ERR = _E(500, 10007, "JetStream cluster not assigned to this server")
CLUSTER_NOT_AVAIL_ERR = _E(503, 10008, "JetStream system temporarily unavailable")
CLUSTER_NOT_LEADER_ERR = _E(500, 10009, "JetStream cluster can not handle request")
CLUSTER_PEER_NOT_MEMBER_ERR = _E(400, 10040, "peer not a member")
CLUSTER_REQUIRED_ERR = _E(503, 10010, "JetStream clustering support required")
CLUSTER_SERVER_NOT_MEMBER_ERR = _E(400, 10044, "server is not a member of the cluster")
CLUSTER_TAGS_ERR = _E(400, 10011, "tags placement not supported for operation")
CLUSTER_UN_SUPPORT_FEATURE_ERR = _E(503, 10036, "not currently supported in clustered mode")
CONSUMER_BAD_DURABLE_NAME_ERR = _E(400, 10103, "durable name can not contain '.', '*', '>'")
CONSUMER_CONFIG_REQUIRED_ERR = _E(400, 10078, "consumer config required")
CONSUMER_CREATE_DURABLE_AND_NAME_MISMATCH = _E(400, 10132, "Consumer Durable and Name have to be equal if both are provided")
CONSUMER_CREATE_ERR_F = _E(500, 10012, "{err}")
CONSUMER_CREATE_FILTER_SUBJECT_MISMATCH_ERR = _E(400, 10131, "Consumer create request did not match filtered subject from create subject")
CONSUMER_DELIVER_CYCLE_ERR = _E(400, 10081, "consumer deliver subject forms a cycle")
CONSUMER_DELIVER_TO_WILDCARDS_ERR = _E(400, 10079, "consumer deliver subject has wildcards")
CONSUMER_DESCRIPTION_TOO_LONG_ERR_F = _E(400, 10107, "consumer description is too long, maximum allowed is {max}")
CONSUMER_DIRECT_REQUIRES_EPHEMERAL_ERR = _E(400, 10091, "consumer direct requires an ephemeral consumer")
CONSUMER_DIRECT_REQUIRES_PUSH_ERR = _E(400, 10090, "consumer direct requires a push based consumer")
CONSUMER_DURABLE_NAME_NOT_IN_SUBJECT_ERR = _E(400, 10016, "consumer expected to be durable but no durable name set in subject")
CONSUMER_DURABLE_NAME_NOT_MATCH_SUBJECT_ERR = _E(400, 10017, "consumer name in subject does not match durable name in request")
CONSUMER_DURABLE_NAME_NOT_SET_ERR = _E(400, 10018, "consumer expected to be durable but a durable name was not set")
CONSUMER_EPHEMERAL_WITH_DURABLE_IN_SUBJECT_ERR = _E(400, 10019, "consumer expected to be ephemeral but detected a durable name set in subject")
CONSUMER_EPHEMERAL_WITH_DURABLE_NAME_ERR = _E(400, 10020, "consumer expected to be ephemeral but a durable name was set in request")
CONSUMER_EXISTING_ACTIVE_ERR = _E(400, 10105, "consumer already exists and is still active")
CONSUMER_F_C_REQUIRES_PUSH_ERR = _E(400, 10089, "consumer flow control requires a push based consumer")
CONSUMER_FILTER_NOT_SUBSET_ERR = _E(400, 10093, "consumer filter subject is not a valid subset of the interest subjects")
CONSUMER_H_B_REQUIRES_PUSH_ERR = _E(400, 10088, "consumer idle heartbeat requires a push based consumer")
CONSUMER_INVALID_DELIVER_SUBJECT = _E(400, 10112, "invalid push consumer deliver subject")
CONSUMER_INVALID_POLICY_ERR_F = _E(400, 10094, "{err}")
CONSUMER_INVALID_SAMPLING_ERR_F = _E(400, 10095, "failed to parse consumer sampling configuration: {err}")
CONSUMER_MAX_DELIVER_BACKOFF_ERR = _E(400, 10116, "max deliver is required to be > length of backoff values")
CONSUMER_MAX_PENDING_ACK_EXCESS_ERR_F = _E(400, 10121, "consumer max ack pending exceeds system limit of {limit}")
CONSUMER_MAX_PENDING_ACK_POLICY_REQUIRED_ERR = _E(400, 10082, "consumer requires ack policy for max ack pending")
CONSUMER_MAX_REQUEST_BATCH_EXCEEDED_F = _E(400, 10125, "consumer max request batch exceeds server limit of {limit}")
CONSUMER_MAX_REQUEST_BATCH_NEGATIVE_ERR = _E(400, 10114, "consumer max request batch needs to be > 0")
CONSUMER_MAX_REQUEST_EXPIRES_TO_SMALL = _E(400, 10115, "consumer max request expires needs to be >= 1ms")
CONSUMER_MAX_WAITING_NEGATIVE_ERR = _E(400, 10087, "consumer max waiting needs to be positive")
CONSUMER_NAME_CONTAINS_PATH_SEPARATORS_ERR = _E(400, 10127, "Consumer name can not contain path separators")
CONSUMER_NAME_EXIST_ERR = _E(400, 10013, "consumer name already in use")
CONSUMER_NAME_TOO_LONG_ERR_F = _E(400, 10102, "consumer name is too long, maximum allowed is {max}")
CONSUMER_NOT_FOUND_ERR = _E(404, 10014, "consumer not found")
CONSUMER_OFFLINE_ERR = _E(500, 10119, "consumer is offline")
CONSUMER_ON_MAPPED_ERR = _E(400, 10092, "consumer direct on a mapped consumer")
CONSUMER_PULL_NOT_DURABLE_ERR = _E(400, 10085, "consumer in pull mode requires a durable name")
CONSUMER_PULL_REQUIRES_ACK_ERR = _E(400, 10084, "consumer in pull mode requires ack policy")
CONSUMER_PULL_WITH_RATE_LIMIT_ERR = _E(400, 10086, "consumer in pull mode can not have rate limit set")
CONSUMER_PUSH_MAX_WAITING_ERR = _E(400, 10080, "consumer in push mode can not set max waiting")
CONSUMER_REPLACEMENT_WITH_DIFFERENT_NAME_ERR = _E(400, 10106, "consumer replacement durable config not the same")
CONSUMER_REPLICAS_EXCEEDS_STREAM = _E(400, 10126, "consumer config replica count exceeds parent stream")
CONSUMER_SMALL_HEARTBEAT_ERR = _E(400, 10083, "consumer idle heartbeat needs to be >= 100ms")
CONSUMER_STORE_FAILED_ERR_F = _E(500, 10104, "error creating store for consumer: {err}")
CONSUMER_W_Q_CONSUMER_NOT_DELIVER_ALL_ERR = _E(400, 10101, "consumer must be deliver all on workqueue stream")
CONSUMER_W_Q_CONSUMER_NOT_UNIQUE_ERR = _E(400, 10100, "filtered consumer not unique on workqueue stream")
CONSUMER_W_Q_MULTIPLE_UNFILTERED_ERR = _E(400, 10099, "multiple non-filtered consumers not allowed on workqueue stream")
CONSUMER_W_Q_REQUIRES_EXPLICIT_ACK_ERR = _E(400, 10098, "workqueue stream requires explicit ack")
CONSUMER_WITH_FLOW_CONTROL_NEEDS_HEARTBEATS = _E(400, 10108, "consumer with flow control also needs heartbeats")
INSUFFICIENT_RESOURCES_ERR = _E(503, 10023, "insufficient resources")
INVALID_J_S_O_N_ERR = _E(400, 10025, "invalid JSON")
MAXIMUM_CONSUMERS_LIMIT_ERR = _E(400, 10026, "maximum consumers limit reached")
MAXIMUM_STREAMS_LIMIT_ERR = _E(400, 10027, "maximum number of streams reached")
MEMORY_RESOURCES_EXCEEDED_ERR = _E(500, 10028, "insufficient memory resources available")
MIRROR_CONSUMER_SETUP_FAILED_ERR_F = _E(500, 10029, "{err}")
MIRROR_MAX_MESSAGE_SIZE_TOO_BIG_ERR = _E(400, 10030, "stream mirror must have max message size >= source")
MIRROR_WITH_SOURCES_ERR = _E(400, 10031, "stream mirrors can not also contain other sources")
MIRROR_WITH_START_SEQ_AND_TIME_ERR = _E(400, 10032, "stream mirrors can not have both start seq and start time configured")
MIRROR_WITH_SUBJECT_FILTERS_ERR = _E(400, 10033, "stream mirrors can not contain filtered subjects")
MIRROR_WITH_SUBJECTS_ERR = _E(400, 10034, "stream mirrors can not contain subjects")
NO_ACCOUNT_ERR = _E(503, 10035, "account not found")
NO_LIMITS_ERR = _E(400, 10120, "no JetStream default or applicable tiered limit present")
NO_MESSAGE_FOUND_ERR = _E(404, 10037, "no message found")
NOT_EMPTY_REQUEST_ERR = _E(400, 10038, "expected an empty request payload")
NOT_ENABLED_ERR = _E(503, 10076, "JetStream not enabled")
NOT_ENABLED_FOR_ACCOUNT_ERR = _E(503, 10039, "JetStream not enabled for account")
PEER_REMAP_ERR = _E(503, 10075, "peer remap failed")
RAFT_GENERAL_ERR_F = _E(500, 10041, "{err}")
REPLICAS_COUNT_CANNOT_BE_NEGATIVE = _E(400, 10133, "replicas count cannot be negative")
RESTORE_SUBSCRIBE_FAILED_ERR_F = _E(500, 10042, "JetStream unable to subscribe to restore snapshot {subject}: {err}")
SEQUENCE_NOT_FOUND_ERR_F = _E(400, 10043, "sequence {seq} not found")
SNAPSHOT_DELIVER_SUBJECT_INVALID_ERR = _E(400, 10015, "deliver subject not valid")
SOURCE_CONSUMER_SETUP_FAILED_ERR_F = _E(500, 10045, "{err}")
SOURCE_MAX_MESSAGE_SIZE_TOO_BIG_ERR = _E(400, 10046, "stream source must have max message size >= target")
STORAGE_RESOURCES_EXCEEDED_ERR = _E(500, 10047, "insufficient storage resources available")
STREAM_ASSIGNMENT_ERR_F = _E(500, 10048, "{err}")
STREAM_CREATE_ERR_F = _E(500, 10049, "{err}")
STREAM_DELETE_ERR_F = _E(500, 10050, "{err}")
STREAM_EXTERNAL_API_OVERLAP_ERR_F = _E(400, 10021, "stream external api prefix {prefix} must not overlap with {subject}")
STREAM_EXTERNAL_DEL_PREFIX_OVERLAPS_ERR_F = _E(400, 10022, "stream external delivery prefix {prefix} overlaps with stream subject {subject}")
STREAM_GENERAL_ERROR_F = _E(500, 10051, "{err}")
STREAM_HEADER_EXCEEDS_MAXIMUM_ERR = _E(400, 10097, "header size exceeds maximum allowed of 64k")
STREAM_INFO_MAX_SUBJECTS_ERR = _E(500, 10117, "subject details would exceed maximum allowed")
STREAM_INVALID_CONFIG_F = _E(500, 10052, "{err}")
STREAM_INVALID_ERR = _E(500, 10096, "stream not valid")
STREAM_INVALID_EXTERNAL_DELIVERY_SUBJ_ERR_F = _E(400, 10024, "stream external delivery prefix {prefix} must not contain wildcards")
STREAM_LIMITS_ERR_F = _E(500, 10053, "{err}")
STREAM_MAX_BYTES_REQUIRED = _E(400, 10113, "account requires a stream config to have max bytes set")
STREAM_MAX_STREAM_BYTES_EXCEEDED = _E(400, 10122, "stream max bytes exceeds account limit max stream bytes")
STREAM_MESSAGE_EXCEEDS_MAXIMUM_ERR = _E(400, 10054, "message size exceeds maximum allowed")
STREAM_MIRROR_NOT_UPDATABLE_ERR = _E(400, 10055, "stream mirror configuration can not be updated")
STREAM_MISMATCH_ERR = _E(400, 10056, "stream name in subject does not match request")
STREAM_MOVE_AND_SCALE_ERR = _E(400, 10123, "can not move and scale a stream in a single update")
STREAM_MOVE_IN_PROGRESS_F = _E(400, 10124, "stream move already in progress: {msg}")
STREAM_MOVE_NOT_IN_PROGRESS = _E(400, 10129, "stream move not in progress")
STREAM_MSG_DELETE_FAILED_F = _E(500, 10057, "{err}")
STREAM_NAME_CONTAINS_PATH_SEPARATORS_ERR = _E(400, 10128, "Stream name can not contain path separators")
STREAM_NAME_EXIST_ERR = _E(400, 10058, "stream name already in use with a different configuration")
STREAM_NAME_EXIST_RESTORE_FAILED_ERR = _E(400, 10130, "stream name already in use, cannot restore")
STREAM_NOT_FOUND_ERR = _E(404, 10059, "stream not found")
STREAM_NOT_MATCH_ERR = _E(400, 10060, "expected stream does not match")
STREAM_OFFLINE_ERR = _E(500, 10118, "stream is offline")
STREAM_PURGE_FAILED_F = _E(500, 10110, "{err}")
STREAM_REPLICAS_NOT_SUPPORTED_ERR = _E(500, 10074, "replicas > 1 not supported in non-clustered mode")
STREAM_REPLICAS_NOT_UPDATABLE_ERR = _E(400, 10061, "Replicas configuration can not be updated")
STREAM_RESTORE_ERR_F = _E(500, 10062, "restore failed: {err}")
STREAM_ROLLUP_FAILED_F = _E(500, 10111, "{err}")
STREAM_SEALED_ERR = _E(400, 10109, "invalid operation on sealed stream")
STREAM_SEQUENCE_NOT_MATCH_ERR = _E(503, 10063, "expected stream sequence does not match")
STREAM_SNAPSHOT_ERR_F = _E(500, 10064, "snapshot failed: {err}")
STREAM_STORE_FAILED_F = _E(503, 10077, "{err}")
STREAM_SUBJECT_OVERLAP_ERR = _E(400, 10065, "subjects overlap with an existing stream")
STREAM_TEMPLATE_CREATE_ERR_F = _E(500, 10066, "{err}")
STREAM_TEMPLATE_DELETE_ERR_F = _E(500, 10067, "{err}")
STREAM_TEMPLATE_NOT_FOUND_ERR = _E(404, 10068, "template not found")
STREAM_UPDATE_ERR_F = _E(500, 10069, "{err}")
STREAM_WRONG_LAST_MSG_I_D_ERR_F = _E(400, 10070, "wrong last msg ID: {id}")
STREAM_WRONG_LAST_SEQUENCE_ERR_F = _E(400, 10071, "wrong last sequence: {seq}")
TEMP_STORAGE_FAILED_ERR = _E(500, 10072, "JetStream unable to open temp storage for restore")
TEMPLATE_NAME_NOT_MATCH_SUBJECT_ERR = _E(400, 10073, "template name in subject does not match request")
