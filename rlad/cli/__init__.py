"""`rlad`, the command line, one module per audience: local training (`rlad.cli.local`: train, validate,
tiny-model), jobs on a service (`rlad.cli.jobs`: submit, list, status, events, cancel, download, datasets),
running the service (`rlad.cli.serve`: up, demo, keys) and the paper in miniature (`rlad.cli.bench`)."""

from __future__ import annotations

import os

import typer

# no per-shard progress bars from transformers / huggingface_hub under our own (set before they are imported)
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from rlad.cli import bench, jobs, local, serve  # noqa: E402  (after the environment default above)

app = typer.Typer(
    help="RLAD: RL-aware knowledge distillation of reasoning LLMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
for group in (local, jobs, serve, bench):
    app.add_typer(group.app)


def main() -> None:
    app()
