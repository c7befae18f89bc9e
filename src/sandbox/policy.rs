//! The sandbox in force and what one item may ask of it: the server's mode (`auto`,
//! `bwrap`, `none`, probed once at start), its default and maximum resource limits, and the
//! job options `sandbox`, `network`, `env`, `memory_mb`, `cpu_seconds`, `max_processes` and
//! `max_file_mb`, checked at submission and read for each item.

use crate::model::FieldError;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// How a server isolates the commands it runs (`serve --sandbox`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SandboxMode {
    /// bubblewrap when a probe run at start works, else none (with a warning). The
    /// default, for `serve` and for embedders alike: tools installed under `$HOME` stay
    /// reachable through their read-only tool roots (see [`super::bwrap::tool_roots`]).
    #[default]
    Auto,
    /// bubblewrap, or refuse to start.
    Bwrap,
    /// No isolation; resource limits still apply.
    None,
}

impl std::str::FromStr for SandboxMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(SandboxMode::Auto),
            "bwrap" => Ok(SandboxMode::Bwrap),
            "none" => Ok(SandboxMode::None),
            other => Err(format!(
                "'{other}' is not a sandbox mode (auto, bwrap, none)"
            )),
        }
    }
}

/// Per-item resource limits; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Address space in MiB (RLIMIT_AS).
    pub memory_mb: Option<u64>,
    /// CPU seconds (RLIMIT_CPU).
    pub cpu_seconds: Option<u64>,
    /// Processes at once in the item's sandbox (counted by a watcher, see `spawn`).
    pub max_processes: Option<u64>,
    /// Largest file the command may write, in MiB (RLIMIT_FSIZE).
    pub max_file_mb: Option<u64>,
}

impl Limits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        self.memory_mb.is_some()
            || self.cpu_seconds.is_some()
            || self.max_processes.is_some()
            || self.max_file_mb.is_some()
    }
}

/// The options that name each limit, with the largest value any server accepts.
const LIMIT_OPTIONS: [(&str, u64); 4] = [
    ("memory_mb", 1 << 24),
    ("cpu_seconds", 7 * 86_400),
    ("max_processes", 1 << 22),
    ("max_file_mb", 1 << 24),
];

fn limit_mut<'a>(limits: &'a mut Limits, name: &str) -> &'a mut Option<u64> {
    match name {
        "memory_mb" => &mut limits.memory_mb,
        "cpu_seconds" => &mut limits.cpu_seconds,
        "max_processes" => &mut limits.max_processes,
        _ => &mut limits.max_file_mb,
    }
}

/// Most variables a job's `env` may set.
const MAX_ENV: usize = 256;

/// The sandbox settings of an engine ([`crate::EngineConfig::sandbox`]).
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// The mode asked for.
    pub mode: SandboxMode,
    /// Limits of items whose job sets none.
    pub defaults: Limits,
    /// The most a job may ask for; a job asking more is refused naming the option.
    pub maxima: Limits,
    /// More paths to hide from sandboxed commands (the engine adds its database's).
    pub hidden: Vec<PathBuf>,
    /// More paths bound read-only, visible even inside a hidden directory
    /// (`--sandbox-ro-path`); each must exist.
    pub read_only: Vec<PathBuf>,
}

/// The sandbox in force in an engine, resolved once at start; its default is
/// [`Sandbox::none`].
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The bubblewrap binary, when bwrap is in force.
    bwrap: Option<PathBuf>,
    /// Why bwrap is not in force (asked for none, or the probe failed).
    why_not: String,
    defaults: Limits,
    maxima: Limits,
    hidden: Vec<PathBuf>,
    /// Bound read-only in every sandbox: the tool roots found on `PATH` and the
    /// configured read-only paths.
    readable: Vec<PathBuf>,
    /// Set in every sandbox before the job's `env`: the tools' root variables.
    tool_env: Vec<(String, String)>,
}

/// What one command runs under: derived from the server's [`Sandbox`] and its job's
/// options by [`Sandbox::item`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemSandbox {
    /// Run under this bubblewrap binary; `None` runs the command directly.
    pub bwrap: Option<PathBuf>,
    /// Keep the network (bwrap only; without bwrap the network is always there).
    pub network: bool,
    /// The tools' root variables, then the job's `env`, set over the allowlisted
    /// environment.
    pub env: Vec<(String, String)>,
    /// Resource limits.
    pub limits: Limits,
    /// Paths bound read-write (the workspace or the agent task's worktree).
    pub writable: Vec<PathBuf>,
    /// Paths bound read-only over hidden ones (a worktree's repository).
    pub readable: Vec<PathBuf>,
    /// Paths hidden behind an empty tmpfs (directories) or `/dev/null` (files).
    pub hidden: Vec<PathBuf>,
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::none()
    }
}

impl Sandbox {
    /// No isolation and no limits: what processors built outside an engine use.
    pub fn none() -> Sandbox {
        Sandbox {
            bwrap: None,
            why_not: "the sandbox mode is none".into(),
            defaults: Limits::default(),
            maxima: Limits::default(),
            hidden: Vec::new(),
            readable: Vec::new(),
            tool_env: Vec::new(),
        }
    }

    /// Resolves `config`: probes bubblewrap (a real `bwrap … true` run) unless the mode
    /// is `none`. A forced `bwrap` that does not work is an error naming the reason.
    pub fn start(config: &SandboxConfig) -> Result<Sandbox, String> {
        for (name, _) in LIMIT_OPTIONS {
            let (mut d, mut m) = (config.defaults, config.maxima);
            if let (Some(d), Some(m)) = (*limit_mut(&mut d, name), *limit_mut(&mut m, name)) {
                if d > m {
                    return Err(format!(
                        "sandbox default {name} {d} is above its maximum {m}"
                    ));
                }
            }
        }
        let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        let mut read_only = Vec::new();
        for p in &config.read_only {
            let real = p
                .canonicalize()
                .map_err(|e| format!("--sandbox-ro-path {}: {e}", p.display()))?;
            read_only.push(real);
        }
        let mut sandbox = Sandbox {
            defaults: config.defaults,
            maxima: config.maxima,
            hidden: config.hidden.iter().map(absolute).collect(),
            ..Sandbox::none()
        };
        if config.mode == SandboxMode::None {
            log::info!("sandbox: none (commands run unisolated, resource limits only)");
            return Ok(sandbox);
        }
        match probe() {
            Ok(bwrap) => {
                let tools =
                    super::bwrap::tool_roots(&std::env::var_os("PATH").unwrap_or_default(), &|k| {
                        std::env::var(k).ok()
                    });
                let list = |paths: &[PathBuf]| {
                    if paths.is_empty() {
                        "none".to_string()
                    } else {
                        paths
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                };
                log::info!(
                    "sandbox: bwrap ({}); tool roots bound read-only: {}; --sandbox-ro-path: {}",
                    bwrap.display(),
                    list(&tools.roots),
                    list(&read_only)
                );
                for why in &tools.skipped {
                    log::warn!("sandbox: PATH entry left hidden: {why}");
                }
                sandbox.readable = tools.roots;
                sandbox.readable.extend(read_only);
                sandbox.tool_env = tools.env;
                sandbox.bwrap = Some(bwrap);
            }
            Err(why) if config.mode == SandboxMode::Bwrap => {
                return Err(format!("--sandbox bwrap: bubblewrap is unusable: {why}"));
            }
            Err(why) => {
                log::warn!(
                    "sandbox: none, bubblewrap is unusable ({why}); commands run unisolated"
                );
                sandbox.why_not = format!("bubblewrap is unusable here: {why}");
            }
        }
        Ok(sandbox)
    }

    /// The flags of `batchforge mcp-server` that run its `run_command` in this sandbox
    /// with the default limits: the built-in server is one long-lived process shared by
    /// jobs, so a job's own sandbox options do not reach it.
    pub fn server_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if let Some(b) = &self.bwrap {
            a.extend(["--sandbox-bwrap".into(), b.to_string_lossy().into_owned()]);
        }
        for h in &self.hidden {
            a.extend(["--sandbox-hide".into(), h.to_string_lossy().into_owned()]);
        }
        for r in &self.readable {
            a.extend(["--sandbox-ro-bind".into(), r.to_string_lossy().into_owned()]);
        }
        for (k, v) in &self.tool_env {
            a.extend(["--sandbox-env".into(), format!("{k}={v}")]);
        }
        let mut d = self.defaults;
        for (name, _) in LIMIT_OPTIONS {
            if let Some(n) = *limit_mut(&mut d, name) {
                a.extend([
                    format!("--sandbox-{}", name.replace('_', "-")),
                    n.to_string(),
                ]);
            }
        }
        a
    }

    /// What is bound read-only in every sandbox: the tool roots and `--sandbox-ro-path`s.
    pub fn readable(&self) -> &[PathBuf] {
        &self.readable
    }

    /// The mode in force: `bwrap` or `none`.
    pub fn mode(&self) -> &'static str {
        if self.bwrap.is_some() {
            "bwrap"
        } else {
            "none"
        }
    }

    /// Checks a job's sandbox options; the error names the option. A job may only
    /// tighten the sandbox: `sandbox: none` on a bwrap server is refused, and so is
    /// `sandbox: bwrap` on a server without it.
    pub fn check_options(&self, options: &Value) -> Result<(), FieldError> {
        match options.get("sandbox") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "bwrap" => {
                if self.bwrap.is_none() {
                    return Err(FieldError::new(
                        "sandbox",
                        format!("this server cannot run bwrap sandboxes: {}", self.why_not),
                    ));
                }
            }
            Some(Value::String(s)) if s == "none" => {
                if self.bwrap.is_some() {
                    return Err(FieldError::new(
                        "sandbox",
                        "a job may only tighten the sandbox: this server runs every command \
                         under bwrap, so 'none' is refused",
                    ));
                }
            }
            Some(v) => {
                return Err(FieldError::new(
                    "sandbox",
                    format!("must be \"bwrap\" or \"none\", got {v}"),
                ))
            }
        }
        match options.get("network") {
            None | Some(Value::Null) | Some(Value::Bool(_)) => {}
            Some(v) => {
                return Err(FieldError::new(
                    "network",
                    format!("must be true or false, got {v}"),
                ))
            }
        }
        job_env(options)?;
        for (name, hard_max) in LIMIT_OPTIONS {
            let mut maxima = self.maxima;
            let max = limit_mut(&mut maxima, name).unwrap_or(hard_max);
            match options.get(name) {
                None | Some(Value::Null) => {}
                Some(v) => match v.as_u64() {
                    Some(n) if (1..=max).contains(&n) => {}
                    _ => {
                        return Err(FieldError::new(
                            name,
                            format!("must be an integer in 1..={max}, got {v}"),
                        ))
                    }
                },
            }
        }
        Ok(())
    }

    /// The sandbox of one item of a job with `options` (checked at submission, read
    /// leniently here), whose command may write `writable`.
    pub fn item(&self, options: &Value, writable: &Path) -> ItemSandbox {
        let mut limits = self.defaults;
        for (name, _) in LIMIT_OPTIONS {
            if let Some(n) = options.get(name).and_then(Value::as_u64) {
                *limit_mut(&mut limits, name) = Some(n);
            }
        }
        let mut env = self.tool_env.clone();
        env.extend(job_env(options).unwrap_or_default());
        ItemSandbox {
            bwrap: self.bwrap.clone(),
            network: options.get("network").and_then(Value::as_bool) == Some(true),
            env,
            limits,
            writable: vec![writable.to_path_buf()],
            readable: self.readable.clone(),
            hidden: self.hidden.clone(),
        }
    }
}

impl ItemSandbox {
    /// When `dir` is a git worktree (its `.git` a file naming its git directory), lets
    /// its commands use git: the repository's git directory read-only, and of it only
    /// the worktree's own directory (its HEAD and index) and the object store writable,
    /// so that a commit works but the user's branches, tags and config cannot change.
    pub fn share_git_worktree(&mut self, dir: &Path) {
        let Ok(text) = std::fs::read_to_string(dir.join(".git")) else {
            return;
        };
        let Some(gitdir) = text.trim().strip_prefix("gitdir:").map(str::trim) else {
            return;
        };
        let gitdir = dir.join(gitdir);
        let common = std::fs::read_to_string(gitdir.join("commondir"))
            .map(|c| gitdir.join(c.trim()))
            .unwrap_or_else(|_| gitdir.join("../.."));
        let (Ok(gitdir), Ok(common)) = (gitdir.canonicalize(), common.canonicalize()) else {
            return;
        };
        self.readable.push(common.clone());
        self.writable.push(gitdir);
        self.writable.push(common.join("objects"));
    }
}

/// The job option `env`: an object of strings whose names a shell could set.
fn job_env(options: &Value) -> Result<Vec<(String, String)>, FieldError> {
    let map = match options.get("env") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) if m.len() <= MAX_ENV => m,
        Some(v) => {
            return Err(FieldError::new(
                "env",
                format!("must be an object of at most {MAX_ENV} string values, got {v}"),
            ))
        }
    };
    let mut env = Vec::with_capacity(map.len());
    for (name, value) in map {
        let good_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !good_name {
            return Err(FieldError::new(
                format!("env.{name}"),
                "a variable name is letters, digits and '_', not starting with a digit",
            ));
        }
        match value.as_str() {
            Some(s) => env.push((name.clone(), s.to_string())),
            None => {
                return Err(FieldError::new(
                    format!("env.{name}"),
                    format!("must be a string, got {value}"),
                ))
            }
        }
    }
    Ok(env)
}

/// Finds bubblewrap and runs it once with the options every sandbox uses.
fn probe() -> Result<PathBuf, String> {
    let bwrap = super::spawn::find_program("bwrap", Path::new("/"))
        .ok_or_else(|| "no 'bwrap' on PATH (install the bubblewrap package)".to_string())?;
    let out = std::process::Command::new(&bwrap)
        .args(super::bwrap::PROBE_ARGS)
        .arg("true")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
    if out.status.success() {
        Ok(bwrap)
    } else {
        Err(format!(
            "{} {} true failed ({}): {}",
            bwrap.display(),
            super::bwrap::PROBE_ARGS.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn server(bwrap: bool, maxima: Limits) -> Sandbox {
        Sandbox {
            bwrap: bwrap.then(|| PathBuf::from("/usr/bin/bwrap")),
            maxima,
            ..Sandbox::none()
        }
    }

    #[test]
    fn a_job_may_only_tighten_the_sandbox() {
        let on = server(true, Limits::default());
        let off = server(false, Limits::default());
        assert!(on.check_options(&json!({"sandbox": "bwrap"})).is_ok());
        assert_eq!(
            on.check_options(&json!({"sandbox": "none"}))
                .unwrap_err()
                .field,
            "sandbox"
        );
        let e = off.check_options(&json!({"sandbox": "bwrap"})).unwrap_err();
        assert_eq!(e.field, "sandbox");
        assert!(e.message.contains("sandbox mode is none"), "{}", e.message);
        assert!(off.check_options(&json!({"sandbox": "none"})).is_ok());
        assert!(on.check_options(&json!({"sandbox": 1})).is_err());
    }

    #[test]
    fn limits_env_and_network_are_checked_naming_the_option() {
        let s = server(
            true,
            Limits {
                memory_mb: Some(1024),
                ..Limits::default()
            },
        );
        for (options, field) in [
            (json!({"memory_mb": 2048}), "memory_mb"),
            (json!({"memory_mb": 0}), "memory_mb"),
            (json!({"cpu_seconds": "2"}), "cpu_seconds"),
            (json!({"max_processes": -1}), "max_processes"),
            (json!({"max_file_mb": 1.5}), "max_file_mb"),
            (json!({"network": "yes"}), "network"),
            (json!({"env": ["A"]}), "env"),
            (json!({"env": {"A": 1}}), "env.A"),
            (json!({"env": {"1A": "x"}}), "env.1A"),
            (json!({"env": {"A=B": "x"}}), "env.A=B"),
        ] {
            assert_eq!(
                s.check_options(&options).unwrap_err().field,
                field,
                "{options}"
            );
        }
        assert!(s
            .check_options(&json!({"memory_mb": 1024, "env": {"A_1": "x"}, "network": true}))
            .is_ok());
    }

    #[test]
    fn an_item_takes_the_job_limits_over_the_defaults() {
        let s = Sandbox {
            defaults: Limits {
                memory_mb: Some(512),
                cpu_seconds: Some(10),
                ..Limits::default()
            },
            ..server(true, Limits::default())
        };
        let item = s.item(
            &json!({"cpu_seconds": 2, "network": true, "env": {"X": "1"}}),
            Path::new("/w"),
        );
        assert_eq!(item.limits.memory_mb, Some(512));
        assert_eq!(item.limits.cpu_seconds, Some(2));
        assert!(item.network);
        assert_eq!(item.env, [("X".to_string(), "1".to_string())]);
        assert_eq!(item.writable, [PathBuf::from("/w")]);
    }

    #[test]
    fn a_default_above_its_maximum_is_refused() {
        let config = SandboxConfig {
            mode: SandboxMode::None,
            defaults: Limits {
                cpu_seconds: Some(20),
                ..Limits::default()
            },
            maxima: Limits {
                cpu_seconds: Some(10),
                ..Limits::default()
            },
            hidden: Vec::new(),
            read_only: Vec::new(),
        };
        assert!(Sandbox::start(&config).unwrap_err().contains("cpu_seconds"));
    }
}
