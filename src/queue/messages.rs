//! Every message exchanged by the actors, and the values they carry.

pub use crate::model::Counts;
use crate::model::{
    now, FinishedItem, ItemRecord, ItemStatus, JobRecord, JobStatus, NewJob, QueueStats,
};
use crate::processor::ProgressReporter;
use crate::store::job_control::CancelOutcome;
use crate::store::StoreError;
use actix::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why the engine refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No processor is registered for the job's kind.
    #[error("processor '{0}' is not available in this engine")]
    NoProcessor(String),
    /// The processor rejected the job's options or items.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, as a path into the request (`check_command`, `targets[3].path`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The engine is shutting down and takes no new work.
    #[error("the engine is shutting down")]
    ShuttingDown,
    /// The request conflicts with what is stored (an idempotency key used by another
    /// kind of job, a state that does not allow the change).
    #[error("{0}")]
    Conflict(String),
    /// An actor did not answer.
    #[error("engine actor unavailable: {0}")]
    Mailbox(#[from] actix::MailboxError),
}

impl From<crate::model::FieldError> for EngineError {
    fn from(e: crate::model::FieldError) -> Self {
        EngineError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<crate::submission::Refusal> for EngineError {
    fn from(r: crate::submission::Refusal) -> Self {
        match r {
            crate::submission::Refusal::NoProcessor(kind) => EngineError::NoProcessor(kind),
            crate::submission::Refusal::Invalid(e) => e.into(),
        }
    }
}

/// A job with its live progress, as the Supervisor answers reads.
#[derive(Debug, Clone)]
pub struct JobView {
    /// The stored job.
    pub record: JobRecord,
    /// Live progress from the Tracker while the job runs in this engine.
    pub live: Option<Progress>,
    /// A submission answered with the job its idempotency key already created.
    pub replayed: bool,
}

/// A page of jobs.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// The jobs on this page.
    pub jobs: Vec<JobView>,
    /// How many jobs match the filters.
    pub total: u64,
}

/// A page of one job's items.
#[derive(Debug, Clone)]
pub struct ItemPage {
    /// The items on this page, in submission order.
    pub items: Vec<ItemRecord>,
    /// How many items match the filter.
    pub total: u64,
}

/// Submit a new job; answers the stored job.
#[derive(Message)]
#[rtype(result = "Result<JobView, EngineError>")]
pub struct SubmitJob(pub NewJob);

/// Checks a job as [`SubmitJob`] would (every admission check,
/// [`crate::submission::check_job`]) without storing anything: cron schedules check their
/// job template with it.
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct ValidateJob(pub NewJob);

/// Read one job; `None` when unknown.
#[derive(Message)]
#[rtype(result = "Result<Option<JobView>, EngineError>")]
pub struct GetJob {
    /// The job id.
    pub job_id: String,
}

/// Read a page of jobs, newest first.
#[derive(Message)]
#[rtype(result = "Result<JobPage, EngineError>")]
pub struct ListJobs {
    /// Only jobs in this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs whose id, kind, idempotency key or metadata contains this text (any case).
    pub search: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Jobs to skip.
    pub offset: u64,
}

/// Read a page of a job's items; `None` when the job is unknown.
#[derive(Message)]
#[rtype(result = "Result<Option<ItemPage>, EngineError>")]
pub struct ListItems {
    /// The job id.
    pub job_id: String,
    /// Only items in this status.
    pub status: Option<ItemStatus>,
    /// Page size.
    pub limit: u32,
    /// Items to skip.
    pub offset: u64,
}

/// Read a page of a job's items with their stored results as JSON text, after an index;
/// `None` when the job is unknown.
#[derive(Message)]
#[rtype(result = "Result<Option<Vec<crate::store::results::ResultRow>>, EngineError>")]
pub struct ReadResults {
    /// The job id.
    pub job_id: String,
    /// Items with an index above this (-1 for the first page).
    pub after: i32,
    /// Page size.
    pub limit: u32,
}

/// Cancel a job and stop its running items.
#[derive(Message)]
#[rtype(result = "Result<CancelOutcome, EngineError>")]
pub struct CancelJob {
    /// The job id.
    pub job_id: String,
}

/// Pause (`paused: true`) or resume a job: running items finish, nothing new is claimed
/// while it is paused, and its claimed-but-not-started items go back to the queue.
#[derive(Message)]
#[rtype(result = "Result<crate::store::job_control::PauseOutcome, EngineError>")]
pub struct PauseJob {
    /// The job id.
    pub job_id: String,
    /// Pause, or resume.
    pub paused: bool,
}

/// Requeue a finished job's items of these statuses and reopen it.
#[derive(Message)]
#[rtype(result = "Result<crate::store::job_control::RetryOutcome, EngineError>")]
pub struct RetryJob {
    /// The job id.
    pub job_id: String,
    /// Which items: `failed` and/or `cancelled` (and `skipped`).
    pub statuses: Vec<ItemStatus>,
}

/// Pause or resume every job of a kind, present and future.
#[derive(Message)]
#[rtype(result = "Result<KindInfo, EngineError>")]
pub struct PauseKind {
    /// The kind.
    pub kind: String,
    /// Pause, or resume.
    pub paused: bool,
}

/// The registered kinds and what they are doing.
#[derive(Message)]
#[rtype(result = "Vec<KindInfo>")]
pub struct ListKinds;

/// One registered kind.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct KindInfo {
    /// The kind, e.g. `batch_validation`.
    pub kind: String,
    /// Most items of this kind running at once.
    pub limit: u32,
    /// Items running now.
    pub running: u32,
    /// Whether the kind is paused as a whole.
    pub paused: bool,
}

/// Count jobs per status.
#[derive(Message)]
#[rtype(result = "Result<QueueStats, EngineError>")]
pub struct GetStats;

/// Render the Prometheus metrics.
#[derive(Message)]
#[rtype(result = "Result<String, EngineError>")]
pub struct GetMetrics;

/// Check that the database answers.
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct Ping;

/// Stop claiming, let running items finish for `grace`, then stop them and put them back
/// in the queue. Answers once everything in flight is settled in the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    /// How long running items may keep going before they are stopped.
    pub grace: Duration,
}

/// What a Worker needs to know about a job to run its items.
pub struct JobContext {
    /// The job id.
    pub id: Arc<str>,
    /// The job's options.
    pub options: Arc<Value>,
    /// The secret values among its options, scrubbed from what its items produce.
    pub secrets: crate::secrets::Redactor,
    /// Its `item_timeout_seconds`, read once for all its items.
    pub item_timeout: Option<std::time::Duration>,
    /// Cancelled with the job (a child of the engine's shutdown token).
    pub cancel: CancellationToken,
    /// Where processors send progress notes.
    pub progress: ProgressReporter,
}

/// Run these claimed items (Supervisor → Worker).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RunItems {
    /// The job they belong to.
    pub job: Arc<JobContext>,
    /// The claimed items.
    pub items: Vec<crate::model::ClaimedItem>,
}

/// An item finished, was cancelled or panicked (Worker → Supervisor).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ItemFinished(pub FinishedItem);

/// Live progress events (Supervisor and processors → Tracker).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub enum ProgressUpdate {
    /// A job started running in this engine.
    Started {
        /// The job id.
        job_id: Arc<str>,
        /// Its stored counters at that moment.
        counts: Counts,
        /// Unix seconds of its first claim.
        started_at: f64,
    },
    /// Counters after a commit.
    Counts {
        /// The job id.
        job_id: Arc<str>,
        /// The committed counters.
        counts: Counts,
    },
    /// What the job is doing now.
    CurrentItem {
        /// The job id.
        job_id: Arc<str>,
        /// A short note.
        note: String,
    },
    /// The tokens the job's items reported so far (LLM kinds).
    Tokens {
        /// The job id.
        job_id: Arc<str>,
        /// Prompt and completion tokens, summed.
        usage: crate::agent::llm::Usage,
    },
    /// Items whose outcomes were just committed (sent only while someone listens).
    ItemsFinished {
        /// The job id.
        job_id: Arc<str>,
        /// Index, id and final status of each.
        items: Vec<(u32, String, ItemStatus)>,
    },
    /// The job reached a terminal state; its live entry can go.
    Finished {
        /// The job id.
        job_id: Arc<str>,
    },
}

/// Subscribe to events of one job, or of all jobs (→ Tracker, through the Supervisor).
#[derive(Message)]
#[rtype(result = "tokio::sync::mpsc::Receiver<TrackerEvent>")]
pub struct Subscribe {
    /// The job to follow; `None` for every job.
    pub job_id: Option<String>,
}

/// Read live progress of some jobs (→ Tracker).
#[derive(Message)]
#[rtype(result = "HashMap<String, Progress>")]
pub struct GetProgress {
    /// The jobs asked about.
    pub job_ids: Vec<String>,
}

/// Changes other nodes made to the shared queue, announced by `LISTEN/NOTIFY`, found by a
/// rescue, or asked for after a reconnect: the Supervisor reads them and follows.
#[derive(Message, Debug, Default)]
#[rtype(result = "()")]
pub struct ClusterSync {
    /// Read every open job (a full sync).
    pub all: bool,
    /// Read which kinds are paused.
    pub kinds: bool,
    /// A concurrency group's slot was freed: try again to take one.
    pub groups: bool,
    /// Read these jobs.
    pub jobs: Vec<String>,
}

/// This node was declared dead by another one (its heartbeat lapsed) and has registered
/// again: the claims and group slots it held were rescued and are no longer its own.
#[derive(Message, Debug, Default)]
#[rtype(result = "()")]
pub struct NodeLost;

/// A progress snapshot, in the seed's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Progress {
    /// Items in the job.
    pub total: u64,
    /// Items that reached succeeded, failed or skipped.
    pub processed: u64,
    /// Items that succeeded.
    pub successful: u64,
    /// Items that failed.
    pub failed: u64,
    /// Items skipped.
    pub skipped: u64,
    /// Items cancelled.
    pub cancelled: u64,
    /// processed / total, 0–100.
    pub percentage: f64,
    /// Seconds since the job started.
    pub elapsed_seconds: f64,
    /// Processing rate since the job started.
    pub items_per_second: f64,
    /// Estimate from the current rate; `null` until there is one.
    pub estimated_remaining_seconds: Option<f64>,
    /// What the job is doing now, as its processor last said.
    pub current_item: Option<String>,
    /// Prompt tokens its items' results reported (`batch_llm`, agent tasks; absent for
    /// other kinds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    /// Completion tokens its items' results reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
}

impl Progress {
    /// Computes a snapshot from counters and the job's start time.
    pub fn compute(
        counts: Counts,
        started_at: Option<f64>,
        until: f64,
        current_item: Option<String>,
    ) -> Progress {
        let elapsed = started_at.map(|s| (until - s).max(0.0)).unwrap_or(0.0);
        let rate = if elapsed > 0.0 {
            counts.processed as f64 / elapsed
        } else {
            0.0
        };
        let remaining = counts
            .total
            .saturating_sub(counts.processed + counts.cancelled);
        let eta = if remaining == 0 {
            Some(0.0)
        } else if rate > 0.0 {
            Some(remaining as f64 / rate)
        } else {
            None
        };
        Progress {
            total: counts.total,
            processed: counts.processed,
            successful: counts.succeeded,
            failed: counts.failed,
            skipped: counts.skipped,
            cancelled: counts.cancelled,
            percentage: percentage(counts.processed, counts.total),
            elapsed_seconds: round3(elapsed),
            items_per_second: round3(rate),
            estimated_remaining_seconds: eta.map(round3),
            current_item,
            prompt_tokens: None,
            completion_tokens: None,
        }
    }

    /// The snapshot with the job's token totals.
    pub fn with_tokens(mut self, usage: Option<crate::agent::llm::Usage>) -> Progress {
        if let Some(u) = usage {
            self.prompt_tokens = Some(u.prompt_tokens);
            self.completion_tokens = Some(u.completion_tokens);
        }
        self
    }

    /// The snapshot a stored job implies, for jobs the Tracker does not follow.
    pub fn from_record(job: &JobRecord) -> Progress {
        let until = job.completed_at.unwrap_or_else(now);
        Progress::compute(job.counts(), job.started_at, until, None)
    }
}

/// processed / total as a percentage with two decimals.
pub fn percentage(processed: u64, total: u64) -> f64 {
    if total == 0 {
        return 100.0;
    }
    (processed as f64 * 10000.0 / total as f64).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// One event for a subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerEvent {
    /// Increasing over the Tracker's life, for the SSE `id:` field.
    pub id: u64,
    /// The job it is about.
    pub job_id: Arc<str>,
    /// What happened.
    pub kind: TrackerEventKind,
}

/// What a [`TrackerEvent`] says.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerEventKind {
    /// A progress snapshot.
    Progress(Progress),
    /// An item reached its final state (committed).
    Item {
        /// Its index in the job.
        index: u32,
        /// Its id.
        key: String,
        /// Its final status.
        status: crate::model::ItemStatus,
    },
    /// The job reached a terminal state; read it from the store for its final form.
    End,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_rate_and_eta_from_counters() {
        let counts = Counts {
            total: 100,
            processed: 25,
            succeeded: 20,
            failed: 5,
            ..Counts::default()
        };
        let p = Progress::compute(counts, Some(1000.0), 1010.0, Some("x".into()));
        assert_eq!(p.percentage, 25.0);
        assert_eq!(p.items_per_second, 2.5);
        assert_eq!(p.estimated_remaining_seconds, Some(30.0));
        assert_eq!(p.successful, 20);
        assert_eq!(p.current_item.as_deref(), Some("x"));
    }

    #[test]
    fn progress_before_start_has_no_eta() {
        let counts = Counts {
            total: 3,
            ..Counts::default()
        };
        let p = Progress::compute(counts, None, 5.0, None);
        assert_eq!(p.percentage, 0.0);
        assert_eq!(p.estimated_remaining_seconds, None);
        assert_eq!(percentage(1, 3), 33.33);
    }
}
