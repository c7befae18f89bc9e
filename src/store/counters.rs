//! A job's counters (`processed`, `succeeded`, …): the one way they move, so the
//! transitions that finish items never add to them by hand.

use super::{Conn, StoreError};
use crate::model::{Counts, ItemStatus};
use diesel::prelude::*;
use std::collections::HashMap;

/// Items finished per status, to be added to one job's counters.
#[derive(Default)]
pub(super) struct Tally {
    pub(super) processed: i32,
    pub(super) succeeded: i32,
    pub(super) failed: i32,
    pub(super) skipped: i32,
    pub(super) cancelled: i32,
}

impl Tally {
    /// Counts one item that ended in `status` (`cancelled` is not `processed`).
    pub(super) fn add(&mut self, status: ItemStatus) {
        match status {
            ItemStatus::Succeeded => self.succeeded += 1,
            ItemStatus::Failed => self.failed += 1,
            ItemStatus::Skipped => self.skipped += 1,
            ItemStatus::Cancelled => {
                self.cancelled += 1;
                return;
            }
            ItemStatus::Queued | ItemStatus::Running => return,
        }
        self.processed += 1;
    }

    /// How many items of this tally ended in `status` (0 for the open ones).
    pub(super) fn count(&self, status: ItemStatus) -> i32 {
        match status {
            ItemStatus::Succeeded => self.succeeded,
            ItemStatus::Failed => self.failed,
            ItemStatus::Skipped => self.skipped,
            ItemStatus::Cancelled => self.cancelled,
            ItemStatus::Queued | ItemStatus::Running => 0,
        }
    }

    /// A job's `summary` from its counts: batchforge's keys, then the aliases its kind
    /// declared ([`crate::model::summary`]). The one shape of the job's result and of
    /// its webhook.
    pub(super) fn summary(&self, kind: &str, total: u64) -> serde_json::Value {
        let mut summary = serde_json::json!({
            "total": total,
            "successful": self.succeeded,
            "failed": self.failed,
            "skipped": self.skipped,
            "cancelled": self.cancelled,
        });
        for (key, status) in crate::model::summary::aliases(kind) {
            summary[*key] = self.count(*status).into();
        }
        summary
    }

    /// Adds this tally to one job's counters (through [`apply_tallies`], the one way
    /// counters move).
    pub(super) fn apply(self, conn: &mut Conn, job_id: &str) -> Result<(), StoreError> {
        apply_tallies(conn, &HashMap::from([(job_id.to_string(), self)]))?;
        Ok(())
    }
}

/// Adds many jobs' tallies in one statement (Diesel prepares every UPDATE afresh, so one
/// per job would cost a parse each). The caller holds the jobs' locks
/// ([`lock_jobs`](super::jobs::lock_jobs)).
pub(super) fn apply_tallies(
    conn: &mut Conn,
    tallies: &HashMap<String, Tally>,
) -> Result<Vec<(String, Counts)>, StoreError> {
    if tallies.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<serde_json::Value> = tallies
        .iter()
        .map(|(id, t)| {
            serde_json::json!([
                id,
                t.processed,
                t.succeeded,
                t.failed,
                t.skipped,
                t.cancelled
            ])
        })
        .collect();
    let rows = serde_json::Value::Array(rows).to_string();
    // The callers hold these jobs' row locks already (taken in one order first).
    let counts: Vec<CountsRow> = if let Conn::Pg(c) = conn {
        diesel::sql_query(
            "UPDATE jobs SET processed = processed + v.p, succeeded = succeeded + v.s, \
                    failed = failed + v.f, skipped = skipped + v.k, cancelled = cancelled + v.c \
             FROM (SELECT e ->> 0 AS id, (e ->> 1)::int AS p, (e ->> 2)::int AS s, \
                          (e ->> 3)::int AS f, (e ->> 4)::int AS k, (e ->> 5)::int AS c \
                   FROM jsonb_array_elements($1::jsonb) AS e) AS v \
             WHERE jobs.id = v.id \
             RETURNING jobs.id, jobs.total, jobs.processed, jobs.succeeded, jobs.failed, \
                       jobs.skipped, jobs.cancelled",
        )
        .bind::<diesel::sql_types::Text, _>(rows)
        .load::<CountsRow>(c)?
    } else {
        diesel::sql_query(
            "UPDATE jobs SET processed = processed + v.p, succeeded = succeeded + v.s, \
                    failed = failed + v.f, skipped = skipped + v.k, cancelled = cancelled + v.c \
             FROM (SELECT value ->> '$[0]' AS id, value ->> '$[1]' AS p, value ->> '$[2]' AS s, \
                          value ->> '$[3]' AS f, value ->> '$[4]' AS k, value ->> '$[5]' AS c \
                   FROM json_each(?)) AS v \
             WHERE jobs.id = v.id \
             RETURNING jobs.id, jobs.total, jobs.processed, jobs.succeeded, jobs.failed, \
                       jobs.skipped, jobs.cancelled",
        )
        .bind::<diesel::sql_types::Text, _>(rows)
        .load::<CountsRow>(conn)?
    };
    let counts = counts
        .into_iter()
        .map(|r| {
            let n = |v: i32| v.max(0) as u64;
            let counts = Counts {
                total: n(r.total),
                processed: n(r.processed),
                succeeded: n(r.succeeded),
                failed: n(r.failed),
                skipped: n(r.skipped),
                cancelled: n(r.cancelled),
            };
            (r.id, counts)
        })
        .collect();
    Ok(counts)
}

/// A job's counters as [`apply_tallies`] returns them.
#[derive(diesel::QueryableByName)]
struct CountsRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    id: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    total: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    processed: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    succeeded: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    failed: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    skipped: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    cancelled: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{conn, job};
    use crate::store::jobs::{get_job, insert_job};

    #[test]
    fn tallies_add_to_their_jobs_counters_and_return_them() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(4), 1.0).unwrap();
        let mut tally = Tally::default();
        for s in [
            ItemStatus::Succeeded,
            ItemStatus::Failed,
            ItemStatus::Cancelled,
        ] {
            tally.add(s);
        }
        tally.add(ItemStatus::Running);
        let counts = apply_tallies(&mut c, &HashMap::from([("j".to_string(), tally)])).unwrap();
        let expected = Counts {
            total: 4,
            processed: 2,
            succeeded: 1,
            failed: 1,
            skipped: 0,
            cancelled: 1,
        };
        assert_eq!(counts, [("j".to_string(), expected)]);
        let stored = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!((stored.processed, stored.cancelled), (2, 1));
        assert!(apply_tallies(&mut c, &HashMap::new()).unwrap().is_empty());
    }
}
