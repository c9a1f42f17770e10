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

from rlad_core.config import ConfigError, parse_config
from rlad_core.models import TokenizerMismatch
from rlad_core.tasks.jsonl import DatasetError
from rlad_core.trainer import NonFiniteError, train
from store import datasets as ds_store
from store import jobs as job_store
from store.db import session_scope
from store.jobs import DATASET_SCHEME
from store.models import JobStatus
from store.results import get_result_store
from store.settings import get_settings
from workers.reporter import JobReporter

log = logging.getLogger("rlad.trainer")
S = JobStatus

# error code for exceptions that retrying cannot fix
ERROR_CODES: list[tuple[type[BaseException], str]] = [
    (ConfigError, "invalid_spec"), (DatasetError, "invalid_dataset"), (TokenizerMismatch, "tokenizer_mismatch"),
    (FileNotFoundError, "not_found"), (NonFiniteError, "non_finite"), (MemoryError, "out_of_memory"),
]


def error_code(exc: BaseException) -> str:
    if type(exc).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError
        return "out_of_memory"
    return next((code for cls, code in ERROR_CODES if isinstance(exc, cls)), "training_failed")


def run(job_id: str, attempt: int) -> int:
    settings = get_settings()
    store = get_result_store(settings.resolved_result_root)
    with session_scope() as s:
        job = job_store.get_job(s, team_id=None, job_id=job_id)
        if job.attempt != attempt or job.status not in (S.starting, S.cancelling):
            log.info("job %s: attempt %d does not hold the job (%s); exiting", job_id, attempt, job.status.value)
            return 0
        spec = dict(job.spec_resolved)
        task = dict(spec["task"])
        if task.get("name") == "jsonl" and task["path"].startswith(DATASET_SCHEME):
            ds = ds_store.get_dataset(s, team_id=job.team_id, dataset_id=task["path"].removeprefix(DATASET_SCHEME))
            task["path"] = str(store.dataset_path(ds.location)) if ds else task["path"]
        spec["task"] = task
    spec["output_dir"] = str(store.job_dir(job_id))

    reporter = JobReporter(job_id, attempt, spec["steps"], store, flush_s=settings.metrics_flush_s)
    signal.signal(signal.SIGTERM, reporter.request_stop)
    try:
        config = parse_config(spec)
        result = train(config, reporter=reporter, resume_from="auto")
    except BaseException as exc:
        reporter.close()
        code = error_code(exc)
        log.error("job %s: failed (%s): %s\n%s", job_id, code, exc, traceback.format_exc())
        with session_scope() as s:
            job_store.finish_job(s, job_id=job_id, attempt=attempt, outcome=S.failed, error_code=code,
                                 error_message=f"{type(exc).__name__}: {exc}"[:4000])
        return 1
    reporter.close()
    outcome = S.cancelled if result.stopped else S.succeeded
    with session_scope() as s:
        job_store.finish_job(s, job_id=job_id, attempt=attempt, outcome=outcome, step=result.step,
                             checkpoint_step=result.step if result.checkpoint else None)
    log.info("job %s: %s at step %d", job_id, outcome.value, result.step)
    return 0


def main() -> None:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no per-shard bars in the worker log
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job_id, attempt = sys.argv[1], int(sys.argv[2])
    sys.exit(run(job_id, attempt))


if __name__ == "__main__":
    main()
