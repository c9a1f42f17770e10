"""Response (and non-spec request) schemas. The job spec itself is rlad_core's TrainConfig."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from rlad_core.config import TrainConfig
from store.models import EventKind, JobStatus, KeyRole

# the job spec is rlad_core's TrainConfig; its nested models (tasks) go to the OpenAPI components (api/app.py)
SPEC_SCHEMA = TrainConfig.model_json_schema(ref_template="#/components/schemas/{model}")
SPEC_DEFS = SPEC_SCHEMA.pop("$defs", {})


class FieldError(BaseModel):
    field: str = Field(description="dotted path of the offending field (or header / query parameter / line)")
    message: str = Field(description="what is wrong, and the fix")


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable code, e.g. invalid_spec, not_found, unauthorized")
    message: str
    fields: list[FieldError] = Field(default_factory=list)


class ErrorBody(BaseModel):
    error: ErrorDetail


class JobPublic(BaseModel):
    id: str
    name: str | None
    method: str
    status: JobStatus
    is_terminal: bool
    attempt: int
    max_attempts: int
    queue: str
    queue_position: int | None = Field(description="1 = next on its queue; null unless queued")
    steps_done: int
    total_steps: int
    eta_s: float | None = Field(description="seconds to the last step at the recent pace; null when unknown")
    heartbeat_age_s: float | None = Field(description="seconds since the worker last reported; null unless active")
    worker: str | None
    error_code: str | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    webhook_url: str | None = None
    webhook_status: str | None = Field(default=None, description="pending, delivered or failed (see the events)")
    spec: dict[str, Any] = Field(description="the spec as submitted")
    spec_resolved: dict[str, Any] = Field(description="the spec validated, with every default filled in")


class JobList(BaseModel):
    items: list[JobPublic]
    has_more: bool
    next_after: str | None = Field(description="pass as `after` to get the next page; null on the last page")


class EventPublic(BaseModel):
    id: int
    kind: EventKind
    attempt: int
    data: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    items: list[EventPublic]


class MetricSeries(BaseModel):
    key: str
    steps: list[int]
    values: list[float | None] = Field(description="null where the value was not finite")
    times: list[float] = Field(description="unix seconds when each point was written")


class MetricsPublic(BaseModel):
    job_id: str
    keys: list[str] = Field(description="every metric key the job has")
    series: list[MetricSeries]
    downsampled: bool
    bucket: int = Field(
        description="steps per bucket (aligned to multiples of it), each shown by its first "
        "point; 1: every point of the range"
    )


class LatestPoint(BaseModel):
    step: int
    value: float | None
    time: float


class LatestMetrics(BaseModel):
    job_id: str
    latest: dict[str, LatestPoint] = Field(description="key -> its newest point")


class CheckpointFile(BaseModel):
    name: str
    bytes: int
    sha256: str


class CheckpointPublic(BaseModel):
    step: int
    kind: str
    bytes: int
    sha256: str = Field(description="sha256 of manifest.json, which lists every file's sha256")
    metrics: dict[str, Any]
    created_at: datetime
    download_url: str


class CheckpointDetail(CheckpointPublic):
    files: list[CheckpointFile]


class CheckpointList(BaseModel):
    items: list[CheckpointPublic]


class DatasetPublic(BaseModel):
    id: str
    name: str
    sha256: str
    bytes: int
    lines: int
    created_at: datetime
    task_path: str = Field(description="use as task.path of a jsonl task")


class DatasetList(BaseModel):
    items: list[DatasetPublic]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class SamplePublic(BaseModel):
    step: int
    eval: bool = Field(description="from an evaluation (greedy decoding) rather than a training rollout")
    prompt: str
    completion: str
    reward: float | None
    correct: bool | None
    created_at: datetime


class SampleList(BaseModel):
    items: list[SamplePublic] = Field(description="newest first")


class QueueDepth(BaseModel):
    queue: str
    queued: int = Field(description="the caller's team's jobs waiting on this queue")
    running: int = Field(description="the caller's team's jobs held by a worker (starting, running, cancelling)")


class QueueTotals(BaseModel):
    queued: int = Field(description="jobs waiting, all teams and queues")
    running: int = Field(description="jobs held by a worker, all teams and queues")


class WorkerPublic(BaseModel):
    name: str = Field(description="the Celery node, e.g. gpu@host")
    queues: list[str]
    started_at: datetime
    heartbeat_age_s: float
    alive: bool = Field(description="heartbeat within RLAD_HEARTBEAT_TIMEOUT_S")
    busy: bool
    job_id: str | None = Field(description="the job it runs, when it is the caller's team's")


class QueueState(BaseModel):
    queues: list[QueueDepth] = Field(description="the caller's team's jobs per queue")
    totals: QueueTotals = Field(description="the whole cluster's load (no per-team detail)")
    workers: list[WorkerPublic]


class KeyPublic(BaseModel):
    id: str
    name: str | None
    prefix: str = Field(description="the key's first characters, to tell keys apart")
    role: KeyRole = Field(description="read: poll and download; write: also submit, cancel, upload; admin: also keys")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="to the minute")
    revoked_at: datetime | None
    live: bool = Field(description="neither revoked nor expired")


class KeyCreated(KeyPublic):
    key: str = Field(description="the key itself: shown this once, never again")


class KeyList(BaseModel):
    items: list[KeyPublic]


class KeyCreate(BaseModel):
    model_config = {"extra": "forbid"}
    name: str | None = Field(default=None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    role: KeyRole = KeyRole.write
    expires_in_days: float | None = Field(default=None, gt=0, le=3650, description="none: never expires")


class KeyRotate(BaseModel):
    model_config = {"extra": "forbid"}
    grace_s: float = Field(
        default=3600, ge=0, le=30 * 86400, description="how long the old key keeps working (0: it ends now)"
    )


class KeyRotated(BaseModel):
    new: KeyCreated
    old: KeyPublic


class AuditEventPublic(BaseModel):
    id: int
    action: str = Field(description="job.submit, job.cancel, job.pause, job.resume, key.create, key.revoke, key.rotate")
    target: str = Field(description="the job or key acted on")
    key_id: str | None = Field(description="the key that acted (none: the operator, `rlad keys create`)")
    address: str | None = Field(description="the client's IP address")
    data: dict[str, Any]
    created_at: datetime


class AuditList(BaseModel):
    items: list[AuditEventPublic]
    next_after: int | None = Field(description="pass as `after` for the next page (none: no more)")


class UsagePublic(BaseModel):
    active_jobs: int = Field(description="queued, starting, running or cancelling")
    max_active_jobs: int = Field(description="RLAD_MAX_ACTIVE_JOBS_PER_TEAM: submissions beyond it get 429")
    checkpoints: int
    checkpoint_bytes: int
    datasets: int
    dataset_bytes: int
    storage_bytes: int = Field(description="checkpoints and datasets")
    max_storage_bytes: int | None = Field(
        description="RLAD_MAX_STORAGE_BYTES_PER_TEAM: at or over it new jobs and uploads get 429 (none: no limit)"
    )
    max_rollouts_per_job: int = Field(description="RLAD_MAX_ROLLOUTS_PER_JOB: largest steps x batch_size (422)")
    max_upload_bytes: int = Field(description="RLAD_MAX_UPLOAD_BYTES: largest dataset upload (413)")
    rate_limit_per_s: float | None = Field(
        description="RLAD_RATE_LIMIT_PER_S: requests per second per key in each API process (429; none: no limit)"
    )
    rate_limit_burst: int = Field(description="RLAD_RATE_LIMIT_BURST: requests a key may send at once")


class WebhookSecret(BaseModel):
    secret: str = Field(description="the key of the HMAC-SHA256 that signs each webhook body")
    header: str = Field(description="the header carrying the signature, as sha256=<hex>")
