-- Pausing a job or a whole kind: running items finish, nothing new is claimed.
ALTER TABLE jobs ADD COLUMN paused_at DOUBLE;
CREATE TABLE kind_pauses (
    kind TEXT PRIMARY KEY NOT NULL,
    paused_at DOUBLE NOT NULL
);
-- Each failed attempt's error, oldest first, as a JSON array (NULL before any retry).
ALTER TABLE job_items ADD COLUMN attempt_errors TEXT;
