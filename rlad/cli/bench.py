"""`rlad bench`: the project's own evidence (the runner is `rlad.paper_mini`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from rlad.cli.common import console, service_errors

PANEL = "Benchmarks"
app = typer.Typer()
bench_app = typer.Typer(
    help="The project's own evidence: reproduce the paper's comparison in miniature.", no_args_is_help=True
)
app.add_typer(bench_app, name="bench", rich_help_panel=PANEL)


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
    with service_errors():  # --via-api: an unreachable service or a refused job is a message, not a traceback
        results = run_suite(
            PRESETS[name], workdir / name, target, via_api=via_api, log=lambda m: console.print(escape(m))
        )
    console.print(
        f"{len(results['runs'])} runs ({results.get('reused', 0)} reused) in {results['seconds'] / 60:.1f} min; "
        f"tables: {target / 'tables.md'}, plots and results.json in {target}"
    )
