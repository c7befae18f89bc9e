//! Submission: what turns a request body, a JSONL upload or a cron schedule's stored
//! template into a [`NewJob`](crate::model::NewJob), and the admission check every job passes before it is
//! stored. It knows nothing of HTTP: the API maps [`SubmissionError`] to its answers, and
//! the cron scheduler uses the same functions for its templates.

pub mod admission;
pub mod body;
pub mod fields;
pub mod jobs;
pub mod requests;
pub mod template;

pub use admission::{check_job, AdmissionRules, Refusal};
pub use body::{ndjson_body, parse_body, parse_items_body};
pub use jobs::*;
pub use requests::*;
pub use template::{template_job, tick_key};

use crate::model::FieldError;

/// Largest `parallel` a job may ask for.
pub const MAX_PARALLEL: i64 = 1000;
/// Most items one job may hold.
pub const MAX_ITEMS: usize = 1_000_000;
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Why a submission cannot be turned into a job.
#[derive(Debug, thiserror::Error)]
pub enum SubmissionError {
    /// The body is not JSON (or not text) at all.
    #[error("{0}")]
    Malformed(String),
    /// A field has a wrong type or value.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

impl SubmissionError {
    /// An error about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        SubmissionError::Invalid(FieldError::new(field, message))
    }
}
