//! Domain types shared by the store, the actors, the processors and the API.
//!
//! One file per concern: [`status`] (the state enums), [`job`], [`item`],
//! [`options`] (the engine's job options, typed) and [`summary`] (the summary keys kinds
//! add). Everything but `summary` is re-exported here, so `crate::model::X` names them.

pub mod item;
pub mod job;
pub mod options;
pub mod status;
pub mod summary;

pub use item::*;
pub use job::*;
pub use options::{
    parse_timestamp, Dependencies, JobOptions, RetryPolicy, MAX_ATTEMPTS, MAX_DEPENDENCIES,
    MAX_ITEM_TIMEOUT_SECONDS,
};
pub use status::*;

use std::time::{SystemTime, UNIX_EPOCH};

/// Current time as unix seconds, the unit of every stored and returned timestamp.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A submitted value that is not acceptable, with the field it came from: the one error
/// shape of the API, the processors and the engine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The field, as a path into the request (`check_command`, `targets[3].path`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, its field named under `prefix` (`job.items` for `items`).
    pub fn under(self, prefix: &str) -> Self {
        FieldError {
            field: format!("{prefix}.{}", self.field),
            message: self.message,
        }
    }
}
