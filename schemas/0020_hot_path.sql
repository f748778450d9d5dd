-- The delivery hot path (issue 13): the same counters, less PostgreSQL work per delivery.
--
-- set_recipient_status (schemas/0010) as before, except that it finds the recipients by their
-- primary key: its join against the wanted rows was planned as a sequential scan of every
-- recipient of every notice, hashed, once per write-back batch -- cost growing with the table.

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
$$;

-- A delivery's write-back moves its recipient's dstatus (no index holds it): with room left on
-- the page the new row version stays there (a HOT update) and none of the four indexes of
-- recipients is touched. Applies to pages written from now on.
ALTER TABLE recipients SET (fillfactor = 80);
