DROP TABLE nodes;
DROP TABLE job_items;
DROP TABLE jobs;
