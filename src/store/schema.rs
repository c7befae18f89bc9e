//! Diesel table definitions, matching `migrations/sqlite` and `migrations/postgres`.

diesel::table! {
    /// One batch: a kind, its options and its counters.
    jobs (id) {
        id -> Text,
        kind -> Text,
        status -> Text,
        spec -> Text,
        priority -> Integer,
        parallel -> Integer,
        total -> Integer,
        processed -> Integer,
        succeeded -> Integer,
        failed -> Integer,
        skipped -> Integer,
        cancelled -> Integer,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        metadata -> Text,
        idempotency_key -> Nullable<Text>,
        run_at -> Nullable<Double>,
        created_at -> Double,
        started_at -> Nullable<Double>,
        completed_at -> Nullable<Double>,
        paused_at -> Nullable<Double>,
    }
}

diesel::table! {
    /// One unit of work of a job.
    job_items (job_id, idx) {
        job_id -> Text,
        idx -> Integer,
        key -> Text,
        payload -> Text,
        status -> Text,
        attempts -> Integer,
        max_attempts -> Integer,
        available_at -> Nullable<Double>,
        node_id -> Nullable<Text>,
        lease_expires_at -> Nullable<Double>,
        result -> Nullable<Text>,
        error -> Nullable<Text>,
        started_at -> Nullable<Double>,
        finished_at -> Nullable<Double>,
        attempt_errors -> Nullable<Text>,
    }
}

diesel::table! {
    /// Kinds whose jobs are paused as a whole.
    kind_pauses (kind) {
        kind -> Text,
        paused_at -> Double,
    }
}

diesel::table! {
    /// Engine processes that share the database.
    nodes (id) {
        id -> Text,
        host -> Text,
        pid -> Integer,
        started_at -> Double,
        heartbeat_at -> Double,
    }
}

diesel::table! {
    /// Webhook outbox: one `job.finished` POST per finished job that has a `callback_url`.
    webhook_deliveries (id) {
        id -> BigInt,
        job_id -> Text,
        url -> Text,
        payload -> Text,
        attempts -> Integer,
        next_attempt_at -> Nullable<Double>,
        last_error -> Nullable<Text>,
        created_at -> Double,
        delivered_at -> Nullable<Double>,
        given_up_at -> Nullable<Double>,
    }
}

diesel::table! {
    /// Cron schedules: each tick submits `job` (a `POST /batch/jobs` body) once.
    schedules (id) {
        id -> Text,
        name -> Nullable<Text>,
        cron -> Text,
        timezone -> Text,
        job -> Text,
        paused_at -> Nullable<Double>,
        next_run_at -> Double,
        last_run_at -> Nullable<Double>,
        last_job_id -> Nullable<Text>,
        last_error -> Nullable<Text>,
        created_at -> Double,
    }
}

diesel::table! {
    /// Files uploaded through the OpenAI-compatible `/v1/files`.
    llm_files (id) {
        id -> Text,
        purpose -> Text,
        filename -> Text,
        bytes -> BigInt,
        created_at -> Double,
        content -> Binary,
    }
}

diesel::table! {
    /// Batches created through `/v1/batches`; `job_id` is the `batch_llm` job, `errors`
    /// the validation errors of a batch that failed before it had one.
    llm_batches (id) {
        id -> Text,
        job_id -> Nullable<Text>,
        input_file_id -> Text,
        endpoint -> Text,
        completion_window -> Text,
        metadata -> Nullable<Text>,
        errors -> Nullable<Text>,
        created_at -> Double,
    }
}

diesel::joinable!(job_items -> jobs (job_id));
diesel::allow_tables_to_appear_in_same_query!(jobs, job_items, nodes);
