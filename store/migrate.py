"""Run the Alembic migrations from code (`rlad up`, tests); the same as `alembic upgrade head`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

ROOT = Path(__file__).resolve().parent.parent


def alembic_config(url: str) -> Config:
    if not (ROOT / "alembic.ini").is_file():
        raise FileNotFoundError(
            f"no alembic.ini next to {ROOT}: migrations run from a source checkout or the image "
            "(docker-compose's migrate service); fix: install with `pip install -e .`"
        )
    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    cfg.attributes["configure_logger"] = False
    cfg.cmd_opts = None
    cfg.set_section_option("alembic", "sqlalchemy.url", url)
    # env.py reads the URL from `-x url=`; give it the same through x-arguments
    cfg.cmd_opts = type("Opts", (), {"x": [f"url={url}"]})()
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)
