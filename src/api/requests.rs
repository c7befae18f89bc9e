//! Request bodies: parsed with the path of every bad field, then checked and turned into a
//! [`NewJob`]. Nothing reaches the engine unless it passed here.

use super::error::ApiError;
use crate::model::{NewItem, NewJob};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};

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
const NUMERIC_OPTIONS: [&str; 5] = [
    "parallel",
    "timeout_seconds",
    "max_output_bytes",
    "max_loops",
    "chunk_size",
];

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
        let value = if NUMERIC_OPTIONS.contains(&k.as_str()) {
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
#[derive(Debug, Deserialize)]
pub struct PathTarget {
    /// The user's id.
    pub id: String,
    /// Path inside the workspace.
    pub path: String,
}

/// `POST /batch/validation`.
#[derive(Debug, Deserialize)]
pub struct ValidationRequest {
    /// The targets to check.
    pub targets: Vec<PathTarget>,
    /// Per-job concurrency (default 5).
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    pub metadata: Option<Value>,
}

/// `POST /batch/tests`.
#[derive(Debug, Deserialize)]
pub struct TestsRequest {
    /// The modules to test.
    pub modules: Vec<PathTarget>,
    /// Per-job concurrency (default 5).
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    pub metadata: Option<Value>,
}

/// One coding task: the seed's `{id, description}`.
#[derive(Debug, Deserialize)]
pub struct AgentTask {
    /// The user's id.
    pub id: String,
    /// What the agent should do.
    pub description: String,
}

/// `POST /batch/agent-tasks`.
#[derive(Debug, Deserialize)]
pub struct AgentTasksRequest {
    /// The tasks.
    pub tasks: Vec<AgentTask>,
    /// Per-job concurrency (default 3).
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    pub metadata: Option<Value>,
}

/// One MCP operation.
#[derive(Debug, Deserialize)]
pub struct McpOperation {
    /// `read`, `write`, `list`, `command` or `call`.
    #[serde(rename = "type")]
    pub op: String,
    /// Optional user id for the operation.
    pub id: Option<String>,
}

/// `POST /batch/mcp-operations`.
#[derive(Debug, Deserialize)]
pub struct McpRequest {
    /// The operations.
    pub operations: Vec<McpOperation>,
    /// Per-job concurrency (default 5).
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    pub metadata: Option<Value>,
}

/// `POST /batch/jobs`: a job of any registered kind, for embedders' own processors.
#[derive(Debug, Deserialize)]
pub struct GenericJobRequest {
    /// The processor kind.
    #[serde(rename = "type")]
    pub kind: String,
    /// Items: any JSON; an object's `id` (string or number) becomes the item's key.
    pub items: Vec<Value>,
    /// Per-job concurrency (default 5).
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    pub metadata: Option<Value>,
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

/// The job's options: the body without its items and metadata, with `parallel` settled.
fn options(mut raw: Map<String, Value>, items_field: &str, parallel: u32) -> Value {
    raw.remove(items_field);
    raw.remove("metadata");
    raw.insert("parallel".into(), parallel.into());
    Value::Object(raw)
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
    Ok(NewJob {
        kind: kind.to_string(),
        spec: options(raw, items_field, parallel),
        parallel,
        metadata,
        items,
    })
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
    Ok(NewJob {
        kind: "batch_agent_tasks".into(),
        spec: options(raw, "tasks", parallel),
        parallel,
        metadata,
        items,
    })
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
        items.push(NewItem {
            key: op.id.clone().unwrap_or_else(|| i.to_string()),
            payload,
        });
    }
    Ok(NewJob {
        kind: "batch_mcp".into(),
        spec: options(raw, "operations", parallel),
        parallel,
        metadata,
        items,
    })
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
    let mut spec = options(raw, "items", parallel);
    if let Some(obj) = spec.as_object_mut() {
        obj.remove("type");
    }
    Ok(NewJob {
        kind: req.kind,
        spec,
        parallel,
        metadata,
        items,
    })
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
