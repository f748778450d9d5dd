-- Reads move the report slots without re-planning the slots' whole upsert on every receipt.
--
-- The API and worker sessions plan every parameterised statement on every execution
-- (plan_cache_mode = force_custom_plan, db/pool.py), and PL/pgSQL and SQL functions plan theirs
-- through the same cache: the counters' triggers (0011) handed their differences to
-- add_to_report_slots(jsonb), whose INSERT (two CTEs, a join, a correlated sum, ON CONFLICT)
-- was planned again for every statement that touched notice_unit_counts -- 1.2 ms of the
-- 1.9 ms of backend CPU a single read receipt cost. A statement that moves reads only (a receipt,
-- a batch of them, a check-in; never recipients: only the fan-out adds those) now takes a path of
-- small statements: the notice's kind and slot by its key, then the slots' upsert straight from
-- the transition tables. The fan-out's (recipients move: "the first recipients of a unit" needs
-- the correlated sum) keeps add_to_report_slots as it was.

-- A notice's report key (kind, quarter hour), found by its primary key. In a function of its own:
-- the trigger statements below name only their transition tables (they have no parameters, so
-- their plans are made once per session and cached), and this lookup, planned with its
-- notice each time (the session's force_custom_plan), is by key whatever size notices has.
CREATE FUNCTION notice_report_key(nid uuid, OUT kind text, OUT slot timestamptz)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    SELECT n.kind, report_slot(coalesce(n.send_at, n.created_at)) INTO kind, slot FROM notices n WHERE n.id = nid;
END
$$;

CREATE OR REPLACE FUNCTION report_slots_follow_inserted_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d jsonb;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM inserted i WHERE NOT i.direct AND i.recipients <> 0) THEN
        -- reads only
        WITH g AS (
            SELECT i.notice_id, i.unit_id, sum(i.read) AS read, sum(i.read_1m) AS read_1m, sum(i.read_5m) AS read_5m,
                   sum(i.read_15m) AS read_15m, sum(i.read_30m) AS read_30m, sum(i.read_60m) AS read_60m,
                   sum(i.read_later) AS read_later
            FROM inserted i WHERE NOT i.direct AND i.read <> 0 GROUP BY i.notice_id, i.unit_id
        ),
        k AS MATERIALIZED (SELECT x.notice_id, r.kind, r.slot FROM (SELECT DISTINCT notice_id FROM g) x
              CROSS JOIN LATERAL notice_report_key(x.notice_id) r)
        INSERT INTO unit_report_slots AS s (unit_id, slot, kind, shard, read, read_1m, read_5m, read_15m,
                                            read_30m, read_60m, read_later)
        SELECT g.unit_id, k.slot, k.kind, notice_count_shard(), sum(g.read), sum(g.read_1m), sum(g.read_5m),
               sum(g.read_15m), sum(g.read_30m), sum(g.read_60m), sum(g.read_later)
        FROM g JOIN k ON k.notice_id = g.notice_id WHERE k.kind IS NOT NULL
        GROUP BY g.unit_id, k.slot, k.kind ORDER BY g.unit_id, k.slot, k.kind
        ON CONFLICT (unit_id, slot, kind, shard) DO UPDATE SET
            read = s.read + excluded.read, read_1m = s.read_1m + excluded.read_1m,
            read_5m = s.read_5m + excluded.read_5m, read_15m = s.read_15m + excluded.read_15m,
            read_30m = s.read_30m + excluded.read_30m, read_60m = s.read_60m + excluded.read_60m,
            read_later = s.read_later + excluded.read_later;
        RETURN NULL;
    END IF;
    SELECT jsonb_agg(i) INTO d FROM inserted i
    WHERE NOT i.direct AND (i.recipients <> 0 OR i.read <> 0);
    IF d IS NOT NULL THEN
        PERFORM add_to_report_slots(d);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION report_slots_follow_updated_counts() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    d jsonb;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM after_rows a JOIN before_rows b
          ON b.notice_id = a.notice_id AND b.unit_id = a.unit_id AND b.direct = a.direct AND b.shard = a.shard
        WHERE NOT a.direct AND a.recipients <> b.recipients
    ) THEN
        -- reads only (or neither: a delivery's status moved)
        WITH g AS (
            SELECT a.notice_id, a.unit_id, sum(a.read - b.read) AS read, sum(a.read_1m - b.read_1m) AS read_1m,
                   sum(a.read_5m - b.read_5m) AS read_5m, sum(a.read_15m - b.read_15m) AS read_15m,
                   sum(a.read_30m - b.read_30m) AS read_30m, sum(a.read_60m - b.read_60m) AS read_60m,
                   sum(a.read_later - b.read_later) AS read_later
            FROM after_rows a JOIN before_rows b
              ON b.notice_id = a.notice_id AND b.unit_id = a.unit_id AND b.direct = a.direct AND b.shard = a.shard
            WHERE NOT a.direct AND a.read <> b.read GROUP BY a.notice_id, a.unit_id
        ),
        k AS MATERIALIZED (SELECT x.notice_id, r.kind, r.slot FROM (SELECT DISTINCT notice_id FROM g) x
              CROSS JOIN LATERAL notice_report_key(x.notice_id) r)
        INSERT INTO unit_report_slots AS s (unit_id, slot, kind, shard, read, read_1m, read_5m, read_15m,
                                            read_30m, read_60m, read_later)
        SELECT g.unit_id, k.slot, k.kind, notice_count_shard(), sum(g.read), sum(g.read_1m), sum(g.read_5m),
               sum(g.read_15m), sum(g.read_30m), sum(g.read_60m), sum(g.read_later)
        FROM g JOIN k ON k.notice_id = g.notice_id WHERE k.kind IS NOT NULL
        GROUP BY g.unit_id, k.slot, k.kind ORDER BY g.unit_id, k.slot, k.kind
        ON CONFLICT (unit_id, slot, kind, shard) DO UPDATE SET
            read = s.read + excluded.read, read_1m = s.read_1m + excluded.read_1m,
            read_5m = s.read_5m + excluded.read_5m, read_15m = s.read_15m + excluded.read_15m,
            read_30m = s.read_30m + excluded.read_30m, read_60m = s.read_60m + excluded.read_60m,
            read_later = s.read_later + excluded.read_later;
        RETURN NULL;
    END IF;
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

-- The deliveries one member's read makes moot (db/deliveries.py MOOT_AFTER_READ, written out: a
-- test compares), cancelled as MARK's ``c`` does (db/receipts.py: SKIP LOCKED, and why), for the
-- single receipt's statement (RECORD). Planned there, that UPDATE was a third of the statement's
-- planning (0.15 ms: nine indexes of deliveries, twice, an OR over two partial ones), and it fired
-- the three statement triggers of deliveries for the none it found nearly every time. Here the
-- check is planned once per session, and by index whatever the size of deliveries when it was
-- planned (the receipt stall of db/pool.py API_SESSION came from a plan made while the table
-- was empty): a generic plan with sequential scans ruled out. Only a read that does make rows moot
-- (a reminder or a held row waiting) runs the UPDATE, and its triggers.
CREATE FUNCTION cancel_moot_deliveries(nid uuid, mid text, at timestamptz) RETURNS int
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
    cancelled int;
BEGIN
    PERFORM 1 FROM deliveries m
    WHERE m.notice_id = nid AND m.member_id = mid AND m.state = 'queued'
      AND (m.step > 0 OR m.wait_reason IN ('quiet_hours', 'throttled', 'capped', 'circuit_open', 'budget_exhausted'))
    LIMIT 1;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    UPDATE deliveries d SET state = 'cancelled', error = 'read before it went out', wait_reason = NULL,
        updated_at = at
    WHERE d.id IN (
        SELECT m.id FROM deliveries m
        WHERE m.notice_id = nid AND m.member_id = mid AND m.state = 'queued'
          AND (m.step > 0 OR m.wait_reason IN ('quiet_hours', 'throttled', 'capped', 'circuit_open', 'budget_exhausted'))
        FOR UPDATE OF m SKIP LOCKED);
    GET DIAGNOSTICS cancelled = ROW_COUNT;
    RETURN cancelled;
END
$$;
