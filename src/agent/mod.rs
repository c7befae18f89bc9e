//! The coding agent behind `batch_agent_tasks`: an LLM (Ollama or any OpenAI-compatible
//! server) that works on one task with workspace tools until a check command passes.
//!
//! - [`llm`]: the chat client for both protocols, with timeouts, retries and a per-endpoint
//!   concurrency limit (one Ollama host serializes its work; flooding it only makes every
//!   request time out).
//! - [`ratelimit`]: requests and tokens per minute per endpoint or model (`--llm-limit`),
//!   and the pause a 429 imposes, shared by every LLM kind.
//! - [`parse`]: tool calls a model wrote as JSON in its text instead of calling natively.
//! - [`guardrail`]: what a tool call may not do (destructive commands, system paths,
//!   leaving the workspace, git beyond local reading and committing, `.git`, changes in
//!   read-only mode), checked before every call. An argv and pattern check, advisory
//!   defence in depth: not a sandbox.
//! - [`tools`]: the workspace tools themselves (`list_files`, `read_file`, `write_file`,
//!   `run_command`, `finish`), confined like the MCP server's.
//! - [`workspace`]: one isolated workspace per task (a git worktree, a copy, or the shared
//!   root) and the patch of what the task changed.
//! - [`session`]: the loop: Coder and Reviewer take turns until the check passes or the
//!   loops are spent.

pub mod guardrail;
pub mod llm;
pub mod parse;
pub mod ratelimit;
pub mod session;
pub mod tools;
pub mod workspace;

use std::path::PathBuf;
use std::time::Duration;

/// The Ollama default, used when neither a flag nor `OLLAMA_HOST` names a server.
pub const DEFAULT_LLM_URL: &str = "http://127.0.0.1:11434";

/// Which wire protocol an LLM endpoint speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LlmApi {
    /// Found out at first contact and remembered per endpoint: Ollama when it answers
    /// `GET /api/version`, else the OpenAI protocol (llama.cpp's server, vLLM).
    #[default]
    Auto,
    /// Ollama's native `POST /api/chat`.
    Ollama,
    /// `POST /v1/chat/completions` (Ollama, llama.cpp's server, vLLM, LM Studio, OpenAI).
    OpenAi,
}

impl LlmApi {
    /// The name used in flags and job options.
    pub fn name(self) -> &'static str {
        match self {
            LlmApi::Auto => "auto",
            LlmApi::Ollama => "ollama",
            LlmApi::OpenAi => "openai",
        }
    }
}

impl std::str::FromStr for LlmApi {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(LlmApi::Auto),
            "ollama" => Ok(LlmApi::Ollama),
            "openai" | "openai-compatible" => Ok(LlmApi::OpenAi),
            other => Err(format!(
                "'{other}' is not an LLM API (auto, ollama or openai)"
            )),
        }
    }
}

/// Engine-wide agent settings; a job may override the endpoint with its own options.
/// Its `Debug` shows the API key as `***`.
#[derive(Clone)]
pub struct AgentConfig {
    /// Base URL of the LLM server, e.g. `http://127.0.0.1:11434` (see [`normalize_url`]).
    pub llm_url: String,
    /// The protocol it speaks.
    pub api: LlmApi,
    /// Sent as `Authorization: Bearer …` when set (vLLM `--api-key`, hosted APIs).
    pub api_key: Option<String>,
    /// Chat requests in flight at once per endpoint (base URL), across all jobs.
    pub max_concurrent_requests_per_endpoint: usize,
    /// How long one chat request may take, body included.
    pub request_timeout: Duration,
    /// Retries of a request that could not connect or got a 5xx answer.
    pub max_retries: u32,
    /// First retry delay; doubles per retry, with jitter, up to 30 s.
    pub retry_backoff: Duration,
    /// Where task worktrees and copies live (default: `$TMPDIR/batchforge-agent`).
    pub scratch_dir: Option<PathBuf>,
    /// `batch_llm`'s per-model routes (`--llm-route`), first match wins.
    pub routes: Vec<crate::processors::llm_batch::LlmRoute>,
    /// Requests and tokens per minute per endpoint or model (`--llm-limit`), for every
    /// LLM kind.
    pub rate_limits: Vec<ratelimit::LlmLimit>,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("llm_url", &crate::secrets::mask_url(&self.llm_url))
            .field("api", &self.api)
            .field("api_key", &crate::secrets::debug_option(&self.api_key))
            .field(
                "max_concurrent_requests_per_endpoint",
                &self.max_concurrent_requests_per_endpoint,
            )
            .field("request_timeout", &self.request_timeout)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff", &self.retry_backoff)
            .field("scratch_dir", &self.scratch_dir)
            .field("routes", &self.routes)
            .finish()
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            llm_url: DEFAULT_LLM_URL.to_string(),
            api: LlmApi::Auto,
            api_key: None,
            max_concurrent_requests_per_endpoint: 2,
            request_timeout: Duration::from_secs(600),
            max_retries: 3,
            retry_backoff: Duration::from_millis(500),
            scratch_dir: None,
            routes: Vec::new(),
            rate_limits: Vec::new(),
        }
    }
}

/// Turns what users put in `OLLAMA_HOST` or `--llm-url` into a base URL: adds `http://`
/// to a bare `host:port`, maps the listen-everywhere address `0.0.0.0` to loopback (as
/// Ollama's own client does) and drops a trailing slash.
pub fn normalize_url(raw: &str) -> Result<String, String> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err("the LLM URL is empty".into());
    }
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let mut url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| format!("'{raw}' is not a valid URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("'{raw}' must be an http:// or https:// URL"));
    }
    if url.host_str().is_none() {
        return Err(format!("'{raw}' has no host"));
    }
    if url.host_str() == Some("0.0.0.0") {
        url.set_host(Some("127.0.0.1"))
            .map_err(|e| format!("'{raw}': {e}"))?;
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{raw}' must not have a query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_urls_are_normalized_like_ollama_host() {
        assert_eq!(
            normalize_url("127.0.0.1:11434").unwrap(),
            "http://127.0.0.1:11434"
        );
        assert_eq!(
            normalize_url("0.0.0.0:11434").unwrap(),
            "http://127.0.0.1:11434"
        );
        assert_eq!(
            normalize_url("https://llm.example:8443/v1/").unwrap(),
            "https://llm.example:8443/v1"
        );
        assert_eq!(
            normalize_url("http://localhost:8080").unwrap(),
            "http://localhost:8080"
        );
        assert!(normalize_url("").is_err());
        assert!(normalize_url("ftp://x").is_err());
        assert!(normalize_url("http://x/?a=1").is_err());
        assert_eq!("OpenAI".parse::<LlmApi>().unwrap(), LlmApi::OpenAi);
        assert!("grpc".parse::<LlmApi>().is_err());
    }
}
