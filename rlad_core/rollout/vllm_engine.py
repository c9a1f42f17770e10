"""`VLLMEngine`: vLLM on a GPU worker (or a CPU); vllm is imported when the engine is built, never at module import."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from rlad_core.rollout.base import Rollouts, SamplingParams, eos_list, finish_rollouts, left_pad

VLLM_MISSING = "engine 'vllm' needs the GPU worker requirements: pip install -r requirements/gpu.txt"


class VLLMEngine:
    """vLLM (requirements/gpu.txt, or requirements/vllm-cpu.txt on a CPU; a separate environment from the CPU
    set-up), written against vLLM 0.32.0.

    vllm is imported in the constructor only, never at module import. Sampling log-probs: vLLM's V1 engine returns
    raw log-probs (before temperature / top-p) unless `logprobs_mode="processed_logprobs"`, which is passed, so
    `sample_logp` is the log-prob under the distribution sampled from (after temperature and top-p; greedy:
    log_softmax of the raw logits), as the other engines return it.

    `gpu_memory_utilization` is the share of the device memory vLLM takes for the weights and its KV cache (on a
    CPU, of the NUMA node's memory); `kv_cache_memory_bytes` (through `llm_kwargs`) or, on a CPU, the environment
    variable VLLM_CPU_KVCACHE_SPACE (GiB) set the KV cache size outright instead. Other `llm_kwargs` go to
    `vllm.LLM` as they are (`max_model_len`, `enforce_eager`, ...).
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
        # The engine core runs in this process (vLLM's default is a process of its own): `update_weights` hands it
        # the trained tensors directly, which vLLM's inter-process messages cannot carry (they decode tensors
        # only where a field is typed as one). vllm reads the variable when the engine is built; a caller's own
        # setting is kept.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._vllm = vllm
        self.eos_ids = eos_list(eos_token_id)
        self.pad_id = int(pad_token_id)
        with _keep_rng_state():  # in this process, vLLM seeds random, numpy and torch globally with `seed`
            self.llm = vllm.LLM(
                model=model_path,
                dtype=dtype,
                gpu_memory_utilization=gpu_memory_utilization,
                seed=seed,
                logprobs_mode="processed_logprobs",
                **llm_kwargs,
            )

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
        """Load the trained weights (Hugging Face names, as `model.state_dict()` has them) into vLLM's model.

        Through the worker's `reload_weights`, called by name with `collective_rpc`: vLLM's in-place reload
        restores the parameters' weight loaders (the CPU backend and quantized layers drop them once the loaded
        weights are processed, so calling the model's `load_weights` directly fails there), runs the model's own
        `load_weights` (which fuses q/k/v and gate/up and skips a tied lm_head) and processes the weights again.
        The tensors are handed over in this process, so the engine core must run here (the constructor's
        VLLM_ENABLE_V1_MULTIPROCESSING=0). The prefix cache is reset after, as its KV blocks were computed by
        the old weights."""
        core = getattr(self.llm.llm_engine, "engine_core", None)
        if type(core).__name__ != "InprocClient":
            raise RuntimeError(
                "VLLMEngine.update_weights needs vLLM's engine core in this process, and it runs in its own "
                f"({type(core).__name__}); fix: unset VLLM_ENABLE_V1_MULTIPROCESSING or set it to 0"
            )
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()


@contextmanager
def _keep_rng_state() -> Iterator[None]:
    """Restore Python's, numpy's and torch's global random state (CPU and every CUDA device) on exit."""
    import numpy as np

    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
