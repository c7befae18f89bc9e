//! The workspace's own git bookkeeping (worktrees, snapshots, diffs): fixed argv the
//! engine writes, never a job's command, so it runs here directly rather than through
//! [`crate::sandbox`]: it must reach the user's repository, which a job may not.

use std::path::Path;
use std::process::Stdio;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

fn git_command(cwd: &Path, args: &[&str]) -> Command {
    let mut command = Command::new("git");
    command
        .args([
            "-c",
            "core.quotepath=false",
            "-c",
            "user.name=batchforge",
            "-c",
            "user.email=batchforge@localhost",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "core.hooksPath=/dev/null",
        ])
        .args(args)
        .current_dir(cwd)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn spawn_error(e: std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            "git is not installed (it is needed for agent workspaces and patches)".to_string()
        }
        _ => format!("cannot run git: {e}"),
    }
}

/// Runs git in `cwd`; its stdout, or its stderr as the error.
pub async fn git(cwd: &Path, args: &[&str]) -> Result<String, String> {
    let out = git_command(cwd, args).output().await.map_err(spawn_error)?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "git {} failed: {}",
            args.first().copied().unwrap_or_default(),
            stderr.trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs git in `cwd` and reads its stdout as bytes, up to `limit`: `None` (and git
/// killed) beyond it.
pub(super) async fn git_capped(
    cwd: &Path,
    args: &[&str],
    limit: usize,
) -> Result<Option<Vec<u8>>, String> {
    let mut child = git_command(cwd, args).spawn().map_err(spawn_error)?;
    let mut stdout = child.stdout.take().expect("stdout is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let read_err = tokio::spawn(async move {
        let mut kept = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut kept).await;
        // Drain the rest so git never blocks on a full pipe.
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
        kept
    });
    let mut kept = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stdout.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) if kept.len() + n > limit => {
                let _ = child.kill().await;
                read_err.abort();
                return Ok(None);
            }
            Ok(n) => kept.extend_from_slice(&buf[..n]),
            Err(e) => {
                let _ = child.kill().await;
                read_err.abort();
                return Err(format!("cannot read git's output: {e}"));
            }
        }
    }
    let err = read_err.await.unwrap_or_default();
    let out = kept;
    let status = child
        .wait()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !status.success() {
        return Err(format!(
            "git {} failed: {}",
            args.iter()
                .find(|a| !a.starts_with('-'))
                .copied()
                .unwrap_or_default(),
            String::from_utf8_lossy(&err).trim()
        ));
    }
    Ok(Some(out))
}

/// `git -C top worktree prune` on the calling thread, its output ignored: for a drop,
/// where no runtime may be at hand.
pub(super) fn prune_blocking(top: &Path) {
    let _ = std::process::Command::new("git")
        .arg("-C")
        .arg(top)
        .args(["worktree", "prune"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
