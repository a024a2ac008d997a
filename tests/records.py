"""Reading recordings and transcripts back in tests: a GET that returns the status with the body, the
duration of an archived object (FLAC or Ogg Opus), to compare with the audio the gateway accepted, and
a flow's transcript endpoint."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from typing import Any

import soundfile as sf

from devtools.devauth import default_token
from tests.poll import seconds


def fetch(url: str) -> tuple[int, bytes]:
    """(HTTP status, body), error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=seconds(10)) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def decoded_s(data: bytes) -> float:
    """Seconds of audio in an archived object."""
    info = sf.info(io.BytesIO(data))
    return float(info.frames / info.samplerate)


def get_transcript(http_base: str, flow_id: str) -> tuple[int, dict[str, Any]]:
    """`GET /v1/flows/{flowId}/transcript` as the tenant that streamed the flow sees it (the client's
    default token): (status, body); (0, {}) while the gateway does not answer."""
    request = urllib.request.Request(
        f"{http_base}/v1/flows/{flow_id}/transcript", headers={"Authorization": f"Bearer {default_token()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=seconds(5)) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
    except OSError:
        return 0, {}
