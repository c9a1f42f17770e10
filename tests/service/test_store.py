"""Store functions with a real database (SQLite and PostgreSQL): claim, heartbeat, finish, the reaper."""

from __future__ import annotations

from datetime import timedelta

import pytest

from store import jobs as job_store
from store.db import session_scope
from store.errors import InvalidTransition
from store.models import Job, JobEvent, JobStatus, utcnow
from store.models import JobStatus as S
from store.states import transition
from store.teams import get_or_create_team

SPEC = {"student": "s", "teacher": "t", "steps": 10, "batch_size": 8, "group_size": 4}


@pytest.fixture
def job_id(service_env) -> str:
    with session_scope() as s:
        team = get_or_create_team(s, name="red")
        job, _ = job_store.submit_job(s, team_id=team.id, spec=SPEC, max_attempts=2)
        return job.id


def _events(job_id: str) -> list[tuple[str, int]]:
    with session_scope() as s:
        return [(e.kind.value, e.attempt) for e in job_store.list_events(s, job_id=job_id)]


def _status(job_id: str) -> S:
    with session_scope() as s:
        return job_store.status_of(s, job_id=job_id)


def test_only_one_claim_wins(job_id: str) -> None:
    with session_scope() as s:
        assert job_store.claim_job(s, job_id=job_id, worker="w1").attempt == 1
    with session_scope() as s:
        assert job_store.claim_job(s, job_id=job_id, worker="w2") is None
    assert _status(job_id) == S.starting
    assert _events(job_id) == [("queued", 0), ("claimed", 1)]


def test_an_illegal_transition_raises_and_writes_nothing(job_id: str) -> None:
    with pytest.raises(InvalidTransition), session_scope() as s:
        transition(s, s.get(Job, job_id), JobStatus.succeeded)
    assert _status(job_id) == S.queued and _events(job_id) == [("queued", 0)]


def test_run_to_success_writes_each_event(job_id: str) -> None:
    with session_scope() as s:
        job_store.claim_job(s, job_id=job_id, worker="w")
    with session_scope() as s:
        job_store.mark_running(s, job_id=job_id, resumed_from_step=None)
    with session_scope() as s:
        assert job_store.finish_job(s, job_id=job_id, attempt=1, outcome=S.succeeded) is not None
    assert _status(job_id) == S.succeeded
    assert _events(job_id) == [("queued", 0), ("claimed", 1), ("started", 1), ("succeeded", 1)]


def test_a_stale_attempt_cannot_finish_or_heartbeat(job_id: str) -> None:
    with session_scope() as s:
        job_store.claim_job(s, job_id=job_id, worker="w")
    with session_scope() as s:
        assert not job_store.heartbeat(s, job_id=job_id, attempt=7)
        assert job_store.finish_job(s, job_id=job_id, attempt=7, outcome=S.failed) is None
        assert job_store.heartbeat(s, job_id=job_id, attempt=1)
    assert _status(job_id) == S.starting


def _age_heartbeat(job_id: str, seconds: float) -> None:
    with session_scope() as s:
        s.get(Job, job_id).heartbeat_at = utcnow() - timedelta(seconds=seconds)


def test_reaper_requeues_a_stale_job_then_fails_it_when_attempts_run_out(job_id: str) -> None:
    for attempt in (1, 2):
        with session_scope() as s:
            assert job_store.claim_job(s, job_id=job_id, worker="w").attempt == attempt
            job_store.mark_running(s, job_id=job_id, resumed_from_step=None)
        with session_scope() as s:  # fresh heartbeat: nothing to reap
            assert job_store.reap(s, heartbeat_timeout_s=60) == []
        assert _status(job_id) == S.running
        _age_heartbeat(job_id, 120)
        with session_scope() as s:
            requeued = [j.id for j in job_store.reap(s, heartbeat_timeout_s=60)]
        assert requeued == ([job_id] if attempt == 1 else [])
    assert _status(job_id) == S.failed
    kinds = [k for k, _ in _events(job_id)]
    assert kinds == ["queued", "claimed", "started", "lost", "queued", "claimed", "started", "lost", "failed"]
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.error_code == "lost" and "max_attempts=2" in job.error_message
        lost = s.query(JobEvent).filter_by(job_id=job_id, kind="lost").first()
        assert lost.data["heartbeat_age_s"] >= 120


def test_a_job_lost_while_cancelling_ends_cancelled_not_requeued(job_id: str) -> None:
    with session_scope() as s:
        job_store.claim_job(s, job_id=job_id, worker="w")
        job_store.mark_running(s, job_id=job_id, resumed_from_step=None)
    with session_scope() as s:
        team_id = s.get(Job, job_id).team_id
        job_store.request_cancel(s, team_id=team_id, job_id=job_id)
    _age_heartbeat(job_id, 500)
    with session_scope() as s:
        assert job_store.reap(s, heartbeat_timeout_s=60) == []
    assert _status(job_id) == S.cancelled


def test_a_restarted_worker_loses_the_attempts_of_its_previous_run_at_once(job_id: str) -> None:
    with session_scope() as s:
        team = get_or_create_team(s, name="red")
        other, _ = job_store.submit_job(s, team_id=team.id, spec=SPEC)
        cancelling, _ = job_store.submit_job(s, team_id=team.id, spec=SPEC)
        other_id, cancelling_id = other.id, cancelling.id
    for jid, worker in ((job_id, "gpu@a"), (other_id, "gpu2@a"), (cancelling_id, "gpu@a")):
        with session_scope() as s:
            job_store.claim_job(s, job_id=jid, worker=worker)
            job_store.mark_running(s, job_id=jid, resumed_from_step=None)
    with session_scope() as s:
        job_store.request_cancel(s, team_id=team.id, job_id=cancelling_id)
    with session_scope() as s:  # heartbeats are fresh: only the name tells
        assert sorted(job_store.worker_restarted(s, worker="gpu@a")) == sorted([job_id, cancelling_id])
    assert (_status(job_id), _status(other_id), _status(cancelling_id)) == (S.lost, S.running, S.cancelled)
    with session_scope() as s:
        lost = s.query(JobEvent).filter_by(job_id=job_id, kind="lost").one()
        assert lost.data["reason"] == "its worker restarted" and lost.data["worker"] == "gpu@a"
        assert [j.id for j in job_store.reap(s, heartbeat_timeout_s=60)] == [job_id]  # queued again, attempt 2
    with session_scope() as s:  # once
        assert job_store.worker_restarted(s, worker="gpu@a") == []


def test_reaper_sends_a_long_queued_job_again(job_id: str) -> None:
    with session_scope() as s:
        assert job_store.reap(s, heartbeat_timeout_s=60, redispatch_after_s=300) == []
        s.get(Job, job_id).dispatched_at = utcnow() - timedelta(seconds=301)
    with session_scope() as s:
        assert [j.id for j in job_store.reap(s, heartbeat_timeout_s=60, redispatch_after_s=300)] == [job_id]
    with session_scope() as s:  # once: its dispatch time moved on
        assert job_store.reap(s, heartbeat_timeout_s=60, redispatch_after_s=300) == []
    assert _status(job_id) == S.queued


def test_when_the_broker_forgot_its_queues_the_reaper_sends_every_queued_job_again(job_id: str) -> None:
    with session_scope() as s:  # just dispatched: not due by the undelivered rule
        assert job_store.reap(s, heartbeat_timeout_s=60, redispatch_after_s=300) == []
    with session_scope() as s:
        assert [j.id for j in job_store.reap(s, heartbeat_timeout_s=60, broker_forgot=True)] == [job_id]
    assert _status(job_id) == S.queued


def test_broker_forgot_is_true_from_a_loss_of_the_brokers_data_until_the_resend_is_done() -> None:
    import redis

    from store.dispatch import KEPT_MARK, broker_forgot, broker_kept
    from store.settings import Settings
    from tests.service.conftest import REDIS

    on_redis = Settings(broker_url=REDIS)
    with redis.Redis.from_url(REDIS) as r:
        r.delete(KEPT_MARK)  # as after a restart without persistence
        assert [broker_forgot(on_redis), broker_forgot(on_redis)] == [True, True]  # until the resend is done
        broker_kept(on_redis)
        assert not broker_forgot(on_redis)
        r.flushdb()
        assert broker_forgot(on_redis)
        r.delete(KEPT_MARK)
    assert not broker_forgot(Settings(broker_url="redis://127.0.0.1:1/0"))  # unreachable: asked again next time
    assert not broker_forgot(Settings(broker_url=None))  # the filesystem broker keeps its messages on disk


def test_a_released_attempt_is_requeued_at_once_and_does_not_count_as_lost(job_id: str) -> None:
    """max_attempts=2: two releases (worker shutdowns) and then two losses; only the losses use it up."""
    for attempt in (1, 2):
        with session_scope() as s:
            job_store.claim_job(s, job_id=job_id, worker="w")
            job_store.mark_running(s, job_id=job_id, resumed_from_step=None)
            job_store.record_progress(s, job_id=job_id, attempt=attempt, last_step=attempt * 3, seconds_per_step=1.0)
        with session_scope() as s:
            job = job_store.release_job(s, job_id=job_id, attempt=attempt, reason="worker stopping")
            assert job is not None and job.status == S.queued and job.worker is None
    with session_scope() as s:
        assert job_store.release_job(s, job_id=job_id, attempt=2, reason="again") is None  # not held any more
        released = s.query(JobEvent).filter_by(job_id=job_id, kind="released").all()
        assert [e.data["step"] for e in released] == [3, 6]
    for attempt in (3, 4):
        with session_scope() as s:
            job_store.claim_job(s, job_id=job_id, worker="w")
            job_store.mark_running(s, job_id=job_id, resumed_from_step=None)
        _age_heartbeat(job_id, 120)
        with session_scope() as s:
            requeued = [j.id for j in job_store.reap(s, heartbeat_timeout_s=60)]
        assert requeued == ([job_id] if attempt == 3 else [])
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job.status == S.failed and job.error_message.startswith("the job was lost 2 times")


def test_releasing_a_job_that_is_being_cancelled_ends_it_cancelled(job_id: str) -> None:
    with session_scope() as s:
        job_store.claim_job(s, job_id=job_id, worker="w")
        job_store.request_cancel(s, team_id=s.get(Job, job_id).team_id, job_id=job_id)
    with session_scope() as s:
        assert job_store.release_job(s, job_id=job_id, attempt=1, reason="worker stopping").status == S.cancelled


def test_a_cuda_device_no_live_worker_has_is_refused_at_submission(service_env) -> None:
    from store.errors import InvalidSpec
    from store.workers import worker_heartbeat

    with session_scope() as s:
        team = get_or_create_team(s, name="red")
        # no live worker: the service cannot know; the trainer checks when it starts
        job_store.submit_job(s, team_id=team.id, spec={**SPEC, "device": "cuda:99"})
        worker_heartbeat(s, name="gpu@a", queues=["gpu"], pid=1, devices=2)
        worker_heartbeat(s, name="cpu@a", queues=["cpu"], pid=2, devices=8)  # another queue's devices do not count
    with session_scope() as s:
        job_store.submit_job(s, team_id=team.id, spec={**SPEC, "device": "cuda:1"})
        with pytest.raises(InvalidSpec) as exc:
            job_store.submit_job(s, team_id=team.id, spec={**SPEC, "device": "cuda:2"})
    ((field, message),) = exc.value.errors
    assert field == "device" and "at most 2 CUDA devices" in message and "cuda:0..cuda:1" in message


def test_a_backlog_of_50_queued_jobs_is_resent_at_most_once_per_threshold(service_env) -> None:
    """Each reaper pass (every 30 s here) re-sends only the jobs whose last dispatch is older than the
    threshold, and records the dispatch: over 12.5 minutes each of 50 waiting jobs is sent again twice (at
    330 s and 660 s), not once per pass."""
    with session_scope() as s:
        team = get_or_create_team(s, name="red")
        ids = [job_store.submit_job(s, team_id=team.id, spec=SPEC)[0].id for _ in range(50)]
    start = utcnow()
    sent: dict[str, int] = dict.fromkeys(ids, 0)
    for tick in range(1, 26):  # 25 passes, 30 s apart
        with session_scope() as s:
            for job in job_store.reap(
                s, heartbeat_timeout_s=60, redispatch_after_s=300, now=start + timedelta(seconds=30 * tick)
            ):
                sent[job.id] += 1
    assert set(sent.values()) == {2}
    with session_scope() as s:
        assert all(s.get(Job, i).dispatched_at > start + timedelta(seconds=600) for i in ids)  # recorded


def test_an_attempt_killed_mid_checkpoint_leaves_nothing_the_next_one_does_not_tidy(job_id: str) -> None:
    """What the next attempt's trainer process does first (workers.trainer_process._adopt_leftovers): the
    temporary directory of the write the kill cut short goes, a checkpoint published but not recorded gets
    its row (the attempt resumes from it), a recorded one is left as it is."""
    import json

    from rlad_core.checkpoint import remove_temporaries
    from store.results import adopt_checkpoints, get_result_store, list_checkpoints, record_checkpoint
    from store.settings import get_settings

    store = get_result_store(get_settings().resolved_result_root)
    root = store.job_dir(job_id) / "checkpoints"
    for step in (5, 10):
        (root / f"step-{step}").mkdir(parents=True)
        (root / f"step-{step}" / "model.safetensors").write_bytes(b"x" * 100)
        (root / f"step-{step}" / "manifest.json").write_text(json.dumps({"step": step, "metrics": {"loss": 0.5}}))
    (root / ".tmp-step-15-0a1b2c3d").mkdir()
    (root / ".tmp-step-15-0a1b2c3d" / "model.safetensors").write_bytes(b"half")
    (root / ".old-step-10-4e5f6a7b").mkdir()  # a replaced step-10, moved aside when the kill came
    with session_scope() as s:
        record_checkpoint(
            s, job_id=job_id, step=5, kind="periodic", location=store.checkpoint_location(job_id, 5), bytes=1,
            sha256="0" * 64, metrics={},
        )  # fmt: skip

    assert [p.name for p in remove_temporaries(root)] == [".old-step-10-4e5f6a7b", ".tmp-step-15-0a1b2c3d"]
    with session_scope() as s:
        assert adopt_checkpoints(s, store, job_id=job_id, total_steps=10) == [10]
    with session_scope() as s:
        rows = {c.step: c for c in list_checkpoints(s, job_id=job_id)}
        assert sorted(rows) == [5, 10] and rows[5].sha256 == "0" * 64  # the recorded one untouched
        assert (rows[10].kind, rows[10].bytes, rows[10].metrics) == ("final", 100 + len(
            (root / "step-10" / "manifest.json").read_bytes()), {"loss": 0.5})  # fmt: skip
        assert adopt_checkpoints(s, store, job_id=job_id, total_steps=10) == []
    assert sorted(p.name for p in root.iterdir()) == ["step-10", "step-5"]
