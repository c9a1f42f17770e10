"""Knights-and-Knaves logic puzzles (the Logic-RL task; Xie et al. 2025), sized for tiny models.

Each of n people (n in 2..8, difficulty = n) is a knight, who always tells the truth, or a knave, who always
lies, and each makes one statement. The generator draws a hidden role assignment, draws statements that are
consistent with it, and resamples statements until a brute force over all 2^n assignments finds exactly one
consistent assignment. Every character is in `string.printable` (the vocabulary of the character-level models).

Prompt (no chat template; names are short and distinct):

    Knights always tell the truth and knaves always lie.
    Ann says: "Bob is a knave and Ann is a knight."
    Bob says: "Ann and Bob are different types."
    Who is a knight and who is a knave? End with: ANSWER: Name=role, ...

Statement kinds (`STATEMENT_KINDS`): "knight" (`X is a knight`), "knave" (`X is a knave`), "and"
(`A and B`), "or" (`A or B`), "if" (`If A then B`) -- where A, B are `X is a knight/knave` claims about two
different people -- "same" (`X and Y are the same type`) and "different" (`X and Y are different types`).

Reference completion (`solution`): one check line per speaker, in prompt order, restating the claim compactly
(`&` and, `|` or, `=>` if-then, `==` same type, `!=` different types) and its truth value under the answer,
then the answer line:

    Ann=knight; Bob=knave & Ann=knight: true
    Bob=knave; Ann!=Bob: false
    ANSWER: Ann=knight, Bob=knave

Compact prompts (`prompt_style="compact"`, a documented option of ours for character-level tiny models, which
the English prompt's length puts out of reach on a CPU): the same puzzles, names A, B, C, ... in order and each
statement in the notation of the check lines, about a fifth of the characters:

    Knights tell the truth, knaves lie.
    A: B=knave & A=knight
    B: A!=B
    ANSWER?

Answer format: a line starting with `ANSWER:` followed by `Name=role` pairs, role `knight` or `knave`, for
every person exactly once. The verifier tolerates whitespace, any order of people, any letter case of names,
roles and the marker, separators `,` `;` or spaces, and a trailing period. The answer counts as *formatted*
(parseable) only when every `ANSWER:` line names every person exactly once with a valid role and all such lines
agree; a person listed twice (even with the same role), a missing person, an unknown name, an unknown role or
two `ANSWER:` lines that disagree make it unparseable.

Reward (Logic-RL): format term `FORMAT_REWARD` = +1 if formatted else `FORMAT_PENALTY` = -1, plus answer term
`CORRECT_REWARD` = +2 if every role is right, `WRONG_PENALTY` = -1.5 if parseable but wrong,
`UNPARSEABLE_PENALTY` = -2 if no answer can be parsed. Here formatted and parseable coincide, so a completion
scores 3.0 (correct), -0.5 (parseable but wrong) or -3.0 (unparseable).
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Sequence
from typing import Any

from rlad_core.tasks.base import EVAL_SHARE, Example, Score, Split, check_request, sample_partitioned

FORMAT_REWARD: float = 1.0
FORMAT_PENALTY: float = -1.0
CORRECT_REWARD: float = 2.0
WRONG_PENALTY: float = -1.5
UNPARSEABLE_PENALTY: float = -2.0

MIN_PEOPLE, MAX_PEOPLE = 2, 8
STATEMENT_KINDS: tuple[str, ...] = ("knight", "knave", "and", "or", "if", "same", "different")

#: Names in compact prompts: one letter each, in order.
COMPACT_NAMES: tuple[str, ...] = tuple("ABCDEFGH")
PROMPT_STYLES: tuple[str, ...] = ("english", "compact")
COMPACT_HEADER = "Knights tell the truth, knaves lie."
COMPACT_QUESTION = "ANSWER?"

#: Short, distinct, ASCII names; none is a prefix of another, none is an English word used in the prompts.
NAMES: tuple[str, ...] = (
    "Ann", "Bob", "Cal", "Dan", "Eve", "Fay", "Gus", "Hal", "Ivy", "Jon", "Kim", "Lou",
    "Max", "Ned", "Oli", "Pat", "Ray", "Sue", "Tom", "Uma", "Val", "Wes", "Zoe",
)  # fmt: skip

HEADER = "Knights always tell the truth and knaves always lie."
QUESTION = "Who is a knight and who is a knave? End with: ANSWER: Name=role, ..."

# Statements are nested lists (JSON-serialisable, stored in Example.meta["statements"]) over person indices:
#   ["is", p, knight]               p is a knight (knight=True) / a knave (knight=False)
#   ["and"|"or"|"if", atom, atom]   connective of two "is" atoms about different people
#   ["same"|"different", p, q]      p and q have the same / different roles
Statement = list[Any]

_ANSWER_LINE = re.compile(r"^[ \t]*answer[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)
_PAIR = re.compile(r"([A-Za-z]+)[ \t]*=[ \t]*([A-Za-z]+)")
_SEPARATORS = re.compile(r"[\s,;.]*")
_ROLES = {"knight": True, "knave": False}

_MAX_RESTARTS = 1_000  # fresh hidden assignments tried before giving up on a puzzle
_MAX_STATEMENT_DRAWS = 200  # draws for one statement consistent with the hidden assignment


def role(knight: bool) -> str:
    """The role word for a truth value: knights tell the truth."""
    return "knight" if knight else "knave"


def format_answer(solution: Sequence[tuple[str, bool]]) -> str:
    """The canonical answer string, e.g. `Ann=knight, Bob=knave` (people in prompt order)."""
    return ", ".join(f"{name}={role(knight)}" for name, knight in solution)


def parse_answer(completion: str, names: Sequence[str]) -> dict[str, bool] | None:
    """The role assignment the completion's `ANSWER:` line(s) state, or None when it is missing or ambiguous.

    Names are matched case-insensitively and returned in their canonical spelling; see the module docstring for
    what is tolerated and what is rejected.
    """
    canonical = {name.lower(): name for name in names}
    assignments = set()
    for content in _ANSWER_LINE.findall(completion):
        assignment = _parse_assignment(content, canonical)
        if assignment is None:
            return None
        assignments.add(frozenset(assignment.items()))
    if len(assignments) != 1:  # no answer line, or answer lines that disagree
        return None
    return dict(assignments.pop())


def _parse_assignment(content: str, canonical: dict[str, str]) -> dict[str, bool] | None:
    if _SEPARATORS.fullmatch(_PAIR.sub("", content)) is None:  # stray text, e.g. `Ann=knight or knave`
        return None
    assignment: dict[str, bool] = {}
    for raw_name, raw_role in _PAIR.findall(content):
        name, knight = canonical.get(raw_name.lower()), _ROLES.get(raw_role.lower())
        if name is None or knight is None or name in assignment:
            return None
        assignment[name] = knight
    return assignment if len(assignment) == len(canonical) else None


class KnightsKnavesTask:
    """Knights-and-Knaves puzzles with exactly one solution; difficulty = number of people.

    Options:
        n_people: puzzle sizes to generate, each in 2..8 (default 2, 3, 4, 5), assigned round-robin.
        statement_kinds: which of `STATEMENT_KINDS` statements may use (default all).
        reasoning: whether `solution()` includes the per-speaker check lines (default True) or only the answer.
        prompt_style: "english" (default, the Logic-RL wording) or "compact" (see the module docstring).
        format_reward, format_penalty, correct_reward, wrong_penalty, unparseable_penalty: the reward terms
            (defaults: Logic-RL's +1 / -1 and +2 / -1.5 / -2, see the module docstring).
        eval_share: share of the prompt space reserved for the eval split (default `base.EVAL_SHARE`).
    """

    name = "knights_knaves"

    def __init__(
        self,
        n_people: Sequence[int] = (2, 3, 4, 5),
        *,
        statement_kinds: Sequence[str] = STATEMENT_KINDS,
        reasoning: bool = True,
        prompt_style: str = "english",
        format_reward: float = FORMAT_REWARD,
        format_penalty: float = FORMAT_PENALTY,
        correct_reward: float = CORRECT_REWARD,
        wrong_penalty: float = WRONG_PENALTY,
        unparseable_penalty: float = UNPARSEABLE_PENALTY,
        eval_share: float = EVAL_SHARE,
    ) -> None:
        sizes = sorted(set(n_people))
        if not sizes or any(not isinstance(n, int) or not MIN_PEOPLE <= n <= MAX_PEOPLE for n in sizes):
            raise ValueError(
                f"n_people={list(n_people)} must be a non-empty list of sizes in "
                f"{MIN_PEOPLE}..{MAX_PEOPLE}; e.g. [2, 3, 4, 5]"
            )
        kinds = tuple(dict.fromkeys(statement_kinds))
        unknown = [k for k in kinds if k not in STATEMENT_KINDS]
        if not kinds or unknown:
            raise ValueError(f"statement_kinds={list(statement_kinds)} must be a non-empty subset of {STATEMENT_KINDS}")
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style={prompt_style!r} must be one of {PROMPT_STYLES}")
        if not 0.0 < eval_share < 1.0:
            raise ValueError(f"eval_share={eval_share} must be strictly between 0 and 1")
        self.n_people: tuple[int, ...] = tuple(sizes)
        self.statement_kinds = kinds
        self.reasoning = reasoning
        self.prompt_style = prompt_style
        self.format_reward, self.format_penalty = format_reward, format_penalty
        self.correct_reward, self.wrong_penalty, self.unparseable_penalty = (
            correct_reward,
            wrong_penalty,
            unparseable_penalty,
        )
        self.eval_share = eval_share

    @property
    def difficulties(self) -> tuple[int, ...]:
        return self.n_people

    @property
    def max_reward(self) -> float:
        """The reward of a correct, formatted completion."""
        return self.format_reward + self.correct_reward

    def examples(self, n: int, *, seed: int, split: Split = "train") -> list[Example]:
        """`n` puzzles, sizes round-robin over `n_people`; train and eval use disjoint prompt partitions."""
        check_request(n, split)
        return sample_partitioned(
            n,
            task=self.name,
            seed=seed,
            split=split,
            difficulties=self.n_people,
            make=self._puzzle,
            eval_share=self.eval_share,
        )

    def score(self, completion: str, example: Example) -> Score:
        gold = _gold(example)
        predicted = parse_answer(completion, list(gold))
        if predicted is None:
            return Score(reward=self.format_penalty + self.unparseable_penalty, correct=False, formatted=False)
        correct = predicted == gold
        answer_term = self.correct_reward if correct else self.wrong_penalty
        return Score(reward=self.format_reward + answer_term, correct=correct, formatted=True)

    def solution(self, example: Example) -> str:
        """Per-speaker check lines (when `reasoning` and the example carries its statements) + the answer line."""
        answer_line = f"ANSWER: {example.answer}"
        statements = example.meta.get("statements")
        names = example.meta.get("names")
        if not self.reasoning or statements is None or names is None:
            return answer_line
        truth = _gold(example)
        knights = [truth[name] for name in names]
        lines = [
            f"{names[i]}={role(knights[i])}; {_compact(s, names)}: {'true' if _holds(s, knights) else 'false'}"
            for i, s in enumerate(statements)
        ]
        return "\n".join([*lines, answer_line])

    # --- generation ----------------------------------------------------------------------------------------

    def _puzzle(self, rng: random.Random, n: int) -> Example:
        compact = self.prompt_style == "compact"
        names = list(COMPACT_NAMES[:n]) if compact else rng.sample(NAMES, n)
        target, statements = self._unique_statements(rng, n)
        knights = [bool(target >> i & 1) for i in range(n)]
        if compact:
            lines = [
                COMPACT_HEADER,
                *(f"{names[i]}: {_compact(s, names)}" for i, s in enumerate(statements)),
                COMPACT_QUESTION,
            ]
        else:
            lines = [
                HEADER,
                *(f'{names[i]} says: "{_capitalize(_english(s, names))}."' for i, s in enumerate(statements)),
                QUESTION,
            ]
        return Example(
            prompt="\n".join(lines),
            answer=format_answer(list(zip(names, knights, strict=True))),
            difficulty=n,
            meta={
                "names": names,
                "solution": {nm: role(k) for nm, k in zip(names, knights, strict=True)},
                "statements": statements,
            },
        )

    def _unique_statements(self, rng: random.Random, n: int) -> tuple[int, list[Statement]]:
        """A hidden assignment (bit i set = person i is a knight) and statements it alone satisfies."""
        for _ in range(_MAX_RESTARTS):
            target = rng.getrandbits(n)
            statements = [self._consistent_statement(rng, n, speaker, target) for speaker in range(n)]
            if any(s is None for s in statements):
                continue  # the enabled kinds cannot express a truth this assignment needs; try another one
            tables = [_truth_table(s, n) for s in statements]
            # Local search: replacing one statement at a time keeps the target consistent while ruling out others.
            for _ in range(40 * n):
                if _consistent_assignments(tables, n).bit_count() == 1:
                    return target, statements  # type: ignore[return-value]
                speaker = rng.randrange(n)
                statements[speaker] = self._consistent_statement(rng, n, speaker, target)
                tables[speaker] = _truth_table(statements[speaker], n)
        raise RuntimeError(
            f"could not generate a {n}-person puzzle with a unique solution using statement kinds "
            f"{self.statement_kinds}; enable more kinds"
        )

    def _consistent_statement(self, rng: random.Random, n: int, speaker: int, target: int) -> Statement | None:
        """A random statement whose truth under `target` matches the speaker's role (knights tell the truth)."""
        for _ in range(_MAX_STATEMENT_DRAWS):
            statement = self._random_statement(rng, n, speaker)
            if (_truth_table(statement, n) >> target & 1) == (target >> speaker & 1):
                return statement
        return None

    def _random_statement(self, rng: random.Random, n: int, speaker: int) -> Statement:
        kind = rng.choice(self.statement_kinds)
        if kind in ("knight", "knave"):
            # About someone else: "I am a knight" says nothing and "I am a knave" is a paradox.
            other = rng.choice([p for p in range(n) if p != speaker])
            return ["is", other, kind == "knight"]
        p, q = rng.sample(range(n), 2)
        if kind in ("same", "different"):
            return [kind, p, q]
        return [kind, ["is", p, rng.random() < 0.5], ["is", q, rng.random() < 0.5]]


def _gold(example: Example) -> dict[str, bool]:
    """The example's solution, read from its canonical answer string (so scoring does not depend on meta)."""
    names = [name for name, _ in _PAIR.findall(example.answer)]
    gold = _parse_assignment(example.answer, {name.lower(): name for name in names})
    if gold is None:
        raise ValueError(
            f"example answer {example.answer!r} is not a Knights-and-Knaves answer like 'Ann=knight, Bob=knave'"
        )
    return gold


# --- statement semantics ---------------------------------------------------------------------------------------


@functools.cache
def _knight_masks(n: int) -> tuple[tuple[int, ...], int]:
    """Bit a of mask i is set iff person i is a knight in assignment a; plus the all-assignments mask."""
    assignments = range(2**n)
    masks = tuple(sum(1 << a for a in assignments if a >> i & 1) for i in range(n))
    return masks, (1 << 2**n) - 1


def _truth_table(statement: Statement, n: int) -> int:
    """The statement's truth over all 2^n assignments at once, as a bitmask (bit a = true in assignment a)."""
    knight, full = _knight_masks(n)
    kind = statement[0]
    if kind == "is":
        _, p, is_knight = statement
        return knight[p] if is_knight else full ^ knight[p]
    if kind in ("same", "different"):
        _, p, q = statement
        differ = knight[p] ^ knight[q]
        return differ if kind == "different" else full ^ differ
    a, b = _truth_table(statement[1], n), _truth_table(statement[2], n)
    if kind == "and":
        return a & b
    if kind == "or":
        return a | b
    if kind == "if":
        return (full ^ a) | b
    raise ValueError(f"unknown statement kind {kind!r}")


def _consistent_assignments(tables: Sequence[int], n: int) -> int:
    """Bitmask of the assignments in which every speaker's statement is true exactly when the speaker is a knight."""
    knight, full = _knight_masks(n)
    consistent = full
    for speaker, table in enumerate(tables):
        consistent &= full ^ (knight[speaker] ^ table)
    return consistent


def _holds(statement: Statement, knights: Sequence[bool]) -> bool:
    assignment = sum(1 << i for i, k in enumerate(knights) if k)
    return bool(_truth_table(statement, len(knights)) >> assignment & 1)


# --- rendering ------------------------------------------------------------------------------------------------


def _english(statement: Statement, names: Sequence[str]) -> str:
    kind = statement[0]
    if kind == "is":
        return f"{names[statement[1]]} is a {role(statement[2])}"
    if kind == "same":
        return f"{names[statement[1]]} and {names[statement[2]]} are the same type"
    if kind == "different":
        return f"{names[statement[1]]} and {names[statement[2]]} are different types"
    a, b = _english(statement[1], names), _english(statement[2], names)
    return f"if {a} then {b}" if kind == "if" else f"{a} {kind} {b}"


def _compact(statement: Statement, names: Sequence[str]) -> str:
    kind = statement[0]
    if kind == "is":
        return f"{names[statement[1]]}={role(statement[2])}"
    if kind in ("same", "different"):
        return f"{names[statement[1]]}{'==' if kind == 'same' else '!='}{names[statement[2]]}"
    connective = {"and": "&", "or": "|", "if": "=>"}[kind]
    return f"{_compact(statement[1], names)} {connective} {_compact(statement[2], names)}"


def _capitalize(text: str) -> str:
    return text[:1].upper() + text[1:]
