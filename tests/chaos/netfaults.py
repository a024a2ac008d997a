"""The real stack with a fault proxy (tests/faultproxy.py) between the gateway and some of its stages:
each proxied service is started first, its proxy next, and the gateway dials the proxy."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devtools.launcher import RunningService, launch
from devtools.stack import ADDR_ENV, Stack
from tests.faultproxy import ThreadedFaultProxy, fault_proxy


@dataclass
class ProxiedStack:
    stack: Stack
    proxies: dict[str, ThreadedFaultProxy] = field(default_factory=dict)
    services: dict[str, RunningService] = field(default_factory=dict)


@contextlib.contextmanager
def proxied_stack(
    workdir: Path,
    direct: Sequence[str],
    proxied: Sequence[str],
    env: Mapping[str, str],
    seed: int = 0,
    asr_members: int = 1,
) -> Iterator[ProxiedStack]:
    """`direct` services as the stack starts them; each of `proxied` (vad, lid, compress or asr) as
    its own process behind its own proxy, its address variable pointing the gateway at the proxy.
    `asr_members` > 1 puts that many proxies before the one ASR process, as one pool of that many
    members (`ASR_ADDR`), named `asr.0`, `asr.1`, ...: a member cut at its proxy is gone for the
    gateway while the others still serve."""
    with contextlib.ExitStack() as exits:
        out = ProxiedStack(stack=Stack(direct, env=env, workdir=workdir))
        addrs: dict[str, str] = {}
        # The stack's own state folders (Stack.start), for the services started here too.
        own = {"COMPRESS_STORE_DIR": str(workdir / "records"), "COMPRESS_SPOOL_DIR": str(workdir / "spool"), **env}
        for name in proxied:
            svc = launch(name, [sys.executable, "-m", f"services.{name}"], env=own, timeout_s=180.0)
            exits.callback(svc.stop)
            out.services[name] = svc
            copies = asr_members if name == "asr" else 1
            names = [f"{name}.{i}" for i in range(copies)] if copies > 1 else [name]
            for proxy_name in names:
                proxy = exits.enter_context(fault_proxy(svc.grpc_addr, seed=seed + len(out.proxies)))
                out.proxies[proxy_name] = proxy
            addrs[ADDR_ENV[name]] = ",".join(out.proxies[n].addr for n in names)
        out.stack.env = {**env, **addrs}
        exits.enter_context(out.stack)
        yield out
