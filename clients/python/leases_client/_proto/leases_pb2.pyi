import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HoldRequest(_message.Message):
    __slots__ = ("acquire", "heartbeat", "release")
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    acquire: Acquire
    heartbeat: Heartbeat
    release: Release
    def __init__(self, acquire: _Optional[_Union[Acquire, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ...) -> None: ...

class Acquire(_message.Message):
    __slots__ = ("key", "ttl", "metadata", "wait", "resume")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    key: str
    ttl: _duration_pb2.Duration
    metadata: bytes
    wait: _duration_pb2.Duration
    resume: int
    def __init__(self, key: _Optional[str] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metadata: _Optional[bytes] = ..., wait: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., resume: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Release(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HoldResponse(_message.Message):
    __slots__ = ("granted", "renewed", "ended")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    granted: Granted
    renewed: Renewed
    ended: Ended
    def __init__(self, granted: _Optional[_Union[Granted, _Mapping]] = ..., renewed: _Optional[_Union[Renewed, _Mapping]] = ..., ended: _Optional[_Union[Ended, _Mapping]] = ...) -> None: ...

class Granted(_message.Message):
    __slots__ = ("token", "time_left")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    token: int
    time_left: _duration_pb2.Duration
    def __init__(self, token: _Optional[int] = ..., time_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Renewed(_message.Message):
    __slots__ = ("time_left",)
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    time_left: _duration_pb2.Duration
    def __init__(self, time_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Ended(_message.Message):
    __slots__ = ("reason", "message")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[Ended.Reason]
        RELEASED: _ClassVar[Ended.Reason]
        REVOKED: _ClassVar[Ended.Reason]
        LOST: _ClassVar[Ended.Reason]
        SHUTDOWN: _ClassVar[Ended.Reason]
        HANDED_OVER: _ClassVar[Ended.Reason]
    REASON_UNSPECIFIED: Ended.Reason
    RELEASED: Ended.Reason
    REVOKED: Ended.Reason
    LOST: Ended.Reason
    SHUTDOWN: Ended.Reason
    HANDED_OVER: Ended.Reason
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: Ended.Reason
    message: str
    def __init__(self, reason: _Optional[_Union[Ended.Reason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class HoldManyRequest(_message.Message):
    __slots__ = ("acquire", "heartbeat", "release", "close")
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CLOSE_FIELD_NUMBER: _ClassVar[int]
    acquire: LeaseAcquire
    heartbeat: GroupHeartbeat
    release: LeaseRelease
    close: LeaseClose
    def __init__(self, acquire: _Optional[_Union[LeaseAcquire, _Mapping]] = ..., heartbeat: _Optional[_Union[GroupHeartbeat, _Mapping]] = ..., release: _Optional[_Union[LeaseRelease, _Mapping]] = ..., close: _Optional[_Union[LeaseClose, _Mapping]] = ...) -> None: ...

class LeaseAcquire(_message.Message):
    __slots__ = ("id", "acquire")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACQUIRE_FIELD_NUMBER: _ClassVar[int]
    id: int
    acquire: Acquire
    def __init__(self, id: _Optional[int] = ..., acquire: _Optional[_Union[Acquire, _Mapping]] = ...) -> None: ...

class GroupHeartbeat(_message.Message):
    __slots__ = ("ttl",)
    TTL_FIELD_NUMBER: _ClassVar[int]
    ttl: _duration_pb2.Duration
    def __init__(self, ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class LeaseRelease(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class LeaseClose(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: int
    def __init__(self, id: _Optional[int] = ...) -> None: ...

class HoldManyResponse(_message.Message):
    __slots__ = ("granted", "failed", "renewed", "ended")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    RENEWED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    granted: LeaseGranted
    failed: LeaseFailed
    renewed: GroupRenewed
    ended: LeaseEnded
    def __init__(self, granted: _Optional[_Union[LeaseGranted, _Mapping]] = ..., failed: _Optional[_Union[LeaseFailed, _Mapping]] = ..., renewed: _Optional[_Union[GroupRenewed, _Mapping]] = ..., ended: _Optional[_Union[LeaseEnded, _Mapping]] = ...) -> None: ...

class LeaseGranted(_message.Message):
    __slots__ = ("id", "granted")
    ID_FIELD_NUMBER: _ClassVar[int]
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    id: int
    granted: Granted
    def __init__(self, id: _Optional[int] = ..., granted: _Optional[_Union[Granted, _Mapping]] = ...) -> None: ...

class LeaseFailed(_message.Message):
    __slots__ = ("id", "code", "message", "ttl_refusal")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TTL_REFUSAL_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    message: str
    ttl_refusal: str
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., ttl_refusal: _Optional[str] = ...) -> None: ...

class GroupRenewed(_message.Message):
    __slots__ = ("ttl", "time_left")
    TTL_FIELD_NUMBER: _ClassVar[int]
    TIME_LEFT_FIELD_NUMBER: _ClassVar[int]
    ttl: _duration_pb2.Duration
    time_left: _duration_pb2.Duration
    def __init__(self, ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., time_left: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class LeaseEnded(_message.Message):
    __slots__ = ("id", "ended")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    id: int
    ended: Ended
    def __init__(self, id: _Optional[int] = ..., ended: _Optional[_Union[Ended, _Mapping]] = ...) -> None: ...

class KeyRequest(_message.Message):
    __slots__ = ("key",)
    KEY_FIELD_NUMBER: _ClassVar[int]
    key: str
    def __init__(self, key: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("revoked",)
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    revoked: bool
    def __init__(self, revoked: _Optional[bool] = ...) -> None: ...

class LeaseInfo(_message.Message):
    __slots__ = ("key", "token", "ttl", "expires_in", "metadata", "revoked", "acquired_at")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_IN_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    ACQUIRED_AT_FIELD_NUMBER: _ClassVar[int]
    key: str
    token: int
    ttl: _duration_pb2.Duration
    expires_in: _duration_pb2.Duration
    metadata: bytes
    revoked: bool
    acquired_at: _timestamp_pb2.Timestamp
    def __init__(self, key: _Optional[str] = ..., token: _Optional[int] = ..., ttl: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., expires_in: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metadata: _Optional[bytes] = ..., revoked: _Optional[bool] = ..., acquired_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: LeaseInfo
    def __init__(self, lease: _Optional[_Union[LeaseInfo, _Mapping]] = ...) -> None: ...

class ListRequest(_message.Message):
    __slots__ = ("prefix", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    limit: int
    def __init__(self, prefix: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListResponse(_message.Message):
    __slots__ = ("leases",)
    LEASES_FIELD_NUMBER: _ClassVar[int]
    leases: _containers.RepeatedCompositeFieldContainer[LeaseInfo]
    def __init__(self, leases: _Optional[_Iterable[_Union[LeaseInfo, _Mapping]]] = ...) -> None: ...
