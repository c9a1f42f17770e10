"""`HFEngine`: Hugging Face `model.generate`, the reference engine for any causal LM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlad_core.rollout.base import Rollouts, SamplingParams, eos_list, finish_rollouts, left_pad


class HFEngine:
    """`model.generate` with a KV cache: the reference engine, any causal LM."""

    def __init__(self, model: torch.nn.Module, *, eos_token_id: int | Sequence[int], pad_token_id: int) -> None:
        self.model = model
        self.eos_ids = eos_list(eos_token_id)
        self.pad_id = int(pad_token_id)

    def _generation_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        """Sampling arguments, plus neutral values for the processors a checkpoint's generation_config may turn on
        (HF fills every unset generate() argument from it), so that the sampled distribution is exactly
        softmax(logits / T) restricted to the top-p nucleus (greedy: argmax of the raw logits)."""
        kwargs: dict[str, Any] = {"repetition_penalty": 1.0, "no_repeat_ngram_size": 0, "min_length": 0}
        if params.greedy:
            return {**kwargs, "do_sample": False}
        kwargs.update(
            do_sample=True,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
        )
        if getattr(getattr(self.model, "generation_config", None), "min_p", None) is not None:
            kwargs["min_p"] = 0.0
        return kwargs

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollouts:
        if params.seeds is not None:
            raise ValueError(
                "engine 'hf' samples from the global random stream (model.generate); per-row streams "
                "(sampling_streams: per_prompt, every run on more than one process) need engine 'fast' or 'vllm'"
            )
        device = next(self.model.parameters()).device
        ids, mask = left_pad(prompt_ids, self.pad_id, device)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=params.max_new_tokens,
                    eos_token_id=self.eos_ids,
                    pad_token_id=self.pad_id,
                    use_cache=True,
                    output_scores=True,
                    return_dict_in_generate=True,
                    **self._generation_kwargs(params),
                )
        finally:
            self.model.train(was_training)
        tokens = out.sequences[:, ids.shape[1] :]  # (B, T)
        scores = torch.stack(out.scores, dim=1).float()  # (B, T, V): processed logits the tokens were drawn from
        logp = scores.log_softmax(dim=-1).gather(-1, tokens[..., None]).squeeze(-1)  # (B, T)
        eos = torch.tensor(self.eos_ids, device=device)
        return finish_rollouts(ids, mask, tokens, logp, eos, self.pad_id)

    def update_weights(self, model: torch.nn.Module) -> None:
        """Nothing to do: `generate` runs on the live module."""
