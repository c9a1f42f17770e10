"""Rollout engines against plain `model.generate`, side by side in one run.

Fixed config (as shared/bench/floor.py): student "small" from rlad_core.models (~3.2M parameters,
character-level Llama), 8 addition prompts ("12+34=") x 8 rollouts = 64 completions x 32 new tokens, fp32,
sampling with temperature 1 and top-p 1, torch.set_num_threads(2).

Variants (each: `--warmup` untimed calls, then `--reps` timed calls; the variants run interleaved, one call each
per round in a rotating order, so that load from other processes on a shared machine hits all of them alike):
  generate      plain `model.generate(do_sample=True, top_k=0, ...)` under inference_mode, as floor.py times it
  hf            HFEngine.generate (generate + output_scores + log-probs + masks)
  fast          FastEngine.generate

--no-eos passes an EOS id outside the vocabulary, so every variant generates exactly max_new_tokens tokens (the
random-init model can sample its EOS token, which would end a row early); the run checks that all did.

Usage:
  python bench/engine_bench.py --no-eos [--reps 7] [--warmup 2] [--threads 2] [--json docs/engine_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable

import torch

from rlad_core.models import (
    build_char_tokenizer,
    count_parameters,
    encode_prompts,
    load_model,
    save_tiny_model,
)
from rlad_core.rollout import FastEngine, HFEngine, SamplingParams

P, G, NEW_TOKENS = 8, 8, 32


def addition_prompts(n: int, seed: int = 0) -> list[str]:
    """n prompts like "12+34=" (two-digit operands), deterministic; the same generator as floor.py's."""
    rng = random.Random(seed)
    return [f"{rng.randint(10, 99)}+{rng.randint(10, 99)}=" for _ in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-eos", action="store_true", help="EOS id outside the vocabulary: always 32 new tokens")
    ap.add_argument("--json", default=None, help="write all timings here")
    args = ap.parse_args()
    if args.reps < 5 or args.warmup < 2:
        ap.error("use --reps >= 5 and --warmup >= 2")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = build_char_tokenizer()
    with tempfile.TemporaryDirectory() as d:
        model = load_model(str(save_tiny_model(d, "small", seed=args.seed))).eval()
    eos = model.config.vocab_size if args.no_eos else tok.eos_token_id
    texts = [t for t in addition_prompts(P, args.seed) for _ in range(G)]  # (P G,), grouped
    prompt_ids = encode_prompts(tok, texts)
    enc = tok(texts, return_tensors="pt", padding=True)
    params = SamplingParams(max_new_tokens=NEW_TOKENS, temperature=1.0, top_p=1.0)
    gen_kwargs = dict(
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        max_new_tokens=NEW_TOKENS,
        use_cache=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos,
    )

    def plain_generate() -> int:
        with torch.inference_mode():
            return model.generate(**enc, **gen_kwargs).shape[1] - enc["input_ids"].shape[1]

    engines = {
        "hf": HFEngine(model, eos_token_id=eos, pad_token_id=tok.pad_token_id),
        "fast": FastEngine(model, eos_token_id=eos, pad_token_id=tok.pad_token_id),
    }
    variants: dict[str, Callable[[], int]] = {"generate": plain_generate}
    for name, engine in engines.items():
        variants[name] = lambda engine=engine: engine.generate(prompt_ids, params).num_completion_tokens

    load_before = os.getloadavg()
    names = list(variants)
    times: dict[str, list[float]] = {n: [] for n in names}
    new_tokens: set[int] = set()
    for rnd in range(args.warmup + args.reps):
        for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
            t0 = time.perf_counter()
            new_tokens.add(variants[name]())
            if rnd >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    load_after = os.getloadavg()
    if new_tokens != {NEW_TOKENS}:
        raise SystemExit(f"variants generated {sorted(new_tokens)} new tokens, not {NEW_TOKENS}: rerun with --no-eos")

    base = statistics.median(times["generate"])
    results = {
        n: {
            "median_s": statistics.median(x),
            "min_s": min(x),
            "max_s": max(x),
            "speedup_vs_generate": base / statistics.median(x),
            "all_s": [round(v, 5) for v in x],
        }
        for n, x in times.items()
    }
    print(
        f"{P} prompts x {G} rollouts x {NEW_TOKENS} new tokens, fp32, {args.threads} threads, "
        f"{args.reps} reps after {args.warmup} warm-ups; load average {load_before[0]:.2f} -> {load_after[0]:.2f}"
    )
    print(f"{'variant':<14}{'median s':>10}{'min s':>9}{'max s':>9}{'vs generate':>13}")
    for n, r in results.items():
        print(f"{n:<14}{r['median_s']:>10.3f}{r['min_s']:>9.3f}{r['max_s']:>9.3f}{r['speedup_vs_generate']:>12.2f}x")
    if args.json:
        out = {
            "config": {
                "prompts": P,
                "group_size": G,
                "new_tokens": NEW_TOKENS,
                "dtype": "float32",
                "threads": args.threads,
                "reps": args.reps,
                "warmup": args.warmup,
                "no_eos": args.no_eos,
                "student_params": count_parameters(model),
            },
            "env": {
                "torch": torch.__version__,
                "transformers": __import__("transformers").__version__,
                "python": platform.python_version(),
                "cpu_count": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": load_after,
            },
            "results": results,
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
