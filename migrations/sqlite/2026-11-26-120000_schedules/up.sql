-- Cron schedules: each tick submits the stored job body (`POST /batch/jobs` form) once,
-- with the idempotency key `schedule:<id>:<tick unix seconds>`.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY NOT NULL,
    name TEXT UNIQUE,
    cron TEXT NOT NULL,
    timezone TEXT NOT NULL,
    job TEXT NOT NULL,
    paused_at DOUBLE,
    next_run_at DOUBLE NOT NULL,
    last_run_at DOUBLE,
    last_job_id TEXT,
    last_error TEXT,
    created_at DOUBLE NOT NULL
);
CREATE INDEX schedules_by_next_run ON schedules (next_run_at);
