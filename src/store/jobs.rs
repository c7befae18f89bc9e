//! The `jobs` table: submission, the job locks every multi-job write takes first, and
//! the reads of one job or a page of them.

use super::rows::{JobRow, NewItemRow, NewJobRow};
use super::schema::{job_items, jobs};
use super::{Conn, StoreError};
use crate::model::{ItemStatus, JobRecord, JobStatus, NewJob};
use diesel::dsl::count_star;
use diesel::prelude::*;

/// Job locks: locks jobs' rows (PostgreSQL), in id order, for the rest of the
/// transaction. A write that touches several jobs takes them all at once first (the
/// Supervisor's write cycle, before [`release_items`](super::items::release_items) and
/// [`record_finished`](super::items::record_finished), which rely on it). Every transition
/// that reads a job's status and then moves its items, or that adds to its counters, takes
/// its jobs' locks first and in one order. So a cancellation and a retry of the same job
/// serialize (the second sees the first's outcome), and two nodes never wait for each
/// other's rows crosswise. SQLite's single writer serializes anyway.
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
                payload: item.payload.get(),
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

/// `text` as a `LIKE` pattern that matches it anywhere, its own `%`, `_` and `\\` taken
/// literally (the queries say `ESCAPE '\\'`).
pub fn contains_pattern(text: &str) -> String {
    let mut p = String::with_capacity(text.len() + 2);
    p.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// Read: a page of jobs, newest first, with the total matching the filters. `search`
/// matches, case-insensitively and anywhere, the id, the kind, the idempotency key or the
/// metadata's JSON text.
pub fn list_jobs(
    conn: &mut Conn,
    status: Option<JobStatus>,
    kind: Option<&str>,
    search: Option<&str>,
    limit: u32,
    offset: u64,
) -> Result<(Vec<JobRecord>, u64), StoreError> {
    use diesel::dsl::sql;
    use diesel::sql_types::{Bool, Text};
    let pattern = search.map(contains_pattern);
    let filtered = || {
        let mut q = jobs::table.into_boxed();
        if let Some(s) = status {
            q = q.filter(jobs::status.eq(s.as_str()));
        }
        if let Some(k) = kind {
            q = q.filter(jobs::kind.eq(k.to_string()));
        }
        if let Some(p) = &pattern {
            // Written as SQL: both backends spell `lower(…) LIKE … ESCAPE` alike, and the
            // placeholders are the backend's own.
            q = q.filter(
                sql::<Bool>("(lower(jobs.id) LIKE lower(")
                    .bind::<Text, _>(p.clone())
                    .sql(") ESCAPE '\\' OR lower(jobs.kind) LIKE lower(")
                    .bind::<Text, _>(p.clone())
                    .sql(") ESCAPE '\\' OR lower(jobs.idempotency_key) LIKE lower(")
                    .bind::<Text, _>(p.clone())
                    .sql(") ESCAPE '\\' OR lower(jobs.metadata) LIKE lower(")
                    .bind::<Text, _>(p.clone())
                    .sql(") ESCAPE '\\')"),
            );
        }
        q
    };
    let total: i64 = filtered().select(count_star()).first(conn)?;
    let rows = filtered()
        .order((jobs::created_at.desc(), jobs::id.desc()))
        .limit(limit as i64)
        .offset(offset as i64)
        // A list entry carries its job's summary, not every item's result: only the head
        // of the stored result is read (see `results::brief_result`).
        .select((
            (
                jobs::id,
                jobs::kind,
                jobs::status,
                jobs::spec,
                jobs::parallel,
                jobs::total,
                jobs::processed,
                jobs::succeeded,
                jobs::failed,
                jobs::skipped,
                jobs::cancelled,
            ),
            super::results::result_head(),
            (
                jobs::error,
                jobs::metadata,
                jobs::created_at,
                jobs::started_at,
                jobs::completed_at,
                jobs::priority,
                jobs::run_at,
                jobs::idempotency_key,
                jobs::paused_at,
            ),
        ))
        .load::<super::results::ListRow>(conn)?;
    let jobs = rows
        .into_iter()
        .map(super::results::brief_row)
        .map(JobRow::into_record)
        .collect::<Result<_, _>>()?;
    Ok((jobs, total as u64))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{conn, job};
    use crate::store::items::list_items;

    #[test]
    fn a_submission_stores_a_queued_job_with_every_item_queued() {
        let mut c = conn();
        let mut new = job(3);
        new.schedule.idempotency_key = Some("key".into());
        insert_job(&mut c, "j", &new, 5.0).unwrap();
        let stored = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.total, stored.created_at),
            (JobStatus::Queued, 3, 5.0)
        );
        let (items, total) = list_items(&mut c, "j", None, 10, 0).unwrap();
        assert_eq!(total, 3);
        assert!(items.iter().all(|i| i.status == ItemStatus::Queued));
        assert_eq!(
            items.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["k0", "k1", "k2"]
        );
        let by_key = job_by_idempotency_key(&mut c, "key").unwrap().unwrap();
        assert_eq!(by_key.id, "j");
        assert_eq!(
            get_job_status(&mut c, "j").unwrap(),
            Some(JobStatus::Queued)
        );
        assert_eq!(get_job_status(&mut c, "nope").unwrap(), None);
    }

    #[test]
    fn pages_of_jobs_are_newest_first_with_the_filtered_total() {
        let mut c = conn();
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            insert_job(&mut c, id, &job(1), i as f64).unwrap();
        }
        let (page, total) = list_jobs(&mut c, Some(JobStatus::Queued), None, None, 2, 0).unwrap();
        assert_eq!(total, 3);
        assert_eq!(
            page.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["c", "b"]
        );
        let open = open_jobs(&mut c).unwrap();
        assert_eq!(
            open.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(
            list_jobs(&mut c, None, Some("other"), None, 10, 0)
                .unwrap()
                .1,
            0
        );
    }

    #[test]
    fn a_search_matches_id_kind_key_or_metadata_and_takes_wildcards_literally() {
        let mut c = conn();
        let mut keyed = job(1);
        keyed.schedule.idempotency_key = Some("schedule:sched-1:100".into());
        insert_job(&mut c, "alpha-1", &keyed, 1.0).unwrap();
        let mut tagged = job(1);
        tagged.metadata = serde_json::json!({"team": "Search_Me"});
        insert_job(&mut c, "beta-2", &tagged, 2.0).unwrap();
        let ids = |c: &mut Conn, q: &str| -> Vec<String> {
            let (page, _) = list_jobs(c, None, None, Some(q), 10, 0).unwrap();
            page.into_iter().map(|j| j.id).collect()
        };
        assert_eq!(ids(&mut c, "ALPHA"), ["alpha-1"]);
        assert_eq!(ids(&mut c, "schedule:sched-1:"), ["alpha-1"]);
        assert_eq!(ids(&mut c, "search_me"), ["beta-2"]);
        // `_` and `%` are the text, not wildcards.
        assert!(ids(&mut c, "search%me").is_empty());
        assert!(ids(&mut c, "alpha_1").is_empty());
        assert_eq!(contains_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
    }
}
