//! What the generated OpenAPI document cannot say from the Rust types alone, written into
//! it so it describes what the server really accepts (issue 18, item 8): a submission
//! body is one object whose unknown fields are refused (the types flatten the scheduling
//! fields into an `allOf`, where `additionalProperties: false` would refuse everything),
//! a schedule's job has no `run_at` or `idempotency_key`, a retry names retryable
//! statuses, each MCP operation type has its own required fields, and an event stream is
//! Server-Sent Events.

use crate::submission::fields::COMPAT_FIELDS;
use serde_json::{json, Map, Value};

/// The generated document as JSON, tightened. (It stays JSON: utoipa's own types cannot
/// hold some of what is written here, such as `{"type": "null"}` alternatives.)
pub(super) fn tightened(doc: &utoipa::openapi::OpenApi) -> Value {
    let mut v = serde_json::to_value(doc).expect("the document is JSON");
    tighten(&mut v);
    v
}

/// The submission bodies, and whether their unknown fields are refused (`POST /batch/jobs`
/// passes an embedder's kind its own options; see [`crate::submission::fields`]).
const SUBMISSIONS: [(&str, bool); 6] = [
    ("ValidationRequest", true),
    ("LlmBatchRequest", true),
    ("TestsRequest", true),
    ("AgentTasksRequest", true),
    ("McpRequest", true),
    ("GenericJobRequest", false),
];

/// The statuses a retry may name.
const RETRYABLE: [&str; 3] = ["failed", "cancelled", "skipped"];

fn tighten(doc: &mut Value) {
    let schemas = &mut doc["components"]["schemas"];
    let scheduling = schemas["ScheduleFields"]["properties"].clone();
    for (name, closed) in SUBMISSIONS {
        one_object(&mut schemas[name], &scheduling, closed);
    }
    if let Value::Object(s) = schemas {
        s.remove("ScheduleFields");
    }

    // A schedule's job: a `POST /batch/jobs` body without the fields each tick sets.
    let mut job = schemas["GenericJobRequest"].clone();
    if let Some(props) = job["properties"].as_object_mut() {
        props.remove("run_at");
        props.remove("idempotency_key");
    }
    job["description"] = json!(
        "The job each tick of a schedule submits: a `POST /batch/jobs` body without `run_at` \
         and `idempotency_key` (each tick's job runs at the tick, keyed \
         `schedule:<id>:<tick unix seconds>`)."
    );
    job.as_object_mut().map(|j| j.remove("example"));
    schemas["ScheduleJob"] = job;
    schemas["ScheduleRequest"]["properties"]["job"]["$ref"] =
        json!("#/components/schemas/ScheduleJob");

    schemas["RetryRequest"]["properties"]["status"] = json!({
        "description": "Which items to requeue: `failed` (the default), `cancelled`, `skipped`; one or a non-empty list.",
        "oneOf": [
            {"type": "null"},
            {"type": "string", "enum": RETRYABLE},
            {"type": "array", "items": {"type": "string", "enum": RETRYABLE}, "minItems": 1},
        ],
    });

    let description = schemas["McpOperation"]["description"].clone();
    let example = schemas["McpOperation"]["example"].clone();
    schemas["McpOperation"] = mcp_operation(description, example);

    // Every `text/event-stream` answer is a stream of events, not one string.
    if let Some(paths) = doc["paths"].as_object_mut() {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for op in op.values_mut() {
                let has_path_parameter = op["parameters"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|p| p["in"] == "path"));
                // Text parameters reach the store, which cannot hold a NUL character.
                // (`get_mut`, not indexing: an index would insert a `null` where nothing was.)
                if let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) {
                    for p in params
                        .iter_mut()
                        .filter(|p| p["schema"]["type"] == "string")
                    {
                        p["schema"]["pattern"] = json!("^[^\\u0000]*$");
                    }
                }
                let Some(responses) = op["responses"].as_object_mut() else {
                    continue;
                };
                // `api::extract::Segment` refuses a path parameter the store cannot hold.
                if has_path_parameter {
                    responses.entry("422").or_insert_with(|| json!({
                        "description": "A path parameter holds a NUL character; `field` names it",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                    }));
                }
                for response in responses.values_mut() {
                    let content = response.get_mut("content");
                    if let Some(sse) = content.and_then(|c| c.get_mut("text/event-stream")) {
                        sse["schema"] = json!({
                            "type": "string",
                            "format": "event-stream",
                            "description": "Server-Sent Events: blocks of `id:`, `event:` and `data:` lines \
                                            separated by a blank line; `data` is one JSON object; \
                                            `: keep-alive` comments every 15 s of silence.",
                        });
                        sse["example"] = json!(
                            "event: state\ndata: {\"job_id\":\"noop-3f2a9c1d8e7b\",\"status\":\"running\"}\n\n\
                             id: 7\nevent: item\ndata: {\"job_id\":\"noop-3f2a9c1d8e7b\",\"index\":0,\"id\":\"a\",\"status\":\"succeeded\"}\n\n"
                        );
                    }
                }
            }
        }
    }
}

/// Turns `allOf: [ScheduleFields, {own fields}]` into one object with every field, the
/// original's compatibility fields and, when `closed`, `additionalProperties: false`.
fn one_object(schema: &mut Value, scheduling: &Value, closed: bool) {
    let parts = match schema.as_object_mut().and_then(|s| s.remove("allOf")) {
        Some(Value::Array(parts)) => parts,
        _ => return,
    };
    let mut properties = Map::new();
    let mut required: Vec<Value> = Vec::new();
    for part in parts {
        if part.get("$ref").is_some() {
            if let Some(p) = scheduling.as_object() {
                properties.extend(p.clone());
            }
            continue;
        }
        if let Some(p) = part["properties"].as_object() {
            properties.extend(p.clone());
        }
        if let Some(r) = part["required"].as_array() {
            required.extend(r.iter().cloned());
        }
    }
    // Times are RFC 3339 text or Unix seconds (see `crate::model::parse_timestamp`).
    for time in ["run_at", "deadline"] {
        if let Some(p) = properties.get_mut(time) {
            p["type"] = json!(["string", "number", "null"]);
        }
    }
    for field in COMPAT_FIELDS {
        properties.insert(
            field.to_string(),
            json!({"type": ["integer", "null"], "deprecated": true,
                   "description": "Accepted for the Python original's clients, and ignored."}),
        );
    }
    schema["type"] = json!("object");
    schema["properties"] = Value::Object(properties);
    schema["required"] = Value::Array(required);
    schema["additionalProperties"] = json!(!closed);
    if !closed {
        let text = schema["description"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        schema["description"] = json!(format!(
            "{text}\nA built-in kind takes only its own endpoint's fields; any other field of \
             an embedder's kind is passed to its processor as an option, unless it is a near \
             miss of an engine field (`paralel`), which is refused as a typo."
        ));
    }
}

/// One MCP operation: one shape per type, each with the fields that type requires.
fn mcp_operation(description: Value, example: Value) -> Value {
    let text = json!({"type": "string", "minLength": 1, "pattern": "\\S"});
    let id =
        json!({"type": ["string", "null"], "description": "Optional user id for the operation."});
    let variant = |op: &str, what: &str, fields: Value, required: &[&str]| {
        let mut properties = json!({"type": {"type": "string", "enum": [op]}, "id": id});
        if let (Some(p), Some(f)) = (properties.as_object_mut(), fields.as_object()) {
            p.extend(f.clone());
        }
        let mut needed = vec!["type"];
        needed.extend_from_slice(required);
        json!({"type": "object", "title": op, "description": what,
               "properties": properties, "required": needed})
    };
    json!({
        "description": description,
        "example": example,
        "oneOf": [
            variant("read", "Read a text file.", json!({"path": text}), &["path"]),
            variant("write", "Write a file (an empty content is an empty file).",
                    json!({"path": text, "content": {"type": "string"}}), &["path", "content"]),
            variant("list", "List a directory.", json!({"path": text}), &["path"]),
            variant("command", "Run a command line (argv, no shell) in the server's root.",
                    json!({"command": text, "cwd": {"type": ["string", "null"]}}), &["command"]),
            variant("call", "Call any tool the server offers, with its named arguments.",
                    json!({"tool": text, "arguments": {"type": ["object", "null"]}}), &["tool"]),
        ],
    })
}
