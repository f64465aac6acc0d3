//! The two statements on every task's hot path (start and completed finish),
//! as query types that Diesel keeps **prepared** (named statements) on each
//! pooled connection.
//!
//! Diesel sends every `sql_query` and every `UPDATE` unprepared, for the
//! server to parse and plan again on each call (it marks both unsafe to
//! cache, because their SQL text can vary). These two statements never vary:
//! their SQL is fixed text and every value is a bind parameter, so each type
//! declares a static query id and the server plans it once per connection.
//! See docs/performance.md for what it saves.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::pg::PgConnection;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{BigInt, Double, Jsonb, Text, Timestamptz, Uuid as SqlUuid};
use diesel::{QueryResult, RunQueryDsl};
use tasktrail_core::backend::{FinishRow, NewRunningRow};
use tasktrail_core::{truncate_to_micros, RunReport};
use uuid::Uuid;

use crate::codec::artifacts_to_json;

/// `INSERT … SELECT … FROM workers WHERE id = $n AND state = 'alive' FOR
/// SHARE`: the running row, written only if its worker is alive. `FOR SHARE`
/// makes it wait for (and then see) a sweep that is declaring the worker
/// dead right now. One statement, one round trip.
pub(crate) struct InsertRunningIfWorkerAlive<'a> {
    pub(crate) id: Uuid,
    pub(crate) repo: &'a str,
    pub(crate) issue_number: i64,
    pub(crate) user: &'a str,
    pub(crate) agent: &'a str,
    pub(crate) agent_type: &'a str,
    pub(crate) model: &'a str,
    pub(crate) provider: &'a str,
    pub(crate) started_at: DateTime<Utc>,
    pub(crate) worker: Uuid,
}

impl QueryId for InsertRunningIfWorkerAlive<'_> {
    type QueryId = InsertRunningIfWorkerAlive<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertRunningIfWorkerAlive<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO task_history \
               (id, repo, issue_number, \"user\", agent, agent_type, model, provider, status, started_at, worker_id) \
             SELECT ",
        );
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
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
        out.push_bind_param::<Timestamptz, _>(&self.started_at)?;
        out.push_sql(", workers.id FROM workers WHERE workers.id = ");
        out.push_bind_param::<SqlUuid, _>(&self.worker)?;
        out.push_sql(" AND workers.state = 'alive' FOR SHARE");
        Ok(())
    }
}

impl<Conn> RunQueryDsl<Conn> for InsertRunningIfWorkerAlive<'_> {}

/// The one UPDATE of a completed finish (success, failure, cancelled,
/// aborted_no_skill), fenced: only the owner's row, only while `running`.
pub(crate) struct FinishCompletedIfOwnedAndRunning<'a> {
    pub(crate) id: Uuid,
    pub(crate) worker: Uuid,
    pub(crate) status: &'a str,
    pub(crate) finished_at: DateTime<Utc>,
    pub(crate) input_tokens: i64,
    pub(crate) output_tokens: i64,
    pub(crate) cost_usd: f64,
    pub(crate) turns: i64,
    pub(crate) artifacts: serde_json::Value,
}

impl QueryId for FinishCompletedIfOwnedAndRunning<'_> {
    type QueryId = FinishCompletedIfOwnedAndRunning<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for FinishCompletedIfOwnedAndRunning<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("UPDATE task_history SET status = ");
        out.push_bind_param::<Text, _>(self.status)?;
        out.push_sql(", finished_at = ");
        out.push_bind_param::<Timestamptz, _>(&self.finished_at)?;
        out.push_sql(", input_tokens = ");
        out.push_bind_param::<BigInt, _>(&self.input_tokens)?;
        out.push_sql(", output_tokens = ");
        out.push_bind_param::<BigInt, _>(&self.output_tokens)?;
        out.push_sql(", cost_usd = ");
        out.push_bind_param::<Double, _>(&self.cost_usd)?;
        out.push_sql(", turns = ");
        out.push_bind_param::<BigInt, _>(&self.turns)?;
        out.push_sql(", artifacts = ");
        out.push_bind_param::<Jsonb, _>(&self.artifacts)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<SqlUuid, _>(&self.id)?;
        out.push_sql(" AND status = 'running' AND worker_id = ");
        out.push_bind_param::<SqlUuid, _>(&self.worker)?;
        Ok(())
    }
}

impl<Conn> RunQueryDsl<Conn> for FinishCompletedIfOwnedAndRunning<'_> {}

/// One prepared statement, one round trip: the INSERT reads the worker's
/// row `FOR SHARE` (a concurrent sweep cannot declare it dead in
/// between) and writes nothing unless it is `alive`.
pub(super) fn insert_running_if_worker_alive(
    connection: &mut PgConnection,
    row: &NewRunningRow,
) -> QueryResult<usize> {
    let spec = &row.spec;
    InsertRunningIfWorkerAlive {
        id: *row.id.as_uuid(),
        repo: spec.repo(),
        issue_number: i64::from(spec.issue_number()),
        user: spec.user(),
        agent: spec.agent(),
        agent_type: spec.agent_type(),
        model: spec.model(),
        provider: spec.provider(),
        started_at: truncate_to_micros(row.started_at),
        worker: *row.worker.as_uuid(),
    }
    .execute(connection)
}

/// The completed finish, bound as this schema stores its values.
pub(super) fn finish_completed_if_owned_and_running(
    connection: &mut PgConnection,
    row: &FinishRow,
    report: &RunReport,
) -> QueryResult<usize> {
    FinishCompletedIfOwnedAndRunning {
        id: *row.id.as_uuid(),
        worker: *row.worker.as_uuid(),
        status: row.outcome.status().as_str(),
        finished_at: truncate_to_micros(row.at),
        input_tokens: i64::from(report.input_tokens),
        output_tokens: i64::from(report.output_tokens),
        cost_usd: report.cost_usd.dollars(),
        turns: i64::from(report.turns),
        artifacts: artifacts_to_json(&report.artifacts),
    }
    .execute(connection)
}
