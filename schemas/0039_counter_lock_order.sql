-- Counter rows in one order everywhere (issue 13 follow-up): units' before the notice's.
--
-- The receipts (db/receipts.py MARK, record_receipt() in schemas/0035) and the fan-out's counting
-- (db/fanout.py) take a unit's counter rows (notice_unit_counts) before the notice's
-- (notice_counts). The delivery write-back took them the other way round, on both of its paths:
-- set_recipient_status (schemas/0020; the main INSERT, the notice's, runs before its CTEs) and
-- the one-statement path of recipients_follow_updated_deliveries (schemas/0033; its two
-- unreferenced counting CTEs run last to first). A write-back and a batch of reads that shared
-- a counter shard deadlocked (tests/workers/test_write_back_lock_order.py). The same statements,
-- in the other order.

CREATE OR REPLACE FUNCTION set_recipient_status(notice_ids uuid[], member_ids text[], statuses text[])
RETURNS void LANGUAGE sql VOLATILE AS $$
WITH want AS (
    SELECT * FROM unnest(notice_ids, member_ids, statuses) AS w(notice_id, member_id, status)
),
cur AS (
    -- One primary-key probe per wanted row (LIMIT 1 keeps the lateral a nested loop): a join the
    -- planner is free to plan hashed the whole recipients table for every 500-row batch.
    SELECT w.notice_id, w.member_id, r.rid, r.dstatus AS old_status, w.status AS new_status
    FROM want w CROSS JOIN LATERAL (
        SELECT r.ctid AS rid, r.dstatus FROM recipients r
        WHERE r.notice_id = w.notice_id AND r.member_id = w.member_id LIMIT 1
    ) r
    WHERE r.dstatus <> w.status
),
upd AS (
    UPDATE recipients r SET dstatus = c.new_status,
        delivered_at = CASE WHEN c.new_status = 'delivered' THEN coalesce(r.delivered_at, (SELECT notifier_now()))
                            ELSE r.delivered_at END
    FROM cur c WHERE r.ctid = c.rid
    RETURNING c.notice_id, c.old_status, c.new_status, r.units, r.direct_units
),
totals AS (
    INSERT INTO notice_counts AS k (notice_id, shard, queued, sent, delivered, failed, cancelled)
    SELECT notice_id, notice_count_shard(),
           sum((new_status = 'queued')::int - (old_status = 'queued')::int),
           sum((new_status = 'sent')::int - (old_status = 'sent')::int),
           sum((new_status = 'delivered')::int - (old_status = 'delivered')::int),
           sum((new_status = 'failed')::int - (old_status = 'failed')::int),
           sum((new_status = 'cancelled')::int - (old_status = 'cancelled')::int)
    FROM upd GROUP BY notice_id ORDER BY notice_id
    ON CONFLICT (notice_id, shard) DO UPDATE SET
        queued = k.queued + excluded.queued, sent = k.sent + excluded.sent,
        delivered = k.delivered + excluded.delivered, failed = k.failed + excluded.failed,
        cancelled = k.cancelled + excluded.cancelled
)
-- The counter rows in the receipts' and the fan-out's order (db/receipts.py MARK,
-- db/fanout.py): the units' -- this statement's own INSERT, run first -- then the notice's
-- (totals: an unreferenced CTE, run after it).
INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, queued, sent, delivered, failed, cancelled)
SELECT notice_id, unit_id, direct, notice_count_shard(),
       sum((new_status = 'queued')::int - (old_status = 'queued')::int),
       sum((new_status = 'sent')::int - (old_status = 'sent')::int),
       sum((new_status = 'delivered')::int - (old_status = 'delivered')::int),
       sum((new_status = 'failed')::int - (old_status = 'failed')::int),
       sum((new_status = 'cancelled')::int - (old_status = 'cancelled')::int)
FROM (SELECT notice_id, old_status, new_status, unnest(units) AS unit_id, false AS direct FROM upd
      UNION ALL
      SELECT notice_id, old_status, new_status, unnest(direct_units), true FROM upd) u
GROUP BY notice_id, unit_id, direct ORDER BY notice_id, unit_id, direct
ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET
    queued = k.queued + excluded.queued, sent = k.sent + excluded.sent,
    delivered = k.delivered + excluded.delivered, failed = k.failed + excluded.failed,
    cancelled = k.cancelled + excluded.cancelled
$$;

CREATE OR REPLACE FUNCTION recipients_follow_updated_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n uuid[];
    m text[];
    best int[];
    fell boolean[];
    s text[];
BEGIN
    WITH c AS MATERIALIZED (
        SELECT a.notice_id, a.member_id, max(delivery_rank(a.state)) AS best,
               bool_or(delivery_rank(a.state) < delivery_rank(b.state)) AS fell
        FROM after_rows a JOIN before_rows b ON b.id = a.id
        WHERE delivery_rank(a.state) <> delivery_rank(b.state)
        GROUP BY a.notice_id, a.member_id
        ORDER BY a.notice_id, a.member_id
    ),
    cur AS MATERIALIZED (
        -- One primary-key probe per recipient (LIMIT 1 keeps the lateral a nested loop).
        SELECT c.notice_id, c.member_id, c.best, c.fell, r.rid, r.dstatus AS old_status,
               recipient_status(greatest(c.best, delivery_rank(r.dstatus))) AS new_status
        FROM c CROSS JOIN LATERAL (
            SELECT r.ctid AS rid, r.dstatus FROM recipients r
            WHERE r.notice_id = c.notice_id AND r.member_id = c.member_id LIMIT 1
        ) r
    ),
    upd AS (
        UPDATE recipients r SET dstatus = u.new_status,
            delivered_at = CASE WHEN u.new_status = 'delivered' THEN coalesce(r.delivered_at, (SELECT notifier_now()))
                                ELSE r.delivered_at END
        FROM cur u
        WHERE r.ctid = u.rid AND r.dstatus = u.old_status
          AND (SELECT bool_and(NOT x.fell AND x.new_status <> x.old_status) FROM cur x)
        RETURNING r.notice_id, r.member_id, u.old_status, u.new_status, r.units, r.direct_units
    ),
    -- The counter rows in the receipts' and the fan-out's order: the units' (per_unit), then the
    -- notice's (totals). Both CTEs are unreferenced: they run after the main query, last to
    -- first, so totals is written before per_unit.
    totals AS (
        INSERT INTO notice_counts AS k (notice_id, shard, queued, sent, delivered, failed, cancelled)
        SELECT notice_id, notice_count_shard(),
               sum((new_status = 'queued')::int - (old_status = 'queued')::int),
               sum((new_status = 'sent')::int - (old_status = 'sent')::int),
               sum((new_status = 'delivered')::int - (old_status = 'delivered')::int),
               sum((new_status = 'failed')::int - (old_status = 'failed')::int),
               sum((new_status = 'cancelled')::int - (old_status = 'cancelled')::int)
        FROM upd GROUP BY notice_id ORDER BY notice_id
        ON CONFLICT (notice_id, shard) DO UPDATE SET
            queued = k.queued + excluded.queued, sent = k.sent + excluded.sent,
            delivered = k.delivered + excluded.delivered, failed = k.failed + excluded.failed,
            cancelled = k.cancelled + excluded.cancelled
    ),
    per_unit AS (
        INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, queued, sent, delivered, failed, cancelled)
        SELECT notice_id, unit_id, direct, notice_count_shard(),
               sum((new_status = 'queued')::int - (old_status = 'queued')::int),
               sum((new_status = 'sent')::int - (old_status = 'sent')::int),
               sum((new_status = 'delivered')::int - (old_status = 'delivered')::int),
               sum((new_status = 'failed')::int - (old_status = 'failed')::int),
               sum((new_status = 'cancelled')::int - (old_status = 'cancelled')::int)
        FROM (SELECT notice_id, old_status, new_status, unnest(units) AS unit_id, false AS direct FROM upd
              UNION ALL
              SELECT notice_id, old_status, new_status, unnest(direct_units), true FROM upd) u
        GROUP BY notice_id, unit_id, direct ORDER BY notice_id, unit_id, direct
        ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET
            queued = k.queued + excluded.queued, sent = k.sent + excluded.sent,
            delivered = k.delivered + excluded.delivered, failed = k.failed + excluded.failed,
            cancelled = k.cancelled + excluded.cancelled
    )
    -- What the update did not do, in (notice_id, member_id) order.
    SELECT array_agg(u.notice_id ORDER BY u.notice_id, u.member_id), array_agg(u.member_id ORDER BY u.notice_id, u.member_id),
           array_agg(u.best ORDER BY u.notice_id, u.member_id), array_agg(u.fell ORDER BY u.notice_id, u.member_id)
    INTO n, m, best, fell
    FROM cur u
    WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.notice_id = u.notice_id AND upd.member_id = u.member_id);
    IF n IS NULL THEN
        RETURN NULL;
    END IF;
    -- The old way (schemas/0020) for the rest. The arrays are in (notice_id, member_id) order,
    -- and so are the locks.
    PERFORM 1 FROM unnest(n, m) WITH ORDINALITY AS p(notice_id, member_id, ord)
    CROSS JOIN LATERAL (
        SELECT 1 FROM recipients r WHERE r.notice_id = p.notice_id AND r.member_id = p.member_id
        LIMIT 1 FOR UPDATE
    ) l
    ORDER BY p.ord;
    -- After the locks: a fresh snapshot sees every delivery committed before they were granted.
    SELECT array_agg(p.notice_id), array_agg(p.member_id), array_agg(recipient_status(
               CASE WHEN NOT p.fell THEN greatest(p.best, delivery_rank(r.dstatus))
                    ELSE (SELECT max(delivery_rank(d.state)) FROM deliveries d
                          WHERE d.notice_id = p.notice_id AND d.member_id = p.member_id) END))
    INTO n, m, s
    FROM unnest(n, m, best, fell) AS p(notice_id, member_id, best, fell)
    CROSS JOIN LATERAL (
        SELECT r.dstatus FROM recipients r WHERE r.notice_id = p.notice_id AND r.member_id = p.member_id LIMIT 1
    ) r;
    IF n IS NOT NULL THEN
        PERFORM set_recipient_status(n, m, s);
    END IF;
    RETURN NULL;
END
$$;

ALTER FUNCTION recipients_follow_updated_deliveries() SET plan_cache_mode = auto;
