"""Dashboard sessions (server-side, revocable), the devices a worker advertises, and the events `released`
and `disk_full`.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 16:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = (
    "queued",
    "claimed",
    "started",
    "resumed",
    "checkpoint_saved",
    "eval_completed",
    "step_skipped",
    "cancel_requested",
    "lost",
    "succeeded",
    "failed",
    "cancelled",
)
NEW_KINDS = (
    "queued",
    "claimed",
    "started",
    "resumed",
    "checkpoint_saved",
    "eval_completed",
    "step_skipped",
    "cancel_requested",
    "lost",
    "released",
    "disk_full",
    "succeeded",
    "failed",
    "cancelled",
)


def _kind(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name="event_kind", native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_ui_sessions_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_ui_sessions")),
    )
    with op.batch_alter_table("ui_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ui_sessions_team_id"), ["team_id"], unique=False)

    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("devices", sa.Integer(), nullable=False, server_default="0"))

    # the CHECK constraint of an enum stored as VARCHAR lists its members: a new member replaces it
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=_kind(OLD_KINDS), type_=_kind(NEW_KINDS), existing_nullable=False)


def downgrade() -> None:
    op.execute("DELETE FROM job_events WHERE kind IN ('released', 'disk_full')")
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=_kind(NEW_KINDS), type_=_kind(OLD_KINDS), existing_nullable=False)
    with op.batch_alter_table("workers", schema=None) as batch_op:
        batch_op.drop_column("devices")
    with op.batch_alter_table("ui_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ui_sessions_team_id"))
    op.drop_table("ui_sessions")
