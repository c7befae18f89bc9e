//! One workspace per agent task, so that many tasks can change the same project at once
//! without seeing each other's work, and the patch each one made.
//!
//! - `worktree` (the default when the workspace root is in a git repository with a
//!   commit, and the root is in that commit): `git worktree add --detach` of `HEAD` in a
//!   scratch directory. The task starts from the last commit (uncommitted changes of the
//!   root are not in it). Its patch is the staged diff against that commit, so even
//!   commits the agent made are in it.
//! - `copy` (the default otherwise): a copy of the root (without `.git`, `target`,
//!   `node_modules`), with a baseline snapshot in a separate git directory outside the
//!   copy; the patch is the diff against that snapshot, paths relative to the root.
//! - `shared`: the root itself, as the Python original did. Tasks see each other's
//!   changes and no patch can be told apart; `files_changed` lists what the task wrote.
//!
//! Generated files (`__pycache__/`, `*.pyc`, `.pytest_cache/`, virtualenvs,
//! `node_modules/`, `target/`, …, see [`DEFAULT_EXCLUDES`]) are left out of the patch even
//! when the project's `.gitignore` does not name them, and the agent's commands run with
//! `PYTHONDONTWRITEBYTECODE=1` (see [`TaskWorkspace::command_env`]). A patch that is not
//! UTF-8 (a Latin-1 file, say) is kept byte for byte, base64-encoded.
//!
//! Each workspace lives in `SCRATCH/NAME/` and holds an advisory lock on `SCRATCH/NAME.lock`
//! while its task runs. Worktrees and copies are removed when the task ends (on a drop
//! too): the tree is deleted outside the repository lock, then `git worktree prune`
//! unregisters it. The first workspace a process makes sweeps the scratch directory of
//! entries no running task holds (left by a crash or a kill) and prunes the repository's
//! worktree list. git runs without a shell, with prompts, hooks and signing off.

use crate::sandbox::spawn::CommandEnv;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

mod copy;
mod git;
mod patch;
mod scratch;
mod worktree;

pub use git::git;
pub use patch::base64_encode;
use scratch::{remove_tree, sweep_scratch};
use worktree::root_in_head;

/// Largest patch kept in a result; a bigger one is left out with a note.
pub const MAX_PATCH_BYTES: usize = 8 * 1024 * 1024;
/// Directories a copy leaves out.
const NOT_COPIED: &[&str] = &[".git", "target", "node_modules"];
/// What is never staged into a patch: build output, caches and environments.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "__pycache__/",
    "*.pyc",
    "*.pyo",
    ".pytest_cache/",
    ".venv/",
    "venv/",
    "node_modules/",
    ".mypy_cache/",
    ".ruff_cache/",
    "target/",
];

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
    /// `None` in shared mode or when over [`MAX_PATCH_BYTES`]. Base64 of the diff's bytes
    /// when `encoding` says so.
    pub patch: Option<String>,
    /// `Some("base64")` when the diff is not UTF-8 text.
    pub encoding: Option<&'static str>,
    /// Paths changed, added or deleted, relative to the root.
    pub files_changed: Vec<String>,
    /// Why there is no patch, when there is none, or how to read it.
    pub note: Option<String>,
}

/// Makes task workspaces under one scratch directory.
#[derive(Debug)]
pub struct Workspaces {
    scratch: PathBuf,
    /// One lock per repository: `git worktree add/prune` edit `.git/worktrees` and are
    /// serialized per repository; checking files out and diffing run in parallel.
    repo_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// The scratch directory was swept of stale entries.
    swept: tokio::sync::OnceCell<()>,
    /// Repositories whose worktree list was pruned since the start.
    pruned: Mutex<HashSet<PathBuf>>,
}

enum Kind {
    Worktree {
        top: PathBuf,
        lock: Arc<tokio::sync::Mutex<()>>,
    },
    Copy {
        git_dir: PathBuf,
    },
    Shared,
}

/// The scratch entry of a workspace: its directory and the lock held while it is in use.
struct Entry {
    holder: PathBuf,
    lock_path: PathBuf,
    /// Holds the `flock`; closing it releases the entry.
    lock_file: Option<std::fs::File>,
    /// Tells a copy still running on a blocking thread to stop.
    abort: Arc<AtomicBool>,
    released: bool,
}

/// One task's workspace.
pub struct TaskWorkspace {
    mode: WorkspaceMode,
    dir: PathBuf,
    base_commit: Option<String>,
    kind: Kind,
    entry: Option<Entry>,
    removed: bool,
}

impl Workspaces {
    /// Workspaces under `scratch` (created when first needed).
    pub fn new(scratch: PathBuf) -> Self {
        Workspaces {
            scratch,
            repo_locks: Mutex::new(HashMap::new()),
            swept: tokio::sync::OnceCell::new(),
            pruned: Mutex::new(HashSet::new()),
        }
    }

    fn repo_lock(&self, top: &Path) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.repo_locks.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(top.to_path_buf()).or_default().clone()
    }

    /// The mode a job gets when it names none: a worktree when `root` is in a git
    /// repository with at least one commit that has the root in it, else a copy.
    pub async fn default_mode(&self, root: &Path) -> WorkspaceMode {
        if git(root, &["rev-parse", "--verify", "-q", "HEAD"])
            .await
            .is_err()
        {
            return WorkspaceMode::Copy;
        }
        match root_in_head(root).await {
            Ok(true) => WorkspaceMode::Worktree,
            _ => WorkspaceMode::Copy,
        }
    }

    /// Removes what earlier runs left in the scratch directory: entries whose lock no
    /// process holds. Once per process.
    async fn sweep(&self, scratch: &Path) {
        self.swept
            .get_or_init(|| async {
                let scratch = scratch.to_path_buf();
                let swept = tokio::task::spawn_blocking(move || sweep_scratch(&scratch))
                    .await
                    .unwrap_or_default();
                if swept > 0 {
                    log::info!("removed {swept} stale agent workspaces");
                }
            })
            .await;
    }

    /// `git worktree prune` of the repository at `top`, once per process.
    async fn prune_once(&self, top: &Path, lock: &tokio::sync::Mutex<()>) {
        let first = self
            .pruned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(top.to_path_buf());
        if first {
            let _serial = lock.lock().await;
            if let Err(e) = git(top, &["worktree", "prune"]).await {
                log::warn!("cannot prune the worktrees of {}: {e}", top.display());
            }
        }
    }

    /// Makes a workspace of `root` (canonical) for the task `label`. Dropping the future
    /// midway leaves nothing behind (the partial workspace is removed on a thread).
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
                entry: None,
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
        self.sweep(&scratch).await;
        let name = format!(
            "{}-{}",
            sanitize(label),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let entry = Entry::claim(&scratch, &name)?;
        match mode {
            WorkspaceMode::Worktree => self.create_worktree(root, entry).await,
            _ => copy::create_copy(root, &scratch, entry).await,
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

    /// The environment of the agent's commands and the check: git without the system's
    /// and the user's configuration (aliases, helpers, hooks), with a fixed identity and
    /// no pager; no Python bytecode files; in a copy, git does not look above it for a
    /// repository.
    pub fn command_env(&self) -> CommandEnv {
        let config = [
            ("core.hooksPath", "/dev/null"),
            ("core.fsmonitor", "false"),
            ("commit.gpgsign", "false"),
            ("tag.gpgsign", "false"),
            ("user.name", "batchforge-agent"),
            ("user.email", "batchforge-agent@localhost"),
        ];
        let mut set: Vec<(String, String)> = [
            ("GIT_CONFIG_NOSYSTEM", "1"),
            ("GIT_CONFIG_GLOBAL", "/dev/null"),
            ("GIT_TERMINAL_PROMPT", "0"),
            ("GIT_PAGER", "cat"),
            ("PAGER", "cat"),
            ("PYTHONDONTWRITEBYTECODE", "1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        set.push(("GIT_CONFIG_COUNT".into(), config.len().to_string()));
        for (i, (k, v)) in config.iter().enumerate() {
            set.push((format!("GIT_CONFIG_KEY_{i}"), k.to_string()));
            set.push((format!("GIT_CONFIG_VALUE_{i}"), v.to_string()));
        }
        if let (Kind::Copy { .. }, Some(entry)) = (&self.kind, &self.entry) {
            set.push((
                "GIT_CEILING_DIRECTORIES".into(),
                entry.holder.to_string_lossy().into_owned(),
            ));
        }
        let remove = [
            "GIT_DIR",
            "GIT_WORK_TREE",
            "GIT_INDEX_FILE",
            "GIT_OBJECT_DIRECTORY",
            "GIT_ALTERNATE_OBJECT_DIRECTORIES",
            "GIT_COMMON_DIR",
            "GIT_NAMESPACE",
            "GIT_CONFIG",
            "GIT_CONFIG_PARAMETERS",
            "GIT_EXTERNAL_DIFF",
            "GIT_SSH",
            "GIT_SSH_COMMAND",
            "GIT_ASKPASS",
            "GIT_EDITOR",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        CommandEnv { set, remove }
    }

    /// Removes the worktree or copy (never the shared root): the tree is deleted on a
    /// blocking thread outside the repository lock, then the worktree is pruned under it.
    pub async fn remove(&mut self) {
        if self.removed {
            return;
        }
        self.removed = true;
        let Some(entry) = self.entry.take() else {
            return;
        };
        entry.abort.store(true, Ordering::SeqCst);
        let holder = entry.holder.clone();
        let _ = tokio::task::spawn_blocking(move || remove_tree(&holder)).await;
        if let Kind::Worktree { top, lock } = &self.kind {
            let _serial = lock.lock().await;
            if let Err(e) = git(top, &["worktree", "prune"]).await {
                log::warn!("cannot prune the worktrees of {}: {e}", top.display());
            }
        }
        // The tree is gone: the lock file goes quickly.
        let mut entry = entry;
        entry.release();
    }
}

impl Drop for TaskWorkspace {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        let Some(entry) = self.entry.take() else {
            return;
        };
        entry.abort.store(true, Ordering::SeqCst);
        // The task's future was dropped before it cleaned up: do it off this thread.
        let prune = match &self.kind {
            Kind::Worktree { top, lock } => Some((top.clone(), lock.clone())),
            _ => None,
        };
        std::thread::spawn(move || {
            let mut entry = entry;
            remove_tree(&entry.holder);
            if let Some((top, lock)) = prune {
                let _serial = lock.blocking_lock();
                git::prune_blocking(&top);
            }
            entry.release();
        });
    }
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

#[cfg(test)]
mod tests;
