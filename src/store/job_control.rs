//! What is done to a whole job after its submission: manual retry, pause and resume (of a
//! job or a kind), cancellation, expiry and failure.

use super::counters::Tally;
use super::jobs::{get_job, get_job_status, lock_jobs};
use super::outbox::enqueue_webhook;
use super::results::{build_result, finalize_job};
use super::schema::{job_items, jobs, kind_pauses};
use super::{is_pg, Conn, StoreError};
use crate::model::{ItemStatus, JobRecord, JobStatus};
use diesel::dsl::count_star;
use diesel::prelude::*;

/// What [`retry_job`] did.
#[derive(Debug, Clone)]
pub enum RetryOutcome {
    /// This many items went back to the queue; the job is open again.
    Requeued {
        /// Items requeued.
        items: u64,
        /// The reopened job.
        job: Box<JobRecord>,
    },
    /// No such job.
    NotFound,
    /// The job has not finished; only a finished job is retried.
    NotFinished(JobStatus),
    /// No item of the job has one of the asked statuses.
    NothingToRetry,
    /// The job's deadline has passed: retried, it would expire again at once.
    DeadlinePassed,
}

/// Manual retry: puts a finished job's items of the given statuses (`failed`,
/// `cancelled`) back to `queued` with a fresh attempt budget (their last error appended
/// to `attempt_errors`), takes them off the counters, and reopens the job (`queued`, no
/// result, no completion time).
pub fn retry_job(
    conn: &mut Conn,
    job_id: &str,
    statuses: &[ItemStatus],
) -> Result<RetryOutcome, StoreError> {
    use job_items::dsl as i;
    lock_jobs(conn, [job_id])?;
    let Some(status) = get_job_status(conn, job_id)? else {
        return Ok(RetryOutcome::NotFound);
    };
    if !status.is_terminal() {
        return Ok(RetryOutcome::NotFinished(status));
    }
    // A cancelled job whose running items are still stopping (on any node) has no result
    // yet: retried now, their late outcomes would land in the reopened job.
    let has_result: bool = jobs::table
        .filter(jobs::id.eq(job_id))
        .select(jobs::result.is_not_null())
        .first(conn)?;
    if !has_result {
        return Ok(RetryOutcome::NotFinished(status));
    }
    let spec: String = jobs::table
        .filter(jobs::id.eq(job_id))
        .select(jobs::spec)
        .first(conn)?;
    let deadline = serde_json::from_str(&spec)
        .ok()
        .and_then(|spec| crate::model::JobOptions::stored(&spec).deadline);
    if deadline.is_some_and(|d| d <= crate::model::now()) {
        return Ok(RetryOutcome::DeadlinePassed);
    }
    let names: Vec<&str> = statuses.iter().map(|s| s.as_str()).collect();
    let by_status: Vec<(String, i64)> = i::job_items
        .filter(i::job_id.eq(job_id))
        .filter(i::status.eq_any(&names))
        .group_by(i::status)
        .select((i::status, count_star()))
        .load(conn)?;
    let total: i64 = by_status.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return Ok(RetryOutcome::NothingToRetry);
    }
    let n_of = |s: ItemStatus| {
        by_status
            .iter()
            .find(|(name, _)| name == s.as_str())
            .map_or(0, |(_, n)| *n as i32)
    };
    let (failed, cancelled, skipped) = (
        n_of(ItemStatus::Failed),
        n_of(ItemStatus::Cancelled),
        n_of(ItemStatus::Skipped),
    );
    let sql = if is_pg(conn) {
        "UPDATE job_items SET status = 'queued', attempts = 0, available_at = NULL, \
                attempt_errors = (coalesce(attempt_errors, '[]')::jsonb \
                                  || to_jsonb(coalesce(error, status)))::text, \
                result = NULL, error = NULL, started_at = NULL, finished_at = NULL, \
                node_id = NULL \
         WHERE job_id = $1 AND status = $2"
    } else {
        "UPDATE job_items SET status = 'queued', attempts = 0, available_at = NULL, \
                attempt_errors = json_insert(coalesce(attempt_errors, '[]'), '$[#]', \
                                             coalesce(error, status)), \
                result = NULL, error = NULL, started_at = NULL, finished_at = NULL, \
                node_id = NULL \
         WHERE job_id = ? AND status = ?"
    };
    for name in &names {
        diesel::sql_query(sql)
            .bind::<diesel::sql_types::Text, _>(job_id)
            .bind::<diesel::sql_types::Text, _>(*name)
            .execute(conn)?;
    }
    diesel::update(jobs::table.filter(jobs::id.eq(job_id)))
        .set((
            jobs::status.eq(JobStatus::Queued.as_str()),
            jobs::result.eq(None::<String>),
            jobs::error.eq(None::<String>),
            jobs::completed_at.eq(None::<f64>),
            jobs::processed.eq(jobs::processed - (failed + skipped)),
            jobs::failed.eq(jobs::failed - failed),
            jobs::skipped.eq(jobs::skipped - skipped),
            jobs::cancelled.eq(jobs::cancelled - cancelled),
        ))
        .execute(conn)?;
    Ok(match get_job(conn, job_id)? {
        Some(job) => RetryOutcome::Requeued {
            items: total as u64,
            job: Box::new(job),
        },
        None => RetryOutcome::NotFound,
    })
}

/// What [`set_job_paused`] found.
#[derive(Debug, Clone)]
pub enum PauseOutcome {
    /// The job is now paused (or resumed), or already was.
    Done(Box<JobRecord>),
    /// No such job.
    NotFound,
    /// The job already reached this terminal status.
    Finished(JobStatus),
}

/// Pause or resume: sets or clears `jobs.paused_at` of an open (`queued | running`) job.
/// A paused job keeps its status; the engine claims nothing of it until it is resumed.
pub fn set_job_paused(
    conn: &mut Conn,
    job_id: &str,
    paused: bool,
    now: f64,
) -> Result<PauseOutcome, StoreError> {
    lock_jobs(conn, [job_id])?;
    let Some(status) = get_job_status(conn, job_id)? else {
        return Ok(PauseOutcome::NotFound);
    };
    if status.is_terminal() {
        return Ok(PauseOutcome::Finished(status));
    }
    let target = jobs::table.filter(jobs::id.eq(job_id));
    if paused {
        diesel::update(target.filter(jobs::paused_at.is_null()))
            .set(jobs::paused_at.eq(now))
            .execute(conn)?;
    } else {
        diesel::update(target)
            .set(jobs::paused_at.eq(None::<f64>))
            .execute(conn)?;
    }
    Ok(match get_job(conn, job_id)? {
        Some(job) => PauseOutcome::Done(Box::new(job)),
        None => PauseOutcome::NotFound,
    })
}

/// Pause or resume a whole kind: a row in `kind_pauses` while it is paused.
pub fn set_kind_paused(
    conn: &mut Conn,
    kind: &str,
    paused: bool,
    now: f64,
) -> Result<(), StoreError> {
    if paused {
        crate::on_backend!(conn, c => diesel::insert_into(kind_pauses::table)
            .values((kind_pauses::kind.eq(kind), kind_pauses::paused_at.eq(now)))
            .on_conflict_do_nothing()
            .execute(c))?;
    } else {
        diesel::delete(kind_pauses::table.filter(kind_pauses::kind.eq(kind))).execute(conn)?;
    }
    Ok(())
}

/// Read: the kinds paused as a whole.
pub fn paused_kinds(conn: &mut Conn) -> Result<Vec<String>, StoreError> {
    Ok(kind_pauses::table
        .select(kind_pauses::kind)
        .order(kind_pauses::kind)
        .load(conn)?)
}

/// What [`cancel_job`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The job is now cancelled; this many items were still running and must be stopped.
    Cancelled {
        /// Items left `running`, to be stopped by their workers.
        running: u64,
    },
    /// No such job.
    NotFound,
    /// The job had already reached this terminal status.
    AlreadyFinished(JobStatus),
}

/// Cancellation: moves a job `queued | running → cancelled` and its queued items
/// `queued → cancelled`. Running items stay `running` until their workers stop them.
pub fn cancel_job(conn: &mut Conn, job_id: &str, now: f64) -> Result<CancelOutcome, StoreError> {
    end_job(
        conn,
        job_id,
        JobStatus::Cancelled,
        "cancelled before it started",
        None,
        now,
    )
}

/// Cancellation on the engine's own account (a dependency that did not complete), with
/// the reason in the job's `error`, set before the result and the webhook are built.
pub fn cancel_job_because(
    conn: &mut Conn,
    job_id: &str,
    reason: &str,
    now: f64,
) -> Result<CancelOutcome, StoreError> {
    end_job(
        conn,
        job_id,
        JobStatus::Cancelled,
        "cancelled before it started",
        Some(reason),
        now,
    )
}

/// Cancellation on the engine's own account for a reason of the job's own (its token
/// budget spent): like [`cancel_job_because`], its queued items' error naming the reason.
pub fn stop_job_because(
    conn: &mut Conn,
    job_id: &str,
    reason: &str,
    now: f64,
) -> Result<CancelOutcome, StoreError> {
    end_job(
        conn,
        job_id,
        JobStatus::Cancelled,
        &format!("cancelled: {reason}"),
        Some(reason),
        now,
    )
}

/// Expiry: like [`cancel_job`], for a job whose `deadline` passed: `queued | running →
/// expired`, its queued items cancelled, its finished results kept, `reason` its `error`.
pub fn expire_job(
    conn: &mut Conn,
    job_id: &str,
    reason: &str,
    now: f64,
) -> Result<CancelOutcome, StoreError> {
    end_job(
        conn,
        job_id,
        JobStatus::Expired,
        "expired: the job's deadline passed before it ran",
        Some(reason),
        now,
    )
}

fn end_job(
    conn: &mut Conn,
    job_id: &str,
    end: JobStatus,
    item_error: &str,
    reason: Option<&str>,
    now: f64,
) -> Result<CancelOutcome, StoreError> {
    use job_items::dsl as i;
    lock_jobs(conn, [job_id])?;
    let Some(status) = jobs::table
        .filter(jobs::id.eq(job_id))
        .select(jobs::status)
        .first::<String>(conn)
        .optional()?
    else {
        return Ok(CancelOutcome::NotFound);
    };
    let status: JobStatus = status
        .parse()
        .map_err(|e: crate::model::UnknownStatus| StoreError::Task(format!("job {job_id}: {e}")))?;
    if status.is_terminal() {
        return Ok(CancelOutcome::AlreadyFinished(status));
    }
    let dropped = diesel::update(
        i::job_items
            .filter(i::job_id.eq(job_id))
            .filter(i::status.eq(ItemStatus::Queued.as_str())),
    )
    .set((
        i::status.eq(ItemStatus::Cancelled.as_str()),
        i::error.eq(item_error),
        i::finished_at.eq(now),
    ))
    .execute(conn)?;
    let running: i64 = i::job_items
        .filter(i::job_id.eq(job_id))
        .filter(i::status.eq(ItemStatus::Running.as_str()))
        .select(count_star())
        .first(conn)?;
    diesel::update(
        jobs::table
            .filter(jobs::id.eq(job_id))
            .filter(jobs::status.eq_any([JobStatus::Queued.as_str(), JobStatus::Running.as_str()])),
    )
    .set((
        jobs::status.eq(end.as_str()),
        jobs::cancelled.eq(jobs::cancelled + dropped as i32),
        jobs::completed_at.eq(now),
        jobs::error.eq(reason),
    ))
    .execute(conn)?;
    // With nothing running, the result can be built now; otherwise the last running item
    // builds it when its worker reports back.
    finalize_job(conn, job_id, now)?;
    Ok(CancelOutcome::Cancelled {
        running: running as u64,
    })
}

/// Job failure: moves a job that cannot run `queued | running → failed` with `error`,
/// and its unfinished items `queued | running → failed`; queues its webhook, if any.
pub fn fail_job(conn: &mut Conn, job_id: &str, error: &str, now: f64) -> Result<(), StoreError> {
    use job_items::dsl as i;
    lock_jobs(conn, [job_id])?;
    let open = [JobStatus::Queued.as_str(), JobStatus::Running.as_str()];
    let changed = diesel::update(
        jobs::table
            .filter(jobs::id.eq(job_id))
            .filter(jobs::status.eq_any(open)),
    )
    .set((
        jobs::status.eq(JobStatus::Failed.as_str()),
        jobs::error.eq(error),
        jobs::completed_at.eq(now),
    ))
    .execute(conn)?;
    if changed == 0 {
        return Ok(());
    }
    let failed = diesel::update(
        i::job_items
            .filter(i::job_id.eq(job_id))
            .filter(i::status.eq_any([ItemStatus::Queued.as_str(), ItemStatus::Running.as_str()])),
    )
    .set((
        i::status.eq(ItemStatus::Failed.as_str()),
        i::error.eq(error),
        i::finished_at.eq(now),
    ))
    .execute(conn)? as i32;
    Tally {
        processed: failed,
        failed,
        ..Tally::default()
    }
    .apply(conn, job_id)?;
    let started_at: Option<f64> = jobs::table
        .filter(jobs::id.eq(job_id))
        .select(jobs::started_at)
        .first(conn)?;
    let result = build_result(conn, job_id, started_at.map(|s| now - s).unwrap_or(0.0))?;
    diesel::update(jobs::table.filter(jobs::id.eq(job_id)))
        .set(jobs::result.eq(result))
        .execute(conn)?;
    enqueue_webhook(conn, job_id, now)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ItemOutcome, ItemRecord};
    use crate::store::fixtures::{conn, finished, job};
    use crate::store::items::{claim_items, list_items, record_finished};
    use crate::store::jobs::{insert_job, open_job_states};
    use serde_json::json;

    fn items(conn: &mut Conn) -> Vec<ItemRecord> {
        list_items(conn, "j", None, 100, 0).unwrap().0
    }

    #[test]
    fn a_cancellation_drops_queued_items_and_leaves_running_ones() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(3), 1.0).unwrap();
        claim_items(&mut c, "j", 1, "n", 10.0, 30.0, true).unwrap();
        crate::store::items::mark_started(&mut c, &[("j".to_string(), 0, 1)], "n", 11.0).unwrap();
        let outcome = cancel_job(&mut c, "j", 20.0).unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelled { running: 1 });
        let statuses: Vec<ItemStatus> = items(&mut c).iter().map(|i| i.status).collect();
        assert_eq!(
            statuses,
            [
                ItemStatus::Running,
                ItemStatus::Cancelled,
                ItemStatus::Cancelled
            ]
        );
        let job = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!((job.status, job.cancelled), (JobStatus::Cancelled, 2));
        assert!(job.result.is_none(), "the running item builds it");
        assert_eq!(
            cancel_job(&mut c, "j", 21.0).unwrap(),
            CancelOutcome::AlreadyFinished(JobStatus::Cancelled)
        );
        assert_eq!(
            cancel_job(&mut c, "x", 21.0).unwrap(),
            CancelOutcome::NotFound
        );
    }

    #[test]
    fn an_expiry_ends_the_job_with_its_reason_and_result() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(1), 1.0).unwrap();
        let outcome = expire_job(&mut c, "j", "deadline passed", 20.0).unwrap();
        assert_eq!(outcome, CancelOutcome::Cancelled { running: 0 });
        let job = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!(job.status, JobStatus::Expired);
        assert_eq!(job.error.as_deref(), Some("deadline passed"));
        assert!(job.result.is_some());
    }

    #[test]
    fn a_pause_holds_an_open_job_and_a_resume_clears_it() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(1), 1.0).unwrap();
        let PauseOutcome::Done(paused) = set_job_paused(&mut c, "j", true, 5.0).unwrap() else {
            panic!("not paused");
        };
        assert_eq!(
            (paused.status, paused.paused_at),
            (JobStatus::Queued, Some(5.0))
        );
        assert_eq!(open_job_states(&mut c).unwrap(), [("j".to_string(), true)]);
        set_job_paused(&mut c, "j", false, 6.0).unwrap();
        assert_eq!(open_job_states(&mut c).unwrap(), [("j".to_string(), false)]);
        fail_job(&mut c, "j", "stop", 7.0).unwrap();
        assert!(matches!(
            set_job_paused(&mut c, "j", true, 8.0).unwrap(),
            PauseOutcome::Finished(JobStatus::Failed)
        ));
        set_kind_paused(&mut c, "noop", true, 9.0).unwrap();
        set_kind_paused(&mut c, "noop", true, 9.0).unwrap();
        assert_eq!(paused_kinds(&mut c).unwrap(), ["noop"]);
        set_kind_paused(&mut c, "noop", false, 9.0).unwrap();
        assert!(paused_kinds(&mut c).unwrap().is_empty());
    }

    #[test]
    fn a_failure_fails_every_unfinished_item_and_builds_the_result() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        claim_items(&mut c, "j", 1, "n", 10.0, 30.0, true).unwrap();
        fail_job(&mut c, "j", "boom", 20.0).unwrap();
        assert!(items(&mut c).iter().all(|i| i.status == ItemStatus::Failed));
        let job = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!(
            (job.status, job.processed, job.failed),
            (JobStatus::Failed, 2, 2)
        );
        assert!(job.result.is_some());
    }

    #[test]
    fn a_manual_retry_reopens_a_finished_job_with_its_failed_items() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        claim_items(&mut c, "j", 2, "n", 10.0, 30.0, true).unwrap();
        let done = [
            finished("j", 0, 1, ItemOutcome::succeeded(json!({}))),
            finished("j", 1, 1, ItemOutcome::failed(json!({}), "bad")),
        ];
        record_finished(&mut c, &done, "n", 20.0).unwrap();
        let outcome = retry_job(&mut c, "j", &[ItemStatus::Failed]).unwrap();
        let RetryOutcome::Requeued { items: n, job } = outcome else {
            panic!("not requeued: {outcome:?}");
        };
        assert_eq!(n, 1);
        assert_eq!(
            (job.status, job.processed, job.failed),
            (JobStatus::Queued, 1, 0)
        );
        assert!(job.result.is_none());
        let retried = &items(&mut c)[1];
        assert_eq!((retried.status, retried.attempts), (ItemStatus::Queued, 0));
        assert_eq!(retried.attempt_errors, ["bad"]);
        assert!(matches!(
            retry_job(&mut c, "j", &[ItemStatus::Failed]).unwrap(),
            RetryOutcome::NotFinished(JobStatus::Queued)
        ));
    }
}
