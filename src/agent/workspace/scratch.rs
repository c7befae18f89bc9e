//! The scratch directory: one locked entry per running workspace, and the sweep of
//! entries a crash or a kill left behind.

use super::Entry;
use std::collections::HashSet;
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

impl Entry {
    /// Creates and locks `SCRATCH/NAME.lock`, then makes `SCRATCH/NAME/`.
    pub(super) fn claim(scratch: &Path, name: &str) -> Result<Entry, String> {
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
    pub(super) fn release(&mut self) {
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

pub(super) fn remove_tree(dir: &Path) {
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
pub(super) fn sweep_scratch(scratch: &Path) -> usize {
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
