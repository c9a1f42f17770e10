"""What the command groups share: the consoles, KEY=VALUE overrides, service errors as messages, formatting,
and the progress bar that follows a job."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from rlad.client import Client

console = Console()
err = Console(stderr=True)

OVERRIDE_HELP = "override a field: --set steps=20 --set task.levels=[1]"


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(
                f"{pair!r} is not KEY=VALUE (for example --set steps=20 or --set task.levels=[1,2])"
            )
        out[key] = yaml.safe_load(value)  # "20" -> 20, "[1,2]" -> [1, 2], "null" -> None
    return out


def print_eval(before: dict[str, float], after: dict[str, float]) -> None:
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

STATUS_STYLE = {
    "queued": "yellow",
    "starting": "cyan",
    "running": "cyan",
    "cancelling": "magenta",
    "pausing": "blue",
    "paused": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "lost": "red",
}


@contextmanager
def service_errors() -> Iterator[None]:
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


def client_from_env() -> Client:
    from rlad.client import Client

    return Client.from_env()


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def fmt_time(value: str | None, *, short: bool = False) -> str:
    if not value:
        return "-"
    return value[5:16].replace("T", " ") if short else value[:19].replace("T", " ")


def styled(status: str) -> str:
    return f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]"


def print_job_error(job: dict) -> None:
    line = f"job {job['id']} {job['status']}"
    if job.get("error_code") or job.get("error_message"):
        line += f": {job.get('error_code') or 'error'}: {job.get('error_message') or ''}"
    err.print(f"[red]{escape(line)}[/red]")


def wait_with_progress(client: Client, job: dict, poll_s: float) -> dict:
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
        status=styled(job["status"]),
        reward="-",
        acc="-",
        eta="-",
    )
    last_step = -1

    def update(j: dict) -> None:
        nonlocal last_step
        fields = {"status": styled(j["status"]), "eta": fmt_s(j.get("eta_s"))}
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
