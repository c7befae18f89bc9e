//! Row structs for Diesel and their conversion into domain records.

use super::schema::{job_items, jobs};
use super::StoreError;
use crate::model::{ItemRecord, ItemStatus, JobOptions, JobRecord, JobStatus};
use diesel::prelude::*;
use serde_json::Value;

pub(crate) fn parse_json(column: &'static str, text: &str) -> Result<Value, StoreError> {
    serde_json::from_str(text).map_err(|source| StoreError::Json { column, source })
}

fn parse_status<T: std::str::FromStr<Err = crate::model::UnknownStatus>>(
    column: &'static str,
    text: &str,
) -> Result<T, StoreError> {
    text.parse::<T>().map_err(|e| StoreError::Json {
        column,
        source: serde::de::Error::custom(e.to_string()),
    })
}

/// A `jobs` row.
#[derive(Queryable, Selectable)]
#[diesel(table_name = jobs, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct JobRow {
    pub id: String,
    pub kind: String,
    pub status: String,
    pub spec: String,
    pub parallel: i32,
    pub total: i32,
    pub processed: i32,
    pub succeeded: i32,
    pub failed: i32,
    pub skipped: i32,
    pub cancelled: i32,
    pub result: Option<String>,
    pub error: Option<String>,
    pub metadata: String,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub completed_at: Option<f64>,
    pub priority: i32,
    pub run_at: Option<f64>,
    pub idempotency_key: Option<String>,
    pub paused_at: Option<f64>,
}

impl JobRow {
    pub fn into_record(self) -> Result<JobRecord, StoreError> {
        let status = parse_status::<JobStatus>("jobs.status", &self.status)?;
        let spec = parse_json("jobs.spec", &self.spec)?;
        Ok(JobRecord {
            status,
            options: JobOptions::stored(&spec),
            spec,
            result: self
                .result
                .map(|r| {
                    serde_json::value::RawValue::from_string(r)
                        .map_err(|source| StoreError::Json {
                            column: "jobs.result",
                            source,
                        })
                        .map(std::sync::Arc::from)
                })
                .transpose()?,
            metadata: parse_json("jobs.metadata", &self.metadata)?,
            id: self.id,
            kind: self.kind,
            parallel: self.parallel.max(1) as u32,
            total: self.total as u64,
            processed: self.processed as u64,
            succeeded: self.succeeded as u64,
            failed: self.failed as u64,
            skipped: self.skipped as u64,
            cancelled: self.cancelled as u64,
            error: self.error,
            created_at: self.created_at,
            started_at: self.started_at,
            completed_at: self.completed_at,
            priority: self.priority,
            run_at: self.run_at,
            idempotency_key: self.idempotency_key,
            paused_at: self.paused_at,
        })
    }
}

/// A `job_items` row, without the columns only the queue itself reads.
#[derive(Queryable, Selectable)]
#[diesel(table_name = job_items, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub(crate) struct ItemRow {
    pub idx: i32,
    pub key: String,
    pub payload: String,
    pub status: String,
    pub attempts: i32,
    pub result: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<f64>,
    pub finished_at: Option<f64>,
    pub attempt_errors: Option<String>,
    pub node_id: Option<String>,
}

impl ItemRow {
    pub fn into_record(self) -> Result<ItemRecord, StoreError> {
        Ok(ItemRecord {
            index: self.idx as u32,
            status: parse_status::<ItemStatus>("job_items.status", &self.status)?,
            payload: parse_json("job_items.payload", &self.payload)?,
            result: self
                .result
                .as_deref()
                .map(|r| parse_json("job_items.result", r))
                .transpose()?,
            key: self.key,
            attempts: self.attempts.max(0) as u32,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
            node: self.node_id,
            attempt_errors: match self.attempt_errors.as_deref() {
                None => Vec::new(),
                Some(text) => serde_json::from_str(text).map_err(|source| StoreError::Json {
                    column: "job_items.attempt_errors",
                    source,
                })?,
            },
        })
    }
}

/// A new `jobs` row.
#[derive(Insertable)]
#[diesel(table_name = jobs)]
pub(crate) struct NewJobRow<'a> {
    pub id: &'a str,
    pub kind: &'a str,
    pub status: &'a str,
    pub spec: String,
    pub parallel: i32,
    pub total: i32,
    pub metadata: String,
    pub created_at: f64,
    pub priority: i32,
    pub run_at: Option<f64>,
    pub idempotency_key: Option<&'a str>,
}

/// A new `job_items` row.
#[derive(Insertable)]
#[diesel(table_name = job_items)]
pub(crate) struct NewItemRow<'a> {
    pub job_id: &'a str,
    pub idx: i32,
    pub key: &'a str,
    pub payload: &'a str,
    pub status: &'a str,
    pub max_attempts: i32,
}
