-- The delivery hot path, part two (issue 13): a write-back whose deliveries only move up (sent,
-- delivered: every webhook batch) reads its recipients twice instead of three times.
--
-- Before, recipients_follow_updated_deliveries (schemas/0020) locked the batch's recipients in
-- (notice_id, member_id) order, read them again under the lock to compute their new statuses,
-- and set_recipient_status probed them a third time to update them. When no delivery of the
-- statement fell (to failed, cancelled, or a report's sent -> failed), a recipient's new status
-- is the best of its status and the ranks that arrived, which set_recipient_status can compute
-- from the row it probes anyway (raise_only). The lock stays a statement of its own: the
-- update must see, in a snapshot taken after the locks, the versions the locks waited for.
-- A statement where anything fell keeps the old path for all its rows (recompute from the
-- deliveries after the locks).

-- statuses: what each recipient becomes; with raise_only, what it becomes at least (its status
-- stays when that is better). The caller holds the recipients' row locks (or created the rows
-- in this transaction).
CREATE FUNCTION set_recipient_status(notice_ids uuid[], member_ids text[], statuses text[], raise_only boolean)
RETURNS void LANGUAGE sql VOLATILE AS $$
WITH want AS (
    SELECT * FROM unnest(notice_ids, member_ids, statuses) AS w(notice_id, member_id, status)
),
cur AS (
    -- One primary-key probe per wanted row (LIMIT 1 keeps the lateral a nested loop).
    SELECT w.notice_id, r.rid, r.dstatus AS old_status,
           CASE WHEN raise_only THEN recipient_status(greatest(delivery_rank(w.status), delivery_rank(r.dstatus)))
                ELSE w.status END AS new_status
    FROM want w CROSS JOIN LATERAL (
        SELECT r.ctid AS rid, r.dstatus FROM recipients r
        WHERE r.notice_id = w.notice_id AND r.member_id = w.member_id LIMIT 1
    ) r
),
upd AS (
    UPDATE recipients r SET dstatus = c.new_status,
        delivered_at = CASE WHEN c.new_status = 'delivered' THEN coalesce(r.delivered_at, (SELECT notifier_now()))
                            ELSE r.delivered_at END
    FROM cur c WHERE r.ctid = c.rid AND c.new_status <> c.old_status
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

-- The three-argument form, as its callers know it: the statuses are set as given (one home for
-- the update and the counters).
CREATE OR REPLACE FUNCTION set_recipient_status(notice_ids uuid[], member_ids text[], statuses text[])
RETURNS void LANGUAGE sql VOLATILE AS $$
    SELECT set_recipient_status(notice_ids, member_ids, statuses, false)
$$;

CREATE OR REPLACE FUNCTION recipients_follow_updated_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n uuid[];
    m text[];
    best int[];
    fell boolean[];
    any_fell boolean;
    s text[];
BEGIN
    SELECT array_agg(c.notice_id ORDER BY c.notice_id, c.member_id), array_agg(c.member_id ORDER BY c.notice_id, c.member_id),
           array_agg(c.best ORDER BY c.notice_id, c.member_id), array_agg(c.fell ORDER BY c.notice_id, c.member_id),
           bool_or(c.fell)
    INTO n, m, best, fell, any_fell
    FROM (
        SELECT a.notice_id, a.member_id, max(delivery_rank(a.state)) AS best,
               bool_or(delivery_rank(a.state) < delivery_rank(b.state)) AS fell
        FROM after_rows a JOIN before_rows b ON b.id = a.id
        WHERE delivery_rank(a.state) <> delivery_rank(b.state)
        GROUP BY a.notice_id, a.member_id
    ) c;
    IF n IS NULL THEN
        RETURN NULL;
    END IF;
    -- The arrays are in (notice_id, member_id) order, and so are the locks.
    PERFORM 1 FROM unnest(n, m) WITH ORDINALITY AS p(notice_id, member_id, ord)
    CROSS JOIN LATERAL (
        SELECT 1 FROM recipients r WHERE r.notice_id = p.notice_id AND r.member_id = p.member_id
        LIMIT 1 FOR UPDATE
    ) l
    ORDER BY p.ord;
    IF NOT any_fell THEN
        -- Only moves up: the update's own probe reads what the locks waited for (a new
        -- statement, a new snapshot) and keeps the better status.
        PERFORM set_recipient_status(n, m, (SELECT array_agg(recipient_status(x.b) ORDER BY x.o)
                                            FROM unnest(best) WITH ORDINALITY AS x(b, o)), true);
        RETURN NULL;
    END IF;
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

-- The fan-out (notifier/db/fanout.py FANOUT_CHUNK) inserts each recipient with the status its
-- new deliveries give it, in the same statement, so there is nothing for this trigger to move.
-- It still paid for two joins of the chunk's rows against all of recipients, planned as
-- sequential scans: a chunk cost in proportion to every recipient of every notice (0.5 s per
-- 50,000-recipient chunk with 280,000 recipients stored, more each notice). The fan-out
-- statement says so for itself (a transaction-local setting it sets and this trigger clears, so
-- any later insert of the transaction is followed as before).
CREATE OR REPLACE FUNCTION recipients_follow_inserted_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n uuid[];
    m text[];
    s text[];
BEGIN
    IF current_setting('notifier.fanout_statement', true) = 'on' THEN
        PERFORM set_config('notifier.fanout_statement', '', true);
        RETURN NULL;
    END IF;
    -- Lock in one order (no deadlocks between batches). A row version this transaction wrote
    -- (a read just recorded) is already ours: nothing to wait for.
    PERFORM 1 FROM recipients r
    WHERE (r.notice_id, r.member_id) IN (SELECT notice_id, member_id FROM inserted)
      AND r.xmin <> pg_current_xact_id()::xid
    ORDER BY r.notice_id, r.member_id FOR UPDATE;
    -- A new statement, a new snapshot: it sees everything committed before the locks were granted.
    SELECT array_agg(r.notice_id), array_agg(r.member_id), array_agg(recipient_status(i.best))
    INTO n, m, s
    FROM (SELECT notice_id, member_id, max(delivery_rank(state)) AS best FROM inserted GROUP BY 1, 2) i
    JOIN recipients r ON r.notice_id = i.notice_id AND r.member_id = i.member_id
    WHERE i.best > delivery_rank(r.dstatus);
    IF n IS NOT NULL THEN
        PERFORM set_recipient_status(n, m, s);
    END IF;
    RETURN NULL;
END
$$;
