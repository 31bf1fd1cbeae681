"""What orch's metering proxy adds to each streamed event.

An upstream in a process of its own (bench/proxy_upstream.py) streams Anthropic-style events
at a fixed spacing, each stamped with the system-wide monotonic clock as it is written; the
client stamps each as it arrives. The same stream is read straight from the upstream (the
floor) and through the proxy, which counts its usage as in a run, in turn (ABBA). The figure is
the p50 of arrival minus write per event; what the proxy adds is the difference of the two.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import abba, median
from orch.adapters.agents.proxy import MeteringProxy, Upstream
from orch.domain.ledger import Budget
from orch.domain.prices import Pricing

UPSTREAM = Path(__file__).with_name("proxy_upstream.py")
BODY = {"model": "claude-sonnet-4-5", "stream": True, "max_tokens": 10, "messages": []}


@dataclass
class ProxyResult:
    direct_ms: list[float] = field(default_factory=list)  # per event, every stream
    proxied_ms: list[float] = field(default_factory=list)
    streams: int = 0
    counted_ok: bool = True  # every proxied stream's usage was counted in full


def _read(url: str, headers: dict[str, str]) -> list[float]:
    latencies = []
    with httpx.stream("POST", url, json=BODY, headers=headers, timeout=30) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith("data:"):
                written = json.loads(line[5:])["t"]
                latencies.append((time.monotonic_ns() - written) / 1e6)
    return latencies


def run(rounds: int, events: int, spacing_ms: float = 2.0) -> ProxyResult:
    upstream = subprocess.Popen(
        [sys.executable, str(UPSTREAM), str(events), str(spacing_ms)],
        stdout=subprocess.PIPE,
        text=True,
    )
    proxy = MeteringProxy()
    try:
        assert upstream.stdout is not None
        port = int(upstream.stdout.readline().split()[1])
        url = f"http://127.0.0.1:{port}"
        proxy.start()
        out = ProxyResult()
        _read(f"{url}/v1/messages", {})  # warm both paths once
        for _, path in abba(["direct", "proxied"], rounds):
            if path == "direct":
                out.direct_ms += _read(f"{url}/v1/messages", {})
                continue
            meter = proxy.issue(
                Upstream("anthropic", url, "key", "ANTHROPIC_API_KEY"),
                Budget(),
                Pricing(None, "claude-sonnet-4-5"),
            )
            out.proxied_ms += _read(f"{proxy.url}/v1/messages", {"x-api-key": meter.token})
            out.counted_ok &= meter.usage().tokens == 1000 + 99
            proxy.revoke(meter)
            out.streams += 1
        return out
    finally:
        proxy.stop()
        upstream.terminate()
        upstream.wait(10)


def summary(res: ProxyResult) -> tuple[float, float]:
    return median(res.proxied_ms), median(res.direct_ms)
