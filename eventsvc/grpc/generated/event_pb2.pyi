import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventType(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Producer(_message.Message):
    __slots__ = ("id", "producer_name", "producer_type", "tags")
    ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_NAME_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_TYPE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    producer_name: str
    producer_type: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., producer_name: _Optional[str] = ..., producer_type: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Actor(_message.Message):
    __slots__ = ("id", "object_type", "display_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    object_type: str
    display_name: str
    def __init__(self, id: _Optional[str] = ..., object_type: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class Object(_message.Message):
    __slots__ = ("id", "object_type", "display_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    object_type: str
    display_name: str
    def __init__(self, id: _Optional[str] = ..., object_type: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("id", "object_type", "display_name")
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    id: str
    object_type: str
    display_name: str
    def __init__(self, id: _Optional[str] = ..., object_type: _Optional[str] = ..., display_name: _Optional[str] = ...) -> None: ...

class EventMsg(_message.Message):
    __slots__ = ("event_id", "type", "producer", "tags", "published", "actor", "verb", "object", "target", "data", "projects")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    VERB_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    type: EventType
    producer: Producer
    tags: _containers.RepeatedScalarFieldContainer[str]
    published: _timestamp_pb2.Timestamp
    actor: Actor
    verb: str
    object: Object
    target: Target
    data: _struct_pb2.Struct
    projects: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, event_id: _Optional[str] = ..., type: _Optional[_Union[EventType, _Mapping]] = ..., producer: _Optional[_Union[Producer, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., published: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[_Union[Actor, _Mapping]] = ..., verb: _Optional[str] = ..., object: _Optional[_Union[Object, _Mapping]] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., data: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., projects: _Optional[_Iterable[str]] = ...) -> None: ...

class EventResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: bool = ...) -> None: ...

class PublishRequest(_message.Message):
    __slots__ = ("msg",)
    MSG_FIELD_NUMBER: _ClassVar[int]
    msg: EventMsg
    def __init__(self, msg: _Optional[_Union[EventMsg, _Mapping]] = ...) -> None: ...

class PublishResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: bool = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StopResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
