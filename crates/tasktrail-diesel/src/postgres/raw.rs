//! A `task_history` row as Postgres holds it (see [`crate::raw`]).

use diesel::prelude::*;
use diesel::sql_types::Text;
use tasktrail_core::{StorageError, TaskId};

use super::{map_error, PostgresStorage};
use crate::raw::raw_task_row;
use crate::RawColumns;

raw_task_row!(diesel::pg::Pg);

impl PostgresStorage {
    /// Row `id` of `task_history` as the database holds it, every column
    /// as text, whether or not it reads as a record: what `tasktrail show`
    /// prints for a row it cannot read. `None` when there is no such row.
    pub fn raw_task_columns(&self, id: TaskId) -> Result<Option<RawColumns>, StorageError> {
        diesel::sql_query(
            r#"SELECT id::text AS id, repo::text AS repo, issue_number::text AS issue_number,
               "user"::text AS "user", agent::text AS agent, agent_type::text AS agent_type,
               model::text AS model, provider::text AS provider, status::text AS status,
               worker_id::text AS worker_id, started_at::text AS started_at,
               finished_at::text AS finished_at, input_tokens::text AS input_tokens,
               output_tokens::text AS output_tokens, cost_usd::text AS cost_usd,
               turns::text AS turns, artifacts::text AS artifacts,
               interrupted_at::text AS interrupted_at,
               interrupt_reason::text AS interrupt_reason,
               interrupted_by::text AS interrupted_by
               FROM task_history WHERE id = $1::uuid"#,
        )
        .bind::<Text, _>(id.to_string())
        .get_result::<RawTaskRow>(&mut self.pooled()?)
        .optional()
        .map(|row| row.map(RawTaskRow::into_columns))
        .map_err(map_error)
    }
}
