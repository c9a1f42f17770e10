"""Verifiable-reward tasks and their registry.

`get_task(name, **options)` builds a task by its registered name with the options its constructor documents
(the job config's task section minus `name`):

    knights_knaves   KnightsKnavesTask(n_people=(2, 3, 4, 5), ...)   logic puzzles, difficulty = people
    arithmetic       ArithmeticTask(levels=(1, 2, 3), ...)           worked addition/multiplication
    jsonl            JsonlTask(path, eval_fraction=0.1, ...)         a user dataset graded with math-verify
"""

from __future__ import annotations

import inspect
from typing import Any

from rlad_core.tasks.arithmetic import ArithmeticTask
from rlad_core.tasks.base import Example, Score, Task
from rlad_core.tasks.jsonl import DatasetError, JsonlTask, validate_jsonl_lines
from rlad_core.tasks.knights_knaves import KnightsKnavesTask

_REGISTRY: dict[str, type] = {
    KnightsKnavesTask.name: KnightsKnavesTask,
    ArithmeticTask.name: ArithmeticTask,
    JsonlTask.name: JsonlTask,
}
TASKS: tuple[str, ...] = tuple(_REGISTRY)


def get_task(name: str, **options: Any) -> Task:
    """The task registered as `name`, built with `options`; unknown names and options raise ValueError."""
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    signature = inspect.signature(cls)
    try:
        signature.bind(**options)
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}; its options are {list(signature.parameters)}") from None
    return cls(**options)


__all__ = [
    "TASKS",
    "ArithmeticTask",
    "DatasetError",
    "Example",
    "JsonlTask",
    "KnightsKnavesTask",
    "Score",
    "Task",
    "get_task",
    "validate_jsonl_lines",
]
