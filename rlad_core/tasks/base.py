"""The task interface shared by every verifiable-reward task, plus the helpers generated tasks use.

A task produces `Example`s (a prompt, its canonical answer, a difficulty) and scores completions against them.
Everything here is pure Python: the trainer imports tasks in processes that may not load torch, and the HTTP
service validates user datasets with them.

Train/eval separation for generated tasks (`sample_partitioned`): every prompt is assigned to either the train or
the eval partition by a stable hash of its text (`in_eval_partition`), independent of the seed. The train stream
only keeps train-partition prompts and the eval stream only eval-partition prompts, so the two never share a
prompt -- for any pair of seeds, and even for tiny problem spaces (1-digit addition has only 100 prompts) where
disjoint RNG streams alone would collide.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Split = Literal["train", "eval"]
SPLITS: tuple[str, ...] = ("train", "eval")

#: Share of the prompt space that generated tasks reserve for evaluation (see `in_eval_partition`).
EVAL_SHARE: float = 0.1

# How many candidates `sample_partitioned` draws for one example before concluding that the requested partition
# is (nearly) empty for that difficulty; with EVAL_SHARE = 0.1 a healthy partition needs ~10 draws on average.
_MAX_DRAWS_PER_EXAMPLE = 10_000


@dataclass(frozen=True)
class Example:
    """One task instance.

    `prompt` is the raw question (the caller applies any chat template), `answer` the canonical answer the
    verifier compares against, `difficulty` the level used to report accuracy by difficulty, and `meta`
    task-specific JSON-serialisable details. `meta` is left out of the hash so examples stay hashable.
    """

    prompt: str
    answer: str
    difficulty: int
    meta: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Score:
    """The verdict on one completion: the scalar RL `reward`, full correctness, and format compliance."""

    reward: float
    correct: bool
    formatted: bool


@runtime_checkable
class Task(Protocol):
    """What the trainer and evaluator need from a task."""

    name: str

    def examples(self, n: int, *, seed: int, split: Split = "train") -> list[Example]:
        """`n` examples, deterministic for (n, seed, split); the train and eval streams never share a prompt."""
        ...

    def score(self, completion: str, example: Example) -> Score:
        """Grade a model completion for `example`."""
        ...

    def solution(self, example: Example) -> str:
        """A reference completion in the exact answer format; it scores correct with the maximum reward."""
        ...

    @property
    def difficulties(self) -> tuple[int, ...]:
        """The difficulty levels this task instance generates."""
        ...


def check_request(n: int, split: str) -> None:
    """Reject a negative count or an unknown split with a message that says the fix."""
    if n < 0:
        raise ValueError(f"n={n} is negative; ask for 0 or more examples")
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is not one of {SPLITS}")


def stream_rng(task: str, seed: int, split: str) -> random.Random:
    """The RNG of one (task, seed, split) stream.

    Seeding with a string makes the stream independent of PYTHONHASHSEED and keeps the train and eval streams of
    the same seed unrelated.
    """
    return random.Random(f"{task}:{seed}:{split}")


def in_eval_partition(prompt: str, share: float = EVAL_SHARE) -> bool:
    """Whether `prompt` belongs to the eval partition: a stable hash of the text falls in the lowest `share`."""
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def sample_partitioned(
    n: int,
    *,
    task: str,
    seed: int,
    split: Split,
    difficulties: Sequence[int],
    make: Callable[[random.Random, int], Example],
    eval_share: float = EVAL_SHARE,
) -> list[Example]:
    """Draw `n` examples of a generated task from the (task, seed, split) stream, keeping only `split`'s prompts.

    Difficulties are assigned round-robin (`difficulties[i % len]`) so every level is equally represented and
    `examples(n)` is a prefix of `examples(n + k)`. `make(rng, difficulty)` builds one candidate.
    """
    check_request(n, split)
    if not difficulties:
        raise ValueError("no difficulty levels to generate; configure at least one")
    rng = stream_rng(task, seed, split)
    want_eval = split == "eval"
    out: list[Example] = []
    for i in range(n):
        difficulty = difficulties[i % len(difficulties)]
        for _ in range(_MAX_DRAWS_PER_EXAMPLE):
            candidate = make(rng, difficulty)
            if in_eval_partition(candidate.prompt, eval_share) == want_eval:
                out.append(candidate)
                break
        else:
            raise RuntimeError(
                f"{task}: no {split} prompt found for difficulty {difficulty} in {_MAX_DRAWS_PER_EXAMPLE} draws; "
                f"the problem space at this difficulty is too small for eval_share={eval_share}"
            )
    return out
