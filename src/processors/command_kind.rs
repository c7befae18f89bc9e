//! The processor shape shared by `batch_validation` and `batch_tests`: run one command per
//! item with the item's target appended (as [`super::targets`] reads it), and judge the
//! exit code.

use super::targets::{target_words, TargetKind};
use crate::model::summary::SummaryAlias;
use crate::model::ItemOutcome;
use crate::processor::{FieldError, Item, ItemContext, Processor};
use crate::sandbox::confine::Root;
use crate::sandbox::spawn::{
    find_program, run_sandboxed, split_command, CommandEnv, CommandSpec, DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT,
};
use crate::sandbox::Sandbox;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Longest per-item timeout a job may ask for (a day).
const MAX_TIMEOUT_SECONDS: f64 = 86_400.0;
/// Largest output cap a job may ask for, per stream.
const MAX_OUTPUT_CAP: u64 = 16 * 1024 * 1024;

/// Runs one command per item; see [`super::validation`] and [`super::test_suite`].
pub struct CommandProcessor {
    pub(super) kind: &'static str,
    pub(super) root: PathBuf,
    /// Result field that carries the item's id (`target_id`, `module_id`).
    pub(super) id_field: &'static str,
    /// Job option that holds the command (`check_command`, `test_command`).
    pub(super) command_option: &'static str,
    pub(super) default_command: &'static str,
    /// Which exit codes count as passing.
    pub(super) passes: fn(i32) -> bool,
    /// The original's names for this kind's summary counts.
    pub(super) summary_aliases: &'static [SummaryAlias],
    pub(super) concurrency: usize,
    /// The sandbox its commands run in (none until the engine gives its own).
    pub(super) sandbox: std::sync::Arc<Sandbox>,
}

impl CommandProcessor {
    /// The canonical workspace root every item path is confined to.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs its commands in `sandbox` (the engine passes the one in force).
    pub fn with_sandbox(self, sandbox: std::sync::Arc<Sandbox>) -> Self {
        CommandProcessor { sandbox, ..self }
    }

    pub(super) fn canonical_root(root: &Path) -> std::io::Result<PathBuf> {
        // Command kinds are built while the engine starts, before it has grown.
        crate::sandbox::guardian::start_early();
        root.canonicalize()
    }

    fn command<'a>(&self, options: &'a Value) -> &'a str {
        options
            .get(self.command_option)
            .and_then(Value::as_str)
            .unwrap_or(self.default_command)
    }

    fn timeout(options: &Value) -> Duration {
        options
            .get("timeout_seconds")
            .and_then(Value::as_f64)
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_TIMEOUT)
    }

    fn max_output(options: &Value) -> usize {
        options
            .get("max_output_bytes")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_OUTPUT_BYTES)
    }
}

#[async_trait::async_trait(?Send)]
impl Processor for CommandProcessor {
    fn kind(&self) -> &str {
        self.kind
    }

    fn default_concurrency(&self) -> usize {
        self.concurrency
    }

    fn summary_aliases(&self) -> &'static [SummaryAlias] {
        self.summary_aliases
    }

    fn validate_options(&self, options: &Value) -> Result<(), FieldError> {
        let field = self.command_option;
        let command = match options.get(field) {
            None | Some(Value::Null) => self.default_command,
            Some(Value::String(s)) => s.as_str(),
            Some(other) => {
                return Err(FieldError::new(
                    field,
                    format!("must be a string, got {other}"),
                ))
            }
        };
        let argv = split_command(command).map_err(|e| FieldError::new(field, e))?;
        if find_program(&argv[0], &self.root).is_none() {
            return Err(FieldError::new(
                field,
                format!(
                    "program '{}' was not found (looked on PATH and in the workspace)",
                    argv[0]
                ),
            ));
        }
        TargetKind::from_options(options)?;
        crate::model::options::seconds(options, "timeout_seconds", MAX_TIMEOUT_SECONDS)?;
        self.sandbox.check_options(options)?;
        match options.get("max_output_bytes") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_OUTPUT_CAP).contains(&n) => {}
                _ => {
                    return Err(FieldError::new(
                        "max_output_bytes",
                        format!("must be an integer in 1..={MAX_OUTPUT_CAP}, got {v}"),
                    ))
                }
            },
        }
        Ok(())
    }

    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome {
        let path = item
            .payload
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let mut result = Map::new();
        result.insert(self.id_field.into(), json!(item.key));
        result.insert("path".into(), json!(path));
        let error = |mut result: Map<String, Value>, message: String| {
            result.insert("status".into(), json!("error"));
            result.insert("exit_code".into(), Value::Null);
            result.insert("stdout".into(), json!(""));
            result.insert("stderr".into(), json!(""));
            result.insert("error".into(), json!(message));
            ItemOutcome::failed(Value::Object(result), message)
        };
        // Checked at submission; a job stored before the option existed reads as `path`.
        let kind = TargetKind::from_options(&ctx.options).unwrap_or(TargetKind::Path);
        let words = match target_words(Root::new(&self.root), &path, kind) {
            Ok(w) => w,
            Err(e) => return error(result, e),
        };
        let command = self.command(&ctx.options);
        let mut argv = match split_command(command) {
            Ok(a) => a,
            Err(e) => return error(result, format!("{}: {e}", self.command_option)),
        };
        argv.extend(words);
        ctx.progress.current(format!("{} {}", item.key, path));
        let spec = CommandSpec {
            argv,
            cwd: self.root.clone(),
            timeout: Self::timeout(&ctx.options),
            max_output_bytes: Self::max_output(&ctx.options),
        };
        let sandbox = self.sandbox.item(&ctx.options, &self.root);
        let out = match run_sandboxed(&spec, &CommandEnv::default(), &sandbox, &ctx.cancel).await {
            Ok(out) => out,
            Err(e) => return error(result, format!("cannot start '{}': {e}", spec.argv[0])),
        };
        result.insert("exit_code".into(), json!(out.exit_code));
        result.insert("stdout".into(), json!(out.stdout));
        result.insert("stderr".into(), json!(out.stderr));
        result.insert("truncated".into(), json!(out.truncated));
        result.insert(
            "duration_seconds".into(),
            json!((out.duration.as_secs_f64() * 1000.0).round() / 1000.0),
        );
        if out.cancelled {
            result.insert("status".into(), json!("cancelled"));
            return ItemOutcome::cancelled(Value::Object(result));
        }
        if out.timed_out {
            let message = format!(
                "timed out after {:.1}s; process group killed",
                spec.timeout.as_secs_f64()
            );
            result.insert("status".into(), json!("error"));
            result.insert("error".into(), json!(message));
            // A timeout is an error, not a verdict: the job's max_attempts may retry it.
            return ItemOutcome::error(Value::Object(result), message);
        }
        if let Some(limit) = out.limit {
            result.insert("status".into(), json!("error"));
            result.insert("error".into(), json!(limit));
            // The same command would hit the same limit again: not worth a retry.
            return ItemOutcome::failed(Value::Object(result), limit);
        }
        match out.exit_code {
            Some(code) if (self.passes)(code) => {
                result.insert("status".into(), json!("passed"));
                ItemOutcome::succeeded(Value::Object(result))
            }
            Some(code) => {
                result.insert("status".into(), json!("failed"));
                ItemOutcome::failed(Value::Object(result), format!("exit code {code}"))
            }
            None => {
                let message = format!("killed by signal {}", out.signal.unwrap_or(0));
                result.insert("status".into(), json!("failed"));
                result.insert("error".into(), json!(message));
                // A crashed process (OOM killer, segfault) is an error worth retrying.
                ItemOutcome::error(Value::Object(result), message)
            }
        }
    }
}

/// Default per-kind concurrency for command processors: enough to keep the cores busy
/// while commands wait on I/O.
pub(super) fn default_command_concurrency() -> usize {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    (cores * 2).max(8)
}
