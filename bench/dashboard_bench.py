"""The dashboard with long runs: how fast a job page and a compare page draw every chart for jobs of
100,000 steps (PostgreSQL, the production API command, Debian's chromium; loopback only, bounded).

    python bench/dashboard_bench.py --json docs/dashboard_bench.json

Each job holds the 25 metric keys the trainer writes: 20 at every step, 5 evaluation keys every 100 steps
(2.0M points per job at 100,000 steps). The time is from navigation to the moment every chart has drawn (the page's
`window.rlad.charts`), the median of `--loads` page loads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
from sqlalchemy import text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.service_bench import BenchDatabase, free_port, start, stop  # noqa: E402

TRAIN_KEYS = [
    "reward_mean",
    "reward_std",
    "accuracy",
    "format_rate",
    "frac_zero_std_groups",
    "loss",
    "clip_frac_low",
    "clip_frac_high",
    "teacher_gap",
    "entropy",
    "ratio_mean",
    "grad_norm",
    "response_length_mean",
    "response_length_max",
    "lr",
    "tokens_per_s",
    "time/generate",
    "time/score",
    "time/update",
    "time/step",
]
EVAL_KEYS = ["eval/accuracy", "eval/pass@4", "eval/accuracy/d1", "eval/accuracy/d2", "eval/accuracy/d3"]
CHARTS_READY = """n => { const c = Object.values(window.rlad.charts);
  return c.length >= n && c.every(x => x.u && x.pointCount() > 0 && !x.pending); }"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=3, help="jobs (the compare page overlays all of them)")
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    bench = BenchDatabase.create("rlad_dash")
    url, env = bench.url, bench.env
    results: dict = {"steps": args.steps, "jobs": args.jobs, "keys": len(TRAIN_KEYS) + len(EVAL_KEYS)}
    api = None
    try:
        from rlad.service import api_command
        from store import jobs as job_store
        from store import metrics as metric_store
        from store.db import reset_caches, session_scope
        from store.migrate import upgrade
        from store.models import JobStatus
        from store.teams import create_api_key, get_or_create_team

        upgrade(url)
        t = time.perf_counter()
        with session_scope() as s:
            key = create_api_key(s, team_name="bench")
            team = get_or_create_team(s, name="bench")
            ids = []
            for i in range(args.jobs):
                job, _ = job_store.submit_job(
                    s,
                    team_id=team.id,
                    spec={
                        "name": f"run-{i}",
                        "student": "bench/student",
                        "teacher": "bench/teacher",
                        "steps": args.steps,
                        "batch_size": 8,
                        "group_size": 4,
                    },
                )
                job.status, job.last_step = JobStatus.succeeded, args.steps
                ids.append(job.id)
        for i, job_id in enumerate(ids):
            with session_scope() as s:
                s.execute(
                    text("""INSERT INTO metrics (job_id, key, step, value, time)
                    SELECT :job, k, st, sin(st / 500.0 + :phase) + st * 1e-5, extract(epoch from now())
                    FROM generate_series(1, :steps) st, unnest(CAST(:keys AS varchar[])) k"""),
                    {"job": job_id, "steps": args.steps, "keys": TRAIN_KEYS, "phase": i},
                )
                s.execute(
                    text("""INSERT INTO metrics (job_id, key, step, value, time)
                    SELECT :job, k, st, least(1.0, st / CAST(:steps AS float)), extract(epoch from now())
                    FROM generate_series(0, :steps, 100) st, unnest(CAST(:keys AS varchar[])) k"""),
                    {"job": job_id, "steps": args.steps, "keys": EVAL_KEYS},
                )
                metric_store.rebuild_rollups(s, job_id=job_id)
        with session_scope() as s:
            s.execute(text("ANALYZE"))
        results["load_s"] = time.perf_counter() - t
        reset_caches()

        port = free_port()
        api = start(api_command("127.0.0.1", port, 1), env, f"http://127.0.0.1:{port}/healthz")
        base = f"http://127.0.0.1:{port}"
        t = time.perf_counter()
        r = httpx.get(
            f"{base}/v1/jobs/{ids[0]}/metrics",
            params={"max_points": 1000},
            headers={"Authorization": f"Bearer {key}"},
            timeout=60,
        )
        results["metrics_request_ms"] = (time.perf_counter() - t) * 1000
        results["metrics_response_kb"] = len(r.content) / 1024

        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"{base}/ui/login")
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_url("**/ui/jobs")
            for name, path, charts in [
                ("job_page", f"/ui/jobs/{ids[0]}", 9),
                ("compare_page", "/ui/compare?" + "&".join(f"job={i}" for i in ids), 9),
            ]:
                times = []
                for _ in range(args.loads + 1):
                    t = time.perf_counter()
                    page.goto(base + path)
                    page.wait_for_function(CHARTS_READY, arg=charts, timeout=60_000)
                    times.append((time.perf_counter() - t) * 1000)
                points = page.evaluate("Object.values(window.rlad.charts).reduce((a, c) => a + c.pointCount(), 0)")
                results[name] = {
                    "charts_ready_ms_median": statistics.median(times[1:]),
                    "all_ms": times[1:],
                    "points_drawn": points,
                }
                page.set_viewport_size({"width": 1280, "height": 900})
            t = time.perf_counter()
            page.locator("#smoothing").fill("0.9")
            page.wait_for_function("Object.values(window.rlad.charts).every(c => c.smoothing === 0.9)")
            results["compare_resmooth_ms"] = (time.perf_counter() - t) * 1000
            browser.close()
    finally:
        if api is not None:
            stop(api)
        bench.drop()
    print(json.dumps(results, indent=1))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
