-- Single read receipts recorded together: record_receipts() takes the receipts that reached one
-- API process at the same time (api/receipts.py's group commit) and records them in one statement,
-- one transaction, one commit, instead of a call, a transaction and a commit each.
--
-- The rules are record_receipt()'s (0035), item by item, which it replaces (db/receipts.py RECORD
-- is a call of this one with one item): no answer (``id`` NULL) when there is no such notice or it
-- is not the caller's (a unit-bound caller's own: the walk up from its scope unit reaches the
-- caller's unit ``roots[i]``), ``member_ok`` (a member key's own read, ``member_keys[i]``; an
-- admin's: the member exists; a unit-bound caller's: a membership in its subtree), ``recipient``,
-- ``recorded`` (a lesson's read only with ``lessons``: the caller's transaction also awards its
-- points), ``read_at``, ``cancelled``. The same pair twice in one call: the first item records it,
-- the others answer it read. ``i`` is the item's position (1-based).
--
-- What the items share is done once, in the order every receipt path takes its locks: the
-- recipients' rows in (notice, member) order, then the units' counter rows (sorted), then the
-- notices' (sorted), the report slots (sorted), the moot deliveries last (SKIP LOCKED). Each
-- counter row moves once per call by the sum of its items, not once per item. As 0035's, its
-- statements are planned once per session and find every row by key (force_generic_plan,
-- enable_seqscan = off: tests/db/test_receipt_plan_after_growth.py): a statement per item where
-- a table is probed, set-based only over the call's own arrays.
CREATE TYPE receipt_read AS (notice_id uuid, member_id text, units text[], direct_units text[],
                             read_at timestamptz, bucket int);

CREATE FUNCTION record_receipts(nids uuid[], mids text[], via text, roots text[], member_keys boolean[],
                                lessons boolean)
RETURNS TABLE (i int, id uuid, kind text, state text, member_ok boolean, recipient boolean, recorded boolean,
               read_at timestamptz, cancelled int)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan SET enable_seqscan = off
SET notifier.report_slots_moved = on AS $$
#variable_conflict use_column
DECLARE
    n int := coalesce(array_length(nids, 1), 0);
    j int;
    nid uuid;
    mid text;
    root text;
    n_kind text;
    n_state text;
    n_scope text;
    ok boolean;
    a_id uuid[] := '{}';
    a_kind text[] := '{}';
    a_state text[] := '{}';
    a_ok boolean[] := '{}';
    a_wanted boolean[] := '{}';
    w_n uuid[] := '{}';
    w_m text[] := '{}';
    one receipt_read;
    reads receipt_read[] := '{}';
    done_keys text[];
    done_at timestamptz[];
    done_cancelled int[];
    pos int;
    r_at timestamptz;
BEGIN
    -- each item's checks (record_receipt's)
    FOR j IN 1..n LOOP
        nid := nids[j];
        mid := mids[j];
        root := roots[j];
        a_id[j] := NULL;
        a_wanted[j] := false;
        SELECT n.kind, n.state, n.scope_unit_id INTO n_kind, n_state, n_scope FROM notices n WHERE n.id = nid;
        CONTINUE WHEN NOT FOUND;
        IF member_keys[j] THEN
            ok := true;
        ELSIF root IS NULL THEN
            ok := EXISTS (SELECT 1 FROM members m WHERE m.id = mid);
        ELSE
            CONTINUE WHEN NOT EXISTS (
            WITH RECURSIVE up (notice, id, parent_id, depth) AS (
    SELECT s.origin, u.id, u.parent_id, 0 FROM (SELECT nid, n_scope) AS s (origin, unit_id) JOIN units u ON u.id = s.unit_id
    UNION ALL
    SELECT up.notice, p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id
    WHERE up.depth < 1000
)
            SELECT 1 FROM up WHERE up.id = root
            );
            ok := EXISTS (
            WITH RECURSIVE sub AS (
    SELECT id, 0 AS depth FROM units WHERE id = ANY(ARRAY[root]::text[])
    UNION
    SELECT u.id, sub.depth + 1 FROM units u JOIN sub ON u.parent_id = sub.id WHERE sub.depth < 1000
)
            SELECT 1 FROM member_units mu JOIN sub ON sub.id = mu.unit_id WHERE mu.member_id = mid
            );
        END IF;
        a_id[j] := nid;
        a_kind[j] := n_kind;
        a_state[j] := n_state;
        a_ok[j] := ok;
        IF ok AND (lessons OR n_kind <> 'lesson') THEN
            a_wanted[j] := true;
            w_n := w_n || nid;
            w_m := w_m || mid;
        END IF;
    END LOOP;
    -- the reads, each recipient's row by its key, in (notice, member) order
    FOR nid, mid IN SELECT DISTINCT x.nid, x.mid FROM unnest(w_n, w_m) AS x (nid, mid) ORDER BY 1, 2 LOOP
        UPDATE recipients t SET read_at = notifier_now(), read_via = via
        WHERE t.notice_id = nid AND t.member_id = mid AND t.read_at IS NULL
        RETURNING t.notice_id, t.member_id, t.units, t.direct_units, t.read_at, read_bucket(t.read_at - t.created_at)
        INTO one.notice_id, one.member_id, one.units, one.direct_units, one.read_at, one.bucket;
        IF FOUND THEN
            reads := reads || one;
        END IF;
    END LOOP;
    IF cardinality(reads) > 0 THEN
        -- in every unit each recipient is counted in (its fan-out snapshot), with the time it took
        INSERT INTO notice_unit_counts AS k (notice_id, unit_id, direct, shard, read, read_1m, read_5m, read_15m,
                                             read_30m, read_60m, read_later, last_read_at)
        SELECT x.notice_id, x.unit_id, x.direct, notice_count_shard(), count(*),
               count(*) FILTER (WHERE x.bucket = 1), count(*) FILTER (WHERE x.bucket = 2),
               count(*) FILTER (WHERE x.bucket = 3), count(*) FILTER (WHERE x.bucket = 4),
               count(*) FILTER (WHERE x.bucket = 5), count(*) FILTER (WHERE x.bucket = 6), max(x.read_at)
        FROM (SELECT r.notice_id, r.member_id, unnest(r.units) AS unit_id, false AS direct, r.bucket, r.read_at
              FROM unnest(reads) r
              UNION
              SELECT r.notice_id, r.member_id, unnest(r.direct_units), true, r.bucket, r.read_at
              FROM unnest(reads) r) x
        GROUP BY x.notice_id, x.unit_id, x.direct
        ORDER BY x.notice_id, x.unit_id, x.direct
        ON CONFLICT (notice_id, unit_id, direct, shard) DO UPDATE SET read = k.read + excluded.read,
            read_1m = k.read_1m + excluded.read_1m, read_5m = k.read_5m + excluded.read_5m,
            read_15m = k.read_15m + excluded.read_15m, read_30m = k.read_30m + excluded.read_30m,
            read_60m = k.read_60m + excluded.read_60m, read_later = k.read_later + excluded.read_later,
            last_read_at = greatest(k.last_read_at, excluded.last_read_at);
        INSERT INTO notice_counts AS k (notice_id, shard, read)
        SELECT r.notice_id, notice_count_shard(), count(*) FROM unnest(reads) r
        GROUP BY r.notice_id ORDER BY r.notice_id
        ON CONFLICT (notice_id, shard) DO UPDATE SET read = k.read + excluded.read;
        -- and in their units' report slots (0035's: each unit counted in, not the direct ones, at
        -- the notice's report key)
        INSERT INTO unit_report_slots AS s (unit_id, slot, kind, shard, read, read_1m, read_5m, read_15m,
                                            read_30m, read_60m, read_later)
        SELECT x.unit_id, x.slot, x.kind, notice_count_shard(), count(*),
               count(*) FILTER (WHERE x.bucket = 1), count(*) FILTER (WHERE x.bucket = 2),
               count(*) FILTER (WHERE x.bucket = 3), count(*) FILTER (WHERE x.bucket = 4),
               count(*) FILTER (WHERE x.bucket = 5), count(*) FILTER (WHERE x.bucket = 6)
        FROM (SELECT DISTINCT r.notice_id, r.member_id, unnest(r.units) AS unit_id, r.bucket, rk.slot, rk.kind
              FROM unnest(reads) r
              JOIN (SELECT d.notice_id, key.kind, key.slot FROM (SELECT DISTINCT notice_id FROM unnest(reads)) d
                    CROSS JOIN LATERAL notice_report_key(d.notice_id) key) rk ON rk.notice_id = r.notice_id
              WHERE rk.kind IS NOT NULL) x
        GROUP BY x.unit_id, x.slot, x.kind
        ORDER BY x.unit_id, x.slot, x.kind
        ON CONFLICT (unit_id, slot, kind, shard) DO UPDATE SET
            read = s.read + excluded.read, read_1m = s.read_1m + excluded.read_1m,
            read_5m = s.read_5m + excluded.read_5m, read_15m = s.read_15m + excluded.read_15m,
            read_30m = s.read_30m + excluded.read_30m, read_60m = s.read_60m + excluded.read_60m,
            read_later = s.read_later + excluded.read_later;
    END IF;
    -- last: the deliveries each read made moot (their triggers move counter rows held already)
    SELECT array_agg(r.notice_id::text || r.member_id), array_agg(r.read_at),
           array_agg(cancel_moot_deliveries(r.notice_id, r.member_id, r.read_at))
    INTO done_keys, done_at, done_cancelled FROM unnest(reads) r;
    -- each item's answer
    FOR j IN 1..n LOOP
        i := j;
        id := a_id[j];
        kind := a_kind[j];
        state := a_state[j];
        member_ok := a_ok[j];
        recorded := CASE WHEN id IS NULL THEN NULL ELSE false END;
        recipient := CASE WHEN id IS NULL THEN NULL ELSE false END;
        read_at := NULL;
        cancelled := NULL;
        IF id IS NOT NULL AND member_ok THEN
            pos := CASE WHEN a_wanted[j] THEN array_position(done_keys, nids[j]::text || mids[j]) END;
            IF pos IS NOT NULL THEN  -- recorded by this call: the first item of the pair says so
                done_keys[pos] := NULL;
                recipient := true;
                recorded := true;
                read_at := done_at[pos];
                cancelled := done_cancelled[pos];
            ELSE
                -- read before (or while this waited for the row, or by an earlier item of the pair),
                -- a lesson's left for the caller's transaction, or no recipient (yet)
                SELECT t.read_at INTO r_at FROM recipients t WHERE t.notice_id = nids[j] AND t.member_id = mids[j];
                recipient := FOUND;
                read_at := r_at;
            END IF;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

DROP FUNCTION record_receipt(uuid, text, text, text, boolean, boolean);
