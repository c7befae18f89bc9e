//! Retention: deleting finished jobs, their items and their webhook delivery in short
//! transactions.

use super::jobs::{get_job_status, lock_jobs};
use super::schema::{job_items, jobs};
use super::{is_pg, Conn, StoreError};
use crate::model::JobStatus;
use diesel::prelude::*;

/// Most items one [`prune_finished`] call deletes (one job's items may take several calls).
pub const PRUNE_MAX_ITEMS: i64 = 5000;

/// What one [`prune_finished`] call removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Jobs deleted (with all their items).
    pub jobs: u64,
    /// Items deleted, including those of jobs not yet wholly deleted.
    pub items: u64,
    /// More may be left: call again.
    pub more: bool,
}

#[derive(diesel::QueryableByName)]
struct PruneCandidate {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
}

/// Retention: deletes jobs that finished (`completed | failed | cancelled | expired`, their
/// result built) before `older_than`, with their items and webhook delivery; never an open
/// job, nor one whose webhook is still being delivered, nor one that an open job names in
/// its `depends_on`. One call is one short transaction: at
/// most `max_jobs` jobs and [`PRUNE_MAX_ITEMS`] items; a job with more items loses them
/// over several calls, its row going last. `more` says whether to call again.
pub fn prune_finished(
    conn: &mut Conn,
    older_than: f64,
    max_jobs: i64,
) -> Result<Pruned, StoreError> {
    use super::schema::webhook_deliveries as w;
    use diesel::sql_types::{BigInt, Double, Text};
    let max_jobs = max_jobs.max(1);
    let sql = if is_pg(conn) {
        "SELECT id FROM jobs \
         WHERE completed_at < $1 \
           AND status IN ('completed', 'failed', 'cancelled', 'expired') \
           AND result IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                           WHERE d.job_id = jobs.id AND d.next_attempt_at IS NOT NULL) \
           AND NOT EXISTS (SELECT 1 FROM jobs o CROSS JOIN LATERAL jsonb_array_elements_text( \
                             CASE WHEN jsonb_typeof(o.spec::jsonb -> 'depends_on') = 'array' \
                                  THEN o.spec::jsonb -> 'depends_on' ELSE '[]'::jsonb END) AS dep \
                           WHERE o.status IN ('queued', 'running') AND dep = jobs.id) \
         ORDER BY completed_at LIMIT $2"
    } else {
        // `+status`: walk `jobs_by_completed` (oldest first, stops at the limit), never
        // every finished job through `jobs_by_status`.
        "SELECT id FROM jobs \
         WHERE completed_at < ? \
           AND +status IN ('completed', 'failed', 'cancelled', 'expired') \
           AND result IS NOT NULL \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d \
                           WHERE d.job_id = jobs.id AND d.next_attempt_at IS NOT NULL) \
           AND NOT EXISTS (SELECT 1 FROM jobs o, \
                             json_each(CASE WHEN json_type(o.spec, '$.depends_on') = 'array' \
                                            THEN json_extract(o.spec, '$.depends_on') END) dep \
                           WHERE o.status IN ('queued', 'running') \
                             AND dep.value = jobs.id) \
         ORDER BY completed_at LIMIT ?"
    };
    let candidates: Vec<PruneCandidate> = diesel::sql_query(sql)
        .bind::<Double, _>(older_than)
        .bind::<BigInt, _>(max_jobs + 1)
        .load(conn)?;
    let mut pruned = Pruned {
        more: candidates.len() as i64 > max_jobs,
        ..Pruned::default()
    };
    let mut budget = PRUNE_MAX_ITEMS;
    lock_jobs(
        conn,
        candidates
            .iter()
            .take(max_jobs as usize)
            .map(|c| c.id.as_str()),
    )?;
    for PruneCandidate { id } in candidates.iter().take(max_jobs as usize) {
        // Another node may have reopened it (a retry) since the candidates were read.
        if !get_job_status(conn, id)?.is_some_and(JobStatus::is_terminal) {
            continue;
        }
        let delete = if is_pg(conn) {
            "DELETE FROM job_items WHERE job_id = $1 AND idx IN \
             (SELECT idx FROM job_items WHERE job_id = $2 ORDER BY idx LIMIT $3)"
        } else {
            "DELETE FROM job_items WHERE job_id = ? AND idx IN \
             (SELECT idx FROM job_items WHERE job_id = ? ORDER BY idx LIMIT ?)"
        };
        let deleted = diesel::sql_query(delete)
            .bind::<Text, _>(id)
            .bind::<Text, _>(id)
            .bind::<BigInt, _>(budget)
            .execute(conn)? as i64;
        pruned.items += deleted as u64;
        budget -= deleted;
        if budget == 0 {
            let left: bool = diesel::select(diesel::dsl::exists(
                job_items::table.filter(job_items::job_id.eq(id)),
            ))
            .get_result(conn)?;
            if left {
                pruned.more = true;
                break;
            }
        }
        diesel::delete(w::table.filter(w::job_id.eq(id))).execute(conn)?;
        diesel::delete(jobs::table.filter(jobs::id.eq(id))).execute(conn)?;
        pruned.jobs += 1;
        if budget == 0 {
            pruned.more = true;
            break;
        }
    }
    Ok(pruned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{conn, job};
    use crate::store::job_control::fail_job;
    use crate::store::jobs::{get_job, insert_job};

    #[test]
    fn a_prune_deletes_old_finished_jobs_and_spares_open_and_recent_ones() {
        let mut c = conn();
        for id in ["old", "recent", "open"] {
            insert_job(&mut c, id, &job(2), 1.0).unwrap();
        }
        fail_job(&mut c, "old", "stop", 10.0).unwrap();
        fail_job(&mut c, "recent", "stop", 300.0).unwrap();
        let pruned = prune_finished(&mut c, 200.0, 10).unwrap();
        assert_eq!(
            pruned,
            Pruned {
                jobs: 1,
                items: 2,
                more: false
            }
        );
        assert!(get_job(&mut c, "old").unwrap().is_none());
        assert!(get_job(&mut c, "recent").unwrap().is_some());
        assert!(get_job(&mut c, "open").unwrap().is_some());
        assert_eq!(
            prune_finished(&mut c, 200.0, 10).unwrap(),
            Pruned::default()
        );
    }
}
