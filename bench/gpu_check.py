"""The checks that need a GPU, and the GPU performance of the trainer on Qwen-sized models, as one script.

Correctness (CUDA only; `--checks-only` runs just these, about 30 s):

1. evaluation leaves the CUDA random stream of training unchanged (it reseeds the generators it samples with);
2. a device the machine lacks is a config error before anything loads;
3. a short run of every method (grpo, rlad, kdrl, opd, sft) with tiny models on `cuda` in float32, and rlad in
   bfloat16 and with per-prompt sampling streams: finite loss, a checkpoint that verifies against its manifest,
   seconds per step;
4. per-row sampling streams on CUDA: a row's sample does not depend on the rows beside it (how a run on
   several GPUs gets the rollouts of one).

Performance (`--perf-only` runs just these; bounded by `--budget-s`, 480 s by default, for the whole script):
random-init models shaped like Qwen3-0.6B (student) and Qwen3-1.7B (teacher), built from `Qwen3Config` in
bfloat16 (nothing is downloaded) and saved with a tokenizer the trainer loads like any checkpoint; 64 prompts x
8 rollouts x 256 new tokens (micro-batches of at most 64 rows), with a smaller micro-batch, then gradient
checkpointing, then fewer prompts when the project's memory estimate (rlad_core.memory) says the batch does not
fit the device. The tokenizer's EOS id is one past the model's vocabulary, so no rollout ends early and every
rate is over the full 256 tokens.

    matmul        the device's bfloat16 matmul rate, measured in this run (8192 x 8192 products)
    rollout       tokens/s of the fast engine and of plain Hugging Face `generate` on the same prompts
    teacher       one teacher forward over the batch, scored as the trainer scores it (row and vocab chunks)
    grpo, rlad    rlad_core.trainer.train() steps (the first a warm-up): medians of time/generate, time/score,
                  time/update, time/step; the trainer's score and update phases wait for the device at their
                  end here (CUDA runs asynchronously: the teacher's scoring would otherwise finish inside the
                  update's time)
    update MFU    model FLOPs of the update (6 x weights x tokens for the forward and backward over prompt +
                  completion, causal attention, the output head over the completion; + one forward of the
                  body when gradient checkpointing recomputes it) / update time / the measured matmul rate
    memory        peak allocated device memory of the rollouts and of each training run (and the process's
                  peak resident memory)
    eval RNG      evaluation left the device's random stream unchanged (on the Qwen-shaped student)

Targets (reported with the numbers; they do not set the exit status): (rlad step - grpo step) <= 1.1 x one
teacher forward; fast engine >= 3 x HF `generate` tokens/s; update MFU >= 30%.

`--smoke` runs the performance part on the CPU with a tiny shape (2-layer Qwen3 models, a 512-token vocabulary
scored in chunks of 128, 4 prompts x 4 rollouts x 16 tokens, float32, one thread) in well under a minute: the
same code path, numbers that say nothing about the targets.
The exit status is 1 when a correctness check fails or the performance part raises, else 0.

    python bench/gpu_check.py [--out results.json] [--perf-only | --checks-only] [--budget-s 480]
    python bench/gpu_check.py --smoke [--out smoke.json]
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import resource
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import rlad_core.trainer as trainer_module
from rlad_core.checkpoint import verify_checkpoint
from rlad_core.config import ConfigError, parse_config
from rlad_core.evaluate import evaluate
from rlad_core.memory import DTYPE_BYTES, GIB, RUNTIME_BYTES, MemoryEstimate, Shape, device_capacity, estimate
from rlad_core.models import (
    build_char_tokenizer,
    char_vocab,
    encode_prompts,
    load_model,
    load_tokenizer,
    save_tiny_model,
)
from rlad_core.reporting import MemoryReporter, Reporter
from rlad_core.rollout import Rollouts, SamplingParams, make_engine
from rlad_core.rollout.base import left_pad
from rlad_core.scoring import score_in_chunks
from rlad_core.tasks import get_task
from rlad_core.trainer import _resolve_device, _vocab_chunk, train

sys.path.insert(0, str(Path(__file__).resolve().parent))  # step_bench, also when imported from elsewhere
from step_bench import median_time, summarize, teacher_overhead, train_config  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# Correctness checks (CUDA)
# ---------------------------------------------------------------------------------------------------------


class _Last(Reporter):
    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def metrics(self, step: int, values: Mapping[str, float]) -> None:
        self.last = dict(values)


def eval_keeps_rng(model: torch.nn.Module, tokenizer: Any, device: str) -> dict[str, Any]:
    """Whether `evaluate` leaves the random stream of `device` as it found it (training draws from it next)."""
    engine = make_engine("hf", model, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    task = get_task("arithmetic", levels=[1])
    torch.manual_seed(7)
    expected = torch.rand(5, device=device)
    torch.manual_seed(7)
    evaluate(engine, tokenizer, task, task.examples(8, seed=0, split="eval"), max_new_tokens=6, pass_k=2, seed=123)
    return {"ok": bool(torch.equal(torch.rand(5, device=device), expected)), "device": device}


def eval_keeps_cuda_stream(models: dict[str, Path]) -> dict[str, Any]:
    tok = load_tokenizer(str(models["student"]))
    model = load_model(str(models["student"]), device="cuda").eval()
    return {"ok": eval_keeps_rng(model, tok, "cuda")["ok"]}


def missing_device_is_refused() -> dict[str, Any]:
    n = torch.cuda.device_count()
    try:
        _resolve_device(f"cuda:{n}")
    except ConfigError as exc:
        return {"ok": True, "message": exc.errors[0][1]}
    return {"ok": False}


def per_row_streams_split_invariant(models: dict[str, Path]) -> dict[str, Any]:
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


def short_run(models: dict[str, Path], method: str, dtype: str, out: Path, **extra: object) -> dict[str, Any]:
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
    assert result.checkpoint is not None  # the last step always saves one
    manifest = verify_checkpoint(result.checkpoint)
    return {
        "ok": math.isfinite(loss) and manifest["step"] == 6,
        "loss": loss,
        "seconds": round(seconds, 2),
        "s_per_step_last": reporter.last.get("time/step"),
    }


def correctness_checks() -> dict[str, dict[str, Any]]:
    """Checks 1-4 of the module docstring with the micro models, on `cuda`."""
    results: dict[str, dict[str, Any]] = {}
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
    return results


# ---------------------------------------------------------------------------------------------------------
# Performance: shapes, models, the batch that fits
# ---------------------------------------------------------------------------------------------------------

# Qwen3Config fields of the two real models (their config.json; vocabulary 151936, tied embeddings).
QWEN3_0_6B: dict[str, Any] = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
    "vocab_size": 151936,
    "tie_word_embeddings": True,
    "max_position_embeddings": 40960,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1_000_000.0},
}
QWEN3_1_7B: dict[str, Any] = {**QWEN3_0_6B, "hidden_size": 2048, "intermediate_size": 6144}
# --smoke: the same architecture, tiny (GQA with 2 query heads per KV head, Qwen3's q/k norms, tied embeddings)
TINY_STUDENT: dict[str, Any] = {
    **QWEN3_0_6B,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 192,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}
TINY_TEACHER: dict[str, Any] = {**TINY_STUDENT, "hidden_size": 128, "head_dim": 32, "intermediate_size": 384}

MIN_MICRO = 16  # rows per forward/backward below which the batch shrinks (or checkpointing starts) instead
MAX_MICRO = 64  # rows per forward/backward: 64 x 263 tokens keep a GPU busy; more only risks the estimate's error
MEMORY_MARGIN = 0.8  # share of the device's free memory the estimate may use (it is an estimate: HF's fp32 norm
# upcasts, for one, are not in it)


@dataclass(frozen=True)
class PerfShape:
    """What the performance part runs: the two model shapes, the batch it starts from, how long it measures."""

    name: str
    student: dict[str, Any]
    teacher: dict[str, Any]
    prompts: int
    group: int
    new_tokens: int
    dtype: str
    matmul_n: int  # side of the square matmuls that measure the device's rate
    max_steps: int  # per training run; the first is a warm-up
    engine_reps: int  # timed calls per rollout engine (after one warm-up call)
    vocab_chunk: int | str  # the trainer's logprob_vocab_chunk (smoke: chunked too, to run the same code)
    budget_s: float  # default --budget-s
    threads: int | None = None  # torch CPU threads (smoke: 1, steadier on a busy 2-core machine)


FULL = PerfShape(
    "qwen3-0.6b-student/qwen3-1.7b-teacher", QWEN3_0_6B, QWEN3_1_7B, 64, 8, 256, "bfloat16", 8192, 6, 3, "auto", 480
)
SMOKE = PerfShape("smoke", TINY_STUDENT, TINY_TEACHER, 4, 4, 16, "float32", 1024, 8, 5, 128, 60, threads=1)

# (name, comparison, bound): the issue's targets
TARGETS: tuple[tuple[str, str, float], ...] = (
    ("rlad_minus_grpo_over_teacher_forward", "<=", 1.1),
    ("fast_over_hf_generate", ">=", 3.0),
    ("update_mfu", ">=", 0.30),
)


def build_perf_tokenizer(vocab_size: int, model_max_length: int) -> Any:
    """A character tokenizer (rlad_core.models' specials and characters) padded with filler tokens "<r123>" to
    `vocab_size` ids, so that every id the model samples decodes, and with EOS at id `vocab_size`: one past
    the model's vocabulary, so a random-init model never samples it and every rollout runs to max_new_tokens
    (what bench/engine_bench.py --no-eos does by handing the engines such an id)."""
    vocab = {tok: i for i, tok in enumerate(t for t in char_vocab() if t != "<eos>")}
    if len(vocab) > vocab_size:
        raise ValueError(f"a vocabulary of {vocab_size} cannot hold the {len(vocab)} characters and specials")
    vocab.update({f"<r{i}>": i for i in range(len(vocab), vocab_size)})
    vocab["<eos>"] = vocab_size
    return build_char_tokenizer(model_max_length, vocab=vocab)


def qwen3_config(arch: dict[str, Any], tokenizer: Any) -> Any:
    """`Qwen3Config` of `arch` with the tokenizer's pad and BOS ids. No EOS id: the tokenizer's is outside the
    vocabulary, which a model config refuses; the trainer and this script hand the engines the tokenizer's."""
    from transformers import Qwen3Config

    return Qwen3Config(**arch, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id)


def save_random_model(out: Path, arch: dict[str, Any], tokenizer: Any, *, seed: int, dtype: str, device: str) -> Path:
    """A random-init `Qwen3ForCausalLM` of `arch` in `dtype`, built on `device` (fast for 2B parameters) and
    saved with `tokenizer` (save_pretrained), loadable by the trainer like a downloaded checkpoint."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(qwen3_config(arch, tokenizer), dtype=getattr(torch, dtype))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    free_device(device)
    return out


@dataclass(frozen=True)
class PerfDirs:
    """Where the performance part keeps its models and runs, and the device it runs on."""

    student: Path
    teacher: Path
    runs: Path
    device: str


@dataclass(frozen=True)
class BatchPlan:
    """The batch the run uses: the shape's, or smaller where the memory estimate says it must be."""

    prompts: int
    micro_batch_size: int
    gradient_checkpointing: bool
    estimate_gib: dict[str, float]
    capacity_gib: float | None
    scaled_down: bool


def halvings(n: int) -> list[int]:
    """n, n // 2, ... down to 1."""
    out = [n]
    while out[-1] > 1:
        out.append(out[-1] // 2)
    return out


def memory_needed(est: MemoryEstimate, student: Shape, dtype: str) -> int:
    """Bytes the run's worst moment takes: the trainer's peak (the estimate), or HF `generate` in the rollout
    benchmark, whose growing cache is copied as it grows (about twice the fast engine's preallocated one)."""
    generate = student.params * DTYPE_BYTES[dtype] + 2 * est.rollout + RUNTIME_BYTES
    return max(est.total, generate)


def plan_batch(
    shape: PerfShape, student: Shape, teacher: Shape, prompt_tokens: int, capacity: int | None, dirs: PerfDirs
) -> BatchPlan:
    """The largest batch that fits `capacity` bytes by rlad_core.memory's estimate of an rlad run: all the
    shape's prompts if it can, with the largest micro-batch of MIN_MICRO to MAX_MICRO rows, then with gradient
    checkpointing, then half the prompts, and so on."""
    budget = capacity * MEMORY_MARGIN if capacity is not None else math.inf
    for prompts in halvings(shape.prompts):
        rows = prompts * shape.group
        for checkpointing in (False, True):
            for micro in halvings(min(rows, MAX_MICRO)):
                if micro < min(rows, MIN_MICRO):
                    break
                config = perf_config("rlad", shape, dirs, BatchPlan(prompts, micro, checkpointing, {}, None, False))
                est = estimate(
                    config,
                    student=student,
                    teacher=teacher,
                    reference=False,
                    prompt_tokens=prompt_tokens,
                    vocab_chunk=_vocab_chunk(config, student.vocab, False),
                )
                if memory_needed(est, student, shape.dtype) <= budget:
                    return BatchPlan(
                        prompts=prompts,
                        micro_batch_size=micro,
                        gradient_checkpointing=checkpointing,
                        estimate_gib=est.parts(),
                        capacity_gib=round(capacity / GIB, 2) if capacity is not None else None,
                        scaled_down=prompts < shape.prompts,
                    )
    raise RuntimeError(f"even one prompt of {shape.group} rollouts does not fit in {capacity} bytes by the estimate")


def perf_config(method: str, shape: PerfShape, dirs: PerfDirs, plan: BatchPlan, steps: int = 2) -> Any:
    """The trainer config of a performance run: step_bench.py's, at this shape, batch, dtype and device."""
    return train_config(
        method,
        dirs.student,
        dirs.teacher,
        steps,
        dirs.runs / method,
        "fast",
        prompts=plan.prompts,
        group=shape.group,
        new_tokens=shape.new_tokens,
        dtype=shape.dtype,
        device=dirs.device,
        micro_batch_size=plan.micro_batch_size,
        gradient_checkpointing=plan.gradient_checkpointing,
        logprob_vocab_chunk=shape.vocab_chunk,
    )


# ---------------------------------------------------------------------------------------------------------
# Performance: measurements
# ---------------------------------------------------------------------------------------------------------


def sync(device: str) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; the CPU has nothing to wait for)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def free_device(device: str) -> None:
    """Drop unreferenced tensors and hand cached CUDA blocks back, so the next phase's peak is its own."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: str) -> float | None:
    """Peak allocated device memory since the last `reset_peak`, GiB; None on the CPU (see max_rss_gib)."""
    if device.startswith("cuda"):
        return round(torch.cuda.max_memory_allocated(device) / GIB, 3)
    return None


def matmul_rate(n: int, dtype: str, device: str, *, rounds: int = 5, per_round: int = 10) -> dict[str, Any]:
    """The device's measured matmul rate: `rounds` timed rounds of `per_round` n x n x n products in `dtype`
    (after two warm-up products); TFLOP/s of the best round (the MFU denominator) and the median round."""
    a = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    b = torch.randn(n, n, device=device, dtype=getattr(torch, dtype))
    for _ in range(2):
        a @ b
    sync(device)
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per_round):
            a @ b
        sync(device)
        rates.append(2 * n**3 * per_round / (time.perf_counter() - t) / 1e12)
    return {"n": n, "dtype": dtype, "tflops": max(rates), "tflops_median": statistics.median(rates)}


def rollout_speed(
    model: Any, tok: Any, prompt_ids: list[list[int]], new_tokens: int, *, reps: int, until: float
) -> tuple[dict[str, Any], Rollouts]:
    """Tokens/s of the fast engine and of plain HF `generate` (as engine_bench.py calls it) on the same prompts:
    one warm-up call each, then up to `reps` timed calls each, interleaved (at least one, more while time is left
    before `until`). Also the last fast rollouts, for the teacher forward."""
    device = str(next(model.parameters()).device)
    eos, pad = tok.eos_token_id, tok.pad_token_id  # eos: one past the vocabulary, never sampled
    fast = make_engine("fast", model, eos_token_id=eos, pad_token_id=pad)
    params = SamplingParams(new_tokens, 1.0, 1.0)
    ids, mask = left_pad(prompt_ids, pad, torch.device(device))
    last: dict[str, Rollouts] = {}

    def run_fast() -> int:
        last["r"] = fast.generate(prompt_ids, params)
        return int(last["r"].completion_mask.sum())

    def run_generate() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=new_tokens,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        return int((out.shape[1] - ids.shape[1]) * out.shape[0])  # no row ends early: all run the full length

    variants: dict[str, Callable[[], int]] = {"fast": run_fast, "hf_generate": run_generate}
    times: dict[str, list[float]] = {name: [] for name in variants}
    counts: set[int] = set()
    names = list(variants)
    for rnd in range(1 + reps):
        if rnd >= 2 and time.monotonic() > until:
            break
        for name in names[rnd % 2 :] + names[: rnd % 2]:
            sync(device)
            t = time.perf_counter()
            counts.add(variants[name]())
            sync(device)
            if rnd:
                times[name].append(time.perf_counter() - t)
    tokens = len(prompt_ids) * new_tokens
    res: dict[str, Any] = {
        name: {"tokens_per_s": tokens / statistics.median(x), "median_s": statistics.median(x), "all_s": x}
        for name, x in times.items()
    }
    res["tokens_per_call"] = tokens
    res["all_rows_full_length"] = counts == {tokens}
    res["fast_over_hf_generate"] = res["fast"]["tokens_per_s"] / res["hf_generate"]["tokens_per_s"]
    return res, last["r"]


def teacher_forward_seconds(teacher: Any, rollouts: Rollouts, config: Any, reps: int) -> float:
    """Median seconds of one teacher forward over the whole batch, scored as the trainer scores it (no grad,
    `micro_batch_size` rows and the resolved vocabulary chunk at a time), after one warm-up."""
    device = str(next(teacher.parameters()).device)
    vocab_chunk = _vocab_chunk(config, int(teacher.config.vocab_size), False)

    def forward() -> None:
        score_in_chunks(
            teacher,
            rollouts.input_ids,
            rollouts.attention_mask,
            rollouts.num_completion_tokens,
            chunk_size=config.resolved_micro_batch_size,
            vocab_chunk=vocab_chunk,
        )
        sync(device)

    return median_time(forward, reps, warmup=1)


@contextmanager
def synced_phases(device: str) -> Iterator[list[tuple[int, int, int]]]:
    """While open, the trainer's scoring (`score_in_chunks`) and update (`_update`) wait for the device before
    returning, so that its time/score and time/update hold their own device work; each update also records
    its batch shape (rows, sequence length, completion length) for the FLOP count. Wrapped from outside, as
    distributed_bench.py wraps the trainer: nothing in rlad_core changes."""
    shapes: list[tuple[int, int, int]] = []
    originals = {name: getattr(trainer_module, name) for name in ("score_in_chunks", "_update")}
    score, update = originals["score_in_chunks"], originals["_update"]

    def synced_score(*args: Any, **kwargs: Any) -> torch.Tensor:
        out: torch.Tensor = score(*args, **kwargs)
        sync(device)
        return out

    def synced_update(config: Any, run: Any, batch: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        shapes.append((int(batch.input_ids.shape[0]), int(batch.input_ids.shape[1]), int(batch.T)))
        out: dict[str, Any] = update(config, run, batch, *args, **kwargs)
        sync(device)
        return out

    vars(trainer_module).update(score_in_chunks=synced_score, _update=synced_update)
    try:
        yield shapes
    finally:
        vars(trainer_module).update(originals)


class _Enough(Exception):
    """Raised by `_StepBudget` to end a measured run: no final checkpoint (gigabytes of optimizer state that
    this benchmark does not measure) is written."""


class _StepBudget(MemoryReporter):
    """Keeps the metrics; ends the run after `max_steps` steps, or after two once `until` has passed."""

    def __init__(self, max_steps: int, until: float) -> None:
        super().__init__()
        self.max_steps, self.until = max_steps, until

    def metrics(self, step: int, values: Any) -> None:
        super().metrics(step, values)
        if step >= self.max_steps or (step >= 2 and time.monotonic() >= self.until):
            raise _Enough(step)


def update_flops(s: Shape, rows: int, seq_len: int, completion_len: int, recompute: bool) -> float:
    """FLOPs of one update over rows x seq_len tokens: 3 x (a forward's) for forward and backward; a forward is
    2 x the weights other than the embedding per token, causal attention (QK^T and PV: 4 x the query width per
    (query, key) pair), and the output head over the completion positions only (as the trainer applies it).
    With `recompute` (gradient checkpointing) one more forward of the decoder layers."""
    q = s.heads * s.head_dim
    body = s.params - s.vocab * s.hidden * (1 if s.tied else 2)  # every weight but the embedding and the head
    body_forward = 2 * body * rows * seq_len + 2 * s.layers * q * rows * seq_len * (seq_len + 1)
    head_forward = 2 * s.vocab * s.hidden * rows * completion_len
    return 3 * (body_forward + head_forward) + (body_forward if recompute else 0)


def timed_run(
    method: str, shape: PerfShape, dirs: PerfDirs, plan: BatchPlan, student: Shape, until: float
) -> dict[str, Any]:
    """A training run of `method` with rlad_core.trainer.train(), ended by `_StepBudget`: medians of its phases
    over the steps after the first, the update's FLOP rate, and the run's peak device memory."""
    device = dirs.device
    config = perf_config(method, shape, dirs, plan, steps=shape.max_steps + 1)  # ended by the reporter
    reporter = _StepBudget(shape.max_steps, until)
    free_device(device)
    reset_peak(device)
    with synced_phases(device) as shapes:
        try:
            train(config, reporter=reporter)
        except _Enough:
            pass
    peak = peak_gib(device)
    free_device(device)
    rows = [m for _, m in sorted(reporter.train_metrics().items())][1:]
    flops = sum(update_flops(student, *shp, plan.gradient_checkpointing) for shp in shapes[1 : 1 + len(rows)])
    update_s = sum(r["time/update"] for r in rows)
    return {
        **summarize(rows),
        "update_tflops": flops / update_s / 1e12,
        "batch_shape": dict(zip(("rows", "seq_len", "completion_len"), shapes[-1], strict=True)),
        "peak_memory_gib": peak,
    }


def targets(values: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each target of TARGETS with its measured value and whether it is met."""
    out = {}
    for name, op, bound in TARGETS:
        v = values[name]
        out[name] = {"value": v, "target": f"{op} {bound}", "met": v <= bound if op == "<=" else v >= bound}
    return out


def build_models(shape: PerfShape, root: Path, device: str) -> tuple[Any, PerfDirs]:
    """The shape's tokenizer, and its student (seed 0) and teacher (seed 1) saved under `root`."""
    tok = build_perf_tokenizer(shape.student["vocab_size"], shape.student["max_position_embeddings"])
    dirs = PerfDirs(
        student=save_random_model(root / "student", shape.student, tok, seed=0, dtype=shape.dtype, device=device),
        teacher=save_random_model(root / "teacher", shape.teacher, tok, seed=1, dtype=shape.dtype, device=device),
        runs=root / "runs",
        device=device,
    )
    return tok, dirs


def measure_rollouts(
    shape: PerfShape, dirs: PerfDirs, plan: BatchPlan, tok: Any, prompts: list[str], until: float
) -> dict[str, Any]:
    """Rollout speed and its peak memory, the eval RNG check, then one teacher forward over the rollouts: each
    model loaded once, and freed before the training runs."""
    device = dirs.device
    student = load_model(str(dirs.student), dtype=shape.dtype, device=device).eval()
    prompt_ids = encode_prompts(tok, [p for p in prompts for _ in range(shape.group)])
    free_device(device)
    reset_peak(device)
    rollout, rollouts = rollout_speed(student, tok, prompt_ids, shape.new_tokens, reps=shape.engine_reps, until=until)
    rollout["peak_memory_gib"] = peak_gib(device)
    res: dict[str, Any] = {"rollout": rollout, "eval_keeps_rng": eval_keeps_rng(student, tok, device)}
    del student
    free_device(device)
    teacher = load_model(str(dirs.teacher), dtype=shape.dtype, device=device).eval().requires_grad_(False)
    res["teacher_forward_s"] = teacher_forward_seconds(teacher, rollouts, perf_config("rlad", shape, dirs, plan), 3)
    del teacher, rollouts
    free_device(device)
    return res


def add_results(res: dict[str, Any]) -> None:
    """The figures the targets are judged on, the overall peaks, and the targets, from the measurements."""
    g, r = res["grpo"], res["rlad"]
    res.update(teacher_overhead(g, r, res["teacher_forward_s"]))
    res["rlad_minus_grpo_s"] = r["time/step"] - g["time/step"]
    # grpo's update (rlad's has the same FLOPs and a few more elementwise terms in its loss)
    res["update_mfu"] = g["update_tflops"] / res["matmul"]["tflops"]
    res["fast_over_hf_generate"] = res["rollout"]["fast_over_hf_generate"]
    peaks = [x["peak_memory_gib"] for x in (res["rollout"], g, r) if x["peak_memory_gib"] is not None]
    res["peak_memory_gib"] = max(peaks) if peaks else None
    res["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 3)  # KiB on Linux
    res["targets"] = targets(res)


def performance(shape: PerfShape, device: str, until: float) -> dict[str, Any]:
    """The performance part (module docstring) at `shape` on `device`, done by about monotonic time `until`."""
    t0 = time.monotonic()
    res: dict[str, Any] = {"shape": shape.name, "dtype": shape.dtype, "device": device}
    res["matmul"] = matmul_rate(shape.matmul_n, shape.dtype, device)
    with tempfile.TemporaryDirectory() as tmp:
        tok, dirs = build_models(shape, Path(tmp), device)
        student, teacher = (Shape.from_config(qwen3_config(arch, tok)) for arch in (shape.student, shape.teacher))
        res["models"] = {
            "student": {**shape.student, "params": student.params},
            "teacher": {**shape.teacher, "params": teacher.params},
        }
        task = get_task("arithmetic", levels=[2])  # step_bench.train_config's task
        prompt_tokens = max(len(p) for p in encode_prompts(tok, [e.prompt for e in task.examples(256, seed=0)]))
        plan = plan_batch(shape, student, teacher, prompt_tokens, device_capacity(device), dirs)
        res["batch"] = {"group_size": shape.group, "max_new_tokens": shape.new_tokens, **asdict(plan)}
        res["setup_s"] = time.monotonic() - t0

        prompts = [e.prompt for e in task.examples(plan.prompts, seed=0)]
        res.update(
            measure_rollouts(shape, dirs, plan, tok, prompts, time.monotonic() + 0.2 * (until - time.monotonic()))
        )
        # grpo, then rlad, in the time left (rlad's steps are longer: it gets the larger share)
        res["grpo"] = timed_run("grpo", shape, dirs, plan, student, time.monotonic() + 0.4 * (until - time.monotonic()))
        res["rlad"] = timed_run("rlad", shape, dirs, plan, student, until)
    add_results(res)
    res["seconds"] = time.monotonic() - t0
    res["ok"] = res["eval_keeps_rng"]["ok"] and res["rollout"]["all_rows_full_length"]
    return res


def summary_lines(perf: dict[str, Any]) -> list[str]:
    """The performance part as a few lines to read (the JSON holds everything)."""
    ro, b = perf["rollout"], perf["batch"]
    lines = [
        f"{perf['shape']} on {perf['device']} ({perf['dtype']}): {b['prompts']} prompts x {b['group_size']} x "
        f"{b['max_new_tokens']} tokens, micro-batch {b['micro_batch_size']}, checkpointing "
        f"{b['gradient_checkpointing']}{' (scaled down to fit)' if b['scaled_down'] else ''}",
        f"matmul {perf['matmul']['tflops']:.2f} TFLOP/s ({perf['matmul']['n']}^3, {perf['matmul']['dtype']})",
        f"rollout tokens/s: fast {ro['fast']['tokens_per_s']:.0f}, HF generate {ro['hf_generate']['tokens_per_s']:.0f}",
        f"step s: grpo {perf['grpo']['time/step']:.3f}, rlad {perf['rlad']['time/step']:.3f}; "
        f"teacher forward {perf['teacher_forward_s']:.3f} s",
        f"update {perf['grpo']['time/update']:.3f} s, {perf['grpo']['update_tflops']:.3g} TFLOP/s "
        f"(MFU {perf['update_mfu']:.1%})",
        f"peak device memory {'n/a' if perf['peak_memory_gib'] is None else perf['peak_memory_gib']} GiB, "
        f"max RSS {perf['max_rss_gib']} GiB; "
        f"eval left the RNG unchanged: {perf['eval_keeps_rng']['ok']}",
    ]
    for name, t in perf["targets"].items():
        lines.append(f"target {name} {t['target']}: {t['value']:.3f} {'met' if t['met'] else 'NOT met'}")
    return lines


# ---------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model (Linux) with the torch threads the run uses."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os
    import platform

    model = platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    threads = torch.get_num_threads()
    return f"cpu ({model}, {os.cpu_count()} cores, {threads} torch thread{'s' * (threads != 1)})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--smoke", action="store_true", help="the performance part, tiny, on the CPU")
    parts = ap.add_mutually_exclusive_group()
    parts.add_argument("--perf-only", action="store_true", help="skip the correctness checks")
    parts.add_argument("--checks-only", action="store_true", help="skip the performance part")
    ap.add_argument("--budget-s", type=float, default=None, help="about how long the whole script may take")
    args = ap.parse_args()
    shape = SMOKE if args.smoke else FULL
    if shape.threads:
        torch.set_num_threads(shape.threads)
    until = time.monotonic() + (args.budget_s or shape.budget_s)
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (--smoke runs the performance part on the CPU)", file=sys.stderr)
        return 1
    import transformers

    results: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": datetime.date.today().isoformat(),
        "mode": "smoke" if args.smoke else "full",
    }
    if not args.smoke and not args.perf_only:
        results.update(correctness_checks())
    if not args.checks_only:
        try:
            results["perf"] = performance(shape, device, until)
            print("\n".join(summary_lines(results["perf"])), file=sys.stderr)
        except Exception as exc:  # the correctness results are still written
            traceback.print_exc()
            results["perf"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    ok = all(v.get("ok") for v in results.values() if isinstance(v, dict))
    results["ok"] = ok
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
