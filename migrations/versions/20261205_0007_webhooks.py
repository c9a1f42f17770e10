"""Webhooks: a job's URL and its delivery state, a team's signing secret, the events `webhook_delivered` and
`webhook_failed`.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 15:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
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
    "released",
    "disk_full",
    "pause_requested",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
)
NEW_KINDS = (*OLD_KINDS[:13], "webhook_delivered", "webhook_failed", *OLD_KINDS[13:])


def _kind(values: tuple[str, ...]) -> sa.Enum:
    return sa.Enum(*values, name="event_kind", native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_url", sa.String(length=2000), nullable=True))
        batch_op.add_column(sa.Column("webhook_status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("webhook_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("webhook_next_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column("webhook_attempts", server_default=None)
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_secret", sa.String(length=64), nullable=True))
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=_kind(OLD_KINDS), type_=_kind(NEW_KINDS), existing_nullable=False)


def downgrade() -> None:
    op.execute("DELETE FROM job_events WHERE kind IN ('webhook_delivered', 'webhook_failed')")
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column("kind", existing_type=_kind(NEW_KINDS), type_=_kind(OLD_KINDS), existing_nullable=False)
    with op.batch_alter_table("teams", schema=None) as batch_op:
        batch_op.drop_column("webhook_secret")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("webhook_next_at")
        batch_op.drop_column("webhook_attempts")
        batch_op.drop_column("webhook_status")
        batch_op.drop_column("webhook_url")
