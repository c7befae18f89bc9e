//! The group-commit transaction: everything the Supervisor has pending goes into one
//! write, so finished outcomes, new jobs, claims and group slots cost one transaction
//! together rather than one each. The actor builds a [`Batch`], runs [`commit`] through
//! [`crate::store::Store::write`] and applies the [`Committed`] it returns.

use crate::model::{AdmittedJob, ClaimedItem, Counts, FieldError, FinishedItem, JobRecord};
use crate::store::{self, items::Release};
use crate::store::{Conn, StoreError};
use std::sync::Arc;

/// Room reserved for one job in a claim: how many items, and whether it is the job's
/// first claim here (the store may then have to mark it running).
pub struct ClaimAsk {
    /// The job.
    pub job_id: Arc<str>,
    /// Items wanted.
    pub n: u32,
    /// Nothing of the job was claimed by this node yet.
    pub first: bool,
}

/// Everything one write does, in the order it is done.
pub struct Batch {
    /// This node's id (claims, fencing, notifications).
    pub node: Arc<str>,
    /// The lease written on claimed items (seconds).
    pub lease: f64,
    /// Claimed items to put back in the queue.
    pub releases: Vec<Release>,
    /// Claimed items whose processors begin once this write commits: their attempt
    /// counts from now on ([`store::items::mark_started`]).
    pub starts: Vec<Release>,
    /// Finished outcomes to record (shared with the actor, which keeps them for a retry).
    pub outcomes: Arc<Vec<FinishedItem>>,
    /// New jobs to insert: (id, job).
    pub submissions: Vec<(String, Arc<AdmittedJob>)>,
    /// Insert each submission inside a savepoint of its own: one that fails is rolled
    /// back alone ([`Inserted::Failed`]) and the rest of the write commits. Off on a first
    /// try (two more statements per submission); on when retrying a write that failed.
    pub isolate_submissions: bool,
    /// Shared group slots to give back: (group, slots).
    pub slot_releases: Vec<(String, Vec<i32>)>,
    /// Shared group slots to take: (group, limit, how many).
    pub slot_asks: Vec<(String, u32, u32)>,
    /// Read every group slot this node holds.
    pub read_owned_slots: bool,
    /// Items to claim, per job.
    pub claims: Vec<ClaimAsk>,
}

/// What a submission became in a write.
pub enum Inserted {
    /// A new job, stored and queued.
    New(JobRecord),
    /// The job its idempotency key already names.
    Existing(JobRecord),
    /// The key names a job of another kind.
    KeyConflict(JobRecord),
    /// A job it depends on does not exist.
    UnknownDependency(FieldError),
    /// Its insert failed inside its own savepoint ([`Batch::isolate_submissions`]); the
    /// rest of the write committed.
    Failed(StoreError),
}

/// What one write committed.
pub struct Committed {
    /// Jobs whose items were put back in the queue.
    pub released: Vec<String>,
    /// Jobs whose last outcome was recorded, now finalized.
    pub done: Vec<String>,
    /// The new counters of every job that gained outcomes.
    pub counts: Vec<(String, Counts)>,
    /// One per submission, in the batch's order.
    pub inserted: Vec<Inserted>,
    /// One per claim, in the batch's order: the items got, and (for a short claim) when
    /// the job's next item waiting out a retry delay becomes claimable.
    pub claimed: Vec<(Vec<ClaimedItem>, Option<f64>)>,
    /// Shared group slots taken: (group, asked, got).
    pub slots: Vec<(String, u32, Vec<i32>)>,
    /// Every group slot this node holds, when the batch asked to read them.
    pub owned_slots: Option<Vec<(String, i32)>>,
    /// The transaction's time (Unix seconds).
    pub at: f64,
}

/// Runs one group commit on `conn` (inside the write transaction): releases, starts,
/// outcomes, submissions, group slots and claims, in that order.
pub fn commit(conn: &mut Conn, batch: Batch) -> Result<Committed, StoreError> {
    let t = crate::model::now();
    let node = &*batch.node;
    // Every job row this write will lock, at once and in one order, so two
    // nodes' writes (and a cancel) never wait for each other crosswise.
    store::jobs::lock_jobs(
        conn,
        batch
            .releases
            .iter()
            .map(|(id, _, _)| id.as_str())
            .chain(batch.outcomes.iter().map(|f| f.job_id.as_str()))
            .chain(batch.claims.iter().filter(|c| c.first).map(|c| &*c.job_id)),
    )?;
    let released = release(conn, &batch.releases, node, t)?;
    store::items::mark_started(conn, &batch.starts, node, t)?;
    let recorded = record(conn, &batch.outcomes, node, t)?;
    let mut inserted = Vec::with_capacity(batch.submissions.len());
    for (id, job) in &batch.submissions {
        inserted.push(if batch.isolate_submissions {
            use diesel::Connection;
            match conn.transaction(|c| insert(c, id, job, node, t)) {
                Ok(i) => i,
                Err(e) => {
                    log::warn!("submission {id} failed and was rolled back alone: {e}");
                    Inserted::Failed(e)
                }
            }
        } else {
            insert(conn, id, job, node, t)?
        });
    }
    for (group, slots) in &batch.slot_releases {
        store::groups::release_group_slots(conn, group, node, slots)?;
    }
    let mut slots = Vec::with_capacity(batch.slot_asks.len());
    for (group, limit, n) in batch.slot_asks {
        let got = store::groups::acquire_group_slots(conn, &group, limit, node, n)?;
        slots.push((group, n, got));
    }
    let owned_slots = if batch.read_owned_slots {
        Some(store::groups::owned_group_slots(conn, node)?)
    } else {
        None
    };
    let mut claimed = Vec::with_capacity(batch.claims.len());
    for claim in &batch.claims {
        claimed.push(claim_for(conn, claim, node, t, batch.lease)?);
    }
    Ok(Committed {
        released,
        done: recorded.done,
        counts: recorded.counts,
        inserted,
        claimed,
        slots,
        owned_slots,
        at: t,
    })
}

/// Puts claimed items back in the queue; returns their jobs, each once.
fn release(
    conn: &mut Conn,
    releases: &[Release],
    node: &str,
    t: f64,
) -> Result<Vec<String>, StoreError> {
    let mut released: Vec<String> = Vec::new();
    if !releases.is_empty() {
        store::items::release_items(conn, releases, node, t)?;
        for (job_id, _, _) in releases {
            if !released.contains(job_id) {
                released.push(job_id.clone());
            }
        }
    }
    Ok(released)
}

/// Records finished outcomes; returns the jobs they finalized and the new counters.
fn record(
    conn: &mut Conn,
    outcomes: &[FinishedItem],
    node: &str,
    t: f64,
) -> Result<store::items::Recorded, StoreError> {
    if outcomes.is_empty() {
        return Ok(store::items::Recorded::default());
    }
    let recorded = store::items::record_finished(conn, outcomes, node, t)?;
    // Other nodes following these jobs stop following them.
    for id in &recorded.done {
        store::notice::notify(conn, &format!("job:{id}:{node}"))?;
    }
    Ok(recorded)
}

/// Inserts one submission, unless its idempotency key names a stored job or a job it
/// depends on does not exist.
fn insert(
    conn: &mut Conn,
    id: &str,
    job: &AdmittedJob,
    node: &str,
    t: f64,
) -> Result<Inserted, StoreError> {
    // The single writer makes check-then-insert race-free; a duplicate
    // in the same write sees the first one's row.
    let existing = match &job.schedule.idempotency_key {
        Some(key) => store::jobs::job_by_idempotency_key(conn, key)?,
        None => None,
    };
    let mut missing = None;
    for (i, dep) in job.options.dependencies.jobs.iter().enumerate() {
        if store::jobs::get_job_status(conn, dep)?.is_none() {
            missing = Some((i, dep.clone()));
            break;
        }
    }
    Ok(match existing {
        Some(e) if e.kind == job.kind => Inserted::Existing(e),
        Some(e) => Inserted::KeyConflict(e),
        None if missing.is_some() => {
            let (i, dep) = missing.unwrap_or_default();
            Inserted::UnknownDependency(FieldError::new(
                format!("depends_on[{i}]"),
                format!("no job '{dep}' (a job can only depend on jobs that exist, so dependencies never form a cycle)"),
            ))
        }
        None => {
            store::jobs::insert_admitted_job(conn, id, job, &job.options, t)?;
            // Idle nodes wake up and claim from it too.
            store::notice::notify(conn, &format!("new:{id}:{node}"))?;
            Inserted::New(JobRecord::queued(id, job, t))
        }
    })
}

/// Claims items for one job.
fn claim_for(
    conn: &mut Conn,
    claim: &ClaimAsk,
    node: &str,
    t: f64,
    lease: f64,
) -> Result<(Vec<ClaimedItem>, Option<f64>), StoreError> {
    let items =
        store::items::claim_items(conn, &claim.job_id, claim.n, node, t, lease, claim.first)?;
    // A short claim: items waiting out a retry delay (maybe from before a
    // restart) must bring the job back when they become claimable.
    let next = if (items.len() as u32) < claim.n {
        store::items::next_available_at(conn, &claim.job_id, t)?
    } else {
        None
    };
    Ok((items, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AdmittedJob, JobOptions};
    use crate::store::fixtures;

    fn batch(submissions: Vec<(String, Arc<AdmittedJob>)>, isolate: bool) -> Batch {
        Batch {
            node: Arc::from("n"),
            lease: 30.0,
            releases: Vec::new(),
            starts: Vec::new(),
            outcomes: Arc::new(Vec::new()),
            submissions,
            isolate_submissions: isolate,
            slot_releases: Vec::new(),
            slot_asks: Vec::new(),
            read_owned_slots: false,
            claims: Vec::new(),
        }
    }

    fn admitted(items: usize) -> Arc<AdmittedJob> {
        Arc::new(AdmittedJob {
            job: fixtures::job(items),
            options: JobOptions::default(),
        })
    }

    /// Two submissions under one id: the second insert breaks the primary key.
    fn clashing() -> Vec<(String, Arc<AdmittedJob>)> {
        vec![
            ("a".to_string(), admitted(2)),
            ("dup".to_string(), admitted(1)),
            ("dup".to_string(), admitted(3)),
            ("b".to_string(), admitted(1)),
        ]
    }

    fn stored(conn: &mut Conn, id: &str) -> bool {
        store::jobs::get_job_status(conn, id).unwrap().is_some()
    }

    #[test]
    fn a_failing_submission_fails_the_whole_write_unless_isolated() {
        let mut conn = fixtures::conn();
        use diesel::Connection;
        // Without savepoints the write fails as a whole (and its transaction rolls back).
        let whole = conn.transaction(|c| commit(c, batch(clashing(), false)));
        assert!(whole.is_err());
        assert!(!stored(&mut conn, "a"));
        // Isolated: only the clashing insert is rolled back; the others commit.
        let committed = conn
            .transaction(|c| commit(c, batch(clashing(), true)))
            .expect("the write commits");
        let kinds: Vec<&str> = committed
            .inserted
            .iter()
            .map(|i| match i {
                Inserted::New(_) => "new",
                Inserted::Failed(_) => "failed",
                _ => "other",
            })
            .collect();
        assert_eq!(kinds, ["new", "new", "failed", "new"]);
        for id in ["a", "dup", "b"] {
            assert!(stored(&mut conn, id), "{id}");
        }
        // The first `dup` keeps its own items, none of the rolled-back one's.
        let (items, _) = store::items::list_items(&mut conn, "dup", None, 10, 0).unwrap();
        assert_eq!(items.len(), 1);
    }
}
