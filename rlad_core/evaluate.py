"""Held-out evaluation: greedy accuracy and pass@k, overall and by difficulty (the paper's PPL2..PPLn columns)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
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


def generate_texts(
    engine: RolloutEngine,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    params: SamplingParams,
    *,
    batch_size: int,
) -> list[str]:
    """Completions (decoded, special tokens removed) for each prompt, generated in batches."""
    texts: list[str] = []
    for i in range(0, len(prompt_ids), batch_size):
        r = engine.generate(prompt_ids[i : i + batch_size], params)
        texts.extend(decode_completions(tokenizer, r.completion_ids, r.completion_mask))
    return texts


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
) -> EvalResult:
    """Greedy accuracy, mean reward and format rate, plus pass@k from k samples per prompt.

    pass@k is the share of prompts with at least one correct answer among k samples (with n = k samples
    the unbiased estimator of Chen et al. 2021 reduces to this). Sampling runs under its own seeded RNG, and
    the CPU and CUDA generator states are restored afterwards, so evaluating never changes the training run's
    random stream.
    """
    prompt_ids = encode_prompts(tokenizer, [e.prompt for e in examples], use_chat_template=use_chat_template)
    greedy = generate_texts(
        engine, tokenizer, prompt_ids, SamplingParams(max_new_tokens, 0.0, 1.0), batch_size=batch_size
    )
    # manual_seed reseeds the CPU and every CUDA generator: fork_rng saves and restores all of them
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=cuda_devices):
        torch.manual_seed(seed)
        sampled = generate_texts(
            engine,
            tokenizer,
            [p for p in prompt_ids for _ in range(pass_k)],
            SamplingParams(max_new_tokens, temperature, top_p),
            batch_size=batch_size,
        )

    by_diff: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, ex in enumerate(examples):
        s = task.score(greedy[i], ex)
        any_correct = any(task.score(c, ex).correct for c in sampled[i * pass_k : (i + 1) * pass_k])
        for bucket in (by_diff[ex.difficulty], by_diff[-1]):  # -1 collects all
            bucket["accuracy"].append(float(s.correct))
            bucket["reward_mean"].append(s.reward)
            bucket["format_rate"].append(float(s.formatted))
            bucket[f"pass@{pass_k}"].append(float(any_correct))

    metrics: dict[str, float] = {}
    for diff, cols in sorted(by_diff.items()):
        suffix = "" if diff == -1 else f"/d{diff}"
        for name, vals in cols.items():
            if diff == -1 or name in ("accuracy", f"pass@{pass_k}"):
                metrics[f"eval/{name}{suffix}"] = sum(vals) / len(vals)
    metrics["eval/n"] = float(len(examples))
    samples = []
    for ex, text in zip(examples[:num_samples], greedy, strict=False):
        s = task.score(text, ex)
        samples.append(
            {
                "prompt": ex.prompt,
                "completion": text,
                "answer": ex.answer,
                "difficulty": ex.difficulty,
                "reward": s.reward,
                "correct": s.correct,
            }
        )
    return EvalResult(metrics=metrics, samples=samples)
