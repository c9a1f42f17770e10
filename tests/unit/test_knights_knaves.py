"""Knights-and-Knaves: puzzles have exactly one solution (re-checked by an independent brute force over the
prompt text), the generator is deterministic with disjoint splits, and the verifier's rewards match Logic-RL."""

from __future__ import annotations

import itertools
import re
import string

import pytest

from rlad_core.tasks.base import Example
from rlad_core.tasks.knights_knaves import STATEMENT_KINDS, KnightsKnavesTask

# --- an evaluator written from the prompt text alone, independent of the generator's statement encoding -------

_SAYS = re.compile(r'^(\w+) says: "(.*)\."$')
_ATOM = r"(\w+) is a (knight|knave)"
_CLAIMS = [
    ("if", re.compile(rf"^If {_ATOM} then {_ATOM}$")),
    ("and", re.compile(rf"^{_ATOM} and {_ATOM}$")),
    ("or", re.compile(rf"^{_ATOM} or {_ATOM}$")),
    ("same", re.compile(r"^(\w+) and (\w+) are the same type$")),
    ("different", re.compile(r"^(\w+) and (\w+) are different types$")),
    ("atom", re.compile(rf"^{_ATOM}$")),
]


def parse_prompt(prompt: str) -> list[tuple[str, str, tuple[str, ...]]]:
    """(speaker, kind, captured groups) per statement line; fails the test on any unrecognised statement."""
    statements = []
    for line in prompt.splitlines():
        said = _SAYS.match(line)
        if not said:
            continue
        speaker, text = said.groups()
        for kind, pattern in _CLAIMS:
            m = pattern.match(text)
            if m:
                groups = m.groups()
                if kind == "atom":
                    kind = groups[1]  # "knight" or "knave"
                statements.append((speaker, kind, groups))
                break
        else:
            pytest.fail(f"unrecognised statement: {text!r}")
    return statements


def claim_holds(kind: str, groups: tuple[str, ...], knight: dict[str, bool]) -> bool:
    def atom(name: str, role: str) -> bool:
        return knight[name] == (role == "knight")

    if kind in ("knight", "knave"):
        return atom(*groups)
    if kind == "same":
        return knight[groups[0]] == knight[groups[1]]
    if kind == "different":
        return knight[groups[0]] != knight[groups[1]]
    a, b = atom(groups[0], groups[1]), atom(groups[2], groups[3])
    return {"and": a and b, "or": a or b, "if": (not a) or b}[kind]


def consistent_assignments(prompt: str) -> list[dict[str, bool]]:
    statements = parse_prompt(prompt)
    people = [speaker for speaker, _, _ in statements]
    found = []
    for roles in itertools.product([True, False], repeat=len(people)):
        knight = dict(zip(people, roles, strict=True))
        if all(claim_holds(kind, groups, knight) == knight[speaker] for speaker, kind, groups in statements):
            found.append(knight)
    return found


def answer_dict(answer: str) -> dict[str, bool]:
    return {name: role == "knight" for name, role in re.findall(r"(\w+)=(knight|knave)", answer)}


# --- generation ------------------------------------------------------------------------------------------------

ALL_SIZES = KnightsKnavesTask(n_people=range(2, 9))


@pytest.mark.parametrize("split", ["train", "eval"])
def test_every_puzzle_has_exactly_the_claimed_solution(split: str) -> None:
    for seed in range(4):
        for ex in ALL_SIZES.examples(7 * 5, seed=seed, split=split):
            solutions = consistent_assignments(ex.prompt)
            assert len(solutions) == 1, ex.prompt
            assert solutions[0] == answer_dict(ex.answer)
            assert len(solutions[0]) == ex.difficulty


def test_sizes_are_round_robin_and_names_distinct() -> None:
    examples = ALL_SIZES.examples(21, seed=5)
    assert [e.difficulty for e in examples] == list(range(2, 9)) * 3
    assert ALL_SIZES.difficulties == tuple(range(2, 9))
    for e in examples:
        people = [speaker for speaker, _, _ in parse_prompt(e.prompt)]
        assert len(people) == len(set(people)) == e.difficulty


def test_every_statement_kind_appears() -> None:
    kinds = {kind for e in ALL_SIZES.examples(100, seed=0) for _, kind, _ in parse_prompt(e.prompt)}
    assert kinds == set(STATEMENT_KINDS)


def test_restricted_statement_kinds_are_respected() -> None:
    task = KnightsKnavesTask(n_people=(3, 4), statement_kinds=("knight", "knave", "or"))
    kinds = {kind for e in task.examples(20, seed=1) for _, kind, _ in parse_prompt(e.prompt)}
    assert kinds <= {"knight", "knave", "or"} and "or" in kinds


def test_deterministic_per_seed_and_prefix_stable() -> None:
    task = KnightsKnavesTask()
    assert task.examples(12, seed=7) == task.examples(12, seed=7)
    assert task.examples(12, seed=7)[:5] == task.examples(5, seed=7)
    assert task.examples(12, seed=7) != task.examples(12, seed=8)


def test_train_and_eval_never_share_a_prompt() -> None:
    task = KnightsKnavesTask(n_people=(2, 3))  # the smallest puzzle spaces, where collisions are likeliest
    train = {e.prompt for seed in (0, 1) for e in task.examples(1500, seed=seed, split="train")}
    evals = {e.prompt for seed in (0, 1) for e in task.examples(150, seed=seed, split="eval")}
    assert len(evals) > 100
    assert not train & evals


def test_all_characters_printable() -> None:
    task = KnightsKnavesTask(n_people=range(2, 9))
    for e in task.examples(30, seed=2):
        text = e.prompt + e.answer + task.solution(e)
        assert set(text) <= set(string.printable)


# --- solution and verifier ------------------------------------------------------------------------------------


def test_solution_scores_correct_with_max_reward() -> None:
    task = KnightsKnavesTask(n_people=range(2, 9))
    for e in task.examples(70, seed=3):
        solution = task.solution(e)
        assert solution.splitlines()[-1] == f"ANSWER: {e.answer}"
        score = task.score(solution, e)
        assert score.correct and score.formatted
        assert score.reward == pytest.approx(3.0) == task.max_reward


def test_solution_check_lines_state_each_speakers_truth() -> None:
    task = KnightsKnavesTask(n_people=(4,))
    e = task.examples(1, seed=0)[0]
    truth = answer_dict(e.answer)
    check_lines = task.solution(e).splitlines()[:-1]
    assert len(check_lines) == 4
    for line, (speaker, _, _) in zip(check_lines, parse_prompt(e.prompt), strict=True):
        role = "knight" if truth[speaker] else "knave"
        assert line.startswith(f"{speaker}={role}; ")
        assert line.endswith(": true" if truth[speaker] else ": false")
    assert KnightsKnavesTask(reasoning=False).solution(e) == f"ANSWER: {e.answer}"


def test_solution_of_a_known_puzzle() -> None:
    meta = {"names": ["Ann", "Bob"], "statements": [["is", 1, False], ["different", 0, 1]]}
    e = Example(prompt="", answer="Ann=knave, Bob=knight", difficulty=2, meta=meta)
    assert KnightsKnavesTask().solution(e) == (
        "Ann=knave; Bob=knave: false\nBob=knight; Ann!=Bob: true\nANSWER: Ann=knave, Bob=knight"
    )
    meta = {
        "names": ["Ann", "Bob", "Cal", "Dan"],
        "statements": [
            ["and", ["is", 1, False], ["is", 2, True]],
            ["or", ["is", 0, False], ["is", 3, True]],
            ["if", ["is", 1, True], ["is", 3, True]],
            ["same", 0, 2],
        ],
    }
    e = Example(prompt="", answer="Ann=knight, Bob=knave, Cal=knight, Dan=knave", difficulty=4, meta=meta)
    assert KnightsKnavesTask().solution(e).splitlines()[:4] == [
        "Ann=knight; Bob=knave & Cal=knight: true",
        "Bob=knave; Ann=knave | Dan=knight: false",
        "Cal=knight; Bob=knight => Dan=knight: true",  # a false antecedent makes the implication true
        "Dan=knave; Ann==Cal: true",
    ]


EX = Example(prompt="(3-person puzzle)", answer="Ann=knight, Bob=knave, Zoe=knight", difficulty=3)
TASK = KnightsKnavesTask()


@pytest.mark.parametrize(
    "completion",
    [
        "ANSWER: Ann=knight, Bob=knave, Zoe=knight",
        "some reasoning\nANSWER: Zoe=knight, Ann=knight, Bob=knave",
        "ANSWER:   Ann = knight ,Bob=knave,    Zoe =knight  ",
        "answer: ann=Knight, BOB=KNAVE, zoe=KnIgHt.",
        "ANSWER: Ann=knight; Bob=knave; Zoe=knight",
        "ANSWER: Ann=knight, Bob=knave, Zoe=knight\nANSWER: Bob=knave, Zoe=knight, Ann=knight",
        "ANSWER: Ann=knight, Bob=knave, Zoe=knight\ntrailing text after the answer",
    ],
)
def test_harmless_variations_are_correct(completion: str) -> None:
    assert TASK.score(completion, EX).correct
    assert TASK.score(completion, EX).reward == pytest.approx(1.0 + 2.0)


def test_wrong_but_parseable_answer() -> None:
    score = TASK.score("ANSWER: Ann=knight, Bob=knight, Zoe=knight", EX)
    assert not score.correct and score.formatted
    assert score.reward == pytest.approx(1.0 - 1.5)


@pytest.mark.parametrize(
    "completion",
    [
        "",
        "Ann=knight, Bob=knave, Zoe=knight",  # no ANSWER marker
        "ANSWER: Ann=knight, Bob=knave, Zoe=knight, Ann=knight",  # listed twice, same role
        "ANSWER: Ann=knight, Ann=knave, Bob=knave, Zoe=knight",  # both roles for one person
        "ANSWER: Ann=knight, Bob=knave",  # missing person
        "ANSWER: Ann=knight, Bob=knave, Zoe=knight, Max=knave",  # unknown name
        "ANSWER: Ann=knight, Bob=knave, Max=knight",  # unknown name instead of a person
        "ANSWER: Ann=knight, Bob=wizard, Zoe=knight",  # unknown role
        "ANSWER: Ann=knight or knave, Bob=knave, Zoe=knight",  # hedging text
        "ANSWER: Ann=knight, Bob=knave, Zoe=knight\nANSWER: Ann=knave, Bob=knave, Zoe=knight",  # contradicting lines
        "ANSWER:",
    ],
)
def test_ambiguous_or_missing_answers_are_unparseable(completion: str) -> None:
    score = TASK.score(completion, EX)
    assert not score.correct and not score.formatted
    assert score.reward == pytest.approx(-1.0 - 2.0)


def test_reward_values_are_configurable() -> None:
    task = KnightsKnavesTask(
        format_reward=0.5, format_penalty=0.0, correct_reward=1.0, wrong_penalty=-0.25, unparseable_penalty=-1.0
    )
    assert task.score("ANSWER: Ann=knight, Bob=knave, Zoe=knight", EX).reward == pytest.approx(1.5)
    assert task.score("ANSWER: Ann=knave, Bob=knave, Zoe=knight", EX).reward == pytest.approx(0.25)
    assert task.score("nothing", EX).reward == pytest.approx(-1.0)


@pytest.mark.parametrize(
    "bad",
    [
        dict(n_people=[1, 2]),
        dict(n_people=[9]),
        dict(n_people=[]),
        dict(statement_kinds=["maybe"]),
        dict(statement_kinds=[]),
    ],
)
def test_invalid_options_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        KnightsKnavesTask(**bad)


# --- compact prompts --------------------------------------------------------------------------------------------


def _compact_truth(claim: str, roles: dict[str, bool]) -> bool:
    """Evaluate a compact claim (`B=knave & A=knight`, `A!=B`, `C=knave => B=knave`) independently of the task."""
    for op, fn in ((" => ", lambda a, b: (not a) or b), (" & ", lambda a, b: a and b), (" | ", lambda a, b: a or b)):
        if op in claim:
            left, right = claim.split(op)
            return fn(_compact_truth(left, roles), _compact_truth(right, roles))
    if m := re.fullmatch(r"([A-H])(==|!=)([A-H])", claim):
        same = roles[m[1]] == roles[m[3]]
        return same if m[2] == "==" else not same
    m = re.fullmatch(r"([A-H])=(knight|knave)", claim)
    assert m, claim
    return roles[m[1]] == (m[2] == "knight")


def test_compact_prompts_state_the_same_kind_of_puzzle_with_one_solution() -> None:
    task = KnightsKnavesTask(n_people=(2, 3, 4, 5), prompt_style="compact")
    for e in task.examples(40, seed=5):
        lines = e.prompt.splitlines()
        assert lines[0] == "Knights tell the truth, knaves lie." and lines[-1] == "ANSWER?"
        speakers = [re.fullmatch(r"([A-H]): (.+)", line).groups() for line in lines[1:-1]]
        names = [s for s, _ in speakers]
        assert names == list("ABCDEFGH"[: e.difficulty])
        consistent = []
        for bits in itertools.product([True, False], repeat=len(names)):
            roles = dict(zip(names, bits, strict=True))
            if all(_compact_truth(claim, roles) == roles[s] for s, claim in speakers):
                consistent.append(roles)
        assert consistent == [answer_dict(e.answer)], e.prompt
        assert task.score(task.solution(e), e).correct
        assert len(e.prompt) < 40 + 30 * e.difficulty


def test_prompt_style_is_validated() -> None:
    with pytest.raises(ValueError, match="prompt_style"):
        KnightsKnavesTask(prompt_style="terse")
