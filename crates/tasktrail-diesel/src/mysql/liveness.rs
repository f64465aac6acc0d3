//! How the MySQL liveness session opens (the session itself, holding the
//! workers' named locks, is `crate::liveness`): with every session's
//! settings (`connection.rs`).

use tasktrail_core::StorageError;

use super::connection::establish;
use super::MysqlConnection;
use crate::liveness::LivenessConnection;
use crate::secrets::Secrets;
use crate::statement_log::StatementLog;

/// The MySQL liveness session.
pub(crate) type LivenessSession = crate::liveness::LivenessSession<MysqlConnection>;

impl LivenessConnection for MysqlConnection {
    fn open_liveness(
        url: &str,
        secrets: &Secrets,
        statement_log: Option<&StatementLog>,
    ) -> Result<Self, StorageError> {
        establish(url, secrets, statement_log)
    }
}
