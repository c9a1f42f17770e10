"""Benchmarks of the job service on this machine (loopback only, bounded in time and size).

1. `GET /v1/jobs/{id}` on PostgreSQL under wrk (64 connections) vs a bare Starlette route serving the same
   body under the same uvicorn settings (uvloop + httptools, N workers): requests/s, p50, p99.
2. Download of a 512 MB checkpoint (tar stream and a single file) vs `python -m http.server` serving the
   same bytes: MB/s, and the growth of the API processes' resident memory.
3. Metrics of a job with 1,000,000 points, downsampled to 1,000 per key: latency p50/p99 on PostgreSQL.

    python bench/service_bench.py --json docs/service_bench.json

Needs PostgreSQL on 127.0.0.1:5432 (trust auth) and wrk (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PG_ADMIN = os.environ.get("RLAD_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def start(cmd: list[str], env: dict[str, str], url: str) -> subprocess.Popen:
    p = subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_http(url)
    return p


def stop(p: subprocess.Popen) -> None:
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(timeout=20)


def tree_rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (uvicorn's workers), in KB."""
    total = 0
    pids = [pid] + [
        int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    ]
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except FileNotFoundError:
            continue
        total += int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    return total


def wrk(url: str, key: str | None, seconds: int, connections: int, threads: int = 2) -> dict:
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--latency", url]
    if key:
        cmd[1:1] = ["-H", f"Authorization: Bearer {key}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": ms("50"), "p99_ms": ms("99"), "non_2xx": int(errors.group(1)) if errors else 0}


def download_mb_s(url: str, headers: dict[str, str], size: int, reps: int) -> float:
    """Best-of-reps MB/s of streaming `url` to nowhere (curl, so the client is not the bottleneck)."""
    best = 0.0
    for _ in range(reps):
        cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{size_download} %{time_total}", url]
        for k, v in headers.items():
            cmd[1:1] = ["-H", f"{k}: {v}"]
        got, secs = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        assert int(got) >= size, (got, size)
        best = max(best, int(got) / float(secs) / 1e6)
    return best


@dataclass
class BenchDatabase:
    """A fresh PostgreSQL database and data directory for one benchmark run, in this process's RLAD_ settings
    and in `env` (for the servers it starts); `drop()` removes both."""

    name: str
    url: str
    work: Path
    env: dict[str, str]

    @classmethod
    def create(cls, prefix: str) -> BenchDatabase:
        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        work = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
        url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
        env = {
            **os.environ,
            "RLAD_DATABASE_URL": url,
            "RLAD_DATA_DIR": str(work),
            "RLAD_BROKER_URL": "memory://",
            "RLAD_RATE_LIMIT_PER_S": "0",
        }  # the load is one key: no per-key rate limit
        os.environ.update({k: v for k, v in env.items() if k.startswith("RLAD_")})
        return cls(name, url, work, env)

    def drop(self) -> None:
        from store.db import reset_caches

        reset_caches()
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        admin.dispose()
        shutil.rmtree(self.work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=10, help="wrk duration per run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn workers (both servers)")
    ap.add_argument("--download-mb", type=int, default=512)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10, help="metric keys; steps = points / keys")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    bench = BenchDatabase.create("rlad_bench")
    url, work, env = bench.url, bench.work, bench.env
    results: dict = {"machine": f"{os.cpu_count()} cores", "workers": args.workers, "connections": args.connections}
    procs: list[subprocess.Popen] = []
    try:
        from rlad.service import api_command
        from store import jobs as job_store
        from store import metrics as metric_store
        from store.db import session_scope
        from store.migrate import upgrade
        from store.results import get_result_store, record_checkpoint
        from store.settings import get_settings
        from store.teams import create_api_key, get_or_create_team

        upgrade(url)
        spec = {
            "student": "bench/student",
            "teacher": "bench/teacher",
            "steps": args.points // args.keys,
            "batch_size": 8,
            "group_size": 4,
        }
        with session_scope() as s:
            key = create_api_key(s, team_name="bench")
            team = get_or_create_team(s, name="bench")
            job, _ = job_store.submit_job(s, team_id=team.id, spec=spec)
            job_id = job.id

        # --- 3 (data first): 1M metric points -------------------------------------------------------------
        steps = args.points // args.keys
        t = time.perf_counter()
        with session_scope() as s:  # one INSERT ... SELECT: the data, not the write path, is what is measured here
            s.execute(
                text("""INSERT INTO metrics (job_id, key, step, value, time)
                              SELECT :job, 'metric_' || k, st, st * 0.001, extract(epoch from now())
                              FROM generate_series(1, :steps) st, generate_series(0, :keys - 1) k"""),
                {"job": job_id, "steps": steps, "keys": args.keys},
            )
            metric_store.rebuild_rollups(s, job_id=job_id)  # what write_metrics keeps as it goes
        with session_scope() as s:
            s.get(job_store.Job, job_id).last_step = steps
            s.execute(text("ANALYZE metrics"))
            s.execute(text("ANALYZE metric_rollups"))
        results["metrics_insert_s"] = time.perf_counter() - t

        # a 512 MB checkpoint in the result store (random bytes: nothing compresses)
        store = get_result_store(get_settings().resolved_result_root)
        ck = store.job_dir(job_id) / "checkpoints" / "step-1"
        ck.mkdir(parents=True)
        big = ck / "model.safetensors"
        chunk = os.urandom(1 << 20)
        with open(big, "wb") as f:
            for _ in range(args.download_mb):
                f.write(chunk)
        digest = hashlib.sha256()
        with open(big, "rb") as f:
            while b := f.read(1 << 24):
                digest.update(b)
        (ck / "config.json").write_text("{}")
        files = {
            "model.safetensors": {"sha256": digest.hexdigest(), "bytes": big.stat().st_size},
            "config.json": {"sha256": hashlib.sha256(b"{}").hexdigest(), "bytes": 2},
        }
        (ck / "manifest.json").write_text(json.dumps({"step": 1, "files": files}))
        with session_scope() as s:
            record_checkpoint(
                s,
                job_id=job_id,
                step=1,
                kind="final",
                location=store.checkpoint_location(job_id, 1),
                bytes=big.stat().st_size,
                sha256="-",
                metrics={},
            )

        # --- servers --------------------------------------------------------------------------------------------
        api_port = free_port()
        api = start(api_command("127.0.0.1", api_port, args.workers), env, f"http://127.0.0.1:{api_port}/healthz")
        procs.append(api)
        base = f"http://127.0.0.1:{api_port}"
        auth = {"Authorization": f"Bearer {key}"}
        body = httpx.get(f"{base}/v1/jobs/{job_id}", headers=auth).content
        (work / "body.json").write_bytes(body)
        bare_port = free_port()
        bare_cmd = api_command("127.0.0.1", bare_port, args.workers)
        bare_cmd[bare_cmd.index("api.app:create_app")] = "bench.bare_app:app"
        bare_cmd.remove("--factory")
        bare = start(
            bare_cmd, {**env, "RLAD_BENCH_BODY": str(work / "body.json")}, f"http://127.0.0.1:{bare_port}/v1/jobs/x"
        )
        procs.append(bare)

        # --- 1. GET /v1/jobs/{id} ----------------------------------------------------------------------------
        wrk(f"{base}/v1/jobs/{job_id}", key, 2, args.connections)  # warm-up (pools, caches)
        wrk(f"http://127.0.0.1:{bare_port}/v1/jobs/{job_id}", None, 2, args.connections)
        rounds = []
        for _ in range(2):  # alternate, so that drift of the machine hits both alike
            rounds.append(
                (
                    wrk(f"{base}/v1/jobs/{job_id}", key, args.seconds, args.connections),
                    wrk(f"http://127.0.0.1:{bare_port}/v1/jobs/{job_id}", None, args.seconds, args.connections),
                )
            )
        api_best = max((r[0] for r in rounds), key=lambda r: r["rps"])
        bare_best = max((r[1] for r in rounds), key=lambda r: r["rps"])
        results["get_job"] = {
            "api": api_best,
            "bare": bare_best,
            "ratio": api_best["rps"] / bare_best["rps"],
            "body_bytes": len(body),
            "rounds": rounds,
        }
        stop(bare)
        procs.remove(bare)
        # the same route with the per-process job cache off: one PostgreSQL query per request
        nocache_port = free_port()
        nocache = start(
            api_command("127.0.0.1", nocache_port, args.workers),
            {**env, "RLAD_JOB_CACHE_TTL_S": "0"},
            f"http://127.0.0.1:{nocache_port}/healthz",
        )
        procs.append(nocache)
        wrk(f"http://127.0.0.1:{nocache_port}/v1/jobs/{job_id}", key, 2, args.connections)
        results["get_job"]["api_cache_off"] = wrk(
            f"http://127.0.0.1:{nocache_port}/v1/jobs/{job_id}", key, args.seconds, args.connections
        )
        stop(nocache)
        procs.remove(nocache)

        # --- 2. download ---------------------------------------------------------------------------------------
        size = big.stat().st_size
        rss_before = tree_rss_kb(api.pid)
        tar_mb_s = download_mb_s(f"{base}/v1/jobs/{job_id}/checkpoints/1/download", auth, size, 3)
        file_mb_s = download_mb_s(f"{base}/v1/jobs/{job_id}/checkpoints/1/files/model.safetensors", auth, size, 3)
        rss_after = tree_rss_kb(api.pid)
        http_port = free_port()
        srv = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"],
            cwd=ck,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        procs.append(srv)
        wait_http(f"http://127.0.0.1:{http_port}/config.json")
        base_mb_s = download_mb_s(f"http://127.0.0.1:{http_port}/model.safetensors", {}, size, 3)
        results["download"] = {
            "bytes": size,
            "tar_stream_mb_s": tar_mb_s,
            "single_file_mb_s": file_mb_s,
            "http_server_mb_s": base_mb_s,
            "tar_ratio": tar_mb_s / base_mb_s,
            "file_ratio": file_mb_s / base_mb_s,
            "api_rss_growth_mb": (rss_after - rss_before) / 1024,
        }

        # --- 3. metrics read -----------------------------------------------------------------------------------
        with httpx.Client(base_url=base, headers=auth, timeout=60) as c:
            lat = []
            for i in range(23):
                t = time.perf_counter()
                r = c.get(f"/v1/jobs/{job_id}/metrics", params={"max_points": 1000})
                lat.append((time.perf_counter() - t) * 1000)
                assert r.status_code == 200
                if i == 0:
                    series = r.json()["series"]
                    assert len(series) == args.keys and all(len(s["steps"]) <= 1000 for s in series)
            lat = lat[3:]
            lat.sort()
            results["metrics_read"] = {
                "points": args.points,
                "keys": args.keys,
                "max_points": 1000,
                "points_per_key_returned": len(series[0]["steps"]),
                "bucket_steps": r.json()["bucket"],
                "p50_ms": statistics.median(lat),
                "p99_ms": lat[int(0.99 * (len(lat) - 1))],
            }
    finally:
        for p in procs:
            try:
                stop(p)
            except Exception:
                p.kill()
        bench.drop()
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
