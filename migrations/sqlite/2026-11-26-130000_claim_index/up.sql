-- Claims filter on available_at (items waiting out a retry delay) besides status. With
-- the column in the index the claim stays a covering, in-order index search; without it
-- SQLite walks the job's primary key from its first item, which makes a big job's claims
-- quadratic.
DROP INDEX job_items_by_status;
CREATE INDEX job_items_by_status ON job_items (job_id, status, idx, available_at);
