-- Death is proven, never guessed: each worker records where its pid means
-- something (the kernel's boot id and its PID namespace) and which lock it
-- holds for its whole life. Rows registered before this migration keep NULLs:
-- no pid probe applies to them and their lock cannot be checked (the lease
-- decides, as before). The host name stays, for people to read.
ALTER TABLE workers ADD COLUMN boot_id TEXT;
ALTER TABLE workers ADD COLUMN pid_namespace BIGINT;
-- 'advisory': the session-level advisory lock PostgresStorage::worker_lock_key,
-- held by the worker's liveness session.
ALTER TABLE workers ADD COLUMN liveness_lock TEXT CHECK (liveness_lock IN ('advisory'));
