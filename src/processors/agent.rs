//! `batch_agent_tasks`: each item is a coding task (`{id, description}`) worked on by the
//! LLM agent of [`crate::agent`] in a workspace of its own, until the job's check passes
//! or its loops are spent.
//!
//! Result per task: `{task_id, status, messages, validator_ok, blocked, loops,
//! files_changed, patch, usage: {prompt_tokens, completion_tokens}, duration_seconds}`,
//! plus `error` when it failed, `patch_note` (why there is no patch, or how to read it)
//! and `patch_encoding: "base64"` when the diff is not UTF-8, `validator` (the last check:
//! exit code and output, cut to 64 KiB with `output_truncated`), `workspace_mode` and the
//! `models` used. `status` is `completed` or `failed`, or a third value, `cancelled`,
//! when the job was cancelled while the task ran (the item is then cancelled too, not
//! failed). A task that fails (check never passed, LLM unreachable, unknown model) is a
//! failed item that still carries everything above. `messages` is bounded (the first two
//! and the latest, each cut; `… N messages omitted` says what is left out).
//!
//! Job options, all checked at submit (a bad one is a 422 naming it): `coder_model`,
//! `reviewer_model`, `max_loops` (1..=50), `max_steps` (replies per loop, 1..=200),
//! `check_command`, `apply_changes`, `workspace_mode` (`worktree`|`copy`|`shared`),
//! `llm_url`, `api` (`ollama`|`openai`), `temperature`, `options`, `keep_alive`,
//! `timeout_seconds` (per command), `llm_timeout_seconds` (per LLM request),
//! `llm_retries`, `max_output_bytes`.

use crate::agent::llm::{EndpointLimits, LlmClient, RetryPolicy, Usage};
use crate::agent::session::{Ending, Session, Settings};
use crate::agent::tools::Workbench;
use crate::agent::workspace::{looks_like_git_repo, WorkspaceMode, Workspaces};
use crate::agent::{normalize_url, AgentConfig, LlmApi};
use crate::model::ItemOutcome;
use crate::processor::{FieldError, Item, ItemContext, Processor};
use crate::sandbox::spawn::{find_program, split_command, DEFAULT_MAX_OUTPUT_BYTES};
use crate::secrets::Secret;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kind this processor handles.
pub const KIND: &str = "batch_agent_tasks";
/// Default Coder model, as in the Python original.
pub const DEFAULT_CODER_MODEL: &str = "qwen2.5-coder:7b";
/// Default Reviewer model, as in the Python original.
pub const DEFAULT_REVIEWER_MODEL: &str = "llama3.2";
/// Default check.
pub const DEFAULT_CHECK_COMMAND: &str = "pytest -q";
/// Default Coder/Reviewer loops.
pub const DEFAULT_MAX_LOOPS: u32 = 3;
/// Most loops a job may ask for.
pub const MAX_LOOPS: u64 = 50;
/// Default model replies per loop.
pub const DEFAULT_MAX_STEPS: u32 = 20;
/// Most replies per loop a job may ask for.
pub const MAX_STEPS: u64 = 200;
/// Default timeout of each command (tool or check).
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_TIMEOUT_SECONDS: f64 = 86_400.0;
const MAX_OUTPUT_CAP: u64 = 16 * 1024 * 1024;
const MAX_RETRIES: u64 = 10;

/// A job's options, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentOptions {
    /// Model of the Coder.
    pub coder_model: String,
    /// Model of the Reviewer.
    pub reviewer_model: String,
    /// Coder/Reviewer turns at most.
    pub max_loops: u32,
    /// Model replies per turn at most.
    pub max_steps: u32,
    /// The check command.
    pub check_command: String,
    /// `false`: read-only tasks.
    pub apply_changes: bool,
    /// `None`: worktree in a git repository, else copy.
    pub workspace_mode: Option<WorkspaceMode>,
    /// Overrides the engine's LLM URL.
    pub llm_url: Option<String>,
    /// Overrides the engine's protocol.
    pub api: Option<LlmApi>,
    /// `llm_api_key`: sent as `Authorization: Bearer …` to the job's endpoint.
    pub llm_api_key: Option<Secret>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Extra model options.
    pub options: Map<String, Value>,
    /// Ollama's `keep_alive`.
    pub keep_alive: Option<Value>,
    /// Per command.
    pub command_timeout: Duration,
    /// Per LLM request; `None` takes the engine's.
    pub llm_timeout: Option<Duration>,
    /// Retries of a failed LLM request; `None` takes the engine's.
    pub llm_retries: Option<u32>,
    /// Output cap per command stream.
    pub max_output_bytes: usize,
}

fn string_opt(o: &Value, field: &str) -> Result<Option<String>, FieldError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => {
            Err(FieldError::new(field, "must not be empty"))
        }
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) => Err(FieldError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

fn int_opt(
    o: &Value,
    field: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, FieldError> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if range.contains(&n) => Ok(Some(n)),
            _ => Err(FieldError::new(
                field,
                format!(
                    "must be an integer from {} to {}, got {v}",
                    range.start(),
                    range.end()
                ),
            )),
        },
    }
}

fn seconds_opt(o: &Value, field: &str) -> Result<Option<Duration>, FieldError> {
    Ok(crate::model::options::seconds(o, field, MAX_TIMEOUT_SECONDS)?.map(Duration::from_secs_f64))
}

impl AgentOptions {
    /// Parses and checks a job's options; the error names the option.
    pub fn parse(o: &Value) -> Result<AgentOptions, FieldError> {
        let coder_model =
            string_opt(o, "coder_model")?.unwrap_or_else(|| DEFAULT_CODER_MODEL.into());
        let reviewer_model =
            string_opt(o, "reviewer_model")?.unwrap_or_else(|| DEFAULT_REVIEWER_MODEL.into());
        let max_loops = int_opt(o, "max_loops", 1..=MAX_LOOPS)?
            .map(|n| n as u32)
            .unwrap_or(DEFAULT_MAX_LOOPS);
        let max_steps = int_opt(o, "max_steps", 1..=MAX_STEPS)?
            .map(|n| n as u32)
            .unwrap_or(DEFAULT_MAX_STEPS);
        let check_command =
            string_opt(o, "check_command")?.unwrap_or_else(|| DEFAULT_CHECK_COMMAND.into());
        split_command(&check_command).map_err(|e| FieldError::new("check_command", e))?;
        let apply_changes = match o.get("apply_changes") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            // A JSONL submission's options come from a query string.
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(other) => {
                return Err(FieldError::new(
                    "apply_changes",
                    format!("must be true or false, got {other}"),
                ))
            }
        };
        let workspace_mode = match string_opt(o, "workspace_mode")? {
            None => None,
            Some(m) => Some(WorkspaceMode::parse(&m).ok_or_else(|| {
                FieldError::new(
                    "workspace_mode",
                    format!("'{m}' is not a workspace mode (worktree, copy or shared)"),
                )
            })?),
        };
        let llm_url = match string_opt(o, "llm_url")? {
            None => None,
            Some(u) => Some(normalize_url(&u).map_err(|e| FieldError::new("llm_url", e))?),
        };
        let api = match string_opt(o, "api")? {
            None => None,
            Some(a) => Some(a.parse::<LlmApi>().map_err(|e| FieldError::new("api", e))?),
        };
        let llm_api_key = string_opt(o, "llm_api_key")?.map(Secret::new);
        let temperature = match o.get("temperature") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_f64() {
                Some(t) if (0.0..=2.0).contains(&t) => Some(t),
                _ => {
                    return Err(FieldError::new(
                        "temperature",
                        format!("must be a number from 0 to 2, got {v}"),
                    ))
                }
            },
        };
        let options = match o.get("options") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(other) => {
                let message = format!("must be an object like {{\"num_ctx\": 8192}}, got {other}");
                return Err(FieldError::new("options", message));
            }
        };
        let keep_alive = match o.get("keep_alive") {
            None | Some(Value::Null) => None,
            Some(v @ (Value::String(_) | Value::Number(_))) => Some(v.clone()),
            Some(other) => {
                return Err(FieldError::new(
                    "keep_alive",
                    format!("must be a duration like \"10m\" or a number of seconds, got {other}"),
                ))
            }
        };
        Ok(AgentOptions {
            coder_model,
            reviewer_model,
            max_loops,
            max_steps,
            check_command,
            apply_changes,
            workspace_mode,
            llm_url,
            api,
            llm_api_key,
            temperature,
            options,
            keep_alive,
            command_timeout: seconds_opt(o, "timeout_seconds")?.unwrap_or(DEFAULT_COMMAND_TIMEOUT),
            llm_timeout: seconds_opt(o, "llm_timeout_seconds")?,
            llm_retries: int_opt(o, "llm_retries", 0..=MAX_RETRIES)?.map(|n| n as u32),
            max_output_bytes: int_opt(o, "max_output_bytes", 1..=MAX_OUTPUT_CAP)?
                .map(|n| n as usize)
                .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES),
        })
    }
}

/// The key sent to an endpoint: the job's own `llm_api_key`, else the engine's
/// `--llm-api-key` when the endpoint is one of the engine's own (`own_endpoint`: its
/// `--llm-url` or a `--llm-route`). A job that names another server gets no engine key: a
/// job must not be able to send the operator's key to a server of its choosing.
pub fn api_key(
    job_key: Option<&Secret>,
    engine_key: &Option<String>,
    own_endpoint: bool,
) -> Option<String> {
    match job_key {
        Some(k) => Some(k.expose().to_string()),
        None if own_endpoint => engine_key.clone(),
        None => None,
    }
}

/// Runs coding tasks through the agent.
pub struct AgentProcessor {
    root: PathBuf,
    config: AgentConfig,
    /// One HTTP client (and connection pool) for every endpoint.
    http: reqwest::Client,
    /// Shared with the engine's other LLM processors (see `with_limits`).
    limits: Arc<EndpointLimits>,
    workspaces: Workspaces,
    /// The sandbox the task's commands run in, its worktree writable.
    sandbox: std::sync::Arc<crate::sandbox::Sandbox>,
}

impl AgentProcessor {
    /// Uses `limits` for its endpoints, so every LLM kind of an engine shares one
    /// `max_concurrent_requests_per_endpoint` per endpoint instead of one each.
    pub fn with_limits(mut self, limits: Arc<EndpointLimits>) -> Self {
        self.limits = limits;
        self
    }

    /// A processor for the workspace `root` (canonical).
    pub fn new(root: &Path, config: AgentConfig) -> Result<Self, String> {
        let llm_url = normalize_url(&config.llm_url).map_err(|e| format!("LLM URL: {e}"))?;
        let http = crate::agent::llm::http_client()?;
        let scratch = config
            .scratch_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("batchforge-agent"));
        Ok(AgentProcessor {
            root: root.to_path_buf(),
            limits: Arc::new(
                EndpointLimits::new(config.max_concurrent_requests_per_endpoint)
                    .with_rates(config.rate_limits.clone()),
            ),
            config: AgentConfig { llm_url, ..config },
            http,
            workspaces: Workspaces::new(scratch),
            sandbox: Default::default(),
        })
    }

    /// Runs the tasks' commands in `sandbox` (the engine passes the one in force).
    pub fn with_sandbox(self, sandbox: std::sync::Arc<crate::sandbox::Sandbox>) -> Self {
        AgentProcessor { sandbox, ..self }
    }

    fn client(&self, opts: &AgentOptions) -> LlmClient {
        let url = opts
            .llm_url
            .clone()
            .unwrap_or_else(|| self.config.llm_url.clone());
        LlmClient::new(
            self.http.clone(),
            url.clone(),
            opts.api.unwrap_or(self.config.api),
            api_key(
                opts.llm_api_key.as_ref(),
                &self.config.api_key,
                url == self.config.llm_url || self.config.routes.iter().any(|r| r.url == url),
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

#[async_trait::async_trait(?Send)]
impl Processor for AgentProcessor {
    fn kind(&self) -> &str {
        KIND
    }

    fn default_concurrency(&self) -> usize {
        // Tasks mostly wait on the LLM, whose endpoint has its own limit.
        16
    }

    fn validate_options(&self, options: &Value) -> Result<(), FieldError> {
        let opts = AgentOptions::parse(options)?;
        self.sandbox.check_options(options)?;
        let argv =
            split_command(&opts.check_command).map_err(|e| FieldError::new("check_command", e))?;
        if find_program(&argv[0], &self.root).is_none() {
            return Err(FieldError::new(
                "check_command",
                format!(
                    "program '{}' was not found (looked on PATH and in the workspace)",
                    argv[0]
                ),
            ));
        }
        if opts.workspace_mode == Some(WorkspaceMode::Worktree) && !looks_like_git_repo(&self.root)
        {
            return Err(FieldError::new(
                "workspace_mode",
                format!(
                    "'worktree' needs the workspace root {} to be in a git repository; use 'copy'",
                    self.root.display()
                ),
            ));
        }
        Ok(())
    }

    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome {
        let started = Instant::now();
        let description = item
            .payload
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let fail_early = |message: String| {
            let mut result = TaskResult::new(&item.key, "failed", started);
            result.error = Some(message.clone());
            ItemOutcome::failed(result.into_value(), message)
        };
        let opts = match AgentOptions::parse(&ctx.options) {
            Ok(o) => o,
            Err(e) => return fail_early(format!("{}: {}", e.field, e.message)),
        };
        if description.trim().is_empty() {
            return fail_early("the task has no description".into());
        }
        let check_argv = match split_command(&opts.check_command) {
            Ok(a) => a,
            Err(e) => return fail_early(format!("check_command: {e}")),
        };
        ctx.progress
            .current(format!("{}: preparing the workspace", item.key));
        let mode = match opts.workspace_mode {
            Some(m) => m,
            None => self.workspaces.default_mode(&self.root).await,
        };
        let label = format!("{}-{}-{}", item.job_id, item.index, item.key);
        // A cancel does not wait for a large copy or checkout: the creation is dropped
        // (and what it made removed on a thread).
        let created = tokio::select! {
            w = self.workspaces.create(mode, &self.root, &label) => w,
            _ = ctx.cancel.cancelled() => {
                let mut result = TaskResult::new(&item.key, "cancelled", started);
                result.workspace_mode = Some(mode);
                return ItemOutcome::cancelled(result.into_value());
            }
        };
        let mut workspace = match created {
            Ok(w) => w,
            Err(e) => return fail_early(format!("cannot prepare the workspace: {e}")),
        };
        let settings = Settings {
            task_id: item.key.clone(),
            description,
            coder_model: opts.coder_model.clone(),
            reviewer_model: opts.reviewer_model.clone(),
            max_loops: opts.max_loops,
            max_steps: opts.max_steps,
            check_command: opts.check_command.clone(),
            check_argv,
            command_timeout: opts.command_timeout,
            max_output_bytes: opts.max_output_bytes,
            read_only: !opts.apply_changes,
            temperature: opts.temperature,
            options: opts.options.clone(),
            keep_alive: opts.keep_alive.clone(),
        };
        let llm = self.client(&opts);
        let bench = Workbench::new(
            workspace.dir().to_path_buf(),
            opts.command_timeout,
            opts.max_output_bytes,
        )
        .with_env(workspace.command_env())
        .with_sandbox({
            let mut sandbox = self.sandbox.item(&ctx.options, workspace.dir());
            sandbox.share_git_worktree(workspace.dir());
            sandbox
        });
        let mut session = Session::new(&settings, &llm, bench, &ctx.progress, &ctx.cancel);
        let ending = session.run().await;
        let written = session.written();
        let transcript = std::mem::take(&mut session.transcript);
        drop(session);

        // A cancelled task is not diffed: it must stop now.
        let changes = if ending == Ending::Cancelled {
            None
        } else {
            ctx.progress
                .current(format!("{}: collecting the patch", item.key));
            Some(workspace.changes(&written).await)
        };
        workspace.remove().await;

        let (status, error) = match &ending {
            Ending::Passed => ("completed", None),
            Ending::LoopsSpent => (
                "failed",
                Some(format!(
                    "the check `{}` still failed after max_loops ({}) loops{}",
                    opts.check_command,
                    opts.max_loops,
                    transcript
                        .last_check
                        .as_ref()
                        .and_then(|c| c.exit_code)
                        .map(|c| format!(" (exit code {c})"))
                        .unwrap_or_default()
                )),
            ),
            Ending::LlmFailed(e) => ("failed", Some(e.to_string())),
            Ending::CheckFailedToStart(e) => ("failed", Some(e.clone())),
            Ending::Cancelled => ("cancelled", None),
        };
        let mut result = TaskResult::new(&item.key, status, started);
        result.error = error;
        let mut messages = transcript.messages;
        if transcript.messages_omitted > 0 {
            messages.insert(
                2,
                json!({"role": "system", "content": format!("… {} messages omitted", transcript.messages_omitted)}),
            );
        }
        result.messages = messages;
        result.validator_ok = transcript.validator_ok;
        result.blocked = transcript.blocked;
        result.loops = transcript.loops;
        match changes {
            Some(Ok(c)) => {
                result.files_changed = c.files_changed;
                result.patch = c.patch;
                result.patch_encoding = c.encoding;
                result.patch_note = c.note;
            }
            Some(Err(e)) => {
                result.files_changed = written;
                result.patch_note = Some(format!("cannot compute the patch: {e}"));
                if status == "completed" {
                    // A passing task whose work cannot be collected is of no use.
                    result.error = Some(format!("cannot compute the patch: {e}"));
                    result.status = "failed";
                }
            }
            None => result.files_changed = written,
        }
        result.usage = transcript.usage;
        result.workspace_mode = Some(mode);
        result.models = Some(json!({"coder": opts.coder_model, "reviewer": opts.reviewer_model}));
        if let Some(check) = &transcript.last_check {
            let mut validator = json!({"command": opts.check_command, "passed": check.passed,
                       "exit_code": check.exit_code, "output": check.output});
            if check.output_truncated {
                validator["output_truncated"] = json!(true);
            }
            result.validator = Some(validator);
        }
        let error = result.error.clone();
        let result = result.into_value();
        match (ending, error) {
            (Ending::Cancelled, _) => ItemOutcome::cancelled(result),
            (_, Some(e)) => ItemOutcome::failed(result, e),
            (_, None) => ItemOutcome::succeeded(result),
        }
    }
}

/// One task's result, whatever its ending (failed before it started, cancelled while its
/// workspace was made, or run); [`TaskResult::into_value`] is the one place its map
/// (`{task_id, status, messages, validator_ok, …}`) is built.
struct TaskResult {
    task_id: String,
    status: &'static str,
    error: Option<String>,
    messages: Vec<Value>,
    validator_ok: bool,
    blocked: u32,
    loops: u32,
    files_changed: Vec<String>,
    patch: Option<String>,
    patch_encoding: Option<&'static str>,
    patch_note: Option<String>,
    usage: Usage,
    /// When the item started; `duration_seconds` is measured from it.
    started: Instant,
    workspace_mode: Option<WorkspaceMode>,
    models: Option<Value>,
    validator: Option<Value>,
}

impl TaskResult {
    /// A result with nothing done yet: no messages, no changes, no tokens.
    fn new(task_id: &str, status: &'static str, started: Instant) -> Self {
        TaskResult {
            task_id: task_id.to_string(),
            status,
            error: None,
            messages: Vec::new(),
            validator_ok: false,
            blocked: 0,
            loops: 0,
            files_changed: Vec::new(),
            patch: None,
            patch_encoding: None,
            patch_note: None,
            usage: Usage::default(),
            started,
            workspace_mode: None,
            models: None,
            validator: None,
        }
    }

    /// The item's result map; optional facts appear only when known.
    fn into_value(self) -> Value {
        let mut result = Map::new();
        result.insert("task_id".into(), json!(self.task_id));
        result.insert("status".into(), json!(self.status));
        if let Some(e) = self.error {
            result.insert("error".into(), json!(e));
        }
        result.insert("messages".into(), Value::Array(self.messages));
        result.insert("validator_ok".into(), json!(self.validator_ok));
        result.insert("blocked".into(), json!(self.blocked));
        result.insert("loops".into(), json!(self.loops));
        result.insert("files_changed".into(), json!(self.files_changed));
        result.insert("patch".into(), json!(self.patch));
        if let Some(encoding) = self.patch_encoding {
            result.insert("patch_encoding".into(), json!(encoding));
        }
        if let Some(note) = self.patch_note {
            result.insert("patch_note".into(), json!(note));
        }
        result.insert(
            "usage".into(),
            json!({"prompt_tokens": self.usage.prompt_tokens,
                   "completion_tokens": self.usage.completion_tokens}),
        );
        result.insert(
            "duration_seconds".into(),
            json!(round3(self.started.elapsed().as_secs_f64())),
        );
        if let Some(mode) = self.workspace_mode {
            result.insert("workspace_mode".into(), json!(mode.name()));
        }
        if let Some(models) = self.models {
            result.insert("models".into(), models);
        }
        if let Some(validator) = self.validator {
            result.insert("validator".into(), validator);
        }
        Value::Object(result)
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(v: Value) -> String {
        AgentOptions::parse(&v).unwrap_err().field
    }

    #[test]
    fn options_default_and_each_bad_one_is_named() {
        let o = AgentOptions::parse(&json!({"parallel": 3})).unwrap();
        assert_eq!(o.coder_model, "qwen2.5-coder:7b");
        assert_eq!(o.reviewer_model, "llama3.2");
        assert_eq!(o.max_loops, 3);
        assert_eq!(o.check_command, "pytest -q");
        assert!(o.apply_changes);
        assert_eq!(o.workspace_mode, None);
        let o = AgentOptions::parse(&json!({"llm_url": "0.0.0.0:8080", "api": "openai",
            "workspace_mode": "copy", "max_loops": 50, "temperature": 0.2,
            "options": {"num_ctx": 4096}, "keep_alive": "5m"}))
        .unwrap();
        assert_eq!(o.llm_url.as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(o.api, Some(LlmApi::OpenAi));
        assert_eq!(o.workspace_mode, Some(WorkspaceMode::Copy));
        assert_eq!(field(json!({"max_loops": 0})), "max_loops");
        assert_eq!(field(json!({"max_loops": 51})), "max_loops");
        assert_eq!(field(json!({"max_loops": "3"})), "max_loops");
        assert_eq!(field(json!({"max_steps": 0})), "max_steps");
        assert_eq!(field(json!({"coder_model": ""})), "coder_model");
        assert_eq!(field(json!({"reviewer_model": 7})), "reviewer_model");
        assert_eq!(
            field(json!({"check_command": "echo 'open"})),
            "check_command"
        );
        assert_eq!(field(json!({"apply_changes": "no"})), "apply_changes");
        assert_eq!(field(json!({"workspace_mode": "docker"})), "workspace_mode");
        assert_eq!(field(json!({"llm_url": "ftp://x"})), "llm_url");
        assert_eq!(field(json!({"api": "grpc"})), "api");
        assert_eq!(field(json!({"temperature": 3})), "temperature");
        assert_eq!(field(json!({"options": [1]})), "options");
        assert_eq!(field(json!({"keep_alive": true})), "keep_alive");
        assert_eq!(field(json!({"timeout_seconds": 0})), "timeout_seconds");
        assert_eq!(
            field(json!({"llm_timeout_seconds": -1})),
            "llm_timeout_seconds"
        );
        assert_eq!(field(json!({"llm_retries": 11})), "llm_retries");
    }
}
