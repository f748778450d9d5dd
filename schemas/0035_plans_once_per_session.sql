-- A single read receipt planned once per session, and by index whatever the tables' size then.
--
-- The API's sessions plan every execution (plan_cache_mode = force_custom_plan, db/pool.py
-- API_SESSION: a generic plan cached while deliveries and recipients were empty kept scanning
-- them as they grew, the receipt stall), and planning was most of a receipt's database cost: the
-- one statement (db/receipts.py RECORD, its CTEs over notices, units, members, recipients and both
-- counters' upserts) took ~1.2 ms of backend CPU, most of it planning. Here its steps are the
-- statements of a function whose plans the session makes once and keeps (force_generic_plan),
-- with sequential scans ruled out (enable_seqscan = off) so that a plan made while a table was
-- empty still reaches rows by key once it is large: every statement here finds its rows by a
-- primary key or an index (the tree walks' units by id and parent_id, member_units by member).
-- The settings hold for the triggers the statements fire too (their statements on transition
-- tables have no parameters and scan those tables whatever the setting).
--
-- The rules are RECORD's as it was (db/receipts.py describes them): no row when there is no such
-- notice or it is not the caller's (a unit-bound caller's own: the walk up from its scope unit
-- reaches the caller's unit), ``member_ok`` (a member key's own read; an admin: the member
-- exists; a unit-bound caller: a membership in its subtree), ``recipient``, ``recorded`` (a
-- lesson's read only with ``lessons``: the caller's transaction also awards its points),
-- ``read_at``, ``cancelled`` (the deliveries the read made moot: cancel_moot_deliveries, 0031).
-- Each statement takes a snapshot of its own: a read of the pair that committed while the UPDATE
-- waited for the row lock is in the answer (``read_at`` set, ``recorded`` false).
--
-- The report slots' triggers on notice_unit_counts (0011, 0031) stand aside for a statement run
-- inside a function that moves the slots itself (notifier.report_slots_moved = on, set by that
-- function's SET clause, so only for its duration): a receipt's read, with its notice's report key
-- and buckets already in hand, is one upsert of the slots; through the triggers it was two
-- statement triggers with transition tables (0.2 ms of a receipt's 0.6 ms round trip, measured
-- on one connection). A statement trigger's WHEN is checked as its event would be queued: none
-- is queued, the trigger never runs.
DROP TRIGGER report_slots_on_insert ON notice_unit_counts;
DROP TRIGGER report_slots_on_update ON notice_unit_counts;
CREATE TRIGGER report_slots_on_insert AFTER INSERT ON notice_unit_counts
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT WHEN (current_setting('notifier.report_slots_moved', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION report_slots_follow_inserted_counts();
CREATE TRIGGER report_slots_on_update AFTER UPDATE ON notice_unit_counts
    REFERENCING OLD TABLE AS before_rows NEW TABLE AS after_rows
    FOR EACH STATEMENT WHEN (current_setting('notifier.report_slots_moved', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION report_slots_follow_updated_counts();

CREATE FUNCTION record_receipt(nid uuid, mid text, via text, root text, member_key boolean, lessons boolean)
RETURNS TABLE (id uuid, kind text, state text, member_ok boolean, recipient boolean, recorded boolean,
               read_at timestamptz, cancelled int)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
SET notifier.report_slots_moved = on AS $$
#variable_conflict use_column
DECLARE
    s_kind text;
    s_slot timestamptz;
    n_kind text;
    n_state text;
    n_scope text;
    r_units text[];
    r_direct text[];
    r_at timestamptz;
    r_bucket int;
BEGIN
    SELECT n.kind, n.state, n.scope_unit_id INTO n_kind, n_state, n_scope FROM notices n WHERE n.id = nid;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    id := nid;
    kind := n_kind;
    state := n_state;
    recorded := false;
    IF member_key THEN
        member_ok := true;
    ELSIF root IS NULL THEN
        member_ok := EXISTS (SELECT 1 FROM members m WHERE m.id = mid);
    ELSE
        IF NOT EXISTS (
            WITH RECURSIVE up (notice, id, parent_id, depth) AS (
    SELECT s.origin, u.id, u.parent_id, 0 FROM (SELECT nid, n_scope) AS s (origin, unit_id) JOIN units u ON u.id = s.unit_id
    UNION ALL
    SELECT up.notice, p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id
    WHERE up.depth < 1000
)
            SELECT 1 FROM up WHERE up.id = root
        ) THEN
            RETURN;
        END IF;
        member_ok := EXISTS (
            WITH RECURSIVE sub AS (
    SELECT id, 0 AS depth FROM units WHERE id = ANY(ARRAY[root]::text[])
    UNION
    SELECT u.id, sub.depth + 1 FROM units u JOIN sub ON u.parent_id = sub.id WHERE sub.depth < 1000
)
            SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id WHERE mu.member_id = mid
        );
    END IF;
    IF NOT member_ok THEN
        recipient := false;
        RETURN NEXT;
        RETURN;
    END IF;
    IF lessons OR n_kind <> 'lesson' THEN
        UPDATE recipients t SET read_at = notifier_now(), read_via = via
        WHERE t.notice_id = nid AND t.member_id = mid AND t.read_at IS NULL
        RETURNING t.units, t.direct_units, t.read_at, read_bucket(t.read_at - t.created_at)
        INTO r_units, r_direct, r_at, r_bucket;
        recorded := FOUND;
    END IF;
    IF NOT recorded THEN
        -- not recorded here: read before (or while this waited for the row), a lesson's left for
        -- the caller's transaction, or no recipient (yet)
        SELECT t.read_at INTO r_at FROM recipients t WHERE t.notice_id = nid AND t.member_id = mid;
        recipient := FOUND;
        read_at := r_at;
        RETURN NEXT;
        RETURN;
    END IF;
    recipient := true;
    read_at := r_at;
    -- The counter rows in the order the batch's statement (MARK) takes them -- its unreferenced
    -- CTEs run last to first: the units' (u), the notice's (k), then the moot deliveries (c) --
    -- so a receipt and a batch on the same shard wait for each other instead of deadlocking.
    -- In every unit the recipient is counted in (its fan-out snapshot), with the time it took:
    INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, read, read_1m, read_5m, read_15m,
                                         read_30m, read_60m, read_later, last_read_at)
    SELECT nid, x.unit_id, x.direct, notice_count_shard(), 1, (r_bucket = 1)::int, (r_bucket = 2)::int,
           (r_bucket = 3)::int, (r_bucket = 4)::int, (r_bucket = 5)::int, (r_bucket = 6)::int, r_at
    FROM (SELECT unnest(r_units) AS unit_id, false AS direct UNION SELECT unnest(r_direct), true) x
    ORDER BY x.unit_id, x.direct
    ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET read = k.read + excluded.read,
        read_1m = k.read_1m + excluded.read_1m, read_5m = k.read_5m + excluded.read_5m,
        read_15m = k.read_15m + excluded.read_15m, read_30m = k.read_30m + excluded.read_30m,
        read_60m = k.read_60m + excluded.read_60m, read_later = k.read_later + excluded.read_later,
        last_read_at = greatest(k.last_read_at, excluded.last_read_at);
    INSERT INTO notice_counts AS k (notice_id, shard, read) VALUES (nid, notice_count_shard(), 1)
    ON CONFLICT (notice_id, shard) DO UPDATE SET read = k.read + excluded.read;
    -- and in its units' report slots (the triggers above stand aside; 0031's "reads only" path:
    -- each unit the recipient is counted in, not the direct ones, at the notice's report key)
    SELECT rk.kind, rk.slot INTO s_kind, s_slot FROM notice_report_key(nid) rk;
    IF s_kind IS NOT NULL THEN
        INSERT INTO unit_report_slots AS s (unit_id, slot, kind, shard, read, read_1m, read_5m, read_15m,
                                            read_30m, read_60m, read_later)
        SELECT x.unit_id, s_slot, s_kind, notice_count_shard(), 1, (r_bucket = 1)::int, (r_bucket = 2)::int,
               (r_bucket = 3)::int, (r_bucket = 4)::int, (r_bucket = 5)::int, (r_bucket = 6)::int
        FROM (SELECT DISTINCT unnest(r_units) AS unit_id) x ORDER BY x.unit_id
        ON CONFLICT (unit_id, slot, kind, shard) DO UPDATE SET
            read = s.read + excluded.read, read_1m = s.read_1m + excluded.read_1m,
            read_5m = s.read_5m + excluded.read_5m, read_15m = s.read_15m + excluded.read_15m,
            read_30m = s.read_30m + excluded.read_30m, read_60m = s.read_60m + excluded.read_60m,
            read_later = s.read_later + excluded.read_later;
    END IF;
    -- last, as MARK's c: its triggers move counter rows this transaction already holds
    cancelled := cancel_moot_deliveries(nid, mid, r_at);
    RETURN NEXT;
END
$$;

-- An API key's lookup (and its rate bucket's take) planned once per session, by index.
--
-- Every request with an API key runs db/api_keys.py AUTHENTICATE (the key by its token's hash,
-- the mark of its use, the take from its rate bucket: CTEs over api_keys and rate_buckets). The
-- API's sessions plan every execution (db/pool.py API_SESSION), and planning it was most of the
-- ~1 ms of backend CPU a key added to each request (benchmarks/receipts.py, service key). As the
-- single receipt's (above): the statement is a function's, whose plan the session makes once and
-- keeps (force_generic_plan), with sequential scans ruled out (enable_seqscan = off) so that a
-- plan made while the tables were small reaches the key by its token's unique index and the
-- bucket by its key however many rows they hold. The statement is AUTHENTICATE as written there
-- (its parameters $1 to $5 are the function's; a test compares).
CREATE FUNCTION authenticate_key(token_hash bytea, resolution double precision, roles text[],
                                 rates double precision[], bursts double precision[])
RETURNS TABLE (id uuid, name text, role text, unit_id text, member_id text, expires_at timestamptz,
               allowed boolean, tokens_left double precision)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
WITH k AS (
    SELECT id, name, role, unit_id, member_id, expires_at, last_used_at FROM api_keys
    WHERE (token_hash = $1 OR (previous_token_hash = $1 AND previous_valid_until > notifier_now()))
      AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > notifier_now())
), stale AS (
    SELECT a.id FROM api_keys a JOIN k ON k.id = a.id
    WHERE a.last_used_at IS NULL OR a.last_used_at < notifier_now() - make_interval(secs => $2)
    FOR UPDATE OF a SKIP LOCKED
), touched AS (
    UPDATE api_keys SET last_used_at = notifier_now() FROM stale WHERE api_keys.id = stale.id RETURNING 1
), api_limit AS (
    SELECT k.id AS key_id, l.rate, l.burst
    FROM k JOIN unnest($3::text[], $4::float8[], $5::float8[]) AS l(role, rate, burst) ON l.role = k.role
),
api_bucket AS (
    INSERT INTO rate_buckets AS b (key, tokens, updated_at)
    SELECT 'api-key:' || api_limit.key_id, api_limit.burst - 1, (SELECT notifier_now()) FROM api_limit
    ON CONFLICT (key) DO UPDATE SET tokens = least(excluded.tokens + 1, b.tokens + greatest(0, extract(epoch FROM (SELECT notifier_now()) - b.updated_at)) * (SELECT rate FROM api_limit)) - 1, updated_at = (SELECT notifier_now())
    WHERE least(excluded.tokens + 1, b.tokens + greatest(0, extract(epoch FROM (SELECT notifier_now()) - b.updated_at)) * (SELECT rate FROM api_limit)) >= 1
    RETURNING b.tokens
), api_bucket_seen AS (
    SELECT least(api_limit.burst, s.tokens
                 + greatest(0, extract(epoch FROM (SELECT notifier_now()) - s.updated_at)) * api_limit.rate) AS tokens
    FROM api_limit JOIN rate_buckets s ON s.key = 'api-key:' || api_limit.key_id
)
SELECT id, name, role, unit_id, member_id, expires_at,
       EXISTS (SELECT 1 FROM api_bucket) AS allowed,
       coalesce((SELECT tokens FROM api_bucket), (SELECT tokens FROM api_bucket_seen), 0) AS tokens_left
FROM k;
END
$$;
