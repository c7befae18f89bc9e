-- The OpenAI-compatible facade (`/v1/files`, `/v1/batches`): uploaded files, and each
-- batch created from one (a `batch_llm` job, or no job when its file failed validation).
CREATE TABLE llm_files (
    id TEXT PRIMARY KEY NOT NULL,
    purpose TEXT NOT NULL,
    filename TEXT NOT NULL,
    bytes BIGINT NOT NULL,
    created_at DOUBLE NOT NULL,
    content BLOB NOT NULL
);
CREATE TABLE llm_batches (
    id TEXT PRIMARY KEY NOT NULL,
    job_id TEXT,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    errors TEXT,
    created_at DOUBLE NOT NULL
);
CREATE INDEX llm_batches_by_created ON llm_batches (created_at);
