"""Local training, no service: `rlad train`, `rlad validate`, `rlad tiny-model`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from rlad.cli.common import OVERRIDE_HELP, console, err, parse_overrides, print_eval

PANEL = "Local training"
app = typer.Typer()


@app.command(rich_help_panel=PANEL)
def train(
    config_path: Annotated[Path, typer.Argument(help="YAML (or JSON) job config", metavar="CONFIG")],
    set_: Annotated[list[str], typer.Option("--set", help=OVERRIDE_HELP)] = [],  # noqa: B006
    resume: Annotated[
        str | None, typer.Option(help="'auto' (latest checkpoint in the output dir) or a checkpoint directory")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bar")] = False,
) -> None:
    """Run a training job locally (same config as the REST API accepts)."""
    from rlad_core.config import ConfigError, load_config

    try:
        config = load_config(config_path, parse_overrides(set_))
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    try:
        result = _run(config, resume=resume, quiet=quiet)
    except (OSError, ValueError, RuntimeError) as exc:
        # model or dataset not found, tokenizer mismatch, bad checkpoint, non-finite run: say it plainly
        err.print(f"[red]training failed: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from None
    print_eval(result.eval_before, result.eval_after)
    console.print(f"checkpoint: [bold]{result.checkpoint}[/bold]")


@app.command(rich_help_panel=PANEL)
def validate(config_path: Annotated[Path, typer.Argument(metavar="CONFIG")]) -> None:
    """Check a config and print it with every default filled in."""
    from rlad_core.config import ConfigError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    console.print_json(json.dumps(config.to_json_dict()))


@app.command("tiny-model", rich_help_panel=PANEL)
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
