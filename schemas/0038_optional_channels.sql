-- Channels used only where they reach (issue 13, target 7).
--
-- A notice's optional channels are used for the members who have a working contact on them and
-- skipped for the others: no "no working contact" failed delivery for a channel a member never
-- had. The daily lesson goes to the inbox and to every push channel the deployment has, so each
-- member without a token on one of them used to get a failed delivery there every day: its
-- failed count said "unreached" of members who had the lesson in their inbox, and with one push
-- channel no member had a token for, those rows were about a third of the lesson's fan-out cost
-- (benchmarks/scale.py target 7: 36.3 against 23.2 us of PostgreSQL per recipient). A required
-- channel (every one by default) still records the member it cannot reach; at least one channel
-- stays required, so every member of the audience keeps a delivery and a recipient row.
ALTER TABLE notices ADD COLUMN optional_channels text[] NOT NULL DEFAULT '{}';
-- NOT VALID: every existing row holds the default, which passes; no scan of notices under the
-- table lock. New and updated rows are checked.
ALTER TABLE notices ADD CONSTRAINT notices_optional_channels_check
    CHECK (optional_channels = '{}' OR (optional_channels <@ channels AND NOT channels <@ optional_channels))
    NOT VALID;
