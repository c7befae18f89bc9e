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
//!
//! A path checked by name can change before it is opened (a directory swapped for a
//! symlink out). The file tools therefore never open the checked name from `/`:
//! [`Root::open_existing`] and [`Root::open_new_file`] open the resolved path relative to
//! a descriptor of the root with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`, so
//! the kernel itself refuses any step out, or, where the kernel lacks `openat2`
//! (`ENOSYS`), walk it one component at a time with `openat(O_NOFOLLOW)`. A regular file
//! with more than one hard link is refused by both (reading it, or writing it, would
//! reach whatever other name it has, possibly outside the workspace), and so is a command
//! target that is one ([`Root::check_single_link`]).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
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

/// What a file opened beneath the root is for: the open flags and the words of refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenFor {
    /// Reading a file (a directory opens too; the caller says what it thinks of that).
    Read,
    /// Listing a directory.
    List,
    /// Writing a file: created when missing, never truncated by the open.
    Write,
}

impl OpenFor {
    fn verb(self) -> &'static str {
        match self {
            OpenFor::Read => "read",
            OpenFor::List => "list",
            OpenFor::Write => "write",
        }
    }
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

    /// Opens an existing path (confined as [`Root::resolve_existing`] confines it) for
    /// reading or listing, by descriptor beneath the root: a symlink swapped in after the
    /// check cannot lead out. Opened `O_NONBLOCK` (a FIFO does not wait for a writer) and
    /// refused when it is a regular file with more than one hard link.
    pub fn open_existing(&self, path: &str, purpose: OpenFor) -> Result<File, String> {
        let rel = self.resolve_existing(path)?;
        let flags = match purpose {
            OpenFor::List => libc::O_RDONLY | libc::O_DIRECTORY,
            _ => libc::O_RDONLY | libc::O_NONBLOCK,
        };
        let file = self
            .open_beneath(&rel, flags, 0)
            .map_err(|e| open_refusal(path, purpose, &e))?;
        refuse_linked(&file, path, purpose)?;
        Ok(file)
    }

    /// Opens a file to write (confined and its parents created as
    /// [`Root::resolve_new_file`] does), by descriptor beneath the root, creating it when
    /// missing and never truncating it: the caller truncates once it knows the handle is
    /// a regular file with one link. Returns the file and its path relative to the root.
    pub fn open_new_file(&self, path: &str) -> Result<(File, PathBuf), String> {
        let target = self.resolve_new_file(path)?;
        let rel = target
            .strip_prefix(self.path)
            .map_err(|_| format!("path '{path}' is outside the workspace root"))?
            .to_path_buf();
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_NONBLOCK;
        let file = self
            .open_beneath(&rel, flags, 0o666)
            .map_err(|e| open_refusal(path, OpenFor::Write, &e))?;
        refuse_linked(&file, path, OpenFor::Write)?;
        Ok((file, rel))
    }

    /// Refuses `rel` (relative to the root, as [`Root::resolve_inside`] returns it) when
    /// it is a regular file with more than one hard link: a command handed it would read
    /// or write whatever other name it has. A missing path passes (it is the command's
    /// business).
    pub fn check_single_link(&self, rel: &Path, shown: &str) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        match self.path.join(rel).symlink_metadata() {
            Ok(m) if m.is_file() && m.nlink() > 1 => Err(linked(shown, m.nlink(), "use")),
            _ => Ok(()),
        }
    }

    /// Opens `rel` (relative, no `..`) beneath the root with `openat2`, or by walking it
    /// component by component where the kernel has no `openat2`. The last component is
    /// never followed if it is a symlink.
    fn open_beneath(
        &self,
        rel: &Path,
        flags: libc::c_int,
        mode: libc::mode_t,
    ) -> std::io::Result<File> {
        let root = open_at(
            libc::AT_FDCWD,
            self.path.as_os_str().as_bytes(),
            libc::O_PATH | libc::O_DIRECTORY,
            0,
        )?;
        match openat2_beneath(root.as_raw_fd(), rel, flags, mode) {
            Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                walk_beneath(&root, rel, flags, mode)
            }
            other => other,
        }
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

/// A path that names the open `file` itself (`/proc/self/fd/N`), for APIs that take a
/// path (`read_dir`): it reaches what was opened, whatever its name leads to now.
pub fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// `openat2`'s `struct open_how` (libc's is `#[non_exhaustive]`, so not constructible).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dir, rel, flags | O_NOFOLLOW | O_CLOEXEC)` that the kernel keeps beneath
/// `dir`: `..`, absolute symlinks and symlinks out fail with `EXDEV`, `/proc` magic links
/// with `ELOOP`.
fn openat2_beneath(
    dir: RawFd,
    rel: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<File> {
    let name = c_path(rel.as_os_str().as_bytes())?;
    let how = OpenHow {
        flags: (flags | libc::O_NOFOLLOW | libc::O_CLOEXEC) as u64,
        mode: if flags & libc::O_CREAT != 0 {
            mode as u64
        } else {
            0
        },
        resolve: libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: `name` is NUL-terminated, `how` lives across the call and its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir,
            name.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd as RawFd) })
}

/// The fallback of [`openat2_beneath`]: each directory opened with
/// `O_DIRECTORY | O_NOFOLLOW` relative to the one before, so a component that became a
/// symlink fails instead of being followed. `rel` comes resolved (no symlink, no `..`),
/// so any symlink met was swapped in.
fn walk_beneath(
    root: &OwnedFd,
    rel: &Path,
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<File> {
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n.as_bytes()),
            Component::CurDir => {}
            _ => return Err(std::io::Error::from_raw_os_error(libc::EXDEV)),
        }
    }
    let Some((last, dirs)) = names.split_last() else {
        return open_at(root.as_raw_fd(), b".", flags, mode).map(File::from);
    };
    let mut dir: Option<OwnedFd> = None;
    for name in dirs {
        let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
        dir = Some(open_at(at, name, libc::O_PATH | libc::O_DIRECTORY, 0)?);
    }
    let at = dir.as_ref().map_or(root.as_raw_fd(), |d| d.as_raw_fd());
    open_at(at, last, flags, mode).map(File::from)
}

/// `openat(dir, name, flags | O_NOFOLLOW | O_CLOEXEC, mode)`.
fn open_at(
    dir: RawFd,
    name: &[u8],
    flags: libc::c_int,
    mode: libc::mode_t,
) -> std::io::Result<OwnedFd> {
    let name = c_path(name)?;
    // SAFETY: `name` is NUL-terminated; the mode is read only with O_CREAT.
    let fd = unsafe {
        libc::openat(
            dir,
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(bytes: &[u8]) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
}

/// The refusal for an open beneath the root that failed, in the words of the checks.
fn open_refusal(path: &str, purpose: OpenFor, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EXDEV) => format!("path '{path}' is outside the workspace root"),
        Some(libc::ELOOP) => format!(
            "path '{path}' became a symlink while it was being opened; refusing to follow it"
        ),
        Some(libc::ENOENT) => format!("path '{path}' does not exist in the workspace"),
        Some(libc::ENOTDIR) if purpose == OpenFor::List => format!("'{path}' is not a directory"),
        Some(libc::ENOTDIR) => format!("path '{path}': a parent is not a directory"),
        Some(libc::EISDIR) => format!("'{path}' is a directory"),
        Some(libc::ENXIO) if purpose == OpenFor::Write => {
            format!("'{path}' is not a regular file (a FIFO or socket); refusing to write to it")
        }
        _ => format!("cannot {} '{path}': {e}", purpose.verb()),
    }
}

/// Refuses an open regular file with more than one hard link.
fn refuse_linked(file: &File, path: &str, purpose: OpenFor) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot {} '{path}': {e}", purpose.verb()))?;
    if meta.is_file() && meta.nlink() > 1 {
        return Err(linked(path, meta.nlink(), purpose.verb()));
    }
    Ok(())
}

fn linked(path: &str, links: u64, verb: &str) -> String {
    format!(
        "'{path}' has {links} hard links; refusing to {verb} a file that is also linked \
         elsewhere (possibly outside the workspace)"
    )
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
