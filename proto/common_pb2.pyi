from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Activity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVITY_UNSPECIFIED: _ClassVar[Activity]
    SPEECH_START: _ClassVar[Activity]
    SPEECH_END: _ClassVar[Activity]
ACTIVITY_UNSPECIFIED: Activity
SPEECH_START: Activity
SPEECH_END: Activity

class AudioFrame(_message.Message):
    __slots__ = ("flow_id", "seq", "sr", "channels", "ns", "pts", "pcm", "last", "activity")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SR_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    NS_FIELD_NUMBER: _ClassVar[int]
    PTS_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    seq: int
    sr: int
    channels: int
    ns: int
    pts: int
    pcm: bytes
    last: bool
    activity: Activity
    def __init__(self, flow_id: _Optional[str] = ..., seq: _Optional[int] = ..., sr: _Optional[int] = ..., channels: _Optional[int] = ..., ns: _Optional[int] = ..., pts: _Optional[int] = ..., pcm: _Optional[bytes] = ..., last: _Optional[bool] = ..., activity: _Optional[_Union[Activity, str]] = ...) -> None: ...
