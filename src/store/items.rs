//! The `job_items` table: claims, fenced outcomes (with retry requeues), the release of
//! claimed items at shutdown, and the page of a job's items.

use super::counters::{apply_tallies, Tally};
use super::jobs::get_job_status;
use super::results::finalize_job;
use super::rows::{parse_json, ItemRow};
use super::schema::{job_items, jobs};
use super::{is_pg, Conn, StoreError};
use crate::model::{ClaimedItem, Counts, FinishedItem, ItemRecord, ItemStatus, JobStatus};
use diesel::dsl::count_star;
use diesel::prelude::*;
use std::collections::HashMap;

/// Text for a PostgreSQL `text` value: PostgreSQL refuses NUL characters, which a
/// process's stderr may contain; SQLite gets the same, so both store the same text.
fn storable(text: &str) -> std::borrow::Cow<'_, str> {
    if text.contains('\0') {
        std::borrow::Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        std::borrow::Cow::Borrowed(text)
    }
}

/// Claim: moves up to `limit` of a job's items `queued → running` in submission order,
/// reserving an attempt, owned by `node_id` with a lease of `lease` seconds (renewed by
/// the node's heartbeat); the job moves `queued → running` on its first claim (callers that
/// know the job already runs pass `first_claim: false` to skip that statement).
///
/// A claimed item has no `started_at` until [`mark_started`] records that its processor
/// began: until then it is only reserved, shown `queued`, and crash recovery gives its
/// attempt back.
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
                        started_at = NULL, node_id = $2, lease_expires_at = $3 \
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
                i::started_at.eq(None::<f64>),
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

/// Completion: moves finished items `running → succeeded | failed | skipped | cancelled`
/// with their results, adds them to their jobs' counters, and finalizes every job whose
/// last item this was. Fenced: an outcome is written only while its item is still
/// `running` under `node_id`'s claim with the same attempt, so a result is never written
/// twice, nor by a node whose claim was rescued by another (its outcome is refused and
/// counted in [`Recorded::refused`]). Returns the ids of the jobs that finished.
///
/// The caller holds the locks of the outcomes' jobs ([`lock_jobs`](super::jobs::lock_jobs),
/// taken first in its transaction): a cancellation elsewhere then either committed before
/// the status reads of retried items (the item ends cancelled) or waits for this
/// transaction (and cancels the requeued item).
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

/// An item claimed by this node and given back: `(job id, index, claimed attempt)`.
pub type Release = (String, u32, u32);

/// Start: records that the processor of these claimed items begins now (`started_at`),
/// which makes their reserved attempt count. Fenced like [`record_finished`]: only this
/// node's claim with the same attempt is marked. Returns how many were marked.
pub fn mark_started(
    conn: &mut Conn,
    items: &[Release],
    node_id: &str,
    now: f64,
) -> Result<u64, StoreError> {
    use job_items::dsl as i;
    if items.is_empty() {
        return Ok(0);
    }
    if let Conn::Pg(c) = conn {
        // One statement for all of them: on PostgreSQL every statement is a round trip,
        // and a write cycle starts up to a kind's limit of items (measured: it was most of
        // a cycle's statements). They travel as one JSON array joined on the primary key.
        use diesel::sql_types::{Double, Text};
        let rows: Vec<serde_json::Value> = items
            .iter()
            .map(|(job_id, idx, attempt)| serde_json::json!([job_id, idx, attempt]))
            .collect();
        let marked = diesel::sql_query(
            "UPDATE job_items SET started_at = $1 \
             FROM (SELECT e ->> 0 AS job_id, (e ->> 1)::int AS idx, (e ->> 2)::int AS attempt \
                   FROM jsonb_array_elements($2::jsonb) AS e) AS v \
             WHERE job_items.job_id = v.job_id AND job_items.idx = v.idx \
               AND job_items.status = 'running' AND job_items.node_id = $3 \
               AND job_items.attempts = v.attempt",
        )
        .bind::<Double, _>(now)
        .bind::<Text, _>(serde_json::Value::Array(rows).to_string())
        .bind::<Text, _>(node_id)
        .execute(c)?;
        return Ok(marked as u64);
    }
    // SQLite: each statement is a cached prepared one on the embedded writer; no round trips.
    let mut marked = 0;
    for (job_id, idx, attempt) in items {
        marked += diesel::update(
            i::job_items
                .filter(i::job_id.eq(job_id))
                .filter(i::idx.eq(*idx as i32))
                .filter(i::status.eq(ItemStatus::Running.as_str()))
                .filter(i::node_id.eq(node_id))
                .filter(i::attempts.eq(*attempt as i32)),
        )
        .set(i::started_at.eq(now))
        .execute(conn)? as u64;
    }
    Ok(marked)
}

/// Release at shutdown: moves items this engine was still running `running → queued`,
/// giving back the attempt, since the item itself did nothing wrong; items of a job that
/// was cancelled meanwhile go `running → cancelled` instead (and may finish their job).
/// Fenced like [`record_finished`]: an item another node rescued and claimed meanwhile
/// is not this node's to give back. The caller holds the items' jobs' locks
/// ([`lock_jobs`](super::jobs::lock_jobs)).
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
        // A claimed item whose processor has not begun (no `started_at`) is shown, and
        // filtered, as `queued`: it has not started, whatever the claim reserved.
        let reserved = i::status
            .eq(ItemStatus::Running.as_str())
            .and(i::started_at.is_null());
        match status {
            Some(ItemStatus::Queued) => {
                q = q.filter(i::status.eq(ItemStatus::Queued.as_str()).or(reserved));
            }
            Some(ItemStatus::Running) => {
                q = q
                    .filter(i::status.eq(ItemStatus::Running.as_str()))
                    .filter(i::started_at.is_not_null());
            }
            Some(s) => q = q.filter(i::status.eq(s.as_str())),
            None => {}
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
        .map(|row| {
            ItemRow::into_record(row).map(|mut item| {
                if item.status == ItemStatus::Running && item.started_at.is_none() {
                    item.status = ItemStatus::Queued;
                    item.attempts = item.attempts.saturating_sub(1);
                    item.node = None;
                }
                item
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((items, total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ItemOutcome;
    use crate::store::fixtures::{conn, finished, job};
    use crate::store::job_control::cancel_job;
    use crate::store::jobs::{get_job, insert_job};
    use serde_json::json;

    fn items(conn: &mut Conn, id: &str) -> Vec<ItemRecord> {
        list_items(conn, id, None, 100, 0).unwrap().0
    }

    #[test]
    fn a_claim_runs_queued_items_in_order_and_starts_the_job() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(3), 1.0).unwrap();
        let first = claim_items(&mut c, "j", 2, "n", 10.0, 30.0, true).unwrap();
        let idx: Vec<u32> = first.iter().map(|i| i.index).collect();
        assert_eq!(idx, [0, 1]);
        assert!(first.iter().all(|i| i.attempt == 1));
        let job = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!(
            (job.status, job.started_at),
            (JobStatus::Running, Some(10.0))
        );
        let rest = claim_items(&mut c, "j", 5, "n", 11.0, 30.0, false).unwrap();
        assert_eq!(rest.iter().map(|i| i.index).collect::<Vec<_>>(), [2]);
        assert!(claim_items(&mut c, "j", 5, "n", 12.0, 30.0, false)
            .unwrap()
            .is_empty());
        // Claimed items are only reserved until their start is recorded.
        let stored = items(&mut c, "j");
        assert!(stored
            .iter()
            .all(|i| (i.status, i.attempts) == (ItemStatus::Queued, 0)));
        let started = mark_started(&mut c, &[("j".to_string(), 0, 1)], "n", 13.0).unwrap();
        assert_eq!(started, 1);
        let stored = items(&mut c, "j");
        assert_eq!(
            (stored[0].status, stored[0].attempts),
            (ItemStatus::Running, 1)
        );
        assert_eq!(stored[0].node.as_deref(), Some("n"));
        assert_eq!(stored[1].status, ItemStatus::Queued);
        let running = list_items(&mut c, "j", Some(ItemStatus::Running), 10, 0).unwrap();
        assert_eq!(running.1, 1);
        let queued = list_items(&mut c, "j", Some(ItemStatus::Queued), 10, 0).unwrap();
        assert_eq!(queued.1, 2);
    }

    #[test]
    fn finished_outcomes_are_stored_counted_and_finish_their_job() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        claim_items(&mut c, "j", 2, "n", 10.0, 30.0, true).unwrap();
        let done = [
            finished("j", 0, 1, ItemOutcome::succeeded(json!({"ok": 0}))),
            finished("j", 1, 1, ItemOutcome::failed(json!({}), "bad")),
        ];
        let recorded = record_finished(&mut c, &done, "n", 20.0).unwrap();
        assert_eq!(recorded.done, ["j"]);
        assert_eq!(recorded.refused, 0);
        let counts = recorded.counts[0].1;
        assert_eq!(
            (counts.processed, counts.succeeded, counts.failed),
            (2, 1, 1)
        );
        let stored = items(&mut c, "j");
        assert_eq!(stored[0].status, ItemStatus::Succeeded);
        assert_eq!(stored[0].result, Some(json!({"ok": 0})));
        assert_eq!(stored[1].error.as_deref(), Some("bad"));
        assert_eq!(
            get_job(&mut c, "j").unwrap().unwrap().status,
            JobStatus::Completed
        );
    }

    #[test]
    fn the_fence_refuses_outcomes_of_another_node_or_attempt() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(1), 1.0).unwrap();
        claim_items(&mut c, "j", 1, "n", 10.0, 30.0, true).unwrap();
        mark_started(&mut c, &[("j".to_string(), 0, 1)], "n", 11.0).unwrap();
        let ok = ItemOutcome::succeeded(json!({}));
        let other_node = record_finished(&mut c, &[finished("j", 0, 1, ok.clone())], "m", 20.0);
        assert_eq!(other_node.unwrap().refused, 1);
        let old_attempt = record_finished(&mut c, &[finished("j", 0, 2, ok)], "n", 20.0);
        assert_eq!(old_attempt.unwrap().refused, 1);
        assert_eq!(items(&mut c, "j")[0].status, ItemStatus::Running);
        let job = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!((job.processed, job.status), (0, JobStatus::Running));
    }

    #[test]
    fn a_retried_error_requeues_its_item_until_its_retry_time() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(1), 1.0).unwrap();
        claim_items(&mut c, "j", 1, "n", 10.0, 30.0, true).unwrap();
        let retry = FinishedItem {
            retry_at: Some(50.0),
            ..finished("j", 0, 1, ItemOutcome::error(json!({}), "flaky"))
        };
        let recorded = record_finished(&mut c, &[retry], "n", 20.0).unwrap();
        assert!(recorded.done.is_empty());
        let item = &items(&mut c, "j")[0];
        assert_eq!(
            (item.status, item.node.as_deref()),
            (ItemStatus::Queued, None)
        );
        assert_eq!(item.attempt_errors, ["flaky"]);
        assert_eq!(next_available_at(&mut c, "j", 20.0).unwrap(), Some(50.0));
        assert!(claim_items(&mut c, "j", 1, "n", 30.0, 30.0, false)
            .unwrap()
            .is_empty());
        let again = claim_items(&mut c, "j", 1, "n", 60.0, 30.0, false).unwrap();
        assert_eq!(again[0].attempt, 2);
    }

    #[test]
    fn a_release_gives_back_the_attempt_and_only_this_nodes_claims() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        claim_items(&mut c, "j", 2, "n", 10.0, 30.0, true).unwrap();
        let both = [("j".to_string(), 0, 1), ("j".to_string(), 1, 1)];
        mark_started(&mut c, &both, "n", 11.0).unwrap();
        let wrong = [("j".to_string(), 0, 2), ("j".to_string(), 1, 1)];
        assert_eq!(release_items(&mut c, &wrong, "m", 20.0).unwrap(), 0);
        assert_eq!(release_items(&mut c, &wrong, "n", 20.0).unwrap(), 1);
        let stored = items(&mut c, "j");
        assert_eq!(stored[0].status, ItemStatus::Running);
        assert_eq!(
            (stored[1].status, stored[1].attempts),
            (ItemStatus::Queued, 0)
        );
    }

    #[test]
    fn a_release_in_a_cancelled_job_cancels_the_item_and_finishes_the_job() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(1), 1.0).unwrap();
        claim_items(&mut c, "j", 1, "n", 10.0, 30.0, true).unwrap();
        cancel_job(&mut c, "j", 15.0).unwrap();
        let released = release_items(&mut c, &[("j".to_string(), 0, 1)], "n", 20.0).unwrap();
        assert_eq!(released, 0);
        assert_eq!(items(&mut c, "j")[0].status, ItemStatus::Cancelled);
        let job = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!((job.status, job.cancelled), (JobStatus::Cancelled, 1));
        assert!(job.result.is_some());
    }
}
