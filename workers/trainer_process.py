"""The trainer process: `python -m workers.trainer_process JOB_ID ATTEMPT`, started by the supervisor.

Loads the job's resolved spec, points its output at the result store, resumes from the job's last
checkpoint if there is one, runs rlad_core with a `JobReporter`, and records how the run ended. SIGTERM
asks for a final checkpoint and a clean stop (cancel)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from typing import Any

from rlad_core.config import ConfigError, parse_config
from rlad_core.models import TokenizerMismatch
from rlad_core.tasks.jsonl import DatasetError
from rlad_core.trainer import NonFiniteError, train
from store import jobs as job_store
from store import refs
from store.db import retry_unavailable, session_scope
from store.models import Job, JobStatus
from store.results import get_result_store
from store.settings import get_settings
from workers.reporter import JobReporter

log = logging.getLogger("rlad.trainer")
S = JobStatus

# error code for exceptions that retrying cannot fix
ERROR_CODES: list[tuple[type[BaseException], str]] = [
    (ConfigError, "invalid_spec"),
    (DatasetError, "invalid_dataset"),
    (TokenizerMismatch, "tokenizer_mismatch"),
    (FileNotFoundError, "not_found"),
    (NonFiniteError, "non_finite"),
    (MemoryError, "out_of_memory"),
]


def error_code(exc: BaseException) -> str:
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return "out_of_memory"
    return next((code for cls, code in ERROR_CODES if isinstance(exc, cls)), "training_failed")


def run(job_id: str, attempt: int) -> int:
    settings = get_settings()
    store = get_result_store(settings.resolved_result_root)

    def load() -> tuple[Job, dict[str, Any]]:
        with session_scope() as s:
            job = job_store.get_job(s, team_id=None, job_id=job_id)
            return job, dict(job.spec_resolved)

    job, spec = retry_unavailable(load, what=f"job {job_id}: load")
    if job.attempt != attempt or job.status not in (S.starting, S.cancelling):
        log.info("job %s: attempt %d does not hold the job (%s); exiting", job_id, attempt, job.status.value)
        return 0
    team_id = job.team_id
    spec["output_dir"] = str(store.job_dir(job_id))

    reporter = JobReporter(job_id, attempt, spec["steps"], store, flush_s=settings.metrics_flush_s)
    signal.signal(signal.SIGTERM, reporter.request_stop)
    try:
        with session_scope() as s:  # refs -> local paths (store.refs: checked again, HF ids offline)
            spec = refs.localize_refs(s, team_id=team_id, spec=spec, store=store, settings=settings)
        config = parse_config(spec)
        result = train(
            config,
            reporter=reporter,
            resume_from="auto",
            disk_reserve_bytes=settings.disk_reserve_bytes,
            disk_poll_s=settings.disk_full_poll_s,
        )  # a full result store pauses the job (disk_full)
    except BaseException as exc:
        reporter.close()
        code = error_code(exc)
        log.error("job %s: failed (%s): %s\n%s", job_id, code, exc, traceback.format_exc())
        _finish(job_id, attempt, S.failed, error_code=code, error_message=f"{type(exc).__name__}: {exc}"[:4000])
        return 1
    reporter.close()
    if result.stopped and _status(job_id) != S.cancelling:
        # stopped by a worker that is shutting down: the supervisor releases the job to the queue
        log.info("job %s: stopped at step %d for a worker shutdown", job_id, result.step)
        return 0
    outcome = S.cancelled if result.stopped else S.succeeded
    _finish(job_id, attempt, outcome, step=result.step, checkpoint_step=result.step if result.checkpoint else None)
    log.info("job %s: %s at step %d", job_id, outcome.value, result.step)
    return 0


def _status(job_id: str) -> S:
    def read() -> S:
        with session_scope() as s:
            return job_store.status_of(s, job_id=job_id)

    return retry_unavailable(read, what=f"job {job_id}: status")


def _finish(job_id: str, attempt: int, outcome: S, **data: Any) -> None:
    """Record how the attempt ended; a database that is away is waited for (the result must not be lost)."""

    def finish() -> None:
        with session_scope() as s:
            job_store.finish_job(s, job_id=job_id, attempt=attempt, outcome=outcome, **data)

    retry_unavailable(finish, what=f"job {job_id}: record {outcome.value}")


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no per-shard bars in the worker log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_id, attempt = sys.argv[1], int(sys.argv[2])
    sys.exit(run(job_id, attempt))


if __name__ == "__main__":
    main()
