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
//! Root gets no more than that: every capability is dropped (`--cap-drop ALL`, else
//! bubblewrap run by root keeps them and a command could remount `/` read-write), the
//! sysctls in `/proc/sys` and `/proc/sysrq-trigger` are read-only, and the sockets of
//! local services in `/run` (PostgreSQL, MySQL, Docker, D-Bus) are hidden. Tools
//! installed under the hidden home stay usable through their read-only roots
//! ([`tool_roots`]).
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
    "--ro-bind",
    "/proc/sys",
    "/proc/sys",
    "--tmpfs",
    "/tmp",
    "--unshare-pid",
    "--unshare-net",
    "--new-session",
    "--die-with-parent",
    "--cap-drop",
    "ALL",
];

/// Covers over the fresh `/proc` that bubblewrap 0.8 leaves writable to uid 0: it skips
/// `/proc/sys` (its directories are 0555) and `/proc/sysrq-trigger`, yet root may write
/// their files (`kernel/core_pattern` runs a program as root outside on the next crash).
const PROC_COVERS: &[&str] = &["/proc/sys", "/proc/sysrq-trigger"];

/// Unix socket directories of local services, hidden: a socket can be connected to
/// through a read-only mount, and without a network namespace to stop it a command could
/// reach a local PostgreSQL (the engine's own queue, often with trust auth) or Docker.
const SERVICE_SOCKETS: &[&str] = &[
    "/run/postgresql",
    "/run/mysqld",
    "/run/docker.sock",
    "/run/docker",
    "/run/containerd",
    "/run/dbus",
    "/run/user",
    "/run/podman",
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
        // bubblewrap started by root keeps root's capabilities: with CAP_SYS_ADMIN a
        // command could remount `/` read-write or unmount the tmpfs over `$HOME`.
        "--cap-drop",
        "ALL",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    for p in PROC_COVERS {
        if Path::new(p).exists() {
            a.extend(["--ro-bind".into(), p.into(), p.into()]);
        }
    }
    if !sandbox.network {
        a.push("--unshare-net".into());
    }
    let mut mounts: Vec<(PathBuf, Mount)> = vec![(PathBuf::from("/tmp"), Mount::Tmpfs)];
    let mut hidden = hidden_paths(&sandbox.hidden);
    hidden.extend(SERVICE_SOCKETS.iter().map(PathBuf::from));
    hidden.sort();
    hidden.dedup();
    for path in hidden {
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
    // A path already under an empty tmpfs is gone: binding /dev/null there would create
    // it, showing its name, and a tmpfs there would be one more mount for nothing (each
    // costs time in every command).
    let covering = |path: &Path, mounts: &[(PathBuf, Mount)]| {
        mounts
            .iter()
            .filter(|(p, m)| !matches!(m, Mount::NullFile) && path.starts_with(p) && p != path)
            .max_by_key(|(p, _)| p.components().count())
            .map(|(_, m)| matches!(m, Mount::Tmpfs))
            .unwrap_or(false)
    };
    let hidden_files: Vec<bool> = mounts
        .iter()
        .map(|(p, m)| matches!(m, Mount::NullFile | Mount::Tmpfs) && covering(p, &mounts))
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

/// Directories and files of a home directory that hold credentials: hidden always, and
/// never bound as a tool root even when a `PATH` entry lies in one.
const HOME_SECRETS: &[&str] = &[
    ".ssh", ".aws", ".config", ".gnupg", ".netrc", ".docker", ".kube",
];

/// Credential files inside tool roots, hidden even though their root is bound.
const TOOL_SECRETS: &[&str] = &[".cargo/credentials", ".cargo/credentials.toml"];

/// The home directories a sandbox hides: `/root` and `$HOME` (unless it is `/`).
fn hidden_homes() -> Vec<PathBuf> {
    let mut homes = vec![PathBuf::from("/root")];
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        if home.parent().is_some() && !homes.contains(&home) {
            homes.push(home);
        }
    }
    homes
}

/// The paths every sandbox hides, then the engine's own (`extra`).
fn hidden_paths(extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut paths = hidden_homes();
    if let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        let home = PathBuf::from(home);
        // A home of `/` would hide everything: its secret directories are hidden instead.
        for secret in HOME_SECRETS.iter().chain(TOOL_SECRETS) {
            paths.push(home.join(secret));
        }
    }
    for secret in TOOL_SECRETS {
        paths.push(Path::new("/root").join(secret));
    }
    paths.extend(extra.iter().cloned());
    paths
}

/// The tools installed under a hidden home that sandboxed commands may still run: what
/// [`tool_roots`] found on `PATH`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolRoots {
    /// Directories bound read-only over the hidden home (`~/.pyenv`, `~/.cargo`, …).
    pub roots: Vec<PathBuf>,
    /// Variables that point the tools at their real roots, since `HOME` inside the
    /// sandbox is [`SANDBOX_HOME`] (`RUSTUP_HOME`, `CARGO_HOME`, …).
    pub env: Vec<(String, String)>,
    /// `PATH` entries under a hidden home left hidden, with the reason.
    pub skipped: Vec<String>,
}

/// Tool roots and the variable naming each, when the tool reads its root from the
/// environment with a default under `$HOME`.
const TOOL_VARIABLES: &[(&str, &str)] = &[
    (".cargo", "CARGO_HOME"),
    (".rustup", "RUSTUP_HOME"),
    (".pyenv", "PYENV_ROOT"),
    (".nvm", "NVM_DIR"),
];

/// Variables a sandboxed command gets beside [`ENV_ALLOWLIST`] when tool roots are bound:
/// each names a tool's root (see [`tool_roots`]).
pub const TOOL_ENV: &[&str] = &[
    "CARGO_HOME",
    "RUSTUP_HOME",
    "PYENV_ROOT",
    "NVM_DIR",
    "PYTHONUSERBASE",
];

/// Finds the tools on `path` (a `PATH` value) that live under a hidden home directory
/// and the roots that make them work: for an entry `~/.pyenv/shims` the whole
/// `~/.pyenv` (its shims run `~/.pyenv/libexec/pyenv`), for `~/.cargo/bin` `~/.cargo`
/// and `~/.rustup` (rustup's proxies read their toolchains there), for `~/.local/bin`
/// that directory and `~/.local/lib` (Python's user packages) but not `~/.local/share`.
/// Entries in a credential directory (`~/.config`, `~/.ssh` …) or equal to the home
/// itself stay hidden. `env` is the engine's environment, read for the tools' own
/// variables (`CARGO_HOME`, `RUSTUP_HOME`, `PYENV_ROOT`, `NVM_DIR`).
pub fn tool_roots(path: &std::ffi::OsStr, env: &dyn Fn(&str) -> Option<String>) -> ToolRoots {
    tool_roots_in(&hidden_homes(), path, env)
}

fn tool_roots_in(
    homes: &[PathBuf],
    path: &std::ffi::OsStr,
    env: &dyn Fn(&str) -> Option<String>,
) -> ToolRoots {
    let homes: Vec<PathBuf> = homes.iter().filter_map(|h| h.canonicalize().ok()).collect();
    let mut found = ToolRoots::default();
    let add = |found: &mut ToolRoots, p: PathBuf| {
        if p.is_dir() && !found.roots.contains(&p) {
            found.roots.push(p);
        }
    };
    // A tool's own variable names its root wherever it is; inside a home it is bound.
    for (_, var) in TOOL_VARIABLES {
        let Some(value) = env(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        if let Ok(p) = Path::new(&value).canonicalize() {
            if homes.iter().any(|h| p.starts_with(h)) {
                add(&mut found, p);
            }
        }
        found.env.push((var.to_string(), value));
    }
    for entry in std::env::split_paths(path) {
        let Ok(entry) = entry.canonicalize() else {
            continue;
        };
        let Some(home) = homes.iter().find(|h| entry.starts_with(h)) else {
            continue;
        };
        let rel = entry.strip_prefix(home).expect("starts with it");
        let Some(top) = rel.components().next() else {
            found
                .skipped
                .push(format!("{}: the home directory itself", entry.display()));
            continue;
        };
        let top = top.as_os_str().to_string_lossy().into_owned();
        if HOME_SECRETS.contains(&top.as_str()) {
            found.skipped.push(format!(
                "{}: inside {}, which holds credentials",
                entry.display(),
                home.join(&top).display()
            ));
            continue;
        }
        if top == ".local" {
            add(&mut found, entry.clone());
            add(&mut found, home.join(".local/lib"));
            continue;
        }
        add(&mut found, home.join(&top));
        if top == ".cargo" {
            add(&mut found, home.join(".rustup"));
        }
    }
    // Roots under another root are bound by it.
    let all = found.roots.clone();
    found
        .roots
        .retain(|r| !all.iter().any(|o| o != r && r.starts_with(o)));
    for (dir, var) in TOOL_VARIABLES {
        if found.env.iter().any(|(k, _)| k == var) || env(var).is_some() {
            continue;
        }
        if let Some(p) = homes
            .iter()
            .map(|h| h.join(dir))
            .find(|p| found.roots.contains(p))
        {
            found
                .env
                .push((var.to_string(), p.to_string_lossy().into_owned()));
        }
    }
    // Python finds user packages under `PYTHONUSERBASE`, by default `$HOME/.local`.
    if env("PYTHONUSERBASE").is_none() {
        if let Some(lib) = found.roots.iter().find(|r| r.ends_with(".local/lib")) {
            let base = lib.parent().expect("ends with .local/lib");
            found
                .env
                .push(("PYTHONUSERBASE".into(), base.to_string_lossy().into_owned()));
        }
    }
    found
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
        // Not under /tmp, whose tmpfs would cover the hidden directory (see below).
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
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
    fn a_hidden_directory_under_the_private_tmp_costs_no_mount() {
        let dir = tempfile::tempdir().unwrap();
        let ws = dir.path().join("ws");
        std::fs::create_dir(&ws).unwrap();
        let sandbox = ItemSandbox {
            writable: vec![ws.clone()],
            hidden: vec![dir.path().to_path_buf()],
            ..ItemSandbox::default()
        };
        let a = args(&sandbox, &ws);
        assert!(!a.contains(&dir.path().as_os_str().to_owned()), "{a:?}");
        let w = ws.to_str().unwrap();
        position(&a, &["--bind", w, w]);
    }

    #[test]
    fn tools_under_a_hidden_home_get_their_roots_and_secrets_stay_hidden() {
        let home = tempfile::tempdir_in("/var/tmp").unwrap();
        let h = home.path().canonicalize().unwrap();
        for d in [
            ".pyenv/shims",
            ".pyenv/libexec",
            ".cargo/bin",
            ".rustup/toolchains",
            ".local/bin",
            ".local/lib",
            ".local/share/keyrings",
            ".config/tool/bin",
            "go/bin",
        ] {
            std::fs::create_dir_all(h.join(d)).unwrap();
        }
        let path = std::env::join_paths(
            [
                ".pyenv/shims",
                ".cargo/bin",
                ".local/bin",
                ".config/tool/bin",
                "go/bin",
                "",
                "no-such-dir",
            ]
            .iter()
            .map(|d| h.join(d))
            .chain([PathBuf::from("/usr/bin")]),
        )
        .unwrap();
        let found = tool_roots_in(std::slice::from_ref(&h), &path, &|_| None);
        let expected: Vec<PathBuf> = [
            ".pyenv",
            ".cargo",
            ".rustup",
            ".local/bin",
            ".local/lib",
            "go",
        ]
        .iter()
        .map(|d| h.join(d))
        .collect();
        assert_eq!(found.roots, expected);
        let get = |k: &str| {
            found
                .env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| PathBuf::from(v))
        };
        assert_eq!(get("CARGO_HOME"), Some(h.join(".cargo")));
        assert_eq!(get("RUSTUP_HOME"), Some(h.join(".rustup")));
        assert_eq!(get("PYENV_ROOT"), Some(h.join(".pyenv")));
        assert_eq!(get("PYTHONUSERBASE"), Some(h.join(".local")));
        assert_eq!(found.skipped.len(), 2, "{:?}", found.skipped);
        assert!(found.skipped[0].contains("holds credentials"), "{found:?}");
        assert!(
            found.skipped[1].contains("home directory itself"),
            "{found:?}"
        );
        // The tools' own variables win and bind their roots.
        let elsewhere = h.join("go/rustup");
        std::fs::create_dir_all(&elsewhere).unwrap();
        let e = elsewhere.to_string_lossy().into_owned();
        let found = tool_roots_in(std::slice::from_ref(&h), std::ffi::OsStr::new(""), &|k| {
            (k == "RUSTUP_HOME").then(|| e.clone())
        });
        assert_eq!(found.roots, std::slice::from_ref(&elsewhere));
        assert_eq!(found.env, [("RUSTUP_HOME".to_string(), e.clone())]);
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
