"""Models and tokenizers: loading student/teacher, the tokenizer compatibility check, the tiny-model factory.

Heavy objects are built here from plain config values and never stored in the config.

The tiny-model factory exists because this platform must be testable without downloading weights: it
builds a character-level tokenizer (one token per printable character, via `tokenizers`) and a small,
randomly initialised Llama-family model, and saves both with `save_pretrained`, so that every other part of
the code loads them exactly like a Hugging Face checkpoint.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


# ---------------------------------------------------------------------------------------------------------
# Tiny-model factory
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of a tiny Llama-family model (head_dim = hidden_size / num_attention_heads)."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True


# Named sizes used by tests, the demo and the benchmark. "small" is the benchmark student (~3.2M
# parameters); "small-4x" is a teacher about four times larger (width x2, same depth and head_dim).
TINY_SIZES: dict[str, TinyModelSpec] = {
    "micro": TinyModelSpec(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=172),
    "mini": TinyModelSpec(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=344),
    "small": TinyModelSpec(),
    "small-4x": TinyModelSpec(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, intermediate_size=1376),
}


def char_vocab() -> dict[str, int]:
    """The character tokenizer's vocabulary: the specials, then each character of `string.printable`."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in string.printable:
        vocab.setdefault(ch, len(vocab))
    return vocab


def build_char_tokenizer(model_max_length: int = 512, vocab: dict[str, int] | None = None) -> PreTrainedTokenizerFast:  # noqa: F821
    """Character-level tokenizer: one token per character of `string.printable`, specials first (`char_vocab`;
    or `vocab`, which must hold the specials and the characters).

    The vocabulary order is fixed, so every build maps characters to the same ids: two tiny models built
    separately (a teacher and a student) are tokenizer-compatible by construction.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = char_vocab() if vocab is None else vocab
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",  # decoder-only generation pads on the left
        model_max_length=model_max_length,
    )


def build_tiny_model(tokenizer: PreTrainedTokenizerBase, spec: TinyModelSpec, *, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised `LlamaForCausalLM`; the same spec and seed give the same weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def save_tiny_model(out_dir: str | Path, spec: TinyModelSpec | str = "small", *, seed: int = 0) -> Path:
    """Build a tiny tokenizer + model and write them with `save_pretrained` (loadable by `from_pretrained`)."""
    if isinstance(spec, str):
        if spec not in TINY_SIZES:
            raise ValueError(f"unknown tiny model size {spec!r}; choose one of {sorted(TINY_SIZES)}")
        spec = TINY_SIZES[spec]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer(spec.max_position_embeddings)
    model = build_tiny_model(tokenizer, spec, seed=seed)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {"spec": asdict(spec), "seed": seed, "n_params": count_parameters(model)}
    (out / "tiny_model.json").write_text(json.dumps(info, indent=1))
    return out


def prune_layers(model: PreTrainedModel, keep: Sequence[int]) -> PreTrainedModel:
    """Keep only the decoder layers `keep` (in that order) of a Llama-family causal LM, in place: a smaller
    student of the same family, sharing the teacher's embeddings, head and tokenizer. The config's layer count
    (and per-layer `layer_types`) and each attention's `layer_idx` (its KV-cache slot) follow."""
    import torch

    layers = model.model.layers
    if not keep or any(not 0 <= i < len(layers) for i in keep) or len(set(keep)) != len(keep):
        raise ValueError(f"keep={list(keep)} must name distinct layers among 0..{len(layers) - 1}")
    model.model.layers = torch.nn.ModuleList(layers[i] for i in keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.config.num_hidden_layers = len(keep)
    for new_idx, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = new_idx
    return model


def count_parameters(model: Any) -> int:
    """Number of parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


class TokenizerMismatch(ValueError):
    """Teacher and student tokenize differently, so the teacher cannot score the student's tokens."""


def _check_local(name_or_path: str) -> None:
    """A path-like name that does not exist gets a plain error instead of the hub's repo-id message."""
    p = Path(name_or_path)
    looks_local = p.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1
    if looks_local and not p.expanduser().exists():
        raise FileNotFoundError(
            f"model directory {name_or_path} does not exist; fix: pass an existing directory written by "
            "save_pretrained (or a Hugging Face model id such as Qwen/Qwen3-0.6B)"
        )


def load_tokenizer(name_or_path: str, **kwargs: Any) -> PreTrainedTokenizerBase:
    """Load a tokenizer by Hugging Face id or local directory, left-padded for generation."""
    from transformers import AutoTokenizer

    _check_local(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        # Many chat models ship no pad token; the EOS token is the usual stand-in (masked out anyway).
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str, *, dtype: str = "float32", device: str = "cpu", **kwargs: Any) -> PreTrainedModel:
    """Load a causal LM by Hugging Face id or local directory."""
    import torch
    from transformers import AutoModelForCausalLM

    _check_local(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=getattr(torch, dtype), **kwargs)
    return model.to(device)


def check_tokenizers_compatible(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> None:
    """Raise `TokenizerMismatch` unless both tokenizers map the same strings to the same ids.

    The teacher scores the *student's* sampled token ids, so the two vocabularies must be the same mapping
    (token string -> id) and share the EOS token; otherwise every teacher log-prob is of the wrong token.
    """
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    if s_vocab != t_vocab:
        only_s = sorted(set(s_vocab) - set(t_vocab))[:5]
        only_t = sorted(set(t_vocab) - set(s_vocab))[:5]
        moved = sorted(k for k in set(s_vocab) & set(t_vocab) if s_vocab[k] != t_vocab[k])[:5]
        raise TokenizerMismatch(
            "student and teacher tokenizers differ, so the teacher cannot score the student's tokens "
            f"(student vocab {len(s_vocab)}, teacher vocab {len(t_vocab)}; only in student: {only_s}, "
            f"only in teacher: {only_t}, different ids: {moved}). "
            "Fix: pick a teacher from the same model family (same tokenizer) as the student."
        )
    if student.eos_token_id != teacher.eos_token_id:
        raise TokenizerMismatch(
            f"student EOS id {student.eos_token_id} != teacher EOS id {teacher.eos_token_id}. "
            "Fix: use models that share the tokenizer's special tokens."
        )


def format_prompt(tokenizer: PreTrainedTokenizerBase, text: str, *, use_chat_template: bool = True) -> str:
    """The text the model sees: the chat template with a generation prompt when the tokenizer has one."""
    if use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def encode_prompts(
    tokenizer: PreTrainedTokenizerBase, texts: list[str], *, use_chat_template: bool = True
) -> list[list[int]]:
    """Token ids of each formatted prompt, with the tokenizer's BOS when it adds one (no padding)."""
    formatted = [format_prompt(tokenizer, t, use_chat_template=use_chat_template) for t in texts]
    # A chat template already writes BOS itself; adding special tokens again would duplicate it.
    add_special = not (use_chat_template and getattr(tokenizer, "chat_template", None))
    return [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in formatted]


def decode_completions(tokenizer: PreTrainedTokenizerBase, ids: Any, mask: Any) -> list[str]:
    """Completion texts from (B, T) token ids and their mask, special tokens (EOS) removed."""
    return [tokenizer.decode(row[m > 0].tolist(), skip_special_tokens=True) for row, m in zip(ids, mask, strict=True)]
