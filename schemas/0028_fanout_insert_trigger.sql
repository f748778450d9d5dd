-- The delivery hot path, part two (issue 13).
--
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
