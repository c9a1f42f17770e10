"""`rlad`: run distillation jobs locally, build tiny models, run the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="RLAD: RL-aware knowledge distillation of reasoning LLMs.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
console = Console()
err = Console(stderr=True)


def _parse_overrides(pairs: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE (for example --set steps=20 or --set task.levels=[1,2])")
        out[key] = yaml.safe_load(value)  # "20" -> 20, "[1,2]" -> [1, 2], "null" -> None
    return out


@app.command()
def train(
    config_path: Annotated[Path, typer.Argument(help="YAML (or JSON) job config", metavar="CONFIG")],
    set_: Annotated[list[str], typer.Option("--set", help="override a field: --set steps=20 --set task.levels=[1]")] = [],  # noqa: B006
    resume: Annotated[str | None, typer.Option(help="'auto' (latest checkpoint in the output dir) or a checkpoint directory")] = None,
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


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where models, runs and checkpoints go")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(help="RLAD steps")] = 60,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """A small RLAD job on CPU: warm up a tiny teacher and student on arithmetic, then distil with RLAD."""
    from rlad.demo import run_demo

    result = run_demo(workdir, steps=steps, quiet=quiet, log=console.print)
    _print_eval(result.eval_before, result.eval_after)
    console.print(f"distilled student checkpoint: [bold]{result.checkpoint}[/bold]")
    console.print("load it with: AutoModelForCausalLM.from_pretrained(<that directory>)")


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
