"""Packet reorder window and concealment (issue 3: lost, swapped, duplicate, late packets)."""

from __future__ import annotations

import numpy as np
import opuslib
import pytest

from services.asr.codec import BadPacket, FrameDecoder
from services.asr.reorder import GapTooLarge, PacketReorderBuffer, Slot

pytestmark = pytest.mark.unit


def feed(buf: PacketReorderBuffer, seqs: list[int]) -> list[Slot]:
    out: list[Slot] = []
    for seq in seqs:
        out += buf.push(seq, f"p{seq}".encode())
    return out


def test_in_order_packets_pass_straight_through() -> None:
    buf = PacketReorderBuffer(window_packets=3)
    assert [s.seq for s in buf.push(0, b"a")] == [0]
    assert [(s.seq, s.data) for s in buf.push(1, b"b")] == [(1, b"b")]


def test_swapped_packets_come_out_in_order_without_loss() -> None:
    buf = PacketReorderBuffer(window_packets=3)
    out = feed(buf, [0, 2, 1, 3, 5, 4])
    assert [s.seq for s in out] == [0, 1, 2, 3, 4, 5]
    assert not any(s.lost for s in out)
    assert buf.stats.concealed == 0


def test_lost_packet_is_concealed_once_the_window_has_passed() -> None:
    buf = PacketReorderBuffer(window_packets=3)
    assert [s.seq for s in feed(buf, [0, 2, 3])] == [0]  # 1 may still come
    out = buf.push(4, b"p4")  # three packets past the hole: give up on 1
    assert [(s.seq, s.lost) for s in out] == [(1, True), (2, False), (3, False), (4, False)]
    assert out[0].next_data == b"p2"  # for Opus in-band FEC
    assert buf.stats.concealed == 1


def test_packet_arriving_after_its_concealment_is_dropped_as_late() -> None:
    buf = PacketReorderBuffer(window_packets=2)
    feed(buf, [0, 2, 3])
    assert buf.push(1, b"p1") == []
    assert buf.stats.late == 1


def test_duplicates_are_dropped_whether_held_or_released() -> None:
    buf = PacketReorderBuffer(window_packets=3)
    out = feed(buf, [0, 0, 2, 2, 1, 1])
    assert [s.seq for s in out] == [0, 1, 2]
    assert buf.stats.duplicate == 3


def test_flush_releases_held_packets_and_conceals_inner_holes() -> None:
    buf = PacketReorderBuffer(window_packets=5)
    feed(buf, [0, 2, 4])
    out = buf.flush()
    assert [(s.seq, s.lost) for s in out] == [(1, True), (2, False), (3, True), (4, False)]


def test_first_packet_fixes_the_start_of_the_timeline() -> None:
    buf = PacketReorderBuffer(window_packets=3)
    assert [s.seq for s in feed(buf, [50, 51])] == [50, 51]
    assert buf.push(49, b"x") == [] and buf.stats.late == 1


def test_jump_beyond_max_gap_is_refused() -> None:
    buf = PacketReorderBuffer(window_packets=3, max_gap_packets=10)
    buf.push(0, b"a")
    with pytest.raises(GapTooLarge):
        buf.push(12, b"b")


def opus_packets(n: int) -> list[bytes]:
    enc = opuslib.Encoder(16000, 1, opuslib.APPLICATION_VOIP)
    enc.bitrate = 20000
    t = np.arange(320 * n) / 16000
    pcm = (8000 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    return [enc.encode(pcm[i * 320 : (i + 1) * 320].tobytes(), 320) for i in range(n)]


def test_opus_lost_packet_is_concealed_with_a_full_frame() -> None:
    dec = FrameDecoder("opus", 16000, 20)
    packets = opus_packets(4)
    frames = [
        dec.decode(Slot(0, packets[0])),
        dec.decode(Slot(1, None, packets[2])),
        dec.decode(Slot(2, packets[2])),
        dec.decode(Slot(3, None)),
    ]
    assert [f.size for f in frames] == [320] * 4
    assert np.abs(frames[1]).max() > 0  # PLC/FEC continues the tone instead of a hole


def test_opus_corrupt_packet_is_concealed_and_counted() -> None:
    dec = FrameDecoder("opus", 16000, 20)
    dec.decode(Slot(0, opus_packets(1)[0]))
    assert dec.decode(Slot(1, b"\xff\xff\xff")).size == 320
    assert dec.corrupt == 1


def test_pcm_lost_packet_is_silence_and_short_packet_is_padded() -> None:
    dec = FrameDecoder("pcm", 16000, 20)
    assert not dec.decode(Slot(0, None)).any()
    short = dec.decode(Slot(1, np.full(100, 7, "<i2").tobytes()))
    assert short.size == 320 and short[:100].tolist() == [7] * 100 and not short[100:].any()


@pytest.mark.parametrize(
    ("codec", "data"),
    [("pcm", b"\x00" * 641), ("pcm", b"\x00" * 642), ("opus", b""), ("opus", b"\x00" * 2000)],
)
def test_impossible_packets_are_rejected(codec: str, data: bytes) -> None:
    with pytest.raises(BadPacket):
        FrameDecoder(codec, 16000, 20).check(data)


def test_unknown_codec_is_rejected() -> None:
    with pytest.raises(BadPacket):
        FrameDecoder("mp3")


def test_pcm_packets_inside_an_opus_stream_decode_as_pcm_and_losses_after_them_are_silence() -> None:
    buf = PacketReorderBuffer(window_packets=2)
    dec = FrameDecoder("opus", 16000, 20)
    pcm = np.full(320, 1000, "<i2").tobytes()
    slots = buf.push(0, opus_packets(1)[0]) + buf.push(1, pcm, pcm=True)
    slots += buf.push(3, pcm, pcm=True) + buf.push(4, pcm, pcm=True)  # seq 2 lost
    assert [(s.seq, s.pcm, s.lost) for s in slots] == [
        (0, False, False),
        (1, True, False),
        (2, False, True),
        (3, True, False),
        (4, True, False),
    ]
    assert slots[2].next_data is None  # a PCM packet carries no Opus FEC
    frames = [dec.decode(s) for s in slots]
    assert frames[1].tolist() == [1000] * 320 and not frames[2].any()


def test_pcm_flagged_packet_is_checked_as_pcm() -> None:
    dec = FrameDecoder("opus", 16000, 20)
    dec.check(b"\x00" * 640, pcm=True)
    with pytest.raises(BadPacket):
        dec.check(b"\x00" * 641, pcm=True)
