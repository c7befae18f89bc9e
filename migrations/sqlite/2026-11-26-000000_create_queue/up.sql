-- Jobs are batches; items are the unit of claiming, result and checkpoint.
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
    run_at DOUBLE,
    created_at DOUBLE NOT NULL,
    started_at DOUBLE,
    completed_at DOUBLE
);
CREATE INDEX jobs_by_status ON jobs (status, created_at);
CREATE INDEX jobs_by_kind ON jobs (kind, created_at);
CREATE INDEX jobs_by_created ON jobs (created_at);

CREATE TABLE job_items (
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    key TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    available_at DOUBLE,
    node_id TEXT,
    lease_expires_at DOUBLE,
    result TEXT,
    error TEXT,
    started_at DOUBLE,
    finished_at DOUBLE,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
-- Claiming and paging by status within a job both walk this index in submission order.
CREATE INDEX job_items_by_status ON job_items (job_id, status, idx);

CREATE TABLE nodes (
    id TEXT PRIMARY KEY NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started_at DOUBLE NOT NULL,
    heartbeat_at DOUBLE NOT NULL
);
