"""`rlad`, the command line: train locally (train, validate, tiny-model), use the service (submit, list, status,
events, cancel, download, datasets), run it (up, demo, keys) and the paper in miniature (bench)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

# no per-shard progress bars from transformers / huggingface_hub under our own (set before they are imported)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

app = typer.Typer(
    help="RLAD: RL-aware knowledge distillation of reasoning LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True)


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"{pair!r} is not KEY=VALUE (for example --set steps=20 or --set task.levels=[1,2])"
            )
        out[key] = yaml.safe_load(value)  # "20" -> 20, "[1,2]" -> [1, 2], "null" -> None
    return out


@app.command()
def train(
    config_path: Annotated[Path, typer.Argument(help="YAML (or JSON) job config", metavar="CONFIG")],
    set_: Annotated[
        list[str], typer.Option("--set", help="override a field: --set steps=20 --set task.levels=[1]")
    ] = [],  # noqa: B006
    resume: Annotated[
        str | None, typer.Option(help="'auto' (latest checkpoint in the output dir) or a checkpoint directory")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Run a training job locally (same config as the REST API accepts)."""
    from rlad_core.config import ConfigError, load_config

    try:
        config = load_config(config_path, _parse_overrides(set_))
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    try:
        result = _run(config, resume=resume, quiet=quiet)
    except (OSError, ValueError, RuntimeError) as exc:
        # model or dataset not found, tokenizer mismatch, bad checkpoint, non-finite run: say it plainly
        err.print(f"[red]training failed: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from None
    _print_eval(result.eval_before, result.eval_after)
    console.print(f"checkpoint: [bold]{result.checkpoint}[/bold]")


@app.command()
def validate(config_path: Annotated[Path, typer.Argument(metavar="CONFIG")]) -> None:
    """Check a config and print it with every default filled in."""
    from rlad_core.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print_json(json.dumps(config.to_json_dict()))


@app.command("tiny-model")
def tiny_model(
    out: Annotated[Path, typer.Argument(help="directory to write (save_pretrained layout)")],
    size: Annotated[str, typer.Option(help="micro | mini | small | small-4x")] = "small",
    seed: int = 0,
) -> None:
    """Build a random-init tiny Llama with a character-level tokenizer (for tests and experiments)."""
    from rlad_core.models import TINY_SIZES, save_tiny_model

    if size not in TINY_SIZES:
        raise typer.BadParameter(f"unknown size {size!r}; choose one of {', '.join(TINY_SIZES)}", param_hint="--size")
    path = save_tiny_model(out, size, seed=seed)
    console.print(f"wrote {path} ({json.loads((path / 'tiny_model.json').read_text())['n_params']:,} parameters)")


def _run(config, *, resume: str | None, quiet: bool):
    from rlad_core.reporting import ConsoleReporter, JsonlReporter, MultiReporter
    from rlad_core.trainer import train as run_training

    out = config.resolved_output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_json_dict(), sort_keys=False))
    console_reporter = ConsoleReporter(config.steps, description=config.name or config.method, quiet=quiet)
    reporter = MultiReporter(console_reporter, JsonlReporter(out))
    try:
        return run_training(config, reporter=reporter, resume_from=resume)
    finally:
        reporter.close()


def _print_eval(before: dict[str, float], after: dict[str, float]) -> None:
    if not before and not after:
        return
    table = Table(title="held-out evaluation")
    table.add_column("metric")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    for key in sorted(set(before) | set(after)):
        if key == "eval/n":
            continue
        table.add_row(key.removeprefix("eval/"), *(f"{d[key]:.3f}" if key in d else "-" for d in (before, after)))
    console.print(table)


# ---------------------------------------------------------------------------------------------------------
# Service client commands: talk to a running service (`rlad up`, or RLAD_URL) with RLAD_API_KEY
# ---------------------------------------------------------------------------------------------------------

keys_app = typer.Typer(help="API keys (written straight into the service's database).", no_args_is_help=True)
datasets_app = typer.Typer(help="Uploaded JSONL datasets.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(datasets_app, name="datasets")

STATUS_STYLE = {
    "queued": "yellow",
    "starting": "cyan",
    "running": "cyan",
    "cancelling": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "lost": "red",
}


@contextmanager
def _service_errors() -> Iterator[None]:
    """Client errors become a red message and an exit code: 2 for a 4xx answer, 1 otherwise; no traceback."""
    from rlad.client import ApiError, RladError

    try:
        yield
    except ApiError as exc:
        # an invalid spec's message is its field errors joined: then list them once, one a line
        summary = (
            exc.code.replace("_", " ")
            if exc.fields and all(f.message in exc.message for f in exc.fields)
            else exc.message
        )
        err.print(f"[red]error: {escape(summary)}[/red] [dim](HTTP {exc.status}, {exc.code})[/dim]")
        for f in exc.fields:
            err.print(f"[red]  {escape(f.field)}: {escape(f.message)}[/red]")
        raise typer.Exit(2 if 400 <= exc.status < 500 else 1) from None
    except RladError as exc:
        err.print(f"[red]error: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None
    except OSError as exc:  # writing a download, reading an upload
        err.print(f"[red]error: {escape(str(exc))}[/red]")
        raise typer.Exit(1) from None


def _client():
    from rlad.client import Client

    return Client.from_env()


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _fmt_time(value: str | None, *, short: bool = False) -> str:
    if not value:
        return "-"
    return value[5:16].replace("T", " ") if short else value[:19].replace("T", " ")


def _styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def _read_spec(path: Path, overrides: dict[str, object]) -> dict[str, object]:
    """The YAML (or JSON) spec as a dict, with dotted overrides applied (as `rlad train` does)."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise typer.BadParameter(f"cannot read {path}: {exc.strerror or exc}", param_hint="SPEC") from None
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{path} is not valid YAML: {exc}", param_hint="SPEC") from None
    if not isinstance(data, dict):
        raise typer.BadParameter(
            f"{path} must hold a mapping of spec fields, got {type(data).__name__}", param_hint="SPEC"
        )
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"--set {dotted}: {key!r} is not a mapping in {path}", param_hint="--set")
        node[leaf] = value
    return _absolute_local_paths(data)


def _absolute_local_paths(spec: dict[str, object]) -> dict[str, object]:
    """Model and dataset paths that exist here, made absolute: the workers do not share this directory
    (a relative path would be read from the worker's). Hub ids and `dataset:` ids are left as they are."""

    def fix(value: object) -> object:
        return (
            str(Path(value).resolve())
            if isinstance(value, str) and not Path(value).is_absolute() and Path(value).exists()
            else value
        )

    out = {k: fix(v) if k in ("student", "teacher", "reference") else v for k, v in spec.items()}
    task = out.get("task")
    if isinstance(task, dict) and "path" in task:
        out["task"] = {**task, "path": fix(task["path"])}
    return out


def _print_job_error(job: dict) -> None:
    line = f"job {job['id']} {job['status']}"
    if job.get("error_code") or job.get("error_message"):
        line += f": {job.get('error_code') or 'error'}: {job.get('error_message') or ''}"
    err.print(f"[red]{escape(line)}[/red]")


def _wait_with_progress(client, job: dict, poll_s: float) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TextColumn("reward {task.fields[reward]}"),
        TextColumn("eval acc {task.fields[acc]}"),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}"),
        console=err,
        transient=False,
    )
    task = progress.add_task(
        job.get("name") or job["method"],
        total=job["total_steps"] or None,
        status=_styled(job["status"]),
        reward="-",
        acc="-",
        eta="-",
    )
    last_step = -1

    def update(j: dict) -> None:
        nonlocal last_step
        fields = {"status": _styled(j["status"]), "eta": _fmt_s(j.get("eta_s"))}
        if j["steps_done"] != last_step:  # one metrics read per new step, not per poll
            last_step = j["steps_done"]
            latest = client.latest_metrics(j["id"], ["reward_mean", "eval/accuracy"])
            if latest.get("reward_mean") is not None:
                fields["reward"] = f"{latest['reward_mean']:+.3f}"
            if latest.get("eval/accuracy") is not None:
                fields["acc"] = f"{latest['eval/accuracy']:.3f}"
        progress.update(task, completed=j["steps_done"], total=j["total_steps"] or None, **fields)

    with progress:
        try:
            return client.wait(job["id"], poll_s=poll_s, on_update=update)
        except KeyboardInterrupt:
            progress.stop()
            err.print(f"stopped waiting; the job keeps running (rlad status {job['id']}, rlad cancel {job['id']})")
            raise typer.Exit(130) from None


@app.command()
def submit(
    spec_path: Annotated[Path, typer.Argument(help="YAML (or JSON) job spec", metavar="SPEC")],
    set_: Annotated[
        list[str], typer.Option("--set", help="override a field: --set steps=20 --set task.levels=[1]")
    ] = [],  # noqa: B006
    wait: Annotated[bool, typer.Option("--wait", help="follow the job with a progress bar until it ends")] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="same key + same spec = the same job (default: a new key, kept across this command's retries)"
        ),
    ] = None,
    poll: Annotated[float, typer.Option(help="seconds between polls with --wait")] = 1.0,
) -> None:
    """Submit a job to the service; prints the job id (exit code 1 with --wait if it fails or is cancelled)."""
    spec = _read_spec(spec_path, _parse_overrides(set_))
    with _service_errors(), _client() as client:
        job = client.submit(spec, idempotency_key=idempotency_key)
        console.print(job["id"], highlight=False)
        where = f", position {job['queue_position']} in queue {job['queue']}" if job.get("queue_position") else ""
        err.print(f"job {job['id']}: {_styled(job['status'])}{where}")
        if not wait:
            return
        final = _wait_with_progress(client, job, poll)
    if final["status"] != "succeeded":
        _print_job_error(final)
        raise typer.Exit(1)
    err.print(f"job {final['id']} [green]succeeded[/green]; download it with: rlad download {final['id']} -o DIR")


@app.command("list")
def list_(
    status: Annotated[list[str], typer.Option(help="filter by status (repeat for several)")] = [],  # noqa: B006
    method: Annotated[list[str], typer.Option(help="filter by method (repeat for several)")] = [],  # noqa: B006
    limit: Annotated[int, typer.Option(min=1, max=200, help="jobs per page")] = 50,
    after: Annotated[str | None, typer.Option(help="the next page: the job id printed under the table")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
) -> None:
    """The team's jobs, newest first."""
    with _service_errors(), _client() as client:
        page = client.list_jobs(status=status or None, method=method or None, limit=limit, after=after)
    if as_json:
        console.print_json(json.dumps(page))
        return
    show_eta = any(j.get("eta_s") is not None for j in page["items"])
    show_name = any(j.get("name") for j in page["items"])
    title = f"jobs ({len(page['items'])}{'+' if page['has_more'] else ''})"
    table = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    if show_name:
        table.add_column("name", overflow="fold")
    table.add_column("method", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("steps", justify="right", no_wrap=True)
    if show_eta:
        table.add_column("ETA", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for j in page["items"]:
        row = [j["id"]] + ([escape(j.get("name") or "-")] if show_name else [])
        row += [j["method"], _styled(j["status"]), f"{j['steps_done']}/{j['total_steps']}"]
        row += [_fmt_s(j.get("eta_s"))] if show_eta else []
        table.add_row(*row, _fmt_time(j["created_at"], short=True))
    console.print(table)
    if page["has_more"]:
        console.print(f"more: rlad list --after {page['next_after']}", highlight=False)


@app.command()
def status(
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
) -> None:
    """One job: status, progress, ETA, worker, error."""
    with _service_errors(), _client() as client:
        job = client.get_job(job_id)
    if as_json:
        console.print_json(json.dumps(job))
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("id", job["id"]),
        ("name", escape(job.get("name") or "-")),
        ("method", job["method"]),
        ("status", _styled(job["status"])),
        ("steps", f"{job['steps_done']}/{job['total_steps']}"),
        ("attempt", f"{job['attempt']}/{job['max_attempts']}"),
        ("queue", job["queue"]),
    ]
    if job.get("queue_position"):
        rows.append(("queue position", str(job["queue_position"])))
    if job.get("eta_s") is not None:
        rows.append(("ETA", _fmt_s(job["eta_s"])))
    if job.get("heartbeat_age_s") is not None:
        rows.append(("heartbeat", f"{job['heartbeat_age_s']:.1f}s ago"))
    if job.get("worker"):
        rows.append(("worker", escape(job["worker"])))
    if job.get("error_code") or job.get("error_message"):
        rows.append(
            (
                "error",
                f"[red]{escape(str(job.get('error_code') or ''))}: {escape(str(job.get('error_message') or ''))}[/red]",
            )
        )
    rows += [
        ("created", _fmt_time(job["created_at"])),
        ("started", _fmt_time(job.get("started_at"))),
        ("finished", _fmt_time(job.get("finished_at"))),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _print_event(e: dict) -> None:
    data = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e["data"].items())
    console.print(
        f"{e['id']:>6}  {_fmt_time(e['created_at'])}  [bold]{e['kind']:<16}[/bold] "
        f"attempt={e['attempt']} {escape(data)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def events(
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events until the job ends")] = False,
    poll: Annotated[float, typer.Option(help="seconds between polls with --follow")] = 1.0,
) -> None:
    """A job's events (queued, started, checkpoint_saved, eval_completed, succeeded, ...), oldest first."""
    with _service_errors(), _client() as client:
        after = None
        try:
            while True:
                batch = client.events(job_id, after=after)
                for e in batch:
                    _print_event(e)
                    after = e["id"]
                if batch:
                    continue  # a full page: read on before sleeping
                if not follow or client.get_job(job_id)["is_terminal"]:
                    # one more read: events written between the last page and the terminal status
                    for e in client.events(job_id, after=after) if follow else ():
                        _print_event(e)
                    return
                time.sleep(poll)
        except KeyboardInterrupt:
            return


@app.command()
def cancel(job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Cancel a job: queued ones at once; running ones save a final checkpoint first."""
    with _service_errors(), _client() as client:
        job = client.cancel(job_id)
    console.print(f"job {job['id']}: {_styled(job['status'])}")


@app.command()
def download(
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to put the checkpoint in")],
    step: Annotated[int | None, typer.Option(help="checkpoint step (default: the latest)")] = None,
) -> None:
    """Download a checkpoint as a Hugging Face directory, every file checked against its sha256."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from rlad_core.layout import MANIFEST

    progress = Progress(
        TextColumn("[bold]download"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
    )
    task = progress.add_task("download", total=None)

    def on_progress(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total or None)

    with _service_errors(), _client() as client:
        with progress:
            path = client.download(job_id, step=step, out_dir=out, on_progress=on_progress)
        n_files = len(json.loads((path / MANIFEST).read_text())["files"]) + 1
    console.print(f"checkpoint: [bold]{escape(str(path))}[/bold]")
    console.print(f"sha256 verified: {n_files} files match manifest.json")
    console.print("load it with: AutoModelForCausalLM.from_pretrained(<that directory>)")


@keys_app.command("create")
def keys_create(team: Annotated[str, typer.Option(help="team name (created if new)")]) -> None:
    """Mint an API key for a team in the service's database (RLAD_DATA_DIR / RLAD_DATABASE_URL); shown once."""
    import subprocess

    from rlad.service import admin_command

    if not team.strip():
        raise typer.BadParameter("the team name is empty", param_hint="--team")
    # through the store's own command line: this side of the project imports no store code
    done = subprocess.run(admin_command("create-key", "--team", team.strip()), capture_output=True, text=True)
    if done.returncode != 0:
        if "No module named" in done.stderr:
            err.print(
                "[red]error: the service's store is not installed here; fix: run this where the service is "
                "installed (pip install -e . in the repository)[/red]"
            )
        else:
            err.print(f"[red]{escape(done.stderr.strip())}[/red]")
        raise typer.Exit(1)
    key = done.stdout.strip()
    console.print(key, highlight=False, soft_wrap=True)
    err.print(f"API key for team {escape(team)}; it is shown only this once: use it as RLAD_API_KEY")


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(help='JSONL: one {"prompt": ..., "answer": ...} per line')],
    name: Annotated[str | None, typer.Option(help="dataset name (default: the file name)")] = None,
) -> None:
    """Upload a JSONL dataset; prints the task path to use as task.path of a jsonl task."""
    with _service_errors(), _client() as client:
        ds = client.upload_dataset(file, name=name)
    console.print(
        f"dataset {ds['id']} ({escape(ds['name'])}): {ds['lines']} examples, {ds['bytes']} bytes", highlight=False
    )
    console.print(f"use it as: task: {{name: jsonl, path: {ds['task_path']}}}", highlight=False)


@datasets_app.command("list")
def datasets_list() -> None:
    """The team's uploaded datasets."""
    with _service_errors(), _client() as client:
        items = client.datasets()
    table = Table(title=f"datasets ({len(items)})", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("task path", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("examples", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for d in items:
        table.add_row(
            d["task_path"], escape(d["name"]), str(d["lines"]), str(d["bytes"]), _fmt_time(d["created_at"], short=True)
        )
    console.print(table)


# ---------------------------------------------------------------------------------------------------------
# The embedded service: `rlad up`, and the demo that runs through it
# ---------------------------------------------------------------------------------------------------------


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(envvar="RLAD_DATA_DIR", help="database, broker, results and logs")] = Path(
        "rlad-data"
    ),
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8321,
) -> None:
    """Start the service on this machine: the API and a worker, with SQLite, a filesystem broker and a
    local result store under DATA_DIR (nothing else to install). Ctrl-C stops it."""
    import signal

    from rlad.service import LocalService

    stopping = {"now": False}

    def interrupt(*_: object) -> None:
        if not stopping["now"]:  # once: a second signal must not cut the shutdown short
            stopping["now"] = True
            raise KeyboardInterrupt

    # from the first moment: a SIGTERM while starting must still stop what was started (no orphans)
    signal.signal(signal.SIGTERM, interrupt)
    svc = LocalService(data_dir, host=host, port=port)
    try:
        try:
            svc.start()
        except (RuntimeError, TimeoutError) as exc:
            err.print(f"[red]the service did not start: {escape(str(exc))}[/red]")
            raise typer.Exit(1) from None
        console.print(
            f"RLAD service on [bold]{svc.base_url}[/bold]: dashboard {svc.base_url}/ui/jobs "
            f"(sign in with the API key below), API docs {svc.base_url}/docs"
        )
        console.print(f"data: {svc.data_dir}   logs: {svc.data_dir / 'logs'}")
        console.print(
            f"API key (team 'local'): {svc.data_dir / 'api_key'}; the rlad CLI finds it when run with "
            f"RLAD_DATA_DIR={svc.data_dir}"
        )
        console.print("Ctrl-C stops it: a running job checkpoints first and resumes from there at the next start.")
        restarts: list[float] = []
        while True:
            for name, code in svc.restart_exited():
                err.print(
                    f"[yellow]{name} exited with code {code}; restarted (see {svc.data_dir / 'logs' / name}.log)"
                    "[/yellow]"
                )
                restarts = [t for t in restarts if time.monotonic() - t < 60] + [time.monotonic()]
                if len(restarts) > 5:
                    err.print("[red]more than 5 restarts within a minute; stopping[/red]")
                    raise typer.Exit(1)
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stopping["now"] = True
        console.print("stopping ...")
        svc.stop()


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where models, the service's data and the download go")] = Path(
        "runs/demo"
    ),
    steps: Annotated[int, typer.Option(help="RLAD steps")] = 60,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """A small RLAD job through the embedded service: warm up a tiny teacher and student on arithmetic, start
    the service, submit the job over HTTP, follow it, download the checkpoint and load it with transformers."""
    from rlad.client import Client
    from rlad.demo import demo_spec, service_env, warm_models
    from rlad.service import LocalService, free_port

    workdir = workdir.resolve()
    teacher, student = warm_models(workdir, quiet=quiet, log=console.print)
    svc = LocalService(workdir / "service", port=free_port(), env=service_env(workdir))
    console.print("starting the embedded service (API + worker, SQLite, filesystem broker) ...")
    try:
        svc.start()
        with Client(svc.base_url, svc.api_key) as client, _service_errors():
            job = client.submit(demo_spec(teacher, student, steps))
            console.print(f"submitted job [bold]{job['id']}[/bold]: POST {svc.base_url}/v1/jobs -> {job['status']}")
            job = _wait_with_progress(client, job, poll_s=0.5) if not quiet else client.wait(job["id"], poll_s=0.5)
            if job["status"] != "succeeded":
                _print_job_error(job)
                raise typer.Exit(1)
            evals = {s["key"]: s for s in client.metrics(job["id"], keys=["eval/accuracy", "eval/pass@4"])["series"]}
            _print_eval(
                {k: s["values"][0] for k, s in evals.items() if s["steps"][:1] == [0]},
                {k: s["values"][-1] for k, s in evals.items() if s["values"]},
            )
            path = client.download(job["id"], out_dir=workdir / "download")
    finally:
        svc.stop()
    console.print(f"downloaded and sha256-verified: [bold]{path}[/bold]")
    _show_generation(path)


def _show_generation(path: Path) -> None:
    """Load the downloaded checkpoint as any user would, and answer one prompt with it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlad_core.models import format_prompt

    model, tokenizer = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    prompt = format_prompt(tokenizer, "37+45=", use_chat_template=True)
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    console.print(
        f"AutoModelForCausalLM.from_pretrained({path.name}) answers 37+45= with: [bold]{escape(answer)}[/bold]"
    )


bench_app = typer.Typer(
    help="The project's own evidence: reproduce the paper's comparison in miniature.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


@bench_app.command("paper-mini")
def paper_mini(
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Knights-and-Knaves with 2-3 people only, one seed, fewer steps and alphas (under 10 minutes)",
        ),
    ] = False,
    preset: Annotated[str | None, typer.Option(help="full | quick | tiny (overrides --quick)")] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "-o", "--out", help="tables, plots, results.json (default: docs/paper-mini, or docs/paper-mini/quick)"
        ),
    ] = None,
    workdir: Annotated[Path, typer.Option(help="models and runs, cached: a rerun skips what is done")] = Path(
        "runs/paper-mini"
    ),
    via_api: Annotated[
        str | None, typer.Option("--via-api", help="submit every run as a job to this service URL")
    ] = None,
) -> None:
    """RLAD vs GRPO vs KDRL vs OPD vs offline distillation, and an alpha ablation, on tiny models (CPU)."""
    from rlad.paper_mini import PRESETS, run_suite

    name = preset or ("quick" if quick else "full")
    if name not in PRESETS:
        raise typer.BadParameter(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}", param_hint="--preset")
    target = out or (Path("docs/paper-mini") if name == "full" else Path("docs/paper-mini") / name)
    with _service_errors():  # --via-api: an unreachable service or a refused job is a message, not a traceback
        results = run_suite(
            PRESETS[name], workdir / name, target, via_api=via_api, log=lambda m: console.print(escape(m))
        )
    console.print(
        f"{len(results['runs'])} runs ({results.get('reused', 0)} reused) in {results['seconds'] / 60:.1f} min; "
        f"tables: {target / 'tables.md'}, plots and results.json in {target}"
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
