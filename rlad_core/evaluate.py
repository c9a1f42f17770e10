"""Held-out evaluation: greedy accuracy and pass@k, overall and by difficulty (the paper's PPL2..PPLn columns).

Two parts, so that the examples can be split over the processes of a run: `evaluate_examples` generates and
scores a list of examples (one `ExampleEval` each), and `aggregate` turns the records of all of them, in
order, into metrics and samples. `evaluate` does both on one process.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from rlad_core.models import decode_completions, encode_prompts
from rlad_core.rollout import RolloutEngine, SamplingParams
from rlad_core.tasks.base import Example, Task


@dataclass
class EvalResult:
    """Evaluation numbers as flat metrics (`eval/...`) plus a few greedy samples to read."""

    metrics: dict[str, float]
    samples: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ExampleEval:
    """One example's evaluation: its greedy completion scored, and how many of its k samples are correct."""

    prompt: str
    answer: str
    difficulty: int
    completion: str  # the greedy completion
    reward: float  # of the greedy completion
    correct: bool
    formatted: bool
    samples_correct: int  # correct answers among the k sampled completions


def generate_texts(
    engine: RolloutEngine,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    params: SamplingParams,
    *,
    batch_size: int,
) -> list[str]:
    """Completions (decoded, special tokens removed) for each prompt, generated in batches. With per-row
    `params.seeds` (one per prompt), each batch gets its rows' seeds."""
    texts: list[str] = []
    for i in range(0, len(prompt_ids), batch_size):
        batch_params = params if params.seeds is None else replace(params, seeds=params.seeds[i : i + batch_size])
        r = engine.generate(prompt_ids[i : i + batch_size], batch_params)
        texts.extend(decode_completions(tokenizer, r.completion_ids, r.completion_mask))
    return texts


def sample_seeds(seed: int, step: int, first_example: int, n_examples: int, pass_k: int) -> tuple[int, ...]:
    """One sampling seed per sampled row of examples first_example .. first_example + n_examples - 1 (k rows
    each, example-major), a function of (seed, step, global example index, sample index) only: an example's
    samples are the same however the examples are split over processes. Hashed, so they share no stream with
    the training rollouts' seeds."""
    out = []
    for i in range(first_example, first_example + n_examples):
        for j in range(pass_k):
            digest = hashlib.blake2b(f"eval/{seed}/{step}/{i}/{j}".encode(), digest_size=8).digest()
            out.append(int.from_bytes(digest, "big") >> 1)  # < 2**63
    return tuple(out)


def evaluate_examples(
    engine: RolloutEngine,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    pass_k: int = 4,
    use_chat_template: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
) -> list[ExampleEval]:
    """Each example's greedy completion, scored, and the number of correct answers among k samples.

    The samples draw from one batch stream seeded with `seed` (they depend on which examples are evaluated
    together), or, given `seeds` (one per sampled row, k per example, example-major: `sample_seeds`), row i
    draws from its own stream seeded with seeds[i] (needs an engine that takes per-row seeds: fast, vllm).
    Either way sampling runs under a forked RNG: the CPU and CUDA generator states are restored afterwards,
    so evaluating never changes the training run's random stream.
    """
    if not examples:
        return []
    if seeds is not None and len(seeds) != len(examples) * pass_k:
        raise ValueError(f"{len(seeds)} sampling seeds for {len(examples)} examples x {pass_k} samples")
    prompt_ids = encode_prompts(tokenizer, [e.prompt for e in examples], use_chat_template=use_chat_template)
    greedy = generate_texts(
        engine, tokenizer, prompt_ids, SamplingParams(max_new_tokens, 0.0, 1.0), batch_size=batch_size
    )
    # manual_seed reseeds the CPU and every CUDA generator: fork_rng saves and restores all of them
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        if seeds is None:
            torch.manual_seed(seed)
        sampled = generate_texts(
            engine,
            tokenizer,
            [p for p in prompt_ids for _ in range(pass_k)],
            SamplingParams(max_new_tokens, temperature, top_p, seeds=tuple(seeds) if seeds is not None else None),
            batch_size=batch_size,
        )

    records = []
    for i, ex in enumerate(examples):
        s = task.score(greedy[i], ex)
        records.append(
            ExampleEval(
                prompt=ex.prompt,
                answer=ex.answer,
                difficulty=ex.difficulty,
                completion=greedy[i],
                reward=s.reward,
                correct=s.correct,
                formatted=s.formatted,
                samples_correct=sum(task.score(c, ex).correct for c in sampled[i * pass_k : (i + 1) * pass_k]),
            )
        )
    return records


def aggregate(records: Sequence[ExampleEval], *, pass_k: int, num_samples: int = 4) -> EvalResult:
    """Metrics over `records` (every evaluated example, in order) and the first `num_samples` as samples.

    Overall: greedy accuracy, mean reward and format rate, and pass@k, the share of examples with at least one
    correct answer among k samples (with n = k samples the unbiased estimator of Chen et al. 2021 reduces to
    this); by difficulty (`/d<difficulty>`): accuracy and pass@k. Means are taken in the records' order.
    """
    by_diff: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        for bucket in (by_diff[r.difficulty], by_diff[-1]):  # -1 collects all
            bucket["accuracy"].append(float(r.correct))
            bucket["reward_mean"].append(r.reward)
            bucket["format_rate"].append(float(r.formatted))
            bucket[f"pass@{pass_k}"].append(float(r.samples_correct > 0))

    metrics: dict[str, float] = {}
    for diff, cols in sorted(by_diff.items()):
        suffix = "" if diff == -1 else f"/d{diff}"
        for name, vals in cols.items():
            if diff == -1 or name in ("accuracy", f"pass@{pass_k}"):
                metrics[f"eval/{name}{suffix}"] = sum(vals) / len(vals)
    metrics["eval/n"] = float(len(records))
    samples = [
        {
            "prompt": r.prompt,
            "completion": r.completion,
            "answer": r.answer,
            "difficulty": r.difficulty,
            "reward": r.reward,
            "correct": r.correct,
        }
        for r in records[:num_samples]
    ]
    return EvalResult(metrics=metrics, samples=samples)


def evaluate(
    engine: RolloutEngine,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    pass_k: int = 4,
    use_chat_template: bool = True,
    batch_size: int = 256,
    seed: int = 0,
    num_samples: int = 4,
    seeds: Sequence[int] | None = None,
) -> EvalResult:
    """Greedy accuracy, mean reward and format rate, plus pass@k from k samples per prompt, on one process:
    `evaluate_examples` then `aggregate` (see them for the sampling streams and the metrics)."""
    records = evaluate_examples(
        engine,
        tokenizer,
        task,
        examples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        pass_k=pass_k,
        use_chat_template=use_chat_template,
        batch_size=batch_size,
        seed=seed,
        seeds=seeds,
    )
    return aggregate(records, pass_k=pass_k, num_samples=num_samples)
