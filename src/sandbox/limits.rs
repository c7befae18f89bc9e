//! Resource limits of one command, and telling which one ended it.
//!
//! Memory, CPU time and file size are rlimits set in the child before it executes
//! (RLIMIT_AS, RLIMIT_CPU with the hard limit one second past the soft one so the kernel
//! sends SIGXCPU first, RLIMIT_FSIZE); they bind bubblewrap and everything it starts.
//! The process count is not an rlimit: RLIMIT_NPROC counts every process of the user
//! (not of the item) and is never enforced for root, which these engines often run as.
//! Instead a watcher counts the item's processes every [`WATCH_INTERVAL`] (its process
//! tree, which under bwrap holds all of its PID namespace, plus its process group) and
//! kills the whole sandbox when the count passes the limit. A fork bomb can therefore
//! overshoot the limit for up to one interval before it is killed.

use super::policy::Limits;
use std::time::Duration;

/// How often the process watcher counts.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(20);

const MIB: u64 = 1024 * 1024;

/// Sets the rlimits of `limits` on the calling process; for `pre_exec`, so it only makes
/// async-signal-safe calls.
pub fn apply(limits: &Limits) -> std::io::Result<()> {
    let set = |resource, soft: u64, hard: u64| {
        let lim = libc::rlimit {
            rlim_cur: soft,
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given and is async-signal-safe.
        if unsafe { libc::setrlimit(resource, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    };
    if let Some(mb) = limits.memory_mb {
        set(libc::RLIMIT_AS, mb * MIB, mb * MIB)?;
    }
    if let Some(s) = limits.cpu_seconds {
        set(libc::RLIMIT_CPU, s, s + 1)?;
    }
    if let Some(mb) = limits.max_file_mb {
        set(libc::RLIMIT_FSIZE, mb * MIB, mb * MIB)?;
    }
    Ok(())
}

/// Processes in the tree under `root` (itself included) or in process group `pgid`, read
/// from `/proc`.
pub fn count_processes(root: i32, pgid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    // (pid, ppid, pgrp) of every process.
    let mut all: Vec<(i32, i32, i32)> = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: fields follow the last ')'.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        let mut fields = rest.split_whitespace().skip(1);
        let (Some(ppid), Some(pgrp)) = (fields.next(), fields.next()) else {
            continue;
        };
        if let (Ok(ppid), Ok(pgrp)) = (ppid.parse(), pgrp.parse()) {
            all.push((pid, ppid, pgrp));
        }
    }
    let mut inside: std::collections::HashSet<i32> = all
        .iter()
        .filter(|(pid, _, pgrp)| *pid == root || *pgrp == pgid)
        .map(|(pid, _, _)| *pid)
        .collect();
    // Descendants: repeat until no parent in the set adds a child.
    loop {
        let before = inside.len();
        for (pid, ppid, _) in &all {
            if inside.contains(ppid) {
                inside.insert(*pid);
            }
        }
        if inside.len() == before {
            return inside.len();
        }
    }
}

/// How a command ended, as far as telling a limit goes.
pub struct Ending<'a> {
    /// Exit code, `None` when killed by a signal.
    pub exit_code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
    /// Its captured stderr.
    pub stderr: &'a str,
}

/// The limit that ended a command, as the item's error says it; `None` when its end
/// does not look like one. bubblewrap reports a command killed by signal `n` as exit
/// code `128 + n`, so both forms are read. Memory is judged by what a program prints
/// when an allocation fails under RLIMIT_AS (Python's `MemoryError`, C's
/// `Cannot allocate memory`, Rust's `memory allocation of … failed`, C++'s
/// `bad_alloc`), or by the crash such a failure often ends in.
pub fn limit_reached(limits: &Limits, end: &Ending<'_>) -> Option<String> {
    let by = |sig: i32| end.signal == Some(sig) || end.exit_code == Some(128 + sig);
    if end.exit_code == Some(0) {
        return None;
    }
    if let Some(s) = limits.cpu_seconds {
        if by(libc::SIGXCPU) {
            return Some(format!("CPU time limit of {s} s reached"));
        }
    }
    if let Some(mb) = limits.max_file_mb {
        if by(libc::SIGXFSZ) || end.stderr.contains("File too large") {
            return Some(format!("file size limit of {mb} MB reached"));
        }
    }
    if let Some(mb) = limits.memory_mb {
        let says = [
            "MemoryError",
            "Cannot allocate memory",
            "out of memory",
            "Out of memory",
            "bad_alloc",
            "memory allocation of",
        ]
        .iter()
        .any(|m| end.stderr.contains(m));
        if says || by(libc::SIGSEGV) || by(libc::SIGABRT) || by(libc::SIGBUS) {
            return Some(format!("memory limit of {mb} MB reached"));
        }
    }
    None
}

/// The error of a command killed for passing its process limit.
pub fn process_limit_message(limit: u64) -> String {
    format!("process limit of {limit} reached")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(exit_code: Option<i32>, signal: Option<i32>, stderr: &str) -> Option<String> {
        let limits = Limits {
            memory_mb: Some(512),
            cpu_seconds: Some(2),
            max_processes: Some(32),
            max_file_mb: Some(1),
        };
        limit_reached(
            &limits,
            &Ending {
                exit_code,
                signal,
                stderr,
            },
        )
    }

    #[test]
    fn each_limit_is_named_by_how_it_ends_a_command() {
        assert_eq!(
            end(Some(152), None, "").as_deref(),
            Some("CPU time limit of 2 s reached")
        );
        assert_eq!(
            end(None, Some(libc::SIGXCPU), "").as_deref(),
            Some("CPU time limit of 2 s reached")
        );
        assert_eq!(
            end(Some(153), None, "").as_deref(),
            Some("file size limit of 1 MB reached")
        );
        assert_eq!(
            end(Some(1), None, "Traceback …\nMemoryError\n").as_deref(),
            Some("memory limit of 512 MB reached")
        );
        assert_eq!(end(Some(1), None, "assert 1 == 2"), None);
        assert_eq!(end(Some(0), None, "MemoryError"), None);
        assert_eq!(
            limit_reached(
                &Limits::default(),
                &Ending {
                    exit_code: Some(152),
                    signal: None,
                    stderr: "MemoryError"
                }
            ),
            None
        );
    }

    #[test]
    fn the_process_count_covers_the_tree_and_the_group() {
        let me = std::process::id() as i32;
        // SAFETY: getpgrp has no preconditions.
        let group = unsafe { libc::getpgrp() };
        assert!(count_processes(me, -1) >= 1);
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(count_processes(me, -1) >= 2);
        assert!(count_processes(child.id() as i32, -1) == 1);
        assert!(count_processes(-1, group) >= 1);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
