"""Running the service on this machine: `rlad up`, `rlad demo`; its keys and audit log: `rlad keys`, `rlad audit`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from rlad.cli.common import (
    client_from_env,
    console,
    err,
    fmt_time,
    print_eval,
    print_job_error,
    service_errors,
    wait_with_progress,
)

Role = Literal["read", "write", "admin"]

PANEL = "Service"
app = typer.Typer()
keys_app = typer.Typer(
    help="API keys: create (the operator, straight into the service's database); new, list, rotate, revoke "
    "(a team's admin key, over the API).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys", rich_help_panel=PANEL)


@keys_app.command("create")
def keys_create(
    team: Annotated[str, typer.Option(help="team name (created if new)")],
    role: Annotated[Role, typer.Option(help="read: poll, download; write: also submit, cancel; admin: also keys")] = (
        "admin"
    ),
    name: Annotated[str | None, typer.Option(help="a name to tell the key apart in listings")] = None,
    expires_days: Annotated[float | None, typer.Option(min=0.001, max=3650, help="default: never expires")] = None,
) -> None:
    """Mint an API key for a team in the service's database (RLAD_DATA_DIR / RLAD_DATABASE_URL); shown once.
    The operator's way in; a team's admin key mints more over the API (rlad keys new)."""
    import subprocess

    from rlad.service import admin_command

    if not team.strip():
        raise typer.BadParameter("the team name is empty", param_hint="--team")
    args = ["create-key", "--team", team.strip(), "--role", role]
    args += ["--name", name] if name else []
    args += ["--expires-days", str(expires_days)] if expires_days else []
    # through the store's own command line: this side of the project imports no store code
    done = subprocess.run(admin_command(*args), capture_output=True, text=True)
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
    err.print(f"{role} key for team {escape(team)}; it is shown only this once: use it as RLAD_API_KEY")


@keys_app.command("new")
def keys_new(
    role: Annotated[Role, typer.Option(help="read: poll, download; write: also submit, cancel; admin: also keys")] = (
        "write"
    ),
    name: Annotated[str | None, typer.Option(help="a name to tell the key apart in listings")] = None,
    expires_days: Annotated[float | None, typer.Option(min=0.001, max=3650, help="default: never expires")] = None,
) -> None:
    """Mint a key for your team over the API (needs an admin key in RLAD_API_KEY); shown once."""
    with service_errors(), client_from_env() as client:
        created = client.create_key(role=role, name=name, expires_in_days=expires_days)
    console.print(created["key"], highlight=False, soft_wrap=True)
    err.print(f"{created['role']} key {created['id']}; it is shown only this once")


@keys_app.command("list")
def keys_list() -> None:
    """Your team's keys: role, expiry, last use (needs an admin key)."""
    with service_errors(), client_from_env() as client:
        items = client.keys()
    table = Table(title=f"keys ({len(items)})", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("id", "name", "role", "expires", "last used", "state"):
        table.add_column(col, no_wrap=col != "name", overflow="fold", min_width=10 if col == "name" else None)
    for k in items:
        state = "live" if k["live"] else ("revoked" if k["revoked_at"] else "expired")
        table.add_row(
            k["id"],
            escape(k["name"] or ""),
            k["role"],
            fmt_time(k["expires_at"], short=True),
            fmt_time(k["last_used_at"], short=True),
            state if state == "live" else f"[red]{state}[/]",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="from rlad keys list")]) -> None:
    """Revoke a key of your team: refused within a second everywhere (needs an admin key)."""
    with service_errors(), client_from_env() as client:
        key = client.revoke_key(key_id)
    console.print(f"revoked {key['id']} ({key['prefix']}..., {key['role']})", highlight=False)


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(metavar="KEY_ID", help="from rlad keys list")],
    grace_s: Annotated[float, typer.Option(min=0, max=30 * 86400, help="how long the old key keeps working")] = 3600,
) -> None:
    """A new key with the old one's name and role; the old one ends after the grace period (needs an admin key)."""
    with service_errors(), client_from_env() as client:
        rotated = client.rotate_key(key_id, grace_s=grace_s)
    console.print(rotated["new"]["key"], highlight=False, soft_wrap=True)
    err.print(f"new key {rotated['new']['id']}; {key_id} works until {fmt_time(rotated['old']['expires_at'])}")


@app.command("webhook-secret", rich_help_panel=PANEL)
def webhook_secret(rotate: Annotated[bool, typer.Option("--rotate", help="make a new one")] = False) -> None:
    """Your team's webhook secret: X-Rlad-Signature is sha256=<hex HMAC-SHA256 of the body> (an admin key)."""
    with service_errors(), client_from_env() as client:
        secret = client.webhook_secret(rotate=rotate)
    console.print(secret, highlight=False, soft_wrap=True)


@app.command(rich_help_panel=PANEL)
def usage() -> None:
    """Your team's jobs and storage against its limits."""
    with service_errors(), client_from_env() as client:
        u = client.usage()
    cap = u["max_storage_bytes"]
    console.print(f"jobs queued or running: {u['active_jobs']} of {u['max_active_jobs']}", highlight=False)
    console.print(
        f"storage: {u['storage_bytes'] / 2**30:.2f} GiB of {cap / 2**30:.0f} GiB"
        if cap
        else f"storage: {u['storage_bytes'] / 2**30:.2f} GiB (no limit)",
        highlight=False,
    )
    console.print(
        f"  {u['checkpoints']} checkpoints ({u['checkpoint_bytes'] / 2**30:.2f} GiB), "
        f"{u['datasets']} datasets ({u['dataset_bytes'] / 2**20:.1f} MiB)",
        highlight=False,
    )
    rate = (
        f"{u['rate_limit_per_s']:g} requests/s per key (burst {u['rate_limit_burst']})"
        if u["rate_limit_per_s"]
        else "none"
    )
    console.print(
        f"per job: steps x batch_size <= {u['max_rollouts_per_job']:,}; "
        f"uploads <= {u['max_upload_bytes'] / 2**20:.0f} MiB; rate limit: {rate}",
        highlight=False,
    )


@app.command(rich_help_panel=PANEL)
def audit(
    after: Annotated[int, typer.Option(help="events after this id")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 100,
) -> None:
    """Your team's audit log: submissions, cancellations, key changes (needs an admin key)."""
    with service_errors(), client_from_env() as client:
        page = client.audit(after=after, limit=limit)
    for e in page["items"]:
        who = e["key_id"] or "the operator"
        console.print(
            f"{e['id']:>6}  {fmt_time(e['created_at'])}  {e['action']:<10}  {e['target']}  by {who}"
            + (f" from {e['address']}" if e["address"] else ""),
            highlight=False,
        )
    if page["next_after"]:
        console.print(f"more: rlad audit --after {page['next_after']}", highlight=False)


@app.command(rich_help_panel=PANEL)
def up(
    data_dir: Annotated[Path, typer.Option(envvar="RLAD_DATA_DIR", help="database, broker, results and logs")] = Path(
        "rlad-data"
    ),
    host: Annotated[str, typer.Option(help="API address")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="API port")] = 8321,
) -> None:
    """Start the service on this machine (the API and a worker); Ctrl-C stops it.

    SQLite, a filesystem broker and a local result store under DATA_DIR: nothing else to install."""
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


@app.command(rich_help_panel=PANEL)
def demo(
    workdir: Annotated[Path, typer.Option(help="where models, the service's data and the download go")] = Path(
        "runs/demo"
    ),
    steps: Annotated[int, typer.Option(help="RLAD steps")] = 60,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """A small RLAD job through the embedded service, end to end.

    Warm up a tiny teacher and student on arithmetic, start the service, submit the job over HTTP, follow it,
    download the checkpoint and load it with transformers."""
    from rlad.client import Client
    from rlad.demo import demo_spec, service_env, warm_models
    from rlad.service import LocalService, free_port

    workdir = workdir.resolve()
    teacher, student = warm_models(workdir, quiet=quiet, log=console.print)
    svc = LocalService(workdir / "service", port=free_port(), env=service_env(workdir))
    console.print("starting the embedded service (API + worker, SQLite, filesystem broker) ...")
    try:
        svc.start()
        with Client(svc.base_url, svc.api_key) as client, service_errors():
            job = client.submit(demo_spec(teacher, student, steps))
            console.print(f"submitted job [bold]{job['id']}[/bold]: POST {svc.base_url}/v1/jobs -> {job['status']}")
            job = wait_with_progress(client, job, poll_s=0.5) if not quiet else client.wait(job["id"], poll_s=0.5)
            if job["status"] != "succeeded":
                print_job_error(job)
                raise typer.Exit(1)
            evals = {s["key"]: s for s in client.metrics(job["id"], keys=["eval/accuracy", "eval/pass@4"])["series"]}
            print_eval(
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
