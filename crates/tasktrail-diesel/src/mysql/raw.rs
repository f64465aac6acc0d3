//! A `task_history` row as MySQL holds it (see [`crate::raw`]), and the
//! answer to adoption.

use diesel::prelude::*;
use diesel::sql_types::Text;
use tasktrail_core::{StorageError, TaskId};

use super::{map_error, MysqlStorage};
use crate::raw::raw_task_row;
use crate::RawColumns;

raw_task_row!(diesel::mysql::Mysql);

impl MysqlStorage {
    /// Row `id` of `task_history` as the database holds it, every column
    /// as text, whether or not it reads as a record: what `tasktrail show`
    /// prints for a row it cannot read. `None` when there is no such row.
    pub fn raw_task_columns(&self, id: TaskId) -> Result<Option<RawColumns>, StorageError> {
        diesel::sql_query(
            "SELECT CAST(id AS CHAR) AS id, CAST(repo AS CHAR) AS repo, \
               CAST(issue_number AS CHAR) AS issue_number, CAST(`user` AS CHAR) AS `user`, \
               CAST(agent AS CHAR) AS agent, CAST(agent_type AS CHAR) AS agent_type, \
               CAST(model AS CHAR) AS model, CAST(provider AS CHAR) AS provider, \
               CAST(status AS CHAR) AS status, CAST(worker_id AS CHAR) AS worker_id, \
               CAST(started_at AS CHAR) AS started_at, CAST(finished_at AS CHAR) AS finished_at, \
               CAST(input_tokens AS CHAR) AS input_tokens, \
               CAST(output_tokens AS CHAR) AS output_tokens, CAST(cost_usd AS CHAR) AS cost_usd, \
               CAST(turns AS CHAR) AS turns, CAST(artifacts AS CHAR) AS artifacts, \
               CAST(interrupted_at AS CHAR) AS interrupted_at, \
               CAST(interrupt_reason AS CHAR) AS interrupt_reason, \
               CAST(interrupted_by AS CHAR) AS interrupted_by \
             FROM task_history WHERE id = ?",
        )
        .bind::<Text, _>(id.to_string())
        .get_result::<RawTaskRow>(&mut *self.pooled()?)
        .optional()
        .map(|row| row.map(RawTaskRow::into_columns))
        .map_err(map_error)
    }

    /// Adoption (`tasktrail migrate --adopt`) takes over a `task_history`
    /// that the seed's server wrote before tasktrail existed, on SQLite or
    /// Postgres. No such MySQL schema exists, so there is nothing to adopt
    /// here: refused, with nothing read or changed. A fresh MySQL database
    /// is made with `tasktrail migrate`.
    pub fn adopt(url: &str) -> Result<Vec<String>, StorageError> {
        let _ = url;
        Err(StorageError::NotAdoptable {
            differences: vec![
                "adoption takes over a pre-fix task_history written on SQLite or Postgres; \
                 there is no pre-fix MySQL schema: create the database with `tasktrail migrate`"
                    .to_owned(),
            ],
        })
    }
}
