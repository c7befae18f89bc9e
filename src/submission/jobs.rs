//! Typed request bodies checked and turned into a [`NewJob`]: items, `parallel`,
//! metadata, the scheduling fields; the rest of the body becomes the job's options.

use super::body::json_type;
use super::fields::{check_fields, check_text, kind_options, nul_at, Known};
use super::requests::{
    AgentTasksRequest, GenericJobRequest, LlmBatchRequest, McpRequest, PathTarget, RetryRequest,
};
use super::{SubmissionError, MAX_ITEMS, MAX_PARALLEL};
use crate::model::{ItemStatus, JobSchedule, NewItem, NewJob, PRIORITY_RANGE};
use serde_json::{Map, Value};

/// How the idempotency keys of cron schedules' ticks start; submissions may not use it.
pub const TICK_KEY_PREFIX: &str = "schedule:";

/// Checks `parallel`, defaulting it.
pub fn check_parallel(parallel: Option<i64>, default: i64) -> Result<u32, SubmissionError> {
    let p = parallel.unwrap_or(default);
    if !(1..=MAX_PARALLEL).contains(&p) {
        return Err(SubmissionError::invalid(
            "parallel",
            format!("must be between 1 and {MAX_PARALLEL}, got {p}"),
        ));
    }
    Ok(p as u32)
}

fn check_count(field: &str, n: usize, noun: &str) -> Result<(), SubmissionError> {
    if n == 0 {
        return Err(SubmissionError::invalid(
            field,
            format!("must contain at least one {noun}"),
        ));
    }
    if n > MAX_ITEMS {
        return Err(SubmissionError::invalid(
            field,
            format!("has {n} entries; at most {MAX_ITEMS} fit in one job"),
        ));
    }
    Ok(())
}

fn check_metadata(metadata: Option<Value>) -> Result<Value, SubmissionError> {
    match metadata {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(m @ Value::Object(_)) => match nul_at(&m, "metadata") {
            Some(field) => Err(SubmissionError::invalid(
                field,
                "NUL characters (\\u0000) are not allowed in metadata",
            )),
            None => Ok(m),
        },
        Some(other) => Err(SubmissionError::invalid(
            "metadata",
            format!("must be an object, got {}", json_type(&other)),
        )),
    }
}

/// The job: its options are the body without its items, metadata and scheduling fields,
/// with `parallel` settled.
fn build_job(
    kind: String,
    mut raw: Map<String, Value>,
    items_field: &str,
    parallel: u32,
    metadata: Value,
    items: Vec<NewItem>,
) -> Result<NewJob, SubmissionError> {
    let schedule = take_schedule(&mut raw)?;
    // Kept in the options: the webhook outbox reads it from there when the job finishes.
    if let Some(url) = raw.get(crate::services::webhooks::CALLBACK_URL_FIELD) {
        crate::services::webhooks::check_callback_url(url).map_err(|m| {
            SubmissionError::invalid(crate::services::webhooks::CALLBACK_URL_FIELD, m)
        })?;
    }
    raw.remove(items_field);
    raw.remove("metadata");
    raw.insert("parallel".into(), parallel.into());
    Ok(NewJob {
        kind,
        spec: Value::Object(raw),
        parallel,
        metadata,
        items,
        schedule,
    })
}

/// The statuses a retry asks for, checked.
pub fn retry_statuses(req: RetryRequest) -> Result<Vec<ItemStatus>, SubmissionError> {
    const RETRYABLE: [ItemStatus; 3] = [
        ItemStatus::Failed,
        ItemStatus::Cancelled,
        ItemStatus::Skipped,
    ];
    let names: Vec<Value> = match req.status {
        None | Some(Value::Null) => return Ok(vec![ItemStatus::Failed]),
        Some(Value::String(s)) => vec![Value::String(s)],
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(other) => {
            return Err(SubmissionError::invalid(
                "status",
                format!("must be a status or a non-empty list of them, got {other}"),
            ))
        }
    };
    let mut out = Vec::new();
    for (i, v) in names.iter().enumerate() {
        let status = v
            .as_str()
            .and_then(|s| s.parse::<ItemStatus>().ok())
            .filter(|s| RETRYABLE.contains(s))
            .ok_or_else(|| {
                SubmissionError::invalid(
                    format!("status[{i}]"),
                    format!("expected failed, cancelled or skipped, got {v}"),
                )
            })?;
        if !out.contains(&status) {
            out.push(status);
        }
    }
    Ok(out)
}

/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Takes `priority`, `run_at` and `idempotency_key` out of the body, checked.
pub fn take_schedule(raw: &mut Map<String, Value>) -> Result<JobSchedule, SubmissionError> {
    let mut schedule = JobSchedule::default();
    match raw.remove("priority") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let (lo, hi) = (*PRIORITY_RANGE.start(), *PRIORITY_RANGE.end());
            schedule.priority = v
                .as_i64()
                .filter(|p| (i64::from(lo)..=i64::from(hi)).contains(p))
                .ok_or_else(|| {
                    SubmissionError::invalid(
                        "priority",
                        format!("must be an integer between {lo} and {hi}, got {v}"),
                    )
                })? as i32;
        }
    }
    match raw.remove("run_at") {
        None | Some(Value::Null) => {}
        Some(v) => schedule.run_at = Some(parse_run_at(&v)?),
    }
    match raw.remove("idempotency_key") {
        None | Some(Value::Null) => {}
        Some(Value::String(k)) if k.contains('\0') => {
            return Err(SubmissionError::invalid(
                "idempotency_key",
                "NUL characters (\\u0000) are not allowed in an idempotency key",
            ))
        }
        Some(Value::String(k)) if k.starts_with(TICK_KEY_PREFIX) => {
            return Err(SubmissionError::invalid(
                "idempotency_key",
                format!(
                    "keys starting with '{}' are reserved for the jobs of cron schedules",
                    TICK_KEY_PREFIX
                ),
            ))
        }
        Some(Value::String(k)) if !k.trim().is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => {
            schedule.idempotency_key = Some(k)
        }
        Some(v) => {
            return Err(SubmissionError::invalid(
                "idempotency_key",
                format!(
                    "must be a non-empty string of at most {MAX_IDEMPOTENCY_KEY} bytes, got {v}"
                ),
            ))
        }
    }
    Ok(schedule)
}

/// `run_at`: an RFC 3339 timestamp (`2026-11-26T18:00:00Z`, any offset) or Unix seconds.
pub fn parse_run_at(v: &Value) -> Result<f64, SubmissionError> {
    let bad = || {
        SubmissionError::invalid(
            "run_at",
            format!(
                "cannot read {v} as a time: expected an RFC 3339 timestamp such as \
                 \"2026-11-26T18:00:00Z\" or Unix seconds"
            ),
        )
    };
    crate::model::parse_timestamp(v).ok_or_else(bad)
}

/// Merges the `Idempotency-Key` header into the body's `idempotency_key`; both given and
/// different is an error.
pub fn merge_idempotency_header(
    header: Option<&str>,
    raw: &mut Map<String, Value>,
) -> Result<(), SubmissionError> {
    let Some(key) = header else {
        return Ok(());
    };
    match raw.get("idempotency_key") {
        None | Some(Value::Null) => {
            raw.insert("idempotency_key".into(), Value::String(key.to_string()));
            Ok(())
        }
        Some(Value::String(k)) if k == key => Ok(()),
        Some(_) => Err(SubmissionError::invalid(
            "idempotency_key",
            "differs from the Idempotency-Key header; send one or make them equal",
        )),
    }
}

fn non_empty(field: String, value: &str) -> Result<(), SubmissionError> {
    if value.trim().is_empty() {
        return Err(SubmissionError::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// The `id` (string or number) of an item given as JSON text, when it is an object with
/// one; read without building the item's `Value`.
fn item_id(payload: &serde_json::value::RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<Value>,
    }
    if !payload.get().starts_with('{') {
        return None;
    }
    match serde_json::from_str::<Id>(payload.get()).ok()?.id? {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Builds a path-target job (`batch_validation`, `batch_tests`).
pub fn path_job(
    kind: &str,
    items_field: &str,
    targets: Vec<PathTarget>,
    parallel: Option<i64>,
    metadata: Option<Value>,
    raw: Map<String, Value>,
) -> Result<NewJob, SubmissionError> {
    let options = kind_options(kind).unwrap_or_default();
    check_fields(&raw, Known::Exactly(&[items_field], options))?;
    check_count(items_field, targets.len(), "entry")?;
    let parallel = check_parallel(parallel, 5)?;
    let metadata = check_metadata(metadata)?;
    let mut items = Vec::with_capacity(targets.len());
    for (i, t) in targets.into_iter().enumerate() {
        non_empty(format!("{items_field}[{i}].id"), &t.id)?;
        non_empty(format!("{items_field}[{i}].path"), &t.path)?;
        let payload = serde_json::json!({"id": t.id, "path": t.path});
        items.push(NewItem::new(t.id, payload));
    }
    build_job(
        kind.to_string(),
        raw,
        items_field,
        parallel,
        metadata,
        items,
    )
}

/// Builds a `batch_agent_tasks` job.
pub fn agent_job(
    req: AgentTasksRequest,
    raw: Map<String, Value>,
) -> Result<NewJob, SubmissionError> {
    check_fields(
        &raw,
        Known::Exactly(&["tasks"], super::fields::AGENT_OPTIONS),
    )?;
    check_count("tasks", req.tasks.len(), "task")?;
    let parallel = check_parallel(req.parallel, 3)?;
    let metadata = check_metadata(req.metadata)?;
    let mut items = Vec::with_capacity(req.tasks.len());
    for (i, t) in req.tasks.into_iter().enumerate() {
        non_empty(format!("tasks[{i}].id"), &t.id)?;
        non_empty(format!("tasks[{i}].description"), &t.description)?;
        let payload = serde_json::json!({"id": t.id, "description": t.description});
        items.push(NewItem::new(t.id, payload));
    }
    build_job(
        "batch_agent_tasks".into(),
        raw,
        "tasks",
        parallel,
        metadata,
        items,
    )
}

/// Builds a `batch_llm` job: each request's payload is `{custom_id, body}`; a body is
/// checked (`model`, `messages`) naming the request (`requests[3].body.model`).
pub fn llm_job(req: LlmBatchRequest, raw: Map<String, Value>) -> Result<NewJob, SubmissionError> {
    check_fields(
        &raw,
        Known::Exactly(&["requests"], super::fields::LLM_OPTIONS),
    )?;
    check_count("requests", req.requests.len(), "request")?;
    let parallel = check_parallel(req.parallel, 8)?;
    let metadata = check_metadata(req.metadata)?;
    let mut items = Vec::with_capacity(req.requests.len());
    let mut seen = std::collections::HashSet::new();
    for (i, r) in req.requests.into_iter().enumerate() {
        non_empty(format!("requests[{i}].custom_id"), &r.custom_id)?;
        if !seen.insert(r.custom_id.clone()) {
            return Err(SubmissionError::invalid(
                format!("requests[{i}].custom_id"),
                format!(
                    "'{}' is used by an earlier request; custom_ids must be unique",
                    r.custom_id
                ),
            ));
        }
        if let Some(m) = r.method.as_deref().filter(|m| *m != "POST") {
            return Err(SubmissionError::invalid(
                format!("requests[{i}].method"),
                format!("must be POST, got '{m}'"),
            ));
        }
        if let Some(u) = r.url.as_deref().filter(|u| *u != "/v1/chat/completions") {
            return Err(SubmissionError::invalid(
                format!("requests[{i}].url"),
                format!("only /v1/chat/completions is supported, got '{u}'"),
            ));
        }
        crate::processors::llm_batch::check_body(&r.body).map_err(|e| {
            let field = match e.field.as_str() {
                "" => format!("requests[{i}].body"),
                f => format!("requests[{i}].body.{f}"),
            };
            SubmissionError::invalid(field, e.message)
        })?;
        if let Some(field) = nul_at(&r.body, &format!("requests[{i}].body")) {
            return Err(SubmissionError::invalid(
                field,
                "NUL characters (\\u0000) are not allowed here",
            ));
        }
        let payload = serde_json::json!({"custom_id": r.custom_id, "body": r.body});
        items.push(NewItem::new(r.custom_id, payload));
    }
    build_job(
        crate::processors::llm_batch::KIND.into(),
        raw,
        "requests",
        parallel,
        metadata,
        items,
    )
}

/// Operation types the MCP endpoint knows.
pub const MCP_OPERATIONS: [&str; 5] = ["read", "write", "list", "command", "call"];

/// Builds a `batch_mcp` job; each operation's whole object is its payload.
pub fn mcp_job(req: McpRequest, mut raw: Map<String, Value>) -> Result<NewJob, SubmissionError> {
    check_fields(
        &raw,
        Known::Exactly(&["operations"], super::fields::MCP_OPTIONS),
    )?;
    check_count("operations", req.operations.len(), "operation")?;
    let parallel = check_parallel(req.parallel, 5)?;
    let metadata = check_metadata(req.metadata)?;
    let payloads = match raw.remove("operations") {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    };
    let mut items = Vec::with_capacity(payloads.len());
    for (i, (op, payload)) in req.operations.iter().zip(payloads).enumerate() {
        if !MCP_OPERATIONS.contains(&op.op.as_str()) {
            return Err(SubmissionError::invalid(
                format!("operations[{i}].type"),
                format!(
                    "unknown operation '{}' (expected one of {})",
                    op.op,
                    MCP_OPERATIONS.join(", ")
                ),
            ));
        }
        // The fields each operation type needs (`path`, `content`, `command`, `tool`).
        crate::mcp::ops::Operation::parse(&payload).map_err(|e| match e.field.as_str() {
            "" => SubmissionError::invalid(format!("operations[{i}]"), e.message),
            field => SubmissionError::invalid(format!("operations[{i}].{field}"), e.message),
        })?;
        items.push(NewItem::new(
            op.id.clone().unwrap_or_else(|| i.to_string()),
            payload,
        ));
    }
    build_job(
        "batch_mcp".into(),
        raw,
        "operations",
        parallel,
        metadata,
        items,
    )
}

/// Builds a job of any kind from `POST /batch/jobs`.
pub fn generic_job(
    req: GenericJobRequest,
    raw: Map<String, Value>,
) -> Result<NewJob, SubmissionError> {
    non_empty("type".into(), &req.kind)?;
    check_text("type", &req.kind)?;
    let own = ["type", "items"];
    match kind_options(&req.kind) {
        Some(options) => check_fields(&raw, Known::Exactly(&own, options))?,
        None => check_fields(&raw, Known::Open(&own))?,
    }
    check_count("items", req.items.len(), "item")?;
    let parallel = check_parallel(req.parallel, 5)?;
    let metadata = check_metadata(req.metadata)?;
    let items = req
        .items
        .into_iter()
        .enumerate()
        .map(|(i, payload)| {
            let key = item_id(&payload).unwrap_or_else(|| i.to_string());
            NewItem::raw(key, payload)
        })
        .collect();
    let mut raw = raw;
    raw.remove("type");
    build_job(req.kind, raw, "items", parallel, metadata, items)
}
