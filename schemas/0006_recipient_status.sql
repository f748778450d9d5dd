-- Recipient status and the counters follow the deliveries by themselves: two statement-level
-- triggers on deliveries move recipients.dstatus and notice_counts in the statement that changes
-- a delivery, so no caller can forget (four paths used to). Cancelled is an outcome of its own.
--
-- A recipient's status is the best of its deliveries:
--   delivered > sent (sent, unknown) > queued (queued, sending) > failed > cancelled

ALTER TABLE recipients DROP CONSTRAINT recipients_dstatus_check;
ALTER TABLE recipients ADD CONSTRAINT recipients_dstatus_check
    CHECK (dstatus IN ('queued', 'sent', 'delivered', 'failed', 'cancelled'));
ALTER TABLE notice_counts ADD COLUMN cancelled bigint NOT NULL DEFAULT 0;

-- Simple IMMUTABLE SQL functions: the planner inlines them, so they cost nothing per row.
CREATE FUNCTION delivery_rank(state text) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE state WHEN 'delivered' THEN 5 WHEN 'sent' THEN 4 WHEN 'unknown' THEN 4
                      WHEN 'queued' THEN 3 WHEN 'sending' THEN 3 WHEN 'failed' THEN 2 ELSE 1 END
$$;
CREATE FUNCTION recipient_status(rank int) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (ARRAY['cancelled', 'failed', 'queued', 'sent', 'delivered'])[rank]
$$;

-- The counter shard a transaction writes: one per transaction, so a transaction that changes
-- deliveries in several statements holds one counter row per notice, and concurrent
-- transactions spread over the shards.
CREATE FUNCTION notice_count_shard() RETURNS smallint LANGUAGE sql VOLATILE AS $$
    SELECT (pg_current_xact_id()::text::bigint % 16)::smallint
$$;

-- Set recipients' statuses and move the counters by the difference. The caller holds the
-- recipients' row locks (or created the rows in this transaction).
CREATE FUNCTION set_recipient_status(notice_ids uuid[], member_ids text[], statuses text[])
RETURNS void LANGUAGE sql VOLATILE AS $$
WITH want AS (
    SELECT * FROM unnest(notice_ids, member_ids, statuses) AS w(notice_id, member_id, status)
),
cur AS (
    SELECT r.notice_id, r.member_id, r.dstatus AS old_status, w.status AS new_status
    FROM recipients r JOIN want w ON w.notice_id = r.notice_id AND w.member_id = r.member_id
    WHERE r.dstatus <> w.status
),
upd AS (
    UPDATE recipients r SET dstatus = c.new_status,
        delivered_at = CASE WHEN c.new_status = 'delivered' THEN coalesce(r.delivered_at, (SELECT notifier_now()))
                            ELSE r.delivered_at END
    FROM cur c WHERE r.notice_id = c.notice_id AND r.member_id = c.member_id
    RETURNING c.notice_id, c.old_status, c.new_status
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

-- Inserted deliveries can only raise a recipient's status: new = max(old, best inserted), so
-- the fan-out (whose own insert already wrote that status) pays a join, not a recompute.
CREATE FUNCTION recipients_follow_inserted_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n uuid[];
    m text[];
    s text[];
BEGIN
    -- Lock in one order (no deadlocks between batches). A row version this transaction wrote
    -- (the fan-out's new recipients, a read just recorded) is already ours: nothing to wait for,
    -- and the fan-out does not pay a lock per recipient.
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

-- A delivery moving inside one class (queued <-> sending, sent <-> unknown) changes no
-- recipient. Moves up: new = max(old, best moved-to). A move down (failed, cancelled, or a
-- report saying sent -> failed): recompute that recipient from all its deliveries.
CREATE FUNCTION recipients_follow_updated_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n uuid[];
    m text[];
    best int[];
    fell boolean[];
    s text[];
BEGIN
    SELECT array_agg(c.notice_id), array_agg(c.member_id), array_agg(c.best), array_agg(c.fell)
    INTO n, m, best, fell
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
    PERFORM 1 FROM recipients r JOIN unnest(n, m) AS p(notice_id, member_id)
        ON r.notice_id = p.notice_id AND r.member_id = p.member_id
    ORDER BY r.notice_id, r.member_id FOR UPDATE OF r;
    -- After the locks: a fresh snapshot sees every delivery committed before they were granted.
    SELECT array_agg(r.notice_id), array_agg(r.member_id), array_agg(recipient_status(
               CASE WHEN NOT p.fell THEN greatest(p.best, delivery_rank(r.dstatus))
                    ELSE (SELECT max(delivery_rank(d.state)) FROM deliveries d
                          WHERE d.notice_id = r.notice_id AND d.member_id = r.member_id) END))
    INTO n, m, s
    FROM unnest(n, m, best, fell) AS p(notice_id, member_id, best, fell)
    JOIN recipients r ON r.notice_id = p.notice_id AND r.member_id = p.member_id;
    IF n IS NOT NULL THEN
        PERFORM set_recipient_status(n, m, s);
    END IF;
    RETURN NULL;
END
$$;

-- Transition tables need one trigger per event.
CREATE TRIGGER deliveries_move_recipients_on_insert AFTER INSERT ON deliveries
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION recipients_follow_inserted_deliveries();
CREATE TRIGGER deliveries_move_recipients_on_update AFTER UPDATE ON deliveries
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION recipients_follow_updated_deliveries();

-- Repair what drifted before: statuses from the deliveries, counters from the recipients.
UPDATE recipients r SET dstatus = b.status
FROM (SELECT notice_id, member_id, recipient_status(max(delivery_rank(state))) AS status
      FROM deliveries GROUP BY notice_id, member_id) b
WHERE b.notice_id = r.notice_id AND b.member_id = r.member_id AND r.dstatus <> b.status;
DELETE FROM notice_counts;
INSERT INTO notice_counts (notice_id, shard, recipients, queued, sent, delivered, failed, cancelled, read)
SELECT t.notice_id, 0, t.recipients, t.queued, t.sent, t.delivered, t.failed, t.cancelled, t.read
FROM (
    SELECT notice_id, count(*) AS recipients,
           count(*) FILTER (WHERE dstatus = 'queued') AS queued, count(*) FILTER (WHERE dstatus = 'sent') AS sent,
           count(*) FILTER (WHERE dstatus = 'delivered') AS delivered,
           count(*) FILTER (WHERE dstatus = 'failed') AS failed,
           count(*) FILTER (WHERE dstatus = 'cancelled') AS cancelled,
           count(*) FILTER (WHERE read_at IS NOT NULL) AS read
    FROM recipients GROUP BY notice_id
) t JOIN notices n ON n.id = t.notice_id;

-- A step-0 delivery held back (quiet hours, a rate or per-contact limit, an open circuit) is
-- moot once the member has read: the claim skips it and the reconciler's sweep cancels it.
CREATE INDEX deliveries_queued_held_idx ON deliveries (notice_id, member_id)
    WHERE state = 'queued' AND wait_reason IN ('quiet_hours', 'throttled', 'capped', 'circuit_open');
