DROP TABLE llm_batches;
DROP TABLE llm_files;
