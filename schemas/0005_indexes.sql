-- Most organisations set no quiet hours: let the delivery gate find that out without a scan.
CREATE INDEX units_quiet_idx ON units (id) WHERE quiet_start IS NOT NULL;
CREATE INDEX members_quiet_idx ON members (id) WHERE quiet_start IS NOT NULL;

-- The reconciler's sweep of work that may no longer go out (recalled notices, reminders to
-- members who have read) looks at these only.
CREATE INDEX notices_recalled_idx ON notices (id) WHERE state = 'recalled';
CREATE INDEX deliveries_queued_reminders_idx ON deliveries (notice_id, member_id) WHERE state = 'queued' AND step > 0;
