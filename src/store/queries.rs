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
use std::collections::HashMap;

use super::Conn;

/// Whether `conn` is a PostgreSQL connection (raw SQL is written per backend).
fn is_pg(conn: &Conn) -> bool {
    matches!(conn, Conn::Pg(_))
}

/// Text for a PostgreSQL `text` value: PostgreSQL refuses NUL characters, which a
/// process's stderr may contain; SQLite gets the same, so both store the same text.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Job locks: locks jobs' rows (PostgreSQL), in id order, for the rest of the
/// transaction. A write that touches several jobs takes them all at once first (the
/// Supervisor's write cycle, before [`release_items`] and [`record_finished`], which
/// rely on it). Every
/// transition that reads a job's status and then moves its items, or that adds to its
/// counters, takes its jobs' locks first and in one order. So a cancellation and a retry
/// of the same job serialize (the second sees the first's outcome), and two nodes never
/// wait for each other's rows crosswise. SQLite's single writer serializes anyway.
pub fn lock_jobs<'a>(
    conn: &mut Conn,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), StoreError> {
    if let Conn::Pg(c) = conn {
        let mut ids: Vec<&str> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.is_empty() {
            return Ok(());
        }
        jobs::table
            .filter(jobs::id.eq_any(ids))
            .order(jobs::id)
            .select(jobs::id)
            .for_update()
            .load::<String>(c)?;
    }
    Ok(())
}

/// Rows per multi-row INSERT: 6 bound values each stays far below SQLite's variable limit.
const INSERT_CHUNK: usize = 1000;

/// How many times an item may be left running by a crash before it is failed for good.
pub const DEFAULT_MAX_ATTEMPTS: i32 = 3;

/// Submission: inserts a job as `queued` with all its items `queued`. For a job that did
/// not pass admission (the benchmark, tests), its options are read from its JSON here.
pub fn insert_job(conn: &mut Conn, id: &str, job: &NewJob, now: f64) -> Result<(), StoreError> {
    let options = crate::model::JobOptions::stored(&job.spec);
    insert_admitted_job(conn, id, job, &options, now)
}

/// Submission of an admitted job: inserts it as `queued` with all its items `queued`.
pub fn insert_admitted_job(
    conn: &mut Conn,
    id: &str,
    job: &NewJob,
    options: &crate::model::JobOptions,
    now: f64,
) -> Result<(), StoreError> {
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
    // Crash recovery requeues an item until it used this many attempts; errors are retried
    // up to the job's own `max_attempts`.
    let max_attempts = (options.retry.max_attempts as i32).max(DEFAULT_MAX_ATTEMPTS);
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
                max_attempts,
            })
            .collect();
        // Multi-row VALUES is written differently per backend (SQLite has no DEFAULT).
        crate::on_backend!(conn, c => diesel::insert_into(job_items::table)
            .values(&rows)
            .execute(c))?;
    }
    Ok(())
}

/// Claim: moves up to `limit` of a job's items `queued → running` in submission order,
/// counting an attempt, owned by `node_id` with a lease of `lease` seconds (renewed by
/// the node's heartbeat); the job moves `queued → running` on its first claim (callers that
/// know the job already runs pass `first_claim: false` to skip that statement).
#[allow(clippy::too_many_arguments)]
pub fn claim_items(
    conn: &mut Conn,
    job_id: &str,
    limit: u32,
    node_id: &str,
    now: f64,
    lease: f64,
    first_claim: bool,
) -> Result<Vec<ClaimedItem>, StoreError> {
    use job_items::dsl as i;
    let lease_until = now + lease;
    let mut claimed: Vec<(i32, String, String, i32)> = match conn {
        Conn::Pg(c) => {
            // Several nodes claim from the same job at once: each locks the chunk it
            // takes and skips rows another node's claim holds, so claims never wait on
            // each other and never take the same item. The chunk is a CTE, computed
            // once: as an `IN (sub-select)` the planner may run it again per row, and
            // with SKIP LOCKED each run finds other rows, claiming past the limit.
            use diesel::sql_types::{Double, Integer, Text};
            diesel::sql_query(
                "WITH chunk AS (SELECT idx FROM job_items \
                                WHERE job_id = $4 AND status = 'queued' \
                                  AND (available_at IS NULL OR available_at <= $1) \
                                ORDER BY idx LIMIT $5 FOR UPDATE SKIP LOCKED) \
                 UPDATE job_items SET status = 'running', attempts = attempts + 1, \
                        started_at = $1, node_id = $2, lease_expires_at = $3 \
                 FROM chunk WHERE job_items.job_id = $4 AND job_items.idx = chunk.idx \
                 RETURNING job_items.idx, job_items.key, job_items.payload, job_items.attempts",
            )
            .bind::<Double, _>(now)
            .bind::<Text, _>(node_id)
            .bind::<Double, _>(lease_until)
            .bind::<Text, _>(job_id)
            .bind::<Integer, _>(limit as i32)
            .load::<ClaimRow>(c)?
            .into_iter()
            .map(|r| (r.idx, r.key, r.payload, r.attempts))
            .collect()
        }
        Conn::Sqlite(c) => {
            // One statement with a fixed shape (the chunk is a sub-select, not a literal
            // list), so its prepared form is cached across claims. SQLite has one writer:
            // nothing else claims meanwhile.
            let q = diesel::alias!(job_items as q);
            let chunk = q
                .filter(q.field(i::job_id).eq(job_id))
                .filter(q.field(i::status).eq(ItemStatus::Queued.as_str()))
                // Items waiting out a retry delay are not claimable yet.
                .filter(
                    q.field(i::available_at)
                        .is_null()
                        .or(q.field(i::available_at).le(now)),
                )
                .order(q.field(i::idx).asc())
                .limit(limit as i64)
                .select(q.field(i::idx));
            diesel::update(
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
                i::lease_expires_at.eq(lease_until),
            ))
            .returning((i::idx, i::key, i::payload, i::attempts))
            .get_results(c)?
        }
    };
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

/// A claimed item as the PostgreSQL claim returns it.
#[derive(diesel::QueryableByName)]
struct ClaimRow {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    idx: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    key: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    payload: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    attempts: i32,
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
/// per job would cost a parse each). The caller holds the jobs' locks ([`lock_jobs`]).
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

/// Completion: moves finished items `running → succeeded | failed | skipped | cancelled`
/// with their results, adds them to their jobs' counters, and finalizes every job whose
/// last item this was. Fenced: an outcome is written only while its item is still
/// `running` under `node_id`'s claim with the same attempt, so a result is never written
/// twice, nor by a node whose claim was rescued by another (its outcome is refused and
/// counted in [`Recorded::refused`]). Returns the ids of the jobs that finished.
///
/// The caller holds the locks of the outcomes' jobs ([`lock_jobs`], taken first in its
/// transaction): a cancellation elsewhere then either committed before the status reads
/// of retried items (the item ends cancelled) or waits for this transaction (and cancels
/// the requeued item).
pub fn record_finished(
    conn: &mut Conn,
    finished: &[FinishedItem],
    node_id: &str,
    now: f64,
) -> Result<Recorded, StoreError> {
    // Outcomes travel in chunks of bounded size: SQLite refuses any value over 1 GB, and
    // a few outcomes with large outputs must not make a whole commit fail for good.
    let mut chunks: Vec<Vec<serde_json::Value>> = vec![Vec::new()];
    let mut chunk_bytes = 0usize;
    let mut open_jobs: HashMap<&str, bool> = HashMap::new();
    for item in finished {
        let mut status = item.outcome.status;
        if let Some(at) = item.retry_at {
            let open = match open_jobs.get(item.job_id.as_str()) {
                Some(open) => *open,
                None => {
                    let open = matches!(
                        get_job_status(conn, &item.job_id)?,
                        Some(JobStatus::Queued | JobStatus::Running)
                    );
                    open_jobs.insert(&item.job_id, open);
                    open
                }
            };
            if open {
                requeue_for_retry(conn, item, node_id, at)?;
                continue;
            }
            // The job ended (cancelled, expired) before the retry was recorded: the item
            // ends with it instead of going back to a queue nothing claims from.
            status = ItemStatus::Cancelled;
        }
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
                status.as_str(),
                result,
                item.outcome.error.as_deref().map(storable),
                item.finished_at,
                item.attempt,
            ]));
    }
    let mut changed: Vec<ChangedItem> = Vec::new();
    let mut sent = 0;
    for rows in chunks.into_iter().filter(|c| !c.is_empty()) {
        sent += rows.len();
        changed.extend(record_chunk(conn, rows, node_id)?);
    }
    let refused = sent.saturating_sub(changed.len()) as u64;
    if refused > 0 {
        log::warn!(
            "{refused} outcomes refused: their items are no longer this node's (rescued after a lost lease, or already final)"
        );
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
    Ok(Recorded {
        done,
        counts,
        refused,
    })
}

/// Retry: an item that failed by an error its job retries goes `running → queued`,
/// claimable from `at`, with the attempt's error appended to `attempt_errors`. Retries
/// are rare, so one statement each is fine.
fn requeue_for_retry(
    conn: &mut Conn,
    item: &FinishedItem,
    node_id: &str,
    at: f64,
) -> Result<(), StoreError> {
    use diesel::sql_types::{Double, Integer, Text};
    let error = storable(item.outcome.error.as_deref().unwrap_or("error")).into_owned();
    let sql = if is_pg(conn) {
        "UPDATE job_items SET status = 'queued', available_at = $1, error = $2, node_id = NULL, \
                attempt_errors = (coalesce(attempt_errors, '[]')::jsonb || to_jsonb($3::text))::text \
         WHERE job_id = $4 AND idx = $5 AND status = 'running' AND node_id = $6 AND attempts = $7"
    } else {
        "UPDATE job_items SET status = 'queued', available_at = ?, error = ?, node_id = NULL, \
                attempt_errors = json_insert(coalesce(attempt_errors, '[]'), '$[#]', ?) \
         WHERE job_id = ? AND idx = ? AND status = 'running' AND node_id = ? AND attempts = ?"
    };
    diesel::sql_query(sql)
        .bind::<Double, _>(at)
        .bind::<Text, _>(&error)
        .bind::<Text, _>(&error)
        .bind::<Text, _>(&item.job_id)
        .bind::<Integer, _>(item.index as i32)
        .bind::<Text, _>(node_id)
        .bind::<Integer, _>(item.attempt as i32)
        .execute(conn)?;
    Ok(())
}

/// Read: when the soonest of a job's queued items waiting out a retry delay becomes
/// claimable, if any does.
pub fn next_available_at(
    conn: &mut Conn,
    job_id: &str,
    now: f64,
) -> Result<Option<f64>, StoreError> {
    use diesel::dsl::min;
    use job_items::dsl as i;
    Ok(i::job_items
        .filter(i::job_id.eq(job_id))
        .filter(i::status.eq(ItemStatus::Queued.as_str()))
        .filter(i::available_at.gt(now))
        .select(min(i::available_at))
        .first::<Option<f64>>(conn)?)
}

/// Largest JSON text of outcomes sent in one statement.
const OUTCOME_CHUNK_BYTES: usize = 32 * 1024 * 1024;

fn record_chunk(
    conn: &mut Conn,
    rows: Vec<serde_json::Value>,
    node_id: &str,
) -> Result<Vec<ChangedItem>, StoreError> {
    use diesel::sql_types::Text;
    // One statement for the whole batch: Diesel prepares every UPDATE afresh, so a
    // statement per item would spend most of a commit in the parser. The outcomes travel
    // as one JSON array and are joined on the primary key.
    let sql = if is_pg(conn) {
        "UPDATE job_items SET status = v.status, result = v.result, error = v.error, \
                finished_at = v.finished_at \
         FROM (SELECT e ->> 0 AS job_id, (e ->> 1)::int AS idx, e ->> 2 AS status, \
                      e ->> 3 AS result, e ->> 4 AS error, (e ->> 5)::float8 AS finished_at, \
                      (e ->> 6)::int AS attempt \
               FROM jsonb_array_elements($1::jsonb) AS e) AS v \
         WHERE job_items.job_id = v.job_id AND job_items.idx = v.idx \
           AND job_items.status = 'running' AND job_items.node_id = $2 \
           AND job_items.attempts = v.attempt \
         RETURNING job_items.job_id, job_items.status"
    } else {
        "UPDATE job_items SET status = v.status, result = v.result, error = v.error, \
                finished_at = v.finished_at \
         FROM (SELECT value ->> '$[0]' AS job_id, value ->> '$[1]' AS idx, \
                      value ->> '$[2]' AS status, value ->> '$[3]' AS result, \
                      value ->> '$[4]' AS error, value ->> '$[5]' AS finished_at, \
                      value ->> '$[6]' AS attempt \
               FROM json_each(?)) AS v \
         WHERE job_items.job_id = v.job_id AND job_items.idx = v.idx \
           AND job_items.status = 'running' AND job_items.node_id = ? \
           AND job_items.attempts = v.attempt \
         RETURNING job_items.job_id, job_items.status"
    };
    let changed: Vec<ChangedItem> = diesel::sql_query(sql)
        .bind::<Text, _>(serde_json::Value::Array(rows).to_string())
        .bind::<Text, _>(node_id)
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
    /// Outcomes not written: their items were no longer running under this node's claim.
    pub refused: u64,
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
/// result. Either way its webhook, if any, is queued ([`enqueue_webhook`]). Returns whether
/// the job is now finished with a result.
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
    // A cancelled or expired job keeps its status; only an open one becomes completed.
    let status = match status.parse::<JobStatus>() {
        Ok(s @ (JobStatus::Cancelled | JobStatus::Expired)) => s,
        _ => JobStatus::Completed,
    };
    // `result IS NULL`: of two transactions that both saw the job's last item done, only
    // the first builds its result (the counters' row lock orders them; this is the belt).
    let built = diesel::update(
        jobs::table
            .filter(jobs::id.eq(job_id))
            .filter(jobs::result.is_null()),
    )
    .set((
        jobs::status.eq(status.as_str()),
        jobs::result.eq(result),
        jobs::completed_at.eq(completed_at.unwrap_or(now)),
    ))
    .execute(conn)?;
    if built == 0 {
        return Ok(false);
    }
    enqueue_webhook(conn, job_id, now)?;
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
/// attempt stays counted), or `running → failed` once they have used `max_attempts`, or
/// `running → cancelled` when their job was cancelled meanwhile.
pub fn recover_abandoned_items(conn: &mut Conn, now: f64) -> Result<Recovery, StoreError> {
    recover_items(conn, now, None)
}

/// Recovery of the running items of every node (`nodes` = `None`: a single engine
/// restarting) or of the listed dead nodes only.
fn recover_items(
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

/// An item claimed by this node and given back: `(job id, index, claimed attempt)`.
pub type Release = (String, u32, u32);

/// Release at shutdown: moves items this engine was still running `running → queued`,
/// giving back the attempt, since the item itself did nothing wrong; items of a job that
/// was cancelled meanwhile go `running → cancelled` instead (and may finish their job).
/// Fenced like [`record_finished`]: an item another node rescued and claimed meanwhile
/// is not this node's to give back. The caller holds the items' jobs' locks
/// ([`lock_jobs`]).
pub fn release_items(
    conn: &mut Conn,
    items: &[Release],
    node_id: &str,
    now: f64,
) -> Result<u64, StoreError> {
    use job_items::dsl as i;
    let mut cancelled_jobs: HashMap<&str, bool> = HashMap::new();
    let mut tallies: HashMap<String, Tally> = HashMap::new();
    let mut released = 0;
    for (job_id, idx, attempt) in items {
        let cancelled = match cancelled_jobs.get(job_id.as_str()) {
            Some(c) => *c,
            None => {
                let c = matches!(
                    get_job_status(conn, job_id)?,
                    Some(JobStatus::Cancelled | JobStatus::Expired)
                );
                cancelled_jobs.insert(job_id, c);
                c
            }
        };
        let item = i::job_items
            .filter(i::job_id.eq(job_id))
            .filter(i::idx.eq(*idx as i32))
            .filter(i::status.eq(ItemStatus::Running.as_str()))
            .filter(i::node_id.eq(node_id))
            .filter(i::attempts.eq(*attempt as i32));
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
    // Heartbeats are compared by the database's clock (nodes' clocks may differ).
    let now = if is_pg(conn) { db_now(conn)? } else { now };
    let row = (
        nodes::id.eq(id),
        nodes::host.eq(host),
        nodes::pid.eq(pid as i32),
        nodes::started_at.eq(now),
        nodes::heartbeat_at.eq(now),
    );
    crate::on_backend!(conn, c => diesel::insert_into(nodes::table)
        .values(row)
        .on_conflict(nodes::id)
        .do_update()
        .set(nodes::heartbeat_at.eq(now))
        .execute(c))?;
    Ok(())
}

/// A row of `nodes`: an engine process sharing the database.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct NodeRecord {
    /// The node's id (`node-{12 hex}`, new at every start).
    pub id: String,
    /// The host name it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: i32,
    /// When it started (Unix seconds).
    pub started_at: f64,
    /// Its last heartbeat (Unix seconds).
    pub heartbeat_at: f64,
}

/// Read: every registered node.
pub fn list_nodes(conn: &mut Conn) -> Result<Vec<NodeRecord>, StoreError> {
    Ok(nodes::table
        .select((
            nodes::id,
            nodes::host,
            nodes::pid,
            nodes::started_at,
            nodes::heartbeat_at,
        ))
        .order(nodes::started_at)
        .load(conn)?)
}

/// Heartbeat: refreshes this node's `heartbeat_at` (by the database's clock) and renews
/// the leases of the items it runs for `lease` seconds. Returns `false` when the node is no longer registered
/// (another node declared it dead and rescued its items); the caller registers again.
pub fn heartbeat(conn: &mut Conn, node_id: &str, lease: f64) -> Result<bool, StoreError> {
    let now = db_now(conn)?;
    let alive = diesel::update(nodes::table.filter(nodes::id.eq(node_id)))
        .set(nodes::heartbeat_at.eq(now))
        .execute(conn)?;
    if alive == 0 {
        return Ok(false);
    }
    if let Conn::Pg(c) = conn {
        // Rows being recorded right now are skipped rather than waited for (and never
        // locked crosswise with a write cycle); their lease ends with them anyway.
        diesel::sql_query(
            "WITH mine AS (SELECT job_id, idx FROM job_items \
                           WHERE node_id = $1 AND status = 'running' \
                           ORDER BY job_id, idx FOR UPDATE SKIP LOCKED) \
             UPDATE job_items SET lease_expires_at = $2 FROM mine \
             WHERE job_items.job_id = mine.job_id AND job_items.idx = mine.idx",
        )
        .bind::<diesel::sql_types::Text, _>(node_id)
        .bind::<diesel::sql_types::Double, _>(now + lease)
        .execute(c)?;
    }
    Ok(true)
}

/// Read: the database's clock (Unix seconds) on PostgreSQL, where heartbeats of nodes on
/// different machines are compared; this machine's clock on SQLite.
pub fn db_now(conn: &mut Conn) -> Result<f64, StoreError> {
    match conn {
        Conn::Pg(c) => Ok(
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Double>(
                "extract(epoch from clock_timestamp())::float8",
            ))
            .get_result(c)?,
        ),
        Conn::Sqlite(_) => Ok(crate::model::now()),
    }
}

/// Rescue: removes the listed nodes — those whose heartbeat is older than
/// `stale_before`, when given (re-checked here, so a node that beat meanwhile is
/// spared) — and recovers their running items as a restart would (queued again with the
/// attempt counted, failed once out of attempts, cancelled with a cancelled job). The
/// items' leases are void from then on: their owners' outcomes are refused by the fence
/// of [`record_finished`].
pub fn rescue_nodes(
    conn: &mut Conn,
    ids: &[String],
    stale_before: Option<f64>,
    now: f64,
) -> Result<(Vec<String>, Recovery), StoreError> {
    if ids.is_empty() {
        return Ok((Vec::new(), Recovery::default()));
    }
    let dead: Vec<String> = match stale_before {
        Some(before) => crate::on_backend!(conn, c => diesel::delete(
            nodes::table
                .filter(nodes::id.eq_any(ids))
                .filter(nodes::heartbeat_at.lt(before)),
        )
        .returning(nodes::id)
        .get_results(c))?,
        None => {
            crate::on_backend!(conn, c => diesel::delete(nodes::table.filter(nodes::id.eq_any(ids)))
            .returning(nodes::id)
            .get_results(c))?
        }
    };
    if dead.is_empty() {
        return Ok((dead, Recovery::default()));
    }
    let recovery = recover_items(conn, now, Some(&dead))?;
    Ok((dead, recovery))
}

/// Rescue of orphans: running items whose node is not registered at all (it left
/// without putting them back, or its row was removed) are recovered like a dead node's.
pub fn rescue_orphans(conn: &mut Conn, now: f64) -> Result<(Vec<String>, Recovery), StoreError> {
    use job_items::dsl as i;
    let owners: Vec<Option<String>> = i::job_items
        .filter(i::status.eq(ItemStatus::Running.as_str()))
        .filter(i::node_id.is_not_null())
        .filter(diesel::dsl::not(
            i::node_id.eq_any(nodes::table.select(nodes::id.nullable())),
        ))
        .select(i::node_id)
        .distinct()
        .load(conn)?;
    let owners: Vec<String> = owners.into_iter().flatten().collect();
    if owners.is_empty() {
        return Ok((owners, Recovery::default()));
    }
    let recovery = recover_items(conn, now, Some(&owners))?;
    Ok((owners, recovery))
}

/// Node exit: removes this node's row at a clean shutdown, freeing its group slots.
pub fn deregister_node(conn: &mut Conn, node_id: &str) -> Result<(), StoreError> {
    diesel::delete(nodes::table.filter(nodes::id.eq(node_id))).execute(conn)?;
    if let Conn::Pg(c) = conn {
        diesel::sql_query("UPDATE group_slots SET node_id = NULL WHERE node_id = $1")
            .bind::<diesel::sql_types::Text, _>(node_id)
            .execute(c)?;
    }
    Ok(())
}

// ---- Concurrency groups shared by several nodes (PostgreSQL; see `group_slots`) ----

/// Group setup: makes sure the group has slot rows `0..limit` (nodes configured with a
/// lower limit use only the lower slots).
pub fn ensure_group_slots(conn: &mut Conn, group: &str, limit: u32) -> Result<(), StoreError> {
    if let Conn::Pg(c) = conn {
        diesel::sql_query(
            "INSERT INTO group_slots (group_name, slot) \
             SELECT $1, s FROM generate_series(0, $2 - 1) AS s ON CONFLICT DO NOTHING",
        )
        .bind::<diesel::sql_types::Text, _>(group)
        .bind::<diesel::sql_types::Integer, _>(limit as i32)
        .execute(c)?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct SlotRow {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    slot: i32,
}

/// Group slots: takes up to `n` free slots below `limit` of a group for `node_id`
/// (skipping slots another node is taking), returning them. Always empty on SQLite,
/// where a group's limit is the one engine's own.
pub fn acquire_group_slots(
    conn: &mut Conn,
    group: &str,
    limit: u32,
    node_id: &str,
    n: u32,
) -> Result<Vec<i32>, StoreError> {
    use diesel::sql_types::{Integer, Text};
    let Conn::Pg(c) = conn else {
        return Ok(Vec::new());
    };
    Ok(diesel::sql_query(
        "WITH free AS (SELECT slot FROM group_slots \
                       WHERE group_name = $1 AND slot < $2 AND node_id IS NULL \
                       ORDER BY slot LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE group_slots SET node_id = $4 FROM free \
         WHERE group_slots.group_name = $1 AND group_slots.slot = free.slot \
         RETURNING group_slots.slot",
    )
    .bind::<Text, _>(group)
    .bind::<Integer, _>(limit as i32)
    .bind::<Integer, _>(n as i32)
    .bind::<Text, _>(node_id)
    .load::<SlotRow>(c)?
    .into_iter()
    .map(|r| r.slot)
    .collect())
}

/// Group slots: gives back slots this node holds and wakes the nodes waiting for one.
pub fn release_group_slots(
    conn: &mut Conn,
    group: &str,
    node_id: &str,
    slots: &[i32],
) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, Integer, Text};
    if let Conn::Pg(c) = conn {
        diesel::sql_query(
            "UPDATE group_slots SET node_id = NULL \
             WHERE group_name = $1 AND node_id = $2 AND slot = ANY($3)",
        )
        .bind::<Text, _>(group)
        .bind::<Text, _>(node_id)
        .bind::<Array<Integer>, _>(slots)
        .execute(c)?;
        notify(conn, &format!("groups::{node_id}"))?;
    }
    Ok(())
}

/// Read: every group slot `node_id` holds, as `(group, slot)`.
pub fn owned_group_slots(conn: &mut Conn, node_id: &str) -> Result<Vec<(String, i32)>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Owned {
        #[diesel(sql_type = diesel::sql_types::Text)]
        group_name: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        slot: i32,
    }
    let Conn::Pg(c) = conn else {
        return Ok(Vec::new());
    };
    Ok(diesel::sql_query(
        "SELECT group_name, slot FROM group_slots WHERE node_id = $1 ORDER BY group_name, slot",
    )
    .bind::<diesel::sql_types::Text, _>(node_id)
    .load::<Owned>(c)?
    .into_iter()
    .map(|o| (o.group_name, o.slot))
    .collect())
}

/// Rescue of group slots: frees the slots of nodes no longer registered (dead and
/// removed, or gone without releasing them). Returns how many were freed.
pub fn free_orphan_slots(conn: &mut Conn) -> Result<usize, StoreError> {
    let Conn::Pg(c) = conn else {
        return Ok(0);
    };
    Ok(diesel::sql_query(
        "UPDATE group_slots SET node_id = NULL \
         WHERE node_id IS NOT NULL AND node_id NOT IN (SELECT id FROM nodes)",
    )
    .execute(c)?)
}

/// The channel nodes `LISTEN` on.
pub const NOTIFY_CHANNEL: &str = "batchforge";

/// Wake-up: `NOTIFY`s every node listening on the database with `payload` when the
/// transaction commits (PostgreSQL); nothing on SQLite, where one engine owns the queue.
pub fn notify(conn: &mut Conn, payload: &str) -> Result<(), StoreError> {
    if let Conn::Pg(c) = conn {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<diesel::sql_types::Text, _>(NOTIFY_CHANNEL)
            .bind::<diesel::sql_types::Text, _>(payload)
            .execute(c)?;
    }
    Ok(())
}

/// Read: `(id, paused)` of every open (`queued | running`) job, for nodes that follow the
/// queue others write to.
pub fn open_job_states(conn: &mut Conn) -> Result<Vec<(String, bool)>, StoreError> {
    Ok(jobs::table
        .filter(jobs::status.eq_any([JobStatus::Queued.as_str(), JobStatus::Running.as_str()]))
        .select((jobs::id, jobs::paused_at.is_not_null()))
        .load(conn)?)
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
            Ok(JobStatus::Expired) => stats.expired += n,
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

// ---------------------------------------------------------------------------------------
// Cron schedules (see `crate::schedules`).

use super::schema::schedules;

/// A stored cron schedule: its definition and where its ticks stand.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schedules, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct ScheduleRecord {
    /// `sched-{12 hex}`.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// The cron expression, as given.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// The job body (`POST /batch/jobs` form), JSON text.
    pub job: String,
    /// Unix seconds; set while paused.
    pub paused_at: Option<f64>,
    /// Unix seconds of the next tick.
    pub next_run_at: f64,
    /// Unix seconds of the last tick that fired.
    pub last_run_at: Option<f64>,
    /// The job the last tick created (or found, when another node created it).
    pub last_job_id: Option<String>,
    /// Why the last tick could not submit its job, if it could not.
    pub last_error: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
}

/// Schedule creation: inserts a schedule.
pub fn insert_schedule(conn: &mut Conn, schedule: &ScheduleRecord) -> Result<(), StoreError> {
    diesel::insert_into(schedules::table)
        .values(schedule)
        .execute(conn)?;
    Ok(())
}

/// Read: every schedule, oldest first.
pub fn list_schedules(conn: &mut Conn) -> Result<Vec<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .order((schedules::created_at.asc(), schedules::id.asc()))
        .select(ScheduleRecord::as_select())
        .load(conn)?)
}

/// Read: one schedule.
pub fn get_schedule(conn: &mut Conn, id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .filter(schedules::id.eq(id))
        .select(ScheduleRecord::as_select())
        .first(conn)
        .optional()?)
}

/// Read: the schedule with this name.
pub fn schedule_by_name(conn: &mut Conn, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .filter(schedules::name.eq(name))
        .select(ScheduleRecord::as_select())
        .first(conn)
        .optional()?)
}

/// Read: up to `limit` unpaused schedules whose next tick is due (`next_run_at <= now`),
/// most overdue first, but for those in `except` (waiting out a failure).
pub fn due_schedules(
    conn: &mut Conn,
    now: f64,
    limit: i64,
    except: &[String],
) -> Result<Vec<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .filter(schedules::paused_at.is_null())
        .filter(schedules::next_run_at.le(now))
        .filter(schedules::id.ne_all(except))
        .order(schedules::next_run_at.asc())
        .limit(limit)
        .select(ScheduleRecord::as_select())
        .load(conn)?)
}

/// Read: the earliest next tick of the unpaused schedules but those in `except`.
pub fn next_schedule_due(conn: &mut Conn, except: &[String]) -> Result<Option<f64>, StoreError> {
    Ok(schedules::table
        .filter(schedules::paused_at.is_null())
        .filter(schedules::id.ne_all(except))
        .select(diesel::dsl::min(schedules::next_run_at))
        .first(conn)?)
}

/// Read: whether a schedule still exists, unpaused, with its next tick at `expected_next`
/// (the scheduler's last look before it submits a tick it read as due).
pub fn schedule_still_due(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
) -> Result<bool, StoreError> {
    Ok(diesel::select(diesel::dsl::exists(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null())
            .filter(schedules::next_run_at.eq(expected_next)),
    ))
    .get_result(conn)?)
}

/// Schedule tick failure: records why a due tick could not be submitted this time,
/// leaving it due (guarded like [`advance_schedule`]).
pub fn note_schedule_error(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
    error: &str,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null())
            .filter(schedules::next_run_at.eq(expected_next)),
    )
    .set(schedules::last_error.eq(error))
    .execute(conn)?;
    Ok(n == 1)
}

/// Schedule tick: records the tick `ran_at` and moves `next_run_at` on, guarded by the
/// `next_run_at` the caller read, so that of two schedulers that fired the same tick only
/// one advances it, and by `paused_at IS NULL`, so a schedule paused meanwhile keeps its
/// state. Returns whether this call advanced it.
pub fn advance_schedule(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
    next_run_at: f64,
    ran_at: f64,
    job_id: Option<&str>,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null())
            .filter(schedules::next_run_at.eq(expected_next)),
    )
    .set((
        schedules::next_run_at.eq(next_run_at),
        schedules::last_run_at.eq(ran_at),
        schedules::last_job_id.eq(job_id),
        schedules::last_error.eq(error),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Schedule stop: a schedule whose expression cannot fire any more is paused with why,
/// guarded like [`advance_schedule`].
pub fn halt_schedule(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
    error: &str,
    now: f64,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::next_run_at.eq(expected_next)),
    )
    .set((
        schedules::paused_at.eq(now),
        schedules::last_error.eq(error),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Schedule pause: sets `paused_at` (kept when already paused). `None` when unknown.
pub fn pause_schedule(
    conn: &mut Conn,
    id: &str,
    now: f64,
) -> Result<Option<ScheduleRecord>, StoreError> {
    diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null()),
    )
    .set(schedules::paused_at.eq(now))
    .execute(conn)?;
    get_schedule(conn, id)
}

/// Schedule resume: clears `paused_at` of a paused schedule and sets its next tick (an
/// unpaused one is left as it is). `None` when unknown.
pub fn resume_schedule(
    conn: &mut Conn,
    id: &str,
    next_run_at: f64,
) -> Result<Option<ScheduleRecord>, StoreError> {
    diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_not_null()),
    )
    .set((
        schedules::paused_at.eq(None::<f64>),
        schedules::next_run_at.eq(next_run_at),
    ))
    .execute(conn)?;
    get_schedule(conn, id)
}

/// Schedule deletion: removes the schedule (its jobs stay). Returns whether it existed.
pub fn delete_schedule(conn: &mut Conn, id: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(schedules::table.filter(schedules::id.eq(id))).execute(conn)? == 1)
}

// ---- Webhooks (the `callback_url` outbox) and retention ----

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
    let payload = serde_json::json!({
        "event": "job.finished",
        "job_id": job_id,
        "type": kind,
        "status": status,
        "summary": {
            "total": total,
            "successful": succeeded,
            "failed": failed,
            "skipped": skipped,
            "cancelled": cancelled,
        },
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
