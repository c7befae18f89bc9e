//! Path confinement: the one place that decides whether a path a job, a tool call or a
//! command line names stays inside its workspace root.
//!
//! Four callers ask four different questions, and [`Root`] answers each with its own
//! method over the same lexical rules ([`normalize`]) and symlink resolution:
//! - [`Root::resolve_existing`]: something that must exist (a file to read, a directory
//!   to list, a command's cwd). The kernel's own answer (`canonicalize`) is the truth; a
//!   missing path is an error.
//! - [`Root::resolve_inside`]: an item's target, which must stay inside but may be
//!   missing (the command reports a missing file itself, as the original's did).
//! - [`Root::resolve_new_file`]: a file about to be written, which may not exist yet.
//!   Existing components are followed as the kernel would, missing ones are plain names,
//!   a dangling symlink is refused (the write would land wherever it points), and missing
//!   parent directories are created.
//! - [`Root::check`]: the agent guardrail's look at the words of a tool call before
//!   anything runs. It may not touch the filesystem or ask for existence (the command may
//!   create the path), so it accepts an empty word (the base itself), refuses `~` (a shell
//!   would expand it to the home directory), follows dangling symlinks lexically to see
//!   where a write would land, and names system paths in its refusals.
//!
//! Their messages differ too ("outside the workspace root" for the runners, "outside the
//! workspace" for the guardrail): tests and clients read them, so each keeps its own.

use std::path::{Component, Path, PathBuf};

/// Top directories of the system, named in the guardrail's refusals of writes there.
const SYSTEM_DIRS: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/boot", "/dev", "/proc", "/sys",
    "/var", "/root", "/opt", "/srv", "/run", "/snap", "/System", "/Library",
];

/// Deepest chain of dangling symlinks [`real_path`] follows.
const MAX_LINK_DEPTH: u32 = 16;

/// Whether a guardrail check is for reading or for writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading, listing, or naming a path as an argument.
    Read,
    /// Writing: also refused into `.git`, and system paths are named.
    Write,
}

/// A workspace root every path is confined to; the path must already be canonical.
#[derive(Debug, Clone, Copy)]
pub struct Root<'a> {
    path: &'a Path,
}

/// Refuses a path no file can have: empty, or with a NUL byte.
pub fn check_text(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("path is empty".into());
    }
    if path.contains('\0') {
        return Err(format!(
            "path '{}' contains a NUL byte",
            path.escape_debug()
        ));
    }
    Ok(())
}

impl<'a> Root<'a> {
    /// The root at `path` (canonical: no symlink, no `..`).
    pub fn new(path: &'a Path) -> Self {
        Root { path }
    }

    /// The root's own path.
    pub fn path(&self) -> &'a Path {
        self.path
    }

    /// Whether `p` (absolute, resolved) lies inside the root.
    pub fn contains(&self, p: &Path) -> bool {
        p.starts_with(self.path)
    }

    /// Resolves a user-given path that must exist inside the root. Refuses `..` escapes,
    /// absolute paths elsewhere and symlinks that lead out. Returns the path relative to
    /// the root (`.` for the root itself).
    pub fn resolve_existing(&self, path: &str) -> Result<PathBuf, String> {
        check_text(path)?;
        let joined = self.path.join(path);
        let resolved = match joined.canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Say "outside" rather than "missing" for paths that lexically escape.
                if !normalize(&joined).is_some_and(|n| self.contains(&n)) {
                    return Err(format!("path '{path}' is outside the workspace root"));
                }
                return Err(format!("path '{path}' does not exist in the workspace"));
            }
            Err(e) => return Err(format!("path '{path}': {e}")),
        };
        match resolved.strip_prefix(self.path) {
            Ok(rel) if rel.as_os_str().is_empty() => Ok(PathBuf::from(".")),
            Ok(rel) => Ok(rel.to_path_buf()),
            Err(_) => Err(format!("path '{path}' is outside the workspace root")),
        }
    }

    /// Resolves a user-given path that must lie inside the root but need not exist (an
    /// item's target: a missing file is the command's business). Refuses what
    /// [`Root::resolve_existing`] refuses; a missing path is followed through the
    /// symlinks of its existing components (dangling ones lexically, as [`real_path`]
    /// does), so a missing name under a link that leads out is refused too. Returns the
    /// path relative to the root (`.` for the root itself).
    pub fn resolve_inside(&self, path: &str) -> Result<PathBuf, String> {
        check_text(path)?;
        let joined = self.path.join(path);
        let outside = || format!("path '{path}' is outside the workspace root");
        let resolved = match joined.canonicalize() {
            Ok(p) => p,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                if !normalize(&joined).is_some_and(|n| self.contains(&n)) {
                    return Err(outside());
                }
                real_path(&joined)
            }
            Err(e) => return Err(format!("path '{path}': {e}")),
        };
        match resolved.strip_prefix(self.path) {
            Ok(rel) if rel.as_os_str().is_empty() => Ok(PathBuf::from(".")),
            Ok(rel) => Ok(rel.to_path_buf()),
            Err(_) => Err(outside()),
        }
    }

    /// Resolves a file to write inside the root the way the kernel would: each existing
    /// component is followed (symlinks included) and `..` climbs from where that led;
    /// components that do not exist yet are taken as plain directory names. The result
    /// must lie inside the root and must not be a directory or a dangling symlink.
    /// Missing parent directories are created. Returns the absolute, symlink-free path.
    pub fn resolve_new_file(&self, path: &str) -> Result<PathBuf, String> {
        check_text(path)?;
        let root = self.path;
        let outside = || format!("path '{path}' is outside the workspace root");
        // `real` never holds a symlink, so popping it for `..` is what the kernel does.
        let mut real = PathBuf::from("/");
        let mut missing = false;
        for c in root.join(path).components() {
            match c {
                Component::RootDir | Component::Prefix(_) => real = PathBuf::from("/"),
                Component::CurDir => {}
                Component::ParentDir => {
                    real.pop();
                    missing = missing && real.symlink_metadata().is_err();
                }
                Component::Normal(name) => {
                    real.push(name);
                    if missing {
                        continue;
                    }
                    match real.symlink_metadata() {
                        Ok(m) if m.file_type().is_symlink() => {
                            real = real.canonicalize().map_err(|e| {
                                if e.kind() == std::io::ErrorKind::NotFound {
                                    format!("path '{path}' goes through a symlink to a missing target; refusing to write through it")
                                } else {
                                    format!("path '{path}': {e}")
                                }
                            })?;
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing = true,
                        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                            return Err(format!("path '{path}': a parent is not a directory"))
                        }
                        Err(e) => return Err(format!("path '{path}': {e}")),
                    }
                }
            }
        }
        if !self.contains(&real) {
            return Err(outside());
        }
        if real == root || real.is_dir() {
            return Err(format!("'{path}' is a directory"));
        }
        let parent = real.parent().ok_or_else(outside)?;
        if !parent.is_dir() {
            std::fs::create_dir_all(parent).map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
                    format!("path '{path}': a parent is not a directory")
                }
                _ => format!("cannot create the directories of '{path}': {e}"),
            })?;
        }
        // A symlink swapped in meanwhile would show here.
        let parent = parent
            .canonicalize()
            .map_err(|e| format!("path '{path}': {e}"))?;
        if !self.contains(&parent) {
            return Err(outside());
        }
        Ok(parent.join(real.file_name().ok_or_else(outside)?))
    }

    /// The guardrail's check of a path relative to `base` (a directory inside the root),
    /// without touching the filesystem: refuses `~`, `..` above `/`, paths elsewhere,
    /// symlinks that lead out, and for [`Access::Write`] anything through `.git`.
    pub fn check(&self, path: &str, base: &Path, access: Access) -> Result<(), String> {
        let write = access == Access::Write;
        if path.starts_with('~') {
            return Err(format!(
                "'{path}' is outside the workspace (home directory)"
            ));
        }
        let joined = join_to(base, path);
        let Some(resolved) = normalize(&joined) else {
            return Err(format!("'{path}' leaves the workspace"));
        };
        if !self.contains(&resolved) {
            if write {
                if let Some(dir) = system_dir(&resolved) {
                    return Err(format!(
                        "writes to the system path {dir} are not allowed ('{path}')"
                    ));
                }
            }
            return Err(format!("'{path}' is outside the workspace"));
        }
        // Symlinks of the components that exist: where the path really goes.
        let real = real_path(&joined);
        if !self.contains(&real) {
            return Err(format!(
                "'{path}' is outside the workspace (through a symlink)"
            ));
        }
        if write && self.goes_through_git(path, base) {
            return Err(format!("writes into .git are not allowed ('{path}')"));
        }
        Ok(())
    }

    /// Whether `path` (relative to `base`) names something in or through a `.git`
    /// directory or file of the workspace: by its words, or where its symlinks lead.
    pub fn goes_through_git(&self, path: &str, base: &Path) -> bool {
        if path.is_empty() {
            return false;
        }
        if Path::new(path).components().any(is_git) {
            return true;
        }
        let real = real_path(&join_to(base, path));
        match real.strip_prefix(self.path) {
            Ok(inside) => inside.components().any(is_git),
            Err(_) => false,
        }
    }

    /// Whether `resolved` (absolute, inside the root) lies in a `.git` of the workspace.
    pub fn is_in_git(&self, resolved: &Path) -> bool {
        resolved
            .strip_prefix(self.path)
            .unwrap_or(resolved)
            .components()
            .any(is_git)
    }
}

fn is_git(c: Component) -> bool {
    c.as_os_str() == ".git"
}

/// `path` taken relative to `base` unless it is absolute.
fn join_to(base: &Path, path: &str) -> PathBuf {
    let p = Path::new(path);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn system_dir(p: &Path) -> Option<&'static str> {
    SYSTEM_DIRS.iter().find(|d| p.starts_with(d)).copied()
}

/// `..` and `.` resolved lexically; `None` when `..` climbs above `/` (or above the start
/// of a relative path).
pub fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() || out.as_os_str().is_empty() {
                    return None;
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// `p` (absolute) with the symlinks of its existing components resolved, dangling ones
/// followed lexically, and the rest normalized. Never fails: it predicts where a path
/// would lead, for checks made before anything runs.
pub fn real_path(p: &Path) -> PathBuf {
    real_path_depth(p, 0)
}

fn real_path_depth(p: &Path, depth: u32) -> PathBuf {
    let lexical = || normalize(p).unwrap_or_else(|| p.to_path_buf());
    for anc in p.ancestors() {
        if anc.as_os_str().is_empty() {
            break;
        }
        let rest = p.strip_prefix(anc).unwrap_or(Path::new(""));
        if let Ok(real) = anc.canonicalize() {
            let full = real.join(rest);
            return normalize(&full).unwrap_or(full);
        }
        let Ok(meta) = anc.symlink_metadata() else {
            continue;
        };
        if meta.file_type().is_symlink() && depth < MAX_LINK_DEPTH {
            if let Ok(target) = std::fs::read_link(anc) {
                let base = anc.parent().unwrap_or(Path::new("/"));
                return real_path_depth(&base.join(target).join(rest), depth + 1);
            }
        }
        return lexical();
    }
    lexical()
}

#[cfg(test)]
#[path = "confine_tests.rs"]
mod tests;
