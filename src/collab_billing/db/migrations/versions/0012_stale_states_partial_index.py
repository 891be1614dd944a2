"""stale state documents found by a partial index, whatever the planner's statistics say

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_billing_states_stale_user_id"


def upgrade() -> None:
    op.drop_index(INDEX, table_name="billing_states")
    stale = sa.text("stale")
    op.create_index(
        INDEX, "billing_states", ["user_id"], postgresql_where=stale, sqlite_where=stale
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="billing_states")
    op.create_index(INDEX, "billing_states", ["stale", "user_id"])
