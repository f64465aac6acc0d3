-- The dashboard's reads (crates/tasktrail-server/src/ui): a page of one
-- status newest first, and the count of every status, read from this index
-- alone; a page of one repo newest first from the second.
CREATE INDEX task_history_status_started ON task_history (status, started_at, id);
CREATE INDEX task_history_repo_started ON task_history (repo, started_at, id);
