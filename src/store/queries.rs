//! Every state transition of the queue, one plain function over a connection each.
//!
//! Callers (the Supervisor through [`super::Store::write`], tests directly) run them inside
//! a transaction; functions that touch many items do so in one statement or one loop inside
//! that transaction, never one transaction per item.

use super::rows::{parse_json, ItemRow, JobRow, NewItemRow, NewJobRow};
use super::schema::{job_items, jobs, kind_pauses, nodes};
use super::StoreError;
use crate::model::{
    ClaimedItem, Counts, FinishedItem, ItemRecord, ItemStatus, JobRecord, JobStatus, NewJob,
    QueueStats,
};
use diesel::dsl::count_star;
use diesel::prelude::*;
use diesel::sqlite::SqliteConnection;
use std::collections::HashMap;

type Conn = SqliteConnection;

/// Rows per multi-row INSERT: 6 bound values each stays far below SQLite's variable limit.
const INSERT_CHUNK: usize = 1000;

/// How many times an item may be left running by a crash before it is failed for good.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// Submission: inserts a job as `queued` with all its items `queued`.
pub fn insert_job(conn: &mut Conn, id: &str, job: &NewJob, now: f64) -> Result<(), StoreError> {
    diesel::insert_into(jobs::table)
        .values(NewJobRow {
            id,
            kind: &job.kind,
            status: JobStatus::Queued.as_str(),
            spec: job.spec.to_string(),
            parallel: job.parallel as i32,
            total: job.items.len() as i32,
            metadata: job.metadata.to_string(),
            created_at: now,
            priority: job.schedule.priority,
            run_at: job.schedule.run_at,
            idempotency_key: job.schedule.idempotency_key.as_deref(),
        })
        .execute(conn)?;
    for (chunk_no, chunk) in job.items.chunks(INSERT_CHUNK).enumerate() {
        let rows: Vec<NewItemRow> = chunk
            .iter()
            .enumerate()
            .map(|(i, item)| NewItemRow {
                job_id: id,
                idx: (chunk_no * INSERT_CHUNK + i) as i32,
                key: &item.key,
                payload: item.payload.to_string(),
                status: ItemStatus::Queued.as_str(),
                max_attempts: DEFAULT_MAX_ATTEMPTS,
            })
            .collect();
        diesel::insert_into(job_items::table)
            .values(&rows)
            .execute(conn)?;
    }
    Ok(())
}

/// Claim: moves up to `limit` of a job's items `queued → running` in submission order,
/// counting an attempt; the job moves `queued → running` on its first claim (callers that
/// know the job already runs pass `first_claim: false` to skip that statement).
pub fn claim_items(
    conn: &mut Conn,
    job_id: &str,
    limit: u32,
    node_id: &str,
    now: f64,
    first_claim: bool,
) -> Result<Vec<ClaimedItem>, StoreError> {
    use job_items::dsl as i;
    // One statement with a fixed shape (the chunk is a sub-select, not a literal list), so
    // its prepared form is cached across claims.
    let q = diesel::alias!(job_items as q);
    let chunk = q
        .filter(q.field(i::job_id).eq(job_id))
        .filter(q.field(i::status).eq(ItemStatus::Queued.as_str()))
        .order(q.field(i::idx).asc())
        .limit(limit as i64)
        .select(q.field(i::idx));
    let mut claimed: Vec<(i32, String, String, i32)> = diesel::update(
        i::job_items
            .filter(i::job_id.eq(job_id))
            .filter(i::status.eq(ItemStatus::Queued.as_str()))
            .filter(i::idx.eq_any(chunk)),
    )
    .set((
        i::status.eq(ItemStatus::Running.as_str()),
        i::attempts.eq(i::attempts + 1),
        i::started_at.eq(now),
        i::node_id.eq(node_id),
    ))
    .returning((i::idx, i::key, i::payload, i::attempts))
    .get_results(conn)?;
    if claimed.is_empty() {
        return Ok(Vec::new());
    }
    claimed.sort_unstable_by_key(|c| c.0);
    if first_claim {
        diesel::update(
            jobs::table
                .filter(jobs::id.eq(job_id))
                .filter(jobs::status.eq(JobStatus::Queued.as_str())),
        )
        .set((
            jobs::status.eq(JobStatus::Running.as_str()),
            jobs::started_at.eq(now),
        ))
        .execute(conn)?;
    }
    claimed
        .into_iter()
        .map(|(idx, key, payload, attempts)| {
            Ok(ClaimedItem {
                job_id: job_id.to_string(),
                index: idx as u32,
                key,
                payload: parse_json("job_items.payload", &payload)?,
                attempt: attempts.max(1) as u32,
            })
        })
        .collect()
}

#[derive(Default)]
struct Tally {
    processed: i32,
    succeeded: i32,
    failed: i32,
    skipped: i32,
    cancelled: i32,
}

impl Tally {
    fn add(&mut self, status: ItemStatus) {
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

    /// Adds this tally to one job's counters (through [`apply_tallies`], the one way
    /// counters move).
    fn apply(self, conn: &mut Conn, job_id: &str) -> Result<(), StoreError> {
        apply_tallies(conn, &HashMap::from([(job_id.to_string(), self)]))?;
        Ok(())
    }
}

/// Adds many jobs' tallies in one statement (Diesel prepares every UPDATE afresh, so one
/// per job would cost a parse each).
fn apply_tallies(
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
    let counts: Vec<CountsRow> = diesel::sql_query(
        "UPDATE jobs SET processed = processed + v.p, succeeded = succeeded + v.s, \
                failed = failed + v.f, skipped = skipped + v.k, cancelled = cancelled + v.c \
         FROM (SELECT value ->> '$[0]' AS id, value ->> '$[1]' AS p, value ->> '$[2]' AS s, \
                      value ->> '$[3]' AS f, value ->> '$[4]' AS k, value ->> '$[5]' AS c \
               FROM json_each(?)) AS v \
         WHERE jobs.id = v.id \
         RETURNING jobs.id, jobs.total, jobs.processed, jobs.succeeded, jobs.failed, \
                   jobs.skipped, jobs.cancelled",
    )
    .bind::<diesel::sql_types::Text, _>(serde_json::Value::Array(rows).to_string())
    .load::<CountsRow>(conn)?;
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

/// Completion: moves finished items `running → succeeded | failed | skipped | cancelled`
/// with their results, adds them to their jobs' counters, and finalizes every job whose
/// last item this was. Items no longer `running` (already recorded) are left untouched,
/// so a result is never written twice. Returns the ids of the jobs that finished.
pub fn record_finished(
    conn: &mut Conn,
    finished: &[FinishedItem],
    now: f64,
) -> Result<Recorded, StoreError> {
    // Outcomes travel in chunks of bounded size: SQLite refuses any value over 1 GB, and
    // a few outcomes with large outputs must not make a whole commit fail for good.
    let mut chunks: Vec<Vec<serde_json::Value>> = vec![Vec::new()];
    let mut chunk_bytes = 0usize;
    for item in finished {
        if !item.outcome.status.is_terminal() {
            // The Worker turns such outcomes into failures; never store a non-final one.
            log::error!(
                "ignoring non-final outcome '{}' for {}[{}]",
                item.outcome.status,
                item.job_id,
                item.index
            );
            continue;
        }
        let result = item.outcome.result.to_string();
        let size = result.len() + item.outcome.error.as_ref().map_or(0, String::len) + 64;
        if chunk_bytes + size > OUTCOME_CHUNK_BYTES && chunk_bytes > 0 {
            chunks.push(Vec::new());
            chunk_bytes = 0;
        }
        chunk_bytes += size;
        chunks
            .last_mut()
            .expect("never empty")
            .push(serde_json::json!([
                item.job_id,
                item.index,
                item.outcome.status.as_str(),
                result,
                item.outcome.error,
                item.finished_at,
            ]));
    }
    let mut changed: Vec<ChangedItem> = Vec::new();
    for rows in chunks.into_iter().filter(|c| !c.is_empty()) {
        changed.extend(record_chunk(conn, rows)?);
    }
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    for r in changed {
        if let Ok(status) = r.status.parse::<ItemStatus>() {
            tallies.entry(r.job_id).or_default().add(status);
        }
    }
    let counts = apply_tallies(conn, &tallies)?;
    let mut done = Vec::new();
    for (job_id, c) in &counts {
        if c.processed + c.cancelled >= c.total && finalize_job(conn, job_id, now)? {
            done.push(job_id.clone());
        }
    }
    Ok(Recorded { done, counts })
}

/// Largest JSON text of outcomes sent in one statement.
const OUTCOME_CHUNK_BYTES: usize = 32 * 1024 * 1024;

fn record_chunk(
    conn: &mut Conn,
    rows: Vec<serde_json::Value>,
) -> Result<Vec<ChangedItem>, StoreError> {
    // One statement for the whole batch: Diesel prepares every UPDATE afresh, so a
    // statement per item would spend most of a commit in SQLite's parser. The outcomes
    // travel as one JSON array and are joined on the primary key.
    let changed: Vec<ChangedItem> = diesel::sql_query(
        "UPDATE job_items SET status = v.status, result = v.result, error = v.error, \
                finished_at = v.finished_at, node_id = NULL \
         FROM (SELECT value ->> '$[0]' AS job_id, value ->> '$[1]' AS idx, \
                      value ->> '$[2]' AS status, value ->> '$[3]' AS result, \
                      value ->> '$[4]' AS error, value ->> '$[5]' AS finished_at \
               FROM json_each(?)) AS v \
         WHERE job_items.job_id = v.job_id AND job_items.idx = v.idx \
           AND job_items.status = 'running' \
         RETURNING job_items.job_id, job_items.status",
    )
    .bind::<diesel::sql_types::Text, _>(serde_json::Value::Array(rows).to_string())
    .load(conn)?;
    Ok(changed)
}

/// What [`record_finished`] changed.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Jobs whose last item this was, now finalized.
    pub done: Vec<String>,
    /// The new counters of every job that gained outcomes.
    pub counts: Vec<(String, Counts)>,
}

/// An item that [`record_finished`] changed.
#[derive(diesel::QueryableByName)]
struct ChangedItem {
    #[diesel(sql_type = diesel::sql_types::Text)]
    job_id: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    status: String,
}

/// Finalization: once every item of a job is final, builds the job's result and moves the
/// job `queued | running → completed`. A cancelled job keeps its status and only gains its
/// result. Returns whether the job is now finished with a result.
pub fn finalize_job(conn: &mut Conn, job_id: &str, now: f64) -> Result<bool, StoreError> {
    type Row = (String, i32, i32, i32, Option<f64>, Option<f64>, bool);
    let Some((status, total, processed, cancelled, started_at, completed_at, has_result)) =
        jobs::table
            .filter(jobs::id.eq(job_id))
            .select((
                jobs::status,
                jobs::total,
                jobs::processed,
                jobs::cancelled,
                jobs::started_at,
                jobs::completed_at,
                jobs::result.is_not_null(),
            ))
            .first::<Row>(conn)
            .optional()?
    else {
        return Ok(false);
    };
    if processed + cancelled < total || has_result {
        return Ok(false);
    }
    let result = build_result(conn, job_id, started_at.map(|s| now - s).unwrap_or(0.0))?;
    let status = if status == JobStatus::Cancelled.as_str() {
        JobStatus::Cancelled
    } else {
        JobStatus::Completed
    };
    diesel::update(jobs::table.filter(jobs::id.eq(job_id)))
        .set((
            jobs::status.eq(status.as_str()),
            jobs::result.eq(result),
            jobs::completed_at.eq(completed_at.unwrap_or(now)),
        ))
        .execute(conn)?;
    Ok(true)
}

/// Builds `{summary, results, elapsed_seconds}` by splicing the items' stored JSON in
/// submission order, without parsing each result again.
/// Largest `results` array stored in a job's result; entries past it are left out (and
/// counted in `results_omitted`): SQLite refuses values over 1 GB, and a client reading a
/// job should not have to take one either.
const MAX_RESULT_BYTES: usize = 256 * 1024 * 1024;

/// `(idx, key, status, result, error)` of one item, as a job's result and its JSONL export
/// are built from it; `result` is the stored JSON text.
pub type ResultRow = (i32, String, String, Option<String>, Option<String>);

/// Read: up to `limit` items of a job with an index above `after`, in submission order,
/// with their stored results as text (keyset paging: each page costs the same).
pub fn result_rows_after(
    conn: &mut Conn,
    job_id: &str,
    after: i32,
    limit: i64,
) -> Result<Vec<ResultRow>, StoreError> {
    use job_items::dsl as i;
    Ok(i::job_items
        .filter(i::job_id.eq(job_id))
        .filter(i::idx.gt(after))
        .order(i::idx.asc())
        .limit(limit)
        .select((i::idx, i::key, i::status, i::result, i::error))
        .load(conn)?)
}

fn build_result(conn: &mut Conn, job_id: &str, elapsed: f64) -> Result<String, StoreError> {
    // Pages keep memory bounded by the result text itself, not by a row vector of the
    // whole job (a million rows would otherwise cost hundreds of MB at once).
    const PAGE: i64 = 5000;
    let mut tally = Tally::default();
    let mut results = String::from("[");
    let mut total = 0u64;
    let mut kept = 0u64;
    let mut capped = false;
    let mut after = -1i32;
    loop {
        let rows = result_rows_after(conn, job_id, after, PAGE)?;
        let Some(last) = rows.last() else {
            break;
        };
        after = last.0;
        let short = (rows.len() as i64) < PAGE;
        for (_, key, status, result, error) in &rows {
            total += 1;
            if let Ok(s) = status.parse::<ItemStatus>() {
                tally.add(s);
            }
            let entry = match result {
                Some(r) => std::borrow::Cow::Borrowed(r.as_str()),
                None => std::borrow::Cow::Owned(
                    serde_json::json!({"key": key, "status": status, "error": error}).to_string(),
                ),
            };
            // Past the cap the remaining entries stay in the items table only (paged by
            // `/items`); the stored ones stay a prefix in submission order.
            capped = capped || results.len() + entry.len() > MAX_RESULT_BYTES;
            if capped {
                continue;
            }
            if kept > 0 {
                results.push(',');
            }
            kept += 1;
            results.push_str(&entry);
        }
        if short {
            break;
        }
    }
    results.push(']');
    let summary = serde_json::json!({
        "total": total,
        "successful": tally.succeeded,
        "failed": tally.failed,
        "skipped": tally.skipped,
        "cancelled": tally.cancelled,
    });
    let omitted = if kept < total {
        format!(r#","results_omitted":{}"#, total - kept)
    } else {
        String::new()
    };
    Ok(format!(
        r#"{{"summary":{summary},"results":{results}{omitted},"elapsed_seconds":{}}}"#,
        serde_json::Number::from_f64(elapsed).unwrap_or_else(|| 0.into())
    ))
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
        diesel::insert_into(kind_pauses::table)
            .values((kind_pauses::kind.eq(kind), kind_pauses::paused_at.eq(now)))
            .on_conflict_do_nothing()
            .execute(conn)?;
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
    use job_items::dsl as i;
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
        i::error.eq("cancelled before it started"),
        i::finished_at.eq(now),
    ))
    .execute(conn)?;
    let running: i64 = i::job_items
        .filter(i::job_id.eq(job_id))
        .filter(i::status.eq(ItemStatus::Running.as_str()))
        .select(count_star())
        .first(conn)?;
    diesel::update(jobs::table.filter(jobs::id.eq(job_id)))
        .set((
            jobs::status.eq(JobStatus::Cancelled.as_str()),
            jobs::cancelled.eq(jobs::cancelled + dropped as i32),
            jobs::completed_at.eq(now),
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
/// and its unfinished items `queued | running → failed`.
pub fn fail_job(conn: &mut Conn, job_id: &str, error: &str, now: f64) -> Result<(), StoreError> {
    use job_items::dsl as i;
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
    Ok(())
}

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
}

/// Crash recovery: items left `running` by a stopped engine go `running → queued` (their
/// attempt stays counted), or `running → failed` once they have used `max_attempts`, or
/// `running → cancelled` when their job was cancelled meanwhile.
pub fn recover_abandoned_items(conn: &mut Conn, now: f64) -> Result<Recovery, StoreError> {
    use job_items::dsl as i;
    let running = ItemStatus::Running.as_str();
    // Only running jobs, and cancelled ones still waiting for their running items (no
    // result yet), can hold running items; each is then searched through the status index.
    let job_ids: Vec<String> = jobs::table
        .filter(
            jobs::status.eq(JobStatus::Running.as_str()).or(jobs::status
                .eq(JobStatus::Cancelled.as_str())
                .and(jobs::result.is_null())),
        )
        .select(jobs::id)
        .load(conn)?;
    let mut report = Recovery::default();
    for job_id in job_ids {
        let job_status: Option<String> = jobs::table
            .filter(jobs::id.eq(&job_id))
            .select(jobs::status)
            .first(conn)
            .optional()?;
        let mine = i::job_items
            .filter(i::job_id.eq(&job_id))
            .filter(i::status.eq(running));
        let mut tally = Tally::default();
        if job_status.as_deref() == Some(JobStatus::Cancelled.as_str()) {
            let n = diesel::update(mine)
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
            let exhausted = diesel::update(mine.filter(i::attempts.ge(i::max_attempts)))
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
            report.requeued += diesel::update(mine)
                .set((
                    i::status.eq(ItemStatus::Queued.as_str()),
                    i::node_id.eq(None::<String>),
                ))
                .execute(conn)? as u64;
        }
        tally.apply(conn, &job_id)?;
        if finalize_job(conn, &job_id, now)? {
            report.finished_jobs.push(job_id);
        }
    }
    Ok(report)
}

/// Release at shutdown: moves items this engine was still running `running → queued`,
/// giving back the attempt, since the item itself did nothing wrong; items of a job that
/// was cancelled meanwhile go `running → cancelled` instead (and may finish their job).
pub fn release_items(
    conn: &mut Conn,
    items: &[(String, u32)],
    now: f64,
) -> Result<u64, StoreError> {
    use job_items::dsl as i;
    let mut cancelled_jobs: HashMap<&str, bool> = HashMap::new();
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    let mut released = 0;
    for (job_id, idx) in items {
        let cancelled = match cancelled_jobs.get(job_id.as_str()) {
            Some(c) => *c,
            None => {
                let c = get_job_status(conn, job_id)? == Some(JobStatus::Cancelled);
                cancelled_jobs.insert(job_id, c);
                c
            }
        };
        let item = i::job_items
            .filter(i::job_id.eq(job_id))
            .filter(i::idx.eq(*idx as i32))
            .filter(i::status.eq(ItemStatus::Running.as_str()));
        if cancelled {
            let n = diesel::update(item)
                .set((
                    i::status.eq(ItemStatus::Cancelled.as_str()),
                    i::error.eq("cancelled"),
                    i::finished_at.eq(now),
                    i::node_id.eq(None::<String>),
                ))
                .execute(conn)?;
            if n == 1 {
                tallies
                    .entry(job_id.clone())
                    .or_default()
                    .add(ItemStatus::Cancelled);
            }
        } else {
            released += diesel::update(item)
                .set((
                    i::status.eq(ItemStatus::Queued.as_str()),
                    i::attempts.eq(i::attempts - 1),
                    i::node_id.eq(None::<String>),
                ))
                .execute(conn)? as u64;
        }
    }
    apply_tallies(conn, &tallies)?;
    for job_id in tallies.keys() {
        finalize_job(conn, job_id, now)?;
    }
    Ok(released)
}

/// Node registration: records this engine process in `nodes` (insert or refresh).
pub fn register_node(
    conn: &mut Conn,
    id: &str,
    host: &str,
    pid: u32,
    now: f64,
) -> Result<(), StoreError> {
    diesel::replace_into(nodes::table)
        .values((
            nodes::id.eq(id),
            nodes::host.eq(host),
            nodes::pid.eq(pid as i32),
            nodes::started_at.eq(now),
            nodes::heartbeat_at.eq(now),
        ))
        .execute(conn)?;
    Ok(())
}

/// Read: one job.
pub fn get_job(conn: &mut Conn, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
    jobs::table
        .filter(jobs::id.eq(job_id))
        .select(JobRow::as_select())
        .first(conn)
        .optional()?
        .map(JobRow::into_record)
        .transpose()
}

/// Read: the job created with this idempotency key, if it is still retained.
pub fn job_by_idempotency_key(conn: &mut Conn, key: &str) -> Result<Option<JobRecord>, StoreError> {
    jobs::table
        .filter(jobs::idempotency_key.eq(key))
        .select(JobRow::as_select())
        .first(conn)
        .optional()?
        .map(JobRow::into_record)
        .transpose()
}

/// Read: jobs that still have work (`queued` or `running`), oldest first.
pub fn open_jobs(conn: &mut Conn) -> Result<Vec<JobRecord>, StoreError> {
    jobs::table
        .filter(jobs::status.eq_any([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]))
        .order((jobs::created_at.asc(), jobs::id.asc()))
        .select(JobRow::as_select())
        .load(conn)?
        .into_iter()
        .map(JobRow::into_record)
        .collect()
}

/// Read: a page of jobs, newest first, with the total matching the filters.
pub fn list_jobs(
    conn: &mut Conn,
    status: Option<JobStatus>,
    kind: Option<&str>,
    limit: u32,
    offset: u64,
) -> Result<(Vec<JobRecord>, u64), StoreError> {
    let filtered = || {
        let mut q = jobs::table.into_boxed();
        if let Some(s) = status {
            q = q.filter(jobs::status.eq(s.as_str()));
        }
        if let Some(k) = kind {
            q = q.filter(jobs::kind.eq(k.to_string()));
        }
        q
    };
    let total: i64 = filtered().select(count_star()).first(conn)?;
    let rows = filtered()
        .order((jobs::created_at.desc(), jobs::id.desc()))
        .limit(limit as i64)
        .offset(offset as i64)
        .select(JobRow::as_select())
        .load(conn)?;
    let jobs = rows
        .into_iter()
        .map(JobRow::into_record)
        .collect::<Result<_, _>>()?;
    Ok((jobs, total as u64))
}

/// Read: a page of a job's items in submission order, with the total matching the filter.
pub fn list_items(
    conn: &mut Conn,
    job_id: &str,
    status: Option<ItemStatus>,
    limit: u32,
    offset: u64,
) -> Result<(Vec<ItemRecord>, u64), StoreError> {
    use job_items::dsl as i;
    let filtered = || {
        let mut q = i::job_items
            .filter(i::job_id.eq(job_id.to_string()))
            .into_boxed();
        if let Some(s) = status {
            q = q.filter(i::status.eq(s.as_str()));
        }
        q
    };
    let total: i64 = filtered().select(count_star()).first(conn)?;
    let items = filtered()
        .order(i::idx.asc())
        .limit(limit as i64)
        .offset(offset as i64)
        .select(ItemRow::as_select())
        .load(conn)?
        .into_iter()
        .map(ItemRow::into_record)
        .collect::<Result<_, _>>()?;
    Ok((items, total as u64))
}

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
            Err(_) => {}
        }
    }
    Ok(stats)
}

/// Read: a job's status, `None` when unknown.
pub fn get_job_status(conn: &mut Conn, job_id: &str) -> Result<Option<JobStatus>, StoreError> {
    let status: Option<String> = jobs::table
        .filter(jobs::id.eq(job_id))
        .select(jobs::status)
        .first(conn)
        .optional()?;
    status
        .map(|s| {
            s.parse::<JobStatus>()
                .map_err(|e| StoreError::Task(format!("job {job_id}: {e}")))
        })
        .transpose()
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
