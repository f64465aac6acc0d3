ALTER TABLE workers DROP COLUMN liveness_lock;
ALTER TABLE workers DROP COLUMN pid_namespace;
ALTER TABLE workers DROP COLUMN boot_id;
