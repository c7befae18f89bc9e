//! A chat client for local LLM servers: Ollama's native `POST /api/chat` and the
//! OpenAI-compatible `POST /v1/chat/completions` that Ollama, llama.cpp's server and vLLM
//! speak.
//!
//! One [`LlmClient`] per endpoint and task. Every request holds a permit of its
//! endpoint's semaphore while it is on the wire (not while it backs off), so all tasks of
//! all jobs together never have more than the configured number of requests at one
//! server. Connection failures and 5xx answers are retried with exponential backoff;
//! everything else (404 for an unknown model, a body that is not JSON) fails at once with
//! a message that names the server. Cancellation drops the request in flight, which closes
//! its connection.

use super::ratelimit::{estimate_tokens, LlmLimit, RateLimiter, DEFAULT_429_PAUSE};
use super::LlmApi;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Largest answer body read from an LLM server; a request whose answer is longer fails.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The task, tool results in text mode, and the validator's feedback.
    User,
    /// The model.
    Assistant,
    /// The result of a native tool call.
    Tool,
}

impl Role {
    /// The protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// One tool call, native or parsed from text.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    /// The server's id for it (OpenAI), or one made up for it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// Its arguments: normally an object; a string when the model sent JSON that does not
    /// parse (the tool then says so).
    pub arguments: Value,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// Native tool calls of an assistant message.
    pub tool_calls: Vec<ToolCall>,
    /// For a tool result: the call it answers (OpenAI needs the id, Ollama the name).
    pub answers: Option<(String, String)>,
}

impl Message {
    /// A message with text only.
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            answers: None,
        }
    }

    /// The result of native tool call `call`.
    pub fn tool_result(call: &ToolCall, content: impl Into<String>) -> Self {
        Message {
            role: Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            answers: Some((call.id.clone(), call.name.clone())),
        }
    }
}

/// A tool offered to the model.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    /// Its name.
    pub name: &'static str,
    /// What it does, for the model.
    pub description: &'static str,
    /// JSON schema of its arguments.
    pub parameters: Value,
}

/// One chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest<'a> {
    /// The model, e.g. `qwen2.5-coder:7b`.
    pub model: &'a str,
    /// The conversation so far.
    pub messages: &'a [Message],
    /// Tools offered natively; empty when the model is to write calls as text.
    pub tools: &'a [ToolSpec],
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Extra settings: Ollama's `options` object, or extra top-level fields of an
    /// OpenAI request (`top_p`, `max_tokens`, `seed`, …).
    pub options: &'a Map<String, Value>,
    /// Ollama's `keep_alive` (how long the model stays loaded), e.g. `"10m"` or `-1`.
    pub keep_alive: Option<&'a Value>,
}

/// Tokens a request used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
}

impl std::ops::AddAssign for Usage {
    fn add_assign(&mut self, other: Usage) {
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
    }
}

/// The model's answer.
#[derive(Debug, Clone)]
pub struct ChatReply {
    /// The assistant message.
    pub message: Message,
    /// Its token counts.
    pub usage: Usage,
}

/// Why a chat request failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    /// No connection could be made (nothing listening, DNS, refused).
    #[error("cannot reach LLM at {url}: {detail}")]
    Unreachable {
        /// The endpoint's base URL.
        url: String,
        /// The connection error.
        detail: String,
    },
    /// The connection broke before a whole answer came.
    #[error("the connection to the LLM at {url} failed: {detail}")]
    Connection {
        /// The endpoint's base URL.
        url: String,
        /// The error.
        detail: String,
    },
    /// The server does not have the model.
    #[error("model '{model}' is not available at {url}: {detail}")]
    UnknownModel {
        /// The model asked for.
        model: String,
        /// The endpoint's base URL.
        url: String,
        /// The server's own words.
        detail: String,
    },
    /// The model (or server) cannot take native tools.
    #[error("model '{model}' at {url} does not support native tool calls: {detail}")]
    ToolsUnsupported {
        /// The model asked for.
        model: String,
        /// The endpoint's base URL.
        url: String,
        /// The server's own words.
        detail: String,
    },
    /// Any other error status.
    #[error("LLM at {url} answered HTTP {status}: {detail}")]
    Status {
        /// The endpoint's base URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        detail: String,
    },
    /// No whole answer within the request timeout.
    #[error("LLM at {url} did not answer within {seconds:.0}s")]
    Timeout {
        /// The endpoint's base URL.
        url: String,
        /// The timeout.
        seconds: f64,
    },
    /// The answer was not what the protocol promises.
    #[error("LLM at {url} sent an answer that is not a valid {api} chat response: {detail}")]
    BadAnswer {
        /// The endpoint's base URL.
        url: String,
        /// The protocol expected.
        api: &'static str,
        /// What was wrong, with the start of the body.
        detail: String,
    },
    /// The server refused the request for its rate limit (HTTP 429) more often than a
    /// request waits out ([`MAX_RATE_LIMIT_WAITS`]).
    #[error("LLM at {url} answered HTTP 429 (rate limited): {detail}")]
    RateLimited {
        /// The endpoint's base URL.
        url: String,
        /// Seconds its `Retry-After` asked for, when it sent a readable one.
        retry_after: Option<f64>,
        /// The server's message.
        detail: String,
    },
    /// The item was cancelled.
    #[error("cancelled")]
    Cancelled,
}

/// How many 429 answers one request waits out (each pausing its endpoint for the
/// answer's `Retry-After`) before it fails as [`LlmError::RateLimited`]; they do not use
/// the request's retries.
pub const MAX_RATE_LIMIT_WAITS: u32 = 30;

impl LlmError {
    /// Whether trying again may help: connection trouble and server errors.
    pub fn is_transient(&self) -> bool {
        match self {
            LlmError::Unreachable { .. }
            | LlmError::Connection { .. }
            | LlmError::RateLimited { .. } => true,
            LlmError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// How failed requests are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub base: Duration,
    /// Longest delay.
    pub cap: Duration,
}

impl RetryPolicy {
    /// The delay before retry `attempt` (0 for the first): `base · 2^attempt`, capped,
    /// times a jitter factor in [0.75, 1.25) so tasks that failed together do not all come
    /// back together. `unit` is a number in [0, 1) that picks the jitter.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        let d = exp.min(self.cap).mul_f64(0.75 + 0.5 * unit.clamp(0.0, 1.0));
        d.min(self.cap)
    }
}

/// The HTTP client every LLM-calling processor uses: one connection pool for all endpoints.
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("batchforge/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// Concurrency limits per endpoint, shared by every task of every job.
#[derive(Debug)]
pub struct EndpointLimits {
    per_endpoint: usize,
    semaphores: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Requests and tokens per minute (`--llm-limit`) and 429 pauses.
    rates: Arc<RateLimiter>,
}

impl EndpointLimits {
    /// At most `per_endpoint` requests in flight at each base URL.
    pub fn new(per_endpoint: usize) -> Self {
        EndpointLimits {
            per_endpoint: per_endpoint.max(1),
            semaphores: Mutex::new(HashMap::new()),
            rates: Arc::new(RateLimiter::default()),
        }
    }

    /// Enforces `limits` (see [`super::ratelimit`]) for every client made from these limits.
    pub fn with_rates(mut self, limits: Vec<LlmLimit>) -> Self {
        self.rates = Arc::new(RateLimiter::new(limits));
        self
    }

    /// The rate limiter every request of these endpoints goes through.
    pub fn rates(&self) -> Arc<RateLimiter> {
        self.rates.clone()
    }

    /// The semaphore of `url`.
    pub fn get(&self, url: &str) -> Arc<Semaphore> {
        let mut map = self.semaphores.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(url.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_endpoint)))
            .clone()
    }
}

/// A client of one endpoint.
#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    base_url: String,
    api: LlmApi,
    api_key: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
    permits: Arc<Semaphore>,
    rates: Arc<RateLimiter>,
}

impl LlmClient {
    /// A client of `base_url` (normalized, see [`super::normalize_url`]).
    pub fn new(
        http: reqwest::Client,
        base_url: String,
        api: LlmApi,
        api_key: Option<String>,
        timeout: Duration,
        retry: RetryPolicy,
        permits: Arc<Semaphore>,
    ) -> Self {
        LlmClient {
            http,
            base_url,
            api,
            api_key,
            timeout,
            retry,
            permits,
            rates: Arc::new(RateLimiter::default()),
        }
    }

    /// Sends every request through `rates` (the engine's `--llm-limit`s and 429 pauses).
    pub fn with_rates(mut self, rates: Arc<RateLimiter>) -> Self {
        self.rates = rates;
        self
    }

    /// The base URL, as errors name it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL chat requests go to (for `auto`, the protocol found at first contact, else
    /// Ollama's). A base that already ends in `/v1` (OpenAI) or `/api` (Ollama) is not
    /// given the segment twice.
    pub fn chat_url(&self) -> String {
        let api = match self.api {
            LlmApi::Auto => known_protocol(&self.base_url).unwrap_or(LlmApi::Ollama),
            api => api,
        };
        self.url_for(api)
    }

    fn url_for(&self, api: LlmApi) -> String {
        let base = self.base_url.trim_end_matches('/');
        match api {
            LlmApi::Ollama | LlmApi::Auto if base.ends_with("/api") => format!("{base}/chat"),
            LlmApi::Ollama | LlmApi::Auto => format!("{base}/api/chat"),
            LlmApi::OpenAi if base.ends_with("/v1") => format!("{base}/chat/completions"),
            LlmApi::OpenAi => format!("{base}/v1/chat/completions"),
        }
    }

    /// The protocol this client speaks: the configured one, or for `auto` the one found at
    /// first contact with the endpoint (remembered per base URL for the process): Ollama
    /// when `GET /api/version` answers 200, the OpenAI protocol when it answers anything
    /// else. A base ending in `/v1` is OpenAI without asking. Connection trouble is an
    /// error (transient, retried like a chat request) and nothing is remembered.
    pub async fn protocol(&self, cancel: &CancellationToken) -> Result<LlmApi, LlmError> {
        if self.api != LlmApi::Auto {
            return Ok(self.api);
        }
        if let Some(api) = known_protocol(&self.base_url) {
            return Ok(api);
        }
        let base = self.base_url.trim_end_matches('/');
        let api = if base.ends_with("/v1") {
            LlmApi::OpenAi
        } else {
            let probe = format!(
                "{}/version",
                self.url_for(LlmApi::Ollama).trim_end_matches("/chat")
            );
            let mut attempt = 0;
            loop {
                let sent = tokio::select! {
                    _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                    r = self.http.get(&probe).timeout(Duration::from_secs(30)).send() => r,
                };
                match sent {
                    Ok(r) if r.status().is_success() => break LlmApi::Ollama,
                    Ok(r) if r.status().is_server_error() && attempt < self.retry.max_retries => {}
                    Ok(_) => break LlmApi::OpenAi,
                    Err(e) => {
                        let e = self.transport_error(e);
                        if attempt >= self.retry.max_retries {
                            return Err(e);
                        }
                    }
                }
                let delay = self.retry.delay(attempt, jitter_unit());
                attempt += 1;
                tokio::select! {
                    _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        };
        log::info!(
            "LLM at {} speaks the {} protocol",
            self.base_url,
            api.name()
        );
        protocols()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.base_url.clone(), api);
        Ok(api)
    }

    /// Sends one chat request, retrying transient failures, until an answer, a permanent
    /// error, or `cancel`.
    pub async fn chat(
        &self,
        req: &ChatRequest<'_>,
        cancel: &CancellationToken,
    ) -> Result<ChatReply, LlmError> {
        let api = self.protocol(cancel).await?;
        let body = match api {
            LlmApi::Ollama => ollama_body(req),
            LlmApi::OpenAi | LlmApi::Auto => openai_body(req),
        };
        let (value, raw) = self.send(api, &body, req.model, cancel).await?;
        let parsed = match api {
            LlmApi::Ollama => parse_ollama(&value),
            LlmApi::OpenAi | LlmApi::Auto => parse_openai(&value),
        };
        parsed.map_err(|detail| LlmError::BadAnswer {
            url: self.base_url.clone(),
            api: api.name(),
            detail: format!("{detail}: {}", snippet(&raw)),
        })
    }

    /// Sends `body` as it is to the chat URL of this client's protocol, retrying transient
    /// failures like [`LlmClient::chat`], and returns the answer's JSON with its token
    /// counts (OpenAI's `usage`, or Ollama's `prompt_eval_count`/`eval_count`). The one
    /// place `batch_llm` requests go out: rate limits and token budgets belong here.
    /// `api` is the protocol the body is written in (see [`LlmClient::protocol`]).
    pub async fn chat_raw(
        &self,
        api: LlmApi,
        body: &Value,
        model: &str,
        cancel: &CancellationToken,
    ) -> Result<(Value, Usage), LlmError> {
        let (value, _) = self.send(api, body, model, cancel).await?;
        let usage = usage_of(&value);
        Ok((value, usage))
    }

    /// The request loop: attempts with backoff between transient failures; a 429 is sent
    /// again once the limiter's pause for it is over, without using a retry.
    async fn send(
        &self,
        api: LlmApi,
        body: &Value,
        model: &str,
        cancel: &CancellationToken,
    ) -> Result<(Value, Vec<u8>), LlmError> {
        let estimate = estimate_tokens(body, 0);
        let body = serde_json::to_vec(body).expect("a JSON value serializes");
        let estimate = estimate + (body.len() as u64).div_ceil(4);
        let url = self.url_for(api);
        let mut attempt = 0;
        let mut refusals = 0;
        loop {
            let result = tokio::select! {
                _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                r = self.attempt(api, &url, &body, model, estimate) => r,
            };
            match result {
                Err(e @ LlmError::RateLimited { .. }) if refusals < MAX_RATE_LIMIT_WAITS => {
                    refusals += 1;
                    crate::metrics::llm_rate_limited(model);
                    log::warn!("{e}; waiting it out ({refusals}/{MAX_RATE_LIMIT_WAITS})");
                }
                Err(e) if e.is_transient() && attempt < self.retry.max_retries => {
                    let delay = self.retry.delay(attempt, jitter_unit());
                    attempt += 1;
                    log::warn!(
                        "{e}; retry {attempt}/{} in {:.1}s",
                        self.retry.max_retries,
                        delay.as_secs_f64()
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(LlmError::Cancelled),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Ok(answer) => {
                    crate::metrics::llm_answered(model, usage_of(&answer.0));
                    return Ok(answer);
                }
                other => return other,
            }
        }
    }

    /// One request: an in-flight permit of the endpoint, then room under its rate limits
    /// (charged the estimate, corrected to the answer's usage), then the exchange.
    async fn attempt(
        &self,
        api: LlmApi,
        url: &str,
        body: &[u8],
        model: &str,
        estimate: u64,
    ) -> Result<(Value, Vec<u8>), LlmError> {
        // Held while the request is on the wire; dropped (even by cancellation) after.
        // Taken before the rate limit, so a request is charged when it really goes out.
        let _permit = self
            .permits
            .acquire()
            .await
            .expect("endpoint semaphores are never closed");
        let charge = self.rates.acquire(&self.base_url, model, estimate).await;
        let result = self.exchange(api, url, body, model).await;
        match &result {
            Ok((value, _)) => self.rates.settle(&charge, usage_of(value)),
            Err(LlmError::RateLimited { retry_after, .. }) => {
                let pause = retry_after
                    .map(Duration::from_secs_f64)
                    .unwrap_or(DEFAULT_429_PAUSE);
                self.rates.refused(&self.base_url, &charge, pause);
            }
            // Other failures keep their estimate: the server may have done the work.
            Err(_) => {}
        }
        result
    }

    async fn exchange(
        &self,
        api: LlmApi,
        url: &str,
        body: &[u8],
        model: &str,
    ) -> Result<(Value, Vec<u8>), LlmError> {
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout)
            .body(body.to_vec());
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let too_large = || LlmError::BadAnswer {
            url: self.base_url.clone(),
            api: api.name(),
            detail: format!(
                "the answer is larger than the {MAX_RESPONSE_BYTES}-byte limit; it was not read"
            ),
        };
        if response
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE_BYTES as u64)
        {
            return Err(too_large());
        }
        // Read in chunks, never more than the limit.
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(e))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            let detail = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| error_message(&v).map(str::to_string))
                .unwrap_or_else(|| snippet(&bytes));
            return Err(LlmError::RateLimited {
                url: self.base_url.clone(),
                retry_after: super::ratelimit::retry_after(retry_after.as_deref())
                    .map(|d| d.as_secs_f64()),
                detail,
            });
        }
        if !status.is_success() {
            return Err(self.status_error(status.as_u16(), &bytes, model));
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| LlmError::BadAnswer {
            url: self.base_url.clone(),
            api: api.name(),
            detail: format!("the body is not JSON ({e}): {}", snippet(&bytes)),
        })?;
        // Ollama reports some failures as `{"error": …}` with a 200.
        if value.get("message").is_none() && value.get("choices").is_none() {
            if let Some(message) = error_message(&value) {
                return Err(classify_message(
                    &self.base_url,
                    model,
                    status.as_u16(),
                    message,
                ));
            }
        }
        Ok((value, bytes))
    }

    fn transport_error(&self, e: reqwest::Error) -> LlmError {
        let url = self.base_url.clone();
        if e.is_timeout() {
            return LlmError::Timeout {
                url,
                seconds: self.timeout.as_secs_f64(),
            };
        }
        let detail = error_chain(&e);
        if e.is_connect() {
            LlmError::Unreachable { url, detail }
        } else {
            LlmError::Connection { url, detail }
        }
    }

    fn status_error(&self, status: u16, body: &[u8], model: &str) -> LlmError {
        let text = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| error_message(&v).map(str::to_string))
            .unwrap_or_else(|| snippet(body));
        classify_message(&self.base_url, model, status, &text)
    }
}

/// The protocols found per endpoint (base URL), for the process.
fn protocols() -> &'static Mutex<HashMap<String, LlmApi>> {
    static PROTOCOLS: std::sync::OnceLock<Mutex<HashMap<String, LlmApi>>> =
        std::sync::OnceLock::new();
    PROTOCOLS.get_or_init(Default::default)
}

/// The protocol found at `base_url`, if it was asked already.
fn known_protocol(base_url: &str) -> Option<LlmApi> {
    protocols()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(base_url)
        .copied()
}

fn classify_message(url: &str, model: &str, status: u16, text: &str) -> LlmError {
    let lower = text.to_ascii_lowercase();
    let (url, model, detail) = (url.to_string(), model.to_string(), text.to_string());
    if lower.contains("does not support tools")
        || lower.contains("tools param requires")
        || lower.contains("tool calling is not supported")
        || lower.contains("\"auto\" tool choice requires")
    {
        return LlmError::ToolsUnsupported { model, url, detail };
    }
    let about_model = lower.contains("model") || lower.contains(&model.to_ascii_lowercase());
    if status == 404 && about_model {
        return LlmError::UnknownModel { model, url, detail };
    }
    LlmError::Status {
        url,
        status,
        detail,
    }
}

/// The message of an error body: Ollama's `{"error": "…"}`, OpenAI's
/// `{"error": {"message": "…"}}`, vLLM's `{"message": "…"}`, FastAPI's `{"detail": "…"}`.
fn error_message(v: &Value) -> Option<&str> {
    match v.get("error") {
        Some(Value::String(s)) => return Some(s),
        Some(Value::Object(o)) => {
            if let Some(Value::String(s)) = o.get("message") {
                return Some(s);
            }
        }
        _ => {}
    }
    if v.get("object").and_then(Value::as_str) == Some("error") {
        return v.get("message").and_then(Value::as_str);
    }
    v.get("detail").and_then(Value::as_str)
}

/// The first bytes of a body, as text, for messages.
fn snippet(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    // reqwest's own message is generic ("error sending request"); the cause says why.
    let mut parts = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    parts.join(": ")
}

fn jitter_unit() -> f64 {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0
}

fn tools_json(tools: &[ToolSpec]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": t.parameters,
                    }
                })
            })
            .collect(),
    )
}

/// The body of an Ollama `/api/chat` request.
pub fn ollama_body(req: &ChatRequest<'_>) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let mut o = json!({"role": m.role.as_str(), "content": m.content});
            if !m.tool_calls.is_empty() {
                o["tool_calls"] = Value::Array(
                    m.tool_calls
                        .iter()
                        .map(|c| json!({"function": {"name": c.name, "arguments": c.arguments}}))
                        .collect(),
                );
            }
            if let Some((_, name)) = &m.answers {
                o["tool_name"] = json!(name);
            }
            o
        })
        .collect();
    let mut body = json!({"model": req.model, "messages": messages, "stream": false});
    if !req.tools.is_empty() {
        body["tools"] = tools_json(req.tools);
    }
    let mut options = req.options.clone();
    if let Some(t) = req.temperature {
        options.insert("temperature".into(), json!(t));
    }
    if !options.is_empty() {
        body["options"] = Value::Object(options);
    }
    if let Some(k) = req.keep_alive {
        body["keep_alive"] = k.clone();
    }
    body
}

/// The body of an OpenAI `/v1/chat/completions` request.
pub fn openai_body(req: &ChatRequest<'_>) -> Value {
    let messages: Vec<Value> = req
        .messages
        .iter()
        .map(|m| {
            let mut o = json!({"role": m.role.as_str(), "content": m.content});
            if !m.tool_calls.is_empty() {
                o["tool_calls"] = Value::Array(
                    m.tool_calls
                        .iter()
                        .map(|c| {
                            let arguments = match &c.arguments {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": arguments}})
                        })
                        .collect(),
                );
            }
            if let Some((id, _)) = &m.answers {
                o["tool_call_id"] = json!(id);
            }
            o
        })
        .collect();
    let mut body = Map::new();
    // Extra options first, so they cannot replace the fields below.
    for (k, v) in req.options {
        body.insert(k.clone(), v.clone());
    }
    body.insert("model".into(), json!(req.model));
    body.insert("messages".into(), Value::Array(messages));
    body.insert("stream".into(), json!(false));
    if !req.tools.is_empty() {
        body.insert("tools".into(), tools_json(req.tools));
    }
    if let Some(t) = req.temperature {
        body.insert("temperature".into(), json!(t));
    }
    Value::Object(body)
}

/// Arguments as the protocol sent them: an object, or a JSON string of one.
fn arguments_of(v: Option<&Value>) -> Value {
    match v {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) if s.trim().is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(other) => other.clone(),
    }
}

fn parse_tool_calls(calls: Option<&Value>) -> Result<Vec<ToolCall>, String> {
    let Some(calls) = calls.filter(|c| !c.is_null()) else {
        return Ok(Vec::new());
    };
    let Value::Array(calls) = calls else {
        return Err("tool_calls is not an array".into());
    };
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let f = c.get("function").ok_or("a tool call has no function")?;
            let name = f
                .get("name")
                .and_then(Value::as_str)
                .ok_or("a tool call has no function name")?;
            let id = c
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| format!("call_{i}"));
            Ok(ToolCall {
                id,
                name: name.to_string(),
                arguments: arguments_of(f.get("arguments")),
            })
        })
        .collect()
}

fn assistant_message(m: &Value) -> Result<Message, String> {
    if !m.is_object() {
        return Err("the message is not an object".into());
    }
    let content = match m.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        // Some servers send content parts.
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        Some(_) => return Err("the message content is not text".into()),
    };
    Ok(Message {
        role: Role::Assistant,
        content,
        tool_calls: parse_tool_calls(m.get("tool_calls"))?,
        answers: None,
    })
}

fn count(v: &Value, key: &str) -> u64 {
    v.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Reads an Ollama `/api/chat` answer.
pub fn parse_ollama(v: &Value) -> Result<ChatReply, String> {
    let message = v.get("message").ok_or("no 'message' in the answer")?;
    Ok(ChatReply {
        message: assistant_message(message)?,
        usage: Usage {
            prompt_tokens: count(v, "prompt_eval_count"),
            completion_tokens: count(v, "eval_count"),
        },
    })
}

/// The token counts of an answer of either protocol: OpenAI's `usage`, Ollama's
/// `prompt_eval_count` and `eval_count`.
pub fn usage_of(v: &Value) -> Usage {
    match v.get("usage") {
        Some(u) if u.is_object() => Usage {
            prompt_tokens: count(u, "prompt_tokens"),
            completion_tokens: count(u, "completion_tokens"),
        },
        _ => Usage {
            prompt_tokens: count(v, "prompt_eval_count"),
            completion_tokens: count(v, "eval_count"),
        },
    }
}

/// Reads an OpenAI `/v1/chat/completions` answer.
pub fn parse_openai(v: &Value) -> Result<ChatReply, String> {
    let choice = v
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
        .ok_or("no 'choices' in the answer")?;
    let message = choice.get("message").ok_or("the choice has no 'message'")?;
    let usage = v.get("usage").cloned().unwrap_or(Value::Null);
    Ok(ChatReply {
        message: assistant_message(message)?,
        usage: Usage {
            prompt_tokens: count(&usage, "prompt_tokens"),
            completion_tokens: count(&usage, "completion_tokens"),
        },
    })
}

#[cfg(test)]
#[path = "llm_tests.rs"]
mod tests;
