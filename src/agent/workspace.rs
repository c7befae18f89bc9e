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
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::AsyncReadExt;
use tokio::process::Command;

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
            _ => create_copy(root, &scratch, entry).await,
        }
    }

    async fn create_worktree(&self, root: &Path, entry: Entry) -> Result<TaskWorkspace, String> {
        // `entry` is dropped (released on a thread) on an early return.
        let holder = entry.holder.clone();
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
        if !root_in_head(root).await.unwrap_or(false) {
            return Err(format!(
                "workspace_mode 'worktree': the workspace root {} is not in the repository's last commit (untracked or ignored); use 'copy'",
                root.display()
            ));
        }
        let lock = self.repo_lock(&top);
        self.prune_once(&top, &lock).await;
        let tree = holder.join("tree");
        // From here on, dropping `ws` (an error, or the future dropped) cleans up.
        let mut ws = TaskWorkspace {
            mode: WorkspaceMode::Worktree,
            dir: tree.join(&prefix),
            base_commit: Some(commit.clone()),
            kind: Kind::Worktree {
                top: top.clone(),
                lock: lock.clone(),
            },
            entry: Some(entry),
            removed: false,
        };
        let tree_str = tree.to_string_lossy().into_owned();
        let added = {
            let _serial = lock.lock().await;
            git(
                &top,
                &[
                    "worktree",
                    "add",
                    "--detach",
                    "--no-checkout",
                    "--quiet",
                    &tree_str,
                    &commit,
                ],
            )
            .await
        };
        if let Err(e) = added {
            ws.remove().await;
            return Err(format!("cannot create a worktree: {e}"));
        }
        // Check out outside the lock: the slow part, and private to this worktree.
        if let Err(e) = git(&tree, &["reset", "--hard", "--quiet"]).await {
            ws.remove().await;
            return Err(format!("cannot check out the worktree: {e}"));
        }
        match ws.dir.canonicalize() {
            Ok(d) => ws.dir = d,
            Err(e) => {
                let e = format!("{}: {e}", ws.dir.display());
                ws.remove().await;
                return Err(e);
            }
        }
        Ok(ws)
    }
}

/// Whether the repository's `HEAD` has anything at `root` (a root that is untracked or
/// ignored has nothing to check out).
async fn root_in_head(root: &Path) -> Result<bool, String> {
    let listed = git(root, &["ls-tree", "--name-only", "HEAD", "--", "."]).await?;
    Ok(!listed.trim().is_empty())
}

impl Entry {
    /// Creates and locks `SCRATCH/NAME.lock`, then makes `SCRATCH/NAME/`.
    fn claim(scratch: &Path, name: &str) -> Result<Entry, String> {
        let holder = scratch.join(name);
        let lock_path = scratch.join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot create {}: {e}", lock_path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_file(&lock_path);
            return Err(format!("cannot lock {}: {e}", lock_path.display()));
        }
        if let Err(e) = std::fs::create_dir(&holder) {
            let _ = std::fs::remove_file(&lock_path);
            return Err(format!("cannot create {}: {e}", holder.display()));
        }
        Ok(Entry {
            holder,
            lock_path,
            lock_file: Some(file),
            abort: Arc::new(AtomicBool::new(false)),
            released: false,
        })
    }

    /// Deletes the directory, then the lock file; the lock is released last.
    fn release(&mut self) {
        if self.released {
            return;
        }
        self.released = true;
        self.abort.store(true, Ordering::SeqCst);
        remove_tree(&self.holder);
        let _ = std::fs::remove_file(&self.lock_path);
        self.lock_file.take();
    }
}

impl Drop for Entry {
    /// An entry dropped unreleased (a failed or dropped creation) is released on a thread
    /// of its own.
    fn drop(&mut self) {
        if self.released {
            return;
        }
        self.abort.store(true, Ordering::SeqCst);
        let mut owned = Entry {
            holder: std::mem::take(&mut self.holder),
            lock_path: std::mem::take(&mut self.lock_path),
            lock_file: self.lock_file.take(),
            abort: self.abort.clone(),
            released: false,
        };
        self.released = true;
        std::thread::spawn(move || owned.release());
    }
}

fn remove_tree(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            log::warn!("cannot remove {}: {e}", dir.display());
        }
    }
}

/// Whether `name` is one a workspace entry gets: a sanitized label, `-`, 8 hex digits.
/// Nothing else in the scratch directory is ever swept (it may be shared).
fn is_entry_name(name: &str) -> bool {
    let Some((label, id)) = name.rsplit_once('-') else {
        return false;
    };
    !label.is_empty()
        && id.len() == 8
        && id.chars().all(|c| c.is_ascii_hexdigit())
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Removes the scratch entries no process holds: `NAME.lock` files that can be locked
/// (with their `NAME/`), and `NAME/` directories without a lock file. Returns how many
/// went.
fn sweep_scratch(scratch: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return 0;
    };
    let names: HashSet<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut removed = 0;
    for name in &names {
        let base = name.strip_suffix(".lock").unwrap_or(name);
        if !is_entry_name(base) {
            continue;
        }
        if name.ends_with(".lock") {
            let path = scratch.join(name);
            let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                continue; // a running task holds it
            }
            remove_tree(&scratch.join(base));
            let _ = std::fs::remove_file(&path);
            removed += 1;
        } else if !names.contains(&format!("{name}.lock")) {
            let path = scratch.join(name);
            if path.is_dir() {
                remove_tree(&path);
                removed += 1;
            }
        }
    }
    removed
}

async fn create_copy(root: &Path, scratch: &Path, entry: Entry) -> Result<TaskWorkspace, String> {
    let holder = entry.holder.clone();
    let work = holder.join("work");
    let git_dir = holder.join("baseline.git");
    let abort = entry.abort.clone();
    // From here on, dropping `ws` (an error, or the future dropped) cleans up.
    let mut ws = TaskWorkspace {
        mode: WorkspaceMode::Copy,
        dir: work.clone(),
        base_commit: None,
        kind: Kind::Copy {
            git_dir: git_dir.clone(),
        },
        entry: Some(entry),
        removed: false,
    };
    let (from, to, skip) = (root.to_path_buf(), work.clone(), scratch.to_path_buf());
    let copied = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&to)?;
        copy_tree(&from, &to, &skip, &abort)
    })
    .await
    .map_err(|e| format!("copying the workspace failed: {e}"));
    let copied = match copied {
        Ok(c) => c,
        Err(e) => {
            ws.remove().await;
            return Err(e);
        }
    };
    if let Err(e) = copied {
        ws.remove().await;
        return Err(format!("cannot copy the workspace: {e}"));
    }
    let snapshot = async {
        write_excludes(&holder).await?;
        git(
            &holder,
            &["init", "--quiet", "--bare", &git_dir.to_string_lossy()],
        )
        .await?;
        ws.stage().await?;
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
            match work.canonicalize() {
                Ok(d) => ws.dir = d,
                Err(e) => {
                    ws.remove().await;
                    return Err(format!("{}: {e}", work.display()));
                }
            }
            Ok(ws)
        }
        Err(e) => {
            ws.remove().await;
            Err(format!("cannot snapshot the copy: {e}"))
        }
    }
}

/// Writes the [`DEFAULT_EXCLUDES`] file of a workspace (`HOLDER/excludes`).
async fn write_excludes(holder: &Path) -> Result<PathBuf, String> {
    let path = holder.join("excludes");
    if !path.exists() {
        let mut text = DEFAULT_EXCLUDES.join("\n");
        text.push('\n');
        tokio::fs::write(&path, text)
            .await
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(path)
}

/// Base64 (standard alphabet, padded).
pub fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

    /// git's arguments for this workspace: in the worktree, or on the copy with its
    /// baseline.
    fn git_args(&self, args: &[&str]) -> Vec<String> {
        let mut full = Vec::new();
        if let Kind::Copy { git_dir } = &self.kind {
            full.push(format!("--git-dir={}", git_dir.display()));
            full.push(format!("--work-tree={}", self.dir.display()));
        }
        full.extend(args.iter().map(|s| s.to_string()));
        full
    }

    /// Runs git on this workspace.
    async fn git(&self, args: &[&str]) -> Result<String, String> {
        let full = self.git_args(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        git(&self.dir, &refs).await
    }

    /// Stages everything (new files too) in the task's own index, without the
    /// [`DEFAULT_EXCLUDES`].
    async fn stage(&self) -> Result<(), String> {
        let Some(entry) = &self.entry else {
            return Err("a shared workspace has no index of its own".into());
        };
        let excludes = write_excludes(&entry.holder).await?;
        let setting = format!("core.excludesFile={}", excludes.display());
        self.git(&["-c", &setting, "add", "-A", "--", "."])
            .await
            .map(|_| ())
    }

    /// What the task changed. `written` (paths the task wrote) is what shared mode reports.
    pub async fn changes(&self, written: &[String]) -> Result<Changes, String> {
        let Some(base) = &self.base_commit else {
            return Ok(Changes {
                patch: None,
                encoding: None,
                files_changed: written.to_vec(),
                note: Some("workspace_mode 'shared': tasks share the root, so no patch of one task can be made".into()),
            });
        };
        self.stage().await?;
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
                encoding: None,
                files_changed,
                note: None,
            });
        }
        let args = self.git_args(&[
            "diff",
            "--cached",
            "--relative",
            "--binary",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            base,
            "--",
            ".",
        ]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let Some(bytes) = git_capped(&self.dir, &refs, MAX_PATCH_BYTES).await? else {
            return Ok(Changes {
                patch: None,
                encoding: None,
                files_changed,
                note: Some(format!(
                    "the patch is over the {MAX_PATCH_BYTES}-byte limit of a result"
                )),
            });
        };
        match String::from_utf8(bytes) {
            Ok(patch) => Ok(Changes {
                patch: Some(patch),
                encoding: None,
                files_changed,
                note: None,
            }),
            Err(e) => Ok(Changes {
                patch: Some(base64_encode(e.as_bytes())),
                encoding: Some("base64"),
                files_changed,
                note: Some(
                    "the patch has bytes that are not UTF-8 (a file in another encoding); it is base64 of the exact diff: decode it, then git apply".into(),
                ),
            }),
        }
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
                let _ = std::process::Command::new("git")
                    .arg("-C")
                    .arg(&top)
                    .args(["worktree", "prune"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            entry.release();
        });
    }
}

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
async fn git_capped(cwd: &Path, args: &[&str], limit: usize) -> Result<Option<Vec<u8>>, String> {
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
/// [`NOT_COPIED`] directories nor `skip` (the scratch directory, should it lie inside);
/// stops when `abort` is set.
fn copy_tree(from: &Path, to: &Path, skip: &Path, abort: &AtomicBool) -> std::io::Result<()> {
    for entry in std::fs::read_dir(from)? {
        if abort.load(Ordering::Relaxed) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "the task ended",
            ));
        }
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
            copy_tree(&src, &dst, skip, abort)?;
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

    async fn repo(tmp: &Path) -> PathBuf {
        let root = tmp.join("repo");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/a.txt"), "one\n").unwrap();
        let root = root.canonicalize().unwrap();
        sh_git(&root, &["init", "--quiet"]).await;
        sh_git(&root, &["add", "-A"]).await;
        sh_git(&root, &["commit", "--quiet", "-m", "init"]).await;
        root
    }

    fn apply_check(root: &Path, patch: &[u8]) -> bool {
        let mut c = std::process::Command::new("git")
            .args(["apply", "--check", "-"])
            .current_dir(root)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin.take().unwrap().write_all(patch).unwrap();
        c.wait().unwrap().success()
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(4) {
            let pad = chunk.iter().filter(|c| **c == b'=').count();
            let n = chunk.iter().fold(0u32, |n, c| {
                (n << 6) | u32::from(if *c == b'=' { 0 } else { value(*c) })
            });
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..3 - pad]);
        }
        out
    }

    #[test]
    fn base64_is_standard() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(&[0xff, 0xe9, 0x00, 0x01]), "/+kAAQ==");
        assert_eq!(
            base64_decode(&base64_encode(b"caf\xe9 \x00x")),
            b"caf\xe9 \x00x"
        );
    }

    #[actix_rt::test]
    async fn generated_files_stay_out_and_non_utf8_patches_are_kept_exactly() {
        let tmp = tempfile::tempdir().unwrap();
        let root = repo(tmp.path()).await;
        std::fs::create_dir_all(root.join("__pycache__")).unwrap();
        std::fs::write(root.join("__pycache__/old.pyc"), b"\x00old").unwrap();
        let spaces = Workspaces::new(tmp.path().join("scratch"));
        for mode in [WorkspaceMode::Worktree, WorkspaceMode::Copy] {
            let mut ws = spaces.create(mode, &root, "gen").await.unwrap();
            for dir in [
                "__pycache__",
                "src/__pycache__",
                ".pytest_cache",
                "node_modules/x",
                "target",
            ] {
                std::fs::create_dir_all(ws.dir().join(dir)).unwrap();
            }
            std::fs::write(
                ws.dir().join("src/__pycache__/a.cpython-312.pyc"),
                b"\x00\x01",
            )
            .unwrap();
            std::fs::write(ws.dir().join("__pycache__/old.pyc"), b"\x00new").unwrap();
            std::fs::write(ws.dir().join("stray.pyc"), b"\x00").unwrap();
            std::fs::write(ws.dir().join(".pytest_cache/v"), "x").unwrap();
            std::fs::write(ws.dir().join("node_modules/x/i.js"), "x").unwrap();
            std::fs::write(ws.dir().join("target/out"), "x").unwrap();
            // A Latin-1 file: its bytes must survive.
            std::fs::write(ws.dir().join("src/latin1.txt"), b"caf\xe9\n").unwrap();
            let c = ws.changes(&[]).await.unwrap();
            assert_eq!(c.files_changed, ["src/latin1.txt"], "{mode:?}");
            assert_eq!(c.encoding, Some("base64"), "{mode:?}");
            assert!(c.note.as_deref().unwrap().contains("base64"));
            let patch = base64_decode(c.patch.as_deref().unwrap());
            assert!(
                patch.windows(5).any(|w| w == b"+caf\xe9"),
                "{}",
                String::from_utf8_lossy(&patch)
            );
            assert!(
                apply_check(&root, &patch),
                "{mode:?}: the decoded patch applies"
            );
            ws.remove().await;
        }
    }

    #[actix_rt::test]
    async fn an_untracked_root_defaults_to_a_copy_and_stale_entries_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let root = repo(tmp.path()).await;
        let untracked = root.join("scratchpad");
        std::fs::create_dir_all(&untracked).unwrap();
        std::fs::write(untracked.join("x.txt"), "x").unwrap();
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        // Left by a killed run: a worktree of the repository, a copy without its lock
        // holder, a lock no one holds.
        let stale_tree = scratch.join("old-0000abcd/tree");
        std::fs::create_dir_all(scratch.join("old-0000abcd")).unwrap();
        sh_git(
            &root,
            &[
                "worktree",
                "add",
                "--detach",
                "--quiet",
                &stale_tree.to_string_lossy(),
                "HEAD",
            ],
        )
        .await;
        std::fs::write(scratch.join("old-0000abcd.lock"), "").unwrap();
        std::fs::create_dir_all(scratch.join("older-copy-12345678/work")).unwrap();
        // Not ours: kept.
        std::fs::create_dir_all(scratch.join("notes")).unwrap();
        // Held by a task of another process: kept.
        let held = scratch.join("busy-0000beef.lock");
        let held_file = std::fs::File::create(&held).unwrap();
        assert_eq!(
            unsafe { libc::flock(held_file.as_raw_fd(), libc::LOCK_EX) },
            0
        );
        std::fs::create_dir_all(scratch.join("busy-0000beef")).unwrap();

        let spaces = Workspaces::new(scratch.clone());
        assert_eq!(spaces.default_mode(&untracked).await, WorkspaceMode::Copy);
        assert_eq!(spaces.default_mode(&root).await, WorkspaceMode::Worktree);
        let err = spaces
            .create(WorkspaceMode::Worktree, &untracked, "u")
            .await
            .err()
            .unwrap();
        assert!(err.contains("not in the repository's last commit"), "{err}");
        let mut ws = spaces
            .create(WorkspaceMode::Worktree, &root, "t")
            .await
            .unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&scratch)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 5, "{names:?}");
        assert_eq!(
            &names[..2],
            ["busy-0000beef", "busy-0000beef.lock"],
            "{names:?}"
        );
        assert_eq!(names[2], "notes", "{names:?}");
        let list = git(&root, &["worktree", "list", "--porcelain"])
            .await
            .unwrap();
        assert!(!list.contains("old-0000abcd"), "pruned: {list}");
        ws.remove().await;
        let list = git(&root, &["worktree", "list", "--porcelain"])
            .await
            .unwrap();
        assert_eq!(list.matches("worktree ").count(), 1, "{list}");

        // A workspace whose creation is dropped midway leaves nothing behind.
        drop(held_file);
        let _ = std::fs::remove_dir_all(scratch.join("busy-0000beef"));
        let _ = std::fs::remove_file(&held);
        std::fs::remove_dir(scratch.join("notes")).unwrap();
        let fut = spaces.create(WorkspaceMode::Copy, &root, "dropped");
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), fut).await;
        let ws = spaces
            .create(WorkspaceMode::Worktree, &root, "dropped2")
            .await
            .unwrap();
        drop(ws);
        for _ in 0..100 {
            if std::fs::read_dir(&scratch).unwrap().count() == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(std::fs::read_dir(&scratch).unwrap().count(), 0);
        let list = git(&root, &["worktree", "list", "--porcelain"])
            .await
            .unwrap();
        assert_eq!(list.matches("worktree ").count(), 1, "{list}");
    }

    #[actix_rt::test]
    async fn a_patch_over_the_limit_is_left_out_without_buffering_it() {
        let tmp = tempfile::tempdir().unwrap();
        let root = repo(tmp.path()).await;
        let spaces = Workspaces::new(tmp.path().join("scratch"));
        let mut ws = spaces
            .create(WorkspaceMode::Worktree, &root, "big")
            .await
            .unwrap();
        let line = "x".repeat(99) + "\n";
        std::fs::write(
            ws.dir().join("big.txt"),
            line.repeat(MAX_PATCH_BYTES / 100 + 10),
        )
        .unwrap();
        let c = ws.changes(&[]).await.unwrap();
        assert_eq!(c.patch, None);
        assert_eq!(c.files_changed, ["big.txt"]);
        assert!(c.note.unwrap().contains("limit"));
        ws.remove().await;
    }
}
