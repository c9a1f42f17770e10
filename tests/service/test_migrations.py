"""Migrations: upgrade, downgrade, upgrade on an empty PostgreSQL and an empty SQLite; the models and the
revisions agree; tables that are not ours are left alone."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from store.migrate import downgrade, upgrade
from store.models import Base

OUR_TABLES = {
    "teams",
    "api_keys",
    "jobs",
    "node_claims",
    "job_events",
    "metrics",
    "metric_rollups",
    "checkpoints",
    "datasets",
    "job_samples",
    "workers",
    "ui_sessions",
    "audit_events",
    "alembic_version",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_and_models_match(db_url: str) -> None:
    upgrade(db_url)
    assert _tables(db_url) == OUR_TABLES
    downgrade(db_url)
    assert _tables(db_url) <= {"alembic_version"}
    upgrade(db_url)
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_foreign_tables_survive_a_downgrade(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE celery_taskmeta (id INTEGER PRIMARY KEY)"))
        upgrade(db_url)
        downgrade(db_url)
        assert "celery_taskmeta" in _tables(db_url)
    finally:
        engine.dispose()


def test_constraints_follow_the_naming_convention(pg_url: str) -> None:
    upgrade(pg_url)
    engine = create_engine(pg_url)
    try:
        insp = inspect(engine)
        assert insp.get_pk_constraint("jobs")["name"] == "pk_jobs"
        assert {fk["name"] for fk in insp.get_foreign_keys("metrics")} == {"fk_metrics_job_id_jobs"}
        assert "uq_jobs_team_id_idempotency_key" in {u["name"] for u in insp.get_unique_constraints("jobs")}
        assert "ck_jobs_job_status" in {c["name"] for c in insp.get_check_constraints("jobs")}
    finally:
        engine.dispose()
