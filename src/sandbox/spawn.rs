//! Running one external command safely: no shell, confined to the workspace, bounded in
//! time and output, and killed with its whole process group when it must stop.

use super::confine::Root;
use super::policy::ItemSandbox;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

/// Default cap on each of stdout and stderr.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 * 1024;
/// Default per-item timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// Splits a command line into argv the way a POSIX shell would, without running one.
pub fn split_command(command: &str) -> Result<Vec<String>, String> {
    let argv = shell_words::split(command).map_err(|e| format!("cannot parse '{command}': {e}"))?;
    if argv.is_empty() {
        return Err("must not be empty".into());
    }
    Ok(argv)
}

/// Finds `program` as `execvp` would: a name with a slash is taken relative to `cwd`,
/// anything else is looked up on `PATH`.
pub fn find_program(program: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if program.contains('/') {
        let p = cwd.join(program);
        return executable(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// A `run_command` tool's command (the agent's and the MCP server's), ready to run: `cwd`
/// confined to `root` and a directory, the command split into argv without a shell, its
/// program found (`hint` says where it was looked for when it is not).
pub fn tool_command(
    root: &Path,
    command: &str,
    cwd: &str,
    timeout: Duration,
    max_output_bytes: usize,
    hint: &str,
) -> Result<CommandSpec, String> {
    let cwd = root.join(Root::new(root).resolve_existing(cwd)?);
    if !cwd.is_dir() {
        return Err(format!("cwd '{}' is not a directory", cwd.display()));
    }
    let argv = split_command(command).map_err(|e| format!("command {e}"))?;
    if find_program(&argv[0], &cwd).is_none() {
        return Err(format!("program '{}' was not found ({hint})", argv[0]));
    }
    Ok(CommandSpec {
        argv,
        cwd,
        timeout,
        max_output_bytes,
    })
}

/// What to run.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Program and arguments; no shell is involved.
    pub argv: Vec<String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Killed (with its process group) after this long.
    pub timeout: Duration,
    /// Cap for each of stdout and stderr.
    pub max_output_bytes: usize,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandOutput {
    /// Exit code, `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// Signal that ended it, if any.
    pub signal: Option<i32>,
    /// Captured stdout (lossy UTF-8), at most the cap.
    pub stdout: String,
    /// Captured stderr (lossy UTF-8), at most the cap.
    pub stderr: String,
    /// Whether either stream was cut at the cap.
    pub truncated: bool,
    /// Killed because it ran past the timeout.
    pub timed_out: bool,
    /// Killed because the item was cancelled.
    pub cancelled: bool,
    /// Wall time.
    pub duration: Duration,
    /// The resource limit that ended it (`memory limit of 512 MB reached`), if one did.
    pub limit: Option<String>,
}

/// Kills the process group on drop, so no child outlives its item even when the future
/// running it is dropped; while it lives, the guardian kills the group if the engine dies.
struct GroupGuard {
    pgid: i32,
    /// Keeps the group registered with the guardian; dropped after `drop` killed it.
    _watch: super::guardian::Watch,
}

impl GroupGuard {
    fn new(pgid: i32) -> Self {
        GroupGuard {
            pgid,
            _watch: super::guardian::watch(pgid),
        }
    }

    fn kill(&self) {
        // SAFETY: killpg only sends a signal; a group that is gone yields ESRCH.
        unsafe {
            libc::killpg(self.pgid, libc::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // The group dies before the guardian forgets it (fields drop after this body).
        self.kill();
    }
}

/// What a reader task has captured so far; shared so that a reader stuck on a pipe held
/// open by an escaped descendant does not take the captured output with it.
#[derive(Default)]
struct Captured {
    kept: Vec<u8>,
    truncated: bool,
}

async fn read_capped<R: AsyncRead + Unpin>(
    mut r: R,
    cap: usize,
    into: std::sync::Arc<std::sync::Mutex<Captured>>,
) {
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut c = into.lock().unwrap_or_else(|p| p.into_inner());
                let room = cap.saturating_sub(c.kept.len());
                if n > room {
                    c.truncated = true;
                }
                // Keep draining past the cap so the child never blocks on a full pipe.
                c.kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Changes to the environment a command inherits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandEnv {
    /// Variables set.
    pub set: Vec<(String, String)>,
    /// Variables removed.
    pub remove: Vec<String>,
}

/// Runs a command to completion, timeout or cancellation. Fails only when it cannot start.
pub async fn run_command(
    spec: &CommandSpec,
    cancel: &CancellationToken,
) -> std::io::Result<CommandOutput> {
    run_command_with_env(spec, &CommandEnv::default(), cancel).await
}

/// [`run_command`] with changes to the inherited environment.
pub async fn run_command_with_env(
    spec: &CommandSpec,
    env: &CommandEnv,
    cancel: &CancellationToken,
) -> std::io::Result<CommandOutput> {
    run_sandboxed(spec, env, &ItemSandbox::default(), cancel).await
}

/// Runs a command under `sandbox`: through bubblewrap when it names it (with the
/// allowlisted environment, see [`super::bwrap`]), else directly with the inherited one;
/// with the sandbox's resource limits either way. `env` changes the environment first,
/// then the job's `env` option.
pub async fn run_sandboxed(
    spec: &CommandSpec,
    env: &CommandEnv,
    sandbox: &ItemSandbox,
    cancel: &CancellationToken,
) -> std::io::Result<CommandOutput> {
    let started = Instant::now();
    if spec.argv.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    }
    let mut command = match &sandbox.bwrap {
        Some(bwrap) => {
            let mut c = Command::new(bwrap);
            c.args(super::bwrap::args(sandbox, &spec.cwd))
                .args(&spec.argv)
                .env_clear()
                .envs(super::bwrap::environment(sandbox, &env.set));
            c
        }
        None => {
            let mut c = Command::new(&spec.argv[0]);
            for name in &env.remove {
                c.env_remove(name);
            }
            c.envs(env.set.iter().chain(&sandbox.env).map(|(k, v)| (k, v)))
                .args(&spec.argv[1..]);
            c
        }
    };
    let limits = sandbox.limits;
    if limits.memory_mb.is_some() || limits.cpu_seconds.is_some() || limits.max_file_mb.is_some() {
        // SAFETY: `apply` only calls setrlimit, which is async-signal-safe. A pre_exec
        // hook costs the posix_spawn fast path, so it is set only when a limit needs it.
        unsafe {
            command.pre_exec(move || super::limits::apply(&limits));
        }
    }
    let mut child = command
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let guard = child.id().map(|pid| GroupGuard::new(pid as i32));
    let (out_buf, err_buf) = (Default::default(), Default::default());
    let out = tokio::spawn(read_capped(
        child.stdout.take().expect("stdout is piped"),
        spec.max_output_bytes,
        std::sync::Arc::clone(&out_buf),
    ));
    let err = tokio::spawn(read_capped(
        child.stderr.take().expect("stderr is piped"),
        spec.max_output_bytes,
        std::sync::Arc::clone(&err_buf),
    ));
    let (mut timed_out, mut cancelled, mut too_many) = (false, false, false);
    let overhead = if sandbox.bwrap.is_some() {
        super::bwrap::OWN_PROCESSES
    } else {
        0
    };
    let pid = child.id().map(|p| p as i32);
    let status = tokio::select! {
        status = child.wait() => status?,
        _ = watch_processes(pid, limits.max_processes, overhead) => {
            too_many = true;
            if let Some(g) = &guard { g.kill(); }
            child.wait().await?
        }
        _ = tokio::time::sleep(spec.timeout) => {
            timed_out = true;
            if let Some(g) = &guard { g.kill(); }
            child.wait().await?
        }
        _ = cancel.cancelled() => {
            cancelled = true;
            if let Some(g) = &guard { g.kill(); }
            child.wait().await?
        }
    };
    // Whatever the command left behind in its group goes now, which also closes the pipes.
    drop(guard);
    // A descendant that left the group may still hold the pipes: keep what was read and
    // flag the output as cut rather than wait for it.
    let collect = |mut h: tokio::task::JoinHandle<()>,
                   buf: std::sync::Arc<std::sync::Mutex<Captured>>| async move {
        let finished = tokio::time::timeout(Duration::from_secs(2), &mut h)
            .await
            .is_ok();
        if !finished {
            h.abort(); // drops our end of the pipe
        }
        let mut c = buf.lock().unwrap_or_else(|p| p.into_inner());
        (std::mem::take(&mut c.kept), c.truncated || !finished)
    };
    let (stdout, t1) = collect(out, out_buf).await;
    let (stderr, t2) = collect(err, err_buf).await;
    use std::os::unix::process::ExitStatusExt;
    // bubblewrap, as the PID namespace's init, reports a command killed by signal n as
    // exit code 128 + n (the shell's convention): read it back as the signal, so a crash
    // is a crash (retryable, a limit's signal) under either mode.
    let (exit_code, signal) = match status.code() {
        Some(code) if sandbox.bwrap.is_some() && (129..=128 + 64).contains(&code) => {
            (None, Some(code - 128))
        }
        code => (code, status.signal()),
    };
    let stderr = String::from_utf8_lossy(&stderr).into_owned();
    let limit = if too_many {
        limits
            .max_processes
            .map(super::limits::process_limit_message)
    } else if timed_out || cancelled {
        None
    } else {
        super::limits::limit_reached(
            &limits,
            &super::limits::Ending {
                exit_code,
                signal,
                stderr: &stderr,
            },
        )
    };
    Ok(CommandOutput {
        exit_code,
        signal,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr,
        truncated: t1 || t2,
        timed_out,
        cancelled,
        duration: started.elapsed(),
        limit,
    })
}

/// Returns once the command `pid` has more than `limit` processes (besides `overhead` of
/// the sandbox's own); never when there is no limit.
async fn watch_processes(pid: Option<i32>, limit: Option<u64>, overhead: usize) {
    let (Some(pid), Some(limit)) = (pid, limit) else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(super::limits::WATCH_INTERVAL);
    loop {
        tick.tick().await;
        let n = super::limits::count_processes(pid, pid).saturating_sub(overhead);
        if n as u64 > limit {
            log::info!("command group {pid} has {n} processes, over its limit of {limit}: killed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_split_like_a_shell_without_one() {
        assert_eq!(
            split_command("pytest -q -k 'a b'").unwrap(),
            ["pytest", "-q", "-k", "a b"]
        );
        assert!(split_command("   ").is_err());
        assert!(split_command("echo 'unclosed").is_err());
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(find_program("sh", Path::new("/")).is_some());
        assert!(find_program("no-such-program-batchforge", Path::new("/")).is_none());
    }
}
