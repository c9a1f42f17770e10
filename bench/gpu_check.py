"""The checks that need a GPU, as one short script (run on a CUDA machine; prints JSON, exits 1 on a failure).

1. evaluation leaves the CUDA random stream of training unchanged (it reseeds the generators it samples with);
2. a device the machine lacks is a config error before anything loads;
3. a short run of every method (grpo, rlad, kdrl, opd, sft) with tiny models on `cuda` in float32, and rlad in
   bfloat16 and with per-prompt sampling streams: finite loss, a checkpoint that verifies against its manifest,
   seconds per step;
4. per-row sampling streams on CUDA: a row's sample does not depend on the rows beside it (how a run on
   several GPUs gets the rollouts of one).

    python bench/gpu_check.py [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

from rlad_core.checkpoint import verify_checkpoint
from rlad_core.config import ConfigError, parse_config
from rlad_core.evaluate import evaluate
from rlad_core.models import load_model, load_tokenizer, save_tiny_model
from rlad_core.reporting import Reporter
from rlad_core.rollout import SamplingParams, make_engine
from rlad_core.tasks import get_task
from rlad_core.trainer import _resolve_device, train


class _Last(Reporter):
    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def metrics(self, step: int, values) -> None:  # noqa: ANN001
        self.last = dict(values)


def eval_keeps_cuda_stream(models: dict[str, Path]) -> dict:
    tok = load_tokenizer(str(models["student"]))
    model = load_model(str(models["student"]), device="cuda").eval()
    engine = make_engine("hf", model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    task = get_task("arithmetic", levels=[1])
    torch.manual_seed(7)
    expected = torch.rand(5, device="cuda")
    torch.manual_seed(7)
    evaluate(engine, tok, task, task.examples(8, seed=0, split="eval"), max_new_tokens=6, pass_k=2, seed=123)
    return {"ok": bool(torch.equal(torch.rand(5, device="cuda"), expected))}


def missing_device_is_refused() -> dict:
    n = torch.cuda.device_count()
    try:
        _resolve_device(f"cuda:{n}")
    except ConfigError as exc:
        return {"ok": True, "message": exc.errors[0][1]}
    return {"ok": False}


def per_row_streams_split_invariant(models: dict[str, Path]) -> dict:
    model = load_model(str(models["student"]), device="cuda").eval()
    tok = load_tokenizer(str(models["student"]))
    engine = make_engine("fast", model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    prompts = [tok(f"{a}+{a * 3}=")["input_ids"] for a in range(1, 9)]
    seeds = tuple(100 + i for i in range(len(prompts)))

    def sample(rows: list[int]) -> dict[int, list[int]]:
        params = SamplingParams(16, 1.0, 1.0, seeds=tuple(seeds[i] for i in rows))
        r = engine.generate([prompts[i] for i in rows], params)
        return {i: r.completion_ids[k][r.completion_mask[k] > 0].tolist() for k, i in enumerate(rows)}

    whole, halves = sample(list(range(8))), {**sample([0, 1, 2, 3]), **sample([4, 5, 6, 7])}
    return {"ok": whole == halves}


def short_run(models: dict[str, Path], method: str, dtype: str, out: Path, **extra: object) -> dict:
    spec = {
        "method": method,
        "student": str(models["student"]),
        "teacher": str(models["teacher"]),
        "steps": 6,
        "batch_size": 16,
        "group_size": 4,
        "max_new_tokens": 16,
        "lr": 1e-3,
        "eval_every": 0,
        "checkpoint_every": 0,
        "task": {"name": "arithmetic", "levels": [1]},
        "log_samples": 0,
        "device": "cuda",
        "dtype": dtype,
        "output_dir": str(out / f"{method}-{dtype}"),
        "sft_filter": "none",  # the untrained teacher answers nothing right: sft keeps all its traces, not none
        **extra,
    }
    reporter = _Last()
    t = time.perf_counter()
    result = train(parse_config(spec), reporter=reporter)
    seconds = time.perf_counter() - t
    loss = reporter.last.get("loss", float("nan"))
    manifest = verify_checkpoint(result.checkpoint)
    return {
        "ok": math.isfinite(loss) and manifest["step"] == 6,
        "loss": loss,
        "seconds": round(seconds, 2),
        "s_per_step_last": reporter.last.get("time/step"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {
            "student": save_tiny_model(root / "student", "micro", seed=0),
            "teacher": save_tiny_model(root / "teacher", "micro", seed=1),
        }
        results["eval_keeps_cuda_stream"] = eval_keeps_cuda_stream(models)
        results["missing_device_is_refused"] = missing_device_is_refused()
        for method, dtype in [(m, "float32") for m in ("grpo", "rlad", "kdrl", "opd", "sft")] + [("rlad", "bfloat16")]:
            results[f"{method}_{dtype}"] = short_run(models, method, dtype, root)
        results["rlad_float32_per_prompt_streams"] = short_run(
            models, "rlad", "float32", root / "streams", sampling_streams="per_prompt", engine="fast"
        )
        results["per_row_streams_split_invariant"] = per_row_streams_split_invariant(models)
    ok = all(v.get("ok") for v in results.values() if isinstance(v, dict))
    results["ok"] = ok
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
