-- The shared delivery layer: an injectable database clock, ambiguous ('unknown') deliveries,
-- visible waits (throttled / circuit open), rate buckets, circuit breakers, provider reports,
-- channel fallback.

-- The engine's "now". Production never writes engine_clock, so this is now(); tests move the
-- whole engine forward by raising the offset (GoAlert's FastForward) instead of sleeping.
CREATE TABLE engine_clock (
    id              boolean PRIMARY KEY DEFAULT true CHECK (id),
    offset_interval interval NOT NULL DEFAULT interval '0'
);
CREATE FUNCTION notifier_now() RETURNS timestamptz LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT now() + coalesce((SELECT offset_interval FROM engine_clock), interval '0')
$$;

ALTER TABLE units ALTER COLUMN created_at SET DEFAULT notifier_now(),
                  ALTER COLUMN updated_at SET DEFAULT notifier_now();
ALTER TABLE members ALTER COLUMN created_at SET DEFAULT notifier_now(),
                    ALTER COLUMN updated_at SET DEFAULT notifier_now();
ALTER TABLE contacts ALTER COLUMN created_at SET DEFAULT notifier_now();
ALTER TABLE api_keys ALTER COLUMN created_at SET DEFAULT notifier_now();
ALTER TABLE notices ALTER COLUMN created_at SET DEFAULT notifier_now(),
                    ALTER COLUMN updated_at SET DEFAULT notifier_now();
ALTER TABLE idempotency_keys ALTER COLUMN created_at SET DEFAULT notifier_now();
ALTER TABLE recipients ALTER COLUMN created_at SET DEFAULT notifier_now();
ALTER TABLE deliveries ALTER COLUMN next_attempt_at SET DEFAULT notifier_now(),
                       ALTER COLUMN created_at SET DEFAULT notifier_now(),
                       ALTER COLUMN updated_at SET DEFAULT notifier_now();

-- 'unknown': maybe sent, not safe to resend (SMS, voice); a provider report or the next
-- escalation step settles it. wait_reason says why a queued delivery is not going out yet.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check
    CHECK (state IN ('queued', 'sending', 'sent', 'delivered', 'failed', 'unknown'));
ALTER TABLE deliveries ADD COLUMN wait_reason text
    CHECK (wait_reason IN ('retry', 'throttled', 'capped', 'circuit_open'));
-- throttled: the account's rate limit reserved a later slot for it (it will not queue again);
-- capped: the per-contact cap (e.g. 5 SMS per 15 minutes to one number) holds it back.
ALTER TABLE deliveries ADD COLUMN sent_at timestamptz;  -- when the current attempt went out
CREATE INDEX deliveries_provider_ref_idx ON deliveries (channel, provider_ref) WHERE provider_ref IS NOT NULL;
CREATE INDEX deliveries_contact_sent_idx ON deliveries (contact_id, sent_at) WHERE sent_at IS NOT NULL;

-- A notice may list channels in order of preference: with fallback, each member gets the first
-- channel on which they have a working contact (and the next one if that contact dies).
ALTER TABLE notices ADD COLUMN fallback boolean NOT NULL DEFAULT false;

-- Token buckets per provider account, shared by every worker.
CREATE TABLE rate_buckets (
    key         text PRIMARY KEY,
    tokens      double precision NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Circuit breakers per provider: consecutive failed batches open it; after open_until one
-- probe batch is let through (half-open); a success closes it.
CREATE TABLE circuit_breakers (
    key             text PRIMARY KEY,
    failures        int NOT NULL DEFAULT 0,
    opened_count    int NOT NULL DEFAULT 0,
    open_until      timestamptz,
    probe_until     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT notifier_now()
);

-- Provider reports that arrived before we recorded the provider's id for the message (a fast
-- callback racing our own write). Applied when the id is recorded; kept briefly for audit.
CREATE TABLE provider_events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel       text NOT NULL,
    provider_ref  text NOT NULL,
    state         text,
    error         text,
    read          boolean NOT NULL DEFAULT false,
    received_at   timestamptz NOT NULL DEFAULT notifier_now(),
    applied_at    timestamptz
);
CREATE INDEX provider_events_pending_idx ON provider_events (channel, provider_ref) WHERE applied_at IS NULL;
