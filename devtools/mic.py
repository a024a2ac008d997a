"""`speechgw-mic`: stream the microphone to the gateway and show the transcript as it comes.

    speechgw-mic                          # the default input device
    speechgw-mic --device 3 --lang de     # another device (see --list-devices), German
    speechgw-mic --file talk.wav          # a file played at real time instead of a device

Partials update in place on the last line; each final replaces them on a line of its own. Ctrl-C
stops the capture, flushes, waits for the last finals and `end`, and exits (a second Ctrl-C at once).
A connection that drops is resumed (docs/protocol.md#resume): the capture goes on meanwhile, what it
records during the outage is sent after the resume, and a note on stderr tells of it.
Exit status: 0 when the session ended with `end` and no fatal error, 1 otherwise, 2 without a
device, 130 after a second Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any, Protocol, TextIO

from devtools.client import DEFAULT_URL, DEV_CA, TOKEN_VIA, add_resume_argument, resume_policy
from devtools.devauth import default_token
from speechgw_client import (
    SAMPLE_RATE,
    Ack,
    AsrFinal,
    AsrPartial,
    ConnectError,
    End,
    Error,
    Event,
    Lid,
    ResumePolicy,
    load_audio,
    stream_live,
)
from speechgw_client.stream import ABNORMAL_CLOSURE, DEFAULT_RESUME

__all__ = ["AudioSource", "DeviceSource", "JsonView", "LiveView", "WavSource", "main", "stream_source"]

EXIT_NO_DEVICE = 2
EXIT_INTERRUPTED = 130
END_WAIT_S = 15.0  # after Ctrl-C: how long the last finals and `end` may take
CLEAR_LINE = "\r\x1b[K"


class AudioSource(Protocol):
    """Where the audio comes from: PCM16 LE / 16 kHz / mono blocks until stopped or exhausted."""

    def blocks(self) -> AsyncGenerator[bytes, None]: ...

    def stop(self) -> None:
        """End `blocks()` after the block in hand (thread-safe is not needed: called on the loop)."""


class WavSource:
    """A file (any format `load_audio` reads) standing in for a device: blocks of `block_ms` at real time."""

    def __init__(self, path: str | Path, *, block_ms: int = 20, realtime: bool = True) -> None:
        self.pcm = load_audio(path)
        self.block_bytes = SAMPLE_RATE * block_ms // 1000 * 2
        self.block_s = block_ms / 1000
        self.realtime = realtime
        self._stopped = asyncio.Event()

    async def blocks(self) -> AsyncGenerator[bytes, None]:
        t0 = time.monotonic()
        for i, off in enumerate(range(0, len(self.pcm), self.block_bytes)):
            if self.realtime:
                # A device delivers a block once it has been recorded: at the block's end.
                delay = t0 + (i + 1) * self.block_s - time.monotonic()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopped.wait(), max(0.0, delay))
            if self._stopped.is_set():
                return
            yield self.pcm[off : off + self.block_bytes]

    def stop(self) -> None:
        self._stopped.set()


class DeviceSource:
    """An input device through PortAudio (`sounddevice`): its callback hands each block to the loop.
    The device is opened at 16 kHz mono, PCM16; PortAudio (ALSA's `plug`) converts if it must."""

    def __init__(self, device: int | str | None = None, *, block_ms: int = 20) -> None:
        self.device = device
        self.block_frames = SAMPLE_RATE * block_ms // 1000
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def blocks(self) -> AsyncGenerator[bytes, None]:
        import sounddevice as sd

        loop = asyncio.get_running_loop()

        def on_block(indata: Any, frames: int, when: Any, status: Any) -> None:  # PortAudio's thread
            loop.call_soon_threadsafe(self._queue.put_nowait, bytes(indata))

        stream = sd.RawInputStream(
            samplerate=SAMPLE_RATE,
            channels=1,
            dtype="int16",
            blocksize=self.block_frames,
            device=self.device,
            callback=on_block,
        )
        with stream:
            while (block := await self._queue.get()) is not None:
                yield block

    def stop(self) -> None:
        self._queue.put_nowait(None)


class View(Protocol):
    def show(self, event: Event) -> None: ...

    def note(self, text: str) -> None:
        """A line for the user that is not an event (a resume), on standard error."""


class JsonView:
    """One JSON line per event (`--json`), for programs; notes go to `err`."""

    def __init__(self, out: TextIO, err: TextIO | None = None) -> None:
        self.out = out
        self.err = err or sys.stderr

    def show(self, event: Event) -> None:
        print(json.dumps(event.raw, ensure_ascii=False), file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)


class LiveView:
    """The terminal: partials rewrite the last line (when `in_place`), finals get lines of their own,
    language and errors go to `err`."""

    def __init__(self, out: TextIO, err: TextIO, *, in_place: bool, width: int = 0) -> None:
        self.out, self.err, self.in_place = out, err, in_place
        self.width = width or shutil.get_terminal_size().columns
        self._partial_shown = False

    def show(self, event: Event) -> None:
        if isinstance(event, AsrPartial):
            if self.in_place and event.text.strip():
                text = event.text.strip()
                if len(text) > self.width - 4:
                    text = "…" + text[-(self.width - 5) :]  # the newest words matter
                self.out.write(f"{CLEAR_LINE}{text}")
                self._partial_shown = True
        elif isinstance(event, AsrFinal):
            self._clear()
            if event.text.strip():
                self.out.write(f"[{event.ts[0]:7.2f}] {event.text.strip()}\n")
        elif isinstance(event, Lid):
            self.note(f"language: {event.lang} ({event.score:.2f}, {event.source or 'lid'})")
        elif isinstance(event, Error):
            self.note(f"error {event.code}: {event.message}")
        elif isinstance(event, End):
            self._clear()
            self.note(f"end ({event.reason}): {event.audio_s:.1f} s of audio")
        self.out.flush()

    def _clear(self) -> None:
        if self._partial_shown:
            self.out.write(CLEAR_LINE)
            self._partial_shown = False

    def note(self, text: str) -> None:
        self._clear()
        self.out.flush()
        print(text, file=self.err, flush=True)


async def stream_source(
    url: str,
    source: AudioSource,
    view: View,
    *,
    start: dict[str, Any],
    token: str | None,
    token_via: str = "header",
    ca_file: Path | None = None,
    stopping: asyncio.Event | None = None,
    resume: ResumePolicy | None = DEFAULT_RESUME,
) -> bool:
    """Stream `source` until it ends or `stopping` is set, then flush and show every event up to `end`.
    A dropped connection is resumed as `resume` says (None: not), with a note to the view. True when
    the session ended with `end` and no fatal error; TimeoutError when `end` does not come within
    END_WAIT_S of the end of the audio."""
    stopping = stopping or asyncio.Event()
    outcome = {"end": False, "fatal": False}
    loop = asyncio.get_running_loop()

    def on_event(event: Event) -> None:
        view.show(event)
        outcome["end"] |= isinstance(event, End)
        outcome["fatal"] |= isinstance(event, Error) and event.fatal

    def on_resume(ack: Ack) -> None:
        assert ack.resume is not None
        view.note(f"connection lost; resumed flow {ack.flow_id}: audio from {ack.resume.resume_from_s:.2f} s")

    async def stop_on_request() -> None:
        await stopping.wait()
        source.stop()

    async with asyncio.timeout(None) as deadline:

        async def recorded() -> AsyncGenerator[bytes, None]:
            try:
                # aclosing: the device is released as soon as the capture stops, whatever stopped it
                async with contextlib.aclosing(source.blocks()) as blocks:
                    async for block in blocks:
                        yield block
            finally:
                deadline.reschedule(loop.time() + END_WAIT_S)  # for the last finals and `end`

        stopper = asyncio.create_task(stop_on_request())
        try:
            async with contextlib.aclosing(recorded()) as blocks:
                result = await stream_live(
                    url,
                    blocks,
                    start=start,
                    on_event=on_event,
                    on_resume=on_resume,
                    token=token,
                    token_via=token_via,
                    ca_file=ca_file,
                    resume=resume,
                )
        finally:
            stopper.cancel()
    if not outcome["end"] and result.close_code == ABNORMAL_CLOSURE:
        view.note("connection lost" + (": could not resume" if resume is not None else ""))
    return outcome["end"] and not outcome["fatal"]


def list_devices() -> int:
    import sounddevice as sd

    devices = [d for d in sd.query_devices() if d["max_input_channels"] > 0]
    for d in devices:
        print(f"{d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, {d['default_samplerate']:.0f} Hz)")
    if not devices:
        print("no input devices", file=sys.stderr)
    return 0 if devices else EXIT_NO_DEVICE


def check_device(device: int | str | None) -> str:
    """Why `device` cannot record 16 kHz mono PCM16 ("" when it can): no PortAudio, no such device..."""
    try:
        import sounddevice as sd
    except OSError as e:  # the PortAudio library is missing (Debian libportaudio2)
        return str(e)
    try:
        sd.check_input_settings(device=device, channels=1, dtype="int16", samplerate=SAMPLE_RATE)
    except (ValueError, sd.PortAudioError) as e:
        return str(e) or type(e).__name__
    return ""


def device_arg(text: str) -> int | str:
    return int(text) if text.isdigit() else text


async def amain(args: argparse.Namespace, source: AudioSource, view: View) -> int:
    start: dict[str, Any] = {"return": ["lid", "asr"], "hints": {"domain": args.domain, "user_lang_pref": args.lang}}
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal() -> None:
        if stopping.is_set() and task is not None:
            task.cancel()  # the second Ctrl-C: do not wait
        stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        ok = await stream_source(
            args.url,
            source,
            view,
            start=start,
            token=args.token or default_token(),
            token_via=args.token_via,
            ca_file=args.ca or (DEV_CA if DEV_CA.is_file() else None),
            stopping=stopping,
            resume=resume_policy(args),
        )
    except ConnectError as e:
        print(f"cannot connect: {e}", file=sys.stderr)
        ok = False
    except TimeoutError:
        print(f"no `end` within {END_WAIT_S:.0f} s of the end of audio", file=sys.stderr)
        ok = False
    except asyncio.CancelledError:
        print("stopped without waiting for `end`", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="speechgw-mic", description=__doc__.split("\n")[0].split(": ", 1)[1])
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--device", type=device_arg, default=None, help="input device index or name (default: the system's)")
    p.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    p.add_argument("--file", type=Path, default=None, help="play this file at real time instead of a device")
    p.add_argument("--block-ms", type=int, default=20, help="audio block size (default 20 ms)")
    p.add_argument("--lang", default="auto", help="hints.user_lang_pref")
    p.add_argument("--domain", default="default")
    p.add_argument("--token", default=None, help="JWT; default: $SPEECHGW_TOKEN, else minted from the dev key")
    p.add_argument("--token-via", choices=TOKEN_VIA, default="header")
    p.add_argument("--ca", type=Path, default=None, help=f"CA of a wss:// server (default {DEV_CA} if present)")
    p.add_argument(
        "--in-place", action=argparse.BooleanOptionalAction, default=None, help="partials in place (default: on a tty)"
    )
    p.add_argument("--json", action="store_true", help="print every event as a JSON line instead")
    add_resume_argument(p)
    args = p.parse_args(argv)
    if args.list_devices:
        return list_devices()
    source: AudioSource
    if args.file is not None:
        source = WavSource(args.file, block_ms=args.block_ms)
    else:
        problem = check_device(args.device)
        if problem:
            print(f"no usable input device: {problem}", file=sys.stderr)
            return EXIT_NO_DEVICE
        source = DeviceSource(args.device, block_ms=args.block_ms)
    in_place = sys.stdout.isatty() if args.in_place is None else args.in_place
    view = JsonView(sys.stdout) if args.json else LiveView(sys.stdout, sys.stderr, in_place=in_place)
    return asyncio.run(amain(args, source, view))


if __name__ == "__main__":
    raise SystemExit(main())
