"""The job state machine's table: the lifecycle in ARCHITECTURE.md and nothing else."""

from __future__ import annotations

import pytest

from store.errors import InvalidTransition
from store.models import JobStatus as S
from store.states import ALLOWED, EVENT_FOR, TERMINAL, check

LIFECYCLE = [
    (S.queued, S.starting),
    (S.starting, S.running),
    (S.running, S.succeeded),
    (S.running, S.failed),
    (S.queued, S.cancelled),
    (S.running, S.cancelling),
    (S.cancelling, S.cancelled),
    (S.running, S.lost),
    (S.lost, S.queued),
    (S.lost, S.failed),
    (S.starting, S.cancelling),
    (S.starting, S.failed),
    (S.running, S.queued),
    (S.starting, S.queued),  # released by a stopping worker
]


@pytest.mark.parametrize(("a", "b"), LIFECYCLE)
def test_lifecycle_moves_are_allowed(a: S, b: S) -> None:
    check(a, b)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_have_no_way_out(terminal: S) -> None:
    assert ALLOWED[terminal] == frozenset()
    for target in S:
        with pytest.raises(InvalidTransition):
            check(terminal, target)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (S.queued, S.running),
        (S.queued, S.succeeded),
        (S.cancelling, S.queued),
        (S.lost, S.running),
        (S.cancelling, S.running),
        (S.running, S.starting),
    ],
)
def test_skipping_a_state_raises(a: S, b: S) -> None:
    with pytest.raises(InvalidTransition, match=f"{a.value} cannot become {b.value}"):
        check(a, b)


def test_every_status_has_a_table_row_and_an_event() -> None:
    assert set(ALLOWED) == set(S)
    assert set(EVENT_FOR) == set(S)
