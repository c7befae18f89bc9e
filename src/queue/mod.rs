//! The queue: the actors that own it (Supervisor, one Worker per kind, Tracker) and their
//! protocol. Their topology:
//!
//! ```text
//! HTTP handler ──msg──▶ Supervisor ──(blocking pool)──▶ Store
//!                         │ RunItems             │ ProgressUpdate (after commits)
//!                         ▼                      ▼
//!                  Worker (one per kind)      Tracker ◀── processors' notes
//!                         │ ItemFinished back to the Supervisor, group-committed
//! ```
//!
//! All messages are declared in [`messages`], so the protocol reads in one place.

pub mod messages;
pub mod supervisor;
pub mod tracker;
pub mod worker;

pub use supervisor::Supervisor;
pub use tracker::Tracker;
pub use worker::Worker;
