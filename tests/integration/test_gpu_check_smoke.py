"""bench/gpu_check.py --smoke: the GPU performance part's code path on the CPU with tiny Qwen3-shaped models.

The numbers say nothing about the GPU targets (docs/gpu.md); this checks that every reported field is there
with a sane value, and that missed targets do not fail the run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]


def _positive(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x > 0


def test_the_smoke_mode_reports_every_figure_on_the_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu_check.py", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "smoke" and res["ok"] is True
    assert res["device"].startswith("cpu") and res["torch"] and res["date"]
    perf = res["perf"]
    assert perf["ok"] is True and perf["device"] == "cpu"

    assert _positive(perf["matmul"]["tflops"])
    rollout = perf["rollout"]
    for engine in ("fast", "hf_generate"):
        assert _positive(rollout[engine]["tokens_per_s"]), engine
    assert rollout["all_rows_full_length"] is True  # EOS outside the vocabulary: every row ran 16 tokens
    assert rollout["tokens_per_call"] == 4 * 4 * 16
    assert _positive(perf["fast_over_hf_generate"])

    assert _positive(perf["teacher_forward_s"])
    for method in ("grpo", "rlad"):
        run = perf[method]
        assert run["steps_measured"] >= 1, method
        for key in ("time/generate", "time/update", "time/step", "update_tflops"):
            assert _positive(run[key]), (method, key)
        assert run["batch_shape"]["rows"] == 16 and run["batch_shape"]["completion_len"] == 16
        assert run["peak_memory_gib"] is None  # a CUDA figure
    assert _positive(perf["rlad"]["time/score"])  # the teacher's scoring
    assert math.isfinite(perf["rlad_minus_grpo_over_teacher_forward"])
    assert 0 < perf["update_mfu"] < 1

    assert perf["peak_memory_gib"] is None and _positive(perf["max_rss_gib"])
    assert perf["eval_keeps_rng"] == {"ok": True, "device": "cpu"}
    assert perf["batch"]["prompts"] == 4 and perf["batch"]["scaled_down"] is False
    assert set(perf["targets"]) == {"rlad_minus_grpo_over_teacher_forward", "fast_over_hf_generate", "update_mfu"}
    for target in perf["targets"].values():
        assert isinstance(target["met"], bool) and math.isfinite(target["value"])
