-- The delivery hot path, part four (issue 13): what a webhook delivery costs PostgreSQL
-- beyond its two updates of ``deliveries`` (benchmarks/pg_delivery.py, benchmarks/makerun.py).
--
-- 1. A claim (queued -> sending) moves no recipient, yet recipients_follow_updated_deliveries
--    (schemas/0039) joined the claim's old and new rows, grouped them and ran its counting
--    statement over nothing: 0.8 ms per 500-row claim. A statement whose old and new rows all
--    lie in the queued class (queued, sending: delivery_rank 3) -- a claim, a lease renewal, a
--    release, a retry written back, an expired lease handed back -- now returns after two scans
--    of its transition tables. Every other statement goes the way of schemas/0039, unchanged.
--
-- 2. The write-back's per-unit counting unnested every recipient's unit path (4 rows per
--    recipient in benchmarks/fanout's tree) before grouping by unit; recipients of one path
--    moved alike are now counted once and the count spread over the path (the same sums).
--
-- Recipients stay at fillfactor 80 (schemas/0020): at 45 every write-back's recipient update was
-- HOT, but the fan-out wrote 1.8x the pages -- +12% PostgreSQL CPU per in-app recipient
-- (benchmarks/fanout/scale.py) for no difference in makerun's per-delivery figure.

CREATE OR REPLACE FUNCTION recipients_follow_updated_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n uuid[];
    m text[];
    best int[];
    fell boolean[];
    s text[];
BEGIN
    -- Nothing moved between classes: the statement only moved rows inside the queued class
    -- (a claim, a renewal, a release, a retry written back, a lease handed back to the queue).
    IF NOT EXISTS (SELECT 1 FROM after_rows WHERE delivery_rank(state) <> 3)
       AND NOT EXISTS (SELECT 1 FROM before_rows WHERE delivery_rank(state) <> 3) THEN
        RETURN NULL;
    END IF;
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
        SELECT g.notice_id, u.unit_id, u.direct, notice_count_shard(),
               sum(g.n * ((g.new_status = 'queued')::int - (g.old_status = 'queued')::int)),
               sum(g.n * ((g.new_status = 'sent')::int - (g.old_status = 'sent')::int)),
               sum(g.n * ((g.new_status = 'delivered')::int - (g.old_status = 'delivered')::int)),
               sum(g.n * ((g.new_status = 'failed')::int - (g.old_status = 'failed')::int)),
               sum(g.n * ((g.new_status = 'cancelled')::int - (g.old_status = 'cancelled')::int))
        -- Recipients of one unit path moved alike are counted once, then spread over the path.
        FROM (SELECT notice_id, units, direct_units, old_status, new_status, count(*)::int AS n
              FROM upd GROUP BY notice_id, units, direct_units, old_status, new_status) g
        CROSS JOIN LATERAL (SELECT unnest(g.units) AS unit_id, false AS direct
                            UNION ALL
                            SELECT unnest(g.direct_units), true) u
        GROUP BY g.notice_id, u.unit_id, u.direct ORDER BY g.notice_id, u.unit_id, u.direct
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
