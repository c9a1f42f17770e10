"""How many different greedy answers each paper-mini student gives on its held-out set.

A student that ignores the puzzle answers every prompt of a size the same way (for Knights-and-Knaves often
"all knaves"): its accuracy is then the share of held-out puzzles with that solution, not reasoning. This reads
the finished runs of `rlad bench paper-mini` (their final checkpoints and specs) and prints, per run, the
number of distinct greedy answers, how many say "all knaves", and how many are correct. Knights-and-Knaves with
2 to 4 people has 4 + 8 + 16 = 28 possible answers.

    python bench/paper_mini_answers.py                       # runs/paper-mini/full, task kk
    python bench/paper_mini_answers.py --workdir runs/paper-mini/quick --task kk
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rlad_core.checkpoint import latest_checkpoint
from rlad_core.evaluate import generate_texts
from rlad_core.models import encode_prompts, load_model, load_tokenizer
from rlad_core.rollout import HFEngine, SamplingParams
from rlad_core.tasks import get_task


def answers(checkpoint: str, task, examples, max_new_tokens: int) -> list[str]:
    tok = load_tokenizer(checkpoint)
    engine = HFEngine(load_model(checkpoint), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    ids = encode_prompts(tok, [e.prompt for e in examples])
    return generate_texts(engine, tok, ids, SamplingParams(max_new_tokens, 0.0, 1.0), batch_size=128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path("runs/paper-mini/full"))
    ap.add_argument("--task", default="kk", help="the task key of the preset (kk, arith)")
    args = ap.parse_args()
    runs = sorted((args.workdir / "runs").glob(f"{args.task}-*/run.json"))
    if not runs:
        raise SystemExit(f"no finished runs of task {args.task!r} under {args.workdir / 'runs'}")
    print(f"{'run':24s} {'distinct':>8s} {'all-knave':>9s} {'correct':>7s}  (greedy, held-out)")
    starts_done: set[tuple[str, int]] = set()
    for path in runs:
        run = json.loads(path.read_text())
        spec = run["spec"]
        task = get_task(**spec["task"])
        examples = task.examples(spec["eval_size"], seed=spec["seed"], split="eval")
        rows = []
        if (spec["student"], spec["seed"]) not in starts_done:  # the common start and the teacher, once per seed
            starts_done.add((spec["student"], spec["seed"]))
            rows += [(f"start-s{spec['seed']}", spec["student"]), (f"teacher-s{spec['seed']}", spec["teacher"])]
        final = latest_checkpoint(path.parent / "checkpoints")
        if final is None:
            print(f"{path.parent.name:24s} no checkpoint under {path.parent / 'checkpoints'}")
            continue
        rows.append((path.parent.name, str(final)))
        for name, checkpoint in rows:
            texts = answers(checkpoint, task, examples, spec["max_new_tokens"])
            all_knave = sum("knight" not in t for t in texts)
            correct = sum(task.score(t, e).correct for t, e in zip(texts, examples, strict=True))
            print(f"{name:24s} {len(set(texts)):5d}/{len(texts)} {all_knave:9d} {correct:7d}", flush=True)


if __name__ == "__main__":
    main()
