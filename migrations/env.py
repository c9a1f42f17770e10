"""Alembic environment: the URL comes from store.settings (or `-x url=...`); only our tables are managed
(Celery's result tables, if a result backend ever shares the database, are left alone)."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from store.db import make_engine
from store.models import Base
from store.settings import get_settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata
OURS = set(target_metadata.tables)


def include_object(obj, name, type_, reflected, compare_to):  # noqa: ANN001
    # never touch tables that are not ours (celery_taskmeta, celery_tasksetmeta, ...)
    return not (type_ == "table" and name not in OURS)


def _url() -> str:
    return context.get_x_argument(as_dictionary=True).get("url") or get_settings().resolved_database_url


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        include_object=include_object,
        compare_type=True,
        render_as_batch=True,
    )  # SQLite alters tables by copy ("batch" mode)


def run_migrations_offline() -> None:
    _configure(url=_url())
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(_url())
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
