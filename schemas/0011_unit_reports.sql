-- Reports over time: per (unit, kind, quarter hour of the notice) the notices that reached the
-- unit's subtree, their recipients, reads and time-to-read buckets.
--
-- Kept by a statement-level trigger on notice_unit_counts: every statement that moves a unit's
-- recipients or reads (the fan-out, the read receipt, a backfill) moves these rows in the same
-- statement, by the same differences. A report sums at most (units x quarter hours with notices x
-- shards) rows, never recipients. Slots are instants (15 minutes, aligned to UTC), so a report
-- groups them into days, weeks or months of whichever time zone it is asked in: every real
-- offset is a multiple of 15 minutes, and a unit changing its time zone moves no history.

CREATE TABLE unit_report_slots (
    unit_id     text NOT NULL,
    slot        timestamptz NOT NULL,   -- the notice's time (send_at, else created_at) to the quarter hour
    kind        text NOT NULL,
    shard       smallint NOT NULL,      -- notice_count_shard(); compact_report_slots() folds old ones into 0
    notices     bigint NOT NULL DEFAULT 0,
    recipients  bigint NOT NULL DEFAULT 0,
    read        bigint NOT NULL DEFAULT 0,
    read_1m     bigint NOT NULL DEFAULT 0,
    read_5m     bigint NOT NULL DEFAULT 0,
    read_15m    bigint NOT NULL DEFAULT 0,
    read_30m    bigint NOT NULL DEFAULT 0,
    read_60m    bigint NOT NULL DEFAULT 0,
    read_later  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (unit_id, slot, kind, shard)
);
CREATE INDEX unit_report_slots_sharded_idx ON unit_report_slots (slot) WHERE shard <> 0;

CREATE FUNCTION report_slot(at timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT to_timestamp(floor(extract(epoch FROM at) / 900) * 900)
$$;

-- Add per-(notice, unit) differences (subtree rows only) to the slots of their notices. A
-- notice is counted in a unit when its first recipients there are: the fan-out chunks of one
-- notice run one after another, so "the unit's recipients now equal this difference" means
-- "none before".
CREATE FUNCTION add_to_report_slots(d jsonb) RETURNS void LANGUAGE sql VOLATILE AS $$
WITH diff AS (
    SELECT x.notice_id, x.unit_id, sum(x.recipients) AS recipients, sum(x.read) AS read,
           sum(x.read_1m) AS read_1m, sum(x.read_5m) AS read_5m, sum(x.read_15m) AS read_15m,
           sum(x.read_30m) AS read_30m, sum(x.read_60m) AS read_60m, sum(x.read_later) AS read_later
    FROM jsonb_to_recordset(d) AS x(notice_id uuid, unit_id text, recipients bigint, read bigint, read_1m bigint,
                                    read_5m bigint, read_15m bigint, read_30m bigint, read_60m bigint,
                                    read_later bigint)
    GROUP BY x.notice_id, x.unit_id
),
per_notice AS (
    SELECT diff.*, n.kind, report_slot(coalesce(n.send_at, n.created_at)) AS slot,
           CASE WHEN diff.recipients > 0
                     AND (SELECT sum(k.recipients) FROM notice_unit_counts k
                          WHERE k.notice_id = diff.notice_id AND k.unit_id = diff.unit_id AND NOT k.direct)
                         = diff.recipients
                THEN 1 ELSE 0 END AS first
    FROM diff JOIN notices n ON n.id = diff.notice_id
    WHERE diff.recipients <> 0 OR diff.read <> 0
)
INSERT INTO unit_report_slots AS s (unit_id, slot, kind, shard, notices, recipients, read, read_1m, read_5m,
                                    read_15m, read_30m, read_60m, read_later)
SELECT unit_id, slot, kind, notice_count_shard(), sum(first), sum(recipients), sum(read), sum(read_1m),
       sum(read_5m), sum(read_15m), sum(read_30m), sum(read_60m), sum(read_later)
FROM per_notice GROUP BY unit_id, slot, kind ORDER BY unit_id, slot, kind
ON CONFLICT (unit_id, slot, kind, shard) DO UPDATE SET
    notices = s.notices + excluded.notices, recipients = s.recipients + excluded.recipients,
    read = s.read + excluded.read, read_1m = s.read_1m + excluded.read_1m, read_5m = s.read_5m + excluded.read_5m,
    read_15m = s.read_15m + excluded.read_15m, read_30m = s.read_30m + excluded.read_30m,
    read_60m = s.read_60m + excluded.read_60m, read_later = s.read_later + excluded.read_later
$$;

CREATE FUNCTION report_slots_follow_inserted_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d jsonb;
BEGIN
    SELECT jsonb_agg(i) INTO d FROM inserted i
    WHERE NOT i.direct AND (i.recipients <> 0 OR i.read <> 0);
    IF d IS NOT NULL THEN
        PERFORM add_to_report_slots(d);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION report_slots_follow_updated_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d jsonb;
BEGIN
    SELECT jsonb_agg(jsonb_build_object(
               'notice_id', a.notice_id, 'unit_id', a.unit_id, 'recipients', a.recipients - b.recipients,
               'read', a.read - b.read, 'read_1m', a.read_1m - b.read_1m, 'read_5m', a.read_5m - b.read_5m,
               'read_15m', a.read_15m - b.read_15m, 'read_30m', a.read_30m - b.read_30m,
               'read_60m', a.read_60m - b.read_60m, 'read_later', a.read_later - b.read_later))
    INTO d
    FROM after_rows a JOIN before_rows b
      ON b.notice_id = a.notice_id AND b.unit_id = a.unit_id AND b.direct = a.direct AND b.shard = a.shard
    WHERE NOT a.direct AND (a.recipients <> b.recipients OR a.read <> b.read);
    IF d IS NOT NULL THEN
        PERFORM add_to_report_slots(d);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER report_slots_on_insert AFTER INSERT ON notice_unit_counts
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION report_slots_follow_inserted_counts();
CREATE TRIGGER report_slots_on_update AFTER UPDATE ON notice_unit_counts
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT EXECUTE FUNCTION report_slots_follow_updated_counts();

-- Backfill from the counters kept so far.
INSERT INTO unit_report_slots (unit_id, slot, kind, shard, notices, recipients, read, read_1m, read_5m, read_15m,
                               read_30m, read_60m, read_later)
SELECT c.unit_id, report_slot(coalesce(n.send_at, n.created_at)), n.kind, 0, count(*) FILTER (WHERE c.recipients > 0),
       sum(c.recipients), sum(c.read), sum(c.read_1m), sum(c.read_5m), sum(c.read_15m), sum(c.read_30m),
       sum(c.read_60m), sum(c.read_later)
FROM (SELECT notice_id, unit_id, sum(recipients) AS recipients, sum(read) AS read, sum(read_1m) AS read_1m,
             sum(read_5m) AS read_5m, sum(read_15m) AS read_15m, sum(read_30m) AS read_30m,
             sum(read_60m) AS read_60m, sum(read_later) AS read_later
      FROM notice_unit_counts WHERE NOT direct GROUP BY notice_id, unit_id) c
JOIN notices n ON n.id = c.notice_id
GROUP BY 1, 2, 3;
