//! Finalization: a job's result, built once from its items' stored outcomes when its last
//! item is final, and the keyset pages of those outcomes (also read by the JSONL export).

use super::counters::Tally;
use super::outbox::enqueue_webhook;
use super::rows::JobRow;
use super::schema::{job_items, jobs};
use super::{Conn, StoreError};
use crate::model::{ItemStatus, JobStatus};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};

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

/// Builds `{summary, results, elapsed_seconds}` (the summary with its kind's aliases,
/// [`crate::model::summary`]) by splicing the items' stored JSON in
/// submission order, without parsing each result again.
pub(super) fn build_result(
    conn: &mut Conn,
    job_id: &str,
    elapsed: f64,
) -> Result<String, StoreError> {
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
    // The kind's own names for these counts (`passed` for tests), beside batchforge's.
    let kind: String = jobs::table
        .filter(jobs::id.eq(job_id))
        .select(jobs::kind)
        .first(conn)?;
    let summary = tally.summary(&kind, total);
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

/// Bytes of a stored result a list reads: its summary comes first and is far shorter.
const HEAD_BYTES: i32 = 4096;

/// The first [`HEAD_BYTES`] of `jobs.result` (`substr` is the same on both backends).
pub(super) fn result_head() -> diesel::expression::SqlLiteral<Nullable<Text>> {
    diesel::dsl::sql::<Nullable<Text>>(&format!("substr(jobs.result, 1, {HEAD_BYTES})"))
}

/// A jobs row as a list selects it: the columns before `result`, its head, the rest.
pub(super) type ListRow = (
    (
        String,
        String,
        String,
        String,
        i32,
        i32,
        i32,
        i32,
        i32,
        i32,
        i32,
    ),
    Option<String>,
    (
        Option<String>,
        String,
        f64,
        Option<f64>,
        Option<f64>,
        i32,
        Option<f64>,
        Option<String>,
        Option<f64>,
    ),
);

/// A list row made a [`JobRow`] whose result is [`brief_result`] of the stored head.
pub(super) fn brief_row(row: ListRow) -> JobRow {
    let (
        (id, kind, status, spec, parallel, total, processed, succeeded, failed, skipped, cancelled),
        head,
        (
            error,
            metadata,
            created_at,
            started_at,
            completed_at,
            priority,
            run_at,
            idempotency_key,
            paused_at,
        ),
    ) = row;
    let result = head.map(|head| brief_result(&id, &head, started_at, completed_at, total));
    JobRow {
        id,
        kind,
        status,
        spec,
        parallel,
        total,
        processed,
        succeeded,
        failed,
        skipped,
        cancelled,
        result,
        error,
        metadata,
        created_at,
        started_at,
        completed_at,
        priority,
        run_at,
        idempotency_key,
        paused_at,
    }
}

/// A finished job's result as `GET /batch/jobs` lists it: the stored `summary` (read from
/// the head of the result, where [`build_result`] puts it), `elapsed_seconds`, how many
/// results there are, and where to read them (`GET /batch/jobs/{id}` carries them whole,
/// `/items` pages them, `results.jsonl` streams them). Without `results`: one job of a
/// million items made a list of five jobs 5 MB.
pub fn brief_result(
    job_id: &str,
    head: &str,
    started_at: Option<f64>,
    completed_at: Option<f64>,
    total: i32,
) -> String {
    let summary = head
        .strip_prefix(r#"{"summary":"#)
        .and_then(|rest| {
            serde_json::Deserializer::from_str(rest)
                .into_iter::<serde_json::Value>()
                .next()
        })
        .and_then(Result::ok)
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({"total": total}));
    let elapsed = match (started_at, completed_at) {
        (Some(s), Some(c)) => (c - s).max(0.0),
        _ => 0.0,
    };
    let path = format!("/batch/jobs/{job_id}");
    serde_json::json!({
        "summary": summary,
        "elapsed_seconds": elapsed,
        "results_count": total,
        "results_url": path,
        "items_url": format!("{path}/items"),
        "results_jsonl_url": format!("{path}/results.jsonl"),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ItemOutcome;
    use crate::store::fixtures::{conn, finished, job};
    use crate::store::items::{claim_items, record_finished};
    use crate::store::jobs::{get_job, insert_job};
    use serde_json::json;

    #[test]
    fn a_result_is_built_once_when_the_last_item_is_final() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        claim_items(&mut c, "j", 2, "n", 10.0, 30.0, true).unwrap();
        let one = finished("j", 0, 1, ItemOutcome::succeeded(json!({"i": 0})));
        record_finished(&mut c, &[one], "n", 20.0).unwrap();
        assert!(
            !finalize_job(&mut c, "j", 20.0).unwrap(),
            "an item is still running"
        );
        let two = finished("j", 1, 1, ItemOutcome::skipped(json!({"i": 1})));
        record_finished(&mut c, &[two], "n", 30.0).unwrap();
        assert!(!finalize_job(&mut c, "j", 40.0).unwrap(), "built once");
        let stored = get_job(&mut c, "j").unwrap().unwrap();
        assert_eq!(
            (stored.status, stored.completed_at),
            (JobStatus::Completed, Some(30.0))
        );
        let result: serde_json::Value = serde_json::from_str(stored.result.unwrap().get()).unwrap();
        assert_eq!(result["summary"]["successful"], 1);
        assert_eq!(result["summary"]["skipped"], 1);
        assert_eq!(result["results"], json!([{"i": 0}, {"i": 1}]));
        assert_eq!(result["elapsed_seconds"], 20.0);
    }

    #[test]
    fn a_result_summary_carries_the_aliases_its_kind_declared() {
        let mut c = conn();
        let mut aliased = job(2);
        aliased.kind = "results_alias_kind".into();
        crate::model::summary::declare(
            "results_alias_kind",
            &[
                ("passed", ItemStatus::Succeeded),
                ("broke", ItemStatus::Failed),
            ],
        );
        insert_job(&mut c, "j", &aliased, 1.0).unwrap();
        claim_items(&mut c, "j", 2, "n", 10.0, 30.0, true).unwrap();
        let ok = finished("j", 0, 1, ItemOutcome::succeeded(json!({})));
        let bad = finished("j", 1, 1, ItemOutcome::failed(json!({}), "no"));
        record_finished(&mut c, &[ok, bad], "n", 20.0).unwrap();
        let stored = get_job(&mut c, "j").unwrap().unwrap();
        let result: serde_json::Value = serde_json::from_str(stored.result.unwrap().get()).unwrap();
        assert_eq!(
            result["summary"],
            json!({"total": 2, "successful": 1, "passed": 1, "failed": 1, "broke": 1,
                   "skipped": 0, "cancelled": 0})
        );
    }

    #[test]
    fn result_rows_page_by_index() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(3), 1.0).unwrap();
        let page = result_rows_after(&mut c, "j", 0, 1).unwrap();
        assert_eq!(
            page,
            [(1, "k1".to_string(), "queued".to_string(), None, None)]
        );
        assert!(result_rows_after(&mut c, "j", 2, 10).unwrap().is_empty());
    }
}
