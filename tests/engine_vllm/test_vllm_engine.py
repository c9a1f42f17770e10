"""Opt-in (marker `vllm`): `VLLMEngine` on a CPU, checked against the project's own scoring and `FastEngine`.

Runs in its own environment, which has vllm (requirements/vllm-cpu.txt; docs/operations.md "The vLLM engine"):

    python -m pytest -q tests/engine_vllm

Everywhere else (no vllm) the module is skipped. (The folder is not named `vllm`: pytest puts tests/ on sys.path,
where a folder of that name would be imported as vllm wherever the real one is not installed.)

The engine core runs in this process (the engine's default, VLLM_ENABLE_V1_MULTIPROCESSING=0), in float32, so
its numbers are those of the same fp32 model the project scores: tolerance 1e-4 on log-probs (what is seen:
under 1e-5), and identical greedy tokens, asserted only where the top-1 / top-2 logit margin along the greedy
path is at least 1e-3 (checked first), so no near-tie decides.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

pytest.importorskip("vllm", reason="vllm is not installed: its opt-in environment is requirements/vllm-cpu.txt")

from rlad_core.models import load_model, load_tokenizer, save_tiny_model  # noqa: E402
from rlad_core.rollout import FastEngine, Rollouts, SamplingParams, VLLMEngine, top_p_filter  # noqa: E402
from rlad_core.scoring import completion_logprobs, position_ids_from_mask  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

# vLLM's CPU backend: a 1 GiB KV cache wherever the size is not given (the trainer's engine), instead of half the
# machine's memory; read when an engine is built. No usage report to vLLM's servers.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")

LOGP_ATOL = 1e-4
MIN_MARGIN = 1e-3
PROMPTS = ["1+2=", "hello", "ab", "The cat sat on", "x", "42*7=?"]  # different lengths: left padding matters
NEW_TOKENS = 24


def _spread(model: torch.nn.Module, seed: int = 0) -> None:
    """Random init gives near-uniform logits (greedy ties at 1e-6); noise of std 0.15 spreads them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if p.dim() == 1 else 0.15 * noise)


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A tiny Llama ("mini", ~0.4M parameters, character tokenizer) with spread logits, saved as a HF directory."""
    path = save_tiny_model(tmp_path_factory.mktemp("vllm") / "student", "mini", seed=0)
    model = load_model(str(path))
    _spread(model)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tok(student_dir):
    return load_tokenizer(str(student_dir))


@pytest.fixture(scope="module")
def prompt_ids(tok):
    return [tok(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def engine(student_dir, tok):
    torch.manual_seed(1234)
    rng = torch.get_rng_state()
    built = VLLMEngine(
        str(student_dir),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype="float32",
        max_model_len=128,
        enforce_eager=True,
        kv_cache_memory_bytes=64 << 20,
    )
    assert torch.equal(torch.get_rng_state(), rng)  # vLLM seeds the global generators; the engine restores them
    return built


def _full_logits(model: torch.nn.Module, r: Rollouts) -> torch.Tensor:
    """Logits (B, T, V) of every completion position, from one forward over prompt + completion."""
    mask = r.attention_mask
    with torch.no_grad():
        out = model(input_ids=r.input_ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))
    return out.logits[:, -r.num_completion_tokens - 1 : -1, :].float()


def _scored_logp(model: torch.nn.Module, r: Rollouts, temperature: float) -> torch.Tensor:
    with torch.no_grad():
        logp, _ = completion_logprobs(
            model, r.input_ids, r.attention_mask, r.num_completion_tokens, temperature=temperature
        )
    return logp * r.completion_mask


def _greedy_margin(model: torch.nn.Module, r: Rollouts) -> float:
    """Smallest top-1 minus top-2 logit over the completion tokens of a greedy rollout."""
    top2 = _full_logits(model, r).topk(2, dim=-1).values  # (B, T, 2)
    margin = top2[..., 0] - top2[..., 1]
    return float(margin[r.completion_mask.bool()].min())


def _check_masks(r: Rollouts, eos: int, pad: int, max_new_tokens: int) -> tuple[int, int]:
    """The mask covers each row up to and including its first EOS (all of it without one); pad after.
    Returns (rows ended by EOS, rows that ran to max_new_tokens)."""
    ended = full = 0
    for ids, m in zip(r.completion_ids.tolist(), r.completion_mask.tolist(), strict=True):
        n = int(sum(m))
        assert m == [1.0] * n + [0.0] * (len(m) - n)
        assert all(t == pad for t in ids[n:])
        if eos in ids[:n]:
            assert ids.index(eos) == n - 1
            ended += 1
        else:
            assert n == max_new_tokens
            full += 1
    return ended, full


def _student(student_dir) -> torch.nn.Module:
    return load_model(str(student_dir)).eval()


def test_sampling_logprobs_are_the_project_scoring(engine, student_dir, tok, prompt_ids):
    model = _student(student_dir)
    rows = [p for p in prompt_ids for _ in range(4)]  # G = 4 rollouts per prompt
    seeds = tuple(range(len(rows)))

    # temperature: vLLM's processed log-probs are those of logits / temperature, as scoring computes them
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.7, seeds=seeds)
    r = engine.generate(rows, params)
    assert r.completion_ids.shape == (len(rows), r.num_completion_tokens) and r.num_completion_tokens <= NEW_TOKENS
    ended, full = _check_masks(r, tok.eos_token_id, tok.pad_token_id, NEW_TOKENS)
    assert ended and full, f"want rows ended by EOS and rows cut at max_new_tokens, got {ended} and {full}"
    assert (r.sample_logp[r.completion_mask == 0] == 0).all()
    torch.testing.assert_close(r.sample_logp, _scored_logp(model, r, 0.7), atol=LOGP_ATOL, rtol=0)
    # per-row seeds: the same rows again draw the same tokens
    assert torch.equal(engine.generate(rows, params).completion_ids, r.completion_ids)

    # top-p: the log-prob renormalised over the nucleus (the project's `top_p_filter`, HF semantics)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=0.8, seeds=seeds)
    r = engine.generate(rows, params)
    _check_masks(r, tok.eos_token_id, tok.pad_token_id, NEW_TOKENS)
    logits = _full_logits(model, r)  # (B, T, V)
    B, T, V = logits.shape
    nucleus = top_p_filter(logits.reshape(B * T, V), 0.8).log_softmax(-1).reshape(B, T, V)
    expected = nucleus.gather(-1, r.completion_ids[..., None]).squeeze(-1).masked_fill(r.completion_mask == 0, 0.0)
    assert torch.isfinite(expected).all()  # every sampled token lies in the project's nucleus
    torch.testing.assert_close(r.sample_logp, expected, atol=LOGP_ATOL, rtol=0)
    assert (r.sample_logp >= _scored_logp(model, r, 1.0) - LOGP_ATOL).all()  # renormalised: never below


def test_weight_sync_greedy_follows_the_updated_student(engine, student_dir, tok, prompt_ids):
    student = _student(student_dir)
    ids = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    fast = FastEngine(student, **ids)  # reads the module's weights: sees each optimizer step at once
    greedy = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0)

    old = fast.generate(prompt_ids, greedy)
    assert _greedy_margin(student, old) >= MIN_MARGIN
    before = engine.generate(prompt_ids, greedy)
    assert torch.equal(before.completion_ids, old.completion_ids)
    assert torch.equal(before.completion_mask, old.completion_mask)
    torch.testing.assert_close(before.sample_logp, old.sample_logp, atol=LOGP_ATOL, rtol=0)

    # one optimizer step: raise the likelihood of the engine's own temperature-1 samples (an SFT / policy step)
    samples = engine.generate(
        [p for p in prompt_ids for _ in range(4)], SamplingParams(max_new_tokens=NEW_TOKENS, seeds=tuple(range(24)))
    )
    original = copy.deepcopy(student.state_dict())
    optimizer = torch.optim.AdamW(student.parameters(), lr=2e-2)
    student.train()
    logp, _ = completion_logprobs(student, samples.input_ids, samples.attention_mask, samples.num_completion_tokens)
    loss = -(logp * samples.completion_mask).sum() / samples.completion_mask.sum()
    loss.backward()
    optimizer.step()
    student.eval()

    new = fast.generate(prompt_ids, greedy)
    assert not torch.equal(new.completion_ids, old.completion_ids)  # the step changed the greedy outputs
    assert _greedy_margin(student, new) >= MIN_MARGIN
    stale = engine.generate(prompt_ids, greedy)  # not synced yet: vLLM still has the old weights
    assert torch.equal(stale.completion_ids, old.completion_ids)

    engine.update_weights(student)
    synced = engine.generate(prompt_ids, greedy)
    assert torch.equal(synced.completion_ids, new.completion_ids)
    assert torch.equal(synced.completion_mask, new.completion_mask)
    torch.testing.assert_close(synced.sample_logp, new.sample_logp, atol=LOGP_ATOL, rtol=0)
    # sampled log-probs follow the new weights too
    r = engine.generate(prompt_ids, SamplingParams(max_new_tokens=NEW_TOKENS, seeds=tuple(range(6))))
    torch.testing.assert_close(r.sample_logp, _scored_logp(student, r, 1.0), atol=LOGP_ATOL, rtol=0)

    student.load_state_dict(original)  # back to the saved weights, for whatever uses the engine next
    engine.update_weights(student)
    assert torch.equal(engine.generate(prompt_ids, greedy).completion_ids, old.completion_ids)


def test_trainer_runs_with_engine_vllm(student_dir, tmp_path):
    """Two grpo steps with `engine: vllm`: the trainer builds the engine from the student's directory and dtype,
    samples with it, and syncs the updated weights into it after each step."""
    from rlad_core.config import parse_config
    from rlad_core.trainer import train

    cfg = parse_config(
        {
            "method": "grpo",
            "student": str(student_dir),
            "task": {"name": "arithmetic", "levels": [1]},
            "engine": "vllm",
            "steps": 2,
            "batch_size": 8,
            "group_size": 4,
            "max_new_tokens": 16,
            "lr": 1e-3,
            "eval_every": 0,
            "checkpoint_every": 0,
            "seed": 0,
            "output_dir": str(tmp_path / "run"),
            "log_samples": 0,
        }
    )
    result = train(cfg)
    assert result.step == 2 and not result.stopped
    assert result.last_metrics and all(v == v for v in result.last_metrics.values())  # no NaN
