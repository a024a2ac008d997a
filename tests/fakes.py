"""Load-test fakes of the downstream services: they implement the real gRPC servicers but do no
real work, so a benchmark measures the gateway alone. Test fixtures only, never the product.

    python -m tests.fakes vad|compress
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import grpc

from common.envconf import nested
from common.server import ServerConfig
from common.service import Service, grpc_main
from proto import common_pb2, compress_pb2, compress_pb2_grpc, vad_pb2_grpc


class FakeVad(vad_pb2_grpc.VadServicer):
    """Says speech starts at the first message and ends at the last; answers `last`."""

    async def Stream(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.AudioFrame]:
        first = True
        end = 0
        flow = ""
        async for frame in request_iterator:
            flow = frame.flow_id
            if first and frame.pcm:
                first = False
                yield common_pb2.AudioFrame(
                    flow_id=flow, seq=frame.seq, pts=frame.pts, activity=common_pb2.SPEECH_START
                )
            end = frame.pts + frame.ns
            if frame.last:
                break
        if not first:
            yield common_pb2.AudioFrame(flow_id=flow, pts=end, activity=common_pb2.SPEECH_END)
        yield common_pb2.AudioFrame(flow_id=flow, last=True)


class FakeCompress(compress_pb2_grpc.CompressServicer):
    """Counts the audio and answers a URL; stores nothing."""

    async def Archive(
        self, request_iterator: AsyncIterator[common_pb2.AudioFrame], context: grpc.aio.ServicerContext
    ) -> compress_pb2.ArchiveResult:
        flow, samples = "", 0
        async for frame in request_iterator:
            flow = frame.flow_id
            samples += len(frame.pcm) // 2
        return compress_pb2.ArchiveResult(
            flow_id=flow,
            record_url=f"http://fake.invalid/records/{flow}.ogg",
            key=f"records/{flow}.ogg",
            duration_s=samples / 16000,
            codec="none",
            status="stored",
        )


@dataclass(frozen=True)
class FakeConfig:
    server: ServerConfig = nested(ServerConfig, prefix="FAKE_")


def main(kind: str) -> None:
    def add(server: grpc.aio.Server) -> None:
        if kind == "vad":
            vad_pb2_grpc.add_VadServicer_to_server(FakeVad(), server)
        elif kind == "compress":
            compress_pb2_grpc.add_CompressServicer_to_server(FakeCompress(), server)
        else:
            raise SystemExit(f"unknown fake {kind!r}")

    @asynccontextmanager
    async def fake_service(config: FakeConfig) -> AsyncIterator[Service]:
        yield Service(add)

    grpc_main(f"fake-{kind}", FakeConfig, fake_service)


if __name__ == "__main__":
    main(sys.argv[1])
