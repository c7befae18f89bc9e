//! A cron schedule's stored job template (the `POST /batch/jobs` body) turned into the job
//! one tick submits, checked as that endpoint checks it.

use super::{generic_job, parse_items_body, SubmissionError, TICK_KEY_PREFIX};
use crate::model::{FieldError, NewJob};
use serde_json::Value;

/// The idempotency key of a schedule's tick: the same on every node and every restart.
pub fn tick_key(schedule_id: &str, tick: i64) -> String {
    format!("{TICK_KEY_PREFIX}{schedule_id}:{tick}")
}

/// Turns a schedule's job body into the job it submits, checked as `POST /batch/jobs`
/// checks it; errors name the field under `job.` (`job.items`, `job.parallel`). With
/// `tick`, the job carries `metadata.schedule_id`, `metadata.scheduled_for` (the tick, unix
/// seconds) and the tick's idempotency key.
pub fn template_job(
    template: &Value,
    schedule_id: &str,
    tick: Option<i64>,
) -> Result<NewJob, FieldError> {
    let Value::Object(body) = template else {
        return Err(FieldError::new(
            "job",
            "must be a JSON object: a POST /batch/jobs body {type, items, parallel, …options}",
        ));
    };
    for (field, why) in [
        (
            "run_at",
            "each tick's job runs at the tick; leave run_at out",
        ),
        (
            "idempotency_key",
            "the schedule keys each tick's job itself (schedule:<id>:<tick>); leave it out",
        ),
    ] {
        if body.get(field).is_some_and(|v| !v.is_null()) {
            return Err(FieldError::new(format!("job.{field}"), why));
        }
    }
    let bytes = serde_json::to_vec(template).map_err(|e| FieldError::new("job", e.to_string()))?;
    let in_job = |e: SubmissionError| match e {
        SubmissionError::Invalid(e) if e.field == "body" => FieldError::new("job", e.message),
        SubmissionError::Invalid(e) => e.under("job"),
        other => FieldError::new("job", other.to_string()),
    };
    let (request, raw) = parse_items_body(&bytes, "items").map_err(in_job)?;
    let mut job = generic_job(request, raw).map_err(in_job)?;
    if let Some(tick) = tick {
        if let Value::Object(metadata) = &mut job.metadata {
            metadata.insert("schedule_id".into(), schedule_id.into());
            metadata.insert("scheduled_for".into(), tick.into());
        }
        job.schedule.idempotency_key = Some(tick_key(schedule_id, tick));
    }
    Ok(job)
}
