//! Reads the dashboard draws from: a job's items finished per time bucket and its webhook
//! deliveries. Both go straight to the store (they are reads of stored rows, with nothing
//! of the Supervisor's live state), and the bucketing happens in SQL so a job of any size
//! costs one grouped scan of its own items, not a load of every item.

use super::Engine;
use crate::queue::messages::EngineError;
use crate::store::Conn;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable, Text};

/// One bucket of a job's timeline: the items that finished in
/// `[start, start + bucket_seconds)`, by outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TimelineBucket {
    /// Unix seconds where the bucket starts (a multiple of `bucket_seconds`).
    pub start: f64,
    /// Items that finished `succeeded` in the bucket.
    pub succeeded: u64,
    /// Items that finished `failed` in the bucket.
    pub failed: u64,
    /// Items that finished otherwise (`skipped`, `cancelled`) in the bucket.
    pub other: u64,
}

#[derive(QueryableByName)]
struct BucketRow {
    #[diesel(sql_type = BigInt)]
    bucket: i64,
    #[diesel(sql_type = BigInt)]
    succeeded: i64,
    #[diesel(sql_type = BigInt)]
    failed: i64,
    #[diesel(sql_type = BigInt)]
    other: i64,
}

/// One webhook delivery of a job (the payload is not included: it is the job itself).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema, QueryableByName)]
pub struct WebhookDelivery {
    /// The delivery's id.
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    /// Where it is posted.
    #[diesel(sql_type = Text)]
    pub url: String,
    /// Attempts made so far.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    /// Unix seconds of the next attempt, while it is still being delivered.
    #[diesel(sql_type = Nullable<Double>)]
    pub next_attempt_at: Option<f64>,
    /// What the last failed attempt answered.
    #[diesel(sql_type = Nullable<Text>)]
    pub last_error: Option<String>,
    /// Unix seconds.
    #[diesel(sql_type = Double)]
    pub created_at: f64,
    /// Unix seconds of the attempt the receiver accepted.
    #[diesel(sql_type = Nullable<Double>)]
    pub delivered_at: Option<f64>,
    /// Unix seconds when the attempts ran out.
    #[diesel(sql_type = Nullable<Double>)]
    pub given_up_at: Option<f64>,
}

/// The timeline's grouped scan, per backend: the bucket is `floor(finished_at / n)`
/// (finish times are positive, so SQLite's truncating cast is a floor).
fn timeline_sql(pg: bool) -> &'static str {
    if pg {
        "SELECT floor(finished_at / $1)::bigint AS bucket, \
                SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END)::bigint AS succeeded, \
                SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END)::bigint AS failed, \
                SUM(CASE WHEN status IN ('skipped', 'cancelled') THEN 1 ELSE 0 END)::bigint AS other \
         FROM job_items WHERE job_id = $2 AND finished_at IS NOT NULL \
         GROUP BY 1 ORDER BY 1"
    } else {
        "SELECT CAST(finished_at / ? AS INTEGER) AS bucket, \
                SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END) AS succeeded, \
                SUM(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed, \
                SUM(CASE WHEN status IN ('skipped', 'cancelled') THEN 1 ELSE 0 END) AS other \
         FROM job_items WHERE job_id = ? AND finished_at IS NOT NULL \
         GROUP BY 1 ORDER BY 1"
    }
}

impl Engine {
    /// A job's finished items per `bucket_seconds`, oldest bucket first; only buckets in
    /// which something finished. `None` when the job is unknown.
    pub async fn timeline(
        &self,
        job_id: &str,
        bucket_seconds: u64,
    ) -> Result<Option<Vec<TimelineBucket>>, EngineError> {
        let job_id = job_id.to_string();
        let n = bucket_seconds.max(1) as f64;
        let rows = self
            .store
            .read(move |conn| {
                if crate::store::jobs::get_job_status(conn, &job_id)?.is_none() {
                    return Ok(None);
                }
                let pg = matches!(conn, Conn::Pg(_));
                let rows: Vec<BucketRow> = diesel::sql_query(timeline_sql(pg))
                    .bind::<Double, _>(n)
                    .bind::<Text, _>(&job_id)
                    .load(conn)?;
                Ok(Some(rows))
            })
            .await?;
        Ok(rows.map(|rows| {
            rows.into_iter()
                .map(|r| TimelineBucket {
                    start: r.bucket as f64 * n,
                    succeeded: r.succeeded.max(0) as u64,
                    failed: r.failed.max(0) as u64,
                    other: r.other.max(0) as u64,
                })
                .collect()
        }))
    }

    /// A job's webhook deliveries, oldest first. `None` when the job is unknown.
    pub async fn webhook_deliveries(
        &self,
        job_id: &str,
    ) -> Result<Option<Vec<WebhookDelivery>>, EngineError> {
        let job_id = job_id.to_string();
        Ok(self
            .store
            .read(move |conn| {
                if crate::store::jobs::get_job_status(conn, &job_id)?.is_none() {
                    return Ok(None);
                }
                let sql = if matches!(conn, Conn::Pg(_)) {
                    "SELECT id, url, attempts, next_attempt_at, last_error, created_at, \
                            delivered_at, given_up_at \
                     FROM webhook_deliveries WHERE job_id = $1 ORDER BY id"
                } else {
                    "SELECT id, url, attempts, next_attempt_at, last_error, created_at, \
                            delivered_at, given_up_at \
                     FROM webhook_deliveries WHERE job_id = ? ORDER BY id"
                };
                let rows: Vec<WebhookDelivery> =
                    diesel::sql_query(sql).bind::<Text, _>(&job_id).load(conn)?;
                Ok(Some(rows))
            })
            .await?)
    }
}
