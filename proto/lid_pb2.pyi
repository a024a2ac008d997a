from proto import common_pb2 as _common_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class LidResult(_message.Message):
    __slots__ = ("flow_id", "lang", "score", "audio_ms")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    LANG_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_MS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    lang: str
    score: float
    audio_ms: int
    def __init__(self, flow_id: _Optional[str] = ..., lang: _Optional[str] = ..., score: _Optional[float] = ..., audio_ms: _Optional[int] = ...) -> None: ...
