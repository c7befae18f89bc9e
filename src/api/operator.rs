//! What the dashboard's operator pages need beyond the single-job endpoints: a job's
//! timeline of finished items, its webhook deliveries, and acting on many jobs in one
//! request (`POST /batch/jobs/bulk`).

use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Segment};
use super::Query;
use crate::engine::{Engine, TimelineBucket, WebhookDelivery};
use crate::model::ItemStatus;
use crate::store::job_control::{CancelOutcome, RetryOutcome};
use crate::submission::parse_body;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

type Reply = Result<HttpResponse, ApiError>;

/// Most buckets' width: a day.
const MAX_BUCKET_SECONDS: u64 = 86_400;

/// Most jobs one bulk request acts on.
pub const MAX_BULK_IDS: usize = 1000;

/// `GET /batch/jobs/{id}/timeline`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"job_id": "noop-3f2a9c1d8e7b", "bucket_seconds": 1,
    "buckets": [{"start": 1764150000.0, "succeeded": 12, "failed": 1, "other": 0}]}))]
pub struct TimelineResponse {
    /// The job id.
    pub job_id: String,
    /// Each bucket's width in seconds.
    pub bucket_seconds: u64,
    /// The buckets in which items finished, oldest first (empty buckets are left out).
    pub buckets: Vec<TimelineBucket>,
}

/// `GET /batch/jobs/{id}/webhooks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookList {
    /// The job id.
    pub job_id: String,
    /// Its deliveries, oldest first (none when the job has no `callback_url`, or has not
    /// finished).
    pub deliveries: Vec<WebhookDelivery>,
}

/// `POST /batch/jobs/bulk`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"action": "retry", "ids": ["noop-3f2a9c1d8e7b", "noop-9c1d8e7b3f2a"], "failed_only": true}))]
pub struct BulkRequest {
    /// `cancel` or `retry`.
    #[schema(value_type = String, example = "cancel")]
    pub action: Value,
    /// The job ids, 1–1000, each once.
    #[schema(value_type = Vec<String>)]
    pub ids: Value,
    /// `retry` only: requeue only `failed` items (default `false`: failed, cancelled and
    /// skipped ones).
    #[schema(value_type = Option<bool>)]
    pub failed_only: Option<Value>,
}

/// One job's outcome in a bulk answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkOutcome {
    /// The job id.
    pub id: String,
    /// The status the single-job endpoint would have answered: 200, 404 or 409.
    pub status: u16,
    /// `cancelled`, `requeued`, `not_found` or `conflict`.
    pub outcome: String,
    /// Items put back in the queue (`retry`, when requeued).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requeued: Option<u64>,
    /// Why it was refused, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The answer of `POST /batch/jobs/bulk`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BulkResponse {
    /// The action taken.
    pub action: String,
    /// One outcome per id, in the order given.
    pub results: Vec<BulkOutcome>,
    /// How many ids were acted on (`status` 200).
    pub done: u64,
    /// How many were refused (404 or 409).
    pub refused: u64,
}

#[utoipa::path(
    get, path = "/batch/jobs/{id}/timeline", tag = "jobs",
    description = "Items finished per time bucket over the job's life, by outcome, counted in the database. Buckets start at multiples of `bucket_seconds` (Unix time); buckets in which nothing finished are left out.",
    params(
        ("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b"),
        ("bucket_seconds" = Option<u32>, Query, minimum = 1, maximum = 86400, description = "Bucket width in seconds, 1–86400 (default 1)"),
    ),
    responses(
        (status = 200, description = "The timeline", body = TimelineResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 422, description = "A bad query parameter; `field` names it", body = ErrorBody),
    )
)]
pub(super) async fn job_timeline(
    engine: web::Data<Engine>,
    id: Segment,
    req: HttpRequest,
) -> Reply {
    let id = id.into_inner();
    let q = Query::parse(&req, &["bucket_seconds"])?;
    let bucket_seconds = q.number("bucket_seconds", 1, 1, MAX_BUCKET_SECONDS)?;
    match engine.timeline(&id, bucket_seconds).await? {
        Some(buckets) => Ok(HttpResponse::Ok().json(TimelineResponse {
            job_id: id,
            bucket_seconds,
            buckets,
        })),
        None => Err(ApiError::NotFound(format!("job '{id}' not found"))),
    }
}

#[utoipa::path(
    get, path = "/batch/jobs/{id}/webhooks", tag = "jobs",
    description = "The job's `job.finished` webhook deliveries: attempts, last error, and when it was delivered or given up.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The deliveries", body = WebhookList),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
pub(super) async fn job_webhooks(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    match engine.webhook_deliveries(&id).await? {
        Some(deliveries) => Ok(HttpResponse::Ok().json(WebhookList {
            job_id: id,
            deliveries: deliveries
                .into_iter()
                .map(|mut d| {
                    // A receiver's URL may carry a token in its query: not shown.
                    d.url = crate::secrets::mask_secrets(Value::String(d.url))
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    d
                })
                .collect(),
        })),
        None => Err(ApiError::NotFound(format!("job '{id}' not found"))),
    }
}

/// The bulk action asked for.
#[derive(Clone, Copy, PartialEq)]
enum Action {
    Cancel,
    Retry,
}

/// Checks a bulk body; every error names its field.
fn check_bulk(req: BulkRequest) -> Result<(Action, Vec<String>, bool), ApiError> {
    let action = match req.action.as_str() {
        Some("cancel") => Action::Cancel,
        Some("retry") => Action::Retry,
        _ => {
            return Err(ApiError::invalid(
                "action",
                format!("must be \"cancel\" or \"retry\", got {}", req.action),
            ))
        }
    };
    let failed_only = match req.failed_only {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) if action == Action::Retry => b,
        Some(Value::Bool(_)) => {
            return Err(ApiError::invalid(
                "failed_only",
                "applies to the \"retry\" action only",
            ))
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "failed_only",
                format!("must be true or false, got {other}"),
            ))
        }
    };
    let Value::Array(raw) = req.ids else {
        return Err(ApiError::invalid(
            "ids",
            format!("must be a list of job ids, got {}", req.ids),
        ));
    };
    if raw.is_empty() || raw.len() > MAX_BULK_IDS {
        return Err(ApiError::invalid(
            "ids",
            format!("must hold 1 to {MAX_BULK_IDS} job ids, got {}", raw.len()),
        ));
    }
    let mut ids: Vec<String> = Vec::with_capacity(raw.len());
    for (i, v) in raw.into_iter().enumerate() {
        let field = format!("ids[{i}]");
        let Value::String(id) = v else {
            return Err(ApiError::invalid(
                field,
                format!("must be a job id, got {v}"),
            ));
        };
        if id.trim().is_empty() {
            return Err(ApiError::invalid(field, "must not be empty"));
        }
        crate::submission::fields::check_text(&field, &id)?;
        if ids.contains(&id) {
            return Err(ApiError::invalid(field, format!("'{id}' is listed twice")));
        }
        ids.push(id);
    }
    Ok((action, ids, failed_only))
}

fn refused(id: String, status: u16, detail: String) -> BulkOutcome {
    BulkOutcome {
        id,
        status,
        outcome: if status == 404 {
            "not_found"
        } else {
            "conflict"
        }
        .into(),
        requeued: None,
        detail: Some(detail),
    }
}

#[utoipa::path(
    post, path = "/batch/jobs/bulk", tag = "jobs",
    description = "Cancels or retries many jobs in one request. Each id is acted on as `DELETE /batch/jobs/{id}` or `POST /batch/jobs/{id}/retry` would, in the order given; the answer is 200 with one outcome per id, whose `status` is what that endpoint would have answered (200, 404 for an unknown job, 409 for one already finished or not retryable). A bad body changes nothing.",
    request_body = BulkRequest,
    responses(
        (status = 200, description = "One outcome per id", body = BulkResponse),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A bad `action`, `ids` or `failed_only`; `field` names it", body = ErrorBody),
    )
)]
pub(super) async fn bulk_jobs(engine: web::Data<Engine>, Body(body): Body) -> Reply {
    let (req, _): (BulkRequest, _) = parse_body(&body)?;
    let (action, ids, failed_only) = check_bulk(req)?;
    let statuses = if failed_only {
        vec![ItemStatus::Failed]
    } else {
        vec![
            ItemStatus::Failed,
            ItemStatus::Cancelled,
            ItemStatus::Skipped,
        ]
    };
    let mut results = Vec::with_capacity(ids.len());
    for id in ids {
        let outcome = match action {
            Action::Cancel => match engine.cancel(&id).await? {
                CancelOutcome::Cancelled { .. } => BulkOutcome {
                    id,
                    status: 200,
                    outcome: "cancelled".into(),
                    requeued: None,
                    detail: None,
                },
                CancelOutcome::NotFound => {
                    let d = format!("job '{id}' not found");
                    refused(id, 404, d)
                }
                CancelOutcome::AlreadyFinished(s) => {
                    let d = format!("job '{id}' is already {s} and cannot be cancelled");
                    refused(id, 409, d)
                }
            },
            Action::Retry => match engine.retry(&id, statuses.clone()).await? {
                RetryOutcome::Requeued { items, .. } => BulkOutcome {
                    id,
                    status: 200,
                    outcome: "requeued".into(),
                    requeued: Some(items),
                    detail: None,
                },
                RetryOutcome::NotFound => {
                    let d = format!("job '{id}' not found");
                    refused(id, 404, d)
                }
                RetryOutcome::NotFinished(s) => {
                    let d = format!("job '{id}' is {s}; only a finished job is retried");
                    refused(id, 409, d)
                }
                RetryOutcome::NothingToRetry => {
                    let d = format!("job '{id}' has no item to retry in those statuses");
                    refused(id, 409, d)
                }
                RetryOutcome::DeadlinePassed => {
                    let d =
                        format!("job '{id}' is past its deadline; submit it again with a new one");
                    refused(id, 409, d)
                }
            },
        };
        results.push(outcome);
    }
    let done = results.iter().filter(|r| r.status == 200).count() as u64;
    Ok(HttpResponse::Ok().json(BulkResponse {
        action: if action == Action::Cancel {
            "cancel"
        } else {
            "retry"
        }
        .into(),
        refused: results.len() as u64 - done,
        done,
        results,
    }))
}
