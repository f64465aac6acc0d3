-- Hints are never lost: a row a sweep recovers owes one `[recovery]` report,
-- written in the sweep's transaction and confirmed by its reporter once the
-- line is out. A report whose reporter died unconfirmed is taken over by a
-- later sweep (owed_by moves), so every recovered row is reported at least
-- once, and exactly once when its reporter survives.
--
-- The cause is kept as the sweep judged it (kind plus the facts it names),
-- so a report made again is the same line. dead_worker, recovered_by and
-- recovered_at are the row's worker_id, interrupted_by and interrupted_at.
CREATE TABLE recovery_reports (
    task_id TEXT PRIMARY KEY NOT NULL REFERENCES task_history (id),
    cause_kind TEXT NOT NULL,
    cause_host TEXT,
    cause_pid INTEGER,
    cause_last_heartbeat TEXT,
    cause_lease_ms INTEGER,
    sessions_invalidated INTEGER NOT NULL,
    owed_by TEXT NOT NULL,
    owed_since TEXT NOT NULL,
    reported_at TEXT
);

-- Claims read the unconfirmed reports only.
CREATE INDEX recovery_reports_owed ON recovery_reports (owed_by) WHERE reported_at IS NULL;
