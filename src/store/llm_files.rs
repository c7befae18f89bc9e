//! The tables of the OpenAI-compatible facade: uploaded files (`llm_files`, content kept
//! in the database so every node of a cluster reads the same file) and the batches made
//! from them (`llm_batches`).

use super::schema::{llm_batches, llm_files};
use super::{Conn, StoreError};
use diesel::prelude::*;

/// A file without its content.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = llm_files, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct FileInfo {
    /// `file-{24 hex}`.
    pub id: String,
    /// `batch` for batch input.
    pub purpose: String,
    /// The name it was uploaded under.
    pub filename: String,
    /// Its size.
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: f64,
}

/// A file to store.
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = llm_files)]
pub struct NewFile {
    /// `file-{24 hex}`.
    pub id: String,
    /// `batch` for batch input.
    pub purpose: String,
    /// The name it was uploaded under.
    pub filename: String,
    /// Its size.
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: f64,
    /// Its bytes.
    pub content: Vec<u8>,
}

/// A batch of the facade.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = llm_batches, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct BatchRecord {
    /// `batch_{24 hex}`.
    pub id: String,
    /// Its `batch_llm` job; `None` when its file failed validation.
    pub job_id: Option<String>,
    /// The input file.
    pub input_file_id: String,
    /// `/v1/chat/completions`.
    pub endpoint: String,
    /// `24h` as the client sent it.
    pub completion_window: String,
    /// The client's metadata, JSON text.
    pub metadata: Option<String>,
    /// Validation errors, JSON text of `[{code, message, line}]`.
    pub errors: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
}

/// Upload: stores a file.
pub fn insert_file(conn: &mut Conn, file: &NewFile) -> Result<(), StoreError> {
    diesel::insert_into(llm_files::table)
        .values(file)
        .execute(conn)?;
    Ok(())
}

/// Which page of files [`list_files`] reads.
#[derive(Debug, Clone, Default)]
pub struct FilePage {
    /// A file id: only files after it in the listing's order.
    pub after: Option<String>,
    /// At most this many.
    pub limit: i64,
    /// Oldest first instead of newest first.
    pub ascending: bool,
    /// Only files of this purpose.
    pub purpose: Option<String>,
}

/// Read: one page of files, without content, in `(created_at, id)` order.
pub fn list_files(conn: &mut Conn, page: &FilePage) -> Result<Vec<FileInfo>, StoreError> {
    let mut query = llm_files::table
        .select(FileInfo::as_select())
        .limit(page.limit)
        .into_boxed();
    query = if page.ascending {
        query.order((llm_files::created_at.asc(), llm_files::id.asc()))
    } else {
        query.order((llm_files::created_at.desc(), llm_files::id.desc()))
    };
    if let Some(purpose) = &page.purpose {
        query = query.filter(llm_files::purpose.eq(purpose.clone()));
    }
    if let Some(mark) = match &page.after {
        Some(after) => get_file(conn, after)?,
        None => None,
    } {
        query = if page.ascending {
            query.filter(
                llm_files::created_at
                    .gt(mark.created_at)
                    .or(llm_files::created_at
                        .eq(mark.created_at)
                        .and(llm_files::id.gt(mark.id))),
            )
        } else {
            query.filter(
                llm_files::created_at
                    .lt(mark.created_at)
                    .or(llm_files::created_at
                        .eq(mark.created_at)
                        .and(llm_files::id.lt(mark.id))),
            )
        };
    }
    Ok(query.load(conn)?)
}

/// Read: one file without content.
pub fn get_file(conn: &mut Conn, id: &str) -> Result<Option<FileInfo>, StoreError> {
    Ok(llm_files::table
        .filter(llm_files::id.eq(id))
        .select(FileInfo::as_select())
        .first(conn)
        .optional()?)
}

/// Read: one file's content.
pub fn file_content(conn: &mut Conn, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(llm_files::table
        .filter(llm_files::id.eq(id))
        .select(llm_files::content)
        .first(conn)
        .optional()?)
}

/// Delete: removes a file; whether it existed.
pub fn delete_file(conn: &mut Conn, id: &str) -> Result<bool, StoreError> {
    let n = diesel::delete(llm_files::table.filter(llm_files::id.eq(id))).execute(conn)?;
    Ok(n > 0)
}

/// Create: stores a batch.
pub fn insert_batch(conn: &mut Conn, batch: &BatchRecord) -> Result<(), StoreError> {
    diesel::insert_into(llm_batches::table)
        .values(batch)
        .execute(conn)?;
    Ok(())
}

/// Read: one batch.
pub fn get_batch(conn: &mut Conn, id: &str) -> Result<Option<BatchRecord>, StoreError> {
    Ok(llm_batches::table
        .filter(llm_batches::id.eq(id))
        .select(BatchRecord::as_select())
        .first(conn)
        .optional()?)
}

/// Read: up to `limit` batches, newest first, after the batch `after` (in that order).
pub fn list_batches(
    conn: &mut Conn,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<BatchRecord>, StoreError> {
    let mut query = llm_batches::table
        .order((llm_batches::created_at.desc(), llm_batches::id.desc()))
        .select(BatchRecord::as_select())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        if let Some(mark) = get_batch(conn, after)? {
            query = query.filter(
                llm_batches::created_at
                    .lt(mark.created_at)
                    .or(llm_batches::created_at
                        .eq(mark.created_at)
                        .and(llm_batches::id.lt(mark.id))),
            );
        }
    }
    Ok(query.load(conn)?)
}

/// A job's token totals as [`token_totals_of`] reads them.
#[derive(diesel::QueryableByName)]
struct TokenRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    job_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    p: i64,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    c: i64,
}

/// Read: the prompt and completion tokens of an LLM job's finished items, summed from
/// their results' `usage` (one aggregate over the job's items; a failed agent task spent
/// tokens too).
pub fn token_totals(conn: &mut Conn, job_id: &str) -> Result<(u64, u64), StoreError> {
    Ok(token_totals_of(conn, &[job_id.to_string()])?
        .remove(job_id)
        .unwrap_or_default())
}

/// Read: [`token_totals`] of several jobs in one aggregate (a page of the jobs list);
/// a job without finished items is absent.
pub fn token_totals_of(
    conn: &mut Conn,
    job_ids: &[String],
) -> Result<std::collections::HashMap<String, (u64, u64)>, StoreError> {
    if job_ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<TokenRow> = if let Conn::Pg(c) = conn {
        diesel::sql_query(
            "SELECT job_id, COALESCE(SUM((result::jsonb -> 'usage' ->> 'prompt_tokens')::bigint), 0)::bigint AS p, \
                    COALESCE(SUM((result::jsonb -> 'usage' ->> 'completion_tokens')::bigint), 0)::bigint AS c \
             FROM job_items WHERE job_id = ANY($1) AND result IS NOT NULL GROUP BY job_id",
        )
        .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(job_ids)
        .load(c)?
    } else {
        // The ids as one JSON array: one statement whatever the page size.
        let ids = serde_json::to_string(job_ids).unwrap_or_else(|_| "[]".into());
        diesel::sql_query(
            "SELECT job_id, CAST(COALESCE(SUM(json_extract(result, '$.usage.prompt_tokens')), 0) AS INTEGER) AS p, \
                    CAST(COALESCE(SUM(json_extract(result, '$.usage.completion_tokens')), 0) AS INTEGER) AS c \
             FROM job_items WHERE job_id IN (SELECT value FROM json_each(?)) AND result IS NOT NULL \
             GROUP BY job_id",
        )
        .bind::<diesel::sql_types::Text, _>(ids)
        .load(conn)?
    };
    Ok(rows
        .into_iter()
        .map(|r| (r.job_id, (r.p.max(0) as u64, r.c.max(0) as u64)))
        .collect())
}
