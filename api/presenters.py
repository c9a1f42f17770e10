"""The public view of a job (`JobPublic`), for the API routes, the poll cache and the dashboard pages."""

from __future__ import annotations

from sqlalchemy.orm import Session

from api.schemas import JobPublic
from store import jobs as job_store
from store import states
from store.models import Job


def job_public(session: Session, job: Job) -> JobPublic:
    p = job_store.progress(job)
    return JobPublic(
        id=job.id,
        name=job.name,
        method=job.method,
        status=job.status,
        is_terminal=states.is_terminal(job.status),
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        queue=job.queue,
        queue_position=job_store.queue_position(session, job=job),
        steps_done=job.last_step,
        total_steps=job.total_steps,
        eta_s=p.eta_s,
        heartbeat_age_s=p.heartbeat_age_s,
        worker=job.worker,
        error_code=job.error_code,
        error_message=job.error_message,
        created_at=job.created_at,
        updated_at=job.updated_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        webhook_url=job.webhook_url,
        webhook_status=job.webhook_status,
        spec=job.spec,
        spec_resolved=job.spec_resolved,
    )
