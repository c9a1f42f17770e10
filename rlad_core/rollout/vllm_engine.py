"""`VLLMEngine`: vLLM on a GPU worker; vllm is imported when the engine is built, never at module import."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch

from rlad_core.rollout.base import Rollouts, SamplingParams, eos_list, finish_rollouts, left_pad

VLLM_MISSING = "engine 'vllm' needs the GPU worker requirements: pip install -r requirements/gpu.txt"


class VLLMEngine:
    """vLLM on a GPU worker (requirements/gpu.txt, a separate environment from the CPU set-up).

    vllm is imported in the constructor only, never at module import. Sampling log-probs: vLLM's V1 engine returns
    raw log-probs (before temperature / top-p) unless `logprobs_mode="processed_logprobs"`, which is passed by
    default; vLLM versions without that option (before 0.10.2) get a warning, and their `sample_logp` is then the
    raw model log-prob (equal to the sampling one only at temperature 1, top-p 1).
    """

    def __init__(
        self,
        model_path: str,
        *,
        eos_token_id: int | Sequence[int],
        pad_token_id: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        seed: int = 0,
        **llm_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise RuntimeError(VLLM_MISSING) from e
        self._vllm = vllm
        self.eos_ids = eos_list(eos_token_id)
        self.pad_id = int(pad_token_id)
        kwargs = {
            "model": model_path,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "seed": seed,
            **llm_kwargs,
        }
        try:
            self.llm = vllm.LLM(**{"logprobs_mode": "processed_logprobs", **kwargs})
        except TypeError:  # vLLM < 0.10.2 has no logprobs_mode
            warnings.warn(
                "this vLLM has no logprobs_mode: sample_logp will be raw model log-probs", RuntimeWarning, stacklevel=2
            )
            self.llm = vllm.LLM(**kwargs)

    def generate(self, prompt_ids: list[list[int]], params: SamplingParams) -> Rollouts:
        ids, mask = left_pad(prompt_ids, self.pad_id, torch.device("cpu"))

        def vllm_params(seed: int | None) -> Any:
            return self._vllm.SamplingParams(
                n=1,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                logprobs=0,
                stop_token_ids=self.eos_ids,
                detokenize=False,
                seed=seed,
            )

        # per-row streams: one request seed per row (vLLM's per-request generator)
        vp = [vllm_params(s) for s in params.seeds] if params.seeds is not None else vllm_params(None)
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], vp, use_tqdm=False)
        comps = [o.outputs[0] for o in outs]
        lengths = torch.tensor([len(c.token_ids) for c in comps])  # (B,)
        T = int(lengths.max())
        tokens = torch.full((len(comps), T), self.pad_id, dtype=torch.long)  # (B, T)
        logp = torch.zeros((len(comps), T), dtype=torch.float32)  # (B, T)
        for i, c in enumerate(comps):
            n = len(c.token_ids)
            tokens[i, :n] = torch.tensor(list(c.token_ids), dtype=torch.long)
            # logprobs=0: per position, a {token id: Logprob} dict holding the sampled token
            logp[i, :n] = torch.tensor([step[t].logprob for t, step in zip(c.token_ids, c.logprobs, strict=True)])
        rollouts = finish_rollouts(ids, mask, tokens, logp, torch.tensor(self.eos_ids), self.pad_id)
        # A row that ended without an EOS token in its output (a stop vLLM strips) is shorter than T.
        within = (torch.arange(T)[None, :] < lengths[:, None]).float()  # (B, T)
        rollouts.completion_mask = rollouts.completion_mask * within
        rollouts.sample_logp = rollouts.sample_logp * within
        return rollouts

    def update_weights(self, model: torch.nn.Module) -> None:
        """Load the trained weights into vLLM's model. Best effort and version-dependent: `LLM.apply_model`
        where it exists (recent vLLM; with V1 multiprocessing the weights are pickled to the engine process, so
        set VLLM_ENABLE_V1_MULTIPROCESSING=0 to share the process), else the V0 driver-worker path that TRL
        used. The prefix cache is reset, as its KV blocks were computed by the old weights."""
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        if hasattr(self.llm, "apply_model"):
            self.llm.apply_model(lambda m: m.load_weights(weights))
        else:
            self.llm.llm_engine.model_executor.driver_worker.model_runner.model.load_weights(weights)
        if hasattr(self.llm, "reset_prefix_cache"):
            self.llm.reset_prefix_cache()
