//! Request bodies: parsed with the path of every bad field, then checked and turned into a
//! [`NewJob`]. Nothing reaches the engine unless it passed here.

use super::error::ApiError;
use crate::model::{ItemStatus, JobSchedule, NewItem, NewJob, PRIORITY_RANGE};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// Largest `parallel` a job may ask for.
pub const MAX_PARALLEL: i64 = 1000;
/// Most items one job may hold.
pub const MAX_ITEMS: usize = 1_000_000;
/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Parses a JSON object body into `T`, keeping the raw object for the job's options.
/// Not JSON → 400; JSON of the wrong shape → 422 naming the field.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<(T, Map<String, Value>), ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::MalformedJson(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::MalformedJson(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(object) = raw else {
        return Err(ApiError::invalid(
            "body",
            format!("expected a JSON object, got {}", json_type(&raw)),
        ));
    };
    let value = Value::Object(object);
    let typed = serde_path_to_error::deserialize(&value).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // serde reports a missing field at its parent's path; name the field itself.
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            Some(name) if path == "." => name.to_string(),
            Some(name) => format!("{path}.{name}"),
            None if path == "." => "body".to_string(),
            None => path,
        };
        ApiError::invalid(field, message)
    })?;
    let Value::Object(object) = value else {
        unreachable!("checked above")
    };
    Ok((typed, object))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Query options of a JSONL submission that are numbers; every other one is a string.
const NUMERIC_OPTIONS: [&str; 14] = [
    "parallel",
    "priority",
    "max_attempts",
    "retry_delay_seconds",
    "retry_max_delay_seconds",
    "item_timeout_seconds",
    "timeout_seconds",
    "max_output_bytes",
    "max_loops",
    "chunk_size",
    "max_steps",
    "temperature",
    "llm_timeout_seconds",
    "llm_retries",
];

/// Query options of a JSONL submission that are booleans.
const BOOLEAN_OPTIONS: [&str; 2] = ["run_on_failure", "apply_changes"];

/// Turns a JSONL submission (`application/x-ndjson`: one item a line, each with its own
/// `custom_id`, options in the query string) into the JSON body the endpoint takes, so
/// both forms go through the same checks. A bad line is refused with its line number.
pub fn ndjson_body(body: &[u8], items_field: &str, query: &str) -> Result<Vec<u8>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::MalformedJson(format!("request body is not UTF-8: {e}")))?;
    // Files written by some Windows tools start with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line)
            .map_err(|e| ApiError::MalformedJson(format!("line {}: not valid JSON: {e}", n + 1)))?;
        let Value::Object(mut item) = value else {
            return Err(ApiError::invalid(
                format!("line {}", n + 1),
                format!("expected a JSON object, got {}", json_type(&value)),
            ));
        };
        if let Some(custom_id) = item.remove("custom_id") {
            item.entry("id").or_insert(custom_id);
        }
        items.push(Value::Object(item));
    }
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::invalid("query", format!("cannot parse query string: {e}")))?;
    let mut object = Map::new();
    for (k, v) in pairs {
        let value = if k == "depends_on" {
            // A list in a query string: comma-separated job ids.
            Value::Array(
                v.split(',')
                    .map(|id| Value::String(id.trim().to_string()))
                    .collect(),
            )
        } else if BOOLEAN_OPTIONS.contains(&k.as_str()) {
            match v.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => {
                    return Err(ApiError::invalid(
                        k.clone(),
                        format!("must be true or false, got '{v}'"),
                    ))
                }
            }
        } else if NUMERIC_OPTIONS.contains(&k.as_str()) {
            serde_json::from_str::<serde_json::Number>(&v)
                .map(Value::Number)
                .map_err(|_| ApiError::invalid(k.clone(), format!("must be a number, got '{v}'")))?
        } else {
            Value::String(v)
        };
        object.insert(k, value);
    }
    object.insert(items_field.to_string(), Value::Array(items));
    Ok(Value::Object(object).to_string().into_bytes())
}

/// A target or module: the seed's `{id, path}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"id": "config", "path": "src/config.py"}))]
pub struct PathTarget {
    /// The user's id.
    #[schema(min_length = 1, pattern = "\\S")]
    pub id: String,
    /// Path inside the workspace.
    #[schema(min_length = 1, pattern = "\\S")]
    pub path: String,
}

/// `POST /batch/validation`. Every field besides the targets and metadata is kept as
/// the job's `options`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"targets": [{"id": "a", "path": "src/a.py"}, {"id": "b", "path": "src/b.py"}],
                          "check_command": "python3 -m py_compile", "parallel": 5}))]
pub struct ValidationRequest {
    /// The targets to check.
    #[schema(min_items = 1, max_items = 1000000)]
    pub targets: Vec<PathTarget>,
    /// The command run per target, split into argv (no shell) with the target's path
    /// appended; exit 0 (or 5, "no tests") passes. Default `pytest -q`.
    #[schema(value_type = Option<String>, example = "python3 -m py_compile")]
    pub check_command: Option<Value>,
    /// Seconds one item may run before its whole process group is killed (default 600,
    /// at most 86400).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400, example = 120)]
    pub timeout_seconds: Option<Value>,
    /// Bytes of stdout and of stderr kept per item; the rest is cut and `truncated` set.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 16777216, example = 65536)]
    pub max_output_bytes: Option<Value>,
    /// Per-job concurrency (default 5).
    #[schema(minimum = 1, maximum = 1000)]
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `priority`, `run_at`, `idempotency_key`.
    #[serde(flatten)]
    pub schedule: ScheduleFields,
}

/// `POST /batch/tests`. Every field besides the modules and metadata is kept as the
/// job's `options`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"modules": [{"id": "core", "path": "tests/test_core.py"}],
                          "test_command": "pytest -v", "parallel": 2}))]
pub struct TestsRequest {
    /// The modules to test.
    #[schema(min_items = 1, max_items = 1000000)]
    pub modules: Vec<PathTarget>,
    /// The command run per module, split into argv (no shell) with the module's path
    /// appended; exit 0 passes. Default `pytest -v`.
    #[schema(value_type = Option<String>, example = "pytest -v")]
    pub test_command: Option<Value>,
    /// Seconds one item may run before its whole process group is killed (default 600,
    /// at most 86400).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400, example = 120)]
    pub timeout_seconds: Option<Value>,
    /// Bytes of stdout and of stderr kept per item; the rest is cut and `truncated` set.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 16777216, example = 65536)]
    pub max_output_bytes: Option<Value>,
    /// Per-job concurrency (default 5).
    #[schema(minimum = 1, maximum = 1000)]
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `priority`, `run_at`, `idempotency_key`.
    #[serde(flatten)]
    pub schedule: ScheduleFields,
}

/// One coding task: the seed's `{id, description}`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AgentTask {
    /// The user's id.
    #[schema(min_length = 1, pattern = "\\S")]
    pub id: String,
    /// What the agent should do.
    #[schema(min_length = 1, pattern = "\\S")]
    pub description: String,
}

/// `POST /batch/agent-tasks`. Every field besides the tasks and metadata is kept as the
/// job's `options`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"tasks": [{"id": "t1", "description": "Add a --verbose flag to cli.py"}],
                          "check_command": "python3 -m pytest -q", "max_loops": 3, "parallel": 2}))]
pub struct AgentTasksRequest {
    /// The tasks.
    #[schema(min_items = 1, max_items = 1000000)]
    pub tasks: Vec<AgentTask>,
    /// Per-job concurrency (default 3).
    #[schema(minimum = 1, maximum = 1000)]
    pub parallel: Option<i64>,
    /// Model of the Coder, which takes the odd loops (default `qwen2.5-coder:7b`).
    #[schema(value_type = Option<String>, example = "qwen2.5-coder:7b")]
    pub coder_model: Option<Value>,
    /// Model of the Reviewer, which takes the even loops after a failed check (default `llama3.2`).
    #[schema(value_type = Option<String>, example = "llama3.2")]
    pub reviewer_model: Option<Value>,
    /// Coder/Reviewer turns before a task fails (default 3).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 50)]
    pub max_loops: Option<Value>,
    /// Model replies per turn (default 20).
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 200)]
    pub max_steps: Option<Value>,
    /// Run in the task's workspace after each turn, split into argv (no shell); exit 0 (or
    /// 5 with "no tests") passes. Default `pytest -q`.
    #[schema(value_type = Option<String>, example = "python3 -m pytest -q")]
    pub check_command: Option<Value>,
    /// `false` makes tasks read-only: `write_file` and `run_command` are refused (default true).
    #[schema(value_type = Option<bool>)]
    pub apply_changes: Option<Value>,
    /// `worktree` (default in a git repository), `copy` (default otherwise) or `shared`.
    #[schema(value_type = Option<String>, example = "worktree")]
    pub workspace_mode: Option<Value>,
    /// LLM server for this job (default: the engine's `--llm-url`).
    #[schema(value_type = Option<String>, example = "http://127.0.0.1:11434")]
    pub llm_url: Option<Value>,
    /// `ollama` (`/api/chat`) or `openai` (`/v1/chat/completions`); default the engine's `--llm-api`.
    #[schema(value_type = Option<String>, example = "ollama")]
    pub api: Option<Value>,
    /// Sampling temperature.
    #[schema(value_type = Option<f64>, minimum = 0, maximum = 2)]
    pub temperature: Option<Value>,
    /// Model options: Ollama's `options` (`num_ctx`, …) or extra OpenAI request fields.
    #[schema(value_type = Option<Object>)]
    pub options: Option<Value>,
    /// Ollama's `keep_alive`, e.g. `"10m"`.
    #[schema(value_type = Option<String>)]
    pub keep_alive: Option<Value>,
    /// Seconds each command (tool or check) may run (default 600).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400)]
    pub timeout_seconds: Option<Value>,
    /// Seconds each LLM request may take (default the engine's `--llm-timeout`).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400)]
    pub llm_timeout_seconds: Option<Value>,
    /// Retries of an LLM request that could not connect or got a 5xx (default 3).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 10)]
    pub llm_retries: Option<Value>,
    /// Free-form metadata kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `priority`, `run_at`, `idempotency_key`.
    #[serde(flatten)]
    pub schedule: ScheduleFields,
}

/// The operation types, for the OpenAPI document (the check itself is against
/// [`MCP_OPERATIONS`]).
#[derive(Debug, ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum McpOperationType {
    /// `{path}`: read a text file.
    Read,
    /// `{path, content}`: write a file.
    Write,
    /// `{path}`: list a directory.
    List,
    /// `{command}`: run a command (argv, no shell) in the server's root.
    Command,
    /// `{tool, arguments}`: call any tool the server offers.
    Call,
}

/// One MCP operation. Besides `type` and `id`, the fields its type needs; they are checked
/// at submission, naming the field (`operations[3].path`).
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"id": "w1", "type": "write", "path": "notes/a.txt", "content": "hello"}))]
pub struct McpOperation {
    /// What to do.
    #[serde(rename = "type")]
    #[schema(value_type = McpOperationType)]
    pub op: String,
    /// Optional user id for the operation.
    pub id: Option<String>,
    /// `read`, `write`, `list`: a path inside the server's root.
    #[schema(value_type = Option<String>)]
    pub path: Option<Value>,
    /// `write`: the file's new content.
    #[schema(value_type = Option<String>)]
    pub content: Option<Value>,
    /// `command`: the command line, split into argv without a shell.
    #[schema(value_type = Option<String>)]
    pub command: Option<Value>,
    /// `call`: the tool's name.
    #[schema(value_type = Option<String>)]
    pub tool: Option<Value>,
    /// `call`: the tool's arguments.
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Value>,
}

/// `POST /batch/mcp-operations`. Every field besides the operations and metadata is kept
/// as the job's `options`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"operations": [{"id": "r1", "type": "read", "path": "README.md"},
                                         {"id": "l1", "type": "list", "path": "."}], "parallel": 5}))]
pub struct McpRequest {
    /// The operations.
    #[schema(min_items = 1, max_items = 1000000)]
    pub operations: Vec<McpOperation>,
    /// Which configured MCP server runs the operations (default: the engine's default,
    /// batchforge's own `mcp-server` on the workspace).
    #[schema(value_type = Option<String>, example = "batchforge")]
    pub server: Option<Value>,
    /// Seconds one operation may take (default 300).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0)]
    pub timeout_seconds: Option<Value>,
    /// Per-job concurrency (default 5).
    #[schema(minimum = 1, maximum = 1000)]
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `priority`, `run_at`, `idempotency_key`.
    #[serde(flatten)]
    pub schedule: ScheduleFields,
}

/// `POST /batch/jobs`: a job of any registered kind, for embedders' own processors.
/// Every field besides the type, items and metadata is kept as the job's `options`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"type": "noop", "items": [{"id": 1}, {"id": 2}], "parallel": 5}))]
pub struct GenericJobRequest {
    /// The processor kind: a built-in one or one the embedding application registered.
    #[serde(rename = "type")]
    #[schema(min_length = 1, pattern = "\\S", example = "noop")]
    pub kind: String,
    /// Items: any JSON; an object's `id` (string or number) becomes the item's key.
    #[schema(min_items = 1, max_items = 1000000)]
    pub items: Vec<Value>,
    /// Per-job concurrency (default 5).
    #[schema(minimum = 1, maximum = 1000)]
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `priority`, `run_at`, `idempotency_key`.
    #[serde(flatten)]
    pub schedule: ScheduleFields,
}

/// Checks `parallel`, defaulting it.
pub fn check_parallel(parallel: Option<i64>, default: i64) -> Result<u32, ApiError> {
    let p = parallel.unwrap_or(default);
    if !(1..=MAX_PARALLEL).contains(&p) {
        return Err(ApiError::invalid(
            "parallel",
            format!("must be between 1 and {MAX_PARALLEL}, got {p}"),
        ));
    }
    Ok(p as u32)
}

fn check_count(field: &str, n: usize, noun: &str) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(
            field,
            format!("must contain at least one {noun}"),
        ));
    }
    if n > MAX_ITEMS {
        return Err(ApiError::invalid(
            field,
            format!("has {n} entries; at most {MAX_ITEMS} fit in one job"),
        ));
    }
    Ok(())
}

fn check_metadata(metadata: Option<Value>) -> Result<Value, ApiError> {
    match metadata {
        None | Some(Value::Null) => Ok(Value::Object(Map::new())),
        Some(m @ Value::Object(_)) => Ok(m),
        Some(other) => Err(ApiError::invalid(
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
) -> Result<NewJob, ApiError> {
    let schedule = take_schedule(&mut raw)?;
    // Kept in the options: the webhook outbox reads it from there when the job finishes.
    if let Some(url) = raw.get(crate::webhooks::CALLBACK_URL_FIELD) {
        crate::webhooks::check_callback_url(url)
            .map_err(|m| ApiError::invalid(crate::webhooks::CALLBACK_URL_FIELD, m))?;
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

/// `POST /batch/jobs/{id}/retry`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"status": ["failed", "cancelled"]}))]
pub struct RetryRequest {
    /// Which items to requeue: `failed` (the default), `cancelled`, `skipped`.
    #[schema(value_type = Option<Vec<String>>)]
    pub status: Option<Value>,
}

/// The statuses a retry asks for, checked.
pub fn retry_statuses(req: RetryRequest) -> Result<Vec<ItemStatus>, ApiError> {
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
            return Err(ApiError::invalid(
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
                ApiError::invalid(
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

/// The scheduling fields every submission takes (checked by [`take_schedule`]).
#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct ScheduleFields {
    /// Higher runs first (−1000…1000, default 0). Jobs at the same priority share the
    /// slots in turn; a job that waits gains a level every 30 s, so none starves.
    #[schema(value_type = Option<i32>, minimum = -1000, maximum = 1000, example = 10)]
    pub priority: Option<Value>,
    /// Nothing of the job starts before this time: an RFC 3339 timestamp or Unix seconds.
    #[schema(value_type = Option<String>, example = "2026-11-26T18:00:00Z")]
    pub run_at: Option<Value>,
    /// Resubmitting with a key already used returns the job created with it (also taken
    /// from the `Idempotency-Key` header).
    #[schema(value_type = Option<String>, max_length = 255, example = "nightly-2026-11-26")]
    pub idempotency_key: Option<Value>,
    /// An http or https URL that gets a `job.finished` POST when the job finishes (kept in
    /// the job's options; checked in `build_job`, see `crate::webhooks`).
    #[schema(value_type = Option<String>, max_length = 2048, example = "https://ci.example.com/hooks/batchforge")]
    pub callback_url: Option<Value>,
    /// Ids of jobs that must complete before this one starts; if one fails or is
    /// cancelled, this job is cancelled too (unless `run_on_failure`).
    #[schema(value_type = Option<Vec<String>>)]
    pub depends_on: Option<Value>,
    /// Start even when a dependency failed or was cancelled (default false).
    #[schema(value_type = Option<bool>)]
    pub run_on_failure: Option<Value>,
    /// Attempts an item gets when it fails by an error (timeout, crash, transport
    /// failure); 1–50, default 1 (no retry). Ordinary failures are never retried.
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 50)]
    pub max_attempts: Option<Value>,
    /// Seconds before the first retry (default 1); doubled each time, with jitter.
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 3600)]
    pub retry_delay_seconds: Option<Value>,
    /// Longest wait between attempts (default 300).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400)]
    pub retry_max_delay_seconds: Option<Value>,
    /// A bound on every item of the job, whatever its kind: past it the item is stopped
    /// and fails by an error (retried under `max_attempts`).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 604800)]
    pub item_timeout_seconds: Option<Value>,
    /// When it passes, the job's unfinished items are cancelled (running ones stopped),
    /// its finished results kept, and the job ends `expired`: RFC 3339 or Unix seconds.
    #[schema(value_type = Option<String>, example = "2026-11-27T06:00:00Z")]
    pub deadline: Option<Value>,
    /// A concurrency group configured on the server (`--concurrency-group gpu=1`): the
    /// items of every job naming it, of any kind, share its limit.
    #[schema(value_type = Option<String>, example = "gpu")]
    pub concurrency_group: Option<Value>,
}

/// Longest accepted idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = 255;

/// Takes `priority`, `run_at` and `idempotency_key` out of the body, checked.
pub fn take_schedule(raw: &mut Map<String, Value>) -> Result<JobSchedule, ApiError> {
    let mut schedule = JobSchedule::default();
    match raw.remove("priority") {
        None | Some(Value::Null) => {}
        Some(v) => {
            let (lo, hi) = (*PRIORITY_RANGE.start(), *PRIORITY_RANGE.end());
            schedule.priority = v
                .as_i64()
                .filter(|p| (i64::from(lo)..=i64::from(hi)).contains(p))
                .ok_or_else(|| {
                    ApiError::invalid(
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
        Some(Value::String(k)) if k.starts_with(crate::schedules::TICK_KEY_PREFIX) => {
            return Err(ApiError::invalid(
                "idempotency_key",
                format!(
                    "keys starting with '{}' are reserved for the jobs of cron schedules",
                    crate::schedules::TICK_KEY_PREFIX
                ),
            ))
        }
        Some(Value::String(k)) if !k.trim().is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY => {
            schedule.idempotency_key = Some(k)
        }
        Some(v) => {
            return Err(ApiError::invalid(
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
pub fn parse_run_at(v: &Value) -> Result<f64, ApiError> {
    let bad = || {
        ApiError::invalid(
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
) -> Result<(), ApiError> {
    let Some(key) = header else {
        return Ok(());
    };
    match raw.get("idempotency_key") {
        None | Some(Value::Null) => {
            raw.insert("idempotency_key".into(), Value::String(key.to_string()));
            Ok(())
        }
        Some(Value::String(k)) if k == key => Ok(()),
        Some(_) => Err(ApiError::invalid(
            "idempotency_key",
            "differs from the Idempotency-Key header; send one or make them equal",
        )),
    }
}

fn non_empty(field: String, value: &str) -> Result<(), ApiError> {
    if value.trim().is_empty() {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    Ok(())
}

/// Builds a path-target job (`batch_validation`, `batch_tests`).
pub fn path_job(
    kind: &str,
    items_field: &str,
    targets: Vec<PathTarget>,
    parallel: Option<i64>,
    metadata: Option<Value>,
    raw: Map<String, Value>,
) -> Result<NewJob, ApiError> {
    check_count(items_field, targets.len(), "entry")?;
    let parallel = check_parallel(parallel, 5)?;
    let metadata = check_metadata(metadata)?;
    let mut items = Vec::with_capacity(targets.len());
    for (i, t) in targets.into_iter().enumerate() {
        non_empty(format!("{items_field}[{i}].id"), &t.id)?;
        non_empty(format!("{items_field}[{i}].path"), &t.path)?;
        items.push(NewItem {
            payload: serde_json::json!({"id": t.id, "path": t.path}),
            key: t.id,
        });
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
pub fn agent_job(req: AgentTasksRequest, raw: Map<String, Value>) -> Result<NewJob, ApiError> {
    check_count("tasks", req.tasks.len(), "task")?;
    let parallel = check_parallel(req.parallel, 3)?;
    let metadata = check_metadata(req.metadata)?;
    let mut items = Vec::with_capacity(req.tasks.len());
    for (i, t) in req.tasks.into_iter().enumerate() {
        non_empty(format!("tasks[{i}].id"), &t.id)?;
        non_empty(format!("tasks[{i}].description"), &t.description)?;
        items.push(NewItem {
            payload: serde_json::json!({"id": t.id, "description": t.description}),
            key: t.id,
        });
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

/// Operation types the MCP endpoint knows.
pub const MCP_OPERATIONS: [&str; 5] = ["read", "write", "list", "command", "call"];

/// Builds a `batch_mcp` job; each operation's whole object is its payload.
pub fn mcp_job(req: McpRequest, mut raw: Map<String, Value>) -> Result<NewJob, ApiError> {
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
            return Err(ApiError::invalid(
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
            "" => ApiError::invalid(format!("operations[{i}]"), e.message),
            field => ApiError::invalid(format!("operations[{i}].{field}"), e.message),
        })?;
        items.push(NewItem {
            key: op.id.clone().unwrap_or_else(|| i.to_string()),
            payload,
        });
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
pub fn generic_job(req: GenericJobRequest, raw: Map<String, Value>) -> Result<NewJob, ApiError> {
    non_empty("type".into(), &req.kind)?;
    check_count("items", req.items.len(), "item")?;
    let parallel = check_parallel(req.parallel, 5)?;
    let metadata = check_metadata(req.metadata)?;
    let items = req
        .items
        .into_iter()
        .enumerate()
        .map(|(i, payload)| NewItem {
            key: match payload.get("id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => i.to_string(),
            },
            payload,
        })
        .collect();
    let mut raw = raw;
    raw.remove("type");
    build_job(req.kind, raw, "items", parallel, metadata, items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> ApiError {
        parse_body::<ValidationRequest>(body.as_bytes()).unwrap_err()
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
