//! The two statements on every task's hot path (start and completed finish),
//! as query types that diesel-async keeps **prepared** on each pooled
//! connection.
//!
//! diesel-async keeps a prepared statement in its per-connection cache only
//! for a query that is safe to cache; a `sql_query` or Diesel's `UPDATE`
//! builder never is (their text can vary), so each was prepared, executed
//! and closed again on every call (two round trips: the MariaDB general log
//! shows it). These two never vary: their SQL is fixed text and every value
//! a bind parameter, so each type is safe to cache, declares a static query
//! id, and the server prepares it once per connection
//! (`mysql_backend::start_and_completed_finish_are_prepared_once_per_connection_and_reused`).

use chrono::NaiveDateTime;
use diesel::mysql::Mysql;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Datetime, Double, Text};
use diesel::{QueryResult, RunQueryDsl};
use tasktrail_core::backend::{FinishRow, NewRunningRow};
use tasktrail_core::RunReport;

use super::super::rows::{stored_id, stored_time};
use super::super::MysqlConnection;
use crate::codec::encode_artifacts;

/// `INSERT … SELECT … FROM workers WHERE id = ? AND state = 'alive' LOCK IN
/// SHARE MODE`: the running row, written only if its worker is alive. The
/// share lock makes it wait for (and then see) a sweep that is declaring the
/// worker dead right now; under `READ COMMITTED` an `INSERT … SELECT` would
/// otherwise read the worker without a lock. One statement, one round trip.
struct InsertRunningIfWorkerAlive<'a> {
    id: &'a str,
    repo: &'a str,
    issue_number: i64,
    user: &'a str,
    agent: &'a str,
    agent_type: &'a str,
    model: &'a str,
    provider: &'a str,
    started_at: NaiveDateTime,
    worker: &'a str,
}

impl QueryId for InsertRunningIfWorkerAlive<'_> {
    type QueryId = InsertRunningIfWorkerAlive<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Mysql> for InsertRunningIfWorkerAlive<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO task_history \
               (id, repo, issue_number, `user`, agent, agent_type, model, provider, status, started_at, worker_id) \
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
        out.push_bind_param::<Datetime, _>(&self.started_at)?;
        out.push_sql(", workers.id FROM workers WHERE workers.id = ");
        out.push_bind_param::<Text, _>(self.worker)?;
        out.push_sql(" AND workers.state = 'alive' LOCK IN SHARE MODE");
        Ok(())
    }
}

impl<Conn> RunQueryDsl<Conn> for InsertRunningIfWorkerAlive<'_> {}

/// The one UPDATE of a completed finish (success, failure, cancelled,
/// aborted_no_skill), fenced: only the owner's row, only while `running`.
/// With the found-rows flag the count is the rows the guard matched: 1
/// when the finish landed, 0 when it was refused.
struct FinishCompletedIfOwnedAndRunning<'a> {
    id: &'a str,
    worker: &'a str,
    status: &'a str,
    finished_at: NaiveDateTime,
    input_tokens: i64,
    output_tokens: i64,
    cost_usd: f64,
    turns: i64,
    artifacts: &'a str,
}

impl QueryId for FinishCompletedIfOwnedAndRunning<'_> {
    type QueryId = FinishCompletedIfOwnedAndRunning<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Mysql> for FinishCompletedIfOwnedAndRunning<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Mysql>) -> QueryResult<()> {
        out.push_sql("UPDATE task_history SET status = ");
        out.push_bind_param::<Text, _>(self.status)?;
        out.push_sql(", finished_at = ");
        out.push_bind_param::<Datetime, _>(&self.finished_at)?;
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

/// The start: [`InsertRunningIfWorkerAlive`] for `row`.
pub(crate) fn insert_running_if_worker_alive(
    connection: &mut MysqlConnection,
    row: &NewRunningRow,
) -> QueryResult<usize> {
    let spec = &row.spec;
    InsertRunningIfWorkerAlive {
        id: &stored_id(row.id.as_uuid()),
        repo: spec.repo(),
        issue_number: i64::from(spec.issue_number()),
        user: spec.user(),
        agent: spec.agent(),
        agent_type: spec.agent_type(),
        model: spec.model(),
        provider: spec.provider(),
        started_at: stored_time(row.started_at),
        worker: &stored_id(row.worker.as_uuid()),
    }
    .execute(connection)
}

/// The completed finish: [`FinishCompletedIfOwnedAndRunning`] for `row`
/// and `report`.
pub(crate) fn finish_completed_if_owned_and_running(
    connection: &mut MysqlConnection,
    row: &FinishRow,
    report: &RunReport,
) -> QueryResult<usize> {
    FinishCompletedIfOwnedAndRunning {
        id: &stored_id(row.id.as_uuid()),
        worker: &stored_id(row.worker.as_uuid()),
        status: row.outcome.status().as_str(),
        finished_at: stored_time(row.at),
        input_tokens: i64::from(report.input_tokens),
        output_tokens: i64::from(report.output_tokens),
        cost_usd: report.cost_usd.dollars(),
        turns: i64::from(report.turns),
        artifacts: &encode_artifacts(&report.artifacts),
    }
    .execute(connection)
}
