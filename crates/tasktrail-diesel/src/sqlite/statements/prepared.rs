//! The two statements on every task's hot path (start and completed finish),
//! as query types that Diesel keeps **prepared** on the connection.
//!
//! Diesel re-prepares every `sql_query` and every `UPDATE` on each call (it
//! marks both unsafe to cache, because their SQL text can vary). These two
//! statements never vary: their SQL is fixed text and every value is a bind
//! parameter, so each type declares a static query id and SQLite compiles
//! it once per connection. See docs/performance.md for what it saves.

use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Double, Text};
use diesel::sqlite::Sqlite;
use diesel::sqlite::SqliteConnection;
use diesel::{QueryResult, RunQueryDsl};
use tasktrail_core::backend::{FinishRow, NewRunningRow};
use tasktrail_core::RunReport;

use crate::codec::encode_artifacts;
use crate::sqlite::rows::{stored_id, stored_time};

/// `INSERT … SELECT … FROM workers WHERE id = ? AND state = 'alive'`: the
/// running row, written only if its worker is alive. One autocommit
/// statement: SQLite holds the write lock for the whole of it, so no sweep
/// can declare the worker dead in between.
pub(crate) struct InsertRunningIfWorkerAlive<'a> {
    pub(crate) id: &'a str,
    pub(crate) repo: &'a str,
    pub(crate) issue_number: i64,
    pub(crate) user: &'a str,
    pub(crate) agent: &'a str,
    pub(crate) agent_type: &'a str,
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) started_at: &'a str,
    pub(crate) worker: &'a str,
}

impl QueryId for InsertRunningIfWorkerAlive<'_> {
    type QueryId = InsertRunningIfWorkerAlive<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for InsertRunningIfWorkerAlive<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO task_history \
               (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, worker_id) \
             SELECT ",
        );
        out.push_bind_param::<Text, _>(self.id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.repo)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.issue_number)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.user)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.agent)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.agent_type)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.model)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(self.provider)?;
        out.push_sql(", 'running', ");
        out.push_bind_param::<Text, _>(self.started_at)?;
        out.push_sql(", workers.id FROM workers WHERE workers.id = ");
        out.push_bind_param::<Text, _>(self.worker)?;
        out.push_sql(" AND workers.state = 'alive'");
        Ok(())
    }
}

impl<Conn> RunQueryDsl<Conn> for InsertRunningIfWorkerAlive<'_> {}

/// The one UPDATE of a completed finish (success, failure, cancelled,
/// aborted_no_skill), fenced: only the owner's row, only while `running`.
pub(crate) struct FinishCompletedIfOwnedAndRunning<'a> {
    pub(crate) id: &'a str,
    pub(crate) worker: &'a str,
    pub(crate) status: &'a str,
    pub(crate) finished_at: &'a str,
    pub(crate) input_tokens: i64,
    pub(crate) output_tokens: i64,
    pub(crate) cost_usd: f64,
    pub(crate) turns: i64,
    pub(crate) artifacts: &'a str,
}

impl QueryId for FinishCompletedIfOwnedAndRunning<'_> {
    type QueryId = FinishCompletedIfOwnedAndRunning<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for FinishCompletedIfOwnedAndRunning<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        out.push_sql("UPDATE task_history SET status = ");
        out.push_bind_param::<Text, _>(self.status)?;
        out.push_sql(", finished_at = ");
        out.push_bind_param::<Text, _>(self.finished_at)?;
        out.push_sql(", input_tokens = ");
        out.push_bind_param::<BigInt, _>(&self.input_tokens)?;
        out.push_sql(", output_tokens = ");
        out.push_bind_param::<BigInt, _>(&self.output_tokens)?;
        out.push_sql(", cost_usd = ");
        out.push_bind_param::<Double, _>(&self.cost_usd)?;
        out.push_sql(", turns = ");
        out.push_bind_param::<BigInt, _>(&self.turns)?;
        out.push_sql(", artifacts = ");
        out.push_bind_param::<Text, _>(self.artifacts)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, _>(self.id)?;
        out.push_sql(" AND status = 'running' AND worker_id = ");
        out.push_bind_param::<Text, _>(self.worker)?;
        Ok(())
    }
}

impl<Conn> RunQueryDsl<Conn> for FinishCompletedIfOwnedAndRunning<'_> {}

/// The start, bound as this schema stores an id and a time.
pub(super) fn insert_running_if_worker_alive(
    connection: &mut SqliteConnection,
    row: &NewRunningRow,
) -> QueryResult<usize> {
    let spec = &row.spec;
    let worker = stored_id(row.worker.as_uuid());
    InsertRunningIfWorkerAlive {
        id: &stored_id(row.id.as_uuid()),
        repo: spec.repo(),
        issue_number: i64::from(spec.issue_number()),
        user: spec.user(),
        agent: spec.agent(),
        agent_type: spec.agent_type(),
        model: spec.model(),
        provider: spec.provider(),
        started_at: &stored_time(row.started_at),
        worker: &worker,
    }
    .execute(connection)
}

/// The completed finish, bound as this schema stores its values.
pub(super) fn finish_completed_if_owned_and_running(
    connection: &mut SqliteConnection,
    row: &FinishRow,
    report: &RunReport,
) -> QueryResult<usize> {
    FinishCompletedIfOwnedAndRunning {
        id: &stored_id(row.id.as_uuid()),
        worker: &stored_id(row.worker.as_uuid()),
        status: row.outcome.status().as_str(),
        finished_at: &stored_time(row.at),
        input_tokens: i64::from(report.input_tokens),
        output_tokens: i64::from(report.output_tokens),
        cost_usd: report.cost_usd.dollars(),
        turns: i64::from(report.turns),
        artifacts: &encode_artifacts(&report.artifacts),
    }
    .execute(connection)
}
