"""Domain errors. The API maps each to one HTTP status in one handler (api/errors.py)."""

from __future__ import annotations


class StoreError(Exception):
    """Base class; `code` is the stable machine-readable error code in API bodies."""

    code = "error"


class NotFound(StoreError):
    code = "not_found"

    def __init__(self, kind: str, ident: str | int):
        self.kind, self.ident = kind, ident
        super().__init__(f"{kind} {ident!r} not found")


class NoSuchPart(NotFound):
    """A checkpoint lacks the part of it a download asked for (`message` says which parts it has)."""

    def __init__(self, part: str, step: int, message: str):
        StoreError.__init__(self, f"checkpoint {step} has no part {part!r}: {message}")
        self.kind, self.ident = "part", part


class InvalidTransition(StoreError):
    code = "invalid_transition"

    def __init__(self, current: str, target: str):
        self.current, self.target = current, target
        super().__init__(f"a job that is {current} cannot become {target}")


class IdempotencyConflict(StoreError):
    code = "idempotency_conflict"

    def __init__(self, key: str, job_id: str):
        self.key, self.job_id = key, job_id
        super().__init__(
            f"Idempotency-Key {key!r} was used for job {job_id} with a different body; "
            "fix: send the same body, or use a new key for a new job"
        )


class InvalidSpec(StoreError):
    """The job spec does not validate; `errors` is a list of (field, message with the fix)."""

    code = "invalid_spec"

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


class InvalidDataset(StoreError):
    code = "invalid_dataset"

    def __init__(self, message: str, *, line: int | None = None):
        self.line = line
        super().__init__(message)


class TooLarge(StoreError):
    code = "too_large"


class QuotaExceeded(StoreError):
    """A team is at one of its limits (by default: as many active jobs as allowed); nothing was stored.
    `setting` names the limit, `limit` its value."""

    code = "quota_exceeded"

    def __init__(self, limit: int, message: str | None = None, *, setting: str = "max_active_jobs_per_team"):
        self.limit, self.setting = limit, setting
        super().__init__(
            message
            or f"the team already has {limit} jobs queued or running (max_active_jobs_per_team={limit}); "
            "fix: wait for some to finish, or cancel some"
        )
