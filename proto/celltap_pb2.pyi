from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordBatchMsg(_message.Message):
    __slots__ = ("collector", "sequence", "origin", "replica_of", "exporter", "domain", "template", "records", "count", "keys", "key_mask", "delivery", "replica_incarnation", "incarnation")
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REPLICA_OF_FIELD_NUMBER: _ClassVar[int]
    EXPORTER_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    KEY_MASK_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    REPLICA_INCARNATION_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    collector: str
    sequence: int
    origin: str
    replica_of: str
    exporter: str
    domain: int
    template: bytes
    records: bytes
    count: int
    keys: _containers.RepeatedScalarFieldContainer[str]
    key_mask: bytes
    delivery: int
    replica_incarnation: str
    incarnation: str
    def __init__(self, collector: _Optional[str] = ..., sequence: _Optional[int] = ..., origin: _Optional[str] = ..., replica_of: _Optional[str] = ..., exporter: _Optional[str] = ..., domain: _Optional[int] = ..., template: _Optional[bytes] = ..., records: _Optional[bytes] = ..., count: _Optional[int] = ..., keys: _Optional[_Iterable[str]] = ..., key_mask: _Optional[bytes] = ..., delivery: _Optional[int] = ..., replica_incarnation: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("collector", "sequence", "duplicate", "error", "delivery", "fenced")
    COLLECTOR_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DELIVERY_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    collector: str
    sequence: int
    duplicate: bool
    error: str
    delivery: int
    fenced: bool
    def __init__(self, collector: _Optional[str] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ..., error: _Optional[str] = ..., delivery: _Optional[int] = ..., fenced: _Optional[bool] = ...) -> None: ...

class JournalEntry(_message.Message):
    __slots__ = ("batch", "primary", "replicas")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    batch: RecordBatchMsg
    primary: str
    replicas: _containers.RepeatedCompositeFieldContainer[JournalReplica]
    def __init__(self, batch: _Optional[_Union[RecordBatchMsg, _Mapping]] = ..., primary: _Optional[str] = ..., replicas: _Optional[_Iterable[_Union[JournalReplica, _Mapping]]] = ...) -> None: ...

class JournalReplica(_message.Message):
    __slots__ = ("node", "index", "mask")
    NODE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    node: str
    index: bytes
    mask: bytes
    def __init__(self, node: _Optional[str] = ..., index: _Optional[bytes] = ..., mask: _Optional[bytes] = ...) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("app", "params_json")
    APP_FIELD_NUMBER: _ClassVar[int]
    PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    app: str
    params_json: str
    def __init__(self, app: _Optional[str] = ..., params_json: _Optional[str] = ...) -> None: ...

class QueryReply(_message.Message):
    __slots__ = ("node", "app", "partial_json", "error")
    NODE_FIELD_NUMBER: _ClassVar[int]
    APP_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node: str
    app: str
    partial_json: str
    error: str
    def __init__(self, node: _Optional[str] = ..., app: _Optional[str] = ..., partial_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("node", "status_json")
    NODE_FIELD_NUMBER: _ClassVar[int]
    STATUS_JSON_FIELD_NUMBER: _ClassVar[int]
    node: str
    status_json: str
    def __init__(self, node: _Optional[str] = ..., status_json: _Optional[str] = ...) -> None: ...
