"""The training loop of RLAD and its baselines, top to bottom.

One step (shared/RLAD.md, shared/ARCHITECTURE.md):
    sample P prompts -> G rollouts each (engine) -> rewards (task verifier) -> group advantages
    -> old-policy / teacher / reference log-probs of the sampled tokens (no grad)
    -> mu inner epochs over mini-batches (micro-batches with gradient accumulation, clip, AdamW)
    -> LR schedule -> metrics; every k steps: evaluation, checkpoint.
`sft` replaces the rollouts with reward-filtered teacher traces (or the task's reference solutions) and the
loss with cross-entropy. The loop talks to the outside only through a `Reporter`.

Under torchrun (`rlad_core.distributed`) each process takes a contiguous block of the step's prompts, samples,
scores and rewards them, and the update is data-parallel (DDP): every micro-batch's weight is its share of the
global mini-batch, so the gradient is the one a single process computes on the whole batch. Each rank also
evaluates its block of the held-out examples. Rank 0 reports and saves; metrics are computed over every rank's
rows (evaluation metrics over every rank's examples).

Steps are numbered from 1: "step s" is the state after s updates; step 0 is the initial model.
"""

from __future__ import annotations

import copy
import math
import random
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from rlad_core import losses
from rlad_core.checkpoint import (
    DiskFull,
    is_out_of_space,
    latest_checkpoint,
    load_trainer_state,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    tensor_bytes,
)
from rlad_core.config import TEACHER_METHODS, ConfigError, TrainConfig
from rlad_core.distributed import (
    World,
    full_model_state,
    full_weights,
    init_world,
    load_full_optimizer,
    load_sharded_optimizer,
    local_value,
    no_grad_sync,
    optimizer_state_by_name,
    save_sharded,
    shard_model,
    sharded_optimizer_state,
)
from rlad_core.evaluate import aggregate, evaluate_examples, sample_seeds
from rlad_core.layout import ADAPTER_CONFIG, MERGED, SHARDED_OPTIMIZER
from rlad_core.memory import GIB, MemoryEstimate, Shape, device_capacity
from rlad_core.memory import estimate as estimate_memory
from rlad_core.memory import fixes as memory_fixes
from rlad_core.models import (
    check_tokenizers_compatible,
    decode_completions,
    encode_prompts,
    load_model,
    load_tokenizer,
)
from rlad_core.precision import HALF, MasterWeights
from rlad_core.reporting import Reporter
from rlad_core.rollout import HFEngine, RolloutEngine, SamplingParams, make_engine
from rlad_core.scoring import completion_logprobs, score_in_chunks
from rlad_core.tasks import get_task
from rlad_core.tasks.base import Example, Task


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class TrainResult:
    """What a finished (or stopped) run hands back."""

    step: int
    output_dir: Path
    checkpoint: Path | None
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval_before: dict[str, float] = field(default_factory=dict)
    eval_after: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0
    stopped: bool = False


@dataclass
class Batch:
    """One step's training rows. B rows; L = prompt + completion tokens; T completion tokens."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    completion_mask: torch.Tensor  # (B, T) float
    texts: list[str]  # decoded completions, B
    examples: list[Example]  # the example each row answers, B

    @property
    def T(self) -> int:
        return self.completion_mask.shape[1]

    def select(self, rows: torch.Tensor) -> Batch:
        idx = rows.tolist()
        return Batch(
            self.input_ids[rows],
            self.attention_mask[rows],
            self.completion_mask[rows],
            [self.texts[i] for i in idx],
            [self.examples[i] for i in idx],
        )


# ---------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    *,
    reporter: Reporter | None = None,
    resume_from: str | Path | None = None,
    disk_reserve_bytes: int = 0,
    disk_poll_s: float = 10.0,
    disk_full_wait_s: float | None = None,
) -> TrainResult:
    """Run `config` to the end (or until the reporter asks to stop). `resume_from`: a checkpoint dir or "auto".

    A checkpoint is written only if its disk keeps `disk_reserve_bytes` free beside it; otherwise the run
    reports `disk_full` and waits (heartbeats go on), checking every `disk_poll_s` seconds, until space is freed,
    or raises `DiskFull` once it has waited `disk_full_wait_s` seconds (None: as long as it takes; 0: at once).
    Earlier checkpoints stay intact either way.
    """
    run = _setup(config, resume_from)
    world = run.world
    # rank 0 reports; a stop asked of any rank stops every rank (one all-reduce a step)
    reporter = (reporter or Reporter()) if world.is_main else _StopRequests(reporter)
    run.disk_reserve_bytes, run.disk_poll_s, run.disk_full_wait_s = disk_reserve_bytes, disk_poll_s, disk_full_wait_s
    G = config.group_size
    result = TrainResult(
        step=run.start_step, output_dir=run.out_dir, checkpoint=run.resumed_from, skipped_steps=run.skipped_steps
    )
    reporter.event(
        "resumed" if run.resumed_from else "started",
        step=run.start_step,
        total_steps=config.steps,
        method=config.method,
        checkpoint=str(run.resumed_from) if run.resumed_from else None,
        processes=world.size,
        memory_gib=run.memory.parts() if run.memory is not None else None,
    )
    if config.eval_every and run.start_step == 0:
        with full_weights(run.student if run.sharded else None):
            result.eval_before = _evaluate(config, run, reporter, step=0)

    consecutive_nonfinite = run.consecutive_nonfinite
    last_saved = run.start_step if run.resumed_from else -1
    gave_up_checkpoint = False  # a stop came while a checkpoint waited for disk space
    step = run.start_step
    try:
        for step in range(run.start_step + 1, config.steps + 1):
            if world.any(reporter.should_stop()):  # a stop asked of any process (node) stops all
                step -= 1
                result.stopped = True
                break
            t_start = time.perf_counter()

            # ===== 1. sample P prompts; G rollouts each (or, for sft, reward-filtered traces) ==============
            # this process's block of the step's prompts (all of them on one process)
            block = world.block(config.prompts_per_step)
            examples_P = _examples_for_step(run.pool, step, config.prompts_per_step, config.seed)[
                block.start : block.stop
            ]
            if config.method == "sft":
                batch, sft_metrics = _sft_traces(config, run, examples_P, step, block.start)
            else:
                seeds = _row_seeds(config, run, step, block.start * G, len(examples_P) * G)
                batch, sft_metrics = _rollouts(config, run, [e for e in examples_P for _ in range(G)], seeds), {}
            t_generated = time.perf_counter()
            reporter.heartbeat(step)

            # ===== 2. rewards from the verifier, group-relative advantages ===========================
            scores = [run.task.score(text, ex) for text, ex in zip(batch.texts, batch.examples, strict=True)]
            rewards_B = torch.tensor([s.reward for s in scores], dtype=torch.float32)  # (B,)
            advantages_B = (  # (B,), on the batch's device (rewards come from Python, on the CPU)
                losses.group_advantages(
                    rewards_B, G, eps=config.adv_eps, std=config.adv_std, scale=config.adv_scale
                ).to(batch.input_ids.device)
                if config.method != "sft"
                else None
            )

            # ===== 3. score the sampled tokens: old policy, teacher, reference (no grad) =================
            old_logp = teacher_logp = ref_logp = None
            if len(scores) and config.method != "sft":
                args = (batch.input_ids, batch.attention_mask, batch.T)
                scoring = {
                    "chunk_size": config.resolved_micro_batch_size,
                    "temperature": config.temperature,
                    "vocab_chunk": run.vocab_chunk,
                }
                if config.needs_old_logp:
                    old_logp = score_in_chunks(run.student, *args, **scoring)
                if config.method in TEACHER_METHODS:
                    teacher_logp = score_in_chunks(run.teacher, *args, **scoring)
                if config.beta > 0:
                    ref_logp = score_in_chunks(run.reference, *args, **scoring)
            t_scored = time.perf_counter()

            # ===== 4. update: mu epochs x mini-batches x micro-batches =================================
            lr = run.scheduler.get_last_lr()[0]  # the rate of this step's update, logged below
            update = _update(config, run, batch, advantages_B, old_logp, teacher_logp, ref_logp, step)
            with warnings.catch_warnings():  # the schedule is per training step, also when a step had nothing to
                # learn from (an sft step whose teacher samples all failed the filter): torch warns if that is step 1
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before")
                run.scheduler.step()
            run.engine.update_weights(run.student)
            t_updated = time.perf_counter()
            reporter.heartbeat(step)

            if update["skipped"]:
                consecutive_nonfinite += 1
                result.skipped_steps += 1
                reporter.event(
                    "step_skipped", step=step, consecutive=consecutive_nonfinite, reason="non-finite loss or gradient"
                )
                if consecutive_nonfinite >= config.max_consecutive_nonfinite:
                    raise NonFiniteError(
                        f"{consecutive_nonfinite} consecutive steps had a non-finite loss or gradient "
                        f"(last: step {step}); "
                        "the run stops here and earlier checkpoints are intact. Fix: lower lr, enable grad_clip, "
                        "or use float32 (dtype)"
                    )
            else:
                consecutive_nonfinite = 0

            # ===== 5. log (over every rank's rows) ==========================================================
            lengths = batch.completion_mask.sum(1).cpu()
            if world.distributed:
                parts = world.gather((rewards_B, scores, lengths, sft_metrics))
                rewards_all = torch.cat([p[0] for p in parts])
                scores_all = [sc for p in parts for sc in p[1]]
                lengths = torch.cat([p[2] for p in parts])
                if "sft_kept_frac" in sft_metrics:
                    sft_metrics = {"sft_kept_frac": sum(p[3]["sft_kept_frac"] for p in parts) / world.size}
            else:
                rewards_all, scores_all = rewards_B, scores
            n_tokens = float(lengths.sum())
            step_time = world.max([t_updated - t_start])[0]
            metrics = {
                # for sft the rows are the training traces, not the student's samples: no reward metrics
                **(_reward_metrics(rewards_all, scores_all, G) if config.method != "sft" else {}),
                "response_length_mean": float(lengths.mean()) if len(lengths) else 0.0,
                "response_length_max": float(lengths.max()) if len(lengths) else 0.0,
                "lr": lr,
                "tokens_per_s": n_tokens / step_time if step_time > 0 else 0.0,
                "time/generate": t_generated - t_start,
                "time/score": t_scored - t_generated,
                "time/update": t_updated - t_scored,
                "time/step": step_time,
                "skipped_steps": float(result.skipped_steps),
                **sft_metrics,
                **{k: v for k, v in update.items() if k != "skipped"},
            }
            reporter.metrics(step, metrics)
            result.last_metrics = metrics
            if config.log_samples:
                reporter.samples(
                    step,
                    [
                        {"prompt": ex.prompt, "completion": text, "reward": s.reward, "correct": s.correct}
                        for ex, text, s in list(zip(batch.examples, batch.texts, scores, strict=True))[
                            : config.log_samples
                        ]
                    ],
                )

            # ===== 6. evaluate and checkpoint ==============================================================
            if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
                with full_weights(run.student if run.sharded else None):  # every rank gathers and evaluates
                    result.eval_after = _evaluate(config, run, reporter, step=step)
            if step == config.steps or (config.checkpoint_every and step % config.checkpoint_every == 0):
                saved = _checkpoint(config, run, reporter, step, metrics, result.skipped_steps, consecutive_nonfinite)
                if saved is None:  # stopped while the disk was full: the run ends at the last checkpoint
                    result.checkpoint, result.stopped, gave_up_checkpoint = None, True, True
                    break
                result.checkpoint, last_saved = saved, step
    except Exception as exc:
        reporter.event("failed", step=step, error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        result.step = step

    if result.stopped:
        if step > 0 and last_saved != step and not gave_up_checkpoint:
            result.checkpoint = _checkpoint(
                config, run, reporter, step, result.last_metrics, result.skipped_steps, consecutive_nonfinite
            )
        reporter.event("stopped", step=step)
    else:
        reporter.event("finished", step=step, checkpoint=str(result.checkpoint) if result.checkpoint else None)
    return result


# ---------------------------------------------------------------------------------------------------------
# Step phases
# ---------------------------------------------------------------------------------------------------------


def _row_seeds(config: TrainConfig, run: _Run, step: int, first_row: int, n: int) -> tuple[int, ...] | None:
    """Per-row sampling seeds of rows first_row .. first_row + n - 1 of the step's global batch (per_prompt
    streams), or None (the batch's one stream)."""
    if not run.per_row_streams:
        return None
    base = (config.seed * 1_000_003 + step) * 1_000_033
    return tuple((base + first_row + i) % (1 << 63) for i in range(n))


def _sampling(config: TrainConfig, seeds: tuple[int, ...] | None) -> SamplingParams:
    return SamplingParams(config.max_new_tokens, config.temperature, config.top_p, seeds=seeds)


def _rollouts(config: TrainConfig, run: _Run, examples_B: list[Example], seeds: tuple[int, ...] | None) -> Batch:
    """G completions per prompt from the student (examples_B is grouped: prompt i // G)."""
    prompt_ids = _encode(run, examples_B, config)
    with full_weights(run.student if run.sharded else None):
        r = run.engine.generate(prompt_ids, _sampling(config, seeds))
    texts = decode_completions(run.tokenizer, r.completion_ids, r.completion_mask)
    return Batch(r.input_ids, r.attention_mask, r.completion_mask, texts, examples_B)


def _sft_traces(
    config: TrainConfig, run: _Run, examples_P: list[Example], step: int, first_prompt: int
) -> tuple[Batch, dict[str, float]]:
    """Offline-distillation rows: teacher samples (G per prompt, kept if the verifier accepts them, when
    sft_filter="correct") or the task's reference solutions (one per prompt; then a step reads B prompts)."""
    if config.sft_source == "reference":
        completions = [run.task.solution(e) for e in examples_P]
        return _pack(run, config, examples_P, completions), {"sft_kept_frac": 1.0}
    examples_B = [e for e in examples_P for _ in range(config.group_size)]
    prompt_ids = _encode(run, examples_B, config)
    seeds = _row_seeds(config, run, step, first_prompt * config.group_size, len(examples_B))
    teacher_sharded = run.sharded and config.teacher_sharding == "shard"
    with full_weights(run.teacher if teacher_sharded else None):
        r = run.teacher_engine.generate(prompt_ids, _sampling(config, seeds))
    texts = decode_completions(run.tokenizer, r.completion_ids, r.completion_mask)
    keep = [
        i
        for i, (t, e) in enumerate(zip(texts, examples_B, strict=True))
        if config.sft_filter == "none" or run.task.score(t, e).correct
    ]
    batch = Batch(r.input_ids, r.attention_mask, r.completion_mask, texts, examples_B).select(
        torch.tensor(keep, dtype=torch.long)
    )
    return batch, {"sft_kept_frac": len(keep) / len(examples_B)}


def _update(
    config: TrainConfig,
    run: _Run,
    batch: Batch,
    advantages_B: torch.Tensor | None,
    old_logp: torch.Tensor | None,
    teacher_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    step: int,
) -> dict[str, Any]:
    """mu epochs over the batch; one optimizer step per mini-batch; gradients accumulated over micro-batches."""
    # the student is scored and samples in eval mode (no dropout); train mode only for the update, if asked
    run.student.train(config.train_dropout)
    if config.gradient_checkpointing:
        # Hugging Face checkpoints a decoder layer only while it is in training mode: the layers themselves
        # are, not their submodules, so dropout stays as train_dropout says
        for layer in _decoder_layers(run.student):
            layer.training = True
    try:
        return _update_epochs(config, run, batch, advantages_B, old_logp, teacher_logp, ref_logp, step)
    finally:
        run.student.eval()


def _update_epochs(
    config: TrainConfig,
    run: _Run,
    batch: Batch,
    advantages_B: torch.Tensor | None,
    old_logp: torch.Tensor | None,
    teacher_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    step: int,
) -> dict[str, Any]:
    """`_update`'s loops, with the student already in the mode the update runs in.

    Rows are numbered globally (rank 0's first); a mini-batch is a set of global rows and each rank works on
    the ones it holds, micro-batch by micro-batch. A micro-batch's weight is its share of the whole mini-batch
    (token and row counts summed over the ranks), and DDP's gradient average is undone by the world size, so
    the update is the one a single process makes on the whole batch. Ranks with fewer micro-batches run
    zero-weight ones, so that every rank makes the same collective calls.
    """
    world = run.world
    B = batch.input_ids.shape[0]
    counts = [int(c) for c in world.gather(B)]
    B_all, offset = sum(counts), sum(counts[: world.rank])
    if B_all == 0:  # sft: every teacher sample of the step failed the filter on every rank
        return {"skipped": False, "sft_empty_batch": 1.0}
    stats = _MetricAccumulator()
    skipped = False
    mask = batch.completion_mask
    aggregation = _aggregation(config)
    n_mini = max(1, B_all // config.resolved_mini_batch_size)
    mini = B_all // n_mini
    micro = min(config.resolved_micro_batch_size, mini)
    model = run.train_model
    for epoch in range(config.inner_epochs):
        order = _row_order(config, run, B_all, n_mini, step, epoch)  # (B_all,)
        for mini_all in order.split(mini):
            mine = mini_all[(mini_all >= offset) & (mini_all < offset + B)] - offset
            mini_tokens = world.sum([float(mask[mine.to(mask.device)].sum())])[0]
            chunks = list(mine.split(micro)) if len(mine) else []
            n_micro = int(world.max([len(chunks)])[0])
            _zero_grads(run)
            finite = True
            for k in range(n_micro):
                # DDP reduces gradients on the last backward of the mini-batch only
                sync = nullcontext() if (k == n_micro - 1 or not world.distributed) else no_grad_sync(model)
                with sync:
                    if k >= len(chunks):
                        _zero_weight_pass(model, batch)
                        continue
                    rows = chunks[k]
                    logp, entropy = completion_logprobs(
                        model,
                        batch.input_ids[rows],
                        batch.attention_mask[rows],
                        batch.T,
                        temperature=config.temperature,
                        with_entropy=epoch == 0,
                        vocab_chunk=run.vocab_chunk,
                    )
                    loss, m = _method_loss(
                        config,
                        step,
                        logp,
                        mask[rows],
                        advantages_B[rows] if advantages_B is not None else None,
                        old_logp[rows] if old_logp is not None else logp.detach(),
                        teacher_logp[rows] if teacher_logp is not None else None,
                        ref_logp[rows] if ref_logp is not None else None,
                    )
                    weight = losses.share_weight(
                        float(mask[rows].sum()), len(rows), mini_tokens, len(mini_all), aggregation
                    )
                    finite &= bool(torch.isfinite(loss))
                    (loss * (weight * world.size)).backward()
                if entropy is not None:
                    m["entropy"] = float((entropy * mask[rows]).sum() / mask[rows].sum().clamp(min=1))
                stats.add(m, weight)
            finite = world.min([float(finite)])[0] > 0
            if run.masters is not None:
                run.masters.take_grads()
            grad_norm = local_value(torch.nn.utils.clip_grad_norm_(run.params, config.grad_clip or float("inf")))
            stats.add({"grad_norm": float(grad_norm)}, 1.0 / n_mini / config.inner_epochs)
            if not finite or not torch.isfinite(grad_norm):
                # skip the optimizer step: a NaN/inf would poison the weights and AdamW's moments
                _zero_grads(run)
                skipped = True
                continue
            run.optimizer.step()
            if run.masters is not None:
                run.masters.publish()
    _zero_grads(run)
    if world.distributed:
        stats = _MetricAccumulator.merged(world.gather(stats))
    return {"skipped": skipped, **stats.result()}


def _row_order(config: TrainConfig, run: _Run, n: int, n_mini: int, step: int, epoch: int) -> torch.Tensor:
    """The order the update visits the step's rows in; mini-batches are consecutive slices of it. Drawn from
    the global RNG on one process with batch streams (as always), else from a generator seeded by
    (seed, step, epoch), the same on every rank."""
    if n_mini == 1:
        return torch.arange(n)
    if not run.per_row_streams:
        return torch.randperm(n)
    g = torch.Generator().manual_seed((config.seed * 1_000_003 + step) * 1_000_033 + epoch)
    return torch.randperm(n, generator=g)


def _zero_grads(run: _Run) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    if run.masters is not None:
        run.masters.zero_model_grads()


def _zero_weight_pass(model: torch.nn.Module, batch: Batch) -> None:
    """A forward and backward that changes no gradient: a rank with fewer micro-batches than the others
    (or none) still joins DDP's gradient reduction."""
    ids = torch.zeros((1, 2), dtype=torch.long, device=batch.input_ids.device)
    logp, _ = completion_logprobs(model, ids, torch.ones_like(ids), 1)
    (logp.sum() * 0.0).backward()


def _method_loss(
    config: TrainConfig,
    step: int,
    logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor | None,
    old_logp: torch.Tensor,
    teacher_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The configured method's loss from `rlad_core.losses` (the only place the math lives)."""
    if config.method not in METHOD_LOSSES:
        raise ValueError(f"unknown method {config.method!r}; choose one of {tuple(METHOD_LOSSES)}")
    return METHOD_LOSSES[config.method](config, step, logp, mask, advantages, old_logp, teacher_logp, ref_logp)


def _clip_kwargs(config: TrainConfig) -> dict[str, Any]:
    # max_len: Dr.GRPO's constant normaliser is the configured completion budget, not the batch's padded length
    return {
        "eps_low": config.eps_low,
        "eps_high": config.eps_high,
        "aggregation": config.aggregation,
        "max_len": config.max_new_tokens,
    }


def _grpo(config, step, logp, mask, advantages, old_logp, teacher_logp, ref_logp):
    return losses.grpo_loss(
        logp,
        old_logp,
        advantages,
        mask,
        ref_logp=ref_logp,
        beta=config.beta,
        ref_estimator=config.ref_kl_estimator,
        **_clip_kwargs(config),
    )


def _rlad(config, step, logp, mask, advantages, old_logp, teacher_logp, ref_logp):
    return losses.trrd_loss(
        logp,
        old_logp,
        teacher_logp,
        advantages,
        mask,
        alpha=config.alpha,
        teacher_clamp=config.teacher_clamp,
        teacher_clamp_grad=config.teacher_clamp_grad,
        ref_logp=ref_logp,
        beta=config.beta,
        ref_estimator=config.ref_kl_estimator,
        **_clip_kwargs(config),
    )


def _kdrl(config, step, logp, mask, advantages, old_logp, teacher_logp, ref_logp):
    return losses.kdrl_loss(
        logp,
        old_logp,
        teacher_logp,
        advantages,
        mask,
        coef=_kdrl_coef(config, step),
        estimator=config.kdrl_estimator,
        **_clip_kwargs(config),
    )


def _opd(config, step, logp, mask, advantages, old_logp, teacher_logp, ref_logp):
    return losses.opd_loss(logp, old_logp, teacher_logp, mask, **_clip_kwargs(config))


def _sft(config, step, logp, mask, advantages, old_logp, teacher_logp, ref_logp):
    return losses.sft_loss(logp, mask, aggregation=_aggregation(config), max_len=config.max_new_tokens)


# method name -> loss; every name of config.Method has exactly one entry (a test checks it)
METHOD_LOSSES: dict[str, Callable[..., tuple[torch.Tensor, dict[str, float]]]] = {
    "rlad": _rlad,
    "grpo": _grpo,
    "kdrl": _kdrl,
    "opd": _opd,
    "sft": _sft,
}


def _aggregation(config: TrainConfig) -> losses.Aggregation:
    """How the method's per-token loss is reduced: sft is plain token-mean cross-entropy, the rest as configured."""
    return "token-mean" if config.method == "sft" else config.aggregation


def _reward_metrics(rewards_B: torch.Tensor, scores: Sequence[Any], G: int) -> dict[str, float]:
    """Reward mean/std, accuracy, format rate and the share of groups whose rewards are all equal (A = 0)."""
    rewards_PG = rewards_B.reshape(-1, G)  # (P, G)
    return {
        "reward_mean": float(rewards_B.mean()),
        "reward_std": float(rewards_B.std(correction=0)),
        "accuracy": sum(s.correct for s in scores) / len(scores),
        "format_rate": sum(s.formatted for s in scores) / len(scores),
        "frac_zero_std_groups": float((rewards_PG == rewards_PG[:, :1]).all(1).float().mean()),
    }


def _kdrl_coef(config: TrainConfig, step: int) -> float:
    """gamma, linearly annealed from kdrl_coef to kdrl_coef_final over the run when the latter is set."""
    if config.kdrl_coef_final is None or config.steps == 1:
        return config.kdrl_coef
    frac = (step - 1) / (config.steps - 1)
    return config.kdrl_coef + frac * (config.kdrl_coef_final - config.kdrl_coef)


# ---------------------------------------------------------------------------------------------------------
# Plumbing: set-up, data order, evaluation, checkpoints
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything built from the config for one run (heavy objects live here, never in the config)."""

    task: Task
    tokenizer: Any
    student: torch.nn.Module
    teacher: torch.nn.Module | None
    reference: torch.nn.Module | None
    engine: RolloutEngine
    teacher_engine: RolloutEngine | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    params: list[torch.nn.Parameter]
    pool: list[Example]
    eval_examples: list[Example]
    out_dir: Path
    start_step: int = 0
    resumed_from: Path | None = None
    skipped_steps: int = 0
    consecutive_nonfinite: int = 0
    disk_reserve_bytes: int = 0  # train()'s arguments: free space a checkpoint leaves; how often a full disk is checked
    disk_poll_s: float = 10.0
    disk_full_wait_s: float | None = None
    world: World = field(default_factory=World)
    train_model: Any = None  # what the update runs forward through: the student, or its DDP wrapper
    sharded: bool = False  # strategy fsdp on several processes: the student's parameters are FSDP2 shards
    per_row_streams: bool = False  # sampling_streams resolved: one random stream per rollout row
    vocab_chunk: int | None = None  # logprob_vocab_chunk resolved: the output head's vocabulary chunk, or whole
    memory: MemoryEstimate | None = None  # the estimate checked before the models loaded
    masters: MasterWeights | None = None  # fp32 masters of a half-precision student (rlad_core.precision)


def _resolve_device(name: str) -> str:
    """The torch device of `config.device`; one this machine does not have is a config error, before any load."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        index = int(name.partition(":")[2] or 0)
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if index >= n:
            have = f"{n} CUDA device{'s' * (n != 1)}" + (f" (cuda:0..cuda:{n - 1})" if n else "")
            raise ConfigError(
                [
                    (
                        "device",
                        f"{name!r} is not on this machine, which has {have}; fix: use "
                        f"{'cuda:0' if n else 'cpu'} or auto",
                    )
                ]
            )
    elif name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError([("device", "mps is not available on this machine; fix: use cpu or auto")])
    return name


def _build_engine(name: str, model: torch.nn.Module, tokenizer: Any) -> RolloutEngine:
    ids = {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if name == "auto":
        try:
            return make_engine("fast", model, **ids)
        except ValueError:  # architecture the fast engine does not implement
            return make_engine("hf", model, **ids)
    return make_engine(name, model, **ids)


def _lr_lambda(config: TrainConfig):
    def factor(step: int) -> float:  # step = number of scheduler.step() calls so far
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "constant":
            return 1.0
        span = max(1, config.steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        shape = 1.0 - progress if config.lr_schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape

    return factor


def _setup(config: TrainConfig, resume_from: str | Path | None) -> _Run:
    if config.threads:
        torch.set_num_threads(config.threads)
    world, device = init_world(_resolve_device(config.device))
    per_row_streams = config.sampling_streams == "per_prompt" or (
        config.sampling_streams == "auto" and world.distributed
    )
    _check_world(config, world, per_row_streams)
    out_dir = config.resolved_output_dir
    ckpt_root = out_dir / "checkpoints"
    resume_path = (
        latest_checkpoint(ckpt_root) if resume_from == "auto" else (Path(resume_from) if resume_from else None)
    )
    state = load_trainer_state(resume_path) if resume_path else None  # verifies the manifest first

    task = get_task(config.task.name, **config.task.model_dump(exclude={"name"}))
    tokenizer = load_tokenizer(config.student)
    pool = task.examples(
        min(config.train_pool_size, config.steps * config.prompts_per_step), seed=config.seed, split="train"
    )
    eval_examples = task.examples(config.eval_size, seed=config.seed, split="eval")
    shape_from = config.student if config.lora is not None else str(resume_path or config.student)  # a full config
    memory = _check_memory(config, str(shape_from), tokenizer, pool, eval_examples, world, device)
    teacher_dtype, teacher_device = config.teacher_dtype or config.dtype, _teacher_device(config, world, device)
    teacher = reference = None
    if config.needs_teacher:
        check_tokenizers_compatible(tokenizer, load_tokenizer(config.teacher))
        teacher = load_model(config.teacher, dtype=teacher_dtype, device=teacher_device).eval().requires_grad_(False)
    sharded = world.distributed and config.strategy == "fsdp"
    # a half-precision student under FSDP: fp32 shards (the masters AdamW updates), cast for compute by FSDP
    compute_dtype = getattr(torch, config.dtype) if sharded and config.dtype in ("bfloat16", "float16") else None
    student = _load_student(config, resume_path, device, dtype="float32" if compute_dtype else config.dtype)
    if compute_dtype is not None and state is not None and state.get("master_weights") is not None:
        with torch.no_grad():  # the exact fp32 values the checkpoint's half-precision weights were rounded from
            for p, t in zip(trainable_parameters(student), state["master_weights"], strict=True):
                p.copy_(t)
    student.eval()  # train mode (dropout) only inside the update, and only with config.train_dropout
    if config.gradient_checkpointing:
        if not student.supports_gradient_checkpointing:
            raise ConfigError(
                [
                    (
                        "gradient_checkpointing",
                        f"{type(student).__name__} does not support gradient checkpointing; fix: set it to false",
                    )
                ]
            )
        student.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if config.beta > 0:
        reference = (
            load_model(config.reference or config.student, dtype=teacher_dtype, device=teacher_device)
            .eval()
            .requires_grad_(False)
        )

    if sharded:  # before the optimizer is built: it holds the shards
        shard_model(student, compute_dtype=compute_dtype)
        for frozen in (teacher, reference) if config.teacher_sharding == "shard" else ():
            if frozen is not None:
                shard_model(frozen)
    params = trainable_parameters(student)
    masters = None
    if not sharded and params and params[0].dtype in HALF:
        masters = MasterWeights(params)  # AdamW updates fp32 copies; the model keeps half precision
        params = masters.masters
    optimizer = torch.optim.AdamW(
        params,
        lr=config.lr,
        betas=config.adam_betas,
        weight_decay=config.weight_decay,
        fused=not sharded and (device.startswith("cuda") or device == "cpu"),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    run = _Run(
        task=task,
        tokenizer=tokenizer,
        student=student,
        teacher=teacher,
        reference=reference,
        engine=_build_engine(config.engine, student, tokenizer),
        teacher_engine=_build_engine(config.engine, teacher, tokenizer)
        if teacher is not None and config.method == "sft"
        else None,
        optimizer=optimizer,
        scheduler=scheduler,
        params=params,
        pool=pool,
        eval_examples=eval_examples,
        out_dir=out_dir,
        world=world,
        train_model=student,
        per_row_streams=per_row_streams,
        sharded=sharded,
        vocab_chunk=_vocab_chunk(config, int(getattr(student.config, "vocab_size", 0) or 0), sharded),
        memory=memory,
        masters=masters,
    )
    if per_row_streams and isinstance(run.engine, HFEngine):
        raise ConfigError(
            [
                (
                    "engine",
                    "per-row sampling streams (sampling_streams per_prompt, or a run on several processes) need "
                    f"engine fast or vllm, and engine {config.engine!r} resolved to hf for this model; "
                    "fix: use a Llama-family student with engine fast, or engine vllm",
                )
            ]
        )
    if world.distributed and not sharded:
        # every rank loaded the same weights; DDP checks and broadcasts them
        run.train_model = torch.nn.parallel.DistributedDataParallel(
            student,
            device_ids=[torch.device(device).index] if device.startswith("cuda") else None,
            # a causal LM's buffers (rotary frequencies) are the same on every rank and never change: no
            # broadcast before every forward (about 1 ms a step on gloo, bench/distributed_bench.py)
            forward_sync_buffers=False,
        )
    if state is not None:
        named = masters.named_like(student) if masters is not None else student  # the optimizer's parameters
        if state.get("optimizer_format") == "dcp":  # DCP shards of a sharded run: resharded to this run
            load_sharded_optimizer(named, optimizer, resume_path / SHARDED_OPTIMIZER)
        elif state.get("optimizer_format") == "by_name":  # whole, by name (sharded runs' older checkpoints)
            load_full_optimizer(named, optimizer, state["optimizer"])
        elif sharded:  # whole, by index (one process or DDP), onto this run's shards
            load_full_optimizer(student, optimizer, optimizer_state_by_name(student, state["optimizer"]))
        else:
            optimizer.load_state_dict(state["optimizer"])
        if state.get("master_weights") is not None and not sharded:  # the exact fp32 values of a half run
            if masters is not None:
                masters.load(state["master_weights"])
            else:
                with torch.no_grad():
                    for p, t in zip(params, state["master_weights"], strict=True):
                        p.copy_(t)
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        run.start_step, run.resumed_from = state["step"], resume_path
        run.skipped_steps, run.consecutive_nonfinite = state["skipped_steps"], state["consecutive_nonfinite"]
    else:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
    return run


def _check_memory(
    config: TrainConfig,
    student_path: str,
    tokenizer: Any,
    pool: Sequence[Example],
    eval_examples: Sequence[Example],
    world: World,
    device: str,
) -> MemoryEstimate:
    """The run's memory estimate (rlad_core.memory), from the models' configs; a `ConfigError` naming what
    would make it fit when it exceeds the device's free memory (unless memory_check is false)."""
    from transformers import AutoConfig

    student_cfg = AutoConfig.from_pretrained(student_path)
    teacher = Shape.from_config(AutoConfig.from_pretrained(config.teacher)) if config.needs_teacher else None
    sample = [e.prompt for e in [*pool[:256], *eval_examples[:256]]]
    prompt_ids = encode_prompts(tokenizer, sample, use_chat_template=config.use_chat_template)
    prompt_tokens = max((len(ids) for ids in prompt_ids), default=0)
    sharded = world.distributed and config.strategy == "fsdp"
    est = estimate_memory(
        config,
        student=Shape.from_config(student_cfg),
        teacher=teacher,
        reference=config.beta > 0,
        prompt_tokens=prompt_tokens,
        world_size=world.size,
        vocab_chunk=_vocab_chunk(config, int(getattr(student_cfg, "vocab_size", 0) or 0), sharded),
    )
    free = device_capacity(device)
    if config.memory_check and free is not None and est.total > free:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in est.parts().items() if k != "total")
        raise ConfigError(
            [
                (
                    "memory_check",
                    f"the run needs about {est.total / GIB:.1f} GiB per process on {device} ({parts} GiB) and "
                    f"{free / GIB:.1f} GiB are free; fix: {', '.join(memory_fixes(config, est))}; or "
                    "memory_check: false to try anyway",
                )
            ]
        )
    return est


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters the optimizer updates, in the order checkpoints keep their fp32 masters."""
    return [p for p in model.parameters() if p.requires_grad]


def _load_student(config: TrainConfig, resume_path: Path | None, device: str, *, dtype: str) -> Any:
    """The student, in `dtype`: the model at the checkpoint resumed (or config.student); with `lora`, the base
    model with adapters, new or the checkpoint's (only the adapters train)."""
    if config.lora is None:
        return load_model(str(resume_path or config.student), dtype=dtype, device=device)
    from peft import LoraConfig, PeftModel, get_peft_model

    adapter = resume_path is not None and (resume_path / ADAPTER_CONFIG).is_file()
    base = load_model(str(config.student if adapter else (resume_path or config.student)), dtype=dtype, device=device)
    if adapter:
        return PeftModel.from_pretrained(base, str(resume_path), is_trainable=True)
    spec = config.lora
    torch.manual_seed(config.seed)  # the adapters' initialisation (A random, B zero) is the run's, not the process's
    return get_peft_model(
        base,
        LoraConfig(
            r=spec.r,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=list(spec.target_modules),
            task_type="CAUSAL_LM",
        ),
    )


def _save_merged(model: Any, tokenizer: Any, path: Path) -> None:
    """A LoRA student's weights with its adapters merged in, as a plain model (a copy: the run keeps training
    its adapters)."""
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)


def _teacher_device(config: TrainConfig, world: World, device: str) -> str:
    """Where the teacher and reference load: the student's device unless `teacher_device` says otherwise (cpu
    anywhere; a named GPU only in a one-process run: each rank has its own)."""
    if config.teacher_device in (None, "auto"):
        return device
    if world.distributed and config.teacher_device.startswith("cuda"):
        raise ConfigError(
            [
                (
                    "teacher_device",
                    f"{config.teacher_device!r}: each of the {world.size} processes has its own GPU; fix: leave it "
                    "unset (the process's GPU) or use cpu",
                )
            ]
        )
    return _resolve_device(config.teacher_device)


def _decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules Hugging Face's activation checkpointing recomputes (its `GradientCheckpointingLayer`s)."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _vocab_chunk(config: TrainConfig, vocab: int, sharded: bool) -> int | None:
    """`logprob_vocab_chunk` resolved: auto chunks a vocabulary of more than 65536 entries by 32768 (the
    sharded head of an FSDP run is applied whole)."""
    if config.logprob_vocab_chunk != "auto":
        return config.logprob_vocab_chunk  # type: ignore[return-value]  # an int or None (validated)
    return 32768 if vocab > 65536 and not sharded else None


class _StopRequests(Reporter):
    """What a rank other than 0 keeps of its reporter: the stop request (a node told to stop stops the run)."""

    def __init__(self, reporter: Reporter | None) -> None:
        self.reporter = reporter

    def should_stop(self) -> bool:
        return self.reporter is not None and self.reporter.should_stop()


def _check_world(config: TrainConfig, world: World, per_row_streams: bool) -> None:
    """What a run on several processes needs from its config (4xx-style errors naming the field)."""
    if not world.distributed:
        return
    if config.prompts_per_step % world.size:
        raise ConfigError(
            [
                (
                    "batch_size",
                    f"{config.prompts_per_step} prompts a step cannot be split over {world.size} processes "
                    f"(whole prompts per process); fix: a batch_size of group_size x a multiple of {world.size}",
                )
            ]
        )
    if not per_row_streams:
        raise ConfigError(
            [
                (
                    "sampling_streams",
                    "batch streams depend on how the batch is split; a run on several processes samples "
                    "per_prompt; fix: use per_prompt or auto",
                )
            ]
        )


def _examples_for_step(pool: Sequence[Example], step: int, n: int, seed: int) -> list[Example]:
    """The n prompts of a step: positions (step-1)*n .. step*n-1 of the pool read in seeded epochs.

    A pure function of (step, seed), so resuming needs no data-loader state: the data position is the step.
    """
    out, orders = [], {}
    for pos in range((step - 1) * n, step * n):
        epoch, i = divmod(pos, len(pool))
        if epoch not in orders:
            orders[epoch] = list(range(len(pool)))
            random.Random(seed * 1_000_003 + epoch).shuffle(orders[epoch])
        out.append(pool[orders[epoch][i]])
    return out


def _encode(run: _Run, examples: Sequence[Example], config: TrainConfig) -> list[list[int]]:
    unique: dict[str, list[int]] = {}
    for e in examples:
        if e.prompt not in unique:
            unique[e.prompt] = encode_prompts(run.tokenizer, [e.prompt], use_chat_template=config.use_chat_template)[0]
    return [unique[e.prompt] for e in examples]


def _pack(run: _Run, config: TrainConfig, examples: list[Example], completions: list[str]) -> Batch:
    """Left-padded prompts + right-padded completions (each ending in EOS) as one batch."""
    tok = run.tokenizer
    prompts = _encode(run, examples, config)
    comps = [
        tok(c, add_special_tokens=False)["input_ids"][: config.max_new_tokens - 1] + [tok.eos_token_id]
        for c in completions
    ]
    Lp, T = max(map(len, prompts)), max(map(len, comps))
    ids = torch.full((len(prompts), Lp + T), tok.pad_token_id, dtype=torch.long)  # (B, L)
    attn = torch.zeros((len(prompts), Lp + T), dtype=torch.long)  # (B, L)
    for i, (p, c) in enumerate(zip(prompts, comps, strict=True)):
        ids[i, Lp - len(p) : Lp] = torch.tensor(p)
        ids[i, Lp : Lp + len(c)] = torch.tensor(c)
        attn[i, Lp - len(p) : Lp + len(c)] = 1
    return Batch(ids, attn, attn[:, Lp:].float(), completions, examples)


class _MetricAccumulator:
    """Weighted means over micro-batches; min/max for the ratio extremes."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weights: dict[str, float] = {}
        self.extremes: dict[str, float] = {}

    def add(self, metrics: dict[str, float], weight: float) -> None:
        for k, v in metrics.items():
            if k == "ratio_min":
                self.extremes[k] = min(self.extremes.get(k, math.inf), v)
            elif k == "ratio_max":
                self.extremes[k] = max(self.extremes.get(k, -math.inf), v)
            else:
                self.sums[k] = self.sums.get(k, 0.0) + weight * v
                self.weights[k] = self.weights.get(k, 0.0) + weight

    def result(self) -> dict[str, float]:
        return {**{k: s / self.weights[k] for k, s in self.sums.items() if self.weights[k]}, **self.extremes}

    @classmethod
    def merged(cls, parts: Sequence[_MetricAccumulator]) -> _MetricAccumulator:
        """One accumulator over every rank's micro-batches (their weights are shares of the global batch)."""
        out = cls()
        for part in parts:
            for k, v in part.sums.items():
                out.sums[k] = out.sums.get(k, 0.0) + v
                out.weights[k] = out.weights.get(k, 0.0) + part.weights[k]
            for k, v in part.extremes.items():
                pick = min if k == "ratio_min" else max
                out.extremes[k] = pick(out.extremes.get(k, v), v)
        return out


def _evaluate(config: TrainConfig, run: _Run, reporter: Reporter, *, step: int) -> dict[str, float]:
    """Evaluate the student on the held-out examples; every rank calls it together and gets the metrics.

    Each rank evaluates its contiguous block of the examples (the first ranks one more when they do not split
    evenly); the per-example records are gathered in rank order, i.e. in the examples' order, and rank 0
    reports the metrics, an `eval_completed` event and the samples. With per-row streams an example's k samples
    are seeded by (seed, step, example index, sample index), so the metrics do not depend on the number of
    processes; with the batch stream (one process) the samples draw from one stream seeded with seed + step.
    """
    world = run.world
    block = world.block(len(run.eval_examples), even=False)
    records = evaluate_examples(
        run.engine,
        run.tokenizer,
        run.task,
        run.eval_examples[block.start : block.stop],
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        pass_k=config.eval_pass_k,
        use_chat_template=config.use_chat_template,
        seed=config.seed + step,
        seeds=sample_seeds(config.seed, step, block.start, len(block), config.eval_pass_k)
        if run.per_row_streams
        else None,
    )
    if world.distributed:
        records = [r for part in world.gather(records) for r in part]
    res = aggregate(records, pass_k=config.eval_pass_k)
    if not world.is_main:
        return res.metrics
    reporter.metrics(step, res.metrics)
    reporter.event(
        "eval_completed",
        step=step,
        **{k.removeprefix("eval/"): v for k, v in res.metrics.items() if "/" not in k.removeprefix("eval/")},
    )
    reporter.samples(step, [{**s, "eval": True} for s in res.samples])
    return res.metrics


def _checkpoint(
    config: TrainConfig,
    run: _Run,
    reporter: Reporter,
    step: int,
    metrics: dict[str, float],
    skipped: int,
    consecutive_nonfinite: int,
) -> Path | None:
    """Save, prune and report the checkpoint of `step`; None if a stop came while it waited for disk space.

    Rank 0 writes it. DDP replicas are identical: rank 0's weights and optimizer state are the run's. FSDP: the
    weights are gathered to rank 0's CPU (the Hugging Face layout users download), and the optimizer state
    stays sharded: every rank writes its shards with torch.distributed.checkpoint into rank 0's temporary
    directory (`_ShardWriter`), which rank 0 completes and renames into place. Either resumes on any world
    size."""
    model_state = full_model_state(run.student) if run.sharded else None
    master_weights = run.masters.state() if run.masters is not None else None
    if model_state and config.dtype in ("bfloat16", "float16"):  # rank 0 of a half run under FSDP
        # the gathered fp32 shards are the masters: the Hugging Face weights are them rounded to the run's dtype
        master_weights = [model_state[n] for n, p in run.student.named_parameters() if p.requires_grad]
        model_state = {k: v.to(getattr(torch, config.dtype)) for k, v in model_state.items()}
    shards = _ShardWriter(run) if run.sharded else None
    merged = None
    if config.lora is not None and config.merge_lora_on_save:
        merged = lambda tmp: _save_merged(run.student, run.tokenizer, tmp / MERGED)  # noqa: E731
    merged_bytes = sum(p.numel() * p.element_size() for p in run.student.parameters())
    state = {
        "step": step,
        "data_position": step * config.prompts_per_step,
        "optimizer": None if run.sharded else run.optimizer.state_dict(),
        "optimizer_format": "dcp" if run.sharded else "by_index",
        "master_weights": master_weights,
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_state(),
        "config": config.to_json_dict(),
        "skipped_steps": skipped,
        "consecutive_nonfinite": consecutive_nonfinite,
    }
    root = run.out_dir / "checkpoints"
    if not run.world.is_main:  # replicas hold the same weights and optimizer state: rank 0 writes them
        return shards.follow() if shards is not None else cast(Path | None, run.world.from_main(None))
    reporter.sync()  # the metrics up to `step` are durable before a resume could start after them
    path = _save_when_space(
        reporter,
        step,
        run.disk_poll_s,
        run.disk_full_wait_s,
        lambda: save_checkpoint(
            root,
            step,
            model=run.student,
            tokenizer=run.tokenizer,
            trainer_state=state,
            metrics={k: v for k, v in metrics.items() if math.isfinite(v)},
            reserve_bytes=run.disk_reserve_bytes,
            state_dict=model_state,
            write_extra=shards.lead if shards is not None else merged,
            extra_bytes=shards.bytes if shards is not None else (merged_bytes if merged is not None else 0),
        ),
    )
    if shards is not None:
        shards.done()
    if path is not None:
        if config.keep_checkpoints:
            prune_checkpoints(root, config.keep_checkpoints)
        reporter.checkpoint(step, path, metrics)
        reporter.event("checkpoint_saved", step=step, path=str(path))
    return cast(Path | None, run.world.from_main(path))


class _ShardWriter:
    """The ranks of a sharded run writing a checkpoint's optimizer shards together. Rank 0 leads: for each try
    of its save (a full disk makes it wait and try again) it sends every rank the temporary directory and all
    write their shards there (`save_sharded`, a collective); then it sends `done`. The others follow until
    then."""

    def __init__(self, run: _Run) -> None:
        self.world = run.world
        self.state = sharded_optimizer_state(run.student, run.optimizer)
        self.bytes = int(self.world.sum([float(tensor_bytes(self.state))])[0])

    def lead(self, tmp: Path) -> None:
        self.world.from_main(("write", str(tmp)))
        save_sharded(self.state, tmp / SHARDED_OPTIMIZER)

    def done(self) -> None:
        self.world.from_main(("done", None))

    def follow(self) -> Path | None:
        while True:
            order, tmp = self.world.from_main(None)
            if order == "done":
                return cast(Path | None, self.world.from_main(None))  # the path rank 0 saved, or None
            try:
                save_sharded(self.state, Path(tmp) / SHARDED_OPTIMIZER)
            except Exception as exc:
                if not is_out_of_space(exc):
                    raise
                # rank 0 saw the same failure: it waits for space and sends the next try (or `done`)


def _save_when_space(
    reporter: Reporter, step: int, poll_s: float, wait_s: float | None, save: Callable[[], Path]
) -> Path | None:
    """`save()`, waiting out a full disk: on `DiskFull` report `disk_full` once, then check the free space every
    `poll_s` seconds (heartbeats keep the job alive) and save again once it suffices; after `wait_s` seconds of
    waiting (None: no limit) the `DiskFull` is raised, saying how long it waited. A stop request while waiting
    returns None: the run stops without this checkpoint, and the earlier ones are intact."""
    reported = False
    waiting_since = time.monotonic()
    while True:
        try:
            return save()
        except DiskFull as full:
            if not reported:
                reporter.event("disk_full", step=step, needed_bytes=full.needed, free_bytes=full.free, path=full.path)
                reported = True
            while shutil.disk_usage(full.path).free < full.needed:
                if reporter.should_stop():
                    return None
                waited = time.monotonic() - waiting_since
                if wait_s is not None and waited >= wait_s:
                    full.waited_s = waited
                    raise full from None
                reporter.heartbeat(step)
                time.sleep(poll_s if wait_s is None else max(0.0, min(poll_s, wait_s - waited)))
