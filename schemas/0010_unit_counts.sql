-- Oversight: every unit sees its own slice of every notice that reached it.
--
-- Each recipient carries the units it is counted in, snapshotted by the fan-out (membership may
-- change later; the counters must not drift): ``units`` is every unit whose subtree holds the
-- member (its units and all their ancestors, each once), ``direct_units`` the member's own units.
-- Counters per (notice, unit, direct) follow the same statements as the notice's counters: the
-- fan-out insert, set_recipient_status (deliveries trigger, recall) and the read receipt.
-- direct = false: the unit's whole subtree (a member in two units of it counts once);
-- direct = true: the unit's own members (the "members of X itself" row of a roll-up).

ALTER TABLE recipients ADD COLUMN units text[] NOT NULL DEFAULT '{}',
                       ADD COLUMN direct_units text[] NOT NULL DEFAULT '{}';

-- Sharded like notice_counts (notice_count_shard(): one shard per transaction), so concurrent
-- reads of one notice do not queue on the root unit's row. Time to read (read_at minus the
-- recipient's fan-out) in fixed, disjoint buckets: <= 1, 5, 15, 30, 60 minutes, later.
CREATE TABLE notice_unit_counts (
    notice_id    uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    unit_id      text NOT NULL,
    direct       boolean NOT NULL,
    shard        smallint NOT NULL,
    recipients   bigint NOT NULL DEFAULT 0,
    queued       bigint NOT NULL DEFAULT 0,
    sent         bigint NOT NULL DEFAULT 0,
    delivered    bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    cancelled    bigint NOT NULL DEFAULT 0,
    read         bigint NOT NULL DEFAULT 0,
    read_1m      bigint NOT NULL DEFAULT 0,
    read_5m      bigint NOT NULL DEFAULT 0,
    read_15m     bigint NOT NULL DEFAULT 0,
    read_30m     bigint NOT NULL DEFAULT 0,
    read_60m     bigint NOT NULL DEFAULT 0,
    read_later   bigint NOT NULL DEFAULT 0,
    last_read_at timestamptz,
    PRIMARY KEY (notice_id, unit_id, direct, shard)
);

-- Which units a notice reached or was created under (the creating unit and its ancestors, at
-- creation; every counted unit, at fan-out): visibility is one primary-key probe, and a unit's
-- notices are one index range, newest first.
CREATE TABLE notice_reach (
    notice_id  uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    unit_id    text NOT NULL,
    created_at timestamptz NOT NULL,  -- the notice's
    PRIMARY KEY (notice_id, unit_id)
);
CREATE INDEX notice_reach_unit_idx ON notice_reach (unit_id, created_at DESC, notice_id DESC);
CREATE INDEX notices_created_idx ON notices (created_at DESC, id DESC);

-- A notice is listed under the unit that created it and every unit above, from its creation on
-- (lessons and escalation summaries too, whoever inserts them).
CREATE FUNCTION notices_reach_their_creators() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO notice_reach (notice_id, unit_id, created_at)
    WITH RECURSIVE up (id, parent_id, depth) AS (
        SELECT u.id, u.parent_id, 0 FROM units u WHERE u.id = NEW.scope_unit_id
        UNION ALL
        SELECT p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id WHERE up.depth < 1000
    )
    SELECT DISTINCT NEW.id, up.id, NEW.created_at FROM up
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER notices_reach_their_creators AFTER INSERT ON notices
    FOR EACH ROW WHEN (NEW.scope_unit_id IS NOT NULL) EXECUTE FUNCTION notices_reach_their_creators();

-- The time-to-read bucket (1..6) of a read that took ``took``.
CREATE FUNCTION read_bucket(took interval) RETURNS int LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN took <= interval '1 minute' THEN 1 WHEN took <= interval '5 minutes' THEN 2
                WHEN took <= interval '15 minutes' THEN 3 WHEN took <= interval '30 minutes' THEN 4
                WHEN took <= interval '60 minutes' THEN 5 ELSE 6 END
$$;

-- As in 0006, and the per-unit counters move by the same differences.
CREATE OR REPLACE FUNCTION set_recipient_status(notice_ids uuid[], member_ids text[], statuses text[])
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

-- Backfill what was fanned out before: units from today's memberships, counters from the rows.
WITH RECURSIVE up (start, id, parent_id, depth) AS (
    SELECT u.id, u.id, u.parent_id, 0 FROM units u
    UNION ALL
    SELECT up.start, p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id
    WHERE up.depth < 1000
),
mem AS (
    SELECT mu.member_id, array_agg(DISTINCT up.id ORDER BY up.id) AS units,
           array_agg(DISTINCT mu.unit_id ORDER BY mu.unit_id) AS direct_units
    FROM member_units mu JOIN up ON up.start = mu.unit_id GROUP BY mu.member_id
)
UPDATE recipients r SET units = mem.units, direct_units = mem.direct_units
FROM mem WHERE mem.member_id = r.member_id;

INSERT INTO notice_unit_counts (notice_id, unit_id, direct, shard, recipients, queued, sent, delivered, failed,
                                cancelled, read, read_1m, read_5m, read_15m, read_30m, read_60m, read_later,
                                last_read_at)
SELECT x.notice_id, x.unit_id, x.direct, 0, count(*), count(*) FILTER (WHERE dstatus = 'queued'),
       count(*) FILTER (WHERE dstatus = 'sent'), count(*) FILTER (WHERE dstatus = 'delivered'),
       count(*) FILTER (WHERE dstatus = 'failed'), count(*) FILTER (WHERE dstatus = 'cancelled'),
       count(read_at), count(*) FILTER (WHERE bucket = 1), count(*) FILTER (WHERE bucket = 2),
       count(*) FILTER (WHERE bucket = 3), count(*) FILTER (WHERE bucket = 4),
       count(*) FILTER (WHERE bucket = 5), count(*) FILTER (WHERE bucket = 6), max(read_at)
FROM (
    SELECT r.notice_id, r.dstatus, r.read_at, u.unit_id, u.direct,
           CASE WHEN r.read_at IS NOT NULL THEN read_bucket(r.read_at - r.created_at) END AS bucket
    FROM recipients r
    CROSS JOIN LATERAL (SELECT unnest(r.units), false UNION ALL SELECT unnest(r.direct_units), true) u (unit_id, direct)
) x JOIN notices n ON n.id = x.notice_id
GROUP BY x.notice_id, x.unit_id, x.direct;

WITH RECURSIVE up (start, id, parent_id, depth) AS (
    SELECT n.id, u.id, u.parent_id, 0 FROM notices n JOIN units u ON u.id = n.scope_unit_id
    UNION ALL
    SELECT up.start, p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id
    WHERE up.depth < 1000
)
INSERT INTO notice_reach (notice_id, unit_id, created_at)
SELECT n.id, r.unit_id, n.created_at
FROM (SELECT start AS notice_id, id AS unit_id FROM up
      UNION
      SELECT notice_id, unit_id FROM notice_unit_counts WHERE NOT direct) r
JOIN notices n ON n.id = r.notice_id;
