-- The fix (seed issue #1107): a row from the moment a task starts.
--
-- SQLite cannot alter a CHECK constraint, so task_history is rebuilt and every
-- row is copied. Rows already `interrupted` get finished_at = NULL (they never
-- finished); the time that was there moves to interrupted_at, so nothing is
-- lost.
CREATE TABLE task_history_rebuilt (
    id TEXT PRIMARY KEY NOT NULL,
    repo TEXT NOT NULL,
    issue_number INTEGER NOT NULL,
    user TEXT NOT NULL,
    agent TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'running'
        CHECK (status IN ('running', 'success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill')),
    started_at TEXT NOT NULL,
    finished_at TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    cost_usd REAL,
    turns INTEGER,
    artifacts TEXT,
    -- The worker boot that started the task (NULL on rows written before the fix).
    worker_id TEXT,
    interrupted_at TEXT,
    interrupt_reason TEXT,
    -- The worker that marked the row interrupted: its owner on shutdown, or
    -- the worker whose boot-time sweep recovered it.
    interrupted_by TEXT,
    CHECK (status <> 'running' OR finished_at IS NULL),
    CHECK (status <> 'interrupted' OR finished_at IS NULL)
);

INSERT INTO task_history_rebuilt (
    id, repo, issue_number, user, agent, agent_type, model, provider, status,
    started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts,
    interrupted_at
)
SELECT
    id, repo, issue_number, user, agent, agent_type, model, provider, status,
    started_at,
    CASE WHEN status = 'interrupted' THEN NULL ELSE finished_at END,
    input_tokens, output_tokens, cost_usd, turns, artifacts,
    CASE WHEN status = 'interrupted' THEN finished_at ELSE NULL END
FROM task_history;

DROP TABLE task_history;
ALTER TABLE task_history_rebuilt RENAME TO task_history;

CREATE INDEX task_history_repo_issue ON task_history (repo, issue_number);
CREATE INDEX task_history_started_at ON task_history (started_at);
-- The recovery sweep reads running rows only: its cost follows the number of
-- running rows, not the size of the history.
CREATE INDEX task_history_running_by_worker ON task_history (worker_id) WHERE status = 'running';

CREATE TABLE workers (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    process_start_marker TEXT NOT NULL,
    started_at TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'alive' CHECK (state IN ('alive', 'stopped', 'dead')),
    stopped_at TEXT
);

CREATE TABLE claude_sdk_sessions (
    session_id TEXT PRIMARY KEY NOT NULL,
    task_id TEXT NOT NULL REFERENCES task_history (id),
    repo TEXT NOT NULL,
    issue_number INTEGER NOT NULL,
    agent TEXT NOT NULL,
    created_at TEXT NOT NULL,
    invalidated_at TEXT,
    invalidation_reason TEXT
);

CREATE INDEX claude_sdk_sessions_task ON claude_sdk_sessions (task_id);
CREATE INDEX claude_sdk_sessions_resume ON claude_sdk_sessions (repo, issue_number, agent, created_at);
