//! The Postgres schema after every migration in `migrations/postgres`.
//!
//! Diesel quotes every identifier it writes, so the `user` column (a
//! reserved word in Postgres) is always sent as `"user"`.

diesel::table! {
    task_history (id) {
        id -> Uuid,
        repo -> Text,
        issue_number -> BigInt,
        user -> Text,
        agent -> Text,
        agent_type -> Text,
        model -> Text,
        provider -> Text,
        status -> Text,
        started_at -> Timestamptz,
        finished_at -> Nullable<Timestamptz>,
        input_tokens -> Nullable<BigInt>,
        output_tokens -> Nullable<BigInt>,
        cost_usd -> Nullable<Double>,
        turns -> Nullable<BigInt>,
        artifacts -> Nullable<Jsonb>,
        worker_id -> Nullable<Uuid>,
        interrupted_at -> Nullable<Timestamptz>,
        interrupt_reason -> Nullable<Text>,
        interrupted_by -> Nullable<Uuid>,
    }
}

diesel::table! {
    workers (id) {
        id -> Uuid,
        host -> Text,
        pid -> BigInt,
        process_start_marker -> Text,
        started_at -> Timestamptz,
        heartbeat_at -> Timestamptz,
        state -> Text,
        stopped_at -> Nullable<Timestamptz>,
        boot_id -> Nullable<Text>,
        pid_namespace -> Nullable<BigInt>,
        liveness_lock -> Nullable<Text>,
    }
}

diesel::table! {
    claude_sdk_sessions (session_id) {
        session_id -> Text,
        task_id -> Uuid,
        repo -> Text,
        issue_number -> BigInt,
        agent -> Text,
        created_at -> Timestamptz,
        invalidated_at -> Nullable<Timestamptz>,
        invalidation_reason -> Nullable<Text>,
    }
}

diesel::table! {
    recovery_reports (task_id) {
        task_id -> Uuid,
        cause_kind -> Text,
        cause_host -> Nullable<Text>,
        cause_pid -> Nullable<BigInt>,
        cause_last_heartbeat -> Nullable<Timestamptz>,
        cause_lease_ms -> Nullable<BigInt>,
        sessions_invalidated -> BigInt,
        owed_by -> Uuid,
        owed_since -> Timestamptz,
        reported_at -> Nullable<Timestamptz>,
    }
}

diesel::joinable!(claude_sdk_sessions -> task_history (task_id));
diesel::joinable!(recovery_reports -> task_history (task_id));
diesel::allow_tables_to_appear_in_same_query!(
    task_history,
    workers,
    claude_sdk_sessions,
    recovery_reports
);
