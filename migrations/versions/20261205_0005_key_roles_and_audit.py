"""Keys with a name, a role (read | write | admin), an expiry and a last-used time; dashboard sign-ins tied to
the key they signed in with; the audit log of job submissions, cancellations and key changes.

Keys that exist already become admin keys: they could do everything before.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 13:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column(
                "role",
                sa.Enum(
                    "read", "write", "admin", name="key_role", native_enum=False, create_constraint=True, length=32
                ),
                nullable=False,
                server_default="admin",
            )
        )
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.alter_column("role", server_default=None)

    with op.batch_alter_table("ui_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=40), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f("fk_ui_sessions_key_id_api_keys"), "api_keys", ["key_id"], ["id"], ondelete="CASCADE"
        )

    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("team_id", sa.String(length=40), nullable=False),
        sa.Column("key_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=40), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["team_id"], ["teams.id"], name=op.f("fk_audit_events_team_id_teams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index("ix_audit_events_team_id_id", ["team_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_events_team_id_id")
    op.drop_table("audit_events")
    with op.batch_alter_table("ui_sessions", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_ui_sessions_key_id_api_keys"), type_="foreignkey")
        batch_op.drop_column("key_id")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_api_keys_key_role"), type_="check")
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("expires_at")
        batch_op.drop_column("role")
        batch_op.drop_column("name")
