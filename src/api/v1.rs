//! The OpenAI-compatible Batch API under `/v1`: files (`POST /v1/files` as a multipart
//! form, as the `openai` SDKs upload) and batches of chat completions, each an ordinary
//! `batch_llm` job (visible in `/batch/jobs`, cancellable, resumed after a restart).
//!
//! A batch's output and error files are not stored: `file-{hex}-output` and
//! `file-{hex}-errors` are read from its job's items when asked for. Errors answer
//! OpenAI's `{"error": {message, type, param, code}}` (the SDKs read it) besides the
//! house `detail`/`field`.
//!
//! Limits: a file is at most the body limit (256 MiB); a batch at most 1,000,000
//! requests (OpenAI: 200 MB, 50,000).

use super::error::ErrorBody;
use super::extract::{Body, Segment};
use super::Reply;
use crate::engine::Engine;
use crate::model::JobStatus;
use crate::processors::llm_batch::{check_body, ollama_to_openai};
use crate::queue::messages::{JobView, ReadResults};
use crate::store::llm_files::{BatchRecord, FileInfo, FilePage, NewFile};
use crate::submission::{llm_job, LlmBatchRequest, MAX_ITEMS};
use actix_web::http::StatusCode;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

/// The one endpoint a batch may name.
pub const CHAT_ENDPOINT: &str = "/v1/chat/completions";
/// Requests of a facade batch's job in flight at once (each endpoint's
/// `--llm-concurrency` still bounds what reaches it).
const BATCH_PARALLEL: i64 = 64;
/// Results read per page when an output file is built.
const PAGE: u32 = 1000;

/// An OpenAI-shaped error, with the house `detail` (and `field`) too.
fn oai_error(status: StatusCode, param: Option<&str>, message: impl Into<String>) -> HttpResponse {
    let message = message.into();
    let kind = match status.as_u16() {
        401 => "authentication_error",
        404 => "not_found_error",
        500.. => "server_error",
        _ => "invalid_request_error",
    };
    let mut body = json!({"detail": message,
        "error": {"message": message, "type": kind, "param": param, "code": Value::Null}});
    if let Some(p) = param {
        body["field"] = json!(p);
    }
    HttpResponse::build(status).json(body)
}

fn invalid(param: &str, message: impl Into<String>) -> HttpResponse {
    oai_error(StatusCode::UNPROCESSABLE_ENTITY, Some(param), message)
}

fn not_found(what: &str, id: &str) -> HttpResponse {
    oai_error(
        StatusCode::NOT_FOUND,
        None,
        format!("no {what} with id '{id}'"),
    )
}

fn new_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..24].to_string()
}

fn file_object(f: &FileInfo) -> Value {
    json!({"id": f.id, "object": "file", "bytes": f.bytes, "created_at": f.created_at as i64,
           "filename": f.filename, "purpose": f.purpose, "status": "processed",
           "status_details": Value::Null})
}

/// One part of a multipart form: its field name, file name and bytes.
struct Part<'a> {
    name: String,
    filename: Option<String>,
    data: &'a [u8],
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    let first = needle[0];
    let mut i = from;
    while i + needle.len() <= hay.len() {
        match hay[i..hay.len() - needle.len() + 1]
            .iter()
            .position(|b| *b == first)
        {
            None => return None,
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return Some(at);
                }
                i = at + 1;
            }
        }
    }
    None
}

/// A `name="…"` parameter of a `Content-Disposition` header.
fn disposition_param(header: &str, key: &str) -> Option<String> {
    let pattern = format!("{key}=\"");
    let mut rest = header;
    while let Some(at) = rest.find(&pattern) {
        // `filename="…"` also holds `name="…"`; take the one that stands alone.
        let before = rest[..at].chars().last();
        if before.is_none_or(|c| c == ' ' || c == ';') {
            let value = &rest[at + pattern.len()..];
            return value.find('"').map(|end| value[..end].to_string());
        }
        rest = &rest[at + pattern.len()..];
    }
    None
}

/// Parses a `multipart/form-data` body (RFC 7578).
fn multipart<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, String> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"').to_string())
        .ok_or("the multipart Content-Type has no boundary")?;
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut at = find(body, delimiter, 0).ok_or("the form has no part")?;
    loop {
        let start = at + delimiter.len();
        if body[start..].starts_with(b"--") {
            return Ok(parts);
        }
        let headers_start = start
            + if body[start..].starts_with(b"\r\n") {
                2
            } else {
                0
            };
        let headers_end = find(body, b"\r\n\r\n", headers_start).ok_or("a part has no headers")?;
        let headers = String::from_utf8_lossy(&body[headers_start..headers_end]).into_owned();
        let data_start = headers_end + 4;
        let mut next_delim = Vec::with_capacity(delimiter.len() + 2);
        next_delim.extend_from_slice(b"\r\n");
        next_delim.extend_from_slice(delimiter);
        let next = find(body, &next_delim, data_start).ok_or("the form does not end")?;
        let disposition = headers
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .unwrap_or_default()
            .to_string();
        parts.push(Part {
            name: disposition_param(&disposition, "name").unwrap_or_default(),
            filename: disposition_param(&disposition, "filename"),
            data: &body[data_start..next],
        });
        at = next + 2;
    }
}

/// `POST /v1/files`: a multipart form with `purpose` (`batch`) and `file`.
#[utoipa::path(
    post, path = "/v1/files", tag = "openai",
    description = "Uploads a JSONL batch input file (multipart form: `purpose=batch`, `file`), as OpenAI's Files API. At most 256 MiB.",
    responses(
        (status = 200, description = "The file object `{id, object: \"file\", bytes, created_at, filename, purpose}`"),
        (status = 413, description = "Larger than the body limit", body = ErrorBody),
        (status = 422, description = "Not a form, no `file`, or `purpose` is not `batch`; `field` names it", body = ErrorBody),
    )
)]
pub(super) async fn upload_file(
    engine: web::Data<Engine>,
    req: HttpRequest,
    Body(body): Body,
) -> Reply {
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/form-data")
    {
        return Ok(invalid(
            "body",
            "send the file as a multipart/form-data form with fields `purpose` and `file`",
        ));
    }
    let parts = match multipart(content_type, &body) {
        Ok(p) => p,
        Err(e) => return Ok(invalid("body", e)),
    };
    let purpose = parts
        .iter()
        .find(|p| p.name == "purpose")
        .map(|p| String::from_utf8_lossy(p.data).trim().to_string());
    match purpose.as_deref() {
        Some("batch") => {}
        Some(other) => {
            return Ok(invalid(
                "purpose",
                format!("only 'batch' files are kept here, got '{other}'"),
            ))
        }
        None => return Ok(invalid("purpose", "is required (purpose=batch)")),
    }
    let Some(file) = parts.iter().find(|p| p.name == "file") else {
        return Ok(invalid(
            "file",
            "is required: the JSONL file as a form part",
        ));
    };
    let filename = file
        .filename
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "upload.jsonl".into());
    if filename.contains('\0') {
        return Ok(invalid("file", "the file name holds a NUL character"));
    }
    let record = NewFile {
        id: format!("file-{}", new_hex()),
        purpose: "batch".into(),
        filename,
        bytes: file.data.len() as i64,
        created_at: crate::model::now(),
        content: file.data.to_vec(),
    };
    let info = FileInfo {
        id: record.id.clone(),
        purpose: record.purpose.clone(),
        filename: record.filename.clone(),
        bytes: record.bytes,
        created_at: record.created_at,
    };
    engine.insert_llm_file(record).await?;
    Ok(HttpResponse::Ok().json(file_object(&info)))
}

/// Most files one `GET /v1/files` page lists (OpenAI's own bound and default).
const MAX_FILES_PAGE: i64 = 10_000;

/// The listing order of files by creation time.
// Only the schema of `order`: the handler reads the query text itself.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, non_camel_case_types)]
enum FileOrder {
    /// Oldest first.
    asc,
    /// Newest first (the default).
    desc,
}

#[utoipa::path(
    get, path = "/v1/files", tag = "openai",
    description = "Uploaded files in OpenAI's list shape: newest first (`order=asc` for oldest \
        first), `limit` (1–10000, default 10000) after the file `after`, optionally only one \
        `purpose`.",
    params(
        ("after" = Option<String>, Query, description = "A file id: list those after it"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 10000, description = "1–10000, default 10000"),
        ("order" = inline(Option<FileOrder>), Query, description = "`desc` (default) or `asc`, by creation time"),
        ("purpose" = Option<String>, Query, description = "Only files of this purpose"),
    ),
    responses(
        (status = 200, description = "`{object: \"list\", data: [file], first_id, last_id, has_more}`"),
        (status = 422, description = "A bad `limit` or `order`, or an unknown parameter", body = ErrorBody),
    )
)]
pub(super) async fn list_files(engine: web::Data<Engine>, req: HttpRequest) -> Reply {
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(req.query_string()) {
        Ok(p) => p,
        Err(e) => return Ok(invalid("query", format!("cannot parse query string: {e}"))),
    };
    let mut page = FilePage {
        limit: MAX_FILES_PAGE,
        ..FilePage::default()
    };
    for (k, v) in pairs {
        if v.contains('\0') {
            return Ok(invalid(&k, "must not contain a NUL character".to_string()));
        }
        match k.as_str() {
            "after" => page.after = Some(v),
            "purpose" => page.purpose = Some(v),
            "order" => match v.as_str() {
                "asc" => page.ascending = true,
                "desc" => page.ascending = false,
                _ => {
                    return Ok(invalid(
                        "order",
                        format!("must be 'asc' or 'desc', got '{v}'"),
                    ))
                }
            },
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_FILES_PAGE).contains(&n) => page.limit = n,
                _ => {
                    return Ok(invalid(
                        "limit",
                        format!("must be an integer from 1 to {MAX_FILES_PAGE}, got '{v}'"),
                    ))
                }
            },
            other => {
                return Ok(invalid(
                    other,
                    format!(
                        "unknown query parameter `{other}`; expected after, limit, order, purpose"
                    ),
                ))
            }
        }
    }
    let limit = page.limit;
    page.limit += 1;
    let mut files = engine.llm_files(page).await?;
    let has_more = files.len() as i64 > limit;
    files.truncate(limit as usize);
    let data: Vec<Value> = files.iter().map(file_object).collect();
    Ok(HttpResponse::Ok().json(json!({"object": "list", "data": data, "has_more": has_more,
        "first_id": files.first().map(|f| f.id.clone()), "last_id": files.last().map(|f| f.id.clone())})))
}

/// Which batch a generated file id (`file-{hex}-output`, `file-{hex}-errors`) belongs
/// to, and whether it is the error file.
fn generated_file(id: &str) -> Option<(String, bool)> {
    let hex = id.strip_prefix("file-")?;
    if let Some(h) = hex.strip_suffix("-output") {
        return Some((format!("batch_{h}"), false));
    }
    hex.strip_suffix("-errors")
        .map(|h| (format!("batch_{h}"), true))
}

/// A generated file's content, if its batch is finished.
async fn generated_content(
    engine: &Engine,
    batch_id: &str,
    errors: bool,
) -> Result<Option<Vec<u8>>, super::error::ApiError> {
    let Some(batch) = engine.llm_batch(batch_id).await? else {
        return Ok(None);
    };
    let Some(job_id) = &batch.job_id else {
        return Ok(None);
    };
    match engine.job(job_id).await? {
        Some(view) if view.record.status.is_terminal() && settled(&view.record) => {}
        _ => return Ok(None),
    }
    let hex = batch_id.trim_start_matches("batch_");
    let mut out = Vec::new();
    let mut after = -1;
    loop {
        let msg = ReadResults {
            job_id: job_id.clone(),
            after,
            limit: PAGE,
        };
        let rows = engine
            .supervisor()
            .send(msg)
            .await
            .map_err(crate::queue::messages::EngineError::from)??
            .unwrap_or_default();
        for (idx, key, status, result, error) in &rows {
            let succeeded = status == "succeeded";
            if succeeded == errors {
                continue;
            }
            if status == "queued" || status == "running" {
                continue;
            }
            let result: Value = result
                .as_deref()
                .and_then(|r| serde_json::from_str(r).ok())
                .unwrap_or(Value::Null);
            let line = output_line(hex, *idx, key, status, &result, error.as_deref());
            out.extend_from_slice(line.to_string().as_bytes());
            out.push(b'\n');
        }
        if rows.len() < PAGE as usize {
            break;
        }
        after = rows.last().map_or(after, |r| r.0);
    }
    Ok(Some(out))
}

/// One line of an output or error file, as OpenAI writes them.
fn output_line(
    hex: &str,
    idx: i32,
    custom_id: &str,
    status: &str,
    result: &Value,
    error: Option<&str>,
) -> Value {
    let request_id = format!("req_{hex}_{idx}");
    let id = format!("batch_req_{hex}_{idx}");
    if status == "succeeded" {
        let body = match result["api"].as_str() {
            Some("ollama") => ollama_to_openai(&result["response"], &request_id),
            _ => result["response"].clone(),
        };
        return json!({"id": id, "custom_id": custom_id,
            "response": {"status_code": 200, "request_id": request_id, "body": body},
            "error": Value::Null});
    }
    let message = result
        .pointer("/error/message")
        .and_then(Value::as_str)
        .or(error)
        .unwrap_or(match status {
            "cancelled" => "the batch was cancelled or expired before this request ran",
            _ => "the request failed",
        })
        .to_string();
    let code = result
        .pointer("/error/code")
        .and_then(Value::as_str)
        .unwrap_or(if status == "cancelled" {
            "batch_cancelled"
        } else {
            "request_failed"
        })
        .to_string();
    match result.get("status_code").and_then(Value::as_u64) {
        Some(s) => json!({"id": id, "custom_id": custom_id,
            "response": {"status_code": s, "request_id": request_id,
                         "body": {"error": {"message": message, "type": code, "param": Value::Null, "code": Value::Null}}},
            "error": Value::Null}),
        None => json!({"id": id, "custom_id": custom_id, "response": Value::Null,
            "error": {"code": code, "message": message}}),
    }
}

#[utoipa::path(
    get, path = "/v1/files/{id}", tag = "openai",
    description = "One file: an upload, or a batch's output (`file-…-output`) or error file (`file-…-errors`).",
    params(("id" = String, Path, description = "The file id")),
    responses(
        (status = 200, description = "The file object"),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub(super) async fn get_file(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    if let Some(info) = engine.llm_file(&id).await? {
        return Ok(HttpResponse::Ok().json(file_object(&info)));
    }
    if let Some((batch, errors)) = generated_file(&id) {
        if let Some(content) = generated_content(&engine, &batch, errors).await? {
            let created_at = engine
                .llm_batch(&batch)
                .await?
                .map_or(0.0, |b| b.created_at);
            let info = FileInfo {
                id: id.clone(),
                purpose: "batch_output".into(),
                filename: format!("{batch}_{}.jsonl", if errors { "error" } else { "output" }),
                bytes: content.len() as i64,
                created_at,
            };
            return Ok(HttpResponse::Ok().json(file_object(&info)));
        }
    }
    Ok(not_found("file", &id))
}

#[utoipa::path(
    get, path = "/v1/files/{id}/content", tag = "openai",
    description = "A file's bytes: an upload as it came, or a batch's output or error JSONL.",
    params(("id" = String, Path, description = "The file id")),
    responses(
        (status = 200, description = "The content", content_type = "application/octet-stream"),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub(super) async fn file_content(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    let content = match engine.llm_file_content(&id).await? {
        Some(c) => Some(c),
        None => match generated_file(&id) {
            Some((batch, errors)) => generated_content(&engine, &batch, errors).await?,
            None => None,
        },
    };
    match content {
        Some(c) => Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .body(c)),
        None => Ok(not_found("file", &id)),
    }
}

#[utoipa::path(
    delete, path = "/v1/files/{id}", tag = "openai",
    description = "Deletes an uploaded file (a batch made from it keeps running).",
    params(("id" = String, Path, description = "The file id")),
    responses(
        (status = 200, description = "`{id, object: \"file\", deleted: true}`"),
        (status = 404, description = "No such file", body = ErrorBody),
    )
)]
pub(super) async fn delete_file(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    if engine.delete_llm_file(&id).await? {
        return Ok(HttpResponse::Ok().json(json!({"id": id, "object": "file", "deleted": true})));
    }
    Ok(not_found("file", &id))
}

/// `24h`, `30m`, `3600s`, `2d` in seconds.
fn window_seconds(w: &str) -> Option<f64> {
    let w = w.trim();
    let (n, unit) = w.split_at(w.find(|c: char| !c.is_ascii_digit())?);
    let n: f64 = n.parse().ok()?;
    let s = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        _ => return None,
    };
    (1.0..=30.0 * 86_400.0).contains(&s).then_some(s)
}

/// Whether every item of a finished job has its final outcome recorded (a cancel ends the
/// job at once; its running items are recorded as they stop).
fn settled(job: &crate::model::JobRecord) -> bool {
    job.succeeded + job.failed + job.skipped + job.cancelled >= job.total
}

/// The batch object of `record`, its job's state read from `view`.
fn batch_object(record: &BatchRecord, view: Option<&JobView>) -> Value {
    let hex = record.id.trim_start_matches("batch_");
    let ts = |t: Option<f64>| t.map(|t| t as i64);
    let window = window_seconds(&record.completion_window).unwrap_or(86_400.0);
    let metadata = record
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .unwrap_or(Value::Null);
    let mut o = json!({
        "id": record.id, "object": "batch", "endpoint": record.endpoint,
        "input_file_id": record.input_file_id, "completion_window": record.completion_window,
        "created_at": record.created_at as i64,
        "expires_at": (record.created_at + window) as i64,
        "errors": Value::Null, "output_file_id": Value::Null, "error_file_id": Value::Null,
        "in_progress_at": Value::Null, "finalizing_at": Value::Null, "completed_at": Value::Null,
        "failed_at": Value::Null, "expired_at": Value::Null, "cancelling_at": Value::Null,
        "cancelled_at": Value::Null, "metadata": metadata,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
    });
    if let Some(errors) = &record.errors {
        let data: Value = serde_json::from_str(errors).unwrap_or(json!([]));
        o["status"] = json!("failed");
        o["errors"] = json!({"object": "list", "data": data});
        o["failed_at"] = json!(record.created_at as i64);
        return o;
    }
    let Some(view) = view else {
        o["status"] = json!("failed");
        o["errors"] = json!({"object": "list", "data": [{"code": "job_missing",
            "message": "the batch's job is gone (pruned by retention)", "line": Value::Null}]});
        return o;
    };
    let job = &view.record;
    if let Some(job_id) = &record.job_id {
        o["job_id"] = json!(job_id);
    }
    o["request_counts"] = json!({"total": job.total, "completed": job.succeeded,
        "failed": job.failed + job.cancelled + job.skipped});
    o["in_progress_at"] = json!(ts(job.started_at));
    let status = match job.status {
        JobStatus::Completed => "completed",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
        JobStatus::Expired => "expired",
        JobStatus::Running => "in_progress",
        _ => "validating",
    };
    o["status"] = json!(status);
    if job.status.is_terminal() && !settled(job) {
        // Cancelled or expired while requests ran: they are being stopped.
        o["status"] = json!(if job.status == JobStatus::Cancelled {
            "cancelling"
        } else {
            "finalizing"
        });
        return o;
    }
    if job.status.is_terminal() {
        let at = json!(ts(job.completed_at));
        o["finalizing_at"] = at.clone();
        match job.status {
            JobStatus::Completed => o["completed_at"] = at,
            JobStatus::Failed => o["failed_at"] = at,
            JobStatus::Cancelled => {
                o["cancelling_at"] = at.clone();
                o["cancelled_at"] = at
            }
            _ => o["expired_at"] = at,
        }
        if job.succeeded > 0 {
            o["output_file_id"] = json!(format!("file-{hex}-output"));
        }
        if job.failed + job.cancelled + job.skipped > 0 {
            o["error_file_id"] = json!(format!("file-{hex}-errors"));
        }
    }
    o
}

/// A batch's answer, its job read from the engine.
async fn batch_reply(
    engine: &Engine,
    record: &BatchRecord,
) -> Result<Value, super::error::ApiError> {
    let view = match &record.job_id {
        Some(id) => engine.job(id).await?,
        None => None,
    };
    Ok(batch_object(record, view.as_ref()))
}

/// Reads a batch input file: the requests, or every malformed line's error.
fn read_input(content: &[u8], endpoint: &str) -> Result<Vec<Value>, Vec<Value>> {
    let mut errors = Vec::new();
    let mut requests = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let text = match std::str::from_utf8(content) {
        Ok(t) => t.strip_prefix('\u{feff}').unwrap_or(t),
        Err(e) => {
            return Err(vec![json!({"code": "invalid_file", "line": Value::Null,
            "message": format!("the file is not UTF-8: {e}")})])
        }
    };
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.trim().is_empty() {
            continue;
        }
        let mut bad = |code: &str, message: String| {
            if errors.len() < 1000 {
                errors.push(json!({"code": code, "message": message, "line": n}));
            }
        };
        let v: Value = match serde_json::from_str(line) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                bad("invalid_json_line", "the line is not a JSON object".into());
                continue;
            }
            Err(e) => {
                bad(
                    "invalid_json_line",
                    format!("the line is not valid JSON: {e}"),
                );
                continue;
            }
        };
        let custom_id = match v.get("custom_id") {
            Some(Value::String(s)) if !s.trim().is_empty() && !s.contains('\0') => s.clone(),
            _ => {
                bad(
                    "missing_required_parameter",
                    "custom_id must be a non-empty string".into(),
                );
                continue;
            }
        };
        if !seen.insert(custom_id.clone()) {
            bad(
                "duplicate_custom_id",
                format!("custom_id '{custom_id}' is used by an earlier line"),
            );
            continue;
        }
        if v.get("method").and_then(Value::as_str) != Some("POST") {
            bad("invalid_method", "method must be POST".into());
            continue;
        }
        if v.get("url").and_then(Value::as_str) != Some(endpoint) {
            bad(
                "mismatched_endpoint",
                format!("url must be the batch's endpoint {endpoint}"),
            );
            continue;
        }
        let body = v.get("body").cloned().unwrap_or(Value::Null);
        if let Err(e) = check_body(&body) {
            let field = if e.field.is_empty() {
                "body".to_string()
            } else {
                format!("body.{}", e.field)
            };
            bad("invalid_request", format!("{field}: {}", e.message));
            continue;
        }
        if crate::submission::fields::nul_at(&body, "body").is_some() {
            bad("invalid_request", "the body holds a NUL character".into());
            continue;
        }
        requests.push(json!({"custom_id": custom_id, "body": body}));
    }
    if requests.is_empty() && errors.is_empty() {
        errors.push(json!({"code": "empty_file", "line": Value::Null,
            "message": "the file holds no request"}));
    }
    if requests.len() > MAX_ITEMS {
        errors.push(json!({"code": "too_many_requests", "line": Value::Null,
            "message": format!("the file holds {} requests; at most {MAX_ITEMS} fit in one batch", requests.len())}));
    }
    if errors.is_empty() {
        Ok(requests)
    } else {
        Err(errors)
    }
}

#[utoipa::path(
    post, path = "/v1/batches", tag = "openai",
    description = "Creates a batch from an uploaded JSONL file (`{input_file_id, endpoint: \"/v1/chat/completions\", completion_window, metadata}`): a `batch_llm` job whose deadline is the window. Malformed lines make the batch `failed` with `errors.data[{code, message, line}]`.",
    request_body(content_type = "application/json", description = "`{input_file_id, endpoint, completion_window, metadata}`"),
    responses(
        (status = 200, description = "The batch object"),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 422, description = "A field is wrong; `field` names it", body = ErrorBody),
    )
)]
pub(super) async fn create_batch(engine: web::Data<Engine>, Body(body): Body) -> Reply {
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return Ok(invalid("body", "expected a JSON object")),
        Err(e) => {
            return Ok(oai_error(
                StatusCode::BAD_REQUEST,
                None,
                format!("request body is not valid JSON: {e}"),
            ))
        }
    };
    for key in parsed.as_object().into_iter().flat_map(Map::keys) {
        if !["input_file_id", "endpoint", "completion_window", "metadata"].contains(&key.as_str()) {
            return Ok(invalid(
                key,
                format!("unknown field `{key}`; expected input_file_id, endpoint, completion_window, metadata"),
            ));
        }
    }
    let Some(input_file_id) = parsed["input_file_id"].as_str().filter(|s| !s.is_empty()) else {
        return Ok(invalid(
            "input_file_id",
            "is required: the id of an uploaded file",
        ));
    };
    let endpoint = parsed["endpoint"].as_str().unwrap_or_default();
    if endpoint != CHAT_ENDPOINT {
        return Ok(invalid(
            "endpoint",
            format!("only {CHAT_ENDPOINT} is supported, got '{endpoint}'"),
        ));
    }
    let window = parsed["completion_window"]
        .as_str()
        .unwrap_or("24h")
        .to_string();
    let Some(window_s) = window_seconds(&window) else {
        return Ok(invalid(
            "completion_window",
            format!("'{window}' is not a window like 24h (s, m, h or d; at most 30d)"),
        ));
    };
    let metadata = match &parsed["metadata"] {
        Value::Null => None,
        m @ Value::Object(o) if o.values().all(Value::is_string) => {
            if crate::submission::fields::nul_at(m, "metadata").is_some() {
                return Ok(invalid("metadata", "NUL characters are not allowed"));
            }
            Some(m.to_string())
        }
        _ => return Ok(invalid("metadata", "must be an object of strings")),
    };
    if input_file_id.contains('\0') {
        return Ok(invalid("input_file_id", "NUL characters are not allowed"));
    }
    let Some(content) = engine.llm_file_content(input_file_id).await? else {
        return Ok(invalid(
            "input_file_id",
            format!("no uploaded file has the id '{input_file_id}'"),
        ));
    };
    let id = format!("batch_{}", new_hex());
    let created_at = crate::model::now();
    let mut record = BatchRecord {
        id: id.clone(),
        job_id: None,
        input_file_id: input_file_id.to_string(),
        endpoint: endpoint.to_string(),
        completion_window: window,
        metadata,
        errors: None,
        created_at,
    };
    let requests = match read_input(&content, endpoint) {
        Ok(r) => r,
        Err(errors) => {
            record.errors = Some(Value::Array(errors).to_string());
            engine.insert_llm_batch(record.clone()).await?;
            return Ok(HttpResponse::Ok().json(batch_object(&record, None)));
        }
    };
    let raw = json!({"requests": requests, "parallel": BATCH_PARALLEL,
        "deadline": created_at + window_s, "metadata": {"openai_batch_id": id}});
    let Value::Object(raw) = raw else {
        unreachable!("built as an object")
    };
    let req: LlmBatchRequest = serde_json::from_value(Value::Object(raw.clone()))
        .map_err(|e| super::error::ApiError::Internal(e.to_string()))?;
    let job = llm_job(req, raw)?;
    let view = engine.submit(job).await?;
    record.job_id = Some(view.record.id.clone());
    engine.insert_llm_batch(record.clone()).await?;
    Ok(HttpResponse::Ok().json(batch_object(&record, Some(&view))))
}

#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "openai",
    description = "One batch, its status and counts read from its job.",
    params(("id" = String, Path, description = "The batch id")),
    responses(
        (status = 200, description = "The batch object"),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub(super) async fn get_batch(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    match engine.llm_batch(&id).await? {
        Some(record) => Ok(HttpResponse::Ok().json(batch_reply(&engine, &record).await?)),
        None => Ok(not_found("batch", &id)),
    }
}

#[utoipa::path(
    get, path = "/v1/batches", tag = "openai",
    description = "Batches, newest first: `limit` (1–100, default 20) after the batch `after`.",
    params(
        ("after" = Option<String>, Query, description = "A batch id: list those after it"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
    ),
    responses(
        (status = 200, description = "`{object: \"list\", data, first_id, last_id, has_more}`"),
        (status = 422, description = "A bad `limit`", body = ErrorBody),
    )
)]
pub(super) async fn list_batches(engine: web::Data<Engine>, req: HttpRequest) -> Reply {
    let pairs: Vec<(String, String)> = match serde_urlencoded::from_str(req.query_string()) {
        Ok(p) => p,
        Err(e) => return Ok(invalid("query", format!("cannot parse query string: {e}"))),
    };
    let mut after = None;
    let mut limit = 20i64;
    for (k, v) in pairs {
        match k.as_str() {
            "after" if !v.contains('\0') => after = Some(v),
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => limit = n,
                _ => {
                    return Ok(invalid(
                        "limit",
                        format!("must be an integer from 1 to 100, got '{v}'"),
                    ))
                }
            },
            other => {
                return Ok(invalid(
                    other,
                    format!("unknown query parameter `{other}`; expected after, limit"),
                ))
            }
        }
    }
    let mut records = engine.llm_batches(after, limit + 1).await?;
    let has_more = records.len() as i64 > limit;
    records.truncate(limit as usize);
    let mut data = Vec::with_capacity(records.len());
    for r in &records {
        data.push(batch_reply(&engine, r).await?);
    }
    Ok(
        HttpResponse::Ok().json(json!({"object": "list", "data": data, "has_more": has_more,
        "first_id": records.first().map(|r| r.id.clone()),
        "last_id": records.last().map(|r| r.id.clone())})),
    )
}

#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", tag = "openai",
    description = "Cancels a batch: its job is cancelled, requests in flight are stopped, finished ones kept (in the output file).",
    params(("id" = String, Path, description = "The batch id")),
    responses(
        (status = 200, description = "The batch object, `cancelling` while requests are being stopped"),
        (status = 404, description = "No such batch", body = ErrorBody),
    )
)]
pub(super) async fn cancel_batch(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    let Some(record) = engine.llm_batch(&id).await? else {
        return Ok(not_found("batch", &id));
    };
    let mut stopping = false;
    if let Some(job_id) = &record.job_id {
        if let crate::store::job_control::CancelOutcome::Cancelled { running } =
            engine.cancel(job_id).await?
        {
            stopping = running > 0;
        }
    }
    let mut answer = batch_reply(&engine, &record).await?;
    if stopping {
        answer["status"] = json!("cancelling");
        answer["cancelled_at"] = Value::Null;
    }
    Ok(HttpResponse::Ok().json(answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_are_split_into_their_parts() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n{\"a\":1}\n\r\n--XyZ--\r\n";
        let parts = multipart("multipart/form-data; boundary=XyZ", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].name, "purpose");
        assert_eq!(parts[0].data, b"batch");
        assert_eq!(parts[1].name, "file");
        assert_eq!(parts[1].filename.as_deref(), Some("in.jsonl"));
        assert_eq!(parts[1].data, b"{\"a\":1}\n");
        assert!(multipart("multipart/form-data", body).is_err());
    }

    #[test]
    fn windows_read_as_seconds() {
        assert_eq!(window_seconds("24h"), Some(86_400.0));
        assert_eq!(window_seconds("30m"), Some(1800.0));
        assert_eq!(window_seconds("2"), None);
        assert_eq!(window_seconds("31d"), None);
        assert_eq!(window_seconds("h"), None);
    }

    #[test]
    fn malformed_lines_are_named_by_number() {
        let file = "{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}}\nnot json\n{\"custom_id\":\"a\",\"method\":\"POST\",\"url\":\"/v1/chat/completions\",\"body\":{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}}\n";
        let errors = read_input(file.as_bytes(), CHAT_ENDPOINT).unwrap_err();
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0]["line"], 2);
        assert_eq!(errors[1]["line"], 3);
        assert_eq!(errors[1]["code"], "duplicate_custom_id");
    }
}
