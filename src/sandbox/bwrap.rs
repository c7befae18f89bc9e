//! The bubblewrap command line of one sandboxed command, and the environment it gets.
//!
//! What the command sees: the whole filesystem read-only; a fresh `/dev`, `/proc` and a
//! private `/tmp`; `$HOME`, `/root`, `~/.ssh`, `~/.aws`, `~/.config` and the engine's
//! own data (its database) hidden behind empty tmpfs mounts (files behind `/dev/null`);
//! its writable paths (the workspace or the agent task's worktree) bound read-write; its
//! own PID namespace; no network unless asked (`network: true`); a new session (no
//! terminal to inject keystrokes into); killed when the engine thread that started it
//! dies (`--die-with-parent`), besides the process-group kill and the guardian.
//!
//! Mounts are applied shallowest path first, so a writable workspace under a hidden
//! directory (tests keep theirs under `/tmp`) stays visible, and a database file inside
//! the workspace stays hidden.

use super::policy::ItemSandbox;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// The options of the start-up probe: what every sandbox needs to work.
pub const PROBE_ARGS: &[&str] = &[
    "--ro-bind",
    "/",
    "/",
    "--dev",
    "/dev",
    "--proc",
    "/proc",
    "--tmpfs",
    "/tmp",
    "--unshare-pid",
    "--unshare-net",
    "--new-session",
    "--die-with-parent",
];

/// `HOME` inside the sandbox: a directory of its private `/tmp`.
pub const SANDBOX_HOME: &str = "/tmp/home";

/// Variables of the engine's environment a sandboxed command keeps (and every `LC_*`);
/// `HOME` and `TMPDIR` are set to paths inside the sandbox.
pub const ENV_ALLOWLIST: &[&str] = &[
    "PATH", "LANG", "LANGUAGE", "TERM", "TZ", "USER", "LOGNAME", "SHELL",
];

/// Processes bubblewrap itself keeps in the sandbox's process tree (the outer monitor
/// and the PID namespace's init), not counted against `max_processes`.
pub const OWN_PROCESSES: usize = 2;

enum Mount {
    Tmpfs,
    NullFile,
    ReadOnly,
    Bind,
}

/// The arguments to bubblewrap (everything before the command's own argv) for running
/// in `cwd` under `sandbox`.
pub fn args(sandbox: &ItemSandbox, cwd: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = [
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--proc",
        "/proc",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--new-session",
        "--die-with-parent",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if !sandbox.network {
        a.push("--unshare-net".into());
    }
    let mut mounts: Vec<(PathBuf, Mount)> = vec![(PathBuf::from("/tmp"), Mount::Tmpfs)];
    for path in hidden_paths(&sandbox.hidden) {
        let Ok(meta) = path.metadata() else { continue };
        if meta.is_dir() {
            // A hidden directory that is itself writable stays writable (its files
            // named in `hidden` are still hidden one by one).
            if !sandbox.writable.iter().any(|w| w == &path) {
                mounts.push((path, Mount::Tmpfs));
            }
        } else {
            mounts.push((path, Mount::NullFile));
        }
    }
    for r in &sandbox.readable {
        mounts.push((r.clone(), Mount::ReadOnly));
    }
    for w in &sandbox.writable {
        mounts.push((w.clone(), Mount::Bind));
    }
    // A file already under an empty tmpfs is gone: binding /dev/null there would
    // create it, showing its name.
    let covering = |file: &Path, mounts: &[(PathBuf, Mount)]| {
        mounts
            .iter()
            .filter(|(p, m)| !matches!(m, Mount::NullFile) && file.starts_with(p) && p != file)
            .max_by_key(|(p, _)| p.components().count())
            .map(|(_, m)| matches!(m, Mount::Tmpfs))
            .unwrap_or(false)
    };
    let hidden_files: Vec<bool> = mounts
        .iter()
        .map(|(p, m)| matches!(m, Mount::NullFile) && covering(p, &mounts))
        .collect();
    let mut mounts: Vec<(PathBuf, Mount)> = mounts
        .into_iter()
        .zip(hidden_files)
        .filter(|(_, gone)| !gone)
        .map(|(m, _)| m)
        .collect();
    // Shallowest first; at equal depth a bind comes after the tmpfs it must survive.
    mounts.sort_by_key(|(p, m)| {
        (
            p.components().count(),
            match m {
                Mount::Tmpfs => 0,
                Mount::ReadOnly => 1,
                Mount::Bind => 2,
                Mount::NullFile => 3,
            },
        )
    });
    for (path, mount) in mounts {
        match mount {
            Mount::Tmpfs => {
                a.push("--tmpfs".into());
                a.push(path.into());
            }
            Mount::NullFile => {
                a.extend(["--ro-bind".into(), "/dev/null".into(), path.into()]);
            }
            Mount::ReadOnly => {
                a.push("--ro-bind".into());
                a.push(path.clone().into());
                a.push(path.into());
            }
            Mount::Bind => {
                a.push("--bind".into());
                a.push(path.clone().into());
                a.push(path.into());
            }
        }
    }
    a.extend(["--dir".into(), SANDBOX_HOME.into()]);
    a.push("--chdir".into());
    a.push(cwd.into());
    a.push("--".into());
    a
}

/// The paths every sandbox hides, then the engine's own (`extra`).
fn hidden_paths(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/root")];
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        // A home of `/` would hide everything: its secret directories are hidden instead.
        if home.parent().is_some() {
            paths.push(home.clone());
        }
        for secret in [".ssh", ".aws", ".config", ".gnupg", ".netrc", ".docker"] {
            paths.push(home.join(secret));
        }
    }
    paths.extend(extra.iter().cloned());
    paths
}

/// The environment of a sandboxed command: the allowlist, then `HOME`/`TMPDIR` inside
/// the sandbox, then `set` (the caller's, then the job's `env`).
pub fn environment(sandbox: &ItemSandbox, set: &[(String, String)]) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| {
            let k = k.to_string_lossy();
            ENV_ALLOWLIST.contains(&k.as_ref()) || k.starts_with("LC_")
        })
        .collect();
    env.push(("HOME".into(), SANDBOX_HOME.into()));
    env.push(("TMPDIR".into(), "/tmp".into()));
    for (k, v) in set.iter().chain(&sandbox.env) {
        env.retain(|(name, _)| name != k.as_str());
        env.push((k.into(), v.into()));
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(args: &[OsString], window: &[&str]) -> usize {
        args.windows(window.len())
            .position(|w| w.iter().zip(window).all(|(a, b)| a == b))
            .unwrap_or_else(|| panic!("{window:?} not in {args:?}"))
    }

    #[test]
    fn a_workspace_under_a_hidden_directory_is_bound_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let db = ws.join("jobs.db");
        std::fs::write(&db, "").unwrap();
        let sandbox = ItemSandbox {
            writable: vec![ws.clone()],
            hidden: vec![dir.path().to_path_buf(), db.clone()],
            ..ItemSandbox::default()
        };
        let a = args(&sandbox, &ws);
        let (d, w, f) = (
            dir.path().to_str().unwrap(),
            ws.to_str().unwrap(),
            db.to_str().unwrap(),
        );
        let tmp = position(&a, &["--tmpfs", "/tmp"]);
        let hidden = position(&a, &["--tmpfs", d]);
        let bound = position(&a, &["--bind", w, w]);
        let null = position(&a, &["--ro-bind", "/dev/null", f]);
        assert!(tmp < hidden && hidden < bound && bound < null, "{a:?}");
        assert!(a.contains(&"--unshare-net".into()));
        assert_eq!(a.last().unwrap(), "--");
        // A file under a hidden directory (not under a writable one) is simply gone.
        let outside = dir.path().join("other.db");
        std::fs::write(&outside, "").unwrap();
        let sandbox = ItemSandbox {
            hidden: vec![dir.path().to_path_buf(), outside.clone()],
            ..sandbox
        };
        let a = args(&sandbox, &ws);
        assert!(!a.contains(&outside.into_os_string()), "{a:?}");
    }

    #[test]
    fn the_network_stays_only_when_asked() {
        let sandbox = ItemSandbox {
            network: true,
            ..ItemSandbox::default()
        };
        assert!(!args(&sandbox, Path::new("/")).contains(&"--unshare-net".into()));
    }

    #[test]
    fn the_environment_is_an_allowlist_plus_the_jobs() {
        let sandbox = ItemSandbox {
            env: vec![("JOB".into(), "1".into())],
            ..ItemSandbox::default()
        };
        let env = environment(&sandbox, &[("HOME".into(), "/x".into())]);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("JOB"), Some("1".into()));
        assert_eq!(get("HOME"), Some("/x".into()));
        assert_eq!(get("TMPDIR"), Some("/tmp".into()));
        assert!(env.iter().all(|(k, _)| {
            let k = k.to_string_lossy();
            ["JOB", "HOME", "TMPDIR"].contains(&k.as_ref())
                || ENV_ALLOWLIST.contains(&k.as_ref())
                || k.starts_with("LC_")
        }));
    }
}
