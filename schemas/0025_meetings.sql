-- Meetings (三会一课): a notice of kind 'meeting' with a time, a venue with its datum and a check-in
-- fence; check-ins (accepted and rejected) judged by the server clock.

-- The meeting types an organisation holds; admins may add or rename them (codes are stable).
CREATE TABLE meeting_types (
    code        text PRIMARY KEY CHECK (code ~ '^[a-z][a-z0-9_]{0,63}$'),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    name_en     text CHECK (name_en IS NULL OR length(name_en) BETWEEN 1 AND 100),
    position    int NOT NULL DEFAULT 0
);
INSERT INTO meeting_types (code, name, name_en, position) VALUES
    ('party_congress', '党员大会', 'Party members'' congress', 1),
    ('branch_committee', '支委会', 'Branch committee meeting', 2),
    ('group_meeting', '党小组会', 'Party group meeting', 3),
    ('party_lecture', '党课', 'Party lecture', 4),
    ('theme_day', '主题党日', 'Theme party day', 5);

-- One row per meeting notice. scope_unit_id is the notice's (the creator's unit, NULL: an admin);
-- unit_id is the unit holding the meeting (supervision counts it there). The venue is kept in the
-- datum it was given in; a check-in is converted into that datum before it is measured.
CREATE TABLE meetings (
    notice_id         uuid PRIMARY KEY REFERENCES notices (id) ON DELETE CASCADE,
    type              text NOT NULL REFERENCES meeting_types (code),
    unit_id           text NOT NULL REFERENCES units (id),
    scope_unit_id     text REFERENCES units (id),
    starts_at         timestamptz NOT NULL,
    ends_at           timestamptz NOT NULL,
    venue_name        text CHECK (venue_name IS NULL OR length(venue_name) <= 200),
    venue_lat         double precision NOT NULL CHECK (venue_lat BETWEEN -90 AND 90),
    venue_lng         double precision NOT NULL CHECK (venue_lng BETWEEN -180 AND 180),
    venue_datum       text NOT NULL CHECK (venue_datum IN ('wgs84', 'gcj02', 'bd09')),
    radius_m          int NOT NULL DEFAULT 300 CHECK (radius_m BETWEEN 100 AND 3000),
    checkin_opens_at  timestamptz NOT NULL,
    checkin_closes_at timestamptz NOT NULL,
    max_accuracy_m    int NOT NULL DEFAULT 150 CHECK (max_accuracy_m BETWEEN 5 AND 3000),
    bssids            text[] NOT NULL DEFAULT '{}',   -- normalised aa:bb:cc:dd:ee:ff
    photo_required    bool NOT NULL DEFAULT false,
    created_at        timestamptz NOT NULL DEFAULT notifier_now(),
    CHECK (ends_at > starts_at),
    CHECK (checkin_closes_at > checkin_opens_at)
);
CREATE INDEX meetings_unit_idx ON meetings (unit_id, starts_at);
CREATE INDEX meetings_scope_idx ON meetings (scope_unit_id, starts_at);
CREATE INDEX meetings_starts_idx ON meetings (starts_at, notice_id);

-- Every check-in attempt, accepted (verdict 'ok') or not: the secretary sees the rejected ones with
-- their reasons. `at` is the server's clock; client_time is stored as sent and never judged.
-- At most one accepted check-in per member and meeting (a second one answers the first).
CREATE TABLE meeting_checkins (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notice_id     uuid NOT NULL REFERENCES meetings (notice_id) ON DELETE CASCADE,
    member_id     text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL DEFAULT notifier_now(),
    lat           double precision,
    lng           double precision,
    datum         text CHECK (datum IN ('wgs84', 'gcj02', 'bd09')),
    accuracy_m    double precision,
    distance_m    double precision,                -- from the venue, in the venue's datum
    bssid         text,
    bssid_matched bool NOT NULL DEFAULT false,
    mock          bool NOT NULL DEFAULT false,
    client_time   timestamptz,
    verdict       text NOT NULL
                  CHECK (verdict IN ('ok', 'outside', 'too_early', 'too_late', 'low_accuracy', 'mock_location')),
    flagged       bool NOT NULL DEFAULT false,     -- accepted at the fence's edge: for the secretary to review
    photo_id      uuid,                            -- a photo taken at check-in (records' photo store)
    source        text NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'page'))
);
CREATE UNIQUE INDEX meeting_checkins_accepted_idx ON meeting_checkins (notice_id, member_id) WHERE verdict = 'ok';
CREATE INDEX meeting_checkins_notice_idx ON meeting_checkins (notice_id, id);
CREATE INDEX meeting_checkins_member_idx ON meeting_checkins (member_id, notice_id, at);
