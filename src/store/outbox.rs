//! The webhook outbox (`webhook_deliveries`): a job's `job.finished` delivery, stored in
//! the transaction that finishes it, then leased, sent and settled by the dispatcher.

use super::schema::jobs;
use super::{is_pg, Conn, StoreError};
use diesel::prelude::*;

/// `(kind, status, total, succeeded, failed, skipped, cancelled, error, created_at,
/// started_at, completed_at, callback_url)` of a job, as its webhook summary needs them.
type WebhookJobRow = (
    String,
    String,
    i32,
    i32,
    i32,
    i32,
    i32,
    Option<String>,
    f64,
    Option<f64>,
    Option<f64>,
    Option<String>,
);

/// Webhook outbox: when a finished job asked for a `callback_url`, stores its
/// `job.finished` summary as a delivery due now. The transitions that finish a job call it
/// inside their transaction, once per finish, so a delivery exists exactly when the job is
/// terminal with its result. Returns whether a delivery was added.
pub fn enqueue_webhook(conn: &mut Conn, job_id: &str, now: f64) -> Result<bool, StoreError> {
    use super::schema::webhook_deliveries as w;
    use diesel::sql_types::{Nullable, Text};
    // Most jobs have no callback: a cheap statement (prepared once and cached) settles that
    // before the one that extracts the summary, which Diesel prepares afresh every time.
    let may_have_callback: Option<bool> = jobs::table
        .filter(jobs::id.eq(job_id))
        .select(jobs::spec.like("%callback_url%"))
        .first(conn)
        .optional()?;
    if may_have_callback != Some(true) {
        return Ok(false);
    }
    let callback_sql = if is_pg(conn) {
        "CASE jsonb_typeof(spec::jsonb -> 'callback_url') WHEN 'string' \
         THEN spec::jsonb ->> 'callback_url' END"
    } else {
        "CASE json_type(spec, '$.callback_url') WHEN 'text' \
         THEN json_extract(spec, '$.callback_url') END"
    };
    let row: Option<WebhookJobRow> = jobs::table
        .filter(jobs::id.eq(job_id))
        .select((
            jobs::kind,
            jobs::status,
            jobs::total,
            jobs::succeeded,
            jobs::failed,
            jobs::skipped,
            jobs::cancelled,
            jobs::error,
            jobs::created_at,
            jobs::started_at,
            jobs::completed_at,
            diesel::dsl::sql::<Nullable<Text>>(callback_sql),
        ))
        .first(conn)
        .optional()?;
    let Some((
        kind,
        status,
        total,
        succeeded,
        failed,
        skipped,
        cancelled,
        error,
        created,
        started,
        completed,
        Some(url),
    )) = row
    else {
        return Ok(false);
    };
    // The same summary as the job's result, its kind's aliases included.
    let summary = super::counters::Tally {
        processed: 0,
        succeeded,
        failed,
        skipped,
        cancelled,
    }
    .summary(&kind, total.max(0) as u64);
    let payload = serde_json::json!({
        "event": "job.finished",
        "job_id": job_id,
        "type": kind,
        "status": status,
        "summary": summary,
        "error": error,
        "created_at": created,
        "started_at": started,
        "completed_at": completed,
    });
    let added = diesel::insert_into(w::table)
        .values((
            w::job_id.eq(job_id),
            w::url.eq(url),
            w::payload.eq(payload.to_string()),
            w::attempts.eq(0),
            w::next_attempt_at.eq(now),
            w::created_at.eq(now),
        ))
        .execute(conn)?;
    Ok(added > 0)
}

/// A webhook delivery taken by [`lease_webhooks`].
#[derive(Debug, Clone, PartialEq, diesel::QueryableByName)]
pub struct LeasedWebhook {
    /// The delivery's id.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub id: i64,
    /// The finished job.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub job_id: String,
    /// Where to POST.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub url: String,
    /// The JSON body, exactly as it is sent and signed.
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub payload: String,
    /// Attempts so far, this one included.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    /// Until when the lease holds (the `next_attempt_at` it set): the token that
    /// [`record_webhook_attempt`] requires, so a late dispatcher's outcome is dropped.
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub lease_until: f64,
}

/// Read: whether a webhook delivery is due at `now` (the dispatcher's cheap, indexed poll).
pub fn webhook_due(conn: &mut Conn, now: f64) -> Result<bool, StoreError> {
    use super::schema::webhook_deliveries as w;
    Ok(diesel::select(diesel::dsl::exists(
        w::table
            .filter(w::next_attempt_at.is_not_null())
            .filter(w::next_attempt_at.le(now)),
    ))
    .get_result(conn)?)
}

/// Webhook lease: takes up to `limit` due deliveries, soonest first, counting an attempt
/// and moving their next attempt to `now + lease`, so no later poll (nor another engine on
/// the database) sends them meanwhile; after a crash mid-send they are sent again once the
/// lease runs out.
pub fn lease_webhooks(
    conn: &mut Conn,
    now: f64,
    lease: f64,
    limit: i64,
) -> Result<Vec<LeasedWebhook>, StoreError> {
    use diesel::sql_types::{BigInt, Double};
    let sql = if is_pg(conn) {
        // Nodes poll at once: each takes the rows no other poll holds (a CTE, run once;
        // see `claim_items`).
        "WITH due AS (SELECT id FROM webhook_deliveries \
                      WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $2 \
                      ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $1 \
         FROM due WHERE webhook_deliveries.id = due.id \
         RETURNING webhook_deliveries.id, webhook_deliveries.job_id, webhook_deliveries.url, \
                   webhook_deliveries.payload, webhook_deliveries.attempts, \
                   webhook_deliveries.next_attempt_at AS lease_until"
    } else {
        "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ? \
         WHERE id IN (SELECT id FROM webhook_deliveries \
                      WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= ? \
                      ORDER BY next_attempt_at LIMIT ?) \
         RETURNING id, job_id, url, payload, attempts, next_attempt_at AS lease_until"
    };
    Ok(diesel::sql_query(sql)
        .bind::<Double, _>(now + lease)
        .bind::<Double, _>(now)
        .bind::<BigInt, _>(limit)
        .load(conn)?)
}

/// How one webhook attempt ended, for [`record_webhook_attempt`].
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookAttempt {
    /// The receiver answered 2xx.
    Delivered,
    /// It failed; try again at this time (Unix seconds).
    Retry {
        /// When to try again.
        at: f64,
        /// What went wrong.
        error: String,
    },
    /// It failed for the last time.
    GaveUp {
        /// What went wrong.
        error: String,
    },
}

/// Webhook outcome: a leased delivery becomes delivered, due again later, or given up —
/// only while the lease `lease_until` (from [`lease_webhooks`]) still holds it: once the
/// lease ran out and another poll took the delivery (or it settled), nothing changes and
/// the answer is `false`.
pub fn record_webhook_attempt(
    conn: &mut Conn,
    id: i64,
    lease_until: f64,
    attempt: &WebhookAttempt,
    now: f64,
) -> Result<bool, StoreError> {
    use super::schema::webhook_deliveries as w;
    let target = w::table
        .filter(w::id.eq(id))
        .filter(w::next_attempt_at.eq(lease_until));
    let updated = match attempt {
        WebhookAttempt::Delivered => diesel::update(target)
            .set((w::delivered_at.eq(now), w::next_attempt_at.eq(None::<f64>)))
            .execute(conn)?,
        WebhookAttempt::Retry { at, error } => diesel::update(target)
            .set((w::next_attempt_at.eq(at), w::last_error.eq(error)))
            .execute(conn)?,
        WebhookAttempt::GaveUp { error } => diesel::update(target)
            .set((
                w::given_up_at.eq(now),
                w::next_attempt_at.eq(None::<f64>),
                w::last_error.eq(error),
            ))
            .execute(conn)?,
    };
    Ok(updated > 0)
}

/// A job's webhook delivery as stored.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct WebhookDelivery {
    /// The delivery's id.
    pub id: i64,
    /// The finished job.
    pub job_id: String,
    /// Where it is POSTed.
    pub url: String,
    /// The JSON body.
    pub payload: String,
    /// Attempts so far.
    pub attempts: i32,
    /// When it is due next; `None` once delivered or given up.
    pub next_attempt_at: Option<f64>,
    /// The last failure.
    pub last_error: Option<String>,
    /// When it was added (the job finished).
    pub created_at: f64,
    /// When a receiver took it.
    pub delivered_at: Option<f64>,
    /// When it was given up.
    pub given_up_at: Option<f64>,
}

/// Read: a job's latest webhook delivery, if it has one.
pub fn webhook_delivery(
    conn: &mut Conn,
    job_id: &str,
) -> Result<Option<WebhookDelivery>, StoreError> {
    use super::schema::webhook_deliveries as w;
    Ok(w::table
        .filter(w::job_id.eq(job_id))
        .select((
            w::id,
            w::job_id,
            w::url,
            w::payload,
            w::attempts,
            w::next_attempt_at,
            w::last_error,
            w::created_at,
            w::delivered_at,
            w::given_up_at,
        ))
        .order(w::id.desc())
        .first(conn)
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{conn, job, job_with};
    use crate::store::job_control::fail_job;
    use crate::store::jobs::insert_job;
    use serde_json::json;

    #[test]
    fn a_finished_job_with_a_callback_queues_one_delivery() {
        let mut c = conn();
        insert_job(&mut c, "plain", &job(1), 1.0).unwrap();
        fail_job(&mut c, "plain", "stop", 2.0).unwrap();
        assert_eq!(webhook_delivery(&mut c, "plain").unwrap(), None);
        let hooked = job_with(json!({"callback_url": "http://127.0.0.1:9/h"}), 1);
        insert_job(&mut c, "j", &hooked, 1.0).unwrap();
        fail_job(&mut c, "j", "stop", 2.0).unwrap();
        let d = webhook_delivery(&mut c, "j").unwrap().unwrap();
        assert_eq!(
            (d.url.as_str(), d.attempts, d.next_attempt_at),
            ("http://127.0.0.1:9/h", 0, Some(2.0))
        );
        let payload: serde_json::Value = serde_json::from_str(&d.payload).unwrap();
        assert_eq!(
            (payload["event"].as_str(), payload["status"].as_str()),
            (Some("job.finished"), Some("failed"))
        );
        assert!(!webhook_due(&mut c, 1.0).unwrap());
        assert!(webhook_due(&mut c, 2.0).unwrap());
    }

    #[test]
    fn a_lease_hides_a_delivery_and_only_its_holder_settles_it() {
        let mut c = conn();
        let hooked = job_with(json!({"callback_url": "http://127.0.0.1:9/h"}), 1);
        insert_job(&mut c, "j", &hooked, 1.0).unwrap();
        fail_job(&mut c, "j", "stop", 2.0).unwrap();
        let leased = lease_webhooks(&mut c, 10.0, 30.0, 5).unwrap();
        assert_eq!(
            (leased.len(), leased[0].attempts, leased[0].lease_until),
            (1, 1, 40.0)
        );
        assert!(lease_webhooks(&mut c, 20.0, 30.0, 5).unwrap().is_empty());
        let id = leased[0].id;
        let retry = WebhookAttempt::Retry {
            at: 60.0,
            error: "503".into(),
        };
        assert!(!record_webhook_attempt(&mut c, id, 39.0, &retry, 25.0).unwrap());
        assert!(record_webhook_attempt(&mut c, id, 40.0, &retry, 25.0).unwrap());
        let again = lease_webhooks(&mut c, 60.0, 30.0, 5).unwrap();
        assert_eq!(again[0].attempts, 2);
        let delivered = WebhookAttempt::Delivered;
        assert!(record_webhook_attempt(&mut c, id, 90.0, &delivered, 61.0).unwrap());
        let d = webhook_delivery(&mut c, "j").unwrap().unwrap();
        assert_eq!((d.delivered_at, d.next_attempt_at), (Some(61.0), None));
        assert_eq!(d.last_error.as_deref(), Some("503"));
    }
}
