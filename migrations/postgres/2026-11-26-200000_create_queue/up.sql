-- The whole queue schema for PostgreSQL, matching migrations/sqlite after all its steps.
-- Timestamps are Unix seconds (DOUBLE PRECISION) on both backends, JSON is stored as
-- text, so one set of Diesel tables (src/store/schema.rs) reads both.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    parallel INTEGER NOT NULL,
    total INTEGER NOT NULL,
    processed INTEGER NOT NULL DEFAULT 0,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    skipped INTEGER NOT NULL DEFAULT 0,
    cancelled INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    metadata TEXT NOT NULL DEFAULT '{}',
    idempotency_key TEXT UNIQUE,
    run_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION,
    paused_at DOUBLE PRECISION
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
CREATE INDEX jobs_by_kind ON jobs (kind, created_at);
CREATE INDEX jobs_by_created ON jobs (created_at);
CREATE INDEX jobs_by_completed ON jobs (completed_at) WHERE completed_at IS NOT NULL;

CREATE TABLE job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    available_at DOUBLE PRECISION,
    -- The node that claimed the item while it is running, and until when its claim holds
    -- without that node's heartbeat.
    node_id TEXT,
    lease_expires_at DOUBLE PRECISION,
    result TEXT,
    error TEXT,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    attempt_errors TEXT,
    PRIMARY KEY (job_id, idx)
);
-- Claims walk a job's queued items in submission order.
CREATE INDEX job_items_by_status ON job_items (job_id, status, idx, available_at);
-- Lease renewal and rescue look up the running items of one node.
CREATE INDEX job_items_running_by_node ON job_items (node_id) WHERE status = 'running';

CREATE TABLE nodes (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE kind_pauses (
    kind TEXT PRIMARY KEY NOT NULL,
    paused_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE webhook_deliveries (
    id BIGSERIAL PRIMARY KEY,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    delivered_at DOUBLE PRECISION,
    given_up_at DOUBLE PRECISION
);
CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;

CREATE TABLE schedules (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT UNIQUE,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    job TEXT NOT NULL,
    paused_at DOUBLE PRECISION,
    next_run_at DOUBLE PRECISION NOT NULL,
    last_run_at DOUBLE PRECISION,
    last_job_id TEXT,
    last_error TEXT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX schedules_by_next_run ON schedules (next_run_at);
