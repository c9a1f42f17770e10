"""rlad_core.evaluate: evaluating never changes the training run's random stream; metrics from per-example
records; per-row sampling seeds make an example's samples independent of how the examples are split."""

from __future__ import annotations

from typing import cast

import pytest
import torch

from rlad_core.evaluate import ExampleEval, aggregate, evaluate, evaluate_examples, sample_seeds
from rlad_core.models import load_model, load_tokenizer
from rlad_core.rollout import make_engine
from rlad_core.tasks import get_task
from rlad_core.tasks.base import Example, Score, Task


def _evaluate_on(device: str, tiny_dirs) -> None:
    tok = load_tokenizer(str(tiny_dirs["student"]))
    model = load_model(str(tiny_dirs["student"]), device=device).eval()
    engine = make_engine("hf", model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    task = get_task("arithmetic", levels=[1])
    res = evaluate(engine, tok, task, task.examples(4, seed=0, split="eval"), max_new_tokens=6, pass_k=2, seed=123)
    assert res.metrics["eval/n"] == 4.0


def test_evaluation_leaves_the_cpu_training_stream_unchanged(tiny_dirs):
    torch.manual_seed(7)
    torch.rand(3)
    expected = torch.rand(5)  # the training stream's next draws, without an evaluation

    torch.manual_seed(7)
    torch.rand(3)
    _evaluate_on("cpu", tiny_dirs)
    assert torch.equal(torch.rand(5), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_leaves_the_cuda_training_stream_unchanged(tiny_dirs):
    # sampling on the GPU draws from the CUDA generator, which evaluate() reseeds: it must be restored too
    torch.manual_seed(7)
    expected = torch.rand(5, device="cuda")

    torch.manual_seed(7)
    _evaluate_on("cuda", tiny_dirs)
    assert torch.equal(torch.rand(5, device="cuda"), expected)


def _record(difficulty: int, correct: bool, reward: float, formatted: bool, samples_correct: int) -> ExampleEval:
    return ExampleEval(
        prompt=f"p{difficulty}{reward}",
        answer="a",
        difficulty=difficulty,
        completion=f"c{reward}",
        reward=reward,
        correct=correct,
        formatted=formatted,
        samples_correct=samples_correct,
    )


def test_metrics_are_aggregated_from_per_example_records():
    records = [
        _record(1, True, 1.0, True, 2),
        _record(2, False, 0.1, True, 0),
        _record(1, False, 0.0, False, 1),
        _record(2, False, 0.1, True, 3),
    ]
    res = aggregate(records, pass_k=3, num_samples=2)
    assert res.metrics == {
        "eval/accuracy": 0.25,
        "eval/reward_mean": (1.0 + 0.1 + 0.0 + 0.1) / 4,
        "eval/format_rate": 0.75,
        "eval/pass@3": 0.75,
        "eval/accuracy/d1": 0.5,
        "eval/pass@3/d1": 1.0,
        "eval/accuracy/d2": 0.0,
        "eval/pass@3/d2": 0.5,
        "eval/n": 4.0,
    }
    assert list(res.metrics)[:4] == ["eval/accuracy", "eval/reward_mean", "eval/format_rate", "eval/pass@3"]
    assert res.samples == [
        {"prompt": "p11.0", "completion": "c1.0", "answer": "a", "difficulty": 1, "reward": 1.0, "correct": True},
        {"prompt": "p20.1", "completion": "c0.1", "answer": "a", "difficulty": 2, "reward": 0.1, "correct": False},
    ]
    assert aggregate([], pass_k=3).metrics == {"eval/n": 0.0}


class _EvenLength:
    """The arithmetic task's examples, judged by the completion's length: an untrained model's samples are then
    "correct" about half of the time, so the records show which samples were drawn."""

    def __init__(self) -> None:
        self.task = get_task("arithmetic", levels=[1, 2])

    def score(self, completion: str, example: Example) -> Score:
        return Score(reward=float(len(completion)), correct=len(completion) % 2 == 0, formatted=True)


def test_per_row_seeds_make_the_samples_independent_of_the_split(tiny_dirs):
    """Examples evaluated in two blocks (4 + 3), each with its rows' seeds, give the records of all 7 at once;
    the seeds depend on the step and the example's global index only."""
    tok = load_tokenizer(str(tiny_dirs["student"]))
    model = load_model(str(tiny_dirs["student"]), dtype="float64").eval()
    engine = make_engine("fast", model, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    task = cast(Task, _EvenLength())
    examples = _EvenLength().task.examples(7, seed=0, split="eval")
    k, kw = 3, {"max_new_tokens": 8, "pass_k": 3, "batch_size": 5}

    def run(lo: int, hi: int, step: int = 2) -> list[ExampleEval]:
        return evaluate_examples(engine, tok, task, examples[lo:hi], seeds=sample_seeds(0, step, lo, hi - lo, k), **kw)

    whole = run(0, 7)
    assert run(0, 4) + run(4, 7) == whole
    assert 0 < sum(r.samples_correct for r in whole) < 7 * k  # the samples vary ...
    assert [r.samples_correct for r in run(0, 7, step=3)] != [r.samples_correct for r in whole]  # ... with the step
    assert sample_seeds(0, 2, 4, 3, k) == sample_seeds(0, 2, 0, 7, k)[4 * k :]
    assert len(set(sample_seeds(0, 2, 0, 7, k))) == 7 * k
    assert set(sample_seeds(0, 1, 0, 7, k)).isdisjoint(sample_seeds(0, 2, 0, 7, k))
    assert all(0 <= s < 1 << 63 for s in sample_seeds(0, 2, 0, 7, k))
    with pytest.raises(ValueError):
        evaluate_examples(engine, tok, task, examples, seeds=(1, 2), **kw)
