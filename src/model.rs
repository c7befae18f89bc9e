//! Domain types shared by the store, the actors, the processors and the API.
//!
//! Status enums are the only representation of state inside the core; their string
//! forms exist for the database and the wire.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Current time as unix seconds, the unit of every stored and returned timestamp.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A string that names a state but is not one of the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}' (expected one of {})", .expected.trim_end_matches(", "))]
pub struct UnknownStatus {
    /// Which kind of status was being parsed.
    pub what: &'static str,
    /// The rejected value.
    pub value: String,
    /// The allowed values, comma separated.
    pub expected: &'static str,
}

macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownStatus {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($($text, ", "),+),
                    }),
                }
            }
        }
    };
}

status_enum!(
    /// Lifecycle of a job: `queued → running → completed | failed | cancelled`.
    JobStatus, "job status", {
        /// Submitted, no item claimed yet.
        Queued => "queued",
        /// At least one item has been claimed.
        Running => "running",
        /// Every item reached a final state (some may have failed).
        Completed => "completed",
        /// The job could not run at all (no processor, invalid at run time).
        Failed => "failed",
        /// Cancelled by a user; terminal, never overwritten.
        Cancelled => "cancelled",
        /// Its `deadline` passed first: the finished results are kept, the rest of its
        /// items are cancelled; terminal.
        Expired => "expired",
    }
);

impl JobStatus {
    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
        )
    }
}

status_enum!(
    /// Lifecycle of an item: `queued → running → succeeded | failed | skipped | cancelled`.
    ItemStatus, "item status", {
        /// Waiting to be claimed.
        Queued => "queued",
        /// Claimed by a worker.
        Running => "running",
        /// Processed successfully.
        Succeeded => "succeeded",
        /// Processed, with a failing outcome or an error.
        Failed => "failed",
        /// Deliberately not processed.
        Skipped => "skipped",
        /// Stopped or never started because its job was cancelled.
        Cancelled => "cancelled",
    }
);

impl ItemStatus {
    /// Whether the item holds its final result.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ItemStatus::Queued | ItemStatus::Running)
    }
}

/// A job identifier in the seed's form, `{kind}-{12 hex}`.
pub fn new_job_id(kind: &str) -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{kind}-{}", &hex[..12])
}

/// A job as submitted, before it is stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Processor kind, e.g. `batch_validation`.
    pub kind: String,
    /// Job options handed to every item's processor call.
    pub spec: Value,
    /// Maximum items of this job running at once.
    pub parallel: u32,
    /// Free-form user metadata.
    pub metadata: Value,
    /// The items, in submission order.
    pub items: Vec<NewItem>,
    /// When and in what order it runs, and its idempotency key.
    pub schedule: JobSchedule,
}

/// Lowest and highest job priority.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;

/// When and in what order a job runs, and how a resubmission is recognized.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobSchedule {
    /// Higher runs first, within [`PRIORITY_RANGE`]; 0 by default.
    pub priority: i32,
    /// Unix seconds before which none of the job's items is claimed.
    pub run_at: Option<f64>,
    /// A submission with a key already used returns the job created with it (while that
    /// job is retained) instead of creating a duplicate.
    pub idempotency_key: Option<String>,
}

/// One item as submitted.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// The user's own id for the item (target id, module id, task id …).
    pub key: String,
    /// The item's input, passed to the processor.
    pub payload: Value,
}

/// A stored job, as read back from the database.
#[derive(Debug, Clone, Serialize)]
pub struct JobRecord {
    /// `{kind}-{12 hex}`.
    pub id: String,
    /// Processor kind.
    pub kind: String,
    /// Current status.
    pub status: JobStatus,
    /// Job options.
    pub spec: Value,
    /// Per-job concurrency.
    pub parallel: u32,
    /// Number of items.
    pub total: u64,
    /// Items that reached succeeded, failed or skipped.
    pub processed: u64,
    /// Items that succeeded.
    pub succeeded: u64,
    /// Items that failed.
    pub failed: u64,
    /// Items that were skipped.
    pub skipped: u64,
    /// Items cancelled with their job.
    pub cancelled: u64,
    /// The built result, once the last item finished, as stored: kept as JSON text so a
    /// result of a million entries is copied, not parsed, on its way to a client.
    pub result: Option<std::sync::Arc<serde_json::value::RawValue>>,
    /// Why the job failed, for `failed` jobs.
    pub error: Option<String>,
    /// User metadata.
    pub metadata: Value,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds of the first claim.
    pub started_at: Option<f64>,
    /// Unix seconds of the terminal transition.
    pub completed_at: Option<f64>,
    /// Higher runs first.
    pub priority: i32,
    /// Unix seconds before which nothing is claimed.
    pub run_at: Option<f64>,
    /// The submission's idempotency key.
    pub idempotency_key: Option<String>,
    /// Unix seconds since when the job is paused (nothing new is claimed), if it is.
    pub paused_at: Option<f64>,
}

impl JobRecord {
    /// The record of `job` as [`crate::store::queries::insert_job`] stores it.
    pub fn queued(id: &str, job: &NewJob, created_at: f64) -> JobRecord {
        JobRecord {
            id: id.to_string(),
            kind: job.kind.clone(),
            status: JobStatus::Queued,
            spec: job.spec.clone(),
            parallel: job.parallel.max(1),
            total: job.items.len() as u64,
            processed: 0,
            succeeded: 0,
            failed: 0,
            skipped: 0,
            cancelled: 0,
            result: None,
            error: None,
            metadata: job.metadata.clone(),
            created_at,
            started_at: None,
            completed_at: None,
            priority: job.schedule.priority,
            run_at: job.schedule.run_at,
            idempotency_key: job.schedule.idempotency_key.clone(),
            paused_at: None,
        }
    }

    /// The result parsed into a value (`{summary, results, elapsed_seconds}`).
    pub fn result_value(&self) -> Option<Value> {
        self.result
            .as_ref()
            .and_then(|r| serde_json::from_str(r.get()).ok())
    }

    /// The job's item counters.
    pub fn counts(&self) -> Counts {
        Counts {
            total: self.total,
            processed: self.processed,
            succeeded: self.succeeded,
            failed: self.failed,
            skipped: self.skipped,
            cancelled: self.cancelled,
        }
    }
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

/// How a job retries items that fail by an error ([`ItemOutcome::retryable`]): job options
/// `max_attempts` (1–50, default 1: no retry), `retry_delay_seconds` (the first delay,
/// default 1) and `retry_max_delay_seconds` (the cap, default 300). The delay before
/// attempt n+1 is `min(delay × 2^(n−1), cap)`, scaled by a random factor in [0.5, 1] so
/// that items failing together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts an item gets, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt, in seconds.
    pub delay: f64,
    /// Longest delay, in seconds.
    pub max_delay: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            delay: 1.0,
            max_delay: 300.0,
        }
    }
}

/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 50;

impl RetryPolicy {
    /// The policy in a job's options, checked: the error names the option.
    pub fn from_options(options: &Value) -> Result<RetryPolicy, (&'static str, String)> {
        let mut p = RetryPolicy::default();
        match options.get("max_attempts") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(MAX_ATTEMPTS)).contains(&n) => p.max_attempts = n as u32,
                _ => {
                    return Err((
                        "max_attempts",
                        format!("must be an integer between 1 and {MAX_ATTEMPTS}, got {v}"),
                    ))
                }
            },
        }
        let seconds =
            |name: &'static str, max: f64| -> Result<Option<f64>, (&'static str, String)> {
                match options.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => match v.as_f64() {
                        Some(s) if s > 0.0 && s <= max => Ok(Some(s)),
                        _ => Err((
                            name,
                            format!("must be a number of seconds in (0, {max}], got {v}"),
                        )),
                    },
                }
            };
        if let Some(d) = seconds("retry_delay_seconds", 3600.0)? {
            p.delay = d;
        }
        if let Some(d) = seconds("retry_max_delay_seconds", 86_400.0)? {
            p.max_delay = d;
        }
        if p.max_delay < p.delay {
            return Err((
                "retry_max_delay_seconds",
                format!(
                    "must not be below retry_delay_seconds ({} < {})",
                    p.max_delay, p.delay
                ),
            ));
        }
        Ok(p)
    }

    /// Seconds to wait after failed attempt `attempt` (1-based); `jitter` in [0, 1].
    pub fn backoff(&self, attempt: u32, jitter: f64) -> f64 {
        let exp = 2f64.powi(attempt.saturating_sub(1).min(60) as i32);
        (self.delay * exp).min(self.max_delay) * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A time given as an RFC 3339 timestamp (`2026-11-26T18:00:00Z`, any offset) or as Unix
/// seconds, between 1970 and 9999; `None` when it is neither.
pub fn parse_timestamp(v: &Value) -> Option<f64> {
    let t = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => match s.trim().parse::<f64>() {
            // Unix seconds written as text (a query string has nothing else).
            Ok(t) => t,
            Err(_) => {
                let dt = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
                dt.timestamp() as f64 + f64::from(dt.timestamp_subsec_micros()) / 1e6
            }
        },
        _ => return None,
    };
    (t.is_finite() && (0.0..=253_402_300_799.0).contains(&t)).then_some(t)
}

/// The job option `deadline`: when it passes, the job's unfinished items are cancelled
/// and the job ends `expired`, its finished results kept.
pub fn deadline(options: &Value) -> Result<Option<f64>, (String, String)> {
    match options.get("deadline") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_timestamp(v).map(Some).ok_or_else(|| {
            (
                "deadline".to_string(),
                format!(
                    "cannot read {v} as a time: expected an RFC 3339 timestamp such as \
                     \"2026-11-26T18:00:00Z\" or Unix seconds"
                ),
            )
        }),
    }
}

/// Longest `item_timeout_seconds` a job may set (a week).
pub const MAX_ITEM_TIMEOUT_SECONDS: f64 = 7.0 * 86_400.0;

/// The job option `item_timeout_seconds`: a bound on every item of any kind, enforced by
/// the engine around the processor (kinds may have their own, finer timeouts).
pub fn item_timeout(options: &Value) -> Option<std::time::Duration> {
    options
        .get("item_timeout_seconds")
        .and_then(Value::as_f64)
        .filter(|s| *s > 0.0 && *s <= MAX_ITEM_TIMEOUT_SECONDS)
        .map(std::time::Duration::from_secs_f64)
}

/// Checks `item_timeout_seconds`.
pub fn check_item_timeout(options: &Value) -> Result<(), (String, String)> {
    match options.get("item_timeout_seconds") {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= MAX_ITEM_TIMEOUT_SECONDS => Ok(()),
            _ => Err((
                "item_timeout_seconds".into(),
                format!("must be a number of seconds in (0, {MAX_ITEM_TIMEOUT_SECONDS}], got {v}"),
            )),
        },
    }
}

/// A job's dependencies: job option `depends_on` (ids of jobs that must complete first)
/// and `run_on_failure` (run even when one of them failed or was cancelled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// The jobs waited for.
    pub jobs: Vec<String>,
    /// Run anyway when one of them did not complete.
    pub run_on_failure: bool,
}

/// Most jobs one job may depend on.
pub const MAX_DEPENDENCIES: usize = 1000;

impl Dependencies {
    /// The dependencies in a job's options, checked for shape (existence is checked when
    /// the job is stored); the error names the option.
    pub fn from_options(options: &Value) -> Result<Dependencies, (String, String)> {
        let mut deps = Dependencies::default();
        match options.get("depends_on") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ids)) if ids.len() <= MAX_DEPENDENCIES => {
                for (i, id) in ids.iter().enumerate() {
                    match id.as_str() {
                        Some(s) if !s.trim().is_empty() => {
                            if !deps.jobs.iter().any(|d| d == s) {
                                deps.jobs.push(s.to_string());
                            }
                        }
                        _ => {
                            return Err((
                                format!("depends_on[{i}]"),
                                format!("must be a job id, got {id}"),
                            ))
                        }
                    }
                }
            }
            Some(v) => {
                return Err((
                    "depends_on".into(),
                    format!("must be a list of at most {MAX_DEPENDENCIES} job ids, got {v}"),
                ))
            }
        }
        match options.get("run_on_failure") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => deps.run_on_failure = *b,
            Some(v) => {
                return Err((
                    "run_on_failure".into(),
                    format!("must be true or false, got {v}"),
                ))
            }
        }
        Ok(deps)
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

/// A job's item counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Items in the job.
    pub total: u64,
    /// Succeeded + failed + skipped.
    pub processed: u64,
    /// Succeeded items.
    pub succeeded: u64,
    /// Failed items.
    pub failed: u64,
    /// Skipped items.
    pub skipped: u64,
    /// Cancelled items.
    pub cancelled: u64,
}

/// Counts of jobs per status, the answer of `GET /batch/stats`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct QueueStats {
    /// All jobs.
    pub total: u64,
    /// Jobs waiting.
    pub queued: u64,
    /// Jobs running.
    pub running: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Jobs whose deadline passed.
    pub expired: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_reject_unknown_values() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), *s);
        }
        for s in ItemStatus::ALL {
            assert_eq!(s.as_str().parse::<ItemStatus>().unwrap(), *s);
        }
        let err = "bogus".parse::<JobStatus>().unwrap_err();
        assert!(err.to_string().contains("'bogus'"));
        assert!(err.to_string().contains("cancelled"));
    }

    #[test]
    fn job_ids_have_the_seed_form() {
        let id = new_job_id("batch_validation");
        let hex = id.strip_prefix("batch_validation-").unwrap();
        assert_eq!(hex.len(), 12);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
