//! `copy` mode: a copy of the root without `.git`, `target` and `node_modules`, with a
//! baseline snapshot in a bare git directory beside it.

use super::patch::write_excludes;
use super::{git, Entry, Kind, TaskWorkspace, WorkspaceMode, NOT_COPIED};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

pub(super) async fn create_copy(
    root: &Path,
    scratch: &Path,
    entry: Entry,
) -> Result<TaskWorkspace, String> {
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
