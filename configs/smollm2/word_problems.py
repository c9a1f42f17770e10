"""Arithmetic word problems as a JSONL dataset ({"prompt", "answer", "difficulty"} per line), graded with
math-verify by the `jsonl` task. Deterministic: the committed word-problems.jsonl is this script's output.

    python configs/smollm2/word_problems.py > configs/smollm2/word-problems.jsonl

difficulty 0: one addition or subtraction; 1: one multiplication or division; 2: two operations.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable

NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ravi", "Zoe", "Ken", "Ella"]
THINGS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "coins", "cards"]
SUFFIX = " Give the final answer as a number after ####."

Problem = tuple[str, int, int]  # prompt, answer, difficulty


def _add(r: random.Random, who: str, what: str) -> Problem:
    a, b = r.randint(2, 60), r.randint(2, 40)
    return f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?", a + b, 0


def _sub(r: random.Random, who: str, what: str) -> Problem:
    a = r.randint(10, 90)
    b = r.randint(1, a - 1)
    return f"{who} had {a} {what} and gave away {b}. How many {what} are left?", a - b, 0


def _mul(r: random.Random, who: str, what: str) -> Problem:
    a, b = r.randint(2, 12), r.randint(2, 12)
    return f"{who} buys {a} boxes with {b} {what} in each box. How many {what} is that in total?", a * b, 1


def _div(r: random.Random, who: str, what: str) -> Problem:
    k, each = r.randint(2, 9), r.randint(2, 12)
    return f"{who} shares {k * each} {what} equally among {k} friends. How many {what} does each friend get?", each, 1


def _two(r: random.Random, who: str, what: str) -> Problem:
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 20)
    prompt = f"{who} has {a} bags of {b} {what} and finds {c} more {what}. How many {what} does {who} have?"
    return prompt, a * b + c, 2


KINDS: list[Callable[[random.Random, str, str], Problem]] = [_add, _sub, _mul, _div, _two]


def problems(n: int = 400, seed: int = 0) -> list[dict[str, object]]:
    """`n` distinct problems, the kinds in turn."""
    r = random.Random(f"word-problems:{seed}")
    seen: set[str] = set()
    out: list[dict[str, object]] = []
    while len(out) < n:
        prompt, answer, difficulty = KINDS[len(out) % len(KINDS)](r, r.choice(NAMES), r.choice(THINGS))
        if prompt not in seen:
            seen.add(prompt)
            out.append({"prompt": prompt + SUFFIX, "answer": str(answer), "difficulty": difficulty})
    return out


if __name__ == "__main__":
    for row in problems():
        sys.stdout.write(json.dumps(row) + "\n")
