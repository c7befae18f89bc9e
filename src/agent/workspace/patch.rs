//! The patch a task made: everything staged in the task's own index, diffed against
//! its base commit, capped, and base64 when it is not UTF-8.

use super::git::git_capped;
use super::{git, Changes, Kind, TaskWorkspace, DEFAULT_EXCLUDES, MAX_PATCH_BYTES};
use std::path::{Path, PathBuf};

/// Writes the [`DEFAULT_EXCLUDES`] file of a workspace (`HOLDER/excludes`).
pub(super) async fn write_excludes(holder: &Path) -> Result<PathBuf, String> {
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
    /// git's arguments for this workspace: in the worktree, or on the copy with its
    /// baseline.
    pub(super) fn git_args(&self, args: &[&str]) -> Vec<String> {
        let mut full = Vec::new();
        if let Kind::Copy { git_dir } = &self.kind {
            full.push(format!("--git-dir={}", git_dir.display()));
            full.push(format!("--work-tree={}", self.dir.display()));
        }
        full.extend(args.iter().map(|s| s.to_string()));
        full
    }

    /// Runs git on this workspace.
    pub(super) async fn git(&self, args: &[&str]) -> Result<String, String> {
        let full = self.git_args(args);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        git(&self.dir, &refs).await
    }

    /// Stages everything (new files too) in the task's own index, without the
    /// [`DEFAULT_EXCLUDES`].
    pub(super) async fn stage(&self) -> Result<(), String> {
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
}
