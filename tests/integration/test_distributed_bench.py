"""bench/distributed_bench.py in its smallest mode (one measured step per run, one round): both layouts run
(1 process x 2 threads, and 2 processes x 1 thread under torchrun with gloo and DDP) and the JSON carries
their step times and the 2-process collectives share. The numbers themselves are the benchmark's business
(docs/benchmarks.md), not this test's: only their presence, finiteness and sign are checked."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def test_the_tiny_mode_writes_step_times_and_collectives_share_for_both_layouts(tmp_path) -> None:
    out = tmp_path / "distributed_bench.json"
    done = subprocess.run(
        [sys.executable, "bench/distributed_bench.py", "--steps", "4", "--rounds", "1", "--no-plain-check"]
        + ["--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["machine"]["cpu_count"] >= 1 and res["machine"]["torch"]
    assert len(res["load_average_before"]) == len(res["load_average_after"]) == 3
    for method in ("grpo", "rlad"):
        one, two = res[method]["1x2"], res[method]["2x1"]
        for layout in (one, two):
            assert layout["steps_measured"] == 1
            for key in ("time/step", "loop_s", "time/generate", "time/update"):
                assert math.isfinite(layout[key]) and layout[key] > 0, (method, key)
        assert one["collectives_s"] == 0.0  # one process: every collective is a no-op
        for key in ("collectives_s", "collectives_share", "sync_s", "grad_inflight_s", "grad_exposed_s"):
            assert math.isfinite(two[key]) and two[key] > 0, (method, key)
        assert two["collectives_share"] < 1.0
        assert two["grad_buckets_per_step"] >= 1  # DDP all-reduced the gradients
        assert two["collectives_by_call_s"]  # the per-call breakdown names the World calls
        assert isinstance(res[method]["target_met"], bool)
    assert "2x1_uninstrumented" not in res["grpo"]
