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
) -> Iterator[ProxiedStack]:
    """`direct` services as the stack starts them; each of `proxied` (vad, lid, compress or asr) as
    its own process behind its own proxy, its address variable pointing the gateway at the proxy."""
    with contextlib.ExitStack() as exits:
        out = ProxiedStack(stack=Stack(direct, env=env, workdir=workdir))
        addrs: dict[str, str] = {}
        for i, name in enumerate(proxied):
            svc = launch(name, [sys.executable, "-m", f"services.{name}"], env=dict(env), timeout_s=180.0)
            exits.callback(svc.stop)
            out.services[name] = svc
            proxy = exits.enter_context(fault_proxy(svc.grpc_addr, seed=seed + i))
            out.proxies[name] = proxy
            addrs[ADDR_ENV[name]] = proxy.addr
        out.stack.env = {**env, **addrs}
        exits.enter_context(out.stack)
        yield out
