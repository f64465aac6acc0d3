//! Retention on MySQL (see [`crate::prune`]).

use diesel::prelude::*;
use tasktrail_core::{PruneReport, PruneRequest, StorageError};

use super::rows::{stored_id, TaskRow, WorkerRow};
use super::schema::{claude_sdk_sessions, recovery_reports, task_history, workers};
use super::{map_error, MysqlStorage};
use crate::prune::{prune, PruneTarget};

impl PruneTarget for MysqlStorage {
    type Id = String;

    crate::statements::prune_statements!();
}

impl MysqlStorage {
    /// Retention: deletes what `request` selects ([`PruneRequest`]): final
    /// rows that ended before the cut-off with their sessions, in
    /// transactions of at most `batch_size` rows, then `stopped` / `dead`
    /// workers last seen before it that no row names. Never a `running`
    /// row, never a row that ended at or after the cut-off, never a row it
    /// cannot read. With `dry_run`, counts and deletes nothing.
    pub fn prune(&self, request: &PruneRequest) -> Result<PruneReport, StorageError> {
        prune(self, request)
    }
}
