"""Sans-I/O core of one Archive call: frame validation, duration accounting, the key scheme (SPEC §3, §4).

Nothing here awaits or touches files; the servicer feeds frames and spools what `accept` returns.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from proto import common_pb2

FLOW_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Each tenant's objects live under their own prefix: the first 32 hex digits of SHA-256 of the token's
# `sub`, or `public` for flows without a tenant (authentication off). A hash, not the `sub` itself: any
# `sub` becomes a safe path segment and two tenants never share one (docs/storage.md).
NAMESPACE_RE = re.compile(r"public|[0-9a-f]{32}")
PUBLIC_NAMESPACE = "public"
KEY_PREFIX = "records"
EXTENSIONS = {"ogg_opus": "ogg", "flac": "flac"}
CODECS = {"ogg_opus": "ogg/opus", "flac": "flac"}
CONTENT_TYPES = {"ogg": "audio/ogg", "flac": "audio/flac"}
from common.audio import BYTES_PER_SAMPLE  # noqa: E402


class InvalidFrame(ValueError):
    """The stream breaks the AudioFrame contract; the call ends with INVALID_ARGUMENT."""


def validate_flow_id(flow_id: str) -> str:
    """Return `flow_id` if it matches ^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$, else raise InvalidFrame."""
    if not FLOW_ID_RE.fullmatch(flow_id):
        raise InvalidFrame(f"flow_id {flow_id[:64]!r} must match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,127}}$")
    return flow_id


def tenant_namespace(tenant: str) -> str:
    """The key prefix of a tenant's objects (see NAMESPACE_RE)."""
    if not tenant:
        return PUBLIC_NAMESPACE
    return hashlib.sha256(tenant.encode()).hexdigest()[:32]


def archive_name(flow_id: str, tenant: str = "") -> str:
    """`<namespace>/<flow_id>`: what identifies one archived flow (in the spool and in the store)."""
    return f"{tenant_namespace(tenant)}/{validate_flow_id(flow_id)}"


def is_archive_name(name: str) -> bool:
    namespace, slash, flow_id = name.partition("/")
    return bool(slash) and bool(NAMESPACE_RE.fullmatch(namespace)) and bool(FLOW_ID_RE.fullmatch(flow_id))


def record_key(flow_id: str, fmt: str, tenant: str = "") -> str:
    """The one storage key of a tenant's flow: `records/<namespace>/<flow_id>.<ext>`. Same tenant and
    flow, same key: the tenant's retries overwrite; another tenant's flow of the same id never does."""
    return f"{KEY_PREFIX}/{archive_name(flow_id, tenant)}.{EXTENSIONS[fmt]}"


def name_of_key(key: str) -> str | None:
    """Inverse of `record_key` for any format (the archive name); None when `key` is not a record key."""
    prefix, _, rest = key.partition("/")
    name, dot, ext = rest.rpartition(".")
    if prefix != KEY_PREFIX or not dot or ext not in CONTENT_TYPES or not is_archive_name(name):
        return None
    return name


def flow_id_of_key(key: str) -> str | None:
    """The flowId of a record key; None when `key` is not a record key."""
    name = name_of_key(key)
    return None if name is None else name.partition("/")[2]


@dataclass(frozen=True)
class SessionLimits:
    sample_rate_hz: int = 16000
    channels: int = 1
    max_flow_s: float = 4 * 3600.0


class ArchiveSession:
    """Validates the frames of one flow and counts its samples. `accept` returns the PCM to spool."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self.flow_id = ""
        self.frames = 0
        self.samples = 0
        self.finished = False
        self._max_samples = int(limits.max_flow_s * limits.sample_rate_hz)

    @property
    def duration_s(self) -> float:
        return self.samples / self.limits.sample_rate_hz

    def accept(self, frame: common_pb2.AudioFrame) -> bytes:
        """Check one frame against the flow; return its PCM. Sets `finished` on `last=true`."""
        if self.finished:
            raise InvalidFrame("frame after last=true")
        if self.frames == 0:
            self.flow_id = validate_flow_id(frame.flow_id)
        elif frame.flow_id != self.flow_id:
            raise InvalidFrame(f"flow_id changed from {self.flow_id!r} to {frame.flow_id[:64]!r} in one call")
        if frame.pcm:  # a frame without audio (e.g. a bare last=true) may leave sr/channels at 0
            self._check_format(frame)
        if len(frame.pcm) % BYTES_PER_SAMPLE:
            raise InvalidFrame(f"pcm has an odd byte count ({len(frame.pcm)}): PCM16 LE expected")
        samples = len(frame.pcm) // BYTES_PER_SAMPLE
        if self.samples + samples > self._max_samples:
            raise InvalidFrame(f"flow exceeds COMPRESS_MAX_FLOW_S={self.limits.max_flow_s:g} s")
        self.frames += 1
        self.samples += samples
        self.finished = frame.last
        return frame.pcm

    def _check_format(self, frame: common_pb2.AudioFrame) -> None:
        if frame.sr != self.limits.sample_rate_hz:
            raise InvalidFrame(f"sr={frame.sr}: only {self.limits.sample_rate_hz} Hz is accepted")
        if frame.channels != self.limits.channels:
            raise InvalidFrame(f"channels={frame.channels}: only mono is accepted")

    def close(self) -> None:
        """End of stream (half-close or last=true): the flow must hold audio to be archived."""
        if self.frames == 0:
            raise InvalidFrame("empty stream: no AudioFrame received")
        if self.samples == 0:
            raise InvalidFrame("no audio in stream: every frame had empty pcm")
        self.finished = True
