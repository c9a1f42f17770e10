"""All service settings in one pydantic-settings object, read from the environment (prefix `RLAD_`).

The default is the embedded deployment: everything under one data directory (SQLite database, kombu's
filesystem broker, local result store). Production sets `RLAD_DATABASE_URL` (PostgreSQL) and
`RLAD_BROKER_URL` (Redis). Obtain it through `get_settings()`; nothing connects at import time.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RLAD_", extra="ignore")

    data_dir: Path = Field(default=Path("rlad-data"), description="embedded deployment: everything lives here")
    database_url: str | None = Field(default=None, description="SQLAlchemy URL; default: SQLite file in data_dir")
    broker_url: str | None = Field(
        default=None, description="Celery broker; default: kombu filesystem broker in data_dir"
    )
    result_root: Path | None = Field(default=None, description="result store directory; default: data_dir/results")

    # jobs
    default_queue: str = Field(default="gpu", description="Celery queue jobs are sent to")
    job_queues: list[str] | None = Field(
        default=None,
        description="queues jobs may go to, in order of preference (JSON list); a job goes to the first whose "
        "live workers can serve its device and resources; default: [default_queue]",
    )
    max_attempts: int = Field(
        default=3,
        ge=1,
        description="a lost job is re-queued until it has been lost this many "
        "times (attempts a stopping worker released do not count)",
    )
    heartbeat_interval_s: float = Field(
        default=5.0, gt=0, description="how often a worker writes a running job's heartbeat"
    )
    heartbeat_timeout_s: float = Field(
        default=120.0, gt=0, description="a running job whose heartbeat is older is lost"
    )
    reaper_interval_s: float = Field(default=30.0, gt=0, description="how often Celery beat runs the reaper")
    webhook_poll_s: float = Field(default=5.0, gt=0, description="how often Celery beat sends due webhooks")
    webhook_timeout_s: float = Field(default=10.0, gt=0, description="how long one webhook try waits for an answer")
    webhook_max_attempts: int = Field(default=6, ge=1, description="tries of a webhook before it is given up")
    webhook_backoff_s: float = Field(
        default=30.0, ge=0, description="the wait after a webhook's first failed try; doubled after each"
    )
    redispatch_after_s: float = Field(
        default=600.0,
        gt=0,
        description="a job still queued this long after its id was "
        "sent is sent again (a message lost by the broker); duplicates are harmless",
    )
    gang_wait_s: float = Field(
        default=300.0,
        gt=0,
        description="a job on several nodes starts once that many workers have claimed it; claims not "
        "completed within this many seconds are released and the job waits in the queue",
    )
    node_address: str | None = Field(
        default=None,
        max_length=255,
        description="the address other nodes reach this worker's node at (torchrun rendezvous and process "
        "group); default: the address this machine's hostname resolves to",
    )
    cancel_poll_s: float = Field(default=0.5, gt=0, description="how often the supervisor checks the cancel flag")
    cancel_grace_s: float = Field(
        default=300.0,
        ge=0,
        description="SIGTERM -> SIGKILL grace: the trainer stops at "
        "the next step boundary and writes a final checkpoint; allow one step plus a save",
    )
    metrics_flush_s: float = Field(
        default=1.0, ge=0, description="the trainer writes buffered metrics at least this often"
    )
    db_retry_max_s: float = Field(
        default=10.0,
        gt=0,
        description="workers retry a database call that failed on the "
        "connection with backoff up to this many seconds apart, for as long as the database "
        "is away: an outage shorter than the heartbeat timeout costs a running job nothing",
    )
    shutdown_grace_s: float = Field(
        default=120.0,
        ge=0,
        description="a worker told to stop (SIGTERM) gives its job this "
        "long to checkpoint before it releases the job to the queue (compose's "
        "stop_grace_period must be longer)",
    )
    disk_reserve_bytes: int = Field(
        default=0,
        ge=0,
        description="a checkpoint is written only if the result store keeps "
        "at least this much free beside it; otherwise the job waits (disk_full event) "
        "until space is freed, for up to RLAD_DISK_FULL_WAIT_S",
    )
    disk_full_poll_s: float = Field(
        default=10.0, gt=0, description="how often a job waiting for disk space checks again"
    )
    disk_full_wait_s: float = Field(
        default=600.0,
        ge=0,
        description="how long a checkpoint waits for disk space before the job fails with error "
        "code disk_full (its earlier checkpoints stay intact and downloadable); 0: fail at once",
    )

    # API
    job_cache_ttl_s: float = Field(
        default=1.0,
        ge=0,
        description="GET /v1/jobs/{id} answers from a per-process cache "
        "this fresh (many pollers of one job cost one query a second); 0 disables",
    )

    # what jobs may read
    model_roots: list[Path] = Field(
        default_factory=list,
        description="directories whose models and datasets a job "
        'may name by absolute path (JSON list, e.g. ["/models"]); anything else must '
        "be a Hugging Face id in the workers' local cache, dataset:<id> or "
        "checkpoint:<job>[/<step>]. The result store is never readable by path",
    )

    # limits
    max_json_bytes: int = Field(default=1024 * 1024, gt=0, description="largest JSON request body (413 beyond it)")
    max_active_jobs_per_team: int = Field(
        default=100, ge=1, description="a team's jobs queued or running at once; a submission beyond it gets 429"
    )
    max_rollouts_per_job: int = Field(
        default=10_000_000,
        ge=1,
        description="largest steps x batch_size of one job (the paper's runs: 300 x 256 = 76,800); 422 beyond it",
    )
    max_storage_bytes_per_team: int = Field(
        default=1 << 40,
        ge=0,
        description="a team's checkpoints and datasets, in bytes (GET /v1/usage); at or over it, new jobs and "
        "uploads get 429 (running jobs keep checkpointing); 0: no limit",
    )
    rate_limit_per_s: float = Field(
        default=50.0,
        ge=0,
        description="requests per second per key, in each API process (a token bucket; 429 with Retry-After "
        "beyond it); 0: no limit",
    )
    rate_limit_burst: int = Field(default=100, ge=1, description="requests a key may send at once above the rate")
    ui_session_ttl_s: float = Field(
        default=12 * 3600,
        gt=0,
        description="a dashboard sign-in lasts this long; signing out ends it on the server at once",
    )
    cookie_secure: bool = Field(
        default=True,
        description="the dashboard's sign-in cookie is Secure (sent over HTTPS "
        "and to localhost only); false only behind plain HTTP on a trusted network",
    )
    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0, description="largest dataset upload")
    max_page_size: int = Field(default=200, ge=1, description="largest `limit` of a list request")
    max_metric_points: int = Field(
        default=10_000, ge=1, description="largest `max_points` per key of a metrics request"
    )

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'rlad.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    @property
    def broker_folder(self) -> Path:
        """Folder of kombu's filesystem transport (embedded deployment)."""
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_job_queues(self) -> list[str]:
        return self.job_queues or [self.default_queue]

    @property
    def resolved_node_address(self) -> str:
        """The address other nodes reach this one at (`node_address`, else the hostname's address)."""
        import socket

        if self.node_address:
            return self.node_address
        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError:
            return socket.gethostname()

    @property
    def resolved_result_root(self) -> Path:
        return (self.result_root or self.data_dir / "results").resolve()


@lru_cache
def get_settings() -> Settings:
    return Settings()
