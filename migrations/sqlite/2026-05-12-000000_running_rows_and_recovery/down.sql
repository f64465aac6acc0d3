-- Back to the pre-fix schema. `running` cannot be represented there, so
-- running rows become `interrupted`; an interrupted row's time goes back to
-- finished_at. Workers and sessions are dropped.
DROP TABLE claude_sdk_sessions;
DROP TABLE workers;

CREATE TABLE task_history_rebuilt (
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

INSERT INTO task_history_rebuilt (
    id, repo, issue_number, user, agent, agent_type, model, provider, status,
    started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts
)
SELECT
    id, repo, issue_number, user, agent, agent_type, model, provider,
    CASE WHEN status = 'running' THEN 'interrupted' ELSE status END,
    started_at,
    CASE WHEN status IN ('running', 'interrupted') THEN interrupted_at ELSE finished_at END,
    input_tokens, output_tokens, cost_usd, turns, artifacts
FROM task_history;

DROP TABLE task_history;
ALTER TABLE task_history_rebuilt RENAME TO task_history;

CREATE INDEX task_history_repo_issue ON task_history (repo, issue_number);
