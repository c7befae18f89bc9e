//! Items left `running` by an engine that is gone (this one, restarted, or a dead node):
//! requeued, failed once out of attempts, or cancelled with their job.

use super::counters::Tally;
use super::jobs::lock_jobs;
use super::results::finalize_job;
use super::schema::{job_items, jobs};
use super::{Conn, StoreError};
use crate::model::{ItemStatus, JobStatus};
use diesel::prelude::*;

/// What [`recover_abandoned_items`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Items put back to `queued`.
    pub requeued: u64,
    /// Items failed because they had used all their attempts.
    pub failed: u64,
    /// Items of cancelled jobs marked cancelled.
    pub cancelled: u64,
    /// Jobs that finished as a result.
    pub finished_jobs: Vec<String>,
    /// Every job that had items moved.
    pub jobs: Vec<String>,
}

/// Crash recovery: items left `running` by a stopped engine go `running → queued` (their
/// attempt stays counted if their processor had started, and is given back if they were
/// only claimed: no `started_at`), or `running → failed` once they have used `max_attempts`, or
/// `running → cancelled` when their job was cancelled meanwhile.
pub fn recover_abandoned_items(conn: &mut Conn, now: f64) -> Result<Recovery, StoreError> {
    recover_items(conn, now, None)
}

/// Recovery of the running items of every node (`nodes` = `None`: a single engine
/// restarting) or of the listed dead nodes only.
pub(super) fn recover_items(
    conn: &mut Conn,
    now: f64,
    nodes: Option<&[String]>,
) -> Result<Recovery, StoreError> {
    use job_items::dsl as i;
    let running = ItemStatus::Running.as_str();
    let job_ids: Vec<String> = match nodes {
        // Only running jobs, and cancelled ones still waiting for their running items (no
        // result yet), can hold running items; each is then searched through the status
        // index.
        None => jobs::table
            .filter(
                jobs::status.eq(JobStatus::Running.as_str()).or(jobs::status
                    .eq_any([JobStatus::Cancelled.as_str(), JobStatus::Expired.as_str()])
                    .and(jobs::result.is_null())),
            )
            .select(jobs::id)
            .load(conn)?,
        // The running items of given nodes, through `job_items_running_by_node`.
        Some(nodes) => i::job_items
            .filter(i::status.eq(running))
            .filter(i::node_id.eq_any(nodes))
            .select(i::job_id)
            .distinct()
            .load(conn)?,
    };
    let mut report = Recovery::default();
    lock_jobs(conn, job_ids.iter().map(String::as_str))?;
    for job_id in job_ids {
        let job_status: Option<String> = jobs::table
            .filter(jobs::id.eq(&job_id))
            .select(jobs::status)
            .first(conn)
            .optional()?;
        // Every running item of the job, or those of the dead nodes only.
        let every_node = nodes.is_none();
        let of_nodes: Vec<String> = nodes.map(<[String]>::to_vec).unwrap_or_default();
        let mine = || {
            use diesel::IntoSql;
            i::job_items
                .filter(i::job_id.eq(job_id.clone()))
                .filter(i::status.eq(running))
                .filter(
                    every_node
                        .into_sql::<diesel::sql_types::Bool>()
                        .or(i::node_id.eq_any(of_nodes.clone())),
                )
        };
        let mut tally = Tally::default();
        if matches!(job_status.as_deref(), Some("cancelled" | "expired")) {
            let n = diesel::update(mine())
                .set((
                    i::status.eq(ItemStatus::Cancelled.as_str()),
                    i::error.eq("cancelled while the engine was down"),
                    i::finished_at.eq(now),
                    i::node_id.eq(None::<String>),
                ))
                .execute(conn)? as i32;
            tally.cancelled = n;
            report.cancelled += n as u64;
        } else {
            // Claimed but never started: the attempt was only reserved, so it is given
            // back; such an item never fails here, however often the engine died.
            report.requeued += diesel::update(mine().filter(i::started_at.is_null()))
                .set((
                    i::status.eq(ItemStatus::Queued.as_str()),
                    i::attempts.eq(i::attempts - 1),
                    i::node_id.eq(None::<String>),
                ))
                .execute(conn)? as u64;
            let exhausted = diesel::update(mine().filter(i::attempts.ge(i::max_attempts)))
                .set((
                    i::status.eq(ItemStatus::Failed.as_str()),
                    i::error
                        .eq("abandoned: the engine stopped while this item ran, on every attempt"),
                    i::finished_at.eq(now),
                    i::node_id.eq(None::<String>),
                ))
                .execute(conn)? as i32;
            tally.failed = exhausted;
            tally.processed = exhausted;
            report.failed += exhausted as u64;
            report.requeued += diesel::update(mine())
                .set((
                    i::status.eq(ItemStatus::Queued.as_str()),
                    i::node_id.eq(None::<String>),
                ))
                .execute(conn)? as u64;
        }
        tally.apply(conn, &job_id)?;
        report.jobs.push(job_id.clone());
        if finalize_job(conn, &job_id, now)? {
            report.finished_jobs.push(job_id);
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{conn, job};
    use crate::store::items::{claim_items, list_items, mark_started};
    use crate::store::jobs::insert_job;

    #[test]
    fn a_restart_requeues_running_items_and_fails_those_out_of_attempts() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        claim_items(&mut c, "j", 2, "n", 10.0, 30.0, true).unwrap();
        let both = [("j".to_string(), 0, 1), ("j".to_string(), 1, 1)];
        assert_eq!(mark_started(&mut c, &both, "n", 11.0).unwrap(), 2);
        // Item 1 used its last attempt (3, the crash-recovery default).
        diesel::update(job_items::table.filter(job_items::idx.eq(1)))
            .set(job_items::attempts.eq(3))
            .execute(&mut c)
            .unwrap();
        let report = recover_abandoned_items(&mut c, 20.0).unwrap();
        assert_eq!(
            (report.requeued, report.failed, report.cancelled),
            (1, 1, 0)
        );
        assert_eq!(report.jobs, ["j"]);
        let items = list_items(&mut c, "j", None, 10, 0).unwrap().0;
        assert_eq!(
            (items[0].status, items[0].attempts),
            (ItemStatus::Queued, 1)
        );
        assert_eq!(items[1].status, ItemStatus::Failed);
        assert_eq!(recover_abandoned_items(&mut c, 21.0).unwrap().requeued, 0);
    }

    #[test]
    fn a_restart_gives_back_the_attempt_of_items_claimed_but_never_started() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        // Three crashes with the items claimed but never started: none is charged.
        for round in 0..3 {
            let t = 10.0 * (round as f64 + 1.0);
            claim_items(&mut c, "j", 2, "n", t, 30.0, round == 0).unwrap();
            let report = recover_abandoned_items(&mut c, t + 1.0).unwrap();
            assert_eq!((report.requeued, report.failed), (2, 0));
        }
        let items = list_items(&mut c, "j", None, 10, 0).unwrap().0;
        assert!(items
            .iter()
            .all(|i| (i.status, i.attempts) == (ItemStatus::Queued, 0)));
        // A started one keeps its attempt.
        claim_items(&mut c, "j", 2, "n", 50.0, 30.0, false).unwrap();
        mark_started(&mut c, &[("j".to_string(), 0, 1)], "n", 51.0).unwrap();
        recover_abandoned_items(&mut c, 52.0).unwrap();
        let items = list_items(&mut c, "j", None, 10, 0).unwrap().0;
        assert_eq!((items[0].attempts, items[1].attempts), (1, 0));
    }
}
