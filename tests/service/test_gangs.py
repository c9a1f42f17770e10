"""Jobs on several processes and nodes, store side, with a real database (SQLite and PostgreSQL): where a job
is placed (`store.jobs.place_job`), gang claims (`store.gangs`), and the reaper's view of a lost node."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from store import gangs
from store import jobs as job_store
from store.db import session_scope
from store.errors import InvalidSpec
from store.models import Job, NodeClaim, utcnow
from store.models import JobStatus as S
from store.teams import get_or_create_team
from store.workers import worker_heartbeat

SPEC = {"student": "s", "teacher": "t", "steps": 10, "batch_size": 16, "group_size": 4}
TWO_NODES = {**SPEC, "resources": {"nodes": 2, "gpus_per_node": 1}, "device": "cpu"}


def _submit(spec: dict, **kw) -> Job:
    with session_scope() as s:
        team = get_or_create_team(s, name="red")
        job, _ = job_store.submit_job(s, team_id=team.id, spec=spec, **kw)
        s.expunge(job)
        return job


def _join(job_id: str, worker: str, port: int, **kw) -> gangs.Gang | None:
    with session_scope() as s:
        return gangs.join(s, job_id=job_id, worker=worker, address="10.0.0." + worker[-1], port=port, wait_s=60, **kw)


def _gang(job_id: str, attempt: int, worker: str, **kw) -> gangs.Gang:
    with session_scope() as s:
        return gangs.gang_of(s, job_id=job_id, attempt=attempt, worker=worker, **kw)


def test_two_workers_form_a_gang_and_the_second_seat_starts_the_job(service_env) -> None:
    job = _submit(TWO_NODES)
    first = _join(job.id, "node@1", 4001)
    assert first is not None and first.state == "forming" and first.node_rank == 0 and first.attempt == 1
    assert _join(job.id, "node@1", 4999) == first  # the same worker again keeps its seat
    second = _join(job.id, "node@2", 4002)
    assert second is not None and second.state == "formed" and second.node_rank == 1
    assert second.endpoint == "10.0.0.1:4001" and second.workers == ("node@1", "node@2")
    assert _gang(job.id, 1, "node@1").state == "formed" and _gang(job.id, 1, "node@1").node_rank == 0
    assert _join(job.id, "node@3", 4003) is None  # formed: the job is no longer queued
    with session_scope() as s:
        row = s.get(Job, job.id)
        assert (row.status, row.attempt, row.worker) == (S.starting, 1, "node@1")
        claimed = job_store.list_events(s, job_id=job.id)[-1]
        assert claimed.kind.value == "claimed" and claimed.data["nodes"] == ["node@1", "node@2"]


def test_a_gathering_not_completed_by_its_deadline_is_released_and_starts_over(service_env) -> None:
    job = _submit(TWO_NODES)
    past = utcnow() - timedelta(seconds=120)
    assert _join(job.id, "node@1", 4001, now=past).state == "forming"  # deadline: 60 s after `past`
    assert _gang(job.id, 1, "node@1").state == "gone"
    with session_scope() as s:
        assert gangs.leave(s, job_id=job.id, attempt=1, worker="node@1")  # still queued: send the message back
    with session_scope() as s:
        assert s.get(Job, job.id).status == S.queued and s.query(NodeClaim).count() == 0
    fresh = _join(job.id, "node@2", 4002)
    assert fresh.state == "forming" and fresh.node_rank == 0 and fresh.endpoint == "10.0.0.2:4002"


def test_an_expired_seat_left_behind_does_not_join_the_next_gathering(service_env) -> None:
    job = _submit(TWO_NODES)
    _join(job.id, "node@1", 4001, now=utcnow() - timedelta(seconds=120))
    # another worker arrives after the deadline: the stale seat is dropped, it starts a gathering of its own
    assert _join(job.id, "node@2", 4002).workers == ("node@2",)


def test_a_job_cancelled_while_its_gang_forms_sends_no_message_back(service_env) -> None:
    job = _submit(TWO_NODES)
    _join(job.id, "node@1", 4001)
    with session_scope() as s:
        job_store.request_cancel(s, team_id=job.team_id, job_id=job.id)
    assert _gang(job.id, 1, "node@1").state == "gone"
    with session_scope() as s:
        assert not gangs.leave(s, job_id=job.id, attempt=1, worker="node@1")


def test_a_node_whose_seat_goes_stale_loses_the_attempt(service_env) -> None:
    job = _submit(TWO_NODES)
    _join(job.id, "node@1", 4001)
    _join(job.id, "node@2", 4002)
    with session_scope() as s:
        job_store.mark_running(s, job_id=job.id, resumed_from_step=None)
        gangs.stamp(s, job_id=job.id, attempt=1, worker="node@1")
        job_store.heartbeat(s, job_id=job.id, attempt=1)
        # node 2 stopped stamping its seat two minutes ago; node 1 keeps the job's own heartbeat fresh
        s.execute(
            update(NodeClaim).where(NodeClaim.worker == "node@2").values(heartbeat_at=utcnow() - timedelta(seconds=300))
        )
    with session_scope() as s:
        requeued = job_store.reap(s, heartbeat_timeout_s=120)
        assert [j.id for j in requeued] == [job.id]
        lost = [e for e in job_store.list_events(s, job_id=job.id) if e.kind.value == "lost"]
        assert lost[0].data["reason"] == "a node's seat heartbeat is stale"
        assert s.get(Job, job.id).status == S.queued
    # the next gathering is for attempt 2; attempt 1's seats are cleared by the first claim
    assert _join(job.id, "node@3", 4003).attempt == 2
    with session_scope() as s:
        assert {c.attempt for c in s.query(NodeClaim)} == {2}


def test_a_job_asking_for_more_nodes_or_gpus_than_live_workers_have_is_refused(service_env) -> None:
    assert _submit(TWO_NODES).queue == "gpu"  # no live worker: nothing is known, the job waits
    with session_scope() as s:
        worker_heartbeat(s, name="gpu@a", queues=["gpu"], pid=1, devices=2)
    with pytest.raises(InvalidSpec) as exc:
        _submit(TWO_NODES)
    ((field, message),) = exc.value.errors
    assert field == "resources.nodes" and "at most 1 live worker" in message and "at most 1 node," in message
    with pytest.raises(InvalidSpec) as exc:
        _submit({**SPEC, "device": "cuda", "resources": {"gpus_per_node": 4}})
    ((field, message),) = exc.value.errors
    assert field == "resources.gpus_per_node" and "at most 2 CUDA devices" in message
    # auto on a node with 2 GPUs would take cuda: 4 processes per node cannot run there either
    with pytest.raises(InvalidSpec):
        _submit({**SPEC, "device": "auto", "resources": {"gpus_per_node": 4}})
    assert _submit({**SPEC, "device": "cuda", "resources": {"gpus_per_node": 2}}).queue == "gpu"
    assert _submit({**SPEC, "device": "cpu", "resources": {"gpus_per_node": 4}}).queue == "gpu"  # gloo processes


def test_a_job_goes_to_the_first_queue_whose_workers_can_serve_it(service_env) -> None:
    with session_scope() as s:
        worker_heartbeat(s, name="gpu@a", queues=["gpu"], pid=1, devices=1)
        worker_heartbeat(s, name="big@a", queues=["gpu-8x"], pid=2, devices=8)
        worker_heartbeat(s, name="big@b", queues=["gpu-8x"], pid=3, devices=8)
    queues = ["gpu", "gpu-8x"]
    assert _submit({**SPEC, "device": "cuda"}, queue=queues).queue == "gpu"
    assert _submit({**SPEC, "device": "cuda", "resources": {"gpus_per_node": 4}}, queue=queues).queue == "gpu-8x"
    assert _submit({**TWO_NODES, "device": "auto"}, queue=queues).queue == "gpu-8x"
    with pytest.raises(InvalidSpec) as exc:
        _submit({**SPEC, "batch_size": 48, "resources": {"nodes": 3}}, queue=queues)
    assert exc.value.errors[0][0] == "resources.nodes"


def test_a_spec_whose_prompts_do_not_split_over_its_processes_is_refused(service_env) -> None:
    with pytest.raises(InvalidSpec) as exc:
        _submit({**SPEC, "resources": {"nodes": 3}})
    ((field, message),) = exc.value.errors
    assert field == "resources" and "4 prompts a step cannot be split over 3 processes" in message
