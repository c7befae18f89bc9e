//! `batch_llm`: one chat completion per item, through the agent's LLM client
//! ([`crate::agent::llm`]: retries with backoff, the per-endpoint semaphore).
//!
//! Item: `{custom_id, body}` where `body` is an OpenAI chat-completions request (`model`,
//! `messages`, `temperature`, `max_tokens`, `response_format`, `tools`, …). To an
//! OpenAI-protocol endpoint the body goes as it is; to Ollama it is mapped onto
//! `/api/chat` (sampling fields into `options`, `response_format` into `format`).
//!
//! Result: `{custom_id, status_code, api, response, usage: {prompt_tokens,
//! completion_tokens}}` where `response` is the upstream's answer body as it came. A failed
//! request's result is `{custom_id, status_code (when the upstream answered), error:
//! {code, message}}`; transport trouble and 5xx/429 answers are errors (retried under the
//! job's `max_attempts`), other answers ordinary failures.
//!
//! Job options, checked at submit: `llm_url`, `api` (`auto`, the default, |`ollama`|`openai`),
//! `llm_timeout_seconds`, `llm_retries`. Without `llm_url` an item's model picks its
//! endpoint by the server's routes (`--llm-route MODEL_GLOB=URL[,api=…]`), else the
//! server's `--llm-url`.

use crate::agent::llm::{EndpointLimits, LlmClient, LlmError, RetryPolicy, Usage};
use crate::agent::{normalize_url, AgentConfig, LlmApi};
use crate::model::ItemOutcome;
use crate::processor::{FieldError, Item, ItemContext, Processor};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The kind this processor handles.
pub const KIND: &str = "batch_llm";
const MAX_TIMEOUT_SECONDS: f64 = 86_400.0;
const MAX_RETRIES: u64 = 10;

/// A server-side route: models matching `pattern` (a glob, `*` and `?`) go to `url`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRoute {
    /// The model glob, e.g. `qwen2.5-coder:*`.
    pub pattern: String,
    /// The endpoint's base URL (normalized).
    pub url: String,
    /// Its protocol; `None` takes the server's.
    pub api: Option<LlmApi>,
}

/// Parses `MODEL_GLOB=URL[,api=openai|ollama]`, the `--llm-route` flag.
pub fn parse_route(s: &str) -> Result<LlmRoute, String> {
    let (pattern, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not MODEL_GLOB=URL[,api=openai|ollama]"))?;
    let pattern = pattern.trim();
    if pattern.is_empty() {
        return Err(format!("'{s}' has no model pattern before '='"));
    }
    let mut parts = rest.split(',');
    let url = normalize_url(parts.next().unwrap_or_default())?;
    let mut api = None;
    for part in parts {
        match part.trim().split_once('=') {
            Some(("api", a)) => api = Some(a.parse::<LlmApi>()?),
            _ => return Err(format!("'{part}' in '{s}': expected api=openai|ollama")),
        }
    }
    Ok(LlmRoute {
        pattern: pattern.to_string(),
        url,
        api,
    })
}

/// Whether `name` matches the glob `pattern` (`*` any run, `?` one character).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// A job's options, checked.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmBatchOptions {
    /// Overrides routing and the engine's URL.
    pub llm_url: Option<String>,
    /// Overrides the protocol.
    pub api: Option<LlmApi>,
    /// `llm_api_key`: sent as `Authorization: Bearer …` to the job's endpoint.
    pub llm_api_key: Option<crate::secrets::Secret>,
    /// Per request.
    pub llm_timeout: Option<Duration>,
    /// Retries of a transient failure inside one attempt.
    pub llm_retries: Option<u32>,
}

impl LlmBatchOptions {
    /// Parses and checks a job's options; the error names the option.
    pub fn parse(o: &Value) -> Result<LlmBatchOptions, FieldError> {
        let string = |field: &str| -> Result<Option<String>, FieldError> {
            match o.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().into())),
                Some(other) => Err(FieldError::new(
                    field,
                    format!("must be a non-empty string, got {other}"),
                )),
            }
        };
        let llm_url = match string("llm_url")? {
            None => None,
            Some(u) => Some(normalize_url(&u).map_err(|e| FieldError::new("llm_url", e))?),
        };
        let api = match string("api")? {
            None => None,
            Some(a) => Some(a.parse::<LlmApi>().map_err(|e| FieldError::new("api", e))?),
        };
        let llm_api_key = string("llm_api_key")?.map(crate::secrets::Secret::new);
        let llm_timeout =
            crate::model::options::seconds(o, "llm_timeout_seconds", MAX_TIMEOUT_SECONDS)?
                .map(Duration::from_secs_f64);
        let llm_retries = match o.get("llm_retries") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n <= MAX_RETRIES => Some(n as u32),
                _ => {
                    return Err(FieldError::new(
                        "llm_retries",
                        format!("must be an integer from 0 to {MAX_RETRIES}, got {v}"),
                    ))
                }
            },
        };
        Ok(LlmBatchOptions {
            llm_url,
            api,
            llm_api_key,
            llm_timeout,
            llm_retries,
        })
    }
}

/// Checks one item's request body at submission; the error's field is relative to the
/// body (`model`, `messages`, `stream`).
pub fn check_body(body: &Value) -> Result<(), FieldError> {
    let Value::Object(o) = body else {
        return Err(FieldError::new(
            "",
            format!("must be a chat completions request object, got {body}"),
        ));
    };
    match o.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => {}
        Some(other) => {
            return Err(FieldError::new(
                "model",
                format!("must be a non-empty string, got {other}"),
            ))
        }
        None => return Err(FieldError::new("model", "is required")),
    }
    match o.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() => {
            for (i, message) in m.iter().enumerate() {
                if !message.get("role").is_some_and(Value::is_string) {
                    return Err(FieldError::new(
                        format!("messages[{i}].role"),
                        "is required (a string: system, user, assistant or tool)",
                    ));
                }
            }
        }
        Some(other) => {
            return Err(FieldError::new(
                "messages",
                format!("must be a non-empty array of messages, got {other}"),
            ))
        }
        None => return Err(FieldError::new("messages", "is required")),
    }
    if o.get("stream").is_some_and(|s| s == &Value::Bool(true)) {
        return Err(FieldError::new(
            "stream",
            "streaming is not supported in a batch; leave it out or set false",
        ));
    }
    Ok(())
}

/// Maps an OpenAI chat-completions body onto Ollama's `/api/chat`.
pub fn ollama_request(body: &Value) -> Value {
    let mut out = Map::new();
    let mut options = Map::new();
    let Value::Object(o) = body else {
        return body.clone();
    };
    for (k, v) in o {
        match k.as_str() {
            "model" | "tools" | "keep_alive" | "think" => {
                out.insert(k.clone(), v.clone());
            }
            "messages" => {
                out.insert(k.clone(), ollama_messages(v));
            }
            "options" => {
                if let Value::Object(m) = v {
                    options.extend(m.clone());
                }
            }
            "max_tokens" | "max_completion_tokens" => {
                options.insert("num_predict".into(), v.clone());
            }
            "temperature" | "top_p" | "top_k" | "seed" | "stop" | "frequency_penalty"
            | "presence_penalty" | "num_ctx" | "repeat_penalty" | "min_p" => {
                options.insert(k.clone(), v.clone());
            }
            "response_format" => match v.get("type").and_then(Value::as_str) {
                Some("json_object") => {
                    out.insert("format".into(), json!("json"));
                }
                Some("json_schema") => {
                    if let Some(schema) = v.pointer("/json_schema/schema") {
                        out.insert("format".into(), schema.clone());
                    }
                }
                _ => {}
            },
            "format" => {
                out.insert(k.clone(), v.clone());
            }
            // OpenAI-only fields (n, logprobs, user, tool_choice, …) have no Ollama twin.
            _ => {}
        }
    }
    out.insert("stream".into(), json!(false));
    if !options.is_empty() {
        out.insert("options".into(), Value::Object(options));
    }
    Value::Object(out)
}

/// OpenAI messages for Ollama: content parts joined into text (images into `images`),
/// tool-call arguments as objects.
fn ollama_messages(v: &Value) -> Value {
    let Value::Array(messages) = v else {
        return v.clone();
    };
    Value::Array(
        messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                if let Some(Value::Array(parts)) = m.get("content").cloned() {
                    let text: Vec<&str> = parts
                        .iter()
                        .filter_map(|p| p.get("text").and_then(Value::as_str))
                        .collect();
                    let images: Vec<Value> = parts
                        .iter()
                        .filter_map(|p| p.pointer("/image_url/url").and_then(Value::as_str))
                        .map(|u| json!(u.split_once("base64,").map(|(_, b)| b).unwrap_or(u)))
                        .collect();
                    m["content"] = json!(text.join(""));
                    if !images.is_empty() {
                        m["images"] = Value::Array(images);
                    }
                }
                if let Some(Value::Array(calls)) = m.get_mut("tool_calls") {
                    for call in calls {
                        if let Some(args) = call.pointer_mut("/function/arguments") {
                            if let Value::String(s) = args {
                                if let Ok(parsed) = serde_json::from_str::<Value>(s) {
                                    *args = parsed;
                                }
                            }
                        }
                    }
                }
                m
            })
            .collect(),
    )
}

/// An Ollama `/api/chat` answer in the shape of an OpenAI `chat.completion`, for readers
/// of the OpenAI protocol (the `/v1` facade's output files).
pub fn ollama_to_openai(v: &Value, request_id: &str) -> Value {
    let usage = crate::agent::llm::usage_of(v);
    let mut message = v.get("message").cloned().unwrap_or(json!({}));
    let mut finish = v
        .get("done_reason")
        .and_then(Value::as_str)
        .unwrap_or("stop")
        .to_string();
    if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
        for (i, call) in calls.iter_mut().enumerate() {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                if !args.is_string() {
                    *args = json!(args.to_string());
                }
            }
            call["id"] = json!(format!("call_{i}"));
            call["type"] = json!("function");
        }
        finish = "tool_calls".into();
    }
    if let Some(o) = message.as_object_mut() {
        o.remove("images");
        o.entry("role").or_insert(json!("assistant"));
    }
    json!({
        "id": format!("chatcmpl-{request_id}"),
        "object": "chat.completion",
        "created": crate::model::now() as i64,
        "model": v.get("model").cloned().unwrap_or(Value::Null),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.prompt_tokens + usage.completion_tokens},
    })
}

/// Runs one chat completion per item.
pub struct LlmBatchProcessor {
    config: AgentConfig,
    routes: Vec<LlmRoute>,
    http: reqwest::Client,
    /// Shared with the engine's other LLM processors (see `with_limits`).
    limits: Arc<EndpointLimits>,
}

impl LlmBatchProcessor {
    /// Uses `limits` for its endpoints, so every LLM kind of an engine shares one
    /// `max_concurrent_requests_per_endpoint` per endpoint instead of one each.
    pub fn with_limits(mut self, limits: Arc<EndpointLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// A processor with the engine's LLM settings and model routes.
    pub fn new(config: AgentConfig, routes: Vec<LlmRoute>) -> Result<Self, String> {
        let llm_url = normalize_url(&config.llm_url).map_err(|e| format!("LLM URL: {e}"))?;
        let http = crate::agent::llm::http_client()?;
        Ok(LlmBatchProcessor {
            limits: Arc::new(
                EndpointLimits::new(config.max_concurrent_requests_per_endpoint)
                    .with_rates(config.rate_limits.clone()),
            ),
            config: AgentConfig { llm_url, ..config },
            routes,
            http,
        })
    }

    /// The endpoint and protocol of `model` under `opts`: the job's `llm_url`, else the
    /// first matching route, else the server's.
    pub fn endpoint(&self, opts: &LlmBatchOptions, model: &str) -> (String, LlmApi) {
        if let Some(url) = &opts.llm_url {
            return (url.clone(), opts.api.unwrap_or(self.config.api));
        }
        if let Some(r) = self.routes.iter().find(|r| glob_matches(&r.pattern, model)) {
            return (r.url.clone(), opts.api.or(r.api).unwrap_or(self.config.api));
        }
        (
            self.config.llm_url.clone(),
            opts.api.unwrap_or(self.config.api),
        )
    }

    fn client(&self, opts: &LlmBatchOptions, url: String, api: LlmApi) -> LlmClient {
        LlmClient::new(
            self.http.clone(),
            url.clone(),
            api,
            crate::processors::agent::api_key(
                opts.llm_api_key.as_ref(),
                &self.config.api_key,
                opts.llm_url.is_none()
                    || url == self.config.llm_url
                    || self.routes.iter().any(|r| r.url == url),
            ),
            opts.llm_timeout.unwrap_or(self.config.request_timeout),
            RetryPolicy {
                max_retries: opts.llm_retries.unwrap_or(self.config.max_retries),
                base: self.config.retry_backoff,
                cap: Duration::from_secs(30),
            },
            self.limits.get(&url),
        )
        .with_rates(self.limits.rates())
    }
}

/// The HTTP status an error carries, if the upstream answered, and an OpenAI-style code.
fn error_code(e: &LlmError) -> (Option<u16>, &'static str) {
    match e {
        LlmError::Unreachable { .. } | LlmError::Connection { .. } => {
            (None, "upstream_unreachable")
        }
        LlmError::Timeout { .. } => (None, "upstream_timeout"),
        LlmError::UnknownModel { .. } => (Some(404), "model_not_found"),
        LlmError::ToolsUnsupported { .. } => (Some(400), "tools_unsupported"),
        LlmError::Status { status, .. } => (Some(*status), "upstream_error"),
        LlmError::BadAnswer { .. } => (None, "bad_upstream_answer"),
        LlmError::RateLimited { .. } => (Some(429), "rate_limited"),
        LlmError::Cancelled => (None, "cancelled"),
    }
}

fn usage_json(u: Usage) -> Value {
    json!({"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens})
}

#[async_trait::async_trait(?Send)]
impl Processor for LlmBatchProcessor {
    fn kind(&self) -> &str {
        KIND
    }

    fn default_concurrency(&self) -> usize {
        // Items only wait on their endpoint, whose semaphore is the real limit.
        1024
    }

    fn validate_options(&self, options: &Value) -> Result<(), FieldError> {
        LlmBatchOptions::parse(options).map(|_| ())
    }

    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome {
        let custom_id = item.key.clone();
        let fail = |status: Option<u16>, code: &str, message: String| {
            let mut r =
                json!({"custom_id": custom_id, "error": {"code": code, "message": message}});
            if let Some(s) = status {
                r["status_code"] = json!(s);
            }
            r
        };
        let opts = match LlmBatchOptions::parse(&ctx.options) {
            Ok(o) => o,
            Err(e) => {
                let m = format!("{}: {}", e.field, e.message);
                return ItemOutcome::failed(fail(None, "invalid_options", m.clone()), m);
            }
        };
        let body = item.payload.get("body").cloned().unwrap_or(Value::Null);
        if let Err(e) = check_body(&body) {
            let m = format!("body.{}: {}", e.field, e.message);
            return ItemOutcome::failed(fail(Some(400), "invalid_request", m.clone()), m);
        }
        let model = body["model"].as_str().unwrap_or_default().to_string();
        let (url, api) = self.endpoint(&opts, &model);
        let client = self.client(&opts, url, api);
        let sent = match client.protocol(&ctx.cancel).await {
            Ok(api) => {
                let request = match api {
                    LlmApi::Ollama => ollama_request(&body),
                    LlmApi::OpenAi | LlmApi::Auto => body,
                };
                client
                    .chat_raw(api, &request, &model, &ctx.cancel)
                    .await
                    .map(|r| (api, r))
            }
            Err(e) => Err(e),
        };
        match sent {
            Ok((api, (response, usage))) => ItemOutcome::succeeded(json!({
                "custom_id": custom_id,
                "status_code": 200,
                "api": api.name(),
                "response": response,
                "usage": usage_json(usage),
            })),
            Err(LlmError::Cancelled) => {
                ItemOutcome::cancelled(fail(None, "cancelled", "cancelled".into()))
            }
            Err(e) => {
                let (status, code) = error_code(&e);
                let message = e.to_string();
                let result = fail(status, code, message.clone());
                if e.is_transient() || matches!(e, LlmError::Timeout { .. }) {
                    ItemOutcome::error(result, message)
                } else {
                    ItemOutcome::failed(result, message)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_models() {
        assert!(glob_matches("llama3*", "llama3.2"));
        assert!(glob_matches("qwen2.5-coder:*", "qwen2.5-coder:7b"));
        assert!(!glob_matches("qwen2.5-coder:*", "qwen2.5:7b"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
    }

    #[test]
    fn routes_parse_with_their_api() {
        let r = parse_route("qwen*=127.0.0.1:8080,api=openai").unwrap();
        assert_eq!(r.pattern, "qwen*");
        assert_eq!(r.url, "http://127.0.0.1:8080");
        assert_eq!(r.api, Some(LlmApi::OpenAi));
        assert!(parse_route("noequals").is_err());
        assert!(parse_route("=http://x").is_err());
        assert!(parse_route("m=http://x,api=grpc").is_err());
        assert!(parse_route("m=ftp://x").is_err());
    }

    #[test]
    fn bodies_are_checked_naming_the_field() {
        let ok = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        assert!(check_body(&ok).is_ok());
        let field = |b: Value| check_body(&b).unwrap_err().field;
        assert_eq!(field(json!({"messages": [{"role": "user"}]})), "model");
        assert_eq!(field(json!({"model": "m"})), "messages");
        assert_eq!(field(json!({"model": "m", "messages": []})), "messages");
        assert_eq!(
            field(json!({"model": "m", "messages": [{"content": "x"}]})),
            "messages[0].role"
        );
        assert_eq!(
            field(json!({"model": "m", "messages": [{"role": "user"}], "stream": true})),
            "stream"
        );
    }

    #[test]
    fn openai_bodies_map_onto_ollama() {
        let body = json!({"model": "llama3.2", "temperature": 0.1, "max_tokens": 20, "seed": 3,
            "response_format": {"type": "json_object"}, "n": 1,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]});
        let o = ollama_request(&body);
        assert_eq!(o["model"], "llama3.2");
        assert_eq!(o["stream"], false);
        assert_eq!(o["format"], "json");
        assert_eq!(o["options"]["num_predict"], 20);
        assert_eq!(o["options"]["temperature"], 0.1);
        assert_eq!(o["options"]["seed"], 3);
        assert_eq!(o["messages"][0]["content"], "ab");
        assert!(o.get("n").is_none());
    }

    #[test]
    fn ollama_answers_read_as_chat_completions() {
        let v = json!({"model": "m", "message": {"role": "assistant", "content": "hi"},
                       "done_reason": "stop", "prompt_eval_count": 7, "eval_count": 2});
        let c = ollama_to_openai(&v, "r1");
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["choices"][0]["message"]["content"], "hi");
        assert_eq!(c["usage"]["prompt_tokens"], 7);
        assert_eq!(c["usage"]["total_tokens"], 9);
    }

    #[test]
    fn options_are_checked() {
        assert_eq!(
            LlmBatchOptions::parse(&json!({"api": "grpc"}))
                .unwrap_err()
                .field,
            "api"
        );
        assert_eq!(
            LlmBatchOptions::parse(&json!({"llm_retries": 11}))
                .unwrap_err()
                .field,
            "llm_retries"
        );
        let o =
            LlmBatchOptions::parse(&json!({"llm_url": "127.0.0.1:9", "api": "openai"})).unwrap();
        assert_eq!(o.llm_url.as_deref(), Some("http://127.0.0.1:9"));
    }
}
