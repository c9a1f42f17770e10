"""Arithmetic: the worked format is exact and internally consistent, every level's solution scores correct,
and the verifier's format/answer rules and rewards hold."""

from __future__ import annotations

import re
import string

import pytest

from rlad_core.tasks.arithmetic import ArithmeticTask, final_answer, worked_solution
from rlad_core.tasks.base import Example, Score

PROMPT = re.compile(r"^(\d+)([+*])(\d+)=$")
DIGITS = {1: (1, 1), 2: (2, 2), 3: (3, 3), 4: (2, 1), 5: (2, 2)}  # operand digit counts per level
ALL_LEVELS = ArithmeticTask(levels=range(1, 6))


def true_value(prompt: str) -> int:
    a, op, b = PROMPT.match(prompt).groups()
    return int(a) + int(b) if op == "+" else int(a) * int(b)


@pytest.mark.parametrize(
    ("a", "op", "b", "expected"),
    [
        (3, "+", 4, "3+4=7;#7"),
        (37, "+", 45, "7+5=12;3+4+1=8;#82"),
        (999, "+", 5, "9+5=14;9+0+1=10;9+0+1=10;#1004"),
        (47, "*", 6, "7*6=42;4*6+4=28;#282"),
        (47, "*", 36, "7*6=42;4*6+4=28;=282;7*3=21;4*3+2=14;=1410;282+1410=1692;#1692"),
    ],
)
def test_worked_format(a: int, op: str, b: int, expected: str) -> None:
    assert worked_solution(a, op, b) == expected


@pytest.mark.parametrize("level", [1, 2, 3, 4, 5])
def test_solution_is_correct_for_every_level(level: int) -> None:
    task = ArithmeticTask(levels=[level])
    for seed in range(3):
        for split in ("train", "eval"):
            for e in task.examples(100, seed=seed, split=split):
                a, op, b = PROMPT.match(e.prompt).groups()
                assert (len(a), len(b)) == DIGITS[level] and op == ("+" if level <= 3 else "*")
                assert e.difficulty == level and e.answer == str(true_value(e.prompt))
                solution = task.solution(e)
                assert task.score(solution, e) == Score(reward=1.0, correct=True, formatted=True)
                assert final_answer(solution) == true_value(e.prompt)


def test_every_step_is_a_true_equation() -> None:
    for e in ALL_LEVELS.examples(200, seed=4):
        steps = ALL_LEVELS.solution(e).split(";")
        assert steps[-1].startswith("#")
        for step in steps[:-1]:
            lhs, rhs = step.split("=")
            if lhs:  # "=P" closes a partial product and has no left side
                assert eval(lhs) == int(rhs), (e.prompt, step)  # lhs is digits, + and * only


def test_completions_are_short_and_printable() -> None:
    longest = max(len(worked_solution(a, "*", b)) for a in range(10, 100) for b in range(10, 100))
    assert longest <= 63  # fits a 64-token budget (with EOS) of a character-level model
    for e in ALL_LEVELS.examples(100, seed=0):
        assert set(e.prompt + e.answer + ALL_LEVELS.solution(e)) <= set(string.printable)


EX = Example(prompt="37+45=", answer="82", difficulty=2)
TASK = ArithmeticTask()


@pytest.mark.parametrize(
    ("completion", "correct", "formatted", "reward"),
    [
        ("7+5=12;3+4+1=8;#82", True, True, 1.0),
        ("#82", True, True, 1.0),
        ("7+5=12;3+4+1=8;#  82  ", True, True, 1.0),
        ("#82;#82", True, True, 1.0),  # repeating the same final answer is not ambiguous
        ("7+5=12;3+4+1=8;#81", False, True, 0.1),
        ("7+5=12;3+4+1=8;82", False, False, 0.0),  # no marker
        ("#", False, False, 0.0),  # marker without a number
        ("", False, False, 0.0),
        ("#82;#81", False, False, 0.0),  # two different final answers
    ],
)
def test_scoring(completion: str, correct: bool, formatted: bool, reward: float) -> None:
    score = TASK.score(completion, EX)
    assert (score.correct, score.formatted) == (correct, formatted)
    assert score.reward == pytest.approx(reward)


def test_reward_values_are_configurable() -> None:
    task = ArithmeticTask(correct_reward=2.0, format_reward=0.5)
    assert task.score("#82", EX).reward == 2.0
    assert task.score("#80", EX).reward == 0.5
    assert task.score("80", EX).reward == 0.0


def test_levels_round_robin_and_deterministic() -> None:
    task = ArithmeticTask(levels=[3, 1, 2])
    assert task.difficulties == (1, 2, 3)
    examples = task.examples(9, seed=1)
    assert [e.difficulty for e in examples] == [1, 2, 3] * 3
    assert examples == task.examples(9, seed=1)
    assert examples != task.examples(9, seed=2)


def test_train_and_eval_never_share_a_prompt() -> None:
    task = ArithmeticTask(levels=[1])  # only 100 distinct prompts exist at level 1
    train = {e.prompt for seed in range(3) for e in task.examples(500, seed=seed, split="train")}
    evals = {e.prompt for seed in range(3) for e in task.examples(50, seed=seed, split="eval")}
    assert evals and not train & evals
    assert len(train | evals) == 100  # together the partitions cover the whole level


@pytest.mark.parametrize("levels", [[0], [6], []])
def test_invalid_levels_are_rejected(levels: list[int]) -> None:
    with pytest.raises(ValueError, match="levels"):
        ArithmeticTask(levels=levels)
