"""deploys per target: what a target runs is read by repository and kind; one deploy in flight

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

IN_FLIGHT = "kind LIKE 'deploy:%' AND state = 'INITIATED'"


def upgrade() -> None:
    # an earlier orch let two deploys to one target start; a crash could leave both begun. All
    # but the newest become UNKNOWN (what the engine makes of an unconfirmed deploy anyway), so
    # the one-in-flight index can be built
    op.execute(
        "UPDATE effects SET state = 'UNKNOWN' WHERE kind LIKE 'deploy:%' AND state = 'INITIATED'"
        " AND id NOT IN (SELECT id FROM (SELECT MAX(id) AS id FROM effects"
        " WHERE kind LIKE 'deploy:%' AND state = 'INITIATED' GROUP BY repo, kind) AS newest)"
    )
    op.create_index("ix_effects_repo_kind", "effects", ["repo", "kind"])
    op.create_index(
        "uq_effects_deploy_in_flight",
        "effects",
        ["repo", "kind"],
        unique=True,
        sqlite_where=sa.text(IN_FLIGHT),
        postgresql_where=sa.text(IN_FLIGHT),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_effects_deploy_in_flight",
        table_name="effects",
        sqlite_where=sa.text(IN_FLIGHT),
        postgresql_where=sa.text(IN_FLIGHT),
    )
    op.drop_index("ix_effects_repo_kind", table_name="effects")
