"""Where each stage's audio comes from (SPEC §1: VAD -> Denoise -> (Compress tap) -> LID -> ASR).

Stages read either the client's raw audio (VAD) or the clean audio after denoise (archive, LID,
ASR). Without a denoise stage, clean audio is the raw audio. If denoise fails mid-session, the raw
audio it had not yet returned is replayed to the clean stages and raw audio flows to them from then
on, so a failed denoise loses nothing. No I/O here: it only moves blocks between feeds.
"""

from __future__ import annotations

from collections import deque

from common.audio import NS_PER_S, SAMPLE_RATE
from orchestrator.core.events import StageName
from orchestrator.core.reframer import BYTES_PER_SAMPLE, AudioBlock
from orchestrator.stages.base import AudioSource, StageFeed


class AudioPaths:
    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self._sr = sample_rate
        self.raw: dict[StageName, StageFeed] = {}
        self.clean: dict[StageName, StageFeed] = {}
        self.denoise: StageFeed | None = None
        self.feeds: dict[StageName, StageFeed] = {}  # every stage's feed still open, by stage
        self._unreturned: deque[AudioBlock] = deque()
        self._returned_samples = 0
        self._audio_ended = False

    def add(self, name: StageName, source: AudioSource, feed: StageFeed) -> None:
        self.feeds[name] = feed
        if source is AudioSource.TRANSFORM:
            self.denoise = feed
        elif source is AudioSource.RAW:
            self.raw[name] = feed
        else:
            self.clean[name] = feed

    def remove(self, name: StageName) -> StageFeed | None:
        """Drop a stage's feed (closing it); a failed denoise hands over to raw audio."""
        feed: StageFeed | None
        self.feeds.pop(name, None)
        if name == StageName.DENOISE and self.denoise is not None:
            feed, self.denoise = self.denoise, None
            self._replay_unreturned()
            if self._audio_ended:
                self._close_clean()
        else:
            feed = self.raw.pop(name, None)
            if feed is None:
                feed = self.clean.pop(name, None)
        if feed is not None:
            feed.close()
        return feed

    def push(self, block: AudioBlock) -> None:
        """A block of the client's audio."""
        for feed in self.raw.values():
            feed.put(block)
        if self.denoise is not None:
            self.denoise.put(block)
            self._unreturned.append(block)
        else:
            self._put_clean(block)

    def clean_audio(self, block: AudioBlock) -> None:
        """Denoised audio came back; `block.pts_ns` places it on the session timeline."""
        self._put_clean(block)
        end = self._sample_of(block.pts_ns) + len(block.pcm) // BYTES_PER_SAMPLE
        self._returned_samples = max(self._returned_samples, end)
        while self._unreturned and self._end_sample(self._unreturned[0]) <= self._returned_samples:
            self._unreturned.popleft()

    def end_of_audio(self) -> None:
        self._audio_ended = True
        for feed in self.raw.values():
            feed.close()
        if self.denoise is not None:
            self.denoise.close()
        else:
            self._close_clean()

    def denoise_done(self) -> None:
        """Denoise answered everything: the clean stages have all their audio."""
        if self.denoise is not None:
            self.denoise = None
            self.feeds.pop(StageName.DENOISE, None)
            self._replay_unreturned()  # normally empty: denoise returns as much as it got
        if self._audio_ended:
            self._close_clean()

    def _replay_unreturned(self) -> None:
        for block in self._unreturned:
            start = self._sample_of(block.pts_ns)
            skip = max(0, self._returned_samples - start)
            if skip * BYTES_PER_SAMPLE >= len(block.pcm):
                continue
            pts = (start + skip) * NS_PER_S // self._sr
            self._put_clean(AudioBlock(block.seq + skip // (self._sr // 50), pts, block.pcm[skip * BYTES_PER_SAMPLE :]))
        self._unreturned.clear()

    def _put_clean(self, block: AudioBlock) -> None:
        for feed in self.clean.values():
            feed.put(block)

    def _close_clean(self) -> None:
        for feed in self.clean.values():
            feed.close()

    def _sample_of(self, pts_ns: int) -> int:
        return round(pts_ns * self._sr / NS_PER_S)

    def _end_sample(self, block: AudioBlock) -> int:
        return self._sample_of(block.pts_ns) + len(block.pcm) // BYTES_PER_SAMPLE
