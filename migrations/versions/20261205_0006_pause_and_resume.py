"""Pause and resume: job statuses `pausing` and `paused`, events `pause_requested` and `paused`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 14:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = ("queued", "starting", "running", "cancelling", "succeeded", "failed", "cancelled", "lost")
NEW_STATUSES = (
    "queued",
    "starting",
    "running",
    "cancelling",
    "pausing",
    "paused",
    "succeeded",
    "failed",
    "cancelled",
    "lost",
)
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
    "succeeded",
    "failed",
    "cancelled",
)
NEW_KINDS = (*OLD_KINDS[:11], "pause_requested", "paused", *OLD_KINDS[11:])


def _enum(values: tuple[str, ...], name: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=32)


def upgrade() -> None:
    # the CHECK constraint of an enum stored as VARCHAR lists its members: new members replace it
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column(
            "status",
            existing_type=_enum(OLD_STATUSES, "job_status"),
            type_=_enum(NEW_STATUSES, "job_status"),
            existing_nullable=False,
        )
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column(
            "kind",
            existing_type=_enum(OLD_KINDS, "event_kind"),
            type_=_enum(NEW_KINDS, "event_kind"),
            existing_nullable=False,
        )


def downgrade() -> None:
    # a paused job goes back to the queue (it resumes from its last checkpoint); a pausing one is lost
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'paused'")
    op.execute("UPDATE jobs SET status = 'lost' WHERE status = 'pausing'")
    op.execute("DELETE FROM job_events WHERE kind IN ('pause_requested', 'paused')")
    with op.batch_alter_table("job_events", schema=None) as batch_op:
        batch_op.alter_column(
            "kind",
            existing_type=_enum(NEW_KINDS, "event_kind"),
            type_=_enum(OLD_KINDS, "event_kind"),
            existing_nullable=False,
        )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.alter_column(
            "status",
            existing_type=_enum(NEW_STATUSES, "job_status"),
            type_=_enum(OLD_STATUSES, "job_status"),
            existing_nullable=False,
        )
