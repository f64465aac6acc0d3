//! The MySQL schema after every migration in `migrations/mysql`: ids are
//! their hyphenated text (`CHAR(36)`), times `DATETIME(6)` holding UTC,
//! artifacts JSON text. Diesel quotes every identifier (`` `user` ``).

diesel::table! {
    task_history (id) {
        id -> Text,
        repo -> Text,
        issue_number -> BigInt,
        user -> Text,
        agent -> Text,
        agent_type -> Text,
        model -> Text,
        provider -> Text,
        status -> Text,
        started_at -> Datetime,
        finished_at -> Nullable<Datetime>,
        input_tokens -> Nullable<BigInt>,
        output_tokens -> Nullable<BigInt>,
        cost_usd -> Nullable<Double>,
        turns -> Nullable<BigInt>,
        artifacts -> Nullable<Text>,
        worker_id -> Nullable<Text>,
        interrupted_at -> Nullable<Datetime>,
        interrupt_reason -> Nullable<Text>,
        interrupted_by -> Nullable<Text>,
    }
}

diesel::table! {
    workers (id) {
        id -> Text,
        host -> Text,
        pid -> BigInt,
        process_start_marker -> Text,
        started_at -> Datetime,
        heartbeat_at -> Datetime,
        state -> Text,
        stopped_at -> Nullable<Datetime>,
        boot_id -> Nullable<Text>,
        pid_namespace -> Nullable<BigInt>,
        liveness_lock -> Nullable<Text>,
    }
}

diesel::table! {
    claude_sdk_sessions (session_id) {
        session_id -> Text,
        task_id -> Text,
        repo -> Text,
        issue_number -> BigInt,
        agent -> Text,
        created_at -> Datetime,
        invalidated_at -> Nullable<Datetime>,
        invalidation_reason -> Nullable<Text>,
    }
}

diesel::table! {
    recovery_reports (task_id) {
        task_id -> Text,
        cause_kind -> Text,
        cause_host -> Nullable<Text>,
        cause_pid -> Nullable<BigInt>,
        cause_last_heartbeat -> Nullable<Datetime>,
        cause_lease_ms -> Nullable<BigInt>,
        sessions_invalidated -> BigInt,
        owed_by -> Text,
        owed_since -> Datetime,
        reported_at -> Nullable<Datetime>,
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
