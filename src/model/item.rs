//! Items: as submitted, as claimed by a worker, as a processor's outcome, and as stored.

use super::status::ItemStatus;
use serde::Serialize;
use serde_json::Value;

/// One item as submitted.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// The user's own id for the item (target id, module id, task id …).
    pub key: String,
    /// The item's input, passed to the processor, as JSON text: a submission of a million
    /// items holds a million of these until they are stored, and the text is a fraction of
    /// the size of a parsed `Value` tree.
    pub payload: Box<serde_json::value::RawValue>,
}

impl NewItem {
    /// An item of this key and input.
    pub fn new(key: impl Into<String>, payload: Value) -> NewItem {
        NewItem {
            key: key.into(),
            payload: to_raw(&payload),
        }
    }

    /// An item whose input is already JSON text.
    pub fn raw(key: impl Into<String>, payload: Box<serde_json::value::RawValue>) -> NewItem {
        NewItem {
            key: key.into(),
            payload,
        }
    }
}

/// `value` as JSON text.
fn to_raw(value: &Value) -> Box<serde_json::value::RawValue> {
    // A `Value` always serializes, and its text is valid JSON.
    serde_json::value::to_raw_value(value).expect("a JSON value serializes")
}

/// A stored item, as read back from the database.
#[derive(Debug, Clone, Serialize)]
pub struct ItemRecord {
    /// Position in submission order, from 0.
    pub index: u32,
    /// The user's id for the item.
    pub key: String,
    /// Current status.
    pub status: ItemStatus,
    /// How many times it has been claimed.
    pub attempts: u32,
    /// The submitted input.
    pub payload: Value,
    /// The processor's result.
    pub result: Option<Value>,
    /// Error message, for failed items.
    pub error: Option<String>,
    /// Unix seconds of the last claim.
    pub started_at: Option<f64>,
    /// Unix seconds of the final result.
    pub finished_at: Option<f64>,
    /// The errors of earlier attempts (retried errors, manual retries), oldest first.
    pub attempt_errors: Vec<String>,
    /// The node that runs it, or ran its final attempt.
    pub node: Option<String>,
}

/// An item handed out to a worker.
#[derive(Debug, Clone)]
pub struct ClaimedItem {
    /// Owning job.
    pub job_id: String,
    /// Position in the job.
    pub index: u32,
    /// The user's id for the item.
    pub key: String,
    /// Input for the processor.
    pub payload: Value,
    /// 1 for the first run, more after crashes.
    pub attempt: u32,
}

/// What a processor made of one item.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemOutcome {
    /// Final status: succeeded, failed, skipped or cancelled.
    pub status: ItemStatus,
    /// The per-item result in the kind's own shape.
    pub result: Value,
    /// A one-line error for failed items.
    pub error: Option<String>,
    /// The failure was an error worth another attempt (a timeout, a crashed process, a
    /// transport failure, an LLM 5xx), not an ordinary outcome such as a failing test:
    /// the item is retried while its job's `max_attempts` allows.
    pub retryable: bool,
}

impl ItemOutcome {
    /// A successful item.
    pub fn succeeded(result: Value) -> Self {
        ItemOutcome {
            status: ItemStatus::Succeeded,
            result,
            error: None,
            retryable: false,
        }
    }

    /// A failed item, with its result and a short reason: an ordinary outcome, never
    /// retried.
    pub fn failed(result: Value, error: impl Into<String>) -> Self {
        ItemOutcome {
            status: ItemStatus::Failed,
            result,
            error: Some(error.into()),
            retryable: false,
        }
    }

    /// An item that failed by an error worth another attempt (see
    /// [`ItemOutcome::retryable`]).
    pub fn error(result: Value, error: impl Into<String>) -> Self {
        ItemOutcome {
            retryable: true,
            ..ItemOutcome::failed(result, error)
        }
    }

    /// An item deliberately not processed.
    pub fn skipped(result: Value) -> Self {
        ItemOutcome {
            status: ItemStatus::Skipped,
            result,
            error: None,
            retryable: false,
        }
    }

    /// An item stopped by cancellation.
    pub fn cancelled(result: Value) -> Self {
        ItemOutcome {
            status: ItemStatus::Cancelled,
            result,
            error: Some("cancelled".into()),
            retryable: false,
        }
    }
}

/// An item's outcome on its way to the store.
#[derive(Debug, Clone)]
pub struct FinishedItem {
    /// Owning job.
    pub job_id: String,
    /// Position in the job.
    pub index: u32,
    /// The item's id, for live events.
    pub key: String,
    /// What the processor made of it.
    pub outcome: ItemOutcome,
    /// Unix seconds when it finished.
    pub finished_at: f64,
    /// Which attempt this was (1 for the first run).
    pub attempt: u32,
    /// Set by the Supervisor when the outcome is an error its job retries: the item goes
    /// back to the queue, claimable from this time (Unix seconds), instead of finishing.
    pub retry_at: Option<f64>,
}
