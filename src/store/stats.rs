//! Whole-queue reads for health and metrics: jobs per status, unfinished items, a ping.

use super::schema::jobs;
use super::{Conn, StoreError};
use crate::model::{JobStatus, QueueStats};
use diesel::dsl::count_star;
use diesel::prelude::*;

/// Read: how many jobs are in each status.
pub fn queue_stats(conn: &mut Conn) -> Result<QueueStats, StoreError> {
    let counts: Vec<(String, i64)> = jobs::table
        .group_by(jobs::status)
        .select((jobs::status, count_star()))
        .load(conn)?;
    let mut stats = QueueStats::default();
    for (status, n) in counts {
        let n = n as u64;
        stats.total += n;
        match status.parse::<JobStatus>() {
            Ok(JobStatus::Queued) => stats.queued += n,
            Ok(JobStatus::Running) => stats.running += n,
            Ok(JobStatus::Completed) => stats.completed += n,
            Ok(JobStatus::Failed) => stats.failed += n,
            Ok(JobStatus::Cancelled) => stats.cancelled += n,
            Ok(JobStatus::Expired) => stats.expired += n,
            Err(_) => {}
        }
    }
    Ok(stats)
}

/// Read: items of open jobs that have no final result yet (queued or running).
pub fn unfinished_items(conn: &mut Conn) -> Result<u64, StoreError> {
    let n: Option<i64> = jobs::table
        .filter(jobs::status.eq_any([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]))
        .select(diesel::dsl::sum(
            jobs::total - jobs::processed - jobs::cancelled,
        ))
        .first(conn)?;
    Ok(n.unwrap_or(0).max(0) as u64)
}

/// Read: checks that the database answers.
pub fn ping(conn: &mut Conn) -> Result<(), StoreError> {
    diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>("1")).execute(conn)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{conn, job};
    use crate::store::job_control::cancel_job;
    use crate::store::jobs::insert_job;

    #[test]
    fn stats_count_jobs_per_status_and_unfinished_items() {
        let mut c = conn();
        insert_job(&mut c, "a", &job(2), 1.0).unwrap();
        insert_job(&mut c, "b", &job(3), 1.0).unwrap();
        cancel_job(&mut c, "b", 2.0).unwrap();
        let stats = queue_stats(&mut c).unwrap();
        assert_eq!((stats.total, stats.queued, stats.cancelled), (2, 1, 1));
        assert_eq!(unfinished_items(&mut c).unwrap(), 2);
        ping(&mut c).unwrap();
    }
}
