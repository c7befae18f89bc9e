//! One workspace per agent task, so that many tasks can change the same project at once
//! without seeing each other's work, and the patch each one made.
//!
//! - `worktree` (the default when the workspace root is in a git repository with a
//!   commit): `git worktree add --detach` of `HEAD` in a scratch directory. The task starts
//!   from the last commit (uncommitted changes of the root are not in it). Its patch is the
//!   staged diff against that commit, so even commits the agent made are in it.
//! - `copy`: a copy of the root (without `.git`, `target`, `node_modules`), with a
//!   baseline snapshot in a separate git directory outside the copy; the patch is the diff
//!   against that snapshot, paths relative to the root.
//! - `shared`: the root itself, as the Python original did. Tasks see each other's
//!   changes and no patch can be told apart; `files_changed` lists what the task wrote.
//!
//! Worktrees and copies are removed when the task ends (on a drop too); the patch stays in
//! the task's result. git runs without a shell, with prompts, hooks and signing off.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::process::Command;

/// Largest patch kept in a result; a bigger one is left out with a note.
pub const MAX_PATCH_BYTES: usize = 8 * 1024 * 1024;
/// Directories a copy leaves out.
const NOT_COPIED: &[&str] = &[".git", "target", "node_modules"];

/// How a task's workspace is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkspaceMode {
    /// A git worktree of the root's repository.
    Worktree,
    /// A copy of the root.
    Copy,
    /// The root itself.
    Shared,
}

impl WorkspaceMode {
    /// The name used in job options and results.
    pub fn name(self) -> &'static str {
        match self {
            WorkspaceMode::Worktree => "worktree",
            WorkspaceMode::Copy => "copy",
            WorkspaceMode::Shared => "shared",
        }
    }

    /// Parses a job option.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "worktree" => Some(WorkspaceMode::Worktree),
            "copy" => Some(WorkspaceMode::Copy),
            "shared" => Some(WorkspaceMode::Shared),
            _ => None,
        }
    }
}

/// Whether `root` lies in a git work tree (a `.git` in it or a parent). A cheap check for
/// submit time; the git commands say more when a task starts.
pub fn looks_like_git_repo(root: &Path) -> bool {
    root.ancestors().any(|d| d.join(".git").exists())
}

/// What a task changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Unified diff (git format, binary files included), paths relative to the root;
    /// `None` in shared mode or when over [`MAX_PATCH_BYTES`].
    pub patch: Option<String>,
    /// Paths changed, added or deleted, relative to the root.
    pub files_changed: Vec<String>,
    /// Why there is no patch, when there is none.
    pub note: Option<String>,
}

/// Makes task workspaces under one scratch directory.
#[derive(Debug)]
pub struct Workspaces {
    scratch: PathBuf,
    /// One lock per repository: `git worktree add/remove` edit `.git/worktrees` and are
    /// serialized per repository; checking files out and diffing run in parallel.
    repo_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
}

enum Kind {
    Worktree {
        top: PathBuf,
        worktree: PathBuf,
        lock: Arc<tokio::sync::Mutex<()>>,
    },
    Copy {
        holder: PathBuf,
        git_dir: PathBuf,
    },
    Shared,
}

/// One task's workspace.
pub struct TaskWorkspace {
    mode: WorkspaceMode,
    dir: PathBuf,
    base_commit: Option<String>,
    kind: Kind,
    removed: bool,
}

impl Workspaces {
    /// Workspaces under `scratch` (created when first needed).
    pub fn new(scratch: PathBuf) -> Self {
        Workspaces {
            scratch,
            repo_locks: Mutex::new(HashMap::new()),
        }
    }

    fn repo_lock(&self, top: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.repo_locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(top.to_path_buf()).or_default().clone()
    }

    /// The mode a job gets when it names none: a worktree when `root` is in a git
    /// repository with at least one commit, else a copy.
    pub async fn default_mode(&self, root: &Path) -> WorkspaceMode {
        match git(root, &["rev-parse", "--verify", "-q", "HEAD"]).await {
            Ok(_) => WorkspaceMode::Worktree,
            Err(_) => WorkspaceMode::Copy,
        }
    }

    /// Makes a workspace of `root` (canonical) for the task `label`.
    pub async fn create(
        &self,
        mode: WorkspaceMode,
        root: &Path,
        label: &str,
    ) -> Result<TaskWorkspace, String> {
        if mode == WorkspaceMode::Shared {
            return Ok(TaskWorkspace {
                mode,
                dir: root.to_path_buf(),
                base_commit: None,
                kind: Kind::Shared,
                removed: false,
            });
        }
        tokio::fs::create_dir_all(&self.scratch)
            .await
            .map_err(|e| format!("cannot create {}: {e}", self.scratch.display()))?;
        let scratch = self
            .scratch
            .canonicalize()
            .map_err(|e| format!("{}: {e}", self.scratch.display()))?;
        let name = format!(
            "{}-{}",
            sanitize(label),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        match mode {
            WorkspaceMode::Worktree => self.create_worktree(root, &scratch.join(name)).await,
            _ => create_copy(root, &scratch, &name).await,
        }
    }

    async fn create_worktree(&self, root: &Path, path: &Path) -> Result<TaskWorkspace, String> {
        let top = git(root, &["rev-parse", "--show-toplevel"])
            .await
            .map_err(|e| format!("workspace_mode 'worktree' needs a git repository: {e}"))?;
        let top = PathBuf::from(top.trim());
        let prefix = git(root, &["rev-parse", "--show-prefix"]).await?;
        let prefix = prefix.trim().trim_end_matches('/').to_string();
        let commit = git(&top, &["rev-parse", "--verify", "HEAD"])
            .await
            .map_err(|_| {
                "workspace_mode 'worktree' needs a commit: the repository has none yet".to_string()
            })?;
        let commit = commit.trim().to_string();
        let lock = self.repo_lock(&top);
        let path_str = path.to_string_lossy().into_owned();
        {
            let _serial = lock.lock().await;
            git(
                &top,
                &[
                    "worktree",
                    "add",
                    "--detach",
                    "--no-checkout",
                    "--quiet",
                    &path_str,
                    &commit,
                ],
            )
            .await
            .map_err(|e| format!("cannot create a worktree: {e}"))?;
        }
        let mut ws = TaskWorkspace {
            mode: WorkspaceMode::Worktree,
            dir: path.join(&prefix),
            base_commit: Some(commit),
            kind: Kind::Worktree {
                top,
                worktree: path.to_path_buf(),
                lock,
            },
            removed: false,
        };
        // Check out outside the lock: the slow part, and private to this worktree.
        if let Err(e) = git(path, &["reset", "--hard", "--quiet"]).await {
            ws.remove().await;
            return Err(format!("cannot check out the worktree: {e}"));
        }
        ws.dir = ws
            .dir
            .canonicalize()
            .map_err(|e| format!("{}: {e}", ws.dir.display()))?;
        Ok(ws)
    }
}

async fn create_copy(root: &Path, scratch: &Path, name: &str) -> Result<TaskWorkspace, String> {
    let holder = scratch.join(name);
    let work = holder.join("work");
    let git_dir = holder.join("baseline.git");
    let (from, to, skip) = (root.to_path_buf(), work.clone(), scratch.to_path_buf());
    let copied = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&to)?;
        copy_tree(&from, &to, &skip)
    })
    .await
    .map_err(|e| format!("copying the workspace failed: {e}"))?;
    let mut ws = TaskWorkspace {
        mode: WorkspaceMode::Copy,
        dir: work.clone(),
        base_commit: None,
        kind: Kind::Copy {
            holder: holder.clone(),
            git_dir: git_dir.clone(),
        },
        removed: false,
    };
    if let Err(e) = copied {
        ws.remove().await;
        return Err(format!("cannot copy the workspace: {e}"));
    }
    let snapshot = async {
        git(
            &holder,
            &["init", "--quiet", "--bare", &git_dir.to_string_lossy()],
        )
        .await?;
        ws.git(&["add", "-A"]).await?;
        ws.git(&[
            "commit",
            "--quiet",
            "--no-verify",
            "--allow-empty",
            "-m",
            "baseline",
        ])
        .await?;
        ws.git(&["rev-parse", "HEAD"]).await
    }
    .await;
    match snapshot {
        Ok(commit) => {
            ws.base_commit = Some(commit.trim().to_string());
            ws.dir = work
                .canonicalize()
                .map_err(|e| format!("{}: {e}", work.display()))?;
            Ok(ws)
        }
        Err(e) => {
            ws.remove().await;
            Err(format!("cannot snapshot the copy: {e}"))
        }
    }
}

impl TaskWorkspace {
    /// Where the task works (canonical).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How it was made.
    pub fn mode(&self) -> WorkspaceMode {
        self.mode
    }

    /// Runs git on this workspace: in the worktree, or on the copy with its baseline.
    async fn git(&self, args: &[&str]) -> Result<String, String> {
        match &self.kind {
            Kind::Copy { git_dir, .. } => {
                let mut full = vec![
                    format!("--git-dir={}", git_dir.display()),
                    format!("--work-tree={}", self.dir.display()),
                ];
                full.extend(args.iter().map(|s| s.to_string()));
                let refs: Vec<&str> = full.iter().map(String::as_str).collect();
                git(&self.dir, &refs).await
            }
            _ => git(&self.dir, args).await,
        }
    }

    /// What the task changed. `written` (paths the task wrote) is what shared mode reports.
    pub async fn changes(&self, written: &[String]) -> Result<Changes, String> {
        let Some(base) = &self.base_commit else {
            return Ok(Changes {
                patch: None,
                files_changed: written.to_vec(),
                note: Some("workspace_mode 'shared': tasks share the root, so no patch of one task can be made".into()),
            });
        };
        // Stage everything (new files too) in the task's own index, then diff it.
        self.git(&["add", "-A", "--", "."]).await?;
        let names = self
            .git(&[
                "diff",
                "--cached",
                "--relative",
                "--name-only",
                "-z",
                base,
                "--",
                ".",
            ])
            .await?;
        let files_changed: Vec<String> = names
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if files_changed.is_empty() {
            return Ok(Changes {
                patch: Some(String::new()),
                files_changed,
                note: None,
            });
        }
        let patch = self
            .git(&[
                "diff",
                "--cached",
                "--relative",
                "--binary",
                "--no-color",
                "--no-ext-diff",
                base,
                "--",
                ".",
            ])
            .await?;
        if patch.len() > MAX_PATCH_BYTES {
            return Ok(Changes {
                patch: None,
                files_changed,
                note: Some(format!(
                    "the patch is {} bytes, over the {MAX_PATCH_BYTES}-byte limit of a result",
                    patch.len()
                )),
            });
        }
        Ok(Changes {
            patch: Some(patch),
            files_changed,
            note: None,
        })
    }

    /// Removes the worktree or copy (never the shared root).
    pub async fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        match &self.kind {
            Kind::Worktree {
                top,
                worktree,
                lock,
            } => {
                let path = worktree.to_string_lossy().into_owned();
                let _serial = lock.lock().await;
                if let Err(e) = git(top, &["worktree", "remove", "--force", "--force", &path]).await
                {
                    log::warn!("cannot remove worktree {path}: {e}");
                    let _ = tokio::fs::remove_dir_all(worktree).await;
                    let _ = git(top, &["worktree", "prune"]).await;
                }
            }
            Kind::Copy { holder, .. } => {
                if let Err(e) = tokio::fs::remove_dir_all(holder).await {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        log::warn!("cannot remove {}: {e}", holder.display());
                    }
                }
            }
            Kind::Shared => {}
        }
    }
}

impl Drop for TaskWorkspace {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // The task's future was dropped before it cleaned up: do it off this thread.
        let cleanup: Box<dyn FnOnce() + Send> = match &self.kind {
            Kind::Worktree { top, worktree, .. } => {
                let (top, worktree) = (top.clone(), worktree.clone());
                Box::new(move || {
                    let _ = std::process::Command::new("git")
                        .arg("-C")
                        .arg(&top)
                        .args(["worktree", "remove", "--force", "--force"])
                        .arg(&worktree)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                    let _ = std::fs::remove_dir_all(&worktree);
                })
            }
            Kind::Copy { holder, .. } => {
                let holder = holder.clone();
                Box::new(move || {
                    let _ = std::fs::remove_dir_all(&holder);
                })
            }
            Kind::Shared => return,
        };
        std::thread::spawn(cleanup);
    }
}

/// Runs git in `cwd`; its stdout, or its stderr as the error.
pub async fn git(cwd: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
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
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "git is not installed (it is needed for agent workspaces and patches)".to_string()
            }
            _ => format!("cannot run git: {e}"),
        })?;
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

fn sanitize(label: &str) -> String {
    let s: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    if s.is_empty() {
        "task".into()
    } else {
        s
    }
}

/// Copies `from` into `to`: files with their permissions, symlinks as symlinks, without
/// [`NOT_COPIED`] directories nor `skip` (the scratch directory, should it lie inside).
fn copy_tree(from: &Path, to: &Path, skip: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let src = entry.path();
        if src == skip {
            continue;
        }
        let name = entry.file_name();
        let dst = to.join(&name);
        let ty = entry.file_type()?;
        if ty.is_dir() {
            if NOT_COPIED.iter().any(|n| name == *n) {
                continue;
            }
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst, skip)?;
        } else if ty.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sh_git(dir: &Path, args: &[&str]) {
        git(dir, args).await.unwrap();
    }

    #[actix_rt::test]
    async fn worktrees_and_copies_are_isolated_and_give_a_patch() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("repo");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/a.txt"), "one\n").unwrap();
        std::fs::write(root.join("old.txt"), "bye\n").unwrap();
        let root = root.canonicalize().unwrap();
        sh_git(&root, &["init", "--quiet"]).await;
        sh_git(&root, &["add", "-A"]).await;
        sh_git(&root, &["commit", "--quiet", "-m", "init"]).await;
        let spaces = Workspaces::new(tmp.path().join("scratch"));
        assert_eq!(spaces.default_mode(&root).await, WorkspaceMode::Worktree);
        for mode in [WorkspaceMode::Worktree, WorkspaceMode::Copy] {
            let mut ws = spaces.create(mode, &root, "t/1").await.unwrap();
            assert_ne!(ws.dir(), root);
            std::fs::write(ws.dir().join("src/a.txt"), "one\ntwo\n").unwrap();
            std::fs::write(ws.dir().join("new file.txt"), "hi\n").unwrap();
            std::fs::remove_file(ws.dir().join("old.txt")).unwrap();
            let c = ws.changes(&[]).await.unwrap();
            assert_eq!(
                c.files_changed,
                ["new file.txt", "old.txt", "src/a.txt"],
                "{mode:?}"
            );
            let patch = c.patch.unwrap();
            assert!(
                patch.contains("+++ b/src/a.txt\n@@ -1 +1,2 @@\n one\n+two\n"),
                "{mode:?}: {patch}"
            );
            assert!(patch.contains("--- a/old.txt\n+++ /dev/null"), "{patch}");
            assert!(patch.contains("+++ b/new file.txt"), "{patch}");
            // The patch applies to the base.
            let check = std::process::Command::new("git")
                .args(["apply", "--check", "-"])
                .current_dir(&root)
                .stdin(Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(patch.as_bytes())?;
                    c.wait()
                })
                .unwrap();
            assert!(check.success(), "{mode:?}: the patch applies to the base");
            assert_eq!(
                std::fs::read_to_string(root.join("src/a.txt")).unwrap(),
                "one\n"
            );
            let dir = ws.dir().to_path_buf();
            ws.remove().await;
            assert!(!dir.exists(), "{mode:?} removed");
        }
        // A root below the repository's top: the task works in the same subdirectory of
        // its worktree, and the patch is relative to the root.
        let sub = root.join("src");
        let mut ws = spaces
            .create(WorkspaceMode::Worktree, &sub, "sub")
            .await
            .unwrap();
        assert!(ws.dir().ends_with("src"), "{}", ws.dir().display());
        std::fs::write(ws.dir().join("a.txt"), "uno\n").unwrap();
        let c = ws.changes(&[]).await.unwrap();
        assert_eq!(c.files_changed, ["a.txt"]);
        assert!(c
            .patch
            .unwrap()
            .contains("--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+uno\n"));
        ws.remove().await;

        let list = git(&root, &["worktree", "list", "--porcelain"])
            .await
            .unwrap();
        assert_eq!(list.matches("worktree ").count(), 1, "{list}");
        assert_eq!(
            std::fs::read_dir(tmp.path().join("scratch"))
                .unwrap()
                .count(),
            0
        );

        let plain = tmp.path().join("plain");
        std::fs::create_dir(&plain).unwrap();
        assert_eq!(spaces.default_mode(&plain).await, WorkspaceMode::Copy);
        let err = spaces
            .create(WorkspaceMode::Worktree, &plain.canonicalize().unwrap(), "x")
            .await
            .err()
            .unwrap();
        assert!(err.contains("git repository"), "{err}");
    }
}
