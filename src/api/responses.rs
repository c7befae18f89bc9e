//! Response bodies, in the seed's shapes.

use crate::model::{ItemRecord, JobStatus};
use crate::queue::messages::JobView;
use crate::queue::tracker::Progress;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The seed's `JobResponse`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "job_id": "batch_validation-3f2a9c1d8e7b", "type": "batch_validation", "status": "completed",
    "progress": 100.0,
    "result": {"summary": {"total": 1, "successful": 1, "failed": 0, "skipped": 0, "cancelled": 0},
               "results": [{"target_id": "a", "status": "passed", "exit_code": 0}],
               "elapsed_seconds": 0.12},
    "error": null, "created_at": 1764150000.0, "started_at": 1764150000.01,
    "completed_at": 1764150000.13,
    "metadata": {"progress": {"total": 1, "processed": 1, "successful": 1, "failed": 0,
        "skipped": 0, "cancelled": 0, "percentage": 100.0, "elapsed_seconds": 0.12,
        "items_per_second": 8.3, "estimated_remaining_seconds": 0.0, "current_item": null}},
    "options": {"check_command": "true", "parallel": 5}
}))]
pub struct JobResponse {
    /// `{kind}-{12 hex}`.
    pub job_id: String,
    /// The processor kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Job status.
    pub status: JobStatus,
    /// Percentage of items processed, 0–100.
    pub progress: f64,
    /// `{summary, results, elapsed_seconds}` once finished.
    #[schema(value_type = Option<Object>)]
    pub result: Option<std::sync::Arc<serde_json::value::RawValue>>,
    /// Why a failed job failed.
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds.
    pub started_at: Option<f64>,
    /// Unix seconds.
    pub completed_at: Option<f64>,
    /// User metadata plus `progress` (a [`Progress`] snapshot).
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// The job's options as submitted (without its items).
    #[schema(value_type = Object)]
    pub options: Value,
    /// Higher runs first (−1000…1000).
    pub priority: i32,
    /// Unix seconds before which nothing of the job runs, if it was scheduled.
    pub run_at: Option<f64>,
    /// The key that makes resubmissions return this job.
    pub idempotency_key: Option<String>,
    /// Whether the job is paused: its running items finish, nothing new starts.
    pub paused: bool,
}

impl From<JobView> for JobResponse {
    fn from(view: JobView) -> Self {
        let JobView { record, live, .. } = view;
        let progress = live.unwrap_or_else(|| Progress::from_record(&record));
        let mut metadata = match record.metadata {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        metadata.insert(
            "progress".into(),
            serde_json::to_value(&progress).unwrap_or(Value::Null),
        );
        JobResponse {
            job_id: record.id,
            kind: record.kind,
            status: record.status,
            progress: progress.percentage,
            result: record.result,
            error: record.error,
            created_at: record.created_at,
            started_at: record.started_at,
            completed_at: record.completed_at,
            metadata: Value::Object(metadata),
            options: crate::secrets::mask_secrets(record.spec),
            priority: record.priority,
            run_at: record.run_at,
            idempotency_key: record.idempotency_key,
            paused: record.paused_at.is_some(),
        }
    }
}

/// `GET /batch/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// The page.
    pub jobs: Vec<JobResponse>,
    /// Jobs matching the filters.
    pub total: u64,
}

/// One item in `GET /batch/jobs/{id}/items`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemResponse {
    /// Position in the job, from 0.
    pub index: u32,
    /// The user's id for the item.
    pub id: String,
    /// Item status.
    pub status: crate::model::ItemStatus,
    /// Times claimed.
    pub attempts: u32,
    /// The submitted input.
    pub input: Value,
    /// The processor's result (its shape depends on the kind).
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Error message.
    pub error: Option<String>,
    /// Unix seconds.
    pub started_at: Option<f64>,
    /// Unix seconds.
    pub finished_at: Option<f64>,
    /// The errors of earlier attempts, oldest first.
    pub attempt_errors: Vec<String>,
    /// The engine node that runs the item, or ran its final attempt (`null` while queued).
    pub node: Option<String>,
}

impl From<ItemRecord> for ItemResponse {
    fn from(r: ItemRecord) -> Self {
        ItemResponse {
            index: r.index,
            id: r.key,
            status: r.status,
            attempts: r.attempts,
            input: crate::secrets::mask_secrets(r.payload),
            result: r.result,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
            attempt_errors: r.attempt_errors,
            node: r.node,
        }
    }
}

/// `GET /batch/jobs/{id}/items`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ItemList {
    /// The job.
    pub job_id: String,
    /// The page.
    pub items: Vec<ItemResponse>,
    /// Items matching the filter.
    pub total: u64,
    /// Page size used.
    pub limit: u32,
    /// Offset used.
    pub offset: u64,
}

/// `DELETE /batch/jobs/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelResponse {
    /// Always `cancelled`.
    pub status: JobStatus,
    /// The job.
    pub job_id: String,
}

/// `GET /health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok` when the engine and its database answer; `degraded` (with HTTP 503) when
    /// the last database write met a storage fault.
    pub status: String,
    /// Why the status is `degraded`: the storage fault and the database it hit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The server's version.
    pub version: String,
    /// This engine node's id.
    pub node_id: String,
    /// The sandbox commands run in: `bwrap` or `none`.
    pub sandbox: String,
}

/// `GET /batch/stats`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsResponse {
    /// Jobs per status.
    pub stats: crate::model::QueueStats,
}

/// One line of `GET /batch/jobs/{id}/results.jsonl` (documentation of the line format;
/// the lines are written directly from stored text).
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultLine {
    /// The item's id (its `custom_id` when submitted as JSONL).
    pub custom_id: String,
    /// Position in the job, from 0.
    pub index: u32,
    /// Item status.
    pub status: crate::model::ItemStatus,
    /// The processor's result.
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Error message.
    pub error: Option<String>,
}

/// `GET /batch/kinds`.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindList {
    /// Every registered kind, by name.
    pub kinds: Vec<crate::queue::messages::KindInfo>,
    /// The sandbox the kinds' commands run in: `bwrap` or `none`.
    pub sandbox: String,
}

/// `POST /batch/jobs/{id}/retry`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RetryResponse {
    /// Items put back in the queue.
    pub requeued: u64,
    /// The reopened job.
    pub job: JobResponse,
}
