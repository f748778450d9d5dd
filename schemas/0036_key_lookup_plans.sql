-- An API key's lookup (and its rate bucket's take) planned once per session, by index.
--
-- Every request with an API key runs db/api_keys.py AUTHENTICATE (the key by its token's hash,
-- the mark of its use, the take from its rate bucket: CTEs over api_keys and rate_buckets). The
-- API's sessions plan every execution (db/pool.py API_SESSION), and planning it was most of the
-- ~1 ms of backend CPU a key added to each request (benchmarks/receipts.py, service key). As the
-- single receipt's (0035): the statement is a function's, whose plan the session makes once and
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
