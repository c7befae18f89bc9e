//! `worktree` mode: a `git worktree add --detach` of `HEAD` per task, serialized per
//! repository, checked out outside the lock.

use super::{git, Entry, Kind, TaskWorkspace, WorkspaceMode, Workspaces};
use std::path::{Path, PathBuf};

impl Workspaces {
    pub(super) async fn create_worktree(
        &self,
        root: &Path,
        entry: Entry,
    ) -> Result<TaskWorkspace, String> {
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
pub(super) async fn root_in_head(root: &Path) -> Result<bool, String> {
    let listed = git(root, &["ls-tree", "--name-only", "HEAD", "--", "."]).await?;
    Ok(!listed.trim().is_empty())
}
