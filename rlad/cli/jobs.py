"""Jobs on a running service (`rlad up`, or RLAD_URL) with RLAD_API_KEY: `rlad submit`, `list`, `status`,
`events`, `cancel`, `download`, and `rlad datasets`."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich import box
from rich.markup import escape
from rich.table import Table

from rlad.cli.common import (
    OVERRIDE_HELP,
    client_from_env,
    console,
    err,
    fmt_s,
    fmt_time,
    parse_overrides,
    print_job_error,
    service_errors,
    styled,
    wait_with_progress,
)
from rlad_core.layout import ADAPTER_CONFIG, MANIFEST, Part, part_files

PANEL = "Jobs"
app = typer.Typer()
datasets_app = typer.Typer(help="Uploaded JSONL datasets.", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets", rich_help_panel=PANEL)


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


@app.command(rich_help_panel=PANEL)
def submit(
    spec_path: Annotated[Path, typer.Argument(help="YAML (or JSON) job spec", metavar="SPEC")],
    set_: Annotated[list[str], typer.Option("--set", help=OVERRIDE_HELP)] = [],  # noqa: B006
    wait: Annotated[bool, typer.Option("--wait", help="follow the job with a progress bar until it ends")] = False,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            help="same key + same spec = the same job (default: a new key, kept across this command's retries)"
        ),
    ] = None,
    poll: Annotated[float, typer.Option(help="seconds between polls with --wait")] = 1.0,
    webhook: Annotated[
        str | None, typer.Option(help="a URL the service POSTs the job to when it ends (signed: rlad webhook-secret)")
    ] = None,
) -> None:
    """Submit a job to the service; prints the job id (exit code 1 with --wait if it fails or is cancelled)."""
    spec = _read_spec(spec_path, parse_overrides(set_))
    with service_errors(), client_from_env() as client:
        job = client.submit(spec, idempotency_key=idempotency_key, webhook_url=webhook)
        console.print(job["id"], highlight=False)
        where = f", position {job['queue_position']} in queue {job['queue']}" if job.get("queue_position") else ""
        err.print(f"job {job['id']}: {styled(job['status'])}{where}")
        if not wait:
            return
        final = wait_with_progress(client, job, poll)
    if final["status"] != "succeeded":
        print_job_error(final)
        raise typer.Exit(1)
    err.print(f"job {final['id']} [green]succeeded[/green]; download it with: rlad download {final['id']} -o DIR")


@app.command("list", rich_help_panel=PANEL)
def list_(
    status: Annotated[list[str], typer.Option(help="filter by status (repeat for several)")] = [],  # noqa: B006
    method: Annotated[list[str], typer.Option(help="filter by method (repeat for several)")] = [],  # noqa: B006
    limit: Annotated[int, typer.Option(min=1, max=200, help="jobs per page")] = 50,
    after: Annotated[str | None, typer.Option(help="the next page: the job id printed under the table")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
) -> None:
    """The team's jobs, newest first."""
    with service_errors(), client_from_env() as client:
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
        row += [j["method"], styled(j["status"]), f"{j['steps_done']}/{j['total_steps']}"]
        row += [fmt_s(j.get("eta_s"))] if show_eta else []
        table.add_row(*row, fmt_time(j["created_at"], short=True))
    console.print(table)
    if page["has_more"]:
        console.print(f"more: rlad list --after {page['next_after']}", highlight=False)


@app.command(rich_help_panel=PANEL)
def status(
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON")] = False,
) -> None:
    """One job: status, progress, ETA, worker, error."""
    with service_errors(), client_from_env() as client:
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
        ("status", styled(job["status"])),
        ("steps", f"{job['steps_done']}/{job['total_steps']}"),
        ("attempt", f"{job['attempt']}/{job['max_attempts']}"),
        ("queue", job["queue"]),
    ]
    if job.get("queue_position"):
        rows.append(("queue position", str(job["queue_position"])))
    if job.get("eta_s") is not None:
        rows.append(("ETA", fmt_s(job["eta_s"])))
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
        ("created", fmt_time(job["created_at"])),
        ("started", fmt_time(job.get("started_at"))),
        ("finished", fmt_time(job.get("finished_at"))),
    ]
    for k, v in rows:
        table.add_row(k, v)
    console.print(table)


def _print_event(e: dict) -> None:
    data = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e["data"].items())
    console.print(
        f"{e['id']:>6}  {fmt_time(e['created_at'])}  [bold]{e['kind']:<16}[/bold] "
        f"attempt={e['attempt']} {escape(data)}",
        highlight=False,
        soft_wrap=True,
    )


@app.command(rich_help_panel=PANEL)
def events(
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events until the job ends")] = False,
    poll: Annotated[float, typer.Option(help="seconds between polls with --follow")] = 1.0,
) -> None:
    """A job's events (queued, started, checkpoint_saved, eval_completed, succeeded, ...), oldest first."""
    with service_errors(), client_from_env() as client:
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


@app.command(rich_help_panel=PANEL)
def cancel(job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Cancel a job: queued ones at once; running ones save a final checkpoint first."""
    with service_errors(), client_from_env() as client:
        job = client.cancel(job_id)
    console.print(f"job {job['id']}: {styled(job['status'])}")


@app.command(rich_help_panel=PANEL)
def pause(job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Pause a job: queued ones at once; running ones checkpoint and free their worker (rlad resume continues)."""
    with service_errors(), client_from_env() as client:
        job = client.pause(job_id)
    console.print(f"job {job['id']}: {styled(job['status'])}")


@app.command(rich_help_panel=PANEL)
def resume(job_id: Annotated[str, typer.Argument(metavar="JOB")]) -> None:
    """Resume a paused job: queued again, it continues from its last checkpoint."""
    with service_errors(), client_from_env() as client:
        job = client.resume(job_id)
    console.print(f"job {job['id']}: {styled(job['status'])}")


@app.command(rich_help_panel=PANEL)
def download(
    job_id: Annotated[str, typer.Argument(metavar="JOB")],
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to put the checkpoint in")],
    step: Annotated[int | None, typer.Option(help="checkpoint step (default: the latest)")] = None,
    part: Annotated[
        Part,
        typer.Option(
            help="all: every file (resumes a run); model: the loadable model only; adapter: a LoRA student's "
            "adapter; merged: a LoRA student's merged weights (merge_lora_on_save) as a plain model"
        ),
    ] = "all",
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

    with service_errors(), client_from_env() as client:
        with progress:
            path = client.download(job_id, step=step, out_dir=out, on_progress=on_progress, part=part)
        n_files = len(part_files(json.loads((path / MANIFEST).read_text())["files"], part))
    console.print(f"checkpoint: [bold]{escape(str(path))}[/bold]" + ("" if part == "all" else f" ({part})"))
    console.print(f"sha256 verified: {n_files} files match manifest.json")
    if (path / ADAPTER_CONFIG).is_file():
        console.print("load it with: AutoModelForCausalLM.from_pretrained(<that directory>) (peft installed)")
    else:
        console.print("load it with: AutoModelForCausalLM.from_pretrained(<that directory>)")


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(help='JSONL: one {"prompt": ..., "answer": ...} per line')],
    name: Annotated[str | None, typer.Option(help="dataset name (default: the file name)")] = None,
) -> None:
    """Upload a JSONL dataset; prints the task path to use as task.path of a jsonl task."""
    with service_errors(), client_from_env() as client:
        ds = client.upload_dataset(file, name=name)
    console.print(
        f"dataset {ds['id']} ({escape(ds['name'])}): {ds['lines']} examples, {ds['bytes']} bytes", highlight=False
    )
    console.print(f"use it as: task: {{name: jsonl, path: {ds['task_path']}}}", highlight=False)


@datasets_app.command("list")
def datasets_list() -> None:
    """The team's uploaded datasets."""
    with service_errors(), client_from_env() as client:
        items = client.datasets()
    table = Table(title=f"datasets ({len(items)})", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.add_column("task path", no_wrap=True)
    table.add_column("name", overflow="fold")
    table.add_column("examples", justify="right", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("created", no_wrap=True)
    for d in items:
        table.add_row(
            d["task_path"], escape(d["name"]), str(d["lines"]), str(d["bytes"]), fmt_time(d["created_at"], short=True)
        )
    console.print(table)


# ---------------------------------------------------------------------------------------------------------
# The embedded service: `rlad up`, and the demo that runs through it
# ---------------------------------------------------------------------------------------------------------
