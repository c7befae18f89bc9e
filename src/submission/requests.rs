//! The request bodies of the submission endpoints, as typed shapes (also the OpenAPI
//! schemas). Every field besides the items and metadata is kept as the job's options.

use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

/// A target or module: the seed's `{id, path}`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"id": "config", "path": "src/config.py"}))]
pub struct PathTarget {
    /// The user's id.
    #[schema(min_length = 1, pattern = "\\S")]
    pub id: String,
    /// Path inside the workspace, or a pytest node id (`file::test`); with the job's
    /// `target_kind: "argument"`, words for the command (`-p NAME`).
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
    /// The command run per target, split into argv (no shell) with the target
    /// appended (see `target_kind`); exit 0 (or 5, "no tests") passes. Default `pytest -q`.
    #[schema(value_type = Option<String>, example = "python3 -m py_compile")]
    pub check_command: Option<Value>,
    /// How each target's `path` is appended: `path` (default) confines it to the workspace
    /// (a missing file is handed to the command; a pytest node id `file::test` is confined
    /// by its file part and passed whole); `argument` splits it into words passed as they
    /// are, refusing only words that are absolute or hold `..` and lead out.
    #[schema(value_type = Option<String>, example = "path")]
    pub target_kind: Option<Value>,
    /// Seconds one item may run before its whole process group is killed (default 600,
    /// at most 86400).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400, example = 120)]
    pub timeout_seconds: Option<Value>,
    /// Bytes of stdout and of stderr kept per item; the rest is cut and `truncated` set.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 16777216, example = 65536)]
    pub max_output_bytes: Option<Value>,
    /// The sandbox of its commands: `bwrap` asks for bubblewrap (refused where the server has
    /// none); a job may only tighten the server's mode, never ask for `none` under `bwrap`.
    #[schema(value_type = Option<String>, example = "bwrap")]
    pub sandbox: Option<Value>,
    /// Let its sandboxed commands reach the network (default false).
    #[schema(value_type = Option<bool>, example = false)]
    pub network: Option<Value>,
    /// Environment variables of its commands, besides the sandbox's allowlist.
    #[schema(value_type = Option<Object>)]
    pub env: Option<Value>,
    /// Address-space limit per command, in MB (server default and maximum apply).
    #[schema(value_type = Option<u64>, example = 512)]
    pub memory_mb: Option<Value>,
    /// CPU-time limit per command, in seconds.
    #[schema(value_type = Option<u64>, example = 60)]
    pub cpu_seconds: Option<Value>,
    /// Most processes one command's tree may hold at once.
    #[schema(value_type = Option<u64>, example = 64)]
    pub max_processes: Option<Value>,
    /// Largest file one command may write, in MB.
    #[schema(value_type = Option<u64>, example = 100)]
    pub max_file_mb: Option<Value>,
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
    /// The command run per module, split into argv (no shell) with the module
    /// appended (see `target_kind`); exit 0 passes. Default `pytest -v`.
    #[schema(value_type = Option<String>, example = "pytest -v")]
    pub test_command: Option<Value>,
    /// How each module's `path` is appended: `path` (default) confines it to the workspace
    /// (a missing file is handed to the command; a pytest node id `file::test` is confined
    /// by its file part and passed whole); `argument` splits it into words passed as they
    /// are, refusing only words that are absolute or hold `..` and lead out.
    #[schema(value_type = Option<String>, example = "path")]
    pub target_kind: Option<Value>,
    /// Seconds one item may run before its whole process group is killed (default 600,
    /// at most 86400).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400, example = 120)]
    pub timeout_seconds: Option<Value>,
    /// Bytes of stdout and of stderr kept per item; the rest is cut and `truncated` set.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 16777216, example = 65536)]
    pub max_output_bytes: Option<Value>,
    /// The sandbox of its commands: `bwrap` asks for bubblewrap (refused where the server has
    /// none); a job may only tighten the server's mode, never ask for `none` under `bwrap`.
    #[schema(value_type = Option<String>, example = "bwrap")]
    pub sandbox: Option<Value>,
    /// Let its sandboxed commands reach the network (default false).
    #[schema(value_type = Option<bool>, example = false)]
    pub network: Option<Value>,
    /// Environment variables of its commands, besides the sandbox's allowlist.
    #[schema(value_type = Option<Object>)]
    pub env: Option<Value>,
    /// Address-space limit per command, in MB (server default and maximum apply).
    #[schema(value_type = Option<u64>, example = 512)]
    pub memory_mb: Option<Value>,
    /// CPU-time limit per command, in seconds.
    #[schema(value_type = Option<u64>, example = 60)]
    pub cpu_seconds: Option<Value>,
    /// Most processes one command's tree may hold at once.
    #[schema(value_type = Option<u64>, example = 64)]
    pub max_processes: Option<Value>,
    /// Largest file one command may write, in MB.
    #[schema(value_type = Option<u64>, example = 100)]
    pub max_file_mb: Option<Value>,
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
    /// API key for this job's LLM server, sent as `Authorization: Bearer …` (default: the
    /// engine's `--llm-api-key`, which is only ever sent to the engine's own endpoints).
    /// Used, never shown: answers, events and exports have it as `***`.
    #[schema(value_type = Option<String>, example = "sk-…")]
    pub llm_api_key: Option<Value>,
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
    /// Token budget of the job: once its items' results report this many prompt plus
    /// completion tokens, nothing new starts and the job is cancelled, its unstarted items
    /// naming the budget.
    #[schema(value_type = Option<u64>, minimum = 1, example = 200000)]
    pub max_total_tokens: Option<Value>,
    /// Bytes of each command's stdout and stderr kept for the model and the result.
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 16777216)]
    pub max_output_bytes: Option<Value>,
    /// The sandbox of its commands: `bwrap` asks for bubblewrap (refused where the server has
    /// none); a job may only tighten the server's mode, never ask for `none` under `bwrap`.
    #[schema(value_type = Option<String>, example = "bwrap")]
    pub sandbox: Option<Value>,
    /// Let its sandboxed commands reach the network (default false).
    #[schema(value_type = Option<bool>, example = false)]
    pub network: Option<Value>,
    /// Environment variables of its commands, besides the sandbox's allowlist.
    #[schema(value_type = Option<Object>)]
    pub env: Option<Value>,
    /// Address-space limit per command, in MB (server default and maximum apply).
    #[schema(value_type = Option<u64>, example = 512)]
    pub memory_mb: Option<Value>,
    /// CPU-time limit per command, in seconds.
    #[schema(value_type = Option<u64>, example = 60)]
    pub cpu_seconds: Option<Value>,
    /// Most processes one command's tree may hold at once.
    #[schema(value_type = Option<u64>, example = 64)]
    pub max_processes: Option<Value>,
    /// Largest file one command may write, in MB.
    #[schema(value_type = Option<u64>, example = 100)]
    pub max_file_mb: Option<Value>,
    /// Free-form metadata kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `priority`, `run_at`, `idempotency_key`.
    #[serde(flatten)]
    pub schedule: ScheduleFields,
}

/// One chat completion of a `batch_llm` job: an OpenAI Batch API line. `method` and `url`,
/// when given, must be `POST` and `/v1/chat/completions`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"custom_id": "q1", "body": {"model": "llama3.2",
    "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 20}}))]
pub struct LlmRequestItem {
    /// The user's id for the request (JSONL lines' `custom_id`; `id` is taken too).
    #[serde(alias = "id")]
    #[schema(min_length = 1, pattern = "\\S")]
    pub custom_id: String,
    /// `POST`, if given.
    pub method: Option<String>,
    /// `/v1/chat/completions`, if given.
    pub url: Option<String>,
    /// The chat completions request: `model`, `messages` and any other field of the
    /// protocol (`temperature`, `max_tokens`, `response_format`, `tools`, …), sent as it is
    /// to an OpenAI-protocol endpoint and mapped onto `/api/chat` for Ollama.
    #[schema(value_type = Object)]
    pub body: Value,
}

/// `POST /batch/llm`. Every field besides the requests and metadata is kept as the job's
/// `options`.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"requests": [{"custom_id": "q1", "body": {"model": "llama3.2",
    "messages": [{"role": "user", "content": "Say hi"}]}}], "parallel": 8}))]
pub struct LlmBatchRequest {
    /// The requests.
    #[schema(min_items = 1, max_items = 1000000)]
    pub requests: Vec<LlmRequestItem>,
    /// LLM server for this job (default: the server's `--llm-route` for the model, else
    /// its `--llm-url`).
    #[schema(value_type = Option<String>, example = "http://127.0.0.1:11434")]
    pub llm_url: Option<Value>,
    /// `ollama` (`/api/chat`) or `openai` (`/v1/chat/completions`); default the route's
    /// or the engine's `--llm-api`.
    #[schema(value_type = Option<String>, example = "openai")]
    pub api: Option<Value>,
    /// API key for this job's LLM server, sent as `Authorization: Bearer …` (default: the
    /// engine's `--llm-api-key`, which is only ever sent to the engine's own endpoints).
    /// Used, never shown: answers, events and exports have it as `***`.
    #[schema(value_type = Option<String>, example = "sk-…")]
    pub llm_api_key: Option<Value>,
    /// Seconds each LLM request may take (default the engine's `--llm-timeout`).
    #[schema(value_type = Option<f64>, exclusive_minimum = 0, maximum = 86400)]
    pub llm_timeout_seconds: Option<Value>,
    /// Retries of a request that could not connect or got a 5xx, inside one attempt
    /// (default 3).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 10)]
    pub llm_retries: Option<Value>,
    /// Token budget of the job: once its items' results report this many prompt plus
    /// completion tokens, nothing new starts and the job is cancelled, its unstarted items
    /// naming the budget.
    #[schema(value_type = Option<u64>, minimum = 1, example = 200000)]
    pub max_total_tokens: Option<Value>,
    /// Per-job concurrency (default 8); the server's `--llm-concurrency` bounds each
    /// endpoint across jobs.
    #[schema(minimum = 1, maximum = 1000)]
    pub parallel: Option<i64>,
    /// Free-form metadata kept with the job.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `priority`, `run_at`, `idempotency_key`.
    #[serde(flatten)]
    pub schedule: ScheduleFields,
}

/// The operation types, for the OpenAPI document (the check itself is against
/// [`super::MCP_OPERATIONS`]).
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
    /// HTTP headers sent to a streamable-HTTP server with every request of this job
    /// (`{"Authorization": "Bearer …"}`), over the server's configured ones. Used, never
    /// shown: every value is `***` in answers, events and exports.
    #[schema(value_type = Option<Object>)]
    pub headers: Option<Value>,
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
    /// Items: any JSON; an object's `id` (string or number) becomes the item's key. Kept as
    /// the JSON text they came as (a million of them stay small).
    #[schema(min_items = 1, max_items = 1000000, value_type = Vec<Object>)]
    pub items: Vec<Box<serde_json::value::RawValue>>,
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

/// `POST /batch/jobs/{id}/retry`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"status": ["failed", "cancelled"]}))]
pub struct RetryRequest {
    /// Which items to requeue: `failed` (the default), `cancelled`, `skipped`.
    #[schema(value_type = Option<Vec<String>>)]
    pub status: Option<Value>,
}

/// The scheduling fields every submission takes (checked by [`super::take_schedule`]).
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
    /// the job's options; checked in `build_job`, see `crate::services::webhooks`).
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
