"""The tables: teams and API keys, jobs, job events, metrics, checkpoints, datasets.

Constraint names follow one convention (`NAMING`), so that Alembic revisions name them the same on
PostgreSQL and SQLite. Times are timezone-aware UTC.
"""

from __future__ import annotations

import enum
import os
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Time-ordered id: `<prefix>_<16 hex of ns since epoch><8 random hex>`; sorts by creation time."""
    return f"{prefix}_{time.time_ns():016x}{os.urandom(4).hex()}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive values and hands them back naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON}


class JobStatus(enum.StrEnum):
    queued = "queued"
    starting = "starting"
    running = "running"
    cancelling = "cancelling"
    pausing = "pausing"  # asked to pause: the trainer checkpoints and stops, the worker is freed
    paused = "paused"  # holds no worker; POST /resume queues it again (it resumes from its last checkpoint)
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    lost = "lost"


class EventKind(enum.StrEnum):
    queued = "queued"
    claimed = "claimed"
    started = "started"
    resumed = "resumed"
    checkpoint_saved = "checkpoint_saved"
    eval_completed = "eval_completed"
    step_skipped = "step_skipped"
    cancel_requested = "cancel_requested"
    lost = "lost"
    released = "released"  # a stopping worker handed the job back to the queue after a checkpoint (not a loss)
    disk_full = "disk_full"  # a checkpoint waits for space on the result store
    pause_requested = "pause_requested"
    paused = "paused"
    webhook_delivered = "webhook_delivered"  # after the end: the job's webhook answered 2xx
    webhook_failed = "webhook_failed"  # one delivery attempt failed (`final`: no more tries)
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # stored as VARCHAR with a CHECK constraint: portable, and a new member is a reviewed migration
    return Enum(
        cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=32,
        values_callable=lambda e: [m.value for m in e],
    )


class Team(Base):
    __tablename__ = "teams"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("team"))
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    webhook_secret: Mapped[str | None] = mapped_column(String(64), default=None)  # signs webhook bodies


class KeyRole(enum.StrEnum):
    """What a key may do (store.teams.ALLOWED): read polls and downloads; write also submits, cancels and
    uploads; admin also manages the team's keys and reads its audit log."""

    read = "read"
    write = "write"
    admin = "admin"


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    # sha256 of the whole key: keys are 256-bit random, so a fast hash is enough (no dictionary to attack)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))  # the first characters, to tell keys apart in listings
    name: Mapped[str | None] = mapped_column(String(100), default=None)
    role: Mapped[KeyRole] = mapped_column(_enum(KeyRole, "key_role"), default=KeyRole.admin)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)  # to the minute (store.teams)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("team_id", "idempotency_key", name="uq_jobs_team_id_idempotency_key"),
        Index("ix_jobs_team_id_id", "team_id", "id"),
        Index("ix_jobs_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_jobs_queue_status_id", "queue", "status", "id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(200), default=None)
    method: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column()  # as submitted
    spec_resolved: Mapped[dict[str, Any]] = mapped_column()  # validated, defaults filled, datasets resolved
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus, "job_status"), default=JobStatus.queued)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    queue: Mapped[str] = mapped_column(String(64), default="gpu")
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    dispatched_at: Mapped[datetime | None] = mapped_column(default=None)  # last time its id was sent to the queue
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer)
    seconds_per_step: Mapped[float | None] = mapped_column(Float, default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # a URL the service POSTs the job to when it ends (store.webhooks): pending -> delivered | failed
    webhook_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    webhook_status: Mapped[str | None] = mapped_column(String(16), default=None)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    webhook_next_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[EventKind] = mapped_column(_enum(EventKind, "event_kind"))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Metric(Base):
    """One value of one key at one step. Writes are upserts on the primary key (job, step, key), so a
    resumed attempt that repeats steps replaces them: no duplicates, no gaps."""

    __tablename__ = "metrics"
    __table_args__ = (Index("ix_metrics_job_id_time", "job_id", "time"),)  # the live tail (/metrics/stream)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)  # null: non-finite (a skipped step's loss)
    time: Mapped[float] = mapped_column(Float)  # unix seconds


class MetricRollup(Base):
    """The first point of each aligned bucket of `4**level` steps of a series (levels 1..8), kept as points
    are written, so a downsampled read costs the points it returns, not the points stored (store.metrics)."""

    __tablename__ = "metric_rollups"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True)  # step // 4**level
    step: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    time: Mapped[float] = mapped_column(Float)


class JobSample(Base):
    """A rollout of the job for people to read (prompt, completion, reward); the newest are kept
    (`store.samples`)."""

    __tablename__ = "job_samples"
    __table_args__ = (Index("ix_job_samples_job_id_id", "job_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    eval: Mapped[bool] = mapped_column(default=False)  # from an evaluation (greedy) rather than training
    prompt: Mapped[str] = mapped_column(Text)
    completion: Mapped[str] = mapped_column(Text)
    reward: Mapped[float | None] = mapped_column(Float, default=None)
    correct: Mapped[bool | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Worker(Base):
    """A Celery worker node (`gpu@host`) as it last reported itself; `jobs.worker` names the node running a job."""

    __tablename__ = "workers"
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    queues: Mapped[str] = mapped_column(String(200))  # comma-separated
    pid: Mapped[int] = mapped_column(Integer)
    devices: Mapped[int] = mapped_column(Integer, default=0)  # CUDA devices the node's jobs can use
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class NodeClaim(Base):
    """One machine's seat in an attempt of a job on several nodes (gang scheduling, `store.gangs`): the workers
    that take the job's messages claim seats until `nodes` are claimed, before `deadline`, then all start. The
    first seat's address and port are the torchrun rendezvous endpoint; node ranks follow the seats' order."""

    __tablename__ = "node_claims"
    __table_args__ = (UniqueConstraint("job_id", "attempt", "worker", name="uq_node_claims_job_id_attempt_worker"),)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer, primary_key=True)  # the attempt the gang runs
    seat: Mapped[int] = mapped_column(Integer, primary_key=True)  # order of claiming
    worker: Mapped[str] = mapped_column(String(200))
    address: Mapped[str] = mapped_column(String(255))  # where the other nodes reach this one
    port: Mapped[int] = mapped_column(Integer)  # free on `address` when claimed: the rendezvous port if first
    deadline: Mapped[datetime] = mapped_column()  # the gang forms by then, or its claims are released
    heartbeat_at: Mapped[datetime] = mapped_column(default=utcnow)


class UiSession(Base):
    """A dashboard sign-in: the cookie holds a random token, the table its sha256. Signing out deletes the row,
    so a copied cookie stops working at once; the API key itself never leaves the sign-in form."""

    __tablename__ = "ui_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    # the key signed in with: the sign-in has its role and ends when the key is revoked or expires
    key_id: Mapped[str | None] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()


class AuditEvent(Base):
    """Who did what to the team's jobs and keys, when and from where (GET /v1/audit, admin keys)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_team_id_id", "team_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"))
    key_id: Mapped[str | None] = mapped_column(String(40), default=None)  # None: the operator (rlad keys create)
    action: Mapped[str] = mapped_column(String(32))  # store.audit.ACTIONS
    target: Mapped[str] = mapped_column(String(40))  # the job or key acted on
    address: Mapped[str | None] = mapped_column(String(64), default=None)  # the client's IP address
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_checkpoints_job_id_step"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # periodic | final
    location: Mapped[str] = mapped_column(String(500))  # relative to the result store root
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))  # of manifest.json, which holds every file's sha256
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (UniqueConstraint("team_id", "sha256", name="uq_datasets_team_id_sha256"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    team_id: Mapped[str] = mapped_column(ForeignKey("teams.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    sha256: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(BigInteger)
    lines: Mapped[int] = mapped_column(Integer)
    location: Mapped[str] = mapped_column(String(500))  # relative to the result store root
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
