-- The schema as it was before the fix: a row is written only when a task
-- finishes, so `running` is not a permitted status. finished_at, the token
-- counts, cost_usd, turns and artifacts are NULLable.
CREATE TABLE task_history (
    id TEXT PRIMARY KEY NOT NULL,
    repo TEXT NOT NULL,
    issue_number INTEGER NOT NULL,
    user TEXT NOT NULL,
    agent TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd REAL,
    turns INTEGER,
    artifacts TEXT
);

CREATE INDEX task_history_repo_issue ON task_history (repo, issue_number);
