-- Meeting records (minutes and photos), absences (请假) and supervision requirements per unit type.

-- A unit's type (committee, branch, group ...): what its required meetings are looked up by.
ALTER TABLE units ADD COLUMN unit_type text NULL CHECK (unit_type ~ '^[a-z][a-z0-9_]{0,31}$');

-- Each unit type holds ``times`` meetings of a type every month or quarter (db/supervision.py).
CREATE TABLE meeting_requirements (
    unit_type    text NOT NULL CHECK (unit_type ~ '^[a-z][a-z0-9_]{0,31}$'),
    meeting_type text NOT NULL REFERENCES meeting_types (code) ON DELETE CASCADE,
    every        text NOT NULL CHECK (every IN ('month', 'quarter')),
    times        int NOT NULL DEFAULT 1 CHECK (times BETWEEN 1 AND 31),
    PRIMARY KEY (unit_type, meeting_type)
);
-- The usual rule of 三会一课: 支委会 monthly, 党员大会 and 党课 quarterly for a branch, 党小组会 monthly.
INSERT INTO meeting_requirements (unit_type, meeting_type, every, times)
SELECT r.unit_type, r.meeting_type, r.every, 1
FROM (VALUES ('branch', 'branch_committee', 'month'), ('branch', 'party_congress', 'quarter'),
             ('branch', 'party_lecture', 'quarter'), ('group', 'group_meeting', 'month'))
     AS r (unit_type, meeting_type, every)
WHERE EXISTS (SELECT 1 FROM meeting_types t WHERE t.code = r.meeting_type);

-- The minutes of a meeting, written at the venue on its day (the device's place is kept).
CREATE TABLE meeting_records (
    notice_id    uuid PRIMARY KEY REFERENCES meetings (notice_id) ON DELETE CASCADE,
    minutes      text NOT NULL CHECK (length(minutes) BETWEEN 1 AND 100000),
    lat          double precision NOT NULL,
    lng          double precision NOT NULL,
    datum        text NOT NULL CHECK (datum IN ('wgs84', 'gcj02', 'bd09')),
    accuracy_m   double precision NOT NULL,
    distance_m   double precision NOT NULL,
    recorded_by  text NULL,  -- the key (NULL: the admin token)
    created_at   timestamptz NOT NULL DEFAULT notifier_now(),
    updated_at   timestamptz NOT NULL DEFAULT notifier_now()
);

-- Site photos, JPEG or PNG by their magic bytes, once per meeting and content (SHA-256).
CREATE TABLE meeting_photos (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    notice_id     uuid NOT NULL REFERENCES meetings (notice_id) ON DELETE CASCADE,
    sha256        bytea NOT NULL CHECK (length(sha256) = 32),
    content_type  text NOT NULL CHECK (content_type IN ('image/jpeg', 'image/png')),
    size          int NOT NULL CHECK (size BETWEEN 1 AND 5242880),
    data          bytea NOT NULL,
    lat           double precision NOT NULL,
    lng           double precision NOT NULL,
    datum         text NOT NULL CHECK (datum IN ('wgs84', 'gcj02', 'bd09')),
    accuracy_m    double precision NOT NULL,
    distance_m    double precision NOT NULL,
    uploaded_by   text NULL,
    uploaded_at   timestamptz NOT NULL DEFAULT notifier_now(),
    UNIQUE (notice_id, sha256)
);
-- JPEG and PNG are compressed already: store them out of line without trying again.
ALTER TABLE meeting_photos ALTER COLUMN data SET STORAGE EXTERNAL;

-- Leave (请假): a member excused from a meeting, with the reason they or the secretary gave.
CREATE TABLE meeting_absences (
    notice_id    uuid NOT NULL REFERENCES meetings (notice_id) ON DELETE CASCADE,
    member_id    text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    reason       text NOT NULL CHECK (length(reason) BETWEEN 1 AND 500),
    by_member    boolean NOT NULL,  -- stated by the member themselves (else by a secretary)
    recorded_by  text NULL,
    recorded_at  timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (notice_id, member_id)
);
