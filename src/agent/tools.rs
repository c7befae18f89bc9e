//! The workspace tools an agent calls: `list_files`, `read_file`, `write_file`,
//! `run_command`, and `finish` to say it is done.
//!
//! They work inside the task's workspace only, with the same confinement as batchforge's
//! MCP server ([`Root::open_existing`] for what exists, [`Root::open_new_file`] for what
//! is written, both opened by descriptor beneath the root and refusing hard-linked files)
//! and the engine's command runner (argv without a shell, a timeout, capped output, the
//! process group killed on timeout and on cancellation). Their answers are text for the
//! model; a tool error is an answer too, so the model can correct itself.

use super::llm::{ToolCall, ToolSpec};
use crate::mcp::args::{optional_str, required_str, Blank};
use crate::sandbox::confine::{fd_path, OpenFor, Root};
use crate::sandbox::spawn::{run_sandboxed, tool_command, CommandEnv};
use crate::sandbox::ItemSandbox;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The tool that ends a turn.
pub const FINISH: &str = "finish";
/// Largest file `read_file` returns whole; longer ones are cut with a note.
const MAX_READ_CHARS: usize = 100_000;
/// Most bytes `read_file` reads of a file (a character is at most 4 bytes).
const MAX_READ_BYTES: u64 = 4 * MAX_READ_CHARS as u64 + 4;
/// Most entries `list_files` shows.
const MAX_LIST_ENTRIES: usize = 1000;
/// Directories a recursive listing does not descend into.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    "target",
    "node_modules",
    "__pycache__",
    ".venv",
    ".mypy_cache",
    ".pytest_cache",
];

/// The tools offered to the model.
pub fn specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "list_files",
            description: "List a directory of the workspace: one entry a line, directories with a trailing '/'.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "Directory relative to the workspace root (default '.')."},
                    "recursive": {"type": "boolean", "description": "Also list subdirectories (default false)."}
                }
            }),
        },
        ToolSpec {
            name: "read_file",
            description: "Read a UTF-8 text file of the workspace.",
            parameters: json!({
                "type": "object",
                "properties": {"path": {"type": "string", "description": "File relative to the workspace root."}},
                "required": ["path"]
            }),
        },
        ToolSpec {
            name: "write_file",
            description: "Write a whole text file in the workspace, replacing it if it exists and creating missing directories.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "File relative to the workspace root."},
                    "content": {"type": "string", "description": "The complete new content of the file."}
                },
                "required": ["path", "content"]
            }),
        },
        ToolSpec {
            name: "run_command",
            description: "Run a command in the workspace without a shell (no pipes, redirection or &&), with a timeout. Returns the exit code and output.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "Command line, e.g. \"python3 -m pytest -q\"."},
                    "cwd": {"type": "string", "description": "Working directory relative to the workspace root (default '.')."}
                },
                "required": ["command"]
            }),
        },
        ToolSpec {
            name: FINISH,
            description: "Say the task is done. The check command runs next.",
            parameters: json!({
                "type": "object",
                "properties": {"summary": {"type": "string", "description": "What was changed and why."}}
            }),
        },
    ]
}

/// Runs tool calls in one workspace.
pub struct Workbench {
    root: PathBuf,
    command_timeout: Duration,
    max_output_bytes: usize,
    /// The environment of `run_command`.
    env: CommandEnv,
    /// The sandbox `run_command` and the check run in (the task's worktree writable).
    sandbox: ItemSandbox,
    /// Files written through `write_file`, relative to the root.
    written: BTreeSet<String>,
}

/// A tool's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolAnswer {
    /// What the model reads.
    pub text: String,
    /// Whether the tool did what was asked.
    pub ok: bool,
}

impl ToolAnswer {
    fn ok(text: impl Into<String>) -> Self {
        ToolAnswer {
            text: text.into(),
            ok: true,
        }
    }

    fn error(text: impl Into<String>) -> Self {
        ToolAnswer {
            text: format!("error: {}", text.into()),
            ok: false,
        }
    }
}

impl Workbench {
    /// Tools for the workspace at `root` (canonical).
    pub fn new(root: PathBuf, command_timeout: Duration, max_output_bytes: usize) -> Self {
        Workbench {
            root,
            command_timeout,
            max_output_bytes,
            env: CommandEnv::default(),
            sandbox: ItemSandbox::default(),
            written: BTreeSet::new(),
        }
    }

    /// The same, with commands run in `env` (see
    /// [`super::workspace::TaskWorkspace::command_env`]).
    pub fn with_env(mut self, env: CommandEnv) -> Self {
        self.env = env;
        self
    }

    /// The environment commands run in.
    pub fn env(&self) -> &CommandEnv {
        &self.env
    }

    /// The same, with commands run in `sandbox`.
    pub fn with_sandbox(mut self, sandbox: ItemSandbox) -> Self {
        self.sandbox = sandbox;
        self
    }

    /// The sandbox commands run in.
    pub fn sandbox(&self) -> &ItemSandbox {
        &self.sandbox
    }

    /// The workspace root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Files written so far, relative to the root.
    pub fn written(&self) -> &BTreeSet<String> {
        &self.written
    }

    /// Runs one call (already past the guardrail).
    pub async fn run(&mut self, call: &ToolCall, cancel: &CancellationToken) -> ToolAnswer {
        let args = match &call.arguments {
            Value::Object(o) => o.clone(),
            Value::String(s) => {
                return ToolAnswer::error(format!(
                    "the arguments of {} are not a JSON object: {s}",
                    call.name
                ))
            }
            other => {
                return ToolAnswer::error(format!(
                    "the arguments of {} must be a JSON object, got {other}",
                    call.name
                ))
            }
        };
        let result = match call.name.as_str() {
            "list_files" => self.list_files(&args).await,
            "read_file" => self.read_file(&args).await,
            "write_file" => self.write_file(&args).await,
            "run_command" => self.run_command(&args, cancel).await,
            FINISH => Ok("finished".to_string()),
            other => Err(format!(
                "unknown tool '{other}'; the tools are list_files, read_file, write_file, run_command and finish"
            )),
        };
        match result {
            Ok(text) => ToolAnswer::ok(text),
            Err(e) => ToolAnswer::error(e),
        }
    }

    async fn list_files(&self, args: &Map<String, Value>) -> Result<String, String> {
        let path = optional_str(args, "path", Blank::Whitespace)?.unwrap_or(".");
        let recursive = args
            .get("recursive")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let root = self.root.clone();
        let shown = path.to_string();
        tokio::task::spawn_blocking(move || {
            let handle = Root::new(&root).open_existing(&shown, OpenFor::List)?;
            // Listed through its descriptor: the directory opened beneath the root.
            let dir = fd_path(&handle);
            let mut lines = Vec::new();
            let mut omitted = 0usize;
            walk(&dir, &dir, recursive, &mut lines, &mut omitted)
                .map_err(|e| format!("cannot list '{shown}': {e}"))?;
            let mut text = lines.join("\n");
            if lines.is_empty() {
                text = "(empty directory)".into();
            }
            if omitted > 0 {
                text.push_str(&format!("\n… {omitted} more entries not shown"));
            }
            Ok(text)
        })
        .await
        .map_err(|e| format!("list_files failed: {e}"))?
    }

    async fn read_file(&self, args: &Map<String, Value>) -> Result<String, String> {
        let path = required_str(args, "path", Blank::Whitespace)?.to_string();
        let root = self.root.clone();
        // Off the async threads, and never more than a prefix of a large file.
        tokio::task::spawn_blocking(move || {
            let file = Root::new(&root).open_existing(&path, OpenFor::Read)?;
            read_prefix(file, &path)
        })
        .await
        .map_err(|e| format!("read_file failed: {e}"))?
    }

    async fn write_file(&mut self, args: &Map<String, Value>) -> Result<String, String> {
        let path = required_str(args, "path", Blank::Whitespace)?.to_string();
        let content = match args.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) => {
                return Err(
                    "missing required argument 'content' (the whole file as a string)".into(),
                )
            }
            Some(other) => return Err(format!("argument 'content' must be a string, got {other}")),
        };
        let root = self.root.clone();
        let shown = path.clone();
        let rel = tokio::task::spawn_blocking(move || {
            let confined = Root::new(&root);
            let target = confined.resolve_new_file(&shown)?;
            // Where the path really leads, symlinks resolved: never into git's files.
            if confined.is_in_git(&target) {
                return Err(format!("writes into .git are not allowed ('{shown}')"));
            }
            use std::io::Write;
            let cannot = |e: std::io::Error| format!("cannot write '{shown}': {e}");
            // Opened beneath the root and cut only once known to be a regular file with
            // one link.
            let (mut f, rel) = confined.open_new_file(&shown)?;
            if !f.metadata().map_err(cannot)?.is_file() {
                return Err(format!(
                    "'{shown}' is not a regular file; refusing to write to it"
                ));
            }
            f.set_len(0).map_err(cannot)?;
            f.write_all(content.as_bytes()).map_err(cannot)?;
            Ok::<_, String>((rel.to_string_lossy().into_owned(), content.len()))
        })
        .await
        .map_err(|e| format!("write_file failed: {e}"))??;
        self.written.insert(rel.0.clone());
        Ok(format!("wrote {} bytes to {}", rel.1, rel.0))
    }

    async fn run_command(
        &self,
        args: &Map<String, Value>,
        cancel: &CancellationToken,
    ) -> Result<String, String> {
        let command = required_str(args, "command", Blank::Whitespace)?;
        let cwd = optional_str(args, "cwd", Blank::Whitespace)?.unwrap_or(".");
        let spec = tool_command(
            &self.root,
            command,
            cwd,
            self.command_timeout,
            self.max_output_bytes,
            "commands run without a shell: no pipes, redirection or builtins",
        )?;
        let out = run_sandboxed(&spec, &self.env, &self.sandbox, cancel)
            .await
            .map_err(|e| format!("cannot start '{}': {e}", spec.argv[0]))?;
        let status = if let Some(limit) = &out.limit {
            format!("{limit}; killed")
        } else if out.cancelled {
            "cancelled; process group killed".to_string()
        } else if out.timed_out {
            format!(
                "timed out after {:.0}s; process group killed",
                spec.timeout.as_secs_f64()
            )
        } else {
            match (out.exit_code, out.signal) {
                (Some(code), _) => format!("exit code {code}"),
                (None, s) => format!("killed by signal {}", s.unwrap_or(0)),
            }
        };
        Ok(format_output(
            &status,
            &out.stdout,
            &out.stderr,
            out.truncated,
        ))
    }
}

/// Reads at most [`MAX_READ_BYTES`] of a text file; a longer one is cut at
/// [`MAX_READ_CHARS`] characters with a note.
fn read_prefix(file: std::fs::File, path: &str) -> Result<String, String> {
    use std::io::Read;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read '{path}': {e}"))?;
    if meta.is_dir() {
        return Err(format!("'{path}' is a directory; list it with list_files"));
    }
    if !meta.is_file() {
        return Err(format!(
            "'{path}' is not a regular file; refusing to read it"
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_READ_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read '{path}': {e}"))?;
    let cut_bytes = meta.len() > bytes.len() as u64 || bytes.len() as u64 >= MAX_READ_BYTES;
    let text = match String::from_utf8(bytes) {
        Ok(t) => t,
        // A character split by the cut at the end is not an error.
        Err(e) if cut_bytes && e.utf8_error().error_len().is_none() => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).expect("valid up to here")
        }
        Err(e) => {
            return Err(format!(
                "'{path}' is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ))
        }
    };
    if cut_bytes || text.chars().count() > MAX_READ_CHARS {
        let cut: String = text.chars().take(MAX_READ_CHARS).collect();
        return Ok(format!(
            "{cut}\n… [file continues ({} bytes in all): only the first {MAX_READ_CHARS} characters are shown]",
            meta.len()
        ));
    }
    Ok(text)
}

/// A command's status and output as the model reads it.
pub fn format_output(status: &str, stdout: &str, stderr: &str, truncated: bool) -> String {
    let mut text = status.to_string();
    for (name, s) in [("stdout", stdout), ("stderr", stderr)] {
        if !s.trim().is_empty() {
            text.push_str(&format!("\n--- {name} ---\n{}", s.trim_end()));
        }
    }
    if truncated {
        text.push_str("\n… [output was cut at the size limit]");
    }
    text
}

fn walk(
    base: &Path,
    dir: &Path,
    recursive: bool,
    lines: &mut Vec<String>,
    omitted: &mut usize,
) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        let is_dir = e.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let rel = path
            .strip_prefix(base)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        if lines.len() >= MAX_LIST_ENTRIES {
            *omitted += 1;
            continue;
        }
        lines.push(if is_dir { format!("{rel}/") } else { rel });
        if recursive && is_dir && !SKIPPED_DIRS.contains(&name.as_str()) {
            walk(base, &path, recursive, lines, omitted)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "c".into(),
            name: name.into(),
            arguments,
        }
    }

    #[actix_rt::test]
    async fn the_tools_work_inside_the_workspace_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ws");
        std::fs::create_dir(&root).unwrap();
        let root = root.canonicalize().unwrap();
        let mut bench = Workbench::new(root.clone(), Duration::from_secs(10), 4096);
        let cancel = CancellationToken::new();
        let w = bench
            .run(
                &call(
                    "write_file",
                    json!({"path": "src/a.py", "content": "print(1)\n"}),
                ),
                &cancel,
            )
            .await;
        assert!(w.ok, "{w:?}");
        assert_eq!(
            std::fs::read_to_string(root.join("src/a.py")).unwrap(),
            "print(1)\n"
        );
        assert!(bench.written().contains("src/a.py"));
        let r = bench
            .run(&call("read_file", json!({"path": "src/a.py"})), &cancel)
            .await;
        assert_eq!(r.text, "print(1)\n");
        let l = bench
            .run(&call("list_files", json!({"recursive": true})), &cancel)
            .await;
        assert_eq!(l.text, "src/\nsrc/a.py");
        let c = bench
            .run(
                &call("run_command", json!({"command": "cat a.py", "cwd": "src"})),
                &cancel,
            )
            .await;
        assert_eq!(c.text, "exit code 0\n--- stdout ---\nprint(1)");
        let e = bench
            .run(&call("read_file", json!({"path": "../outside"})), &cancel)
            .await;
        assert!(!e.ok && e.text.contains("outside"), "{e:?}");
        let e = bench
            .run(&call("write_file", json!({"path": "x"})), &cancel)
            .await;
        assert!(e.text.contains("'content'"), "{e:?}");
        let e = bench.run(&call("nope", json!({})), &cancel).await;
        assert!(e.text.contains("unknown tool 'nope'"), "{e:?}");
        let e = bench.run(&call("read_file", json!("{bad")), &cancel).await;
        assert!(e.text.contains("not a JSON object"), "{e:?}");
        let e = bench
            .run(&call("run_command", json!({"command": "ls | wc"})), &cancel)
            .await;
        assert!(e.ok && e.text.starts_with("exit code 2"), "no shell: {e:?}");
    }

    #[actix_rt::test]
    async fn read_file_reads_only_a_prefix_and_write_file_never_lands_in_git() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut bench = Workbench::new(root.clone(), Duration::from_secs(10), 4096);
        let cancel = CancellationToken::new();
        // 6 MB of 'é' (2 bytes each): only the first 100k characters come back.
        std::fs::write(root.join("big.txt"), "é".repeat(3_000_000)).unwrap();
        let r = bench
            .run(&call("read_file", json!({"path": "big.txt"})), &cancel)
            .await;
        assert!(r.ok, "{}", &r.text[..100]);
        assert!(r.text.contains("file continues (6000000 bytes in all)"));
        assert_eq!(r.text.chars().filter(|c| *c == 'é').count(), MAX_READ_CHARS);
        // A cut in the middle of a character is no error.
        std::fs::write(root.join("odd.txt"), "a".to_string() + &"€".repeat(200_000)).unwrap();
        let r = bench
            .run(&call("read_file", json!({"path": "odd.txt"})), &cancel)
            .await;
        assert!(r.ok && r.text.contains("file continues"));
        std::fs::write(root.join("latin1.txt"), b"caf\xe9\n").unwrap();
        let r = bench
            .run(&call("read_file", json!({"path": "latin1.txt"})), &cancel)
            .await;
        assert!(!r.ok && r.text.contains("not UTF-8"), "{r:?}");
        let r = bench
            .run(&call("read_file", json!({"path": "."})), &cancel)
            .await;
        assert!(r.text.contains("is a directory"), "{r:?}");

        std::fs::create_dir_all(root.join(".git/hooks")).unwrap();
        std::os::unix::fs::symlink(".git", root.join("g")).unwrap();
        let w = bench
            .run(
                &call(
                    "write_file",
                    json!({"path": "g/hooks/pre-commit", "content": "x"}),
                ),
                &cancel,
            )
            .await;
        assert!(!w.ok && w.text.contains(".git"), "{w:?}");
        assert!(!root.join(".git/hooks/pre-commit").exists());
    }
}
