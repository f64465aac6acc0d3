//! Named locks (`GET_LOCK`): a live worker's proof of life, and the
//! migration lock. A named lock belongs to the session that took it and
//! the server frees it when that session ends, however it ends (a crashed
//! process's socket closes). Names are server-wide, not per database: each
//! carries the database's name or a worker's UUID.

use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use tasktrail_core::WorkerId;

use super::{MysqlConnection, MysqlStorage};

#[derive(QueryableByName)]
struct LockAnswer {
    #[diesel(sql_type = Nullable<diesel::sql_types::BigInt>)]
    answer: Option<i64>,
}

fn ask(connection: &mut MysqlConnection, sql: &str, name: &str) -> QueryResult<Option<i64>> {
    diesel::sql_query(sql)
        .bind::<Text, _>(name)
        .get_result::<LockAnswer>(connection)
        .map(|row| row.answer)
}

impl MysqlStorage {
    /// The named lock a live worker's liveness session holds:
    /// `tasktrail-worker-<uuid>` (45 characters; MySQL allows 64).
    pub fn worker_lock_name(worker: WorkerId) -> String {
        format!("tasktrail-worker-{}", worker.as_uuid().simple())
    }
}

/// Takes `name` without waiting: whether this session holds it now.
pub(crate) fn try_named_lock(connection: &mut MysqlConnection, name: &str) -> QueryResult<bool> {
    Ok(ask(connection, "SELECT GET_LOCK(?, 0) AS answer", name)? == Some(1))
}

/// Lets go of `name`: whether this session held it.
pub(crate) fn release_named_lock(
    connection: &mut MysqlConnection,
    name: &str,
) -> QueryResult<bool> {
    Ok(ask(connection, "SELECT RELEASE_LOCK(?) AS answer", name)? == Some(1))
}

/// Whether some session holds `name`, asked without taking it (so its
/// owner can always take it back).
pub(crate) fn named_lock_is_held(
    connection: &mut MysqlConnection,
    name: &str,
) -> QueryResult<bool> {
    Ok(ask(connection, "SELECT IS_USED_LOCK(?) AS answer", name)?.is_some())
}
