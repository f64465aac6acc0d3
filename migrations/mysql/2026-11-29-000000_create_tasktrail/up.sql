-- The whole tasktrail schema on MySQL 8.0.16+ / MariaDB 10.6+, in one
-- migration: there never was a MySQL tasktrail before the fix, so this
-- backend starts from the schema the other backends reach after their
-- fifth migration (same tables, columns, checks and indexes).
--
-- Types: ids are the hyphenated UUID text in CHAR(36) ascii_bin (byte
-- order, as Postgres orders uuid and SQLite its text), so rows inserted by
-- hand read naturally; times are DATETIME(6) holding UTC to the
-- microsecond (no time zone conversion, whatever the session's
-- time_zone); the fields tasktrail bounds to 200 bytes are VARCHAR(200)
-- utf8mb4 in binary collation (byte order, exact comparison, as on the
-- other backends); artifacts are JSON text checked by JSON_VALID.
--
-- MySQL commits every DDL statement on its own: this file is not one
-- transaction as it is on Postgres. `tasktrail migrate` runs it under a
-- named lock so concurrent boots do not race it, and every statement is
-- written to be run again (`IF NOT EXISTS`): a process killed halfway
-- through leaves tables the next boot's run of this file skips, then
-- completes (docs/operations.md). Each table, with its indexes and checks,
-- is one statement.
CREATE TABLE IF NOT EXISTS task_history (
    id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    repo VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    issue_number BIGINT NOT NULL,
    `user` VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    agent VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    agent_type VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    model VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    provider VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    status VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT 'running',
    started_at DATETIME(6) NOT NULL,
    finished_at DATETIME(6) NULL,
    input_tokens BIGINT NULL,
    output_tokens BIGINT NULL,
    cost_usd DOUBLE NULL,
    turns BIGINT NULL,
    artifacts LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    worker_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    interrupted_at DATETIME(6) NULL,
    interrupt_reason TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    interrupted_by CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NULL,
    CONSTRAINT task_history_status_check
        CHECK (status IN ('running', 'success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill')),
    CONSTRAINT task_history_running_not_finished
        CHECK (status <> 'running' OR finished_at IS NULL),
    CONSTRAINT task_history_interrupted_not_finished
        CHECK (status <> 'interrupted' OR finished_at IS NULL),
    CONSTRAINT task_history_artifacts_json CHECK (artifacts IS NULL OR JSON_VALID(artifacts)),
    INDEX task_history_repo_issue (repo, issue_number),
    INDEX task_history_started_at (started_at),
    -- MySQL has no partial index: the sweep's read of running rows goes
    -- through (status, worker_id).
    INDEX task_history_running_by_worker (status, worker_id),
    INDEX task_history_status_started (status, started_at, id),
    INDEX task_history_repo_started (repo, started_at, id)
) ENGINE = InnoDB;

-- heartbeat_at is written with the database's own clock (UTC_TIMESTAMP(6)),
-- never a worker's: liveness across hosts is judged against one clock.
CREATE TABLE IF NOT EXISTS workers (
    id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    host TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    pid BIGINT NOT NULL,
    process_start_marker TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    started_at DATETIME(6) NOT NULL,
    heartbeat_at DATETIME(6) NOT NULL,
    state VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT 'alive',
    stopped_at DATETIME(6) NULL,
    boot_id TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    pid_namespace BIGINT NULL,
    -- 'named_lock': the worker's liveness session holds GET_LOCK of
    -- MysqlStorage::worker_lock_name for the worker's whole life.
    liveness_lock VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NULL,
    CONSTRAINT workers_state_check CHECK (state IN ('alive', 'stopped', 'dead')),
    CONSTRAINT workers_liveness_lock_check CHECK (liveness_lock IN ('named_lock'))
) ENGINE = InnoDB;

CREATE TABLE IF NOT EXISTS claude_sdk_sessions (
    session_id VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
    task_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    repo VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    issue_number BIGINT NOT NULL,
    agent VARCHAR(200) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    created_at DATETIME(6) NOT NULL,
    invalidated_at DATETIME(6) NULL,
    invalidation_reason TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    CONSTRAINT claude_sdk_sessions_task FOREIGN KEY (task_id) REFERENCES task_history (id),
    INDEX claude_sdk_sessions_resume (repo, issue_number, agent, created_at)
) ENGINE = InnoDB;

-- Hints are never lost: see migrations/postgres/2026-11-27-100000_recovery_reports.
CREATE TABLE IF NOT EXISTS recovery_reports (
    task_id CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    cause_kind VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    cause_host TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
    cause_pid BIGINT NULL,
    cause_last_heartbeat DATETIME(6) NULL,
    cause_lease_ms BIGINT NULL,
    sessions_invalidated BIGINT NOT NULL,
    owed_by CHAR(36) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    owed_since DATETIME(6) NOT NULL,
    reported_at DATETIME(6) NULL,
    CONSTRAINT recovery_reports_task FOREIGN KEY (task_id) REFERENCES task_history (id),
    INDEX recovery_reports_owed (owed_by, reported_at)
) ENGINE = InnoDB;
