//! Advisory locks: the key of each worker's liveness lock, the migration
//! lock's key, taking and releasing a session lock, and reading
//! `pg_locks` for a lock some session holds without taking it.

use diesel::pg::PgConnection;
use diesel::prelude::*;
use diesel::result::Error as DieselError;
use diesel::sql_types::{BigInt, Bool};
use tasktrail_core::WorkerId;

use super::PostgresStorage;

/// The advisory lock key that serialises migrations of one database (several
/// workers opening the same database at once migrate it once).
pub(super) const MIGRATION_LOCK_KEY: i64 = 0x7461_736b_7472_6d67; // "taskrmg"

/// Mixed into every worker lock key, so tasktrail's keys are unlikely to meet
/// another application's advisory locks.
const WORKER_LOCK_NAMESPACE: u64 = 0x7461_736b_7472_6c77; // "tasktrlw"

impl PostgresStorage {
    /// The key of the session-level advisory lock a live worker's store
    /// holds (`pg_try_advisory_lock(key)`): the two halves of the worker's
    /// UUID folded into 64 bits, mixed with a tasktrail constant. Operators
    /// can find it in `pg_locks` (`locktype = 'advisory'`, `objsubid = 1`,
    /// `classid = key >> 32`, `objid = key & 0xffffffff`).
    pub fn worker_lock_key(worker: WorkerId) -> i64 {
        let bits = worker.as_uuid().as_u128();
        let folded = ((bits >> 64) as u64) ^ (bits as u64) ^ WORKER_LOCK_NAMESPACE;
        i64::from_ne_bytes(folded.to_ne_bytes())
    }
}

#[derive(QueryableByName)]
pub(crate) struct Flag {
    #[diesel(sql_type = Bool)]
    pub(crate) flag: bool,
}

/// `pg_try_advisory_lock(key)` on this connection's session.
pub(crate) fn try_advisory_lock(
    connection: &mut PgConnection,
    key: i64,
) -> Result<bool, DieselError> {
    diesel::sql_query("SELECT pg_try_advisory_lock($1) AS flag")
        .bind::<BigInt, _>(key)
        .get_result::<Flag>(connection)
        .map(|row| row.flag)
}

/// `pg_advisory_unlock(key)`; false if this session did not hold it.
pub(crate) fn advisory_unlock(
    connection: &mut PgConnection,
    key: i64,
) -> Result<bool, DieselError> {
    diesel::sql_query("SELECT pg_advisory_unlock($1) AS flag")
        .bind::<BigInt, _>(key)
        .get_result::<Flag>(connection)
        .map(|row| row.flag)
}

/// Whether some session of this database holds the advisory lock `key` in
/// exclusive mode, read from `pg_locks` without taking it. A session-level
/// lock on a `bigint` key shows as `classid` = its high 32 bits, `objid` =
/// its low 32 bits, `objsubid` = 1 (the two-`int4` form uses 2); only a
/// granted lock counts (a session waiting for it holds nothing).
pub(crate) fn worker_lock_is_held(
    connection: &mut PgConnection,
    key: i64,
) -> Result<bool, DieselError> {
    let bits = u64::from_ne_bytes(key.to_ne_bytes());
    let classid = i64::try_from(bits >> 32).unwrap_or_default();
    let objid = i64::try_from(bits & 0xffff_ffff).unwrap_or_default();
    diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_locks \
           WHERE locktype = 'advisory' \
             AND database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) \
             AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND objsubid = 1 \
             AND mode = 'ExclusiveLock' AND granted) AS flag",
    )
    .bind::<diesel::sql_types::BigInt, _>(classid)
    .bind::<diesel::sql_types::BigInt, _>(objid)
    .get_result::<Flag>(connection)
    .map(|row| row.flag)
}
#[cfg(test)]
mod tests {
    use super::*;

    /// The key is what the docs tell operators to look for in `pg_locks`:
    /// the UUID's two halves and the tasktrail constant folded by XOR
    /// (worked out by hand for this UUID).
    #[test]
    fn a_worker_lock_key_is_the_documented_fold_of_its_uuid() {
        let worker = WorkerId::from_uuid(uuid::Uuid::from_u128(
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ));
        let key = PostgresStorage::worker_lock_key(worker);
        assert_eq!(key, -8_386_110_886_492_925_048);
        assert_eq!(key as u64, 0x8b9e_8c94_8b8d_9388);
        // classid and objid as pg_locks shows them.
        assert_eq!((key as u64) >> 32, 2_342_423_700);
        assert_eq!((key as u64) & 0xffff_ffff, 2_341_311_368);
    }

    #[test]
    fn worker_lock_keys_differ_per_worker_and_are_stable() {
        let a = WorkerId::new_random();
        let b = WorkerId::new_random();
        assert_eq!(
            PostgresStorage::worker_lock_key(a),
            PostgresStorage::worker_lock_key(a)
        );
        assert_ne!(
            PostgresStorage::worker_lock_key(a),
            PostgresStorage::worker_lock_key(b)
        );
    }
}
