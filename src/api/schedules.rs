//! `/batch/schedules`: cron schedules that submit a job per tick (see [`crate::services::cron`]).

use super::error::{ApiError, ErrorBody};
use super::extract::{Body, Segment};
use crate::engine::Engine;
use crate::services::cron::NewSchedule;
use crate::store::schedules::ScheduleRecord;
use crate::submission::fields::check_text;
use crate::submission::{parse_body, GenericJobRequest};
use actix_web::web;
use actix_web::HttpResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

type Reply = Result<HttpResponse, ApiError>;

/// `POST /batch/schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "nightly-checks", "cron": "0 2 * * *", "timezone": "Europe/Berlin",
                          "job": {"type": "batch_validation", "items": [{"id": "readme", "path": "README.md"}],
                                  "check_command": "test -s", "parallel": 2}}))]
pub struct ScheduleRequest {
    /// Optional unique name: posting a schedule whose name exists answers the existing one
    /// (200) when its definition is the same, and 409 otherwise.
    #[schema(max_length = 200, example = "nightly-checks")]
    pub name: Option<String>,
    /// 5 fields (`minute hour day-of-month month day-of-week`) or 6 with seconds first;
    /// names (`MON`, `JAN`), `L`, `W`, `#` and `@daily`-style nicknames work.
    #[schema(example = "0 2 * * *")]
    pub cron: String,
    /// IANA time zone the expression is read in (default `UTC`). Daylight-saving changes
    /// follow the wall clock: a skipped time runs right after the gap, a repeated one once.
    #[schema(example = "Europe/Berlin")]
    pub timezone: Option<String>,
    /// The job each tick submits: a `POST /batch/jobs` body, checked now as a submission
    /// would be; `run_at` and `idempotency_key` are not allowed (each tick's job is keyed
    /// `schedule:<id>:<tick unix seconds>` and carries `metadata.schedule_id`).
    #[schema(value_type = GenericJobRequest)]
    pub job: Value,
}

/// A schedule.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"id": "sched-3f2a9c1d8e7b", "name": "nightly-checks", "cron": "0 2 * * *",
    "timezone": "Europe/Berlin", "job": {"type": "noop", "items": [{"id": 1}]}, "paused": false,
    "paused_at": null, "next_run_at": 1764205200.0, "last_run_at": null, "last_job_id": null,
    "last_error": null, "created_at": 1764150000.0}))]
pub struct ScheduleResponse {
    /// `sched-{12 hex}`.
    pub id: String,
    /// The schedule's unique name, if it has one.
    pub name: Option<String>,
    /// The cron expression.
    pub cron: String,
    /// IANA time zone.
    pub timezone: String,
    /// The job body each tick submits.
    #[schema(value_type = Object)]
    pub job: Value,
    /// Whether ticks are paused.
    pub paused: bool,
    /// Unix seconds, while paused.
    pub paused_at: Option<f64>,
    /// Unix seconds of the next tick.
    pub next_run_at: f64,
    /// Unix seconds of the last tick that fired.
    pub last_run_at: Option<f64>,
    /// The job of the last tick.
    pub last_job_id: Option<String>,
    /// Why the last tick submitted no job (it was skipped), if so.
    pub last_error: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
}

impl From<ScheduleRecord> for ScheduleResponse {
    fn from(s: ScheduleRecord) -> Self {
        ScheduleResponse {
            job: crate::secrets::mask_secrets(serde_json::from_str(&s.job).unwrap_or(Value::Null)),
            id: s.id,
            name: s.name,
            cron: s.cron,
            timezone: s.timezone,
            paused: s.paused_at.is_some(),
            paused_at: s.paused_at,
            next_run_at: s.next_run_at,
            last_run_at: s.last_run_at,
            last_job_id: s.last_job_id,
            last_error: s.last_error,
            created_at: s.created_at,
        }
    }
}

/// `GET /batch/schedules`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// Every schedule, oldest first.
    pub schedules: Vec<ScheduleResponse>,
    /// How many there are.
    pub total: u64,
}

/// `DELETE /batch/schedules/{id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleDeleted {
    /// The schedule's id.
    pub id: String,
    /// Always `true`.
    pub deleted: bool,
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("schedule '{id}' not found"))
}

#[utoipa::path(
    post, path = "/batch/schedules", tag = "schedules",
    description = "Creates a cron schedule: every tick submits `job` once, keyed `schedule:<id>:<tick>`, so several nodes and restarts still create exactly one job per tick. Ticks missed while no engine ran are not all run: only the latest, once.",
    request_body = ScheduleRequest,
    responses(
        (status = 201, description = "Created", body = ScheduleResponse),
        (status = 200, description = "A schedule of this name and definition already existed", body = ScheduleResponse),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 409, description = "A schedule of this name exists with another definition", body = ErrorBody),
        (status = 422, description = "A field is wrong (`cron`, `timezone`, `job.items` …); `field` names it", body = ErrorBody),
    )
)]
pub(super) async fn create_schedule(engine: web::Data<Engine>, Body(body): Body) -> Reply {
    let (req, _): (ScheduleRequest, _) = parse_body(&body)?;
    // Stored as text columns, which cannot hold a NUL character on PostgreSQL.
    check_text("name", req.name.as_deref().unwrap_or(""))?;
    check_text("cron", &req.cron)?;
    check_text("timezone", req.timezone.as_deref().unwrap_or(""))?;
    let (schedule, created) = engine
        .create_schedule(NewSchedule {
            name: req.name,
            cron: req.cron,
            timezone: req.timezone,
            job: req.job,
        })
        .await?;
    let mut reply = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(reply.json(ScheduleResponse::from(schedule)))
}

#[utoipa::path(
    get, path = "/batch/schedules", tag = "schedules",
    description = "Every schedule, oldest first.",
    responses((status = 200, description = "The schedules", body = ScheduleList))
)]
pub(super) async fn list_schedules(engine: web::Data<Engine>) -> Reply {
    let schedules: Vec<ScheduleResponse> = engine
        .schedules()
        .await?
        .into_iter()
        .map(ScheduleResponse::from)
        .collect();
    Ok(HttpResponse::Ok().json(ScheduleList {
        total: schedules.len() as u64,
        schedules,
    }))
}

#[utoipa::path(
    get, path = "/batch/schedules/{id}", tag = "schedules",
    description = "One schedule, with its next and last tick.",
    params(("id" = String, Path, description = "The schedule id", example = "sched-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleResponse),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
pub(super) async fn get_schedule(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    match engine.schedule(&id).await? {
        Some(s) => Ok(HttpResponse::Ok().json(ScheduleResponse::from(s))),
        None => Err(not_found(&id)),
    }
}

#[utoipa::path(
    post, path = "/batch/schedules/{id}/pause", tag = "schedules",
    description = "Pauses a schedule: no tick fires until it is resumed. Pausing a paused schedule changes nothing.",
    params(("id" = String, Path, description = "The schedule id", example = "sched-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The schedule, `paused: true`", body = ScheduleResponse),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
pub(super) async fn pause_schedule(engine: web::Data<Engine>, id: Segment) -> Reply {
    set_paused(&engine, id.into_inner(), true).await
}

#[utoipa::path(
    post, path = "/batch/schedules/{id}/resume", tag = "schedules",
    description = "Resumes a paused schedule from its first tick after now; the ticks of the pause are not run.",
    params(("id" = String, Path, description = "The schedule id", example = "sched-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The schedule, `paused: false`", body = ScheduleResponse),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 409, description = "The expression matches no time from now on", body = ErrorBody),
    )
)]
pub(super) async fn resume_schedule(engine: web::Data<Engine>, id: Segment) -> Reply {
    set_paused(&engine, id.into_inner(), false).await
}

async fn set_paused(engine: &Engine, id: String, paused: bool) -> Reply {
    match engine.set_schedule_paused(&id, paused).await? {
        Some(s) => Ok(HttpResponse::Ok().json(ScheduleResponse::from(s))),
        None => Err(not_found(&id)),
    }
}

#[utoipa::path(
    delete, path = "/batch/schedules/{id}", tag = "schedules",
    description = "Deletes a schedule; the jobs it created stay.",
    params(("id" = String, Path, description = "The schedule id", example = "sched-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "Deleted", body = ScheduleDeleted),
        (status = 404, description = "No such schedule", body = ErrorBody),
    )
)]
pub(super) async fn delete_schedule(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    if engine.delete_schedule(&id).await? {
        Ok(HttpResponse::Ok().json(ScheduleDeleted { id, deleted: true }))
    } else {
        Err(not_found(&id))
    }
}
