from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Start(_message.Message):
    __slots__ = ("flow_id", "codec", "sr", "channels", "frame_ms", "bitrate", "vbr", "lang_hint", "domain", "hotwords", "partial_interval_ms", "vad_endpoints")
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    SR_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    FRAME_MS_FIELD_NUMBER: _ClassVar[int]
    BITRATE_FIELD_NUMBER: _ClassVar[int]
    VBR_FIELD_NUMBER: _ClassVar[int]
    LANG_HINT_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    HOTWORDS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    VAD_ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    flow_id: str
    codec: str
    sr: int
    channels: int
    frame_ms: int
    bitrate: int
    vbr: bool
    lang_hint: str
    domain: str
    hotwords: _containers.RepeatedScalarFieldContainer[str]
    partial_interval_ms: int
    vad_endpoints: bool
    def __init__(self, flow_id: _Optional[str] = ..., codec: _Optional[str] = ..., sr: _Optional[int] = ..., channels: _Optional[int] = ..., frame_ms: _Optional[int] = ..., bitrate: _Optional[int] = ..., vbr: _Optional[bool] = ..., lang_hint: _Optional[str] = ..., domain: _Optional[str] = ..., hotwords: _Optional[_Iterable[str]] = ..., partial_interval_ms: _Optional[int] = ..., vad_endpoints: _Optional[bool] = ...) -> None: ...

class OpusPacket(_message.Message):
    __slots__ = ("data", "seq", "pcm")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    seq: int
    pcm: bool
    def __init__(self, data: _Optional[bytes] = ..., seq: _Optional[int] = ..., pcm: _Optional[bool] = ...) -> None: ...

class OpusBatch(_message.Message):
    __slots__ = ("packets",)
    PACKETS_FIELD_NUMBER: _ClassVar[int]
    packets: _containers.RepeatedCompositeFieldContainer[OpusPacket]
    def __init__(self, packets: _Optional[_Iterable[_Union[OpusPacket, _Mapping]]] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("kind", "pts")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Endpoint.Kind]
        SPEECH_START: _ClassVar[Endpoint.Kind]
        SPEECH_END: _ClassVar[Endpoint.Kind]
        FINALIZE: _ClassVar[Endpoint.Kind]
    KIND_UNSPECIFIED: Endpoint.Kind
    SPEECH_START: Endpoint.Kind
    SPEECH_END: Endpoint.Kind
    FINALIZE: Endpoint.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    PTS_FIELD_NUMBER: _ClassVar[int]
    kind: Endpoint.Kind
    pts: int
    def __init__(self, kind: _Optional[_Union[Endpoint.Kind, str]] = ..., pts: _Optional[int] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("start", "opus", "endpoint", "batch")
    START_FIELD_NUMBER: _ClassVar[int]
    OPUS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    start: Start
    opus: OpusPacket
    endpoint: Endpoint
    batch: OpusBatch
    def __init__(self, start: _Optional[_Union[Start, _Mapping]] = ..., opus: _Optional[_Union[OpusPacket, _Mapping]] = ..., endpoint: _Optional[_Union[Endpoint, _Mapping]] = ..., batch: _Optional[_Union[OpusBatch, _Mapping]] = ...) -> None: ...

class AsrEvent(_message.Message):
    __slots__ = ("type", "flow_id", "text", "ts", "lang", "model", "code", "from_finalize", "words", "confidence")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FLOW_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    LANG_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    FROM_FINALIZE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    flow_id: str
    text: str
    ts: _containers.RepeatedScalarFieldContainer[float]
    lang: str
    model: str
    code: str
    from_finalize: bool
    words: _containers.RepeatedCompositeFieldContainer[Word]
    confidence: float
    def __init__(self, type: _Optional[str] = ..., flow_id: _Optional[str] = ..., text: _Optional[str] = ..., ts: _Optional[_Iterable[float]] = ..., lang: _Optional[str] = ..., model: _Optional[str] = ..., code: _Optional[str] = ..., from_finalize: _Optional[bool] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ..., confidence: _Optional[float] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("word", "start", "end", "confidence")
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    word: str
    start: float
    end: float
    confidence: float
    def __init__(self, word: _Optional[str] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., confidence: _Optional[float] = ...) -> None: ...
