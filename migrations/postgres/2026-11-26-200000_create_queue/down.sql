DROP TABLE schedules;
DROP TABLE webhook_deliveries;
DROP TABLE kind_pauses;
DROP TABLE nodes;
DROP TABLE job_items;
DROP TABLE jobs;
