//! Jobs: as submitted ([`NewJob`]), as stored ([`JobRecord`]), and their counters.

use super::item::NewItem;
use super::options::JobOptions;
use super::status::JobStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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

/// A job that passed admission ([`crate::submission::check_job`]): the job as submitted,
/// with the engine's options read from its `spec`, so nothing after admission reads them
/// from the JSON again.
#[derive(Debug, Clone)]
pub struct AdmittedJob {
    /// The job as submitted.
    pub job: NewJob,
    /// Its engine options, checked.
    pub options: JobOptions,
}

/// An admitted job reads as the job it wraps.
impl std::ops::Deref for AdmittedJob {
    type Target = NewJob;

    fn deref(&self) -> &NewJob {
        &self.job
    }
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
    /// The engine's options in `spec`, read once when the record was made.
    #[serde(skip)]
    pub options: JobOptions,
}

impl JobRecord {
    /// The record of `job` as [`crate::store::jobs::insert_job`] stores it.
    pub fn queued(id: &str, job: &AdmittedJob, created_at: f64) -> JobRecord {
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
            options: job.options.clone(),
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
    fn job_ids_have_the_seed_form() {
        let id = new_job_id("batch_validation");
        let hex = id.strip_prefix("batch_validation-").unwrap();
        assert_eq!(hex.len(), 12);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
