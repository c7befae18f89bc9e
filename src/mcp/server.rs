//! `batchforge mcp-server --root DIR`: an MCP server over stdio whose tools
//! (`list_files`, `read_file`, `write_file`, `run_command`, `sandbox_root`) work on one
//! directory.
//!
//! Every path a tool takes goes through the same confinement as command targets
//! ([`crate::sandbox::confine::Root`]): `..`,
//! absolute paths elsewhere and symlinks that lead out are refused with a tool error
//! (`isError: true`, the reason as text), as are files too big to read, anything that
//! is not a regular file (a FIFO, socket or device would block the server) and files with
//! more than one hard link. Files are opened by descriptor beneath the root, so a path
//! swapped for a symlink after its check still cannot lead out. `run_command`
//! uses the engine's own runner ([`crate::sandbox::spawn`]): argv without a shell, its cwd the root or a directory
//! inside it, a timeout and capped output, its process group killed on timeout, on
//! `notifications/cancelled` and when the server dies. Like the `command` processor's
//! commands, it is not sandboxed beyond that: the command itself may read or write
//! outside the root.
//!
//! A tool result bigger than [`MAX_MESSAGE_BYTES`] once JSON-encoded is replaced by a
//! tool error saying so: rmcp's stdio transport would drop the line silently and the
//! client would wait for its timeout.

use crate::mcp::args::{optional_str, required_str, Blank};
use crate::mcp::ops::{encoded_len, MAX_MESSAGE_BYTES, MAX_WRITE_BYTES};
use crate::sandbox::confine::{fd_path, OpenFor, Root};
use crate::sandbox::spawn::{run_sandboxed, tool_command, CommandEnv};
use crate::sandbox::{ItemSandbox, Limits};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Most directory entries `list_files` returns; the rest are counted as omitted.
const MAX_LIST_ENTRIES: usize = 10_000;

/// Flags of `batchforge mcp-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Directory the tools are confined to.
    #[arg(long)]
    pub root: PathBuf,
    /// Offer only list_files, read_file and sandbox_root (no write_file, no run_command).
    #[arg(long)]
    pub read_only: bool,
    /// Seconds a run_command may take before its process group is killed (at most a
    /// year). batchforge starts its built-in server with 86400, leaving the limit to
    /// each job's `timeout_seconds`.
    #[arg(long, default_value_t = 600.0, value_parser = parse_command_timeout)]
    pub command_timeout: f64,
    /// Cap on each of a command's stdout and stderr, in bytes.
    #[arg(long, default_value_t = crate::sandbox::spawn::DEFAULT_MAX_OUTPUT_BYTES)]
    pub max_output_bytes: usize,
    /// Largest file read_file returns, in bytes (default 8 MiB). Whatever the cap, a
    /// file whose JSON-encoded text would exceed 15 MiB is refused: one MCP message over
    /// stdio may not reach 16 MiB.
    #[arg(long, default_value_t = DEFAULT_MAX_READ_BYTES)]
    pub max_read_bytes: u64,
    /// The sandbox `run_command` runs in (batchforge passes its own).
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// The sandbox flags of `batchforge mcp-server`: what `serve` resolved, passed on.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SandboxArgs {
    /// Run each command under this bubblewrap binary (the root writable, the rest
    /// read-only, no network, a private /tmp and PID namespace).
    #[arg(long)]
    pub sandbox_bwrap: Option<PathBuf>,
    /// A path to hide from commands (repeatable); $HOME and its secrets always are.
    #[arg(long)]
    pub sandbox_hide: Vec<PathBuf>,
    /// A path bound read-only, even inside a hidden one (repeatable): the tool roots
    /// and `--sandbox-ro-path`s of the engine.
    #[arg(long)]
    pub sandbox_ro_bind: Vec<PathBuf>,
    /// A variable NAME=VALUE set in every command's environment (repeatable).
    #[arg(long, value_parser = parse_env_pair)]
    pub sandbox_env: Vec<(String, String)>,
    /// Address space of each command, in MiB.
    #[arg(long)]
    pub sandbox_memory_mb: Option<u64>,
    /// CPU seconds of each command.
    #[arg(long)]
    pub sandbox_cpu_seconds: Option<u64>,
    /// Processes of each command at once.
    #[arg(long)]
    pub sandbox_max_processes: Option<u64>,
    /// Largest file a command may write, in MiB.
    #[arg(long)]
    pub sandbox_max_file_mb: Option<u64>,
}

/// Default of `--max-read-bytes`: 8 MiB.
pub const DEFAULT_MAX_READ_BYTES: u64 = 8 * 1024 * 1024;
/// Longest `--command-timeout`: a year.
const MAX_COMMAND_TIMEOUT_SECONDS: f64 = 365.0 * 86_400.0;

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("'{s}': expected NAME=VALUE"))
}

fn parse_command_timeout(s: &str) -> Result<f64, String> {
    let t: f64 = s.trim().parse().map_err(|e| format!("'{s}': {e}"))?;
    command_timeout(t).map(|_| t)
}

fn command_timeout(seconds: f64) -> Result<Duration, String> {
    if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_COMMAND_TIMEOUT_SECONDS) {
        return Err(format!(
            "--command-timeout must be a number of seconds in (0, {MAX_COMMAND_TIMEOUT_SECONDS}], got {seconds}"
        ));
    }
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("--command-timeout {seconds}: {e}"))
}

/// Runs the server on stdin/stdout until the client closes them.
pub fn run(args: ServerArgs) -> Result<(), String> {
    let server = SandboxServer::new(&args)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
        log::info!(
            "MCP server on stdio, sandbox root {}{}",
            server.root.display(),
            if server.read_only { " (read-only)" } else { "" }
        );
        let service = server
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| format!("MCP handshake failed: {e}"))?;
        service
            .waiting()
            .await
            .map_err(|e| format!("MCP service failed: {e}"))?;
        Ok(())
    })
}

/// The tool handler; cheap to clone.
#[derive(Debug, Clone)]
pub struct SandboxServer {
    root: Arc<PathBuf>,
    read_only: bool,
    command_timeout: Duration,
    max_output_bytes: usize,
    max_read_bytes: u64,
    /// What `run_command` runs in.
    sandbox: Arc<ItemSandbox>,
}

/// A tool's outcome: a result, or a message for a tool error.
type ToolOutcome = Result<CallToolResult, String>;

impl SandboxServer {
    /// A server for `args.root`, which must be an existing directory.
    pub fn new(args: &ServerArgs) -> Result<SandboxServer, String> {
        let root = args
            .root
            .canonicalize()
            .map_err(|e| format!("--root {}: {e}", args.root.display()))?;
        if !root.is_dir() {
            return Err(format!("--root {} is not a directory", root.display()));
        }
        Ok(SandboxServer {
            read_only: args.read_only,
            command_timeout: command_timeout(args.command_timeout)?,
            max_output_bytes: args.max_output_bytes.max(1),
            max_read_bytes: args.max_read_bytes,
            sandbox: Arc::new(ItemSandbox {
                bwrap: args.sandbox.sandbox_bwrap.clone(),
                limits: Limits {
                    memory_mb: args.sandbox.sandbox_memory_mb,
                    cpu_seconds: args.sandbox.sandbox_cpu_seconds,
                    max_processes: args.sandbox.sandbox_max_processes,
                    max_file_mb: args.sandbox.sandbox_max_file_mb,
                },
                writable: vec![root.clone()],
                readable: args.sandbox.sandbox_ro_bind.clone(),
                env: args.sandbox.sandbox_env.clone(),
                hidden: args.sandbox.sandbox_hide.clone(),
                ..ItemSandbox::default()
            }),
            root: Arc::new(root),
        })
    }

    fn tools(&self) -> Vec<Tool> {
        let path_schema = |what: &str, required: bool| {
            let mut schema = json!({
                "type": "object",
                "properties": {"path": {"type": "string", "description": what}},
                "additionalProperties": false
            });
            if required {
                schema["required"] = json!(["path"]);
            }
            schema
        };
        let mut tools = vec![
            tool(
                "list_files",
                "List a directory inside the sandbox root: one entry a line, directories with \
                 a trailing '/'; structured content has each entry's name, type and size.",
                path_schema(
                    "Directory, relative to the sandbox root (default '.').",
                    false,
                ),
            ),
            tool(
                "read_file",
                "Read a UTF-8 text file inside the sandbox root (a regular file of at most \
                 --max-read-bytes, 8 MiB by default).",
                path_schema("File, relative to the sandbox root.", true),
            ),
            tool(
                "sandbox_root",
                "The absolute path every other tool is confined to.",
                json!({"type": "object", "properties": {}, "additionalProperties": false}),
            ),
        ];
        if !self.read_only {
            tools.push(tool(
                "write_file",
                "Write a text file (at most 8 MiB) inside the sandbox root, replacing it if \
                 it exists and creating missing parent directories.",
                json!({
                    "type": "object",
                    "properties": {
                        "path": {"type": "string", "description": "File, relative to the sandbox root."},
                        "content": {"type": "string", "description": "The whole new content."}
                    },
                    "required": ["path", "content"],
                    "additionalProperties": false
                }),
            ));
            tools.push(tool(
                "run_command",
                "Run a command without a shell (split into argv like a POSIX shell would), in \
                 the sandbox root or a directory inside it, with a timeout and capped output. \
                 A non-zero exit is a tool error; structured content has exit_code, stdout, \
                 stderr, truncated, timed_out and duration_seconds.",
                json!({
                    "type": "object",
                    "properties": {
                        "command": {"type": "string", "description": "Command line, e.g. \"ls -la src\"."},
                        "cwd": {"type": "string", "description": "Working directory relative to the sandbox root (default '.')."}
                    },
                    "required": ["command"],
                    "additionalProperties": false
                }),
            ));
        }
        tools
    }

    async fn dispatch(
        &self,
        name: &str,
        args: &Map<String, Value>,
        cancel: CancellationToken,
    ) -> ToolOutcome {
        match name {
            "list_files" => self.list_files(args).await,
            "read_file" => self.read_file(args).await,
            "write_file" => self.write_file(args).await,
            "run_command" => self.run_command(args, cancel).await,
            "sandbox_root" => Ok(structured(
                self.root.to_string_lossy().into_owned(),
                json!({"root": self.root.to_string_lossy()}),
            )),
            other => Err(format!("unknown tool '{other}'")),
        }
    }

    async fn list_files(&self, args: &Map<String, Value>) -> ToolOutcome {
        let path = optional_str(args, "path", Blank::Empty)?.unwrap_or(".");
        let root = self.root.clone();
        let shown = path.to_string();
        tokio::task::spawn_blocking(move || {
            let handle = Root::new(&root).open_existing(&shown, OpenFor::List)?;
            // Listed through its descriptor: the directory opened beneath the root, not
            // whatever its name leads to now.
            let dir = fd_path(&handle);
            let read = std::fs::read_dir(&dir).map_err(|e| match e.raw_os_error() {
                Some(libc::ENOTDIR) => format!("'{shown}' is not a directory"),
                _ => format!("cannot list '{shown}': {e}"),
            })?;
            let mut entries = Vec::new();
            for e in read {
                let e = e.map_err(|e| format!("cannot list '{shown}': {e}"))?;
                let meta = e.path().symlink_metadata().ok();
                let kind = match &meta {
                    Some(m) if m.file_type().is_symlink() => "symlink",
                    Some(m) if m.is_dir() => "directory",
                    Some(m) if m.is_file() => "file",
                    _ => "other",
                };
                let size = meta.as_ref().filter(|m| m.is_file()).map(|m| m.len());
                entries.push((e.file_name().to_string_lossy().into_owned(), kind, size));
            }
            entries.sort();
            let omitted = entries.len().saturating_sub(MAX_LIST_ENTRIES);
            entries.truncate(MAX_LIST_ENTRIES);
            let mut text = String::new();
            for (name, kind, _) in &entries {
                text.push_str(name);
                if *kind == "directory" {
                    text.push('/');
                }
                text.push('\n');
            }
            if omitted > 0 {
                text.push_str(&format!("… {omitted} more entries omitted\n"));
            }
            let listed: Vec<Value> = entries
                .iter()
                .map(|(name, kind, size)| json!({"name": name, "type": kind, "size": size}))
                .collect();
            Ok(structured(
                text,
                json!({"path": shown, "entries": listed, "omitted": omitted}),
            ))
        })
        .await
        .map_err(|e| format!("list_files failed: {e}"))?
    }

    async fn read_file(&self, args: &Map<String, Value>) -> ToolOutcome {
        let path = required_str(args, "path", Blank::Empty)?;
        let root = self.root.clone();
        let shown = path.to_string();
        let max = self.max_read_bytes;
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let cannot = |e: std::io::Error| format!("cannot read '{shown}': {e}");
            let f = Root::new(&root).open_existing(&shown, OpenFor::Read)?;
            // Checked on the open handle: what the path names may have changed.
            let meta = f.metadata().map_err(cannot)?;
            if meta.is_dir() {
                return Err(format!("'{shown}' is a directory; list it with list_files"));
            }
            if !meta.is_file() {
                return Err(not_regular(&shown, &meta));
            }
            if meta.len() > max {
                return Err(format!(
                    "'{shown}' is {} bytes; this server reads at most {max} (--max-read-bytes)",
                    meta.len()
                ));
            }
            let mut bytes = Vec::with_capacity(meta.len() as usize);
            f.take(max.saturating_add(1))
                .read_to_end(&mut bytes)
                .map_err(cannot)?;
            if bytes.len() as u64 > max {
                return Err(format!(
                    "'{shown}' grew past {max} bytes while being read (--max-read-bytes)"
                ));
            }
            let text = String::from_utf8(bytes).map_err(|e| {
                format!(
                    "'{shown}' is not UTF-8 text (invalid byte at offset {})",
                    e.utf8_error().valid_up_to()
                )
            })?;
            let encoded = encoded_len(&text);
            if encoded > MAX_MESSAGE_BYTES {
                return Err(format!(
                    "'{shown}' is {} bytes but {encoded} once JSON-encoded (a control \
                     character takes 6 bytes); one MCP message may take at most \
                     {MAX_MESSAGE_BYTES}",
                    text.len()
                ));
            }
            Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
        })
        .await
        .map_err(|e| format!("read_file failed: {e}"))?
    }

    async fn write_file(&self, args: &Map<String, Value>) -> ToolOutcome {
        if self.read_only {
            return Err("write_file is disabled: this server runs read-only".into());
        }
        let path = required_str(args, "path", Blank::Empty)?;
        let content = match args.get("content") {
            Some(Value::String(s)) => s.clone(),
            None => return Err("missing required argument 'content' (a string)".into()),
            Some(other) => return Err(format!("argument 'content' must be a string, got {other}")),
        };
        if content.len() > MAX_WRITE_BYTES {
            return Err(format!(
                "content is {} bytes; this server writes at most {MAX_WRITE_BYTES}",
                content.len()
            ));
        }
        let root = self.root.clone();
        let shown = path.to_string();
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let cannot = |e: std::io::Error| format!("cannot write '{shown}': {e}");
            // Opened beneath the root, not truncated (nothing is cut before the handle is
            // known to be a regular file with one link); a FIFO without a reader fails at
            // once instead of blocking the open.
            let (mut f, rel) = Root::new(&root).open_new_file(&shown)?;
            let meta = f.metadata().map_err(cannot)?;
            if !meta.is_file() {
                return Err(not_regular(&shown, &meta));
            }
            f.set_len(0).map_err(cannot)?;
            f.write_all(content.as_bytes()).map_err(cannot)?;
            Ok(structured(
                format!("wrote {} bytes to {}", content.len(), rel.display()),
                json!({"path": rel.to_string_lossy(), "bytes": content.len()}),
            ))
        })
        .await
        .map_err(|e| format!("write_file failed: {e}"))?
    }

    async fn run_command(
        &self,
        args: &Map<String, Value>,
        cancel: CancellationToken,
    ) -> ToolOutcome {
        if self.read_only {
            return Err("run_command is disabled: this server runs read-only".into());
        }
        let command = required_str(args, "command", Blank::Empty)?;
        let cwd = optional_str(args, "cwd", Blank::Empty)?.unwrap_or(".");
        let spec = tool_command(
            &self.root,
            command,
            cwd,
            self.command_timeout,
            self.max_output_bytes,
            "looked on PATH and in the working directory",
        )?;
        let out = run_sandboxed(&spec, &CommandEnv::default(), &self.sandbox, &cancel)
            .await
            .map_err(|e| format!("cannot start '{}': {e}", spec.argv[0]))?;
        let failure = if let Some(limit) = &out.limit {
            Some(format!("{limit}; killed"))
        } else if out.cancelled {
            Some("cancelled by the client; process group killed".to_string())
        } else if out.timed_out {
            Some(format!(
                "timed out after {:.1}s; process group killed",
                spec.timeout.as_secs_f64()
            ))
        } else {
            match (out.exit_code, out.signal) {
                (Some(0), _) => None,
                (Some(code), _) => Some(format!("exit code {code}")),
                (None, signal) => Some(format!("killed by signal {}", signal.unwrap_or(0))),
            }
        };
        let data = json!({
            "exit_code": out.exit_code,
            "signal": out.signal,
            "stdout": out.stdout,
            "stderr": out.stderr,
            "truncated": out.truncated,
            "timed_out": out.timed_out,
            "duration_seconds": (out.duration.as_secs_f64() * 1000.0).round() / 1000.0,
        });
        let mut result = match &failure {
            None => CallToolResult::success(vec![ContentBlock::text(out.stdout.clone())]),
            Some(reason) => {
                let stderr = out.stderr.trim_end();
                let text = if stderr.is_empty() {
                    reason.clone()
                } else {
                    format!("{reason}: {stderr}")
                };
                CallToolResult::error(vec![ContentBlock::text(text)])
            }
        };
        result.structured_content = Some(data);
        Ok(result)
    }
}

impl ServerHandler for SandboxServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("batchforge", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Filesystem tools confined to {}; paths are relative to it.",
                self.root.display()
            ))
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools().into_iter().find(|t| t.name == name)
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let known = [
            "list_files",
            "read_file",
            "write_file",
            "run_command",
            "sandbox_root",
        ];
        if !known.contains(&request.name.as_ref()) {
            // An unknown tool is a protocol error (-32602), as the specification asks.
            return Err(ErrorData::invalid_params(
                format!(
                    "unknown tool '{}' (this server offers: {})",
                    request.name,
                    known.join(", ")
                ),
                None,
            ));
        }
        let args = request.arguments.unwrap_or_default();
        let outcome = self
            .dispatch(&request.name, &args, context.ct.clone())
            .await;
        let result = outcome
            .unwrap_or_else(|message| CallToolResult::error(vec![ContentBlock::text(message)]));
        Ok(fit_in_a_message(&request.name, result).into())
    }
}

/// `result`, or a tool error in its place when it would not fit in one MCP message.
fn fit_in_a_message(tool: &str, result: CallToolResult) -> CallToolResult {
    let size = encoded_len(&result);
    if size <= MAX_MESSAGE_BYTES {
        return result;
    }
    let hint = match tool {
        "run_command" => " (lower --max-output-bytes)",
        "list_files" => " (list a smaller directory)",
        _ => "",
    };
    CallToolResult::error(vec![ContentBlock::text(format!(
        "the result of {tool} would be {size} bytes once JSON-encoded; one MCP message may \
         take at most {MAX_MESSAGE_BYTES}{hint}"
    ))])
}

/// The refusal for a FIFO, socket or device.
fn not_regular(path: &str, meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    let what = if t.is_fifo() {
        "a FIFO, "
    } else if t.is_socket() {
        "a socket, "
    } else if t.is_char_device() || t.is_block_device() {
        "a device, "
    } else {
        ""
    };
    format!("'{path}' is {what}not a regular file; refusing to open it")
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    let Value::Object(schema) = schema else {
        unreachable!("tool schemas are objects")
    };
    Tool::new(name, description, schema)
}

/// A successful result with text for people and the same facts as structured content.
fn structured(text: String, data: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(data);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_timeouts_are_checked_not_panicked_on() {
        assert_eq!(parse_command_timeout("86400"), Ok(86_400.0));
        assert_eq!(parse_command_timeout("0.5"), Ok(0.5));
        for bad in ["0", "-1", "1e300", "inf", "NaN", "soon"] {
            assert!(parse_command_timeout(bad).is_err(), "{bad}");
        }
        let tmp = tempfile::tempdir().unwrap();
        let args = |t: f64| ServerArgs {
            root: tmp.path().to_path_buf(),
            read_only: false,
            command_timeout: t,
            max_output_bytes: 1024,
            max_read_bytes: DEFAULT_MAX_READ_BYTES,
            sandbox: SandboxArgs::default(),
        };
        assert!(SandboxServer::new(&args(1e300)).is_err());
        assert!(SandboxServer::new(&args(f64::NAN)).is_err());
        assert_eq!(
            SandboxServer::new(&args(2.5)).unwrap().command_timeout,
            Duration::from_millis(2500)
        );
    }

    #[test]
    fn results_too_big_for_one_message_become_tool_errors() {
        let small = CallToolResult::success(vec![ContentBlock::text("ok")]);
        assert_eq!(fit_in_a_message("read_file", small.clone()), small);
        let big = CallToolResult::success(vec![ContentBlock::text("\u{1}".repeat(3 << 20))]);
        let refused = fit_in_a_message("run_command", big);
        assert_eq!(refused.is_error, Some(true));
        let text = &refused.content[0].as_text().unwrap().text;
        assert!(
            text.contains("once JSON-encoded") && text.contains("--max-output-bytes"),
            "{text}"
        );
    }
}
