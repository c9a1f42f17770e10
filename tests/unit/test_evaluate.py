"""rlad_core.evaluate: evaluating never changes the training run's random stream."""

from __future__ import annotations

import pytest
import torch

from rlad_core.evaluate import evaluate
from rlad_core.models import load_model, load_tokenizer
from rlad_core.rollout import make_engine
from rlad_core.tasks import get_task


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
