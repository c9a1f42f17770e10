"""Tiny-model factory, tokenizer compatibility check, prompt formatting and sampled-token scoring."""

from __future__ import annotations

import pytest
import torch

from rlad_core.models import (
    TINY_SIZES,
    TokenizerMismatch,
    build_char_tokenizer,
    build_tiny_model,
    check_tokenizers_compatible,
    encode_prompts,
    format_prompt,
    load_model,
    load_tokenizer,
    prune_layers,
    save_tiny_model,
)
from rlad_core.scoring import completion_logprobs, score_in_chunks


def test_char_tokenizer_round_trips_and_is_deterministic():
    a, b = build_char_tokenizer(), build_char_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    text = 'Ann says: "Bob is a knave."\n12+34=46'
    ids = a(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and a.decode(ids) == text
    assert a(text)["input_ids"][0] == a.bos_token_id


def test_saved_tiny_model_loads_and_same_seed_same_weights(tmp_path):
    d1 = save_tiny_model(tmp_path / "a", "micro", seed=3)
    d2 = save_tiny_model(tmp_path / "b", "micro", seed=3)
    m1, m2 = load_model(str(d1)), load_model(str(d2))
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)
    tok = load_tokenizer(str(d1))
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_a_pruned_model_keeps_the_chosen_layers_and_saves_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM

    small = load_model(str(save_tiny_model(tmp_path / "t", "small")))  # 4 decoder layers
    kept = [small.model.layers[i].mlp.up_proj.weight.clone() for i in (0, 2)]
    with pytest.raises(ValueError, match="distinct layers among 0..3"):
        prune_layers(small, [0, 4])
    prune_layers(small, [0, 2])
    small.save_pretrained(tmp_path / "p")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "p")
    assert again.config.num_hidden_layers == 2
    assert all(torch.equal(a.mlp.up_proj.weight, w) for a, w in zip(again.model.layers, kept, strict=True))
    out = again.generate(torch.tensor([[1, 5, 6]]), max_new_tokens=4, do_sample=False)  # KV cache by layer_idx
    assert out.shape == (1, 7)


def test_tokenizer_mismatch_is_a_clear_error():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    student = build_char_tokenizer()
    check_tokenizers_compatible(student, build_char_tokenizer())  # same mapping: fine
    shuffled = {tok: len(student) - 1 - i for tok, i in student.get_vocab().items()}
    t = Tokenizer(models.WordLevel(vocab=shuffled, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(" ", behavior="isolated")
    other = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")
    with pytest.raises(TokenizerMismatch, match="different ids.*Fix"):
        check_tokenizers_compatible(student, other)


def test_format_prompt_uses_chat_template_only_when_present():
    tok = build_char_tokenizer()
    assert format_prompt(tok, "1+1=") == "1+1="
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<a>{% endif %}"
    )
    assert format_prompt(tok, "1+1=") == "<user>1+1=<a>"
    assert format_prompt(tok, "1+1=", use_chat_template=False) == "1+1="
    ids = encode_prompts(tok, ["1+1="])[0]
    assert tok.decode(ids) == "<user>1+1=<a>"  # no extra BOS: the template owns the special tokens


def test_completion_logprobs_with_left_padding_match_unpadded_rows():
    tok = build_char_tokenizer()
    model = build_tiny_model(tok, TINY_SIZES["micro"], seed=0).eval()
    prompts = [tok("7+8=")["input_ids"], tok("123+456=")["input_ids"]]
    completions = [[5, 6, 2], [9, 2, 0]]  # second row: EOS then a pad token
    Lp = max(map(len, prompts))
    ids = torch.full((2, Lp + 3), tok.pad_token_id)
    attn = torch.zeros((2, Lp + 3), dtype=torch.long)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        ids[i, Lp - len(p) :] = torch.tensor(p + c)
        attn[i, Lp - len(p) :] = 1
    attn[1, -1] = 0
    with torch.no_grad():
        logp, ent = completion_logprobs(model, ids, attn, 3, with_entropy=True)
        chunked = score_in_chunks(model, ids, attn, 3, chunk_size=1)
    assert logp.shape == (2, 3) and ent.shape == (2, 3) and (ent > 0).all()
    torch.testing.assert_close(chunked, logp)
    for i, (p, c) in enumerate(zip(prompts, completions, strict=True)):
        row = torch.tensor([p + c])
        with torch.no_grad():
            full = torch.log_softmax(model(row).logits[0, len(p) - 1 : -1], dim=-1)
        expected = full.gather(-1, torch.tensor(c)[:, None]).squeeze(-1)
        n = 3 if i == 0 else 2  # the pad after EOS is masked and not compared
        torch.testing.assert_close(logp[i, :n], expected[:n], atol=1e-5, rtol=1e-5)
    # temperature divides the logits before the softmax
    with torch.no_grad():
        hot, _ = completion_logprobs(model, ids, attn, 3, temperature=2.0)
    assert not torch.allclose(hot, logp)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_vocab_chunked_logprobs_equal_the_plain_ones_with_their_gradients(tmp_path, temperature):
    """fp64: the log-probs, entropies and every parameter's gradient of the chunked head (chunks that do not
    divide the vocabulary, a single chunk) are the plain ones to rounding."""
    model = load_model(str(save_tiny_model(tmp_path / "m", "micro", seed=0)), dtype="float64")
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 60, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row
    weights = torch.randn(3, 4, generator=g, dtype=torch.float64)

    def run(vocab_chunk):
        model.zero_grad()
        logp, entropy = completion_logprobs(
            model, ids, mask, 4, temperature=temperature, with_entropy=True, vocab_chunk=vocab_chunk
        )
        (logp * weights).sum().backward()
        return logp.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = run(None)
    vocab = model.config.vocab_size
    for chunk in (5, 7, vocab, 10 * vocab):
        chunked = run(chunk)
        assert chunked[0].dtype == torch.float64
        torch.testing.assert_close(chunked[0], plain[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(chunked[1], plain[1], rtol=0, atol=1e-12)
        for name, grad in plain[2].items():
            torch.testing.assert_close(chunked[2][name], grad, rtol=1e-10, atol=1e-12, msg=name)


def test_the_chunked_head_passes_gradcheck_with_a_bias():
    from rlad_core.scoring import VocabChunkedLogprob

    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(11, 6, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(11, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.tensor([0, 10, 4, 5, 9])
    assert torch.autograd.gradcheck(
        lambda h, w, b: VocabChunkedLogprob.apply(h, w, b, targets, 0.8, 4), (hidden, weight, bias)
    )
    plain = torch.log_softmax((hidden @ weight.T + bias) / 0.8, -1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(VocabChunkedLogprob.apply(hidden, weight, bias, targets, 0.8, 4), plain)


def test_bf16_models_score_in_fp32_chunked_or_not(tmp_path):
    """bf16 matmuls on CPU; the log-softmax runs in fp32 either way, so the two agree to fp32 rounding."""
    model = load_model(str(save_tiny_model(tmp_path / "m", "micro", seed=0)), dtype="bfloat16")
    ids = torch.randint(3, 60, (2, 8), generator=torch.Generator().manual_seed(2))
    plain, _ = completion_logprobs(model, ids, torch.ones_like(ids), 4)
    chunked, _ = completion_logprobs(model, ids, torch.ones_like(ids), 4, vocab_chunk=16)
    assert plain.dtype == chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-5)
