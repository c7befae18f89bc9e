//! Integration tests through the public surface: HTTP on port 0 against a fresh SQLite
//! file per test, the binary as a child process, and the library as an embedder uses it.

mod fake_llm;
mod helpers;
mod jsonl;

mod agent;
mod bad_input;
mod bench;
mod cancellation;
mod cli;
mod cluster;
mod commands;
mod crash;
mod dashboard;
mod edge_input;
mod embedding;
mod events;
mod exports;
mod lifecycle;
mod llm_batches;
mod llm_limits;
mod mcp;
mod metrics;
mod openapi;
mod retention;
mod retries;
mod sandbox;
mod schedules;
mod scheduling;
mod secrets;
mod security;
mod start_marks;
mod storage_faults;
mod targets;
mod tls;
mod webhooks;
