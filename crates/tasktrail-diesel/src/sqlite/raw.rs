//! A `task_history` row as SQLite holds it (see [`crate::raw`]).

use diesel::prelude::*;
use diesel::sql_types::Text;
use tasktrail_core::{StorageError, TaskId};

use super::{map_error, SqliteStorage};
use crate::raw::raw_task_row;
use crate::RawColumns;

raw_task_row!(diesel::sqlite::Sqlite);

impl SqliteStorage {
    /// Row `id` of `task_history` as the database holds it, every column
    /// as text, whether or not it reads as a record: what `tasktrail show`
    /// prints for a row it cannot read. `None` when there is no such row.
    pub fn raw_task_columns(&self, id: TaskId) -> Result<Option<RawColumns>, StorageError> {
        diesel::sql_query(
            "SELECT CAST(id AS TEXT) AS id, CAST(repo AS TEXT) AS repo, \
             CAST(issue_number AS TEXT) AS issue_number, CAST(user AS TEXT) AS user, \
             CAST(agent AS TEXT) AS agent, CAST(agent_type AS TEXT) AS agent_type, \
             CAST(model AS TEXT) AS model, CAST(provider AS TEXT) AS provider, \
             CAST(status AS TEXT) AS status, CAST(worker_id AS TEXT) AS worker_id, \
             CAST(started_at AS TEXT) AS started_at, CAST(finished_at AS TEXT) AS finished_at, \
             CAST(input_tokens AS TEXT) AS input_tokens, \
             CAST(output_tokens AS TEXT) AS output_tokens, CAST(cost_usd AS TEXT) AS cost_usd, \
             CAST(turns AS TEXT) AS turns, CAST(artifacts AS TEXT) AS artifacts, \
             CAST(interrupted_at AS TEXT) AS interrupted_at, \
             CAST(interrupt_reason AS TEXT) AS interrupt_reason, \
             CAST(interrupted_by AS TEXT) AS interrupted_by \
             FROM task_history WHERE id = ?",
        )
        .bind::<Text, _>(id.to_string())
        .get_result::<RawTaskRow>(&mut *self.connection())
        .optional()
        .map(|row| row.map(RawTaskRow::into_columns))
        .map_err(map_error)
    }
}
