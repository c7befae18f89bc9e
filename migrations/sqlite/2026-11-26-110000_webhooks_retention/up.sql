-- Webhooks: an outbox row each time a job that asked for a `callback_url` finishes,
-- written in the transaction that makes the job terminal; the dispatcher POSTs it until
-- it is delivered or given up. `next_attempt_at` is NULL once it is either.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY NOT NULL,
    job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE,
    last_error TEXT,
    created_at DOUBLE NOT NULL,
    delivered_at DOUBLE,
    given_up_at DOUBLE
);
CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id);
-- The dispatcher's poll walks only pending deliveries, soonest first.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE next_attempt_at IS NOT NULL;

-- Retention: finished jobs by the time they finished.
CREATE INDEX jobs_by_completed ON jobs (completed_at) WHERE completed_at IS NOT NULL;
