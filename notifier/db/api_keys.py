"""api_keys: bearer tokens, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib

from notifier.db.pool import Connection, Pool, Record

INSERT = """
INSERT INTO api_keys (name, role, unit_id, member_id, token_hash, created_by)
VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, name, role, unit_id, member_id, created_at"""
BY_HASH = """
SELECT id, name, role, unit_id, member_id FROM api_keys WHERE token_hash = $1 AND revoked_at IS NULL"""
REVOKE = "UPDATE api_keys SET revoked_at = (SELECT notifier_now()) WHERE id = $1 AND revoked_at IS NULL RETURNING id"


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def insert(
    conn: Connection,
    name: str,
    role: str,
    unit_id: str | None,
    member_id: str | None,
    token: str,
    created_by: str | None,
) -> Record:
    row = await conn.fetchrow(INSERT, name, role, unit_id, member_id, hash_token(token), created_by)
    assert row is not None
    return row


async def by_token(pool: Pool, token: str) -> Record | None:
    return await pool.fetchrow(BY_HASH, hash_token(token))
