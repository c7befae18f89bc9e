//! Response bodies, in the seed's shapes.

use crate::actors::messages::JobView;
use crate::actors::tracker::Progress;
use crate::model::{ItemRecord, JobStatus};
use serde::Serialize;
use serde_json::{Map, Value};

/// The seed's `JobResponse`.
#[derive(Debug, Serialize)]
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
    pub result: Option<std::sync::Arc<serde_json::value::RawValue>>,
    /// Why a failed job failed.
    pub error: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
    /// Unix seconds.
    pub started_at: Option<f64>,
    /// Unix seconds.
    pub completed_at: Option<f64>,
    /// User metadata plus `progress` (the tracker's fields).
    pub metadata: Value,
    /// The job's options as submitted (without its items).
    pub options: Value,
}

impl From<JobView> for JobResponse {
    fn from(view: JobView) -> Self {
        let JobView { record, live } = view;
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
            options: record.spec,
        }
    }
}

/// `GET /batch/jobs`.
#[derive(Debug, Serialize)]
pub struct JobList {
    /// The page.
    pub jobs: Vec<JobResponse>,
    /// Jobs matching the filters.
    pub total: u64,
}

/// One item in `GET /batch/jobs/{id}/items`.
#[derive(Debug, Serialize)]
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
    /// The processor's result.
    pub result: Option<Value>,
    /// Error message.
    pub error: Option<String>,
    /// Unix seconds.
    pub started_at: Option<f64>,
    /// Unix seconds.
    pub finished_at: Option<f64>,
}

impl From<ItemRecord> for ItemResponse {
    fn from(r: ItemRecord) -> Self {
        ItemResponse {
            index: r.index,
            id: r.key,
            status: r.status,
            attempts: r.attempts,
            input: r.payload,
            result: r.result,
            error: r.error,
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// `GET /batch/jobs/{id}/items`.
#[derive(Debug, Serialize)]
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
