//! batchforge: an actor-based, durable batch job engine for coding-agent workloads.
//!
//! A user submits a batch of items (validation commands, test runs, and the kinds an
//! embedding application registers) over REST or from Rust; the engine runs them in
//! parallel under per-job and per-kind limits, keeps every result in the database, and
//! survives crashes and restarts.
//!
//! Layout:
//! - [`model`]: jobs, items, statuses, outcomes: the domain types.
//! - [`store`]: the only module that touches Diesel: every state transition is a plain
//!   function over a connection, in one file per table or aggregate.
//! - [`queue`]: the Supervisor (owns the queue), one Worker per kind, the Tracker (live
//!   progress); their protocol is [`queue::messages`].
//! - [`processor`]: the public [`processor::Processor`] trait; [`processors`] the built-in
//!   kinds (`batch_validation`, `batch_tests`, `batch_mcp`, `batch_agent_tasks`).
//! - [`sandbox`]: every process the engine starts for a job (spawning, the guardian) and
//!   the one path confinement.
//! - [`mcp`]: the Model Context Protocol: batchforge's sandboxed MCP server and the
//!   pooled client sessions of the `batch_mcp` processor.
//! - [`agent`]: the LLM coding agent behind `batch_agent_tasks` (Ollama / OpenAI-compatible
//!   client, guardrail, per-task git worktrees).
//! - [`engine`]: starting it all ([`engine::EngineBuilder`]) and the [`engine::Engine`] handle.
//! - [`submission`]: request bodies, JSONL and cron templates turned into jobs, and the
//!   admission check every job passes before it is stored.
//! - [`api`]: the REST surface; [`app`]: the HTTP application used by the binary and tests.
//! - [`services`]: the background tasks beside the queue: cron schedules, the cluster's
//!   heartbeats and rescue, webhook deliveries from a durable outbox, retention.

pub mod agent;
pub mod api;
pub mod app;
pub mod engine;
pub mod mcp;
pub mod metrics;
pub mod model;
pub mod processor;
pub mod processors;
pub mod queue;
pub mod sandbox;
pub mod secrets;
pub mod services;
pub mod store;
pub mod submission;

pub use app::{Application, ServeConfig};
pub use engine::{Engine, EngineBuilder, EngineConfig, StartError};
pub use model::{ItemOutcome, ItemStatus, JobStatus, NewItem, NewJob};
pub use processor::{FieldError, Item, ItemContext, Processor, ProgressReporter};
