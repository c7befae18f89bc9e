//! The submission endpoints: a body (JSON or JSONL) and the `Idempotency-Key` header
//! turned into a job by [`crate::submission`], then handed to the engine.

use super::error::{ApiError, ErrorBody};
use super::extract::Body;
use super::responses::JobResponse;
use super::Reply;
use crate::engine::Engine;
use crate::queue::messages::EngineError;
use crate::submission::*;
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};

async fn submit(engine: &Engine, job: crate::model::NewJob) -> Reply {
    let big = job.items.len() >= BIG_SUBMISSION;
    let answer = engine.submit(job).await;
    give_back(big);
    job_reply(answer?)
}

/// Items from which a submission's parse is worth handing back to the system after it.
const BIG_SUBMISSION: usize = 10_000;

/// After a big submission: its body, value tree and rows are dropped by now, but glibc
/// keeps freed memory in its arenas (a 1M-item submission left >1 GB resident), so
/// `malloc_trim` returns it (issue 18). Off the event loop: trimming large heaps takes time.
fn give_back(big: bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if big {
        actix_web::rt::task::spawn_blocking(|| {
            // SAFETY: malloc_trim only releases free memory of the allocator's own heaps.
            unsafe { libc::malloc_trim(0) };
        });
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = big;
}

/// A submission's answer: the job, marked `Idempotent-Replayed: true` when its
/// idempotency key returned a job created before.
fn job_reply(view: crate::queue::messages::JobView) -> Reply {
    let mut reply = HttpResponse::Ok();
    if view.replayed {
        reply.insert_header(("idempotent-replayed", "true"));
    }
    Ok(reply.json(JobResponse::from(view)))
}

/// The body as JSON: a JSONL submission (`application/x-ndjson` or `application/jsonl`)
/// is turned into the equivalent JSON object first.
fn json_body(req: &HttpRequest, body: Bytes, items_field: &str) -> Result<Bytes, ApiError> {
    let content_type = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if matches!(
        essence,
        "application/x-ndjson" | "application/jsonl" | "application/jsonlines"
    ) {
        return Ok(ndjson_body(&body, items_field, req.query_string())?.into());
    }
    Ok(body)
}

#[utoipa::path(
    post, path = "/batch/validation", tag = "submit",
    description = "Runs `check_command` on every target. Also accepts `application/x-ndjson`: one item a line (with its own `custom_id`), options in the query string.",
    request_body(content(
        (ValidationRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"custom_id\":\"a\",\"path\":\"src/a.py\"}\n"))
    )),
    responses(
        (status = 200, description = "The job, stored and queued", body = JobResponse),
        (status = 400, description = "The body is not JSON (or a JSONL line is not)", body = ErrorBody),
        (status = 409, description = "The idempotency key belongs to a job of another kind", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (256 MiB)", body = ErrorBody),
        (status = 422, description = "A field is wrong or unknown; `field` names it", body = ErrorBody),
        (status = 501, description = "The endpoint's processor is not part of this engine", body = ErrorBody),
        (status = 503, description = "The engine is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn submit_validation(
    engine: web::Data<Engine>,
    req: HttpRequest,
    Body(body): Body,
) -> Reply {
    let (req, raw) = submission_with_items::<ValidationRequest>(&req, body, "targets")?;
    let job = path_job(
        "batch_validation",
        "targets",
        req.targets,
        req.parallel,
        req.metadata,
        raw,
    )?;
    submit(&engine, job).await
}

#[utoipa::path(
    post, path = "/batch/tests", tag = "submit",
    description = "Runs `test_command` on every module. Also accepts `application/x-ndjson`: one item a line (with its own `custom_id`), options in the query string.",
    request_body(content(
        (TestsRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"custom_id\":\"core\",\"path\":\"tests/test_core.py\"}\n"))
    )),
    responses(
        (status = 200, description = "The job, stored and queued", body = JobResponse),
        (status = 400, description = "The body is not JSON (or a JSONL line is not)", body = ErrorBody),
        (status = 409, description = "The idempotency key belongs to a job of another kind", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (256 MiB)", body = ErrorBody),
        (status = 422, description = "A field is wrong or unknown; `field` names it", body = ErrorBody),
        (status = 501, description = "The endpoint's processor is not part of this engine", body = ErrorBody),
        (status = 503, description = "The engine is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn submit_tests(
    engine: web::Data<Engine>,
    req: HttpRequest,
    Body(body): Body,
) -> Reply {
    let (req, raw) = submission_with_items::<TestsRequest>(&req, body, "modules")?;
    let job = path_job(
        "batch_tests",
        "modules",
        req.modules,
        req.parallel,
        req.metadata,
        raw,
    )?;
    submit(&engine, job).await
}

#[utoipa::path(
    post, path = "/batch/agent-tasks", tag = "submit",
    description = "Runs every task through the coding agent. Also accepts `application/x-ndjson`: one item a line (with its own `custom_id`), options in the query string.",
    request_body(content(
        (AgentTasksRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"custom_id\":\"t1\",\"description\":\"Add a --verbose flag to cli.py\"}\n"))
    )),
    responses(
        (status = 200, description = "The job, stored and queued", body = JobResponse),
        (status = 400, description = "The body is not JSON (or a JSONL line is not)", body = ErrorBody),
        (status = 409, description = "The idempotency key belongs to a job of another kind", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (256 MiB)", body = ErrorBody),
        (status = 422, description = "A field is wrong or unknown; `field` names it", body = ErrorBody),
        (status = 501, description = "The endpoint's processor is not part of this engine", body = ErrorBody),
        (status = 503, description = "The engine is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn submit_agent_tasks(
    engine: web::Data<Engine>,
    req: HttpRequest,
    Body(body): Body,
) -> Reply {
    let (req, raw) = submission_with_items(&req, body, "tasks")?;
    submit(&engine, agent_job(req, raw)?).await
}

#[utoipa::path(
    post, path = "/batch/mcp-operations", tag = "submit",
    description = "Runs every operation through an MCP server. Also accepts `application/x-ndjson`: one item a line (with its own `custom_id`), options in the query string.",
    request_body(content(
        (McpRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"custom_id\":\"r1\",\"type\":\"read\",\"path\":\"README.md\"}\n"))
    )),
    responses(
        (status = 200, description = "The job, stored and queued", body = JobResponse),
        (status = 400, description = "The body is not JSON (or a JSONL line is not)", body = ErrorBody),
        (status = 409, description = "The idempotency key belongs to a job of another kind", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (256 MiB)", body = ErrorBody),
        (status = 422, description = "A field is wrong or unknown; `field` names it", body = ErrorBody),
        (status = 501, description = "The endpoint's processor is not part of this engine", body = ErrorBody),
        (status = 503, description = "The engine is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn submit_mcp(
    engine: web::Data<Engine>,
    req: HttpRequest,
    Body(body): Body,
) -> Reply {
    let (req, raw) = submission(&req, body, "operations")?;
    submit(&engine, mcp_job(req, raw)?).await
}

#[utoipa::path(
    post, path = "/batch/llm", tag = "submit",
    description = "One chat completion per request (`batch_llm`). Also accepts `application/x-ndjson`: one request a line (`{custom_id, body}`, OpenAI Batch API lines as they are), options in the query string.",
    request_body(content(
        (LlmBatchRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"custom_id\":\"q1\",\"body\":{\"model\":\"llama3.2\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}}\n"))
    )),
    responses(
        (status = 200, description = "The job, stored and queued", body = JobResponse),
        (status = 400, description = "The body is not JSON (or a JSONL line is not)", body = ErrorBody),
        (status = 409, description = "The idempotency key belongs to a job of another kind", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (256 MiB)", body = ErrorBody),
        (status = 422, description = "A field is wrong or unknown; `field` names it", body = ErrorBody),
        (status = 501, description = "The endpoint's processor is not part of this engine", body = ErrorBody),
        (status = 503, description = "The engine is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn submit_llm(
    engine: web::Data<Engine>,
    req: HttpRequest,
    Body(body): Body,
) -> Reply {
    let (req, raw) = submission_with_items(&req, body, "requests")?;
    submit(&engine, llm_job(req, raw)?).await
}

#[utoipa::path(
    post, path = "/batch/jobs", tag = "submit",
    description = "A job of any registered kind (an embedder's own processors). Also accepts `application/x-ndjson`: one item a line (with its own `custom_id`), options in the query string.",
    request_body(content(
        (GenericJobRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"custom_id\":\"1\",\"n\":1}\n"))
    )),
    responses(
        (status = 200, description = "The job, stored and queued", body = JobResponse),
        (status = 400, description = "The body is not JSON (or a JSONL line is not)", body = ErrorBody),
        (status = 409, description = "The idempotency key belongs to a job of another kind", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit (256 MiB)", body = ErrorBody),
        (status = 422, description = "A field is wrong or unknown; `field` names it", body = ErrorBody),
        (status = 503, description = "The engine is shutting down", body = ErrorBody),
    )
)]
pub(super) async fn submit_generic(
    engine: web::Data<Engine>,
    req: HttpRequest,
    Body(body): Body,
) -> Reply {
    let (req, raw) = submission_with_items(&req, body, "items")?;
    let job = generic_job(req, raw)?;
    let big = job.items.len() >= BIG_SUBMISSION;
    let answer = engine.submit(job).await;
    give_back(big);
    match answer {
        // The kind is the caller's choice here, so an unknown one is a bad `type`, not a
        // missing feature of the server.
        Err(EngineError::NoProcessor(kind)) => Err(ApiError::invalid(
            "type",
            format!("no processor of kind '{kind}' is registered in this engine"),
        )),
        other => job_reply(other?),
    }
}

/// A submission's body, parsed: JSON or JSONL (whose items go under `items_field`), with
/// the `Idempotency-Key` header merged into its `idempotency_key`. Only MCP uses it now:
/// its items' payloads are taken whole from the raw object.
fn submission<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: Bytes,
    items_field: &str,
) -> Result<(T, serde_json::Map<String, serde_json::Value>), ApiError> {
    parsed_submission(req, body, items_field, parse_body)
}

/// Like [`submission`], but the typed request is read straight from the body text
/// ([`parse_items_body`]): no `Value` tree of the items is built, and the raw object
/// comes without them.
fn submission_with_items<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    body: Bytes,
    items_field: &str,
) -> Result<(T, serde_json::Map<String, serde_json::Value>), ApiError> {
    parsed_submission(req, body, items_field, |b| parse_items_body(b, items_field))
}

/// [`submission`] with the JSON parser `parse`.
fn parsed_submission<T>(
    req: &HttpRequest,
    body: Bytes,
    items_field: &str,
    parse: impl FnOnce(
        &[u8],
    ) -> Result<(T, serde_json::Map<String, serde_json::Value>), SubmissionError>,
) -> Result<(T, serde_json::Map<String, serde_json::Value>), ApiError> {
    let key = idempotency_header(req)?;
    let body = json_body(req, body, items_field)?;
    let (parsed, mut raw) = parse(&body)?;
    merge_idempotency_header(key.as_deref(), &mut raw)?;
    Ok((parsed, raw))
}

/// The `Idempotency-Key` header, if sent.
fn idempotency_header(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    req.headers()
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::invalid("Idempotency-Key", "the header must be visible ASCII")
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bad body's answer, as the API maps it.
    fn err(body: &str) -> ApiError {
        parse_body::<ValidationRequest>(body.as_bytes())
            .unwrap_err()
            .into()
    }

    #[test]
    fn bad_bodies_name_their_field() {
        assert!(matches!(err("{"), ApiError::MalformedJson(_)));
        assert!(matches!(err(""), ApiError::MalformedJson(_)));
        match err("{}") {
            ApiError::Invalid { field, .. } => assert_eq!(field, "targets"),
            other => panic!("{other:?}"),
        }
        match err(r#"{"targets":[{"id":1,"path":"a"}]}"#) {
            ApiError::Invalid { field, .. } => assert_eq!(field, "targets[0].id"),
            other => panic!("{other:?}"),
        }
        match err(r#"{"targets":[{"id":"a"}]}"#) {
            ApiError::Invalid { field, .. } => assert_eq!(field, "targets[0].path"),
            other => panic!("{other:?}"),
        }
        match err("[1]") {
            ApiError::Invalid { field, message } => {
                assert_eq!(field, "body");
                assert!(message.contains("array"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parallel_is_bounded() {
        assert_eq!(check_parallel(None, 5).unwrap(), 5);
        assert!(check_parallel(Some(0), 5).is_err());
        assert!(check_parallel(Some(MAX_PARALLEL + 1), 5).is_err());
    }
}
