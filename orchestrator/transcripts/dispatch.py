"""Where a deferred job runs: a member of the first pool that serves its language and can take a
stream (`PoolSet.pick_serving`: the routed pool, other pools of the language, the default pool). A
job whose own pool is gone runs on another one instead of waiting for it (docs/transcripts.md)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from common.tls import TlsConfig
from orchestrator.routing.pool import PoolSet
from orchestrator.transcripts.store import Job
from orchestrator.transcripts.transcribe import (
    ArchiveUnreachable,
    AsrUnavailable,
    TranscribeConfig,
    transcribe_recording,
)


class PoolTranscriber:
    """The runner's `transcribe` and `capacity_available` over the gateway's ASR pools."""

    def __init__(
        self,
        pools: PoolSet,
        config: TranscribeConfig,
        tls: TlsConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pools, self.config, self.tls, self._clock = pools, config, tls, clock

    async def transcribe(self, job: Job) -> list[dict[str, Any]]:
        if not job.record_url:  # the archive has not taken the session yet: its audio is in the spool
            raise ArchiveUnreachable("the recording waits in the gateway's archive spool")
        member = self.pools.pick_serving(job.lang, job.domain, self._clock())
        if member is None:
            serving = ", ".join(self.pools.table.serving_pools(job.lang, job.domain))
            raise AsrUnavailable(f"no member of the pools serving {job.lang or 'the job'} ({serving}) can take it now")
        with member.lease():
            return await transcribe_recording(
                job.record_url,
                member.addr,
                job.lang,
                job.domain,
                flow_id=job.flow_id,
                config=self.config,
                tls=self.tls,
            )

    async def capacity_available(self) -> bool:
        """Checked before each job: probe the members now rather than trust the last round, so a dead
        ASR is seen before the job is claimed."""
        await self.pools.check_health()
        now = self._clock()
        return any(p.pick(now) is not None for p in self.pools.pools.values())
