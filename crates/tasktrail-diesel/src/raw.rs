//! A `task_history` row as the database holds it, every column as text, for
//! showing a row that cannot be read as a record (`tasktrail show` prints it
//! beside the problem).

/// Declares the raw row struct for one backend: every column cast to text.
macro_rules! raw_task_row {
    ($backend:ty) => {
        #[derive(diesel::QueryableByName)]
        #[diesel(check_for_backend($backend))]
        pub(crate) struct RawTaskRow {
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            id: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            repo: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            issue_number: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            user: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            agent: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            agent_type: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            model: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            provider: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            status: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            worker_id: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            started_at: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            finished_at: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            input_tokens: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            output_tokens: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            cost_usd: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            turns: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            artifacts: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            interrupted_at: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            interrupt_reason: Option<String>,
            #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
            interrupted_by: Option<String>,
        }

        impl RawTaskRow {
            pub(crate) fn into_columns(self) -> $crate::RawColumns {
                vec![
                    ("id", self.id),
                    ("repo", self.repo),
                    ("issue_number", self.issue_number),
                    ("user", self.user),
                    ("agent", self.agent),
                    ("agent_type", self.agent_type),
                    ("model", self.model),
                    ("provider", self.provider),
                    ("status", self.status),
                    ("worker_id", self.worker_id),
                    ("started_at", self.started_at),
                    ("finished_at", self.finished_at),
                    ("input_tokens", self.input_tokens),
                    ("output_tokens", self.output_tokens),
                    ("cost_usd", self.cost_usd),
                    ("turns", self.turns),
                    ("artifacts", self.artifacts),
                    ("interrupted_at", self.interrupted_at),
                    ("interrupt_reason", self.interrupt_reason),
                    ("interrupted_by", self.interrupted_by),
                ]
            }
        }
    };
}
pub(crate) use raw_task_row;
