"""A small Python client for the RLAD REST API (`/v1`), over httpx.

    from rlad.client import Client
    with Client.from_env() as c:                      # RLAD_URL, RLAD_API_KEY (or <RLAD_DATA_DIR>/api_key)
        job = c.submit({"student": "...", "teacher": "...", "steps": 100})
        job = c.wait(job["id"], on_update=lambda j: print(j["steps_done"], "/", j["total_steps"]))
        path = c.download(job["id"], out_dir="checkpoints")   # a Hugging Face directory, sha256 verified

Responses are the API's JSON as dicts (see `api/schemas.py` for their fields). Errors are `ApiError`
(the API answered with an error), `ServiceUnavailable` (no answer), `ChecksumError` (a download does not
match its manifest); all derive from `RladError`. The client imports neither torch nor the server side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import httpx

from rlad_core import layout  # standard library only: the client stays free of torch

DEFAULT_URL = "http://127.0.0.1:8321"
DEFAULT_DATA_DIR = "rlad-data"
KEY_FILE = "api_key"  # what `rlad up` (rlad.service.LocalService) writes into the data directory
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})  # `lost` is re-queued, not final
CHUNK = 1 << 20
RATE_LIMIT_RETRIES = 5  # a 429 for the key's request rate is waited out (Retry-After) this many times
# A request on a kept-alive connection that the server or a proxy closed at that moment gets no answer; a
# request that changes nothing is sent once more on a new connection, as browsers do (RFC 9112, 9.3.1).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
LOST_CONNECTION = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)
RETRY_STATUSES = frozenset({502, 503, 504})  # the service or its database is restarting: the same request may pass

JobDict = dict[str, Any]


class RladError(Exception):
    """Base of the client's errors; `str()` is a message meant for people."""


class ServiceUnavailable(RladError):
    """The API could not be reached (connection refused, DNS, timeout)."""


class ChecksumError(RladError):
    """A downloaded checkpoint does not match its manifest (or the manifest its published sha256)."""


class FieldError(NamedTuple):
    field: str
    message: str


class ApiError(RladError):
    """The API answered with an error: `{"error": {"code", "message", "fields": [{"field", "message"}]}}`."""

    def __init__(
        self, status: int, code: str, message: str, fields: Iterable[FieldError] = (), retry_after: float | None = None
    ):
        self.status, self.code, self.message = status, code, message
        self.fields = [FieldError(*f) for f in fields]
        self.retry_after = retry_after  # seconds, from the Retry-After header (503, 429)
        super().__init__(f"{message} (HTTP {status}, {code})")

    @classmethod
    def from_response(cls, resp: httpx.Response) -> ApiError:
        retry_after = None
        with contextlib.suppress(ValueError):
            retry_after = float(resp.headers.get("retry-after", "")) or None
        try:
            err = resp.json()["error"]
            fields = [FieldError(str(f.get("field", "")), str(f.get("message", ""))) for f in err.get("fields") or []]
            return cls(
                resp.status_code, str(err.get("code", "error")), str(err.get("message", "")), fields, retry_after
            )
        except (ValueError, KeyError, TypeError, AttributeError):  # not our error body (a proxy, say)
            text = resp.text.strip()[:300]
            return cls(
                resp.status_code,
                "http_error",
                text or resp.reason_phrase or f"HTTP {resp.status_code}",
                retry_after=retry_after,
            )


def default_data_dir() -> Path:
    return Path(os.environ.get("RLAD_DATA_DIR") or DEFAULT_DATA_DIR)


def resolve_api_key() -> str | None:
    """`RLAD_API_KEY`, else the key file `rlad up` writes (`<RLAD_DATA_DIR or ./rlad-data>/api_key`)."""
    key = os.environ.get("RLAD_API_KEY", "").strip()
    if key:
        return key
    key_file = default_data_dir() / KEY_FILE
    with contextlib.suppress(OSError):
        return key_file.read_text().strip() or None
    return None


def verify_checkpoint_dir(path: str | Path, *, manifest_sha256: str | None = None, part: str = "all") -> dict[str, Any]:
    """Check every file of a downloaded checkpoint (or `part` of one) against its manifest.json (size and
    sha256) and, when given, the manifest itself against `manifest_sha256` (the checkpoint's `sha256` in the
    API). Returns the manifest; raises `ChecksumError` naming the first file that does not match."""
    try:
        return layout.verify(path, manifest_sha256=manifest_sha256, part=part)
    except layout.ManifestMismatch as exc:
        raise ChecksumError(str(exc)) from None


def _safe_members(tar: tarfile.TarFile, prefix: str) -> Iterator[tarfile.TarInfo]:
    """Every member must be a plain file or directory under `prefix/`, with no absolute path and no `..`."""
    for m in tar:
        p = PurePosixPath(m.name)
        if p.is_absolute() or m.name.startswith(("/", "\\")) or ".." in p.parts or "\\" in m.name:
            raise ChecksumError(f"unsafe path in the archive: {m.name!r}")
        if not p.parts or p.parts[0] != prefix:
            raise ChecksumError(f"unexpected entry in the archive: {m.name!r} (not under {prefix}/)")
        if not (m.isfile() or m.isdir()):
            raise ChecksumError(f"unexpected entry in the archive: {m.name!r} is not a regular file")
        yield m


class Client:
    """The RLAD API for one team (the team of `api_key`)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        headers = {"User-Agent": "rlad-client/1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    @classmethod
    def from_env(cls, *, timeout: float = 30.0) -> Client:
        """Base URL from `RLAD_URL` (default http://127.0.0.1:8321); key from `RLAD_API_KEY`, else the key
        file `<RLAD_DATA_DIR or ./rlad-data>/api_key` that `rlad up` writes."""
        url = os.environ.get("RLAD_URL", "").strip() or DEFAULT_URL
        key = resolve_api_key()
        if not key:
            raise RladError(
                f"no API key: set RLAD_API_KEY, or run `rlad up` (it writes "
                f"{default_data_dir() / KEY_FILE}), or mint one with `rlad keys create --team NAME`"
            )
        return cls(url, key, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- plumbing ---------------------------------------------------------------------------------------
    def _unreachable(self, exc: httpx.HTTPError) -> ServiceUnavailable:
        what = "timed out" if isinstance(exc, httpx.TimeoutException) else f"{type(exc).__name__}: {exc}"
        return ServiceUnavailable(
            f"cannot reach the RLAD API at {self.base_url} ({what}); is the service "
            "running? start it with `rlad up`, or point RLAD_URL at it"
        )

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        for _ in range(RATE_LIMIT_RETRIES):
            try:
                try:
                    resp = self._http.request(method, path, **kw)
                except LOST_CONNECTION:
                    if method.upper() not in IDEMPOTENT:
                        raise
                    resp = self._http.request(method, path, **kw)
            except (httpx.TransportError, httpx.InvalidURL) as exc:
                raise self._unreachable(exc) from None
            if not resp.is_error:
                return resp
            error = ApiError.from_response(resp)
            if error.code != "too_many_requests":  # a quota (quota_exceeded) is not waited out here
                raise error
            time.sleep(min(error.retry_after or 1.0, 10.0))  # over the key's request rate: as the server says
        raise error

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        return self._request(method, path, **kw).json()

    @contextlib.contextmanager
    def _stream(self, path: str, params: dict[str, str] | None = None) -> Iterator[httpx.Response]:
        try:
            with self._http.stream("GET", path, params=params) as resp:
                if resp.is_error:
                    resp.read()
                    raise ApiError.from_response(resp)
                yield resp
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise self._unreachable(exc) from None

    # ----- jobs -------------------------------------------------------------------------------------------
    def submit(
        self,
        spec: dict[str, Any],
        idempotency_key: str | None = None,
        *,
        retries: int = 4,
        webhook_url: str | None = None,
    ) -> JobDict:
        """Queue a job; the spec is rlad_core's TrainConfig as a dict. The same idempotency key and spec return
        the job already created (`ApiError` 409 when the spec differs). Without a key one is made up, so that
        the retries here (no answer, or 502/503/504 such as a database restart, up to `retries` times with
        backoff and the server's Retry-After) can never create the job twice. `webhook_url`: the service POSTs
        the job there, signed with the team's webhook secret (`webhook_secret()`), when it ends."""
        headers = {"Idempotency-Key": idempotency_key or f"rlad-client-{uuid.uuid4().hex}"}
        params = {"webhook_url": webhook_url} if webhook_url else None
        for attempt in range(retries):
            try:
                return self._json("POST", "/v1/jobs", json=spec, headers=headers, params=params)
            except ServiceUnavailable:
                retry_after = None
            except ApiError as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                retry_after = exc.retry_after
            time.sleep(min(retry_after or 0.5 * 2**attempt, 10.0))
        return self._json("POST", "/v1/jobs", json=spec, headers=headers, params=params)

    def list_jobs(
        self,
        status: str | list[str] | None = None,
        method: str | list[str] | None = None,
        limit: int = 50,
        after: str | None = None,
    ) -> dict[str, Any]:
        """One page, newest first: {"items", "has_more", "next_after"} (pass next_after as `after`)."""
        params: dict[str, Any] = {"limit": limit}
        if status:
            params["status"] = [status] if isinstance(status, str) else list(status)
        if method:
            params["method"] = [method] if isinstance(method, str) else list(method)
        if after:
            params["after"] = after
        return self._json("GET", "/v1/jobs", params=params)

    def iter_jobs(
        self, status: str | list[str] | None = None, method: str | list[str] | None = None, page_size: int = 100
    ) -> Iterator[JobDict]:
        """Every job, page after page."""
        after = None
        while True:
            page = self.list_jobs(status=status, method=method, limit=page_size, after=after)
            yield from page["items"]
            if not page["has_more"] or not page["next_after"]:
                return
            after = page["next_after"]

    def get_job(self, job_id: str) -> JobDict:
        return self._json("GET", f"/v1/jobs/{_seg(job_id)}")

    def cancel(self, job_id: str) -> JobDict:
        return self._json("POST", f"/v1/jobs/{_seg(job_id)}/cancel")

    def pause(self, job_id: str) -> JobDict:
        """Queued: paused at once; running: `pausing`, then `paused` once it has checkpointed (the worker is free)."""
        return self._json("POST", f"/v1/jobs/{_seg(job_id)}/pause")

    def resume(self, job_id: str) -> JobDict:
        """A paused job goes back to the queue; it resumes from its last checkpoint."""
        return self._json("POST", f"/v1/jobs/{_seg(job_id)}/resume")

    def events(self, job_id: str, after: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Events with an id larger than `after`, oldest first: [{"id", "kind", "attempt", "data", "created_at"}]."""
        params: dict[str, Any] = {}
        if after is not None:
            params["after"] = after
        if limit is not None:
            params["limit"] = limit
        return self._json("GET", f"/v1/jobs/{_seg(job_id)}/events", params=params)["items"]

    def metrics(self, job_id: str, keys: Iterable[str] | None = None, max_points: int = 1000) -> dict[str, Any]:
        """{"keys": every key the job has, "series": [{"key", "steps", "values", "times"}], "downsampled", "bucket"}."""
        params: dict[str, Any] = {"max_points": max_points}
        if keys is not None:
            params["key"] = list(keys)
        return self._json("GET", f"/v1/jobs/{_seg(job_id)}/metrics", params=params)

    def latest_metrics(self, job_id: str, keys: Iterable[str]) -> dict[str, float | None]:
        """The last value of each of `keys` that the job has reported (missing keys are left out)."""
        latest = self._request("GET", f"/v1/jobs/{job_id}/metrics/latest", params={"key": list(keys)}).json()["latest"]
        return {k: p["value"] for k, p in latest.items()}

    def wait(
        self,
        job_id: str,
        poll_s: float = 1.0,
        on_update: Callable[[JobDict], None] | None = None,
        timeout_s: float | None = None,
        unreachable_grace_s: float = 30.0,
    ) -> JobDict:
        """Poll until the job is terminal and return it. `on_update(job)` is called after every poll. The
        service may be unreachable for up to `unreachable_grace_s` at a time (a restart) before this raises."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        down_since: float | None = None
        while True:
            try:
                job = self.get_job(job_id)
                down_since = None
            except ServiceUnavailable:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > unreachable_grace_s:
                    raise
            else:
                if on_update is not None:
                    on_update(job)
                if job.get("is_terminal", job.get("status") in TERMINAL):
                    return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is not finished after {timeout_s:.0f} s")
            time.sleep(poll_s)

    # ----- checkpoints ------------------------------------------------------------------------------------
    def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        """Oldest step first: [{"step", "kind", "bytes", "sha256", "metrics", "created_at", "download_url"}]."""
        return self._json("GET", f"/v1/jobs/{_seg(job_id)}/checkpoints")["items"]

    def checkpoint(self, job_id: str, step: int) -> dict[str, Any]:
        """One checkpoint with its `files` [{"name", "bytes", "sha256"}]."""
        return self._json("GET", f"/v1/jobs/{_seg(job_id)}/checkpoints/{int(step)}")

    def download(
        self,
        job_id: str,
        step: int | None = None,
        out_dir: str | Path = ".",
        on_progress: Callable[[int, int], None] | None = None,
        part: str = "all",
    ) -> Path:
        """Download a checkpoint (the latest when `step` is None) into `out_dir/<job>-step-<n>/` and return
        that path: a Hugging Face directory (`from_pretrained`), every file checked against manifest.json.

        `part` (rlad_core.layout.PARTS): "all" (every file; resumes a run), "model" (the loadable model only),
        "adapter" (a LoRA student's adapter), "merged" (a LoRA student's merged weights as a plain model); a
        part other than "all" goes to `<job>-step-<n>-<part>/`, its files checked against the checkpoint's
        manifest (which it carries).

        The tar is streamed to disk in chunks and extracted into a temporary directory next to the target,
        which is renamed into place only once everything checks out (an existing target is replaced), so a
        failed download never leaves a partial checkpoint. `on_progress(bytes_done, bytes_total)`."""
        if step is None:
            ckpts = self.checkpoints(job_id)
            if not ckpts:
                raise RladError(f"job {job_id} has no checkpoints yet")
            step = max(c["step"] for c in ckpts)
        if part not in layout.PARTS:
            raise RladError(f"unknown checkpoint part {part!r}; use one of {', '.join(layout.PARTS)}")
        prefix = layout.download_name(job_id, int(step), part)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        target = out / prefix
        tmp = out / f".{prefix}.partial-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            archive = tmp / "checkpoint.tar"
            url = f"/v1/jobs/{_seg(job_id)}/checkpoints/{int(step)}/download"
            with self._stream(url, params={"part": part} if part != "all" else None) as resp:
                total = int(resp.headers.get("content-length") or 0)
                manifest_sha = resp.headers.get("x-checkpoint-sha256")
                done = 0
                if on_progress:
                    on_progress(0, total)
                try:
                    with open(archive, "wb") as f:
                        for chunk in resp.iter_bytes(CHUNK):
                            f.write(chunk)
                            done += len(chunk)
                            if on_progress:
                                on_progress(done, total)
                except httpx.TransportError as exc:
                    raise RladError(
                        f"the download of {prefix} broke off after {done} of {total} bytes "
                        f"({type(exc).__name__}: {exc}); nothing was written to {target}"
                    ) from None
            if total and done != total:
                raise RladError(f"the download of {prefix} is incomplete: {done} of {total} bytes")
            extract = tmp / "x"
            extract.mkdir()
            try:
                with tarfile.open(archive, "r:") as tar:
                    members = list(_safe_members(tar, prefix))
                    tar.extractall(extract, members=members, filter="data")
            except tarfile.TarError as exc:
                raise ChecksumError(f"the download of {prefix} is not a valid tar archive: {exc}") from None
            archive.unlink()
            src = extract / prefix
            manifest = verify_checkpoint_dir(src, manifest_sha256=manifest_sha, part=part)
            expected = set(layout.part_files(manifest["files"], part))
            extra = sorted(
                str(p.relative_to(src))
                for p in src.rglob("*")
                if p.is_file() and str(p.relative_to(src)) not in expected
            )
            if extra:
                raise ChecksumError(f"the download of {prefix} holds files its manifest does not list: {extra}")
            layout.replace_dir(src, target)  # an existing target is replaced, never left half-written
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def usage(self) -> dict[str, Any]:
        """The team's jobs and storage against its limits (GET /v1/usage)."""
        return self._json("GET", "/v1/usage")

    def webhook_secret(self, *, rotate: bool = False) -> str:
        """The team's webhook secret (an admin key); `rotate` makes a new one."""
        if rotate:
            return self._json("POST", "/v1/webhook-secret/rotate")["secret"]
        return self._json("GET", "/v1/webhook-secret")["secret"]

    # ----- keys and the audit log (an admin key) ------------------------------------------------------------
    def keys(self) -> list[dict[str, Any]]:
        """The team's keys: id, name, prefix, role, created/expires/last used/revoked times, live."""
        return self._json("GET", "/v1/keys")["items"]

    def create_key(
        self, *, role: str = "write", name: str | None = None, expires_in_days: float | None = None
    ) -> dict[str, Any]:
        """A new key of the team; `["key"]` holds it in clear, this once."""
        body: dict[str, Any] = {"role": role}
        if name is not None:
            body["name"] = name
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return self._json("POST", "/v1/keys", json=body)

    def rotate_key(self, key_id: str, *, grace_s: float = 3600) -> dict[str, Any]:
        """{"new": the new key (with `key` in clear), "old": the old key, now expiring after `grace_s`}."""
        return self._json("POST", f"/v1/keys/{_seg(key_id)}/rotate", json={"grace_s": grace_s})

    def revoke_key(self, key_id: str) -> dict[str, Any]:
        return self._json("DELETE", f"/v1/keys/{_seg(key_id)}")

    def audit(self, *, after: int = 0, limit: int = 100) -> dict[str, Any]:
        """{"items": [{id, action, target, key_id, address, data, created_at}], "next_after"}, oldest first."""
        return self._json("GET", "/v1/audit", params={"after": after, "limit": limit})

    # ----- datasets ---------------------------------------------------------------------------------------
    def upload_dataset(self, path: str | Path, name: str | None = None) -> dict[str, Any]:
        """Upload a JSONL dataset; use the returned `task_path` as the `path` of a jsonl task."""
        p = Path(path)
        with open(p, "rb") as f:
            return self._json(
                "POST",
                "/v1/datasets",
                files={"file": (p.name, f, "application/x-ndjson")},
                data={"name": name} if name else None,
            )

    def datasets(self) -> list[dict[str, Any]]:
        return self._json("GET", "/v1/datasets")["items"]


def _seg(value: str) -> str:
    """A path segment, percent-encoded (a job id typed by hand must not change the route)."""
    from urllib.parse import quote

    return quote(str(value), safe="")
