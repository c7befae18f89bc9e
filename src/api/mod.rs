//! The REST surface: the only module that knows HTTP. Handlers parse and check input, send
//! one message to the engine, and map the answer to a response.

pub mod dashboard;
pub mod error;
mod extract;
pub mod guard;
pub mod openapi;
mod openapi_fix;
pub mod operator;
pub mod responses;
pub mod schedules;
mod submit;
pub mod tls;
pub mod v1;

use crate::engine::Engine;
use crate::model::{ItemStatus, JobStatus};
use crate::queue::messages::{
    EngineError, GetJob, GetMetrics, KindInfo, ListItems, ListJobs, Ping, ReadResults, Subscribe,
};
use crate::queue::tracker::{TrackerEvent, TrackerEventKind};
use crate::store::job_control::CancelOutcome;
use crate::store::results::ResultRow;
use crate::submission::fields::check_text;
use crate::submission::{parse_body, retry_statuses, RetryRequest, MAX_BODY_BYTES};
use actix_web::web::{self, Bytes, ServiceConfig};
use actix_web::{HttpRequest, HttpResponse};
use error::{ApiError, ErrorBody};
use extract::{Body, Segment};
use openapi::openapi_json;
use operator::{bulk_jobs, job_timeline, job_webhooks};
use responses::*;
use schedules::{
    create_schedule, delete_schedule, get_schedule, list_schedules, pause_schedule, resume_schedule,
};
use serde_json::json;
use std::collections::HashMap;
use submit::{
    submit_agent_tasks, submit_generic, submit_llm, submit_mcp, submit_tests, submit_validation,
};
use v1::{
    cancel_batch, create_batch, delete_file, file_content, get_batch, get_file, list_batches,
    list_files, upload_file,
};

/// Mounts the REST routes and lists them from one table, so a test can hold the OpenAPI
/// document to exactly what is mounted.
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:ident),+ $(,)?) => {
        /// Every `(method, path)` of the REST API, in actix path syntax (which is also
        /// OpenAPI's). The browser pages (`/`, `/ui/…`, `/docs/…`) are not in it.
        pub const ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path)),+];

        /// Fixed paths (with their 405s) before those with a `{param}`, so that
        /// `GET /batch/jobs/bulk` is a 405, not a lookup of the job `bulk`.
        fn mount(cfg: &mut ServiceConfig) {
            $(if !$path.contains('{') { cfg.route($path, web::$method().to($handler)); })+
            mount_method_not_allowed(cfg, false);
            $(if $path.contains('{') { cfg.route($path, web::$method().to($handler)); })+
            mount_method_not_allowed(cfg, true);
        }
    };
}

api_routes! {
    get "/health" => health,
    get "/metrics" => metrics,
    get "/openapi.json" => openapi_json,
    post "/batch/validation" => submit_validation,
    post "/batch/tests" => submit_tests,
    post "/batch/agent-tasks" => submit_agent_tasks,
    post "/batch/mcp-operations" => submit_mcp,
    post "/batch/llm" => submit_llm,
    post "/batch/jobs" => submit_generic,
    get "/batch/jobs" => list_jobs,
    post "/batch/jobs/bulk" => bulk_jobs,
    get "/batch/jobs/{id}" => get_job,
    delete "/batch/jobs/{id}" => cancel_job,
    post "/batch/jobs/{id}/pause" => pause_job,
    post "/batch/jobs/{id}/resume" => resume_job,
    post "/batch/jobs/{id}/retry" => retry_job,
    get "/batch/kinds" => list_kinds,
    post "/batch/kinds/{kind}/pause" => pause_kind,
    post "/batch/kinds/{kind}/resume" => resume_kind,
    get "/batch/jobs/{id}/items" => list_items,
    get "/batch/jobs/{id}/results.jsonl" => results_jsonl,
    get "/batch/jobs/{id}/events" => job_events,
    get "/batch/jobs/{id}/timeline" => job_timeline,
    get "/batch/jobs/{id}/webhooks" => job_webhooks,
    get "/batch/events" => all_events,
    get "/batch/stats" => stats,
    post "/batch/schedules" => create_schedule,
    get "/batch/schedules" => list_schedules,
    get "/batch/schedules/{id}" => get_schedule,
    delete "/batch/schedules/{id}" => delete_schedule,
    post "/batch/schedules/{id}/pause" => pause_schedule,
    post "/batch/schedules/{id}/resume" => resume_schedule,
    post "/v1/files" => upload_file,
    get "/v1/files" => list_files,
    get "/v1/files/{id}" => get_file,
    delete "/v1/files/{id}" => delete_file,
    get "/v1/files/{id}/content" => file_content,
    post "/v1/batches" => create_batch,
    get "/v1/batches" => list_batches,
    get "/v1/batches/{id}" => get_batch,
    post "/v1/batches/{id}/cancel" => cancel_batch,
}

/// After the real routes: any other method on a known path answers 405 with `Allow`, not
/// the 404 of an unknown path. `with_params` picks the paths with a `{param}` or the fixed ones.
fn mount_method_not_allowed(cfg: &mut ServiceConfig, with_params: bool) {
    let mut seen: Vec<&str> = Vec::new();
    for (_, path) in ROUTES {
        if seen.contains(path) || path.contains('{') != with_params {
            continue;
        }
        seen.push(path);
        let allow: Vec<String> = ROUTES
            .iter()
            .filter(|(_, p)| p == path)
            .map(|(m, _)| m.to_ascii_uppercase())
            .collect();
        let allow = allow.join(", ");
        cfg.route(
            path,
            web::route().to(move |req: HttpRequest| {
                let allow = allow.clone();
                async move {
                    HttpResponse::MethodNotAllowed()
                        .insert_header(("allow", allow.as_str()))
                        .json(ErrorBody::new(format!(
                            "method {} is not allowed on {} (allowed: {allow})",
                            req.method(),
                            req.path()
                        )))
                }
            }),
        );
    }
}

/// Registers the engine and every route on an actix-web `App` (or a scope of one):
/// `App::new().configure(batchforge::api::routes(engine.clone()))`. Besides the REST API
/// this mounts the OpenAPI document at `/openapi.json` and Swagger UI at `/docs/`.
///
/// Every request passes [`guard::RequestGuard`] with the default [`guard::SecurityConfig`]
/// (browser protections, no token); [`secured_routes`] takes one. The routes answer every
/// path under where they are mounted (unknown ones 404): mount them last, or in a scope.
pub fn routes(engine: Engine) -> impl FnOnce(&mut ServiceConfig) {
    secured_routes(engine, guard::SecurityConfig::default())
}

/// [`routes`], guarded by `security` (tokens, allowed origins and hosts).
pub fn secured_routes(
    engine: Engine,
    security: guard::SecurityConfig,
) -> impl FnOnce(&mut ServiceConfig) {
    let guard = guard::RequestGuard::new(security);
    move |cfg: &mut ServiceConfig| {
        cfg.service(web::scope("").wrap(guard).configure(|cfg| {
            cfg.app_data(web::Data::new(engine))
                .app_data(web::PayloadConfig::new(MAX_BODY_BYTES));
            mount(cfg);
            openapi::mount_docs(cfg);
            dashboard::configure(cfg);
        }));
    }
}

type Reply = Result<HttpResponse, ApiError>;

/// Query parameters, checked by hand so every error names its parameter.
struct Query(HashMap<String, String>);

impl Query {
    fn parse(req: &HttpRequest, allowed: &[&str]) -> Result<Query, ApiError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
            .map_err(|e| ApiError::invalid("query", format!("cannot parse query string: {e}")))?;
        let mut map = HashMap::new();
        for (k, v) in pairs {
            // Filters reach SQL as text, which cannot hold a NUL character on PostgreSQL.
            check_text(&k, &k).and_then(|()| check_text(&k, &v))?;
            if !allowed.contains(&k.as_str()) {
                return Err(ApiError::invalid(
                    k.clone(),
                    format!(
                        "unknown query parameter '{k}' (expected one of {})",
                        allowed.join(", ")
                    ),
                ));
            }
            map.insert(k, v);
        }
        Ok(Query(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn number(&self, name: &str, default: u64, min: u64, max: u64) -> Result<u64, ApiError> {
        // An empty value is not a number: refused like any other (the document says integer).
        let Some(raw) = self.0.get(name).map(String::as_str) else {
            return Ok(default);
        };
        match raw.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::invalid(
                name,
                format!("must be an integer between {min} and {max}, got '{raw}'"),
            )),
        }
    }

    fn status<T: std::str::FromStr<Err = crate::model::UnknownStatus>>(
        &self,
        name: &str,
    ) -> Result<Option<T>, ApiError> {
        // An empty value is not a status: refused (the document lists the statuses).
        self.0
            .get(name)
            .map(|s| {
                s.parse::<T>()
                    .map_err(|e| ApiError::invalid(name, e.to_string()))
            })
            .transpose()
    }
}

const MAX_PAGE: u64 = 1000;

#[utoipa::path(
    get, path = "/batch/jobs", tag = "jobs",
    description = "Jobs, newest first. An LLM job (`batch_llm`, `batch_agent_tasks`) carries its token totals in `metadata.progress` (`prompt_tokens`, `completion_tokens`) as in `GET /batch/jobs/{id}`. A finished entry's `result` is brief: `{summary, elapsed_seconds, results_count, results_url, items_url, results_jsonl_url}`, without `results` (`GET /batch/jobs/{id}` carries them, `/items` pages them, `results.jsonl` streams them).",
    params(
        ("status" = Option<JobStatus>, Query, description = "Only jobs in this status"),
        ("job_type" = Option<String>, Query, description = "Only jobs of this kind", example = "batch_validation"),
        ("q" = Option<String>, Query, description = "Only jobs whose id, kind, idempotency key or metadata contains this text (any case; `%` and `_` match themselves)", example = "schedule:sched-3f2a9c1d8e7b:"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1–1000 (default 100)"),
        ("offset" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_u64, description = "Jobs to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "A page of jobs", body = JobList),
        (status = 422, description = "A bad query parameter; `field` names it", body = ErrorBody),
    )
)]
async fn list_jobs(engine: web::Data<Engine>, req: HttpRequest) -> Reply {
    let q = Query::parse(&req, &["status", "job_type", "q", "limit", "offset"])?;
    let msg = ListJobs {
        status: q.status::<JobStatus>("status")?,
        kind: q.get("job_type").map(str::to_string),
        search: q.get("q").map(str::to_string),
        limit: q.number("limit", 100, 1, MAX_PAGE)? as u32,
        offset: q.number("offset", 0, 0, i64::MAX as u64)?,
    };
    let page = engine.supervisor().send(msg).await.map_err(mailbox)??;
    let mut jobs: Vec<JobResponse> = page.jobs.into_iter().map(JobResponse::from).collect();
    // A running LLM job's live progress counts its tokens already (once it has any); a
    // finished one's are summed from its items, for the whole page in one read.
    let without = |j: &JobResponse| {
        is_llm_kind(&j.kind)
            && j.completed_at.is_some()
            && j.metadata["progress"].get("prompt_tokens").is_none()
    };
    let llm: Vec<String> = jobs
        .iter()
        .filter(|j| without(j))
        .map(|j| j.job_id.clone())
        .collect();
    if !llm.is_empty() {
        let totals = engine.llm_token_totals_of(llm).await?;
        for job in jobs.iter_mut().filter(|j| without(j)) {
            let tokens = totals.get(&job.job_id).copied().unwrap_or_default();
            put_token_totals(job, tokens);
        }
    }
    Ok(HttpResponse::Ok().json(JobList {
        jobs,
        total: page.total,
    }))
}

/// Whether jobs of `kind` call an LLM and so carry token totals.
fn is_llm_kind(kind: &str) -> bool {
    kind == crate::processors::llm_batch::KIND || kind == crate::processors::agent::KIND
}

/// Puts an LLM job's token totals (`prompt_tokens`, `completion_tokens`), summed from
/// its items' stored usage, into its `metadata.progress`.
fn put_token_totals(job: &mut JobResponse, (prompt, completion): (u64, u64)) {
    if let Some(p) = job
        .metadata
        .get_mut("progress")
        .and_then(|p| p.as_object_mut())
    {
        p.insert("prompt_tokens".into(), prompt.into());
        p.insert("completion_tokens".into(), completion.into());
    }
}

#[utoipa::path(
    get, path = "/batch/jobs/{id}", tag = "jobs",
    description = "One job, with live progress in `metadata.progress` and its result once finished.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The job", body = JobResponse),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
async fn get_job(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    let msg = GetJob { job_id: id.clone() };
    match engine.supervisor().send(msg).await.map_err(mailbox)?? {
        Some(view) => {
            let mut job = JobResponse::from(view);
            if is_llm_kind(&job.kind) {
                put_token_totals(&mut job, engine.llm_token_totals(&id).await?);
            }
            Ok(HttpResponse::Ok().json(job))
        }
        None => Err(ApiError::NotFound(format!("job '{id}' not found"))),
    }
}

#[utoipa::path(
    delete, path = "/batch/jobs/{id}", tag = "jobs",
    description = "Cancels a job: running items are stopped (their process groups killed), the rest become `cancelled`.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "Cancelled", body = CancelResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job already finished", body = ErrorBody),
    )
)]
async fn cancel_job(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    match engine.cancel(&id).await? {
        CancelOutcome::Cancelled { .. } => Ok(HttpResponse::Ok().json(CancelResponse {
            status: JobStatus::Cancelled,
            job_id: id,
        })),
        CancelOutcome::NotFound => Err(ApiError::NotFound(format!("job '{id}' not found"))),
        CancelOutcome::AlreadyFinished(status) => Err(ApiError::Conflict(format!(
            "job '{id}' is already {status} and cannot be cancelled"
        ))),
    }
}

#[utoipa::path(
    post, path = "/batch/jobs/{id}/pause", tag = "jobs",
    description = "Pauses a job: its running items finish, its claimed items go back to the queue, nothing new starts until it is resumed. Pausing a paused job changes nothing.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The job, `paused: true`", body = JobResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job already finished", body = ErrorBody),
    )
)]
async fn pause_job(engine: web::Data<Engine>, id: Segment) -> Reply {
    set_paused(&engine, id.into_inner(), true).await
}

#[utoipa::path(
    post, path = "/batch/jobs/{id}/resume", tag = "jobs",
    description = "Resumes a paused job.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The job, `paused: false`", body = JobResponse),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job already finished", body = ErrorBody),
    )
)]
async fn resume_job(engine: web::Data<Engine>, id: Segment) -> Reply {
    set_paused(&engine, id.into_inner(), false).await
}

#[utoipa::path(
    post, path = "/batch/jobs/{id}/retry", tag = "jobs",
    description = "Requeues a finished job's failed items (or those of the statuses given) with a fresh attempt budget, keeping each one's earlier errors in `attempt_errors`, and reopens the job. The body is optional.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    request_body(content = Option<RetryRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "The items went back to the queue", body = RetryResponse),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 409, description = "The job has not finished, or has no item to retry", body = ErrorBody),
        (status = 422, description = "A bad `status`", body = ErrorBody),
    )
)]
async fn retry_job(engine: web::Data<Engine>, id: Segment, Body(body): Body) -> Reply {
    use crate::store::job_control::RetryOutcome;
    let id = id.into_inner();
    // No body, or `null` (the documented body is optional and nullable): the default.
    let statuses = if body.trim_ascii().is_empty() || body.trim_ascii() == b"null" {
        vec![ItemStatus::Failed]
    } else {
        let (req, _): (RetryRequest, _) = parse_body(&body)?;
        retry_statuses(req)?
    };
    match engine.retry(&id, statuses).await? {
        RetryOutcome::Requeued { items, job } => Ok(HttpResponse::Ok().json(RetryResponse {
            requeued: items,
            job: JobResponse::from(crate::queue::messages::JobView {
                record: *job,
                live: None,
                replayed: false,
            }),
        })),
        RetryOutcome::NotFound => Err(ApiError::NotFound(format!("job '{id}' not found"))),
        RetryOutcome::NotFinished(status) => Err(ApiError::Conflict(format!(
            "job '{id}' is {status}; only a finished job is retried"
        ))),
        RetryOutcome::NothingToRetry => Err(ApiError::Conflict(format!(
            "job '{id}' has no item to retry in those statuses"
        ))),
        RetryOutcome::DeadlinePassed => Err(ApiError::Conflict(format!(
            "job '{id}' is past its deadline; submit it again with a new one"
        ))),
    }
}

async fn set_paused(engine: &Engine, id: String, paused: bool) -> Reply {
    use crate::store::job_control::PauseOutcome;
    match engine.set_paused(&id, paused).await? {
        PauseOutcome::Done(record) => Ok(HttpResponse::Ok().json(JobResponse::from(
            crate::queue::messages::JobView {
                record: *record,
                live: None,
                replayed: false,
            },
        ))),
        PauseOutcome::NotFound => Err(ApiError::NotFound(format!("job '{id}' not found"))),
        PauseOutcome::Finished(status) => Err(ApiError::Conflict(format!(
            "job '{id}' is already {status} and cannot be {}",
            if paused { "paused" } else { "resumed" }
        ))),
    }
}

#[utoipa::path(
    get, path = "/batch/kinds", tag = "jobs",
    description = "The registered kinds: their concurrency limit, items running now, and whether they are paused.",
    responses((status = 200, description = "The kinds", body = KindList))
)]
async fn list_kinds(engine: web::Data<Engine>) -> Reply {
    Ok(HttpResponse::Ok().json(KindList {
        kinds: engine.kinds().await?,
        sandbox: engine.sandbox_mode().into(),
    }))
}

#[utoipa::path(
    post, path = "/batch/kinds/{kind}/pause", tag = "jobs",
    description = "Pauses every job of a kind, present and future, until resumed (it survives restarts): running items finish, nothing new starts.",
    params(("kind" = String, Path, description = "A registered kind", example = "batch_validation")),
    responses(
        (status = 200, description = "The kind, `paused: true`", body = KindInfo),
        (status = 404, description = "No such kind", body = ErrorBody),
    )
)]
async fn pause_kind(engine: web::Data<Engine>, kind: Segment) -> Reply {
    set_kind_paused(&engine, kind.into_inner(), true).await
}

#[utoipa::path(
    post, path = "/batch/kinds/{kind}/resume", tag = "jobs",
    description = "Resumes a paused kind.",
    params(("kind" = String, Path, description = "A registered kind", example = "batch_validation")),
    responses(
        (status = 200, description = "The kind, `paused: false`", body = KindInfo),
        (status = 404, description = "No such kind", body = ErrorBody),
    )
)]
async fn resume_kind(engine: web::Data<Engine>, kind: Segment) -> Reply {
    set_kind_paused(&engine, kind.into_inner(), false).await
}

async fn set_kind_paused(engine: &Engine, kind: String, paused: bool) -> Reply {
    match engine.set_kind_paused(&kind, paused).await {
        Ok(info) => Ok(HttpResponse::Ok().json(info)),
        Err(EngineError::NoProcessor(_)) => Err(ApiError::NotFound(format!(
            "kind '{kind}' is not registered in this engine"
        ))),
        Err(e) => Err(e.into()),
    }
}

#[utoipa::path(
    get, path = "/batch/jobs/{id}/items", tag = "jobs",
    description = "A job's items in submission order, with each one's input, result and error.",
    params(
        ("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b"),
        ("status" = Option<ItemStatus>, Query, description = "Only items in this status"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size, 1–1000 (default 100)"),
        ("offset" = Option<u64>, Query, minimum = 0, maximum = 9223372036854775807_u64, description = "Items to skip (default 0)"),
    ),
    responses(
        (status = 200, description = "A page of items", body = ItemList),
        (status = 404, description = "No such job", body = ErrorBody),
        (status = 422, description = "A bad query parameter; `field` names it", body = ErrorBody),
    )
)]
async fn list_items(engine: web::Data<Engine>, id: Segment, req: HttpRequest) -> Reply {
    let id = id.into_inner();
    let q = Query::parse(&req, &["status", "limit", "offset"])?;
    let limit = q.number("limit", 100, 1, MAX_PAGE)? as u32;
    let offset = q.number("offset", 0, 0, i64::MAX as u64)?;
    let msg = ListItems {
        job_id: id.clone(),
        status: q.status::<ItemStatus>("status")?,
        limit,
        offset,
    };
    let Some(page) = engine.supervisor().send(msg).await.map_err(mailbox)?? else {
        return Err(ApiError::NotFound(format!("job '{id}' not found")));
    };
    Ok(HttpResponse::Ok().json(ItemList {
        job_id: id,
        items: page.items.into_iter().map(ItemResponse::from).collect(),
        total: page.total,
        limit,
        offset,
    }))
}

/// Items per page of the JSONL export: memory stays bounded by one page, whatever the job.
const EXPORT_PAGE: u32 = 1000;

async fn read_results(
    engine: &Engine,
    job_id: &str,
    after: i32,
) -> Result<Option<Vec<ResultRow>>, ApiError> {
    let msg = ReadResults {
        job_id: job_id.to_string(),
        after,
        limit: EXPORT_PAGE,
    };
    Ok(engine.supervisor().send(msg).await.map_err(mailbox)??)
}

/// One JSONL line per item, with the stored result spliced in as it is (not re-parsed).
fn push_result_line(out: &mut String, (idx, key, status, result, error): &ResultRow) {
    let key = serde_json::Value::from(key.as_str());
    let error = serde_json::Value::from(error.as_deref());
    out.push_str(&format!(
        r#"{{"custom_id":{key},"index":{idx},"status":"{status}","result":{},"error":{error}}}"#,
        result.as_deref().unwrap_or("null")
    ));
    out.push('\n');
}

/// `GET /batch/jobs/{id}/results.jsonl`: every item's result, one line each in submission
/// order, streamed a page at a time.
#[utoipa::path(
    get, path = "/batch/jobs/{id}/results.jsonl", tag = "jobs",
    description = "Every item's result, one JSON object a line (`ResultLine`), in submission order, streamed a page at a time. A page that cannot be read mid-stream (a damaged database, a lost connection) ends the stream with one line `{\"error\": \"…\"}` (no `custom_id`) and then aborts the chunked body without its terminating chunk: a client must treat either as a failed export, never as a short one.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "One `ResultLine` per item", content_type = "application/x-ndjson", body = String,
         example = json!("{\"custom_id\":\"a\",\"index\":0,\"status\":\"succeeded\",\"result\":{\"exit_code\":0},\"error\":null}\n")),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
async fn results_jsonl(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    let Some(first) = read_results(&engine, &id, -1).await? else {
        return Err(ApiError::NotFound(format!("job '{id}' not found")));
    };
    let engine = engine.into_inner();
    let pages = futures_util::stream::unfold(Export::Page(first), move |state| {
        let engine = engine.clone();
        let id = id.clone();
        async move {
            let page = match state {
                Export::Page(page) => page,
                Export::Failed(why) => {
                    log::error!("results.jsonl of {id} stopped: {why}");
                    // A last line a line reader can tell from a result (no `custom_id`)...
                    let line = format!("{}\n", json!({ "error": why }));
                    return Some((Ok(Bytes::from(line)), Export::Abort(why)));
                }
                // ...then the body is aborted: no terminating chunk, so a client reading
                // the transfer sees it break instead of a short export that looks whole.
                Export::Abort(why) => {
                    // Once pending first, so the server writes the error line out before
                    // the error drops the connection (and whatever it still buffers).
                    tokio::task::yield_now().await;
                    return Some((
                        Err(actix_web::error::ErrorInternalServerError(why)),
                        Export::Done,
                    ));
                }
                Export::Done => return None,
            };
            if page.is_empty() {
                return None;
            }
            let mut chunk = String::with_capacity(page.len() * 128);
            for row in &page {
                push_result_line(&mut chunk, row);
            }
            let next = if page.len() < EXPORT_PAGE as usize {
                Export::Done
            } else {
                let after = page.last().map_or(-1, |r| r.0);
                match read_results(&engine, &id, after).await {
                    Ok(Some(next)) => Export::Page(next),
                    Ok(None) => Export::Failed(format!("job '{id}' vanished during the export")),
                    Err(ApiError::Internal(cause)) => Export::Failed(cause),
                    Err(e) => Export::Failed(e.to_string()),
                }
            };
            Some((Ok::<_, actix_web::Error>(Bytes::from(chunk)), next))
        }
    });
    Ok(HttpResponse::Ok()
        .content_type("application/x-ndjson")
        .streaming(pages))
}

/// Where a `results.jsonl` export stands between two chunks.
enum Export {
    /// A page read, to send next.
    Page(Vec<ResultRow>),
    /// A page could not be read: the error line goes next.
    Failed(String),
    /// The error line went: the body is aborted next.
    Abort(String),
    /// Nothing more to send.
    Done,
}

/// How long an event stream may stay silent before a keep-alive comment goes out.
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// One Server-Sent Event.
fn sse(id: Option<u64>, event: &str, data: &serde_json::Value) -> Bytes {
    let id = id.map(|i| format!("id: {i}\n")).unwrap_or_default();
    Bytes::from(format!("{id}event: {event}\ndata: {data}\n\n"))
}

/// The SSE form of a Tracker event; `None` for a job's end, which the caller renders.
fn tracker_sse(e: &TrackerEvent) -> Option<Bytes> {
    let job_id = e.job_id.as_ref();
    match &e.kind {
        TrackerEventKind::Progress(p) => Some(sse(
            Some(e.id),
            "progress",
            &json!({"job_id": job_id, "progress": p}),
        )),
        TrackerEventKind::Item { index, key, status } => Some(sse(
            Some(e.id),
            "item",
            &json!({"job_id": job_id, "index": index, "id": key, "status": status}),
        )),
        TrackerEventKind::End => None,
    }
}

fn sse_response<S>(stream: S) -> HttpResponse
where
    S: futures_util::Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
{
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("cache-control", "no-cache"))
        .streaming(stream)
}

/// What a job's event stream still has to send.
struct JobStream {
    rx: tokio::sync::mpsc::Receiver<TrackerEvent>,
    first: Option<Bytes>,
    ended: bool,
}

/// `GET /batch/jobs/{id}/events`: the job's state now, then coalesced progress, one event
/// per finished item, and the final job (`end`), after which the stream closes. A client
/// that reconnects (with or without `Last-Event-ID`) after the end gets the final job at
/// once: the end is read from the store, never only from memory.
#[utoipa::path(
    get, path = "/batch/jobs/{id}/events", tag = "events",
    description = "Server-Sent Events: `state` (the job now), `progress` (a `Progress` snapshot, at most ~10 a second), `item` (one per finished item: `{job_id, index, id, status}`) and `end` (the final job), after which the stream closes. Reconnecting after the end gets `end` at once.",
    params(("id" = String, Path, description = "The job id", example = "batch_validation-3f2a9c1d8e7b")),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 404, description = "No such job", body = ErrorBody),
    )
)]
async fn job_events(engine: web::Data<Engine>, id: Segment) -> Reply {
    let id = id.into_inner();
    // Subscribe before reading the job, so an end that happens in between is not missed.
    let rx = engine
        .supervisor()
        .send(Subscribe {
            job_id: Some(id.clone()),
        })
        .await
        .map_err(mailbox)?;
    let Some(view) = engine.job(&id).await? else {
        return Err(ApiError::NotFound(format!("job '{id}' not found")));
    };
    let ended = view.record.status.is_terminal();
    let first = serde_json::to_value(JobResponse::from(view)).unwrap_or_default();
    let first = sse(None, if ended { "end" } else { "state" }, &first);
    let engine = engine.into_inner();
    let state = JobStream {
        rx,
        first: Some(first),
        ended,
    };
    let events = futures_util::stream::unfold(state, move |mut st| {
        let engine = engine.clone();
        let id = id.clone();
        async move {
            if let Some(first) = st.first.take() {
                return Some((Ok(first), st));
            }
            if st.ended {
                return None;
            }
            let event = match tokio::time::timeout(KEEP_ALIVE, st.rx.recv()).await {
                Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st)),
                Ok(None) => return None,
                Ok(Some(e)) => e,
            };
            if let Some(bytes) = tracker_sse(&event) {
                return Some((Ok(bytes), st));
            }
            st.ended = true;
            let last = match engine.job(&id).await {
                Ok(Some(view)) => serde_json::to_value(JobResponse::from(view)).unwrap_or_default(),
                Ok(None) => json!({"job_id": id, "detail": "the job is gone"}),
                Err(e) => json!({"job_id": id, "detail": e.to_string()}),
            };
            Some((Ok(sse(Some(event.id), "end", &last)), st))
        }
    });
    Ok(sse_response(events))
}

/// `GET /batch/events`: progress, item and end events of every job, until the client
/// disconnects.
#[utoipa::path(
    get, path = "/batch/events", tag = "events",
    description = "Server-Sent Events of every job: `progress`, `item` and `end` (`{job_id}`), until the client disconnects.",
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
    )
)]
async fn all_events(engine: web::Data<Engine>) -> Reply {
    let rx = engine
        .supervisor()
        .send(Subscribe { job_id: None })
        .await
        .map_err(mailbox)?;
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match tokio::time::timeout(KEEP_ALIVE, rx.recv()).await {
            Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), rx)),
            Ok(None) => return None,
            Ok(Some(e)) => e,
        };
        let bytes = tracker_sse(&event).unwrap_or_else(|| {
            sse(
                Some(event.id),
                "end",
                &json!({"job_id": event.job_id.as_ref()}),
            )
        });
        Some((Ok::<_, actix_web::Error>(bytes), rx))
    });
    Ok(sse_response(events))
}

#[utoipa::path(
    get, path = "/batch/stats", tag = "jobs",
    description = "Jobs per status.",
    responses((status = 200, description = "Queue statistics", body = StatsResponse))
)]
async fn stats(engine: web::Data<Engine>) -> Reply {
    let stats = engine.stats().await?;
    Ok(HttpResponse::Ok().json(StatsResponse { stats }))
}

#[utoipa::path(
    get, path = "/metrics", tag = "operations",
    description = "Prometheus text format: jobs by status, queue depth, running items per kind against their limit, items finished per kind, item duration and store commit latency histograms.",
    responses(
        (status = 200, description = "Metrics", content_type = "text/plain; version=0.0.4", body = String),
        (status = 503, description = "The engine does not answer", body = ErrorBody),
    )
)]
async fn metrics(engine: web::Data<Engine>) -> Reply {
    let text = engine
        .supervisor()
        .send(GetMetrics)
        .await
        .map_err(mailbox)??;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

#[utoipa::path(
    get, path = "/health", tag = "operations",
    description = "Whether the engine and its database answer.",
    responses(
        (status = 200, description = "Healthy", body = HealthResponse),
        (status = 503, description = "The engine does not answer (`detail`), or its storage is failing: `status` is `degraded` and `reason` names the cause", body = HealthResponse),
    )
)]
async fn health(engine: web::Data<Engine>) -> Reply {
    engine.supervisor().send(Ping).await.map_err(mailbox)??;
    // A storage fault (disk full, unwritable files, unreachable server) seen on the last
    // write: probes get 503 until a write succeeds again.
    if let Some(fault) = engine.storage_fault() {
        return Ok(HttpResponse::ServiceUnavailable().json(HealthResponse {
            status: "degraded".into(),
            reason: Some(fault.detail),
            version: env!("CARGO_PKG_VERSION").into(),
            node_id: engine.node_id().to_string(),
            sandbox: engine.sandbox_mode().into(),
        }));
    }
    Ok(HttpResponse::Ok().json(HealthResponse {
        status: "ok".into(),
        reason: None,
        version: env!("CARGO_PKG_VERSION").into(),
        node_id: engine.node_id().to_string(),
        sandbox: engine.sandbox_mode().into(),
    }))
}

/// The JSON 404 for paths no route matches; `App::default_service` takes it.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    HttpResponse::NotFound().json(error::ErrorBody::new(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

fn mailbox(e: actix::MailboxError) -> ApiError {
    ApiError::from(crate::queue::messages::EngineError::from(e))
}
