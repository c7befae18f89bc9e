DROP INDEX jobs_by_completed;
DROP TABLE webhook_deliveries;
