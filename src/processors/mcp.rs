//! `batch_mcp`: each item is one MCP operation (`read`, `write`, `list`, `command`, or a
//! `call` of any tool), run as a tool call on a pooled session of the job's server.
//!
//! Results keep the seed's shape, `{operation, status: success|failed, result|error}`,
//! plus the item's `id`, the `server` and `tool` used and the tool's
//! `structured_content` when it returned some. A session whose server dies during a call
//! is replaced and the operation retried once on a newly started session (never an idle
//! one, which may have died the same way). A call that times out fails its item and its
//! session is dropped, not reused: the server may still be busy with it.

use crate::mcp::ops::Operation;
use crate::mcp::pool::{CallError, ServerPool};
use crate::mcp::{McpRegistry, McpTransport};
use crate::model::ItemOutcome;
use crate::processor::{FieldError, Item, ItemContext, Processor};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// The kind this processor handles.
pub const KIND: &str = "batch_mcp";
/// Per-operation timeout unless the job sets `timeout_seconds`.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest per-operation timeout a job may ask for; it lives in [`crate::mcp`], whose
/// built-in server runs with it as its `--command-timeout`.
pub use crate::mcp::MAX_TIMEOUT_SECONDS;

/// A server's name and the headers its sessions send.
type JobPoolKey = (String, BTreeMap<String, String>);

/// Runs MCP operations against the configured servers.
pub struct McpProcessor {
    pools: HashMap<String, Arc<ServerPool>>,
    /// Pools of jobs that send their own `headers`: one per server and header set, so a
    /// session made with one job's credentials never serves another's.
    job_pools: std::sync::Mutex<HashMap<JobPoolKey, Arc<ServerPool>>>,
    registry: McpRegistry,
}

impl McpProcessor {
    /// A processor for the servers of `registry`; no server starts before a job needs it.
    pub fn new(registry: McpRegistry) -> Self {
        let pools = registry
            .servers
            .iter()
            .map(|s| (s.name.clone(), ServerPool::new(s.clone())))
            .collect();
        McpProcessor {
            pools,
            job_pools: Default::default(),
            registry,
        }
    }

    /// The pool an item of a job with `options` borrows from: the server's own, or, for a
    /// job with `headers`, one for the server with those headers over its configured ones.
    fn pool_for(&self, server: &str, options: &Value) -> Option<Arc<ServerPool>> {
        let pool = self.pools.get(server)?;
        let Some(Value::Object(given)) = options.get("headers") else {
            return Some(pool.clone());
        };
        let mut config = self
            .registry
            .servers
            .iter()
            .find(|s| s.name == server)?
            .clone();
        let McpTransport::Http { headers, .. } = &mut config.transport else {
            // Refused at submission; a stored job that bypassed it runs without them.
            return Some(pool.clone());
        };
        for (name, value) in given {
            let Some(value) = value.as_str() else {
                continue;
            };
            headers.retain(|k, _| !k.eq_ignore_ascii_case(name));
            headers.insert(name.clone(), value.to_string());
        }
        let key = (server.to_string(), headers.clone());
        let mut pools = self.job_pools.lock().unwrap_or_else(|p| p.into_inner());
        Some(
            pools
                .entry(key)
                .or_insert_with(|| ServerPool::new(config))
                .clone(),
        )
    }

    /// The pool of server `name`, if configured.
    pub fn pool(&self, name: &str) -> Option<&Arc<ServerPool>> {
        self.pools.get(name)
    }

    fn server_name<'a>(&'a self, options: &'a Value) -> &'a str {
        options
            .get("server")
            .and_then(Value::as_str)
            .unwrap_or(&self.registry.default_server)
    }

    fn timeout(options: &Value) -> Duration {
        options
            .get("timeout_seconds")
            .and_then(Value::as_f64)
            // Checked at submission; never panic on a stored job that bypassed it.
            .and_then(|t| Duration::try_from_secs_f64(t.min(MAX_TIMEOUT_SECONDS)).ok())
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_OPERATION_TIMEOUT)
    }
}

impl McpProcessor {
    /// The job option `headers`: an object of strings, for a streamable-HTTP server. The
    /// errors name the header, never its value.
    fn check_headers(&self, options: &Value) -> Result<(), FieldError> {
        let headers = match options.get("headers") {
            None | Some(Value::Null) => return Ok(()),
            Some(Value::Object(h)) => h,
            Some(_) => {
                return Err(FieldError::new(
                    "headers",
                    "must be an object of header names to string values, like {\"Authorization\": \"Bearer …\"}",
                ))
            }
        };
        let server = self.server_name(options);
        let is_http = self
            .registry
            .servers
            .iter()
            .any(|s| s.name == server && matches!(s.transport, McpTransport::Http { .. }));
        if !is_http && !headers.is_empty() {
            return Err(FieldError::new(
                "headers",
                format!(
                    "MCP server '{server}' is not a streamable-HTTP server; headers are sent only to those"
                ),
            ));
        }
        let mut map = BTreeMap::new();
        for (name, value) in headers {
            let Some(value) = value.as_str() else {
                return Err(FieldError::new(
                    format!("headers.{name}"),
                    "must be a string",
                ));
            };
            map.insert(name.clone(), value.to_string());
        }
        crate::mcp::header_map(&map).map_err(|e| FieldError::new("headers", e))?;
        Ok(())
    }
}

#[async_trait::async_trait(?Send)]
impl Processor for McpProcessor {
    fn kind(&self) -> &str {
        KIND
    }

    fn default_concurrency(&self) -> usize {
        32
    }

    fn validate_options(&self, options: &Value) -> Result<(), FieldError> {
        match options.get("server") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) if self.pools.contains_key(name) => {}
            Some(Value::String(name)) => {
                return Err(FieldError::new(
                    "server",
                    format!(
                        "MCP server '{name}' is not configured (configured: {})",
                        self.registry.names()
                    ),
                ))
            }
            Some(other) => {
                return Err(FieldError::new(
                    "server",
                    format!("must be the name of a configured MCP server, got {other}"),
                ))
            }
        }
        crate::model::options::seconds(options, "timeout_seconds", MAX_TIMEOUT_SECONDS)?;
        self.check_headers(options)
    }

    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome {
        let server = self.server_name(&ctx.options).to_string();
        let mut result = Map::new();
        result.insert(
            "operation".into(),
            item.payload.get("type").cloned().unwrap_or(Value::Null),
        );
        result.insert("id".into(), json!(item.key));
        result.insert("server".into(), json!(server));
        let fail = |mut result: Map<String, Value>, message: String| {
            result.insert("status".into(), json!("failed"));
            result.insert("error".into(), json!(message));
            ItemOutcome::failed(Value::Object(result), message)
        };
        // Transport failures (a server that cannot start or went away, a call that timed
        // out) are errors the job's max_attempts may retry; tool errors are outcomes.
        let error = |mut result: Map<String, Value>, message: String| {
            result.insert("status".into(), json!("failed"));
            result.insert("error".into(), json!(message));
            ItemOutcome::error(Value::Object(result), message)
        };
        let cancelled = |mut result: Map<String, Value>| {
            result.insert("status".into(), json!("cancelled"));
            ItemOutcome::cancelled(Value::Object(result))
        };
        // Jobs submitted through /batch/jobs skip the submit-time check: repeat it here.
        let op = match Operation::parse(&item.payload) {
            Ok(op) => op,
            Err(e) if e.field.is_empty() => {
                return fail(result, format!("operation {}", e.message))
            }
            Err(e) => return fail(result, format!("{}: {}", e.field, e.message)),
        };
        let Some(pool) = self.pool_for(&server, &ctx.options) else {
            let message = format!(
                "MCP server '{server}' is not configured (configured: {})",
                self.registry.names()
            );
            return fail(result, message);
        };
        ctx.progress
            .current(format!("{} {}", item.key, op.describe()));
        let timeout = Self::timeout(&ctx.options);
        // One retry, and only when the session died under the call.
        for attempt in 1..=2 {
            let lease = if attempt == 1 {
                pool.checkout(&ctx.cancel).await
            } else {
                pool.checkout_new(&ctx.cancel).await
            };
            let lease = match lease {
                None => return cancelled(result),
                Some(Err(message)) => return error(result, message),
                Some(Ok(lease)) => lease,
            };
            let session = lease.session();
            let (tool, arguments) = match op.to_call(&server, &session.tools) {
                Ok(call) => call,
                Err(message) => return fail(result, message),
            };
            result.insert("tool".into(), json!(tool));
            match session.call(&tool, arguments, timeout, &ctx.cancel).await {
                Ok(answer) => return outcome(result, answer),
                Err(CallError::Cancelled) => return cancelled(result),
                Err(CallError::Closed) if attempt == 1 => {
                    log::warn!(
                        "job {} item {} ({}): MCP server '{server}' went away during the call; retrying on a new session",
                        item.job_id,
                        item.index,
                        op.describe()
                    );
                    lease.discard("lost its connection during a call");
                }
                Err(CallError::Closed) => {
                    lease.discard("lost its connection during a call");
                    return error(
                        result,
                        format!(
                            "MCP server '{server}' went away during the call, twice (its stderr is in the log)"
                        ),
                    );
                }
                Err(e @ CallError::Timeout(_)) => {
                    // The server may still be working on it (or be stuck): closing the
                    // session stops its process rather than lending it out again.
                    lease.discard("timed out on a call");
                    return error(result, format!("{tool}: {e}"));
                }
                // A protocol error (unknown tool, bad arguments) will not change on retry.
                Err(e) => return fail(result, format!("{tool}: {e}")),
            }
        }
        unreachable!("the second attempt always returns")
    }
}

/// Turns a tool's answer into the item's outcome: `isError` fails the item.
fn outcome(mut result: Map<String, Value>, answer: CallToolResult) -> ItemOutcome {
    let text = content_value(&answer.content);
    if let Some(structured) = answer.structured_content {
        result.insert("structured_content".into(), structured);
    }
    if answer.is_error == Some(true) {
        let message = match &text {
            Value::String(s) if !s.trim().is_empty() => s.trim_end().to_string(),
            Value::String(_) => "the tool reported an error without a message".to_string(),
            other => other.to_string(),
        };
        result.insert("status".into(), json!("failed"));
        result.insert("error".into(), json!(message));
        return ItemOutcome::failed(Value::Object(result), message);
    }
    result.insert("status".into(), json!("success"));
    result.insert("result".into(), text);
    ItemOutcome::succeeded(Value::Object(result))
}

/// Text blocks joined into one string; anything else (images, resources) as JSON blocks.
fn content_value(content: &[ContentBlock]) -> Value {
    let texts: Option<Vec<&str>> = content
        .iter()
        .map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect();
    match texts {
        Some(texts) => Value::String(texts.join("\n")),
        None => serde_json::to_value(content).unwrap_or(Value::Null),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_errors_fail_the_item_with_their_message() {
        let mut answer = CallToolResult::error(vec![ContentBlock::text("path 'x' is outside\n")]);
        answer.structured_content = Some(json!({"exit_code": 1}));
        let o = outcome(Map::new(), answer);
        assert_eq!(o.status, crate::model::ItemStatus::Failed);
        assert_eq!(o.result["error"], "path 'x' is outside");
        assert_eq!(o.result["structured_content"]["exit_code"], 1);
        let o = outcome(
            Map::new(),
            CallToolResult::success(vec![ContentBlock::text("a"), ContentBlock::text("b")]),
        );
        assert_eq!(o.status, crate::model::ItemStatus::Succeeded);
        assert_eq!(o.result["result"], "a\nb");
        assert_eq!(o.result["status"], "success");
    }
}
