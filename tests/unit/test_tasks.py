"""The task registry, the shared interface, and the train/eval partition helper."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import rlad_core.tasks as tasks_pkg
from rlad_core.tasks import TASKS, ArithmeticTask, JsonlTask, KnightsKnavesTask, Task, get_task
from rlad_core.tasks.base import Example, check_request, in_eval_partition


def test_registry_builds_each_task(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n" + json.dumps({"prompt": "2+2?", "answer": "4"})
    )
    built = [
        get_task("knights_knaves", n_people=[2, 3]),
        get_task("arithmetic", levels=[1, 2]),
        get_task("jsonl", path=str(path), eval_fraction=0.5),
    ]
    assert [type(t) for t in built] == [KnightsKnavesTask, ArithmeticTask, JsonlTask]
    assert [t.name for t in built] == list(TASKS) == ["knights_knaves", "arithmetic", "jsonl"]
    assert built[0].difficulties == (2, 3) and built[1].difficulties == (1, 2)
    for task in built:
        assert isinstance(task, Task)
        example = task.examples(2, seed=0, split="eval")[0]
        assert task.score(task.solution(example), example).correct


def test_registry_defaults() -> None:
    assert get_task("knights_knaves").difficulties == (2, 3, 4, 5)
    assert get_task("arithmetic").difficulties == (1, 2, 3)


def test_unknown_task_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown task 'sudoku'; known tasks: knights_knaves, arithmetic, jsonl"):
        get_task("sudoku")


def test_unknown_option_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="n_people"):
        get_task("arithmetic", n_people=[2])


def test_examples_reject_bad_requests() -> None:
    task = ArithmeticTask()
    assert task.examples(0, seed=0) == []
    with pytest.raises(ValueError, match="split"):
        task.examples(1, seed=0, split="test")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        check_request(-1, "train")


def test_example_is_hashable_despite_dict_meta() -> None:
    a = Example("p", "a", 1, {"k": [1]})
    assert hash(a) == hash(Example("p", "a", 1, {"k": [2]}))
    assert a == Example("p", "a", 1, {"k": [1]}) and a != Example("p", "a", 1, {"k": [2]})


def test_eval_partition_is_stable_and_near_its_share() -> None:
    prompts = [f"{a}+{b}=" for a in range(100) for b in range(100)]
    share = sum(map(in_eval_partition, prompts)) / len(prompts)
    assert 0.08 < share < 0.12
    assert in_eval_partition("37+45=") == in_eval_partition("37+45=")
    assert sum(in_eval_partition(p, 0.5) for p in prompts) > 4500


def test_tasks_package_imports_no_torch() -> None:
    """Tasks are pure Python (stdlib, math-verify): the service validates datasets without loading torch."""
    package_dir = Path(tasks_pkg.__file__).parent
    for source in package_dir.glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                assert name.split(".")[0] not in {"torch", "transformers", "numpy"}, f"{source.name} imports {name}"
