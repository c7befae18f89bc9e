//! Integration tests through the public surface: HTTP on port 0 against a fresh SQLite
//! file per test, the binary as a child process, and the library as an embedder uses it.

mod helpers;
mod jsonl;

mod bad_input;
mod bench;
mod cancellation;
mod cli;
mod commands;
mod crash;
mod embedding;
mod events;
mod lifecycle;
mod metrics;
