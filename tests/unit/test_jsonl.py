"""User JSONL datasets: validation errors name file, line and fix; splits are deterministic and disjoint;
answers are extracted in the documented order and compared with math-verify from any thread."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from rlad_core.tasks.base import Example, Score
from rlad_core.tasks.jsonl import (
    DatasetError,
    JsonlTask,
    _run_with_deadline,
    answers_match,
    extract_answer,
    validate_jsonl_lines,
)


def write(tmp_path: Path, lines: list[str], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GOOD = [
    json.dumps({"prompt": "What is 1/2 as a decimal?", "answer": "0.5"}),
    "",
    json.dumps({"prompt": "Capital of France?", "answer": "Paris", "difficulty": 2}),
    "   ",
    json.dumps({"prompt": "2+2?", "answer": "\\boxed{4}", "difficulty": 1, "source": "gsm"}),
    json.dumps({"prompt": "Simplify 2/4.", "answer": "\\frac{1}{2}"}),
    json.dumps({"prompt": "Expand (x+1)^2.", "answer": "x^2+2x+1"}),
]


def test_good_file_loads(tmp_path: Path) -> None:
    task = JsonlTask(write(tmp_path, GOOD))
    examples = task.split(0, "train") + task.split(0, "eval")
    assert len(task) == 5 and len(examples) == 5
    by_prompt = {e.prompt: e for e in examples}
    assert by_prompt["Capital of France?"].difficulty == 2
    assert by_prompt["What is 1/2 as a decimal?"].difficulty == 0
    assert by_prompt["2+2?"].meta == {"line": 5, "extra": {"source": "gsm"}}
    assert task.difficulties == (0, 1, 2)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prompt": "q", "answer": ', "invalid JSON"),
        ('["q", "a"]', "expected a JSON object, got an array"),
        ('"just a string"', "expected a JSON object"),
        ('{"answer": "a"}', 'missing field "prompt"'),
        ('{"prompt": "q"}', 'missing field "answer"'),
        ('{"prompt": 3, "answer": "a"}', 'field "prompt" must be a string, got a number'),
        ('{"prompt": "q", "answer": 3}', 'field "answer" must be a string, got a number'),
        ('{"prompt": "q", "answer": null}', 'field "answer" must be a string, got null'),
        ('{"prompt": "   ", "answer": "a"}', 'field "prompt" is empty'),
        ('{"prompt": "q", "answer": ""}', 'field "answer" is empty'),
        ('{"prompt": "q", "answer": "1\\n2"}', "spans several lines"),
        ('{"prompt": "q", "answer": "a", "difficulty": -1}', '"difficulty" must be a non-negative integer'),
        ('{"prompt": "q", "answer": "a", "difficulty": 1.5}', '"difficulty" must be a non-negative integer'),
        ('{"prompt": "q", "answer": "a", "difficulty": "2"}', '"difficulty" must be a non-negative integer'),
        ('{"prompt": "q", "answer": "a", "difficulty": true}', '"difficulty" must be a non-negative integer'),
    ],
)
def test_bad_line_names_file_line_and_problem(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write(tmp_path, GOOD[:3] + [bad_line] + GOOD[3:])  # the bad line is line 4 (line 2 is blank)
    with pytest.raises(DatasetError) as info:
        JsonlTask(path)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.line == 4 and error.path == str(path)
    assert str(error).startswith(f"{path} line 4: ")
    assert message in str(error)


def test_missing_answer_message_says_the_fix(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD[:1] * 6 + ['{"prompt": "q"}'])
    with pytest.raises(
        DatasetError,
        match=r'line 7: missing field "answer" \(each line must be a JSON object '
        r'with string fields "prompt" and "answer"\)',
    ):
        JsonlTask(path)


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_file_is_an_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match="no examples") as info:
        JsonlTask(path)
    assert info.value.line is None and info.value.path == str(path)


def test_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot read"):
        JsonlTask(tmp_path / "absent.jsonl")


def test_validate_upload_lines() -> None:
    lines = [b'\xef\xbb\xbf{"prompt": "q1", "answer": "1"}\n', b"\n", '{"prompt": "q2", "answer": "2"}']
    examples = validate_jsonl_lines(lines, source="upload.jsonl")
    assert [(e.prompt, e.answer, e.meta["line"]) for e in examples] == [("q1", "1", 1), ("q2", "2", 3)]
    with pytest.raises(DatasetError, match=r"^upload.jsonl line 2: not valid UTF-8") as info:
        validate_jsonl_lines([b'{"prompt": "q", "answer": "a"}', b'{"prompt": "\xff"}'], source="upload.jsonl")
    assert info.value.line == 2 and info.value.path == "upload.jsonl"
    with pytest.raises(DatasetError, match="^<upload> line 1: invalid JSON"):
        validate_jsonl_lines(["not json"])


# --- splits ------------------------------------------------------------------------------------------------------


def make_task(n: int, **options) -> JsonlTask:
    examples = [Example(prompt=f"q{i}", answer=str(i), difficulty=i % 3) for i in range(n)]
    return JsonlTask("mem.jsonl", examples=examples, **options)


def test_split_is_deterministic_disjoint_and_complete() -> None:
    task = make_task(50)
    train, evals = task.split(3, "train"), task.split(3, "eval")
    assert len(evals) == 5 and len(train) == 45
    assert not {e.prompt for e in train} & {e.prompt for e in evals}
    assert task.split(3, "eval") == evals
    assert {e.prompt for e in task.split(4, "eval")} != {e.prompt for e in evals}


def test_small_datasets_still_hold_out_one_prompt() -> None:
    task = make_task(2)
    assert len(task.split(0, "eval")) == 1 and len(task.split(0, "train")) == 1
    single = make_task(1)
    assert len(single.examples(3, seed=0)) == 3
    with pytest.raises(DatasetError, match="eval split is empty"):
        single.examples(1, seed=0, split="eval")


def test_repeated_prompts_stay_in_one_split(tmp_path: Path) -> None:
    lines = [json.dumps({"prompt": f"q{i % 10}", "answer": str(i)}) for i in range(40)]
    task = JsonlTask(write(tmp_path, lines), eval_fraction=0.3)
    for seed in range(5):
        train = {e.prompt for e in task.split(seed, "train")}
        evals = {e.prompt for e in task.split(seed, "eval")}
        assert len(evals) == 3 and not train & evals


def test_examples_cycle_with_a_reshuffle_per_pass() -> None:
    task = make_task(20)  # 18 train items
    first = task.examples(36, seed=1)
    assert first == task.examples(36, seed=1)
    pass1, pass2 = first[:18], first[18:]
    assert sorted(e.prompt for e in pass1) == sorted(e.prompt for e in pass2)  # each pass is the whole split
    assert pass1 != pass2  # in a fresh order
    assert task.examples(5, seed=1) == first[:5]


# --- answer extraction and comparison ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("ANSWER: 3\nso \\boxed{\\frac{1}{2}} and 7", "\\frac{1}{2}"),  # last box wins over everything
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("#4\nANSWER: 5.\n6", "5"),  # ANSWER: beats # and the last number; trailing period dropped
        ("answer:  $x+1$ \nmore text", "x+1"),
        ("7 apples\n#### 72\nthat is all 9", "72"),
        ("the sum is 12, or maybe -3.5", "-3.5"),
        ("it is 1,000", "1,000"),
        ("no digits here", None),
        ("", None),
    ],
)
def test_extraction_order(completion: str, expected: str | None) -> None:
    assert extract_answer(completion) == expected


@pytest.mark.parametrize(
    ("predicted", "gold", "match"),
    [
        ("1/2", "0.5", True),
        ("0.5", "\\frac{1}{2}", True),
        ("\\frac{1}{2}", "1/2", True),
        ("2", "\\boxed{2}", True),
        ("2.0", "2", True),
        ("1,000", "1000", True),
        ("(x+1)^2", "x^2+2x+1", True),
        ("1/3", "0.5", False),
        ("3", "2", False),
        ("paris", "Paris", True),
        ("  The  Moon ", "the moon.", True),
        ("Sirap", "Paris", False),  # as math both would be the product of the same letters
        ("\\text{Paris}", "Paris", True),
    ],
)
def test_answers_match(predicted: str, gold: str, match: bool) -> None:
    assert answers_match(predicted, gold) is match


def test_every_solution_scores_correct(tmp_path: Path) -> None:
    task = JsonlTask(write(tmp_path, GOOD))
    for e in task.split(0, "train") + task.split(0, "eval"):
        assert task.solution(e) == f"ANSWER: {e.answer}"
        assert task.score(task.solution(e), e).correct


def test_score_rewards_and_format() -> None:
    e = Example(prompt="half?", answer="1/2", difficulty=0)
    task = make_task(3)
    assert (s := task.score("so the answer is \\boxed{0.5}", e)).correct and s.formatted and s.reward == 1.0
    assert (s := task.score("ANSWER: 0.4", e)).formatted and not s.correct and s.reward == 0.0
    assert task.score("I do not know", e) == Score(reward=0.0, correct=False, formatted=False)
    custom = make_task(3, correct_reward=2.0, incorrect_reward=-1.0)
    assert custom.score("ANSWER: 1/2", e).reward == 2.0 and custom.score("ANSWER: 3", e).reward == -1.0


def test_scoring_works_from_a_worker_thread() -> None:
    task = make_task(3)
    cases = [
        ("\\boxed{0.5}", Example("half?", "\\frac{1}{2}", 0)),
        ("ANSWER: 0.25", Example("half?", "1/2", 0)),
        ("ANSWER: x^2+2x+1", Example("sq", "(x+1)^2", 0)),
    ]
    in_main = [task.score(c, e) for c, e in cases]
    in_thread: list = []
    worker = threading.Thread(target=lambda: in_thread.extend(task.score(c, e) for c, e in cases))
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert in_thread == in_main
    assert [s.correct for s in in_thread] == [True, False, True]


def test_a_stuck_comparison_is_abandoned_after_the_deadline() -> None:
    release = threading.Event()
    try:
        assert _run_with_deadline(lambda: release.wait(60), 0.2) is None
    finally:
        release.set()
    assert _run_with_deadline(lambda: 42, 5) == 42


@pytest.mark.parametrize("bad", [dict(eval_fraction=0.0), dict(eval_fraction=1.0), dict(timeout_s=0)])
def test_invalid_options_are_rejected(tmp_path: Path, bad: dict) -> None:
    with pytest.raises(ValueError):
        JsonlTask(write(tmp_path, GOOD), **bad)
