"""Rollout engines: FastEngine reproduces the HF forward and HF generate; masks, EOS, top-p, RNG, weight sharing."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.generation.logits_process import TopPLogitsWarper

from rlad_core.models import TINY_SIZES, build_char_tokenizer, build_tiny_model
from rlad_core.rollout import (
    VLLM_MISSING,
    FastEngine,
    HFEngine,
    Rollouts,
    SamplingParams,
    make_engine,
    sample_next_token,
    top_p_filter,
)
from rlad_core.rollout.base import finish_rollouts, left_pad
from rlad_core.scoring import completion_logprobs, position_ids_from_mask

PAD, BOS, EOS, VOCAB = 0, 1, 2, 64
# Left padding matters only with prompts of different lengths.
PROMPTS = [[BOS, 5, 9, 12], [BOS, 7], [BOS, 3, 3, 8, 20, 31, 40], [BOS, 11, 60, 4], [BOS, 50, 2 + 40]]

VLLM_MARK = pytest.mark.vllm  # registered in pyproject.toml; select with `-m vllm`


def _randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.15) -> torch.nn.Module:
    """Spread the logits (random init is near-uniform, where greedy ties are a coin flip at 1e-6) and make norm
    weights and biases non-trivial (HF initialises them to 1 and 0, which would hide a missing term)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=gen)
            p.copy_(1.0 + 0.2 * noise if p.dim() == 1 else std * noise)
    return model.eval()


def _common(**kw) -> dict:
    return dict(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        **kw,
    )


def _build(kind: str) -> torch.nn.Module:
    """Small random models of every architecture FastEngine claims."""
    torch.manual_seed(0)
    if kind == "tiny-llama":  # the project's own factory (MHA, tied embeddings, default RoPE)
        return _randomize(build_tiny_model(build_char_tokenizer(), TINY_SIZES["micro"]))
    if kind == "llama-gqa-llama3rope":  # GQA, untied head, attention and MLP biases, llama3 RoPE scaling
        cfg = LlamaConfig(
            **_common(num_key_value_heads=2, tie_word_embeddings=False, attention_bias=True, mlp_bias=True),
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        )
        return _randomize(LlamaForCausalLM(cfg))
    if kind == "qwen2":  # q/k/v biases, GQA
        return _randomize(Qwen2ForCausalLM(Qwen2Config(**_common(num_key_value_heads=2, tie_word_embeddings=True))))
    if kind == "qwen3":  # q/k norms, explicit head_dim != hidden / heads
        return _randomize(
            Qwen3ForCausalLM(Qwen3Config(**_common(num_key_value_heads=2, head_dim=24, tie_word_embeddings=False)))
        )
    if kind == "mistral":  # sliding window larger than any sequence here
        return _randomize(MistralForCausalLM(MistralConfig(**_common(num_key_value_heads=1, sliding_window=64))))
    raise AssertionError(kind)


ARCHS = ["tiny-llama", "llama-gqa-llama3rope", "qwen2", "qwen3", "mistral"]


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    return {k: _build(k) for k in ARCHS}


def _engines(model: torch.nn.Module, eos=EOS) -> dict[str, HFEngine | FastEngine]:
    return {
        "hf": HFEngine(model, eos_token_id=eos, pad_token_id=PAD),
        "fast": FastEngine(model, eos_token_id=eos, pad_token_id=PAD),
    }


def _assert_rollouts_equal(a: Rollouts, b: Rollouts, logp_atol: float = 1e-4) -> None:
    assert torch.equal(a.prompt_ids, b.prompt_ids) and torch.equal(a.prompt_mask, b.prompt_mask)
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    torch.testing.assert_close(a.sample_logp, b.sample_logp, atol=logp_atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# FastEngine's forward == HF forward
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_prefill_and_decode_logits_equal_hf_full_forward(models, arch):
    model = models[arch]
    T = 6
    completion = torch.randint(3, VOCAB, (len(PROMPTS), T), generator=torch.Generator().manual_seed(1))  # (B, T)
    ids, mask = left_pad(PROMPTS, PAD, torch.device("cpu"))
    dec = FastEngine(model, eos_token_id=EOS, pad_token_id=PAD).decoder
    with torch.inference_mode():
        dec.begin(ids.shape[0], ids.shape[1] + T)
        fast = [dec.prefill(ids, mask)] + [dec.step(completion[:, t]) for t in range(T - 1)]
        dec.end()
        full_ids = torch.cat([ids, completion], dim=1)  # (B, Lp + T)
        full_mask = torch.cat([mask, torch.ones_like(completion)], dim=1)
        ref = model(
            input_ids=full_ids, attention_mask=full_mask, position_ids=position_ids_from_mask(full_mask)
        ).logits[:, ids.shape[1] - 1 : -1]  # (B, T, V)
    assert ref.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    torch.testing.assert_close(torch.stack(fast, dim=1), ref.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_fast_greedy_equals_hf_greedy_token_for_token(models, arch):
    engines = _engines(models[arch])
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    hf, fast = engines["hf"].generate(PROMPTS, params), engines["fast"].generate(PROMPTS, params)
    assert fast.completion_ids.shape == (len(PROMPTS), 12)
    _assert_rollouts_equal(hf, fast)


def test_fast_samples_from_a_lora_student_as_hf_does():
    """A peft LoRA model (adapters with non-zero B): the fast engine applies base + (alpha / r) B A, token for
    token what HF's generate produces through peft, and not what the base model alone would."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj", "o_proj", "gate_proj"]
    lora = get_peft_model(_build("tiny-llama"), LoraConfig(r=4, lora_alpha=8, target_modules=targets)).eval()
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    engines = _engines(lora)
    hf, fast = engines["hf"].generate(PROMPTS, params), engines["fast"].generate(PROMPTS, params)
    _assert_rollouts_equal(hf, fast)
    plain = _engines(_build("tiny-llama"))["fast"].generate(PROMPTS, params)
    assert not torch.equal(plain.completion_ids, fast.completion_ids)


# ---------------------------------------------------------------------------------------------------------
# Sampling: log-probs, top-p, RNG
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("engine", ["hf", "fast"])
@pytest.mark.parametrize("arch", ["tiny-llama", "qwen2"])
def test_sample_logp_equals_scoring_logprobs_at_temperature(models, arch, engine):
    model = models[arch]
    torch.manual_seed(3)
    r = _engines(model)[engine].generate(PROMPTS * 4, SamplingParams(max_new_tokens=10, temperature=0.7))
    with torch.no_grad():
        ref, _ = completion_logprobs(model, r.input_ids, r.attention_mask, r.num_completion_tokens, temperature=0.7)
    torch.testing.assert_close(r.sample_logp, ref * r.completion_mask, atol=1e-4, rtol=0)
    assert (r.sample_logp[r.completion_mask.bool()] < 0).all()


def test_hf_engine_ignores_sampling_defaults_of_the_checkpoint_generation_config():
    """A checkpoint's generation_config (top_k, repetition penalty, ...) must not change the distribution."""
    model = _build("tiny-llama")
    model.generation_config.update(top_k=2, repetition_penalty=1.8, min_p=0.3, do_sample=True, temperature=0.2)
    torch.manual_seed(6)
    r = _engines(model)["hf"].generate(PROMPTS * 4, SamplingParams(max_new_tokens=10, temperature=1.0))
    with torch.no_grad():
        ref, _ = completion_logprobs(model, r.input_ids, r.attention_mask, r.num_completion_tokens)
    torch.testing.assert_close(r.sample_logp, ref * r.completion_mask, atol=1e-4, rtol=0)


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_top_p_samples_only_inside_hf_nucleus_with_renormalised_logp(models, engine):
    model, temperature, top_p = models["tiny-llama"], 1.3, 0.6
    torch.manual_seed(4)
    r = _engines(model)[engine].generate(PROMPTS * 4, SamplingParams(8, temperature, top_p))
    with torch.no_grad():
        pos = position_ids_from_mask(r.attention_mask)
        logits = model(input_ids=r.input_ids, attention_mask=r.attention_mask, position_ids=pos).logits
    T = r.num_completion_tokens
    scores = (logits[:, -T - 1 : -1] / temperature).flatten(0, 1)  # (B T, V)
    warped = TopPLogitsWarper(top_p)(None, scores)
    tokens, live = r.completion_ids.flatten(), r.completion_mask.flatten().bool()  # (B T,)
    at_token = warped.gather(1, tokens[:, None]).squeeze(1)
    assert torch.isfinite(at_token[live]).all()  # no sampled token lies outside the nucleus
    assert (torch.isinf(warped).sum(1) > 0).all()  # ... and the nucleus really excluded tokens at every step
    expected = warped.log_softmax(-1).gather(1, tokens[:, None]).squeeze(1)
    torch.testing.assert_close(r.sample_logp.flatten()[live], expected[live], atol=1e-4, rtol=0)


def test_top_p_filter_is_hf_top_p_warper():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(200, 50, generator=gen) * 3
    scores[0] = 0.0  # all ties
    scores[1, 7] = 100.0  # one token holds all the mass: kept alone (min_tokens_to_keep=1)
    for top_p in (0.05, 0.3, 0.9, 0.999):
        assert torch.equal(top_p_filter(scores, top_p), TopPLogitsWarper(top_p)(None, scores.clone()))


def test_top_p_never_samples_outside_constructed_nucleus():
    # probs 0.5, 0.3, 0.15, 0.05: with top_p = 0.75 HF keeps {0, 1} (ascending cumsum 0.05, 0.2 <= 0.25 removed).
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(4000, -1).contiguous()  # (4000, 4)
    torch.manual_seed(0)
    tokens, logp = sample_next_token(logits, SamplingParams(temperature=1.0, top_p=0.75))
    assert set(tokens.tolist()) == {0, 1}
    frac0 = (tokens == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.03  # renormalised inside the nucleus
    torch.testing.assert_close(logp, (probs[tokens] / 0.8).log(), atol=1e-5, rtol=0)


def test_greedy_ignores_top_p_and_returns_raw_log_softmax():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 3.0, -1.0]])
    tokens, logp = sample_next_token(logits, SamplingParams(temperature=0.0, top_p=0.1))
    assert tokens.tolist() == [1, 0]  # ties -> first index, as torch.argmax in HF
    torch.testing.assert_close(logp, logits.log_softmax(-1)[[0, 1], [1, 0]])


def test_same_seed_same_rollouts_and_other_seed_differs(models):
    fast = _engines(models["qwen3"])["fast"]
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.9)
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(seed)
        runs.append(fast.generate(PROMPTS * 3, params))
    _assert_rollouts_equal(runs[0], runs[1], logp_atol=0.0)
    assert not torch.equal(runs[0].completion_ids, runs[2].completion_ids)


def test_per_row_streams_do_not_depend_on_the_rows_beside_them(models):
    """SamplingParams.seeds: a row's sample is a function of its seed, whichever rows share its batch and
    whatever the global RNG holds (how a run on several processes gets the rollouts of one process)."""
    fast = _engines(models["tiny-llama"])["fast"]
    prompts = PROMPTS * 2
    seeds = tuple(1000 + i for i in range(len(prompts)))

    def run(rows: list[int], global_seed: int):
        torch.manual_seed(global_seed)
        params = SamplingParams(max_new_tokens=12, temperature=1.0, top_p=0.95, seeds=tuple(seeds[i] for i in rows))
        r = fast.generate([prompts[i] for i in rows], params)
        return {i: r.completion_ids[k][r.completion_mask[k] > 0].tolist() for k, i in enumerate(rows)}

    whole = run(list(range(len(prompts))), 0)
    halves = {**run([0, 1, 2, 3, 4], 1), **run([5, 6, 7, 8, 9], 2)}
    reordered = run([9, 3, 5, 0, 1, 2, 4, 6, 7, 8], 3)
    assert whole == halves == reordered
    assert len({tuple(v) for v in whole.values()}) > 1
    other = SamplingParams(max_new_tokens=12, seeds=tuple(s + 1 for s in seeds))
    assert fast.generate(prompts, other).completion_ids.tolist() != [whole[i] for i in range(len(prompts))]


def test_hf_engine_refuses_per_row_streams(models):
    with pytest.raises(ValueError, match="engine 'fast' or 'vllm'"):
        _engines(models["tiny-llama"])["hf"].generate(PROMPTS, SamplingParams(max_new_tokens=4, seeds=(1,) * 5))


def test_fast_and_hf_draw_the_same_samples_from_the_same_seed(models):
    """Same RNG use (one multinomial over the batch per step) and equal logits: the same tokens, in practice."""
    engines = _engines(models["tiny-llama"])
    out = {}
    for name, engine in engines.items():
        torch.manual_seed(11)
        out[name] = engine.generate(PROMPTS * 2, SamplingParams(max_new_tokens=12, temperature=1.0))
    _assert_rollouts_equal(out["hf"], out["fast"])


# ---------------------------------------------------------------------------------------------------------
# EOS and masks
# ---------------------------------------------------------------------------------------------------------


def test_finish_masks_after_first_eos_and_keeps_it():
    tokens = torch.tensor([[5, EOS, 7, EOS], [EOS, 3, 4, 5], [6, 7, 8, 9]])
    logp = -torch.arange(1, 13, dtype=torch.float32).view(3, 4)
    r = finish_rollouts(
        torch.ones(3, 2, dtype=torch.long), torch.ones(3, 2, dtype=torch.long), tokens, logp, torch.tensor([EOS]), PAD
    )
    assert r.completion_ids.tolist() == [[5, EOS, PAD, PAD], [EOS, PAD, PAD, PAD], [6, 7, 8, 9]]
    assert r.completion_mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]
    assert r.sample_logp.tolist() == [[-1, -2, 0, 0], [-5, 0, 0, 0], [-9, -10, -11, -12]]
    assert r.completion_lengths.tolist() == [2, 1, 4] and r.num_completion_tokens == 4
    assert r.input_ids.shape == (3, 6) and r.attention_mask.tolist()[0] == [1, 1, 1, 1, 0, 0]
    assert r.attention_mask.dtype == torch.long


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_eos_stops_rows_and_early_exit_when_all_rows_finished(models, engine):
    eos_ids = list(range(3, 24))  # a third of the vocabulary ends a row: every row stops within a few tokens
    torch.manual_seed(5)
    r = _engines(models["tiny-llama"], eos=eos_ids)[engine].generate(PROMPTS * 4, SamplingParams(40, 1.0))
    T = r.num_completion_tokens
    assert T < 40  # stopped early: every row hit an EOS
    is_eos = torch.isin(r.completion_ids, torch.tensor(eos_ids))
    first = is_eos.float().argmax(1)  # (B,) every row has one
    assert is_eos.any(1).all()
    assert len(set(first.tolist())) > 1  # rows finished at different steps
    assert int(first.max()) == T - 1  # the loop ran exactly until the last row finished
    cols = torch.arange(T)[None, :]
    assert torch.equal(r.completion_mask, (cols <= first[:, None]).float())
    assert (r.completion_ids[cols > first[:, None]] == PAD).all()
    assert (r.sample_logp[cols > first[:, None]] == 0).all()
    assert (r.sample_logp[cols <= first[:, None]] < 0).all()


def test_greedy_with_eos_equal_between_engines(models):
    """EOS set to tokens greedy decoding produces: both engines stop rows at the same places."""
    model = models["qwen2"]
    probe = _engines(model)["fast"].generate(PROMPTS, SamplingParams(8, 0.0))
    eos_ids = sorted(set(probe.completion_ids[:, 3].tolist()))  # every row emits one of these at step 3 or before
    engines = _engines(model, eos=eos_ids)
    hf, fast = (engines[k].generate(PROMPTS, SamplingParams(8, 0.0)) for k in ("hf", "fast"))
    _assert_rollouts_equal(hf, fast)
    assert fast.num_completion_tokens <= 4 and (fast.completion_mask == 0).any()


# ---------------------------------------------------------------------------------------------------------
# Weight sharing, modes, errors
# ---------------------------------------------------------------------------------------------------------


def test_fast_sees_in_place_weight_updates_without_update_weights():
    model = _build("tiny-llama")
    engines = _engines(model)
    params = SamplingParams(max_new_tokens=12, temperature=0.0)
    before = engines["fast"].generate(PROMPTS, params)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():  # an optimizer step, in place
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    after = engines["fast"].generate(PROMPTS, params)
    assert not torch.equal(before.completion_ids, after.completion_ids)
    _assert_rollouts_equal(engines["hf"].generate(PROMPTS, params), after)


@pytest.mark.parametrize("engine", ["hf", "fast"])
def test_generate_restores_training_mode_and_does_not_record_gradients(engine):
    model = _build("tiny-llama").train()
    seen: list[bool] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    r = _engines(model)[engine].generate(PROMPTS, SamplingParams(4, 1.0))
    handle.remove()
    assert model.training
    assert all(not t for t in seen)  # HF ran in eval mode (FastEngine does not call the module at all)
    assert not r.sample_logp.requires_grad and not r.completion_ids.requires_grad
    # Rollouts feed the training forward: no inference tensors (autograd cannot save them for backward).
    assert not any(t.is_inference() for t in (r.input_ids, r.attention_mask, r.completion_mask, r.sample_logp))
    logp, _ = completion_logprobs(model, r.input_ids, r.attention_mask, r.num_completion_tokens)
    (logp * r.completion_mask).sum().backward()
    assert model.lm_head.weight.grad is not None


def test_unsupported_architectures_raise_value_error_pointing_to_hf():
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    with pytest.raises(ValueError, match="engine 'hf'"):
        make_engine("fast", gpt2, eos_token_id=EOS, pad_token_id=PAD)
    dynamic = LlamaForCausalLM(
        LlamaConfig(**_common(rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}))
    )
    with pytest.raises(ValueError, match="rope type 'dynamic'"):
        make_engine("fast", dynamic, eos_token_id=EOS, pad_token_id=PAD)
    with pytest.raises(ValueError, match="unknown rollout engine"):
        make_engine("beam", gpt2, eos_token_id=EOS, pad_token_id=PAD)  # type: ignore[arg-type]


def test_sliding_window_exceeded_raises(models):
    fast = _engines(models["mistral"])["fast"]  # window 64
    with pytest.raises(ValueError, match="sliding window 64"):
        fast.generate(PROMPTS, SamplingParams(max_new_tokens=60))


def test_invalid_inputs_raise():
    with pytest.raises(ValueError):
        SamplingParams(max_new_tokens=0)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1, 2], []], PAD, torch.device("cpu"))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_engine_without_vllm_says_how_to_install():
    with pytest.raises(RuntimeError) as info:
        make_engine("vllm", "/nonexistent/model", eos_token_id=EOS, pad_token_id=PAD)
    assert str(info.value) == VLLM_MISSING


@VLLM_MARK
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm is not installed")
def test_vllm_engine_greedy_matches_hf(tmp_path):  # pragma: no cover - needs vllm (tests/engine_vllm has more)
    model = _build("tiny-llama")
    model.save_pretrained(tmp_path)
    build_char_tokenizer().save_pretrained(tmp_path)
    engine = make_engine(
        "vllm", str(tmp_path), eos_token_id=EOS, pad_token_id=PAD, dtype="float32", gpu_memory_utilization=0.2
    )
    params = SamplingParams(max_new_tokens=8, temperature=0.0)
    vl = engine.generate(PROMPTS, params)
    assert torch.equal(vl.completion_ids, _engines(model)["hf"].generate(PROMPTS, params).completion_ids)
    engine.update_weights(model)  # that the engine then follows the new weights: tests/engine_vllm
