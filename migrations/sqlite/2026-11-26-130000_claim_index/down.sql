DROP INDEX job_items_by_status;
CREATE INDEX job_items_by_status ON job_items (job_id, status, idx);
