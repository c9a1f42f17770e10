"""Multi-digit addition and multiplication with a compact, column-wise worked answer, for tiny models.

Levels (difficulty = level):

    1  1-digit + 1-digit addition     operands 0..9         `3+4=`
    2  2-digit + 2-digit addition     operands 10..99       `37+45=`
    3  3-digit + 3-digit addition     operands 100..999     `357+645=`
    4  2-digit x 1-digit multiplication  10..99 x 2..9      `47*6=`
    5  2-digit x 2-digit multiplication  10..99 x 10..99    `47*36=`

The prompt is the bare expression followed by `=`. The completion works right to left, one `;`-separated step per
column, and ends with the final answer marker `#` followed by the result. Every character is in
`string.printable`.

Addition -- per column `a+b=s`, with `+1` appended to the column's digits when the previous column carried
(the column sum `s` shows the carry as its tens digit); the last column's sum is written in full:

    37+45=   ->   7+5=12;3+4+1=8;#82
    3+4=     ->   3+4=7;#7

Multiplication by one digit d -- per digit of the multiplicand `a*d=v`, with `+c` for the previous carry c:

    47*6=    ->   7*6=42;4*6+4=28;#282

Multiplication by a two-digit number -- one such block per digit of the multiplier (right to left), each closed by
`=P` with the partial product P already shifted (a trailing 0 for the tens digit), then the sum of the partial
products in one step:

    47*36=   ->   7*6=42;4*6+4=28;=282;7*3=21;4*3+2=14;=1410;282+1410=1692;#1692

The longest completion (level 5, 99*99) is 62 characters, so it fits a 64-token budget of a character-level model.

Scoring: the final answer is the number after `#` (spaces around it tolerated, e.g. `# 82`). *formatted* iff at
least one `#<number>` marker is present and all markers state the same number; two different final answers are
not formatted. *correct* iff formatted and the number equals the true result. Reward: `CORRECT_REWARD` = 1.0
when correct, `FORMAT_REWARD` = 0.1 when formatted but wrong, 0.0 otherwise.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from rlad_core.tasks.base import EVAL_SHARE, Example, Score, Split, check_request, sample_partitioned

CORRECT_REWARD: float = 1.0
FORMAT_REWARD: float = 0.1

#: level -> (operator, range of the first operand, range of the second operand), ranges inclusive.
LEVELS: dict[int, tuple[str, tuple[int, int], tuple[int, int]]] = {
    1: ("+", (0, 9), (0, 9)),
    2: ("+", (10, 99), (10, 99)),
    3: ("+", (100, 999), (100, 999)),
    4: ("*", (10, 99), (2, 9)),
    5: ("*", (10, 99), (10, 99)),
}

_PROMPT = re.compile(r"^(\d+)([+*])(\d+)=$")
_FINAL = re.compile(r"#[ \t]*(-?\d+)")


def worked_solution(a: int, op: str, b: int) -> str:
    """The reference completion for `a op b` (non-negative integers) in the documented step format."""
    if a < 0 or b < 0:
        raise ValueError(f"operands must be non-negative, got {a} and {b}")
    if op == "+":
        steps = _addition_steps(a, b)
        result = a + b
    elif op == "*":
        steps = _multiplication_steps(a, b)
        result = a * b
    else:
        raise ValueError(f"unknown operator {op!r}; expected '+' or '*'")
    return ";".join([*steps, f"#{result}"])


def _addition_steps(a: int, b: int) -> list[str]:
    da, db = str(a), str(b)
    width = max(len(da), len(db))
    da, db = da.zfill(width), db.zfill(width)  # a shorter operand contributes 0 in its missing columns
    steps, carry = [], 0
    for x, y in zip(reversed(da), reversed(db), strict=True):
        column = int(x) + int(y) + carry
        steps.append(f"{x}+{y}{'+1' if carry else ''}={column}")
        carry = column // 10
    return steps


def _single_digit_product_steps(a: int, d: int) -> list[str]:
    steps, carry = [], 0
    for x in reversed(str(a)):
        value = int(x) * d + carry
        steps.append(f"{x}*{d}{f'+{carry}' if carry else ''}={value}")
        carry = value // 10
    return steps


def _multiplication_steps(a: int, b: int) -> list[str]:
    if b < 10:
        return _single_digit_product_steps(a, b)
    steps, partials = [], []
    for shift, d in enumerate(reversed(str(b))):
        partial = a * int(d) * 10**shift
        steps += [*_single_digit_product_steps(a, int(d)), f"={partial}"]
        partials.append(partial)
    steps.append(f"{'+'.join(map(str, partials))}={sum(partials)}")
    return steps


def final_answer(completion: str) -> int | None:
    """The number after the `#` marker(s), or None when there is none or the markers disagree."""
    values = {int(v) for v in _FINAL.findall(completion)}
    return values.pop() if len(values) == 1 else None


class ArithmeticTask:
    """Step-by-step addition and multiplication; difficulty = level (see the module docstring for the levels).

    Options:
        levels: levels to generate, each in 1..5 (default 1, 2, 3), assigned round-robin.
        correct_reward: reward of a correct final answer (default 1.0).
        format_reward: reward of a parseable but wrong final answer (default 0.1); anything else scores 0.0.
        eval_share: share of the prompt space reserved for the eval split (default `base.EVAL_SHARE`).
    """

    name = "arithmetic"

    def __init__(
        self,
        levels: Sequence[int] = (1, 2, 3),
        *,
        correct_reward: float = CORRECT_REWARD,
        format_reward: float = FORMAT_REWARD,
        eval_share: float = EVAL_SHARE,
    ) -> None:
        chosen = sorted(set(levels))
        if not chosen or any(level not in LEVELS for level in chosen):
            raise ValueError(
                f"levels={list(levels)} must be a non-empty list of levels in {sorted(LEVELS)}; e.g. [1, 2]"
            )
        if not 0.0 < eval_share < 1.0:
            raise ValueError(f"eval_share={eval_share} must be strictly between 0 and 1")
        self.levels: tuple[int, ...] = tuple(chosen)
        self.correct_reward, self.format_reward = correct_reward, format_reward
        self.eval_share = eval_share

    @property
    def difficulties(self) -> tuple[int, ...]:
        return self.levels

    def examples(self, n: int, *, seed: int, split: Split = "train") -> list[Example]:
        """`n` problems, levels round-robin; train and eval use disjoint prompt partitions."""
        check_request(n, split)
        return sample_partitioned(
            n,
            task=self.name,
            seed=seed,
            split=split,
            difficulties=self.levels,
            make=self._problem,
            eval_share=self.eval_share,
        )

    def score(self, completion: str, example: Example) -> Score:
        predicted = final_answer(completion)
        if predicted is None:
            return Score(reward=0.0, correct=False, formatted=False)
        correct = predicted == int(example.answer)
        return Score(reward=self.correct_reward if correct else self.format_reward, correct=correct, formatted=True)

    def solution(self, example: Example) -> str:
        a, op, b = _operands(example.prompt)
        return worked_solution(a, op, b)

    def _problem(self, rng: random.Random, level: int) -> Example:
        op, (lo_a, hi_a), (lo_b, hi_b) = LEVELS[level]
        a, b = rng.randint(lo_a, hi_a), rng.randint(lo_b, hi_b)
        result = a + b if op == "+" else a * b
        return Example(prompt=f"{a}{op}{b}=", answer=str(result), difficulty=level, meta={"a": a, "op": op, "b": b})


def _operands(prompt: str) -> tuple[int, str, int]:
    match = _PROMPT.match(prompt.strip())
    if match is None:
        raise ValueError(f"prompt {prompt!r} is not an arithmetic prompt like '37+45='")
    return int(match[1]), match[2], int(match[3])
