"""Step time of the trainer (grpo and rlad) against its floor and TRL's GRPOTrainer, side by side in one run.

Fixed config: student "small" (~3.2M parameters, character-level Llama), teacher "small-4x" (~12.7M),
8 prompts x 8 rollouts x 32 new tokens (2-digit addition prompts), fp32, 2 threads, one optimizer step per
rollout batch (mu = 1), temperature 1, top-p 1, lr 1e-5.

Measured (median over steps 3..N of each run; grpo and rlad runs alternate for --rounds rounds):
  ours         rlad_core.trainer.train(): time/generate, time/score, time/update and the whole step
  floor        plain `model.generate` + one forward/backward with a policy-gradient-shaped loss + one fused
               AdamW step (+ one no-grad teacher forward over the batch for rlad), no framework around them
  TRL          shared/bench/trl_grpo_baseline.py in a separate environment with `trl` (optional, --trl-python)

Usage:
  python bench/step_bench.py [--steps 12] [--rounds 3] [--json docs/step_bench.json]
                             [--trl-python /path/to/trl-venv/bin/python
                              --trl-script ../shared/bench/trl_grpo_baseline.py]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlad_core.config import TrainConfig
from rlad_core.models import build_char_tokenizer, load_model, save_tiny_model
from rlad_core.reporting import MemoryReporter
from rlad_core.scoring import completion_logprobs
from rlad_core.tasks import get_task
from rlad_core.trainer import train

P, G, NEW_TOKENS = 8, 8, 32


def median_time(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    xs = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        xs.append(time.perf_counter() - t)
    return statistics.median(xs)


def measure_floor(student_dir: Path, teacher_dir: Path, reps: int) -> dict[str, float]:
    """The physical floor of one step, as shared/bench/floor.py defines it."""
    tok = build_char_tokenizer()
    student, teacher = load_model(str(student_dir)), load_model(str(teacher_dir)).eval()
    prompts = [e.prompt for e in get_task("arithmetic", levels=(2,)).examples(P, seed=0)]
    enc = tok([p for p in prompts for _ in range(G)], return_tensors="pt", padding=True)
    out: dict[str, torch.Tensor] = {}

    def gen() -> None:
        student.eval()
        with torch.inference_mode():
            out["seq"] = student.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=NEW_TOKENS,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )

    generate_s = median_time(gen, reps)
    seq = out["seq"].clone()  # made under inference_mode; autograd needs a normal tensor
    attn = torch.ones_like(seq)
    attn[:, : enc["input_ids"].shape[1]] = enc["attention_mask"]
    T = seq.shape[1] - enc["input_ids"].shape[1]

    def teacher_fwd() -> None:
        with torch.inference_mode():
            completion_logprobs(teacher, seq, attn, T)

    student.train()
    adv = torch.randn(seq.shape[0], 1)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5, fused=True)

    def fwd_bwd() -> None:
        student.zero_grad(set_to_none=True)
        lp, _ = completion_logprobs(student, seq, attn, T)
        (-(torch.exp(lp - lp.detach()) * adv).mean()).backward()

    fwd_bwd_s = median_time(fwd_bwd, reps)
    optim_s = median_time(opt.step, reps)
    teacher_s = median_time(teacher_fwd, reps)
    floor_grpo = generate_s + fwd_bwd_s + optim_s
    return {
        "generate_s": generate_s,
        "fwd_bwd_s": fwd_bwd_s,
        "adamw_s": optim_s,
        "teacher_forward_s": teacher_s,
        "floor_grpo_s": floor_grpo,
        "floor_rlad_s": floor_grpo + teacher_s,
        "new_tokens": T,
    }


def build_models(work: Path) -> tuple[Path, Path]:
    """The benchmark's student ("small", seed 0) and teacher ("small-4x", seed 1), saved under `work`."""
    return save_tiny_model(work / "student", "small", seed=0), save_tiny_model(work / "teacher", "small-4x", seed=1)


def train_config(
    method: str,
    student_dir: Path,
    teacher_dir: Path,
    steps: int,
    output_dir: Path,
    engine: str,
    *,
    prompts: int = P,
    group: int = G,
    new_tokens: int = NEW_TOKENS,
    **extra: object,
) -> TrainConfig:
    """The benchmark's training config (P prompts x G rollouts x NEW_TOKENS tokens unless `prompts`, `group`,
    `new_tokens` say otherwise: bench/gpu_check.py's Qwen-shaped runs); `extra` adds fields."""
    return TrainConfig(
        method=method,
        student=str(student_dir),
        teacher=str(teacher_dir) if method != "grpo" else None,
        task={"name": "arithmetic", "levels": [2]},
        steps=steps,
        batch_size=prompts * group,
        group_size=group,
        max_new_tokens=new_tokens,
        lr=1e-5,
        eval_every=0,
        checkpoint_every=0,
        log_samples=0,
        engine=engine,
        seed=0,
        output_dir=str(output_dir),
        **extra,
    )


def run_ours(
    method: str, student_dir: Path, teacher_dir: Path, steps: int, out_dir: Path, engine: str
) -> list[dict[str, float]]:
    """Per-step metrics of steps 3..N of one training run."""
    config = train_config(method, student_dir, teacher_dir, steps, out_dir / f"{method}-{engine}", engine)
    rep = MemoryReporter()
    train(config, reporter=rep)
    return [m for _, m in sorted(rep.train_metrics().items())][2:]


def summarize(rows: list[dict[str, float]]) -> dict[str, float]:
    med = {
        k: statistics.median(r[k] for r in rows) for k in ("time/generate", "time/score", "time/update", "time/step")
    }
    med["response_length_mean"] = statistics.median(r["response_length_mean"] for r in rows)
    med["steps_measured"] = len(rows)
    return med


def teacher_overhead(grpo: dict[str, float], rlad: dict[str, float], teacher_forward_s: float) -> dict[str, float]:
    """What rlad's teacher costs a step, in units of one teacher forward over the batch (target: <= 1.1): the
    step-time difference of rlad and grpo, and rlad's score phase (the only teacher work). `grpo`, `rlad`:
    `summarize` results."""
    return {
        "rlad_minus_grpo_over_teacher_forward": (rlad["time/step"] - grpo["time/step"]) / teacher_forward_s,
        "rlad_score_over_teacher_forward": rlad["time/score"] / teacher_forward_s,
    }


def measure_trl(python: str, script: str, model_dir: Path, out_dir: Path) -> dict[str, float] | None:
    res_path = out_dir / "trl.json"
    cmd = [
        python,
        script,
        "--model-dir",
        str(model_dir),
        "--out-dir",
        str(out_dir / "trl"),
        "--json",
        str(res_path),
        "--gradient-checkpointing",
        "off",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode != 0:
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    res = json.loads(res_path.read_text())
    return {
        "step_s": res["step_s_median_3_12"],
        "generate_s": res["breakdown_median_3_12"].get("generate_s"),
        "trl": res["trl"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="steps per run (the first two are warm-up)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating grpo/rlad runs per method")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--json", default=None)
    ap.add_argument("--trl-python", default=None)
    ap.add_argument("--trl-script", default=None)
    a = ap.parse_args()
    torch.set_num_threads(2)

    work = Path(tempfile.mkdtemp(prefix="rlad-bench-"))
    student_dir, teacher_dir = build_models(work)

    res: dict[str, object] = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "engine": a.engine,
        "steps": a.steps,
    }
    res["floor"] = measure_floor(student_dir, teacher_dir, a.reps)
    # grpo and rlad alternate over several rounds, so that drift of this noisy machine hits both alike
    rows: dict[str, list[dict[str, float]]] = {"grpo": [], "rlad": []}
    for _ in range(a.rounds):
        for method in rows:
            rows[method] += run_ours(method, student_dir, teacher_dir, a.steps, work, a.engine)
    res["grpo"], res["rlad"] = summarize(rows["grpo"]), summarize(rows["rlad"])
    if a.trl_python and a.trl_script:
        res["trl"] = measure_trl(a.trl_python, a.trl_script, student_dir, work)

    fl, g, r = res["floor"], res["grpo"], res["rlad"]
    ratios = {
        "grpo_step_over_floor": g["time/step"] / fl["floor_grpo_s"],
        "rlad_step_over_floor": r["time/step"] / fl["floor_rlad_s"],
        **teacher_overhead(g, r, fl["teacher_forward_s"]),
    }
    if res.get("trl"):
        ratios["grpo_step_over_trl"] = g["time/step"] / res["trl"]["step_s"]
    res["ratios"] = ratios
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
