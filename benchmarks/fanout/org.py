"""The organisation a fan-out benchmark sends to, built set-based in SQL (setup, not measured)."""

from __future__ import annotations

from notifier.db.pool import Pool

BRANCHES = 4
GROUPS = 16

MEMBER_ID_SQL = "$1 || '-m' || lpad(i::text, 7, '0')"  # must match member_id()


async def create_org(pool: Pool, prefix: str, n: int, hook_url: str) -> str:
    """root -> 4 branches -> 16 groups; member i in group i % 16, every 10th also in its branch."""
    root = f"{prefix}-root"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO units (id, name) VALUES ($1, 'Benchmark committee')", root)
        await conn.execute(
            "INSERT INTO units (id, name, parent_id) SELECT $1 || '-b' || b, 'Branch ' || b, $2 "
            "FROM generate_series(0, $3 - 1) b",
            prefix,
            root,
            BRANCHES,
        )
        await conn.execute(
            "INSERT INTO units (id, name, parent_id) SELECT $1 || '-g' || g, 'Group ' || g, "
            "$1 || '-b' || (g % $3) FROM generate_series(0, $2 - 1) g",
            prefix,
            GROUPS,
            BRANCHES,
        )
        await conn.execute(
            f"INSERT INTO members (id, name) SELECT {MEMBER_ID_SQL}, 'Member ' || i "
            "FROM generate_series(0, $2 - 1) i",
            prefix,
            n,
        )
        await conn.execute(
            f"INSERT INTO member_units (member_id, unit_id) SELECT {MEMBER_ID_SQL}, "
            "$1 || '-g' || (i % $3) FROM generate_series(0, $2 - 1) i "
            f"UNION ALL SELECT {MEMBER_ID_SQL}, $1 || '-b' || ((i % $3) % $4) "
            "FROM generate_series(0, $2 - 1, 10) i",
            prefix,
            n,
            GROUPS,
            BRANCHES,
        )
        await conn.execute(
            f"INSERT INTO contacts (member_id, channel, target) SELECT {MEMBER_ID_SQL}, "
            "'webhook', jsonb_build_object('url', $3::text) FROM generate_series(0, $2 - 1) i",
            prefix,
            n,
            hook_url,
        )
    # What autovacuum does shortly after a bulk import (statistics for the planner, hint bits and
    # the visibility map): a real member table has been vacuumed long before a notice goes out.
    await pool.execute("VACUUM (ANALYZE) units, members, member_units, contacts")
    return root


def member_id(prefix: str, i: int) -> str:
    return f"{prefix}-m{i:07d}"
