import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_STATUS_UNSPECIFIED: _ClassVar[KeyStatus]
    KEY_STATUS_ACTIVE: _ClassVar[KeyStatus]
    KEY_STATUS_REVOKED: _ClassVar[KeyStatus]
    KEY_STATUS_EXPIRED: _ClassVar[KeyStatus]

class KeySource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_SOURCE_UNSPECIFIED: _ClassVar[KeySource]
    KEY_SOURCE_GENERATED: _ClassVar[KeySource]
    KEY_SOURCE_IMPORTED: _ClassVar[KeySource]

class InvalidReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVALID_REASON_UNSPECIFIED: _ClassVar[InvalidReason]
    INVALID_REASON_MALFORMED: _ClassVar[InvalidReason]
    INVALID_REASON_UNKNOWN_KEY: _ClassVar[InvalidReason]
    INVALID_REASON_REVOKED_KEY: _ClassVar[InvalidReason]
    INVALID_REASON_EXPIRED: _ClassVar[InvalidReason]
    INVALID_REASON_NOT_YET_VALID: _ClassVar[InvalidReason]
    INVALID_REASON_BAD_SIGNATURE: _ClassVar[InvalidReason]
    INVALID_REASON_WRONG_AUDIENCE: _ClassVar[InvalidReason]
    INVALID_REASON_WRONG_SUBJECT: _ClassVar[InvalidReason]
    INVALID_REASON_ALGORITHM_MISMATCH: _ClassVar[InvalidReason]
    INVALID_REASON_UNSUPPORTED_KEY: _ClassVar[InvalidReason]
    INVALID_REASON_KEY_NOT_YET_VALID: _ClassVar[InvalidReason]

class WatchEventKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WATCH_EVENT_KIND_UNSPECIFIED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_SNAPSHOT: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_SYNCED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_CHANGED: _ClassVar[WatchEventKind]
    WATCH_EVENT_KIND_PROGRESS: _ClassVar[WatchEventKind]
KEY_STATUS_UNSPECIFIED: KeyStatus
KEY_STATUS_ACTIVE: KeyStatus
KEY_STATUS_REVOKED: KeyStatus
KEY_STATUS_EXPIRED: KeyStatus
KEY_SOURCE_UNSPECIFIED: KeySource
KEY_SOURCE_GENERATED: KeySource
KEY_SOURCE_IMPORTED: KeySource
INVALID_REASON_UNSPECIFIED: InvalidReason
INVALID_REASON_MALFORMED: InvalidReason
INVALID_REASON_UNKNOWN_KEY: InvalidReason
INVALID_REASON_REVOKED_KEY: InvalidReason
INVALID_REASON_EXPIRED: InvalidReason
INVALID_REASON_NOT_YET_VALID: InvalidReason
INVALID_REASON_BAD_SIGNATURE: InvalidReason
INVALID_REASON_WRONG_AUDIENCE: InvalidReason
INVALID_REASON_WRONG_SUBJECT: InvalidReason
INVALID_REASON_ALGORITHM_MISMATCH: InvalidReason
INVALID_REASON_UNSUPPORTED_KEY: InvalidReason
INVALID_REASON_KEY_NOT_YET_VALID: InvalidReason
WATCH_EVENT_KIND_UNSPECIFIED: WatchEventKind
WATCH_EVENT_KIND_SNAPSHOT: WatchEventKind
WATCH_EVENT_KIND_SYNCED: WatchEventKind
WATCH_EVENT_KIND_CHANGED: WatchEventKind
WATCH_EVENT_KIND_PROGRESS: WatchEventKind

class SigningKey(_message.Message):
    __slots__ = ("id", "created_at", "environment_id", "algorithm", "status", "source", "name", "fingerprint", "public_key", "updated_at", "revoked_at", "expires_at", "create_time", "update_time", "revoke_time", "expire_time", "not_before", "not_before_time", "rotated_to")
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_TIME_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_TIME_FIELD_NUMBER: _ClassVar[int]
    ROTATED_TO_FIELD_NUMBER: _ClassVar[int]
    id: str
    created_at: str
    environment_id: str
    algorithm: str
    status: KeyStatus
    source: KeySource
    name: str
    fingerprint: str
    public_key: str
    updated_at: str
    revoked_at: str
    expires_at: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    revoke_time: _timestamp_pb2.Timestamp
    expire_time: _timestamp_pb2.Timestamp
    not_before: str
    not_before_time: _timestamp_pb2.Timestamp
    rotated_to: str
    def __init__(self, id: _Optional[str] = ..., created_at: _Optional[str] = ..., environment_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., status: _Optional[_Union[KeyStatus, str]] = ..., source: _Optional[_Union[KeySource, str]] = ..., name: _Optional[str] = ..., fingerprint: _Optional[str] = ..., public_key: _Optional[str] = ..., updated_at: _Optional[str] = ..., revoked_at: _Optional[str] = ..., expires_at: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revoke_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., not_before: _Optional[str] = ..., not_before_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rotated_to: _Optional[str] = ...) -> None: ...

class CreateSigningKeyRequest(_message.Message):
    __slots__ = ("environment_id", "algorithm", "name", "expires_at", "idempotency_key", "not_before")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    algorithm: str
    name: str
    expires_at: str
    idempotency_key: str
    not_before: str
    def __init__(self, environment_id: _Optional[str] = ..., algorithm: _Optional[str] = ..., name: _Optional[str] = ..., expires_at: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., not_before: _Optional[str] = ...) -> None: ...

class CreateSigningKeyResponse(_message.Message):
    __slots__ = ("key", "private_key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    private_key: str
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ..., private_key: _Optional[str] = ...) -> None: ...

class ImportSigningKeyRequest(_message.Message):
    __slots__ = ("environment_id", "pem", "jwk_json", "algorithm", "name", "expires_at", "idempotency_key", "not_before")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PEM_FIELD_NUMBER: _ClassVar[int]
    JWK_JSON_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    pem: str
    jwk_json: str
    algorithm: str
    name: str
    expires_at: str
    idempotency_key: str
    not_before: str
    def __init__(self, environment_id: _Optional[str] = ..., pem: _Optional[str] = ..., jwk_json: _Optional[str] = ..., algorithm: _Optional[str] = ..., name: _Optional[str] = ..., expires_at: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., not_before: _Optional[str] = ...) -> None: ...

class ImportSigningKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class GetSigningKeyRequest(_message.Message):
    __slots__ = ("environment_id", "id", "status")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    id: str
    status: str
    def __init__(self, environment_id: _Optional[str] = ..., id: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...

class GetSigningKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class ListSigningKeysRequest(_message.Message):
    __slots__ = ("environment_id", "limit", "page", "status", "page_size", "page_token", "algorithm", "source", "expires_before")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_BEFORE_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    limit: int
    page: int
    status: str
    page_size: int
    page_token: str
    algorithm: str
    source: str
    expires_before: str
    def __init__(self, environment_id: _Optional[str] = ..., limit: _Optional[int] = ..., page: _Optional[int] = ..., status: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., algorithm: _Optional[str] = ..., source: _Optional[str] = ..., expires_before: _Optional[str] = ...) -> None: ...

class ListSigningKeysResponse(_message.Message):
    __slots__ = ("keys", "next_page", "next_page_token")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SigningKey]
    next_page: int
    next_page_token: str
    def __init__(self, keys: _Optional[_Iterable[_Union[SigningKey, _Mapping]]] = ..., next_page: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RevokeSigningKeyRequest(_message.Message):
    __slots__ = ("environment_id", "id")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    id: str
    def __init__(self, environment_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class RevokeSigningKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class VerifyTokenRequest(_message.Message):
    __slots__ = ("token", "environment_id", "audience", "subject")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AUDIENCE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    token: str
    environment_id: str
    audience: str
    subject: str
    def __init__(self, token: _Optional[str] = ..., environment_id: _Optional[str] = ..., audience: _Optional[str] = ..., subject: _Optional[str] = ...) -> None: ...

class VerifyTokenResponse(_message.Message):
    __slots__ = ("valid", "reason", "reason_text", "key_id", "environment_id", "claims_json")
    VALID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_TEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_JSON_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    reason: InvalidReason
    reason_text: str
    key_id: str
    environment_id: str
    claims_json: str
    def __init__(self, valid: _Optional[bool] = ..., reason: _Optional[_Union[InvalidReason, str]] = ..., reason_text: _Optional[str] = ..., key_id: _Optional[str] = ..., environment_id: _Optional[str] = ..., claims_json: _Optional[str] = ...) -> None: ...

class WatchSigningKeysRequest(_message.Message):
    __slots__ = ("environment_id", "after")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    after: str
    def __init__(self, environment_id: _Optional[str] = ..., after: _Optional[str] = ...) -> None: ...

class WatchSigningKeysResponse(_message.Message):
    __slots__ = ("kind", "key", "position")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    kind: WatchEventKind
    key: SigningKey
    position: str
    def __init__(self, kind: _Optional[_Union[WatchEventKind, str]] = ..., key: _Optional[_Union[SigningKey, _Mapping]] = ..., position: _Optional[str] = ...) -> None: ...

class BatchGetSigningKeysRequest(_message.Message):
    __slots__ = ("environment_id", "ids", "status")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    ids: _containers.RepeatedScalarFieldContainer[str]
    status: str
    def __init__(self, environment_id: _Optional[str] = ..., ids: _Optional[_Iterable[str]] = ..., status: _Optional[str] = ...) -> None: ...

class BatchGetSigningKeysResponse(_message.Message):
    __slots__ = ("keys", "not_found_ids")
    KEYS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_IDS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedCompositeFieldContainer[SigningKey]
    not_found_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[_Union[SigningKey, _Mapping]]] = ..., not_found_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ListAuditEventsRequest(_message.Message):
    __slots__ = ("environment_id", "page_size", "page_token", "key_id", "actor", "action", "since", "until")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    page_size: int
    page_token: str
    key_id: str
    actor: str
    action: str
    since: str
    until: str
    def __init__(self, environment_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., key_id: _Optional[str] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., since: _Optional[str] = ..., until: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("id", "environment_id", "key_id", "action", "actor", "api", "request_id", "created_at", "create_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    API_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    environment_id: str
    key_id: str
    action: str
    actor: str
    api: str
    request_id: str
    created_at: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., environment_id: _Optional[str] = ..., key_id: _Optional[str] = ..., action: _Optional[str] = ..., actor: _Optional[str] = ..., api: _Optional[str] = ..., request_id: _Optional[str] = ..., created_at: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListAuditEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[AuditEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[AuditEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class RotateSigningKeyRequest(_message.Message):
    __slots__ = ("environment_id", "id", "algorithm", "name", "not_before", "expires_at", "grace_period_seconds", "idempotency_key")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    GRACE_PERIOD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    id: str
    algorithm: str
    name: str
    not_before: str
    expires_at: str
    grace_period_seconds: int
    idempotency_key: str
    def __init__(self, environment_id: _Optional[str] = ..., id: _Optional[str] = ..., algorithm: _Optional[str] = ..., name: _Optional[str] = ..., not_before: _Optional[str] = ..., expires_at: _Optional[str] = ..., grace_period_seconds: _Optional[int] = ..., idempotency_key: _Optional[str] = ...) -> None: ...

class RotateSigningKeyResponse(_message.Message):
    __slots__ = ("key", "private_key", "previous_key")
    KEY_FIELD_NUMBER: _ClassVar[int]
    PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    private_key: str
    previous_key: SigningKey
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ..., private_key: _Optional[str] = ..., previous_key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class UpdateSigningKeyRequest(_message.Message):
    __slots__ = ("environment_id", "id", "name", "expires_at")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    id: str
    name: str
    expires_at: str
    def __init__(self, environment_id: _Optional[str] = ..., id: _Optional[str] = ..., name: _Optional[str] = ..., expires_at: _Optional[str] = ...) -> None: ...

class UpdateSigningKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class GetCurrentSigningKeyRequest(_message.Message):
    __slots__ = ("environment_id",)
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    def __init__(self, environment_id: _Optional[str] = ...) -> None: ...

class GetCurrentSigningKeyResponse(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: SigningKey
    def __init__(self, key: _Optional[_Union[SigningKey, _Mapping]] = ...) -> None: ...

class GetJwksRequest(_message.Message):
    __slots__ = ("environment_id", "if_none_match")
    ENVIRONMENT_ID_FIELD_NUMBER: _ClassVar[int]
    IF_NONE_MATCH_FIELD_NUMBER: _ClassVar[int]
    environment_id: str
    if_none_match: str
    def __init__(self, environment_id: _Optional[str] = ..., if_none_match: _Optional[str] = ...) -> None: ...

class GetJwksResponse(_message.Message):
    __slots__ = ("jwks_json", "etag", "not_modified", "key_count")
    JWKS_JSON_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    NOT_MODIFIED_FIELD_NUMBER: _ClassVar[int]
    KEY_COUNT_FIELD_NUMBER: _ClassVar[int]
    jwks_json: bytes
    etag: str
    not_modified: bool
    key_count: int
    def __init__(self, jwks_json: _Optional[bytes] = ..., etag: _Optional[str] = ..., not_modified: _Optional[bool] = ..., key_count: _Optional[int] = ...) -> None: ...
