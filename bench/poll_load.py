"""Load on the job service while a job trains: pollers and live metric streams, bounded in time (loopback only).

Each poller sends `GET /v1/jobs/{id}` every `--interval` seconds (a dashboard tile, `rlad status --watch`);
each stream holds `GET /v1/jobs/{id}/metrics/stream` open and reads its events. Keys are used round-robin, so
the per-key rate limit applies as it would to that many users. Prints (and with --json writes) the requests,
the errors (any status but 200, a failed connection, a stream that ended early), latency percentiles of the
polls after a warm-up (`--warmup`, 5 s: 220 connections opening and the load's own start on a small machine;
`p99_all_ms` has every poll) and the metric events each stream received. A poll whose kept-alive connection
closes unanswered is sent once more on a new connection (as browsers and the rlad client do with reads) and
counted as `resent`; it is an error only if that one gets no answer either.

    python bench/poll_load.py --base-url http://127.0.0.1:8321 --job JOB_ID --key KEY [--key KEY2 ...] \\
        --pollers 200 --streams 20 --interval 1 --duration 60

The load drill (tests/drills/test_load.py) runs it against a training job and compares the job's step time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import ssl
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOST_CONNECTION = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


@dataclass
class Tally:
    latencies_s: list[float] = field(default_factory=list)
    warm_latencies_s: list[float] = field(default_factory=list)  # the polls after the warm-up
    warmup: float = 0.0
    slow: dict[int, int] = field(default_factory=dict)  # second of the run -> polls slower than 100 ms
    errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)  # a poll got no answer, sent again too
    resent: list[str] = field(default_factory=list)  # a kept-alive connection closed unanswered: sent again
    stream_events: list[int] = field(default_factory=list)
    duration: float = 0.0


async def _poller(client: httpx.AsyncClient, url: str, key: str, interval: float, until: float, t: Tally) -> None:
    await asyncio.sleep(random.uniform(0, interval))  # spread the pollers over the interval
    headers = {"Authorization": f"Bearer {key}"}
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            try:
                r = await client.get(url, headers=headers)
            except LOST_CONNECTION as exc:  # sent once more on a new connection, as browsers and the rlad client do
                t.resent.append(f"GET {url}: {type(exc).__name__}: {exc}")
                r = await client.get(url, headers=headers)
            if r.status_code != 200:
                t.errors.append(f"GET {url}: {r.status_code} {r.text[:200]}")
        except httpx.TransportError as exc:
            t.transport_errors.append(f"GET {url}: {type(exc).__name__}: {exc}")
        except httpx.HTTPError as exc:
            t.errors.append(f"GET {url}: {type(exc).__name__}: {exc}")
        took = time.perf_counter() - t0
        t.latencies_s.append(took)
        second = int(time.monotonic() - until + t.duration)
        if second >= t.warmup:
            t.warm_latencies_s.append(took)
        if took > 0.1:
            t.slow[second] = t.slow.get(second, 0) + 1
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - t0)))


async def _stream(client: httpx.AsyncClient, url: str, key: str, until: float, t: Tally) -> None:
    events = 0
    try:
        async with client.stream("GET", url, headers={"Authorization": f"Bearer {key}"}) as r:
            if r.status_code != 200:
                t.errors.append(f"stream {url}: {r.status_code}")
                return
            async for line in r.aiter_lines():
                if line == "event: metrics":
                    events += 1
                elif line == "event: end":
                    t.errors.append(f"stream {url}: the job ended during the load")
                    return
                if time.monotonic() >= until:
                    break
            else:
                t.errors.append(f"stream {url}: closed by the server after {events} events")
    except httpx.HTTPError as exc:
        t.errors.append(f"stream {url}: {type(exc).__name__}: {exc}")
    finally:
        t.stream_events.append(events)


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] if len(values) > 1 else 0.0


async def run_load(
    base_url: str,
    job_id: str,
    keys: list[str],
    *,
    pollers: int,
    streams: int,
    interval: float,
    duration: float,
    warmup: float = 5.0,
) -> dict:
    t = Tally(duration=duration, warmup=warmup)
    timeout = httpx.Timeout(30.0, read=None)  # a stream may be quiet between flushes
    async with contextlib.AsyncExitStack() as stack:
        # a client (one connection) per poller and per stream, as that many dashboards would have: one client's
        # pool of 220 connections costs the load generator a scan of all of them per request (most of a core).
        # One SSL context for all (unused on http://): a client making its own takes some 20 ms
        tls = ssl.create_default_context()
        limits = httpx.Limits(max_connections=1)
        clients = []
        for _ in range(pollers + streams):
            one = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout, verify=tls)
            clients.append(await stack.enter_async_context(one))
        started = time.monotonic()
        until = started + duration
        tasks = [
            _poller(clients[i], f"/v1/jobs/{job_id}", keys[i % len(keys)], interval, until, t) for i in range(pollers)
        ] + [
            _stream(clients[pollers + i], f"/v1/jobs/{job_id}/metrics/stream", keys[i % len(keys)], until, t)
            for i in range(streams)
        ]
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=duration + 60)
    lat_ms = [x * 1000 for x in t.latencies_s]
    warm_ms = [x * 1000 for x in t.warm_latencies_s]
    return {
        "pollers": pollers,
        "streams": streams,
        "interval_s": interval,
        "duration_s": round(time.monotonic() - started, 2),
        "keys": len(keys),
        "requests": len(lat_ms),
        "requests_per_s": round(len(lat_ms) / duration, 1),
        "errors": len(t.errors),
        "error_examples": t.errors[:5],
        "transport_errors": len(t.transport_errors),
        "transport_error_examples": t.transport_errors[:5],
        "resent": len(t.resent),
        "resent_examples": t.resent[:5],
        "warmup_s": warmup,
        "p50_ms": round(_pct(warm_ms, 0.5), 2),
        "p99_ms": round(_pct(warm_ms, 0.99), 2),
        "p99_all_ms": round(_pct(lat_ms, 0.99), 2),
        "max_ms": round(max(lat_ms, default=0.0), 2),
        "slow_polls_by_second": dict(sorted(t.slow.items())),
        "stream_events_min": min(t.stream_events, default=0),
        "stream_events_total": sum(t.stream_events),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--key", action="append", required=True, help="an API key; repeat to spread over several")
    ap.add_argument("--pollers", type=int, default=200)
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between a poller's requests")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (at most 600)")
    ap.add_argument(
        "--warmup",
        type=float,
        default=5.0,
        help="seconds at the start whose polls p50/p99 leave out (p99_all_ms has them): the connections opening",
    )
    ap.add_argument("--json", type=Path, help="write the results here too")
    args = ap.parse_args()
    if not args.base_url.startswith(("http://127.", "http://localhost")):
        ap.error("--base-url: loopback addresses only (http://127.x.x.x or http://localhost)")
    if not 0 < args.duration <= 600:
        ap.error("--duration: between 0 and 600 seconds")
    out = asyncio.run(
        run_load(
            args.base_url,
            args.job,
            args.key,
            pollers=args.pollers,
            streams=args.streams,
            interval=args.interval,
            duration=args.duration,
            warmup=args.warmup,
        )
    )
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
