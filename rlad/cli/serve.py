"""Running the service on this machine: `rlad up`, `rlad demo`, `rlad keys`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from rlad.cli.common import console, err, print_eval, print_job_error, service_errors, wait_with_progress

PANEL = "Service"
app = typer.Typer()
keys_app = typer.Typer(help="API keys (written straight into the service's database).", no_args_is_help=True)
app.add_typer(keys_app, name="keys", rich_help_panel=PANEL)


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
