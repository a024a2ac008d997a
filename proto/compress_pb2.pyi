from proto import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ArchiveResult(_message.Message):
    __slots__ = ("flow_id", "record_url", "key", "bytes", "duration_s", "codec", "status")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    RECORD_URL_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    record_url: str
    key: str
    bytes: int
    duration_s: float
    codec: str
    status: str
    def __init__(self, flow_id: _Optional[str] = ..., record_url: _Optional[str] = ..., key: _Optional[str] = ..., bytes: _Optional[int] = ..., duration_s: _Optional[float] = ..., codec: _Optional[str] = ..., status: _Optional[str] = ...) -> None: ...
