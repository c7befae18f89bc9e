ALTER TABLE job_items DROP COLUMN attempt_errors;
DROP TABLE kind_pauses;
ALTER TABLE jobs DROP COLUMN paused_at;
