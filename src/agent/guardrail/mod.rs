//! What an agent's tool call may not do, checked before every call. A refused call is not
//! run: the model is told why, and the task's `blocked` count goes up.
//!
//! **This is an argv and pattern check, advisory defence in depth — not a sandbox.** It
//! looks at the words of a command line, the inline code of interpreters and shell
//! scripts the command names; it cannot see what a program does once it runs (a Python
//! file that deletes the home directory, a Makefile, a test suite, a command assembled at
//! run time). Run batchforge as a user, or in a container or VM, whose reach you accept.
//!
//! Refused:
//! - the destructive commands the Python original blocked (`rm -rf`, `sudo`, `mkfs`,
//!   `shutdown`, `reboot`, writes to `/dev`, …), also when wrapped in `sh -c`, `env`
//!   (`env -S` too), `timeout`, `xargs`, `find -exec`, or a `busybox`/`toybox` applet;
//! - inline code of interpreters (`python -c`, `perl -e`, `ruby -e`, `node -e`, `php -r`,
//!   `awk` programs) that deletes files or runs programs (`rmtree`, `unlink`, `system`,
//!   `subprocess`, `exec`, …), and shell scripts run as `sh FILE`, `bash FILE`, `. FILE` or
//!   `./FILE` (with a shell `#!`) whose text breaks the same rules as `sh -c`;
//! - git beyond local reading and committing: only `status`, `diff`, `log`, `show`, `add`,
//!   `rm`, `mv`, `commit`, `restore`, `ls-files`, `grep`, `blame`, `rev-parse` and `apply`
//!   run, without `-c`, `--git-dir` or `--work-tree` (a worktree shares `.git` with the
//!   user's checkout: branches, tags, config, remotes and stashes are theirs), and no
//!   `GIT_…` variable may be set;
//! - writes to system paths; any path that leaves the workspace (absolute paths elsewhere,
//!   `..` escapes, `~`, symlinks that lead out); any written path or command argument that
//!   goes through a `.git` directory or file, also through a symlink;
//! - in read-only mode (`apply_changes: false`), every `write_file` and `run_command`.
//!
//! Commands run without a shell, so `;`, `|` and `>` are plain arguments unless a shell is
//! asked for explicitly; the script of a `sh -c` is checked segment by segment.

use crate::sandbox::confine::{real_path, Access, Root};
use serde_json::Value;
use std::path::{Path, PathBuf};

mod programs;
mod scripts;

use programs::{check_git, check_rm, wrapped_command};
use scripts::{
    check_awk, check_code, check_script_file, check_shebang_script, check_shell, inline_code,
    is_awk, option_value, read_script,
};

/// Programs never allowed: privilege, disks, power, services, accounts.
const BLOCKED_PROGRAMS: &[&str] = &[
    "sudo",
    "su",
    "doas",
    "pkexec",
    "runuser",
    "mkfs",
    "mke2fs",
    "mkswap",
    "fdisk",
    "sfdisk",
    "cfdisk",
    "parted",
    "gdisk",
    "wipefs",
    "shred",
    "shutdown",
    "reboot",
    "halt",
    "poweroff",
    "init",
    "telinit",
    "systemctl",
    "service",
    "mount",
    "umount",
    "swapon",
    "swapoff",
    "chroot",
    "killall",
    "pkill",
    "crontab",
    "passwd",
    "chpasswd",
    "useradd",
    "userdel",
    "usermod",
    "groupadd",
    "visudo",
    "iptables",
    "ip6tables",
    "nft",
    "insmod",
    "rmmod",
    "modprobe",
    "sysctl",
    "format",
    "diskpart",
];

/// Shells: `-c SCRIPT` is a script to check, and so is a script file they are given.
const SHELLS: &[&str] = &["sh", "bash", "zsh", "dash", "ksh", "mksh", "fish", "ash"];
/// Multi-call binaries whose first argument names the program to run.
const MULTICALL: &[&str] = &["busybox", "toybox"];
/// `/dev` entries a command may name.
const HARMLESS_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/stdin",
    "/dev/stdout",
    "/dev/stderr",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];

/// Where a command runs: the workspace root (canonical) and its working directory.
struct Ctx<'a> {
    root: &'a Path,
    cwd: PathBuf,
}

/// Checks one tool call against the rules for workspace `root` (canonical). `Err` holds
/// why it is refused.
pub fn check_call(name: &str, args: &Value, root: &Path, read_only: bool) -> Result<(), String> {
    let arg = |k: &str| args.get(k).and_then(Value::as_str);
    match name {
        "write_file" => {
            if read_only {
                return Err(
                    "this task is read-only (apply_changes is false): write_file is not allowed"
                        .into(),
                );
            }
            match arg("path") {
                Some(p) => check_path(p, root, true),
                None => Ok(()),
            }
        }
        "run_command" => {
            if read_only {
                return Err(
                    "this task is read-only (apply_changes is false): run_command is not allowed"
                        .into(),
                );
            }
            let mut cwd = root.to_path_buf();
            if let Some(c) = arg("cwd") {
                check_path(c, root, false)?;
                if goes_through_git(c, root, root) {
                    return Err(format!("commands may not run inside .git ('{c}')"));
                }
                cwd = real_path(&root.join(c));
            }
            match arg("command") {
                Some(c) => check_command_in(c, root, &cwd),
                None => Ok(()),
            }
        }
        "read_file" | "list_files" => match arg("path") {
            Some(p) => check_path(p, root, false),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// Checks a path a tool is given, relative to the workspace root.
pub fn check_path(path: &str, root: &Path, write: bool) -> Result<(), String> {
    check_path_from(path, root, root, write)
}

/// Checks a path relative to `base` (a directory inside the workspace); see
/// [`Root::check`] for why the guardrail's rules are not the runners'.
fn check_path_from(path: &str, base: &Path, root: &Path, write: bool) -> Result<(), String> {
    let access = if write { Access::Write } else { Access::Read };
    Root::new(root).check(path, base, access)
}

/// Whether `path` (relative to `base`) goes in or through a `.git` of the workspace.
fn goes_through_git(path: &str, base: &Path, root: &Path) -> bool {
    Root::new(root).goes_through_git(path, base)
}

/// Checks a `run_command` command line run at the workspace root.
pub fn check_command(command: &str, root: &Path) -> Result<(), String> {
    check_command_in(command, root, root)
}

/// Checks a `run_command` command line run in `cwd` (inside `root`).
pub fn check_command_in(command: &str, root: &Path, cwd: &Path) -> Result<(), String> {
    let ctx = Ctx {
        root,
        cwd: cwd.to_path_buf(),
    };
    match shell_words::split(command) {
        Ok(argv) => check_argv(&argv, &ctx, 0),
        // The runner will refuse it too; still, look at the words.
        Err(_) => check_argv(
            &command
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>(),
            &ctx,
            0,
        ),
    }
}

fn program_name(arg0: &str) -> &str {
    arg0.rsplit('/').next().unwrap_or(arg0)
}

/// Whether `program` is `name` or a versioned `name` (`python3.12`).
fn is_program(program: &str, names: &[&str]) -> bool {
    names.iter().any(|n| {
        program == *n
            || program
                .strip_prefix(n)
                .is_some_and(|v| v.chars().all(|c| c.is_ascii_digit() || c == '.'))
    })
}

fn check_argv(argv: &[String], ctx: &Ctx, depth: usize) -> Result<(), String> {
    if depth > 8 {
        return Err("the command nests too many wrappers to check".into());
    }
    let Some(arg0) = argv.first() else {
        return Ok(());
    };
    let program = program_name(arg0);
    let args = &argv[1..];
    if BLOCKED_PROGRAMS.contains(&program) || program.starts_with("mkfs.") {
        return Err(format!("'{program}' is not allowed"));
    }
    if program.chars().any(char::is_whitespace) {
        // `env -S`-like splitting the runner would not do; check the words anyway.
        let words = shell_words::split(arg0).unwrap_or_default();
        let mut inner = words;
        inner.extend(args.iter().cloned());
        return check_argv(&inner, ctx, depth + 1);
    }
    match program {
        "rm" => check_rm(args)?,
        "dd" => {
            for a in args {
                if let Some(target) = a.strip_prefix("of=") {
                    check_path_from(target, &ctx.cwd, ctx.root, true)?;
                }
            }
        }
        "kill" if args.iter().any(|a| matches!(a.as_str(), "1" | "-1" | "0")) => {
            return Err("killing init or every process is not allowed".into());
        }
        "chmod" | "chown" | "chgrp" if args.iter().any(|a| a == "/" || a == "/*") => {
            return Err(format!("{program} on / is not allowed"));
        }
        "git" => check_git(args)?,
        "." | "source" => {
            if let Some(file) = args.first() {
                check_script_file(file, ctx, depth)?;
            }
        }
        _ => {}
    }
    if MULTICALL.contains(&program) {
        if let Some(first) = args.first() {
            if first.starts_with('-') {
                if first == "--install" {
                    return Err(format!("{program} {first} is not allowed"));
                }
            } else {
                check_argv(args, ctx, depth + 1)?;
            }
        }
    }
    // Wrappers that run another command: check that one too.
    if let Some(inner) = wrapped_command(program, args)? {
        check_argv(&inner, ctx, depth + 1)?;
    }
    if program == "find" {
        if args.iter().any(|a| a == "-delete") && args.iter().any(|a| a == "/") {
            return Err("find -delete on / is not allowed".into());
        }
        let mut i = 0;
        while i < args.len() {
            if matches!(args[i].as_str(), "-exec" | "-execdir" | "-ok" | "-okdir") {
                let end = args[i + 1..]
                    .iter()
                    .position(|a| a == ";" || a == "+")
                    .map(|p| i + 1 + p)
                    .unwrap_or(args.len());
                check_argv(&args[i + 1..end], ctx, depth + 1)?;
                i = end;
            }
            i += 1;
        }
    }
    if is_program(program, SHELLS) {
        check_shell(args, ctx, depth)?;
    }
    for code in inline_code(program, args) {
        check_code(&code)?;
        if is_awk(program) {
            check_awk(&code)?;
        }
    }
    if is_awk(program) {
        if let Some(file) = option_value(args, "-f", "--file") {
            if let Some(text) = read_script(&file, ctx)? {
                check_code(&text)?;
                check_awk(&text)?;
            }
        }
    }
    if arg0.contains('/') {
        check_shebang_script(arg0, ctx, depth)?;
    }
    let mut pattern_next = false;
    for a in args {
        // A pattern that leaves `.git` out (`find -path ./.git -prune`,
        // `grep --exclude-dir=.git`) names no file to touch.
        let pattern = pattern_next || EXCLUDE_FLAGS.iter().any(|f| a.starts_with(f));
        pattern_next = PATTERN_FLAGS.contains(&a.as_str());
        if pattern {
            check_argument_outside(a, ctx)?;
        } else {
            check_argument(a, ctx)?;
        }
    }
    Ok(())
}

/// Flags whose next argument is a name pattern, not a path to touch.
const PATTERN_FLAGS: &[&str] = &[
    "-path",
    "-ipath",
    "-wholename",
    "-name",
    "-iname",
    "-regex",
    "--exclude",
    "--exclude-dir",
    "--ignore",
    "-I",
];
/// `--flag=PATTERN` arguments that leave something out.
const EXCLUDE_FLAGS: &[&str] = &["--exclude", "--ignore", "--exclude-dir"];

/// Checks an argument for paths outside the workspace, devices, `.git` and git's
/// environment, also after `=` (`--output=/etc/x`, `of=/dev/sda`).
fn check_argument(arg: &str, ctx: &Ctx) -> Result<(), String> {
    check_argument_outside(arg, ctx)?;
    let mut values = vec![arg];
    if let Some((_, v)) = arg.split_once('=') {
        values.push(v);
    }
    for v in values {
        if goes_through_git(v, &ctx.cwd, ctx.root) {
            return Err(format!(
                "'{v}' goes through .git: commands may not touch git's own files"
            ));
        }
    }
    Ok(())
}

/// [`check_argument`] without the `.git` rule.
fn check_argument_outside(arg: &str, ctx: &Ctx) -> Result<(), String> {
    if arg.starts_with("GIT_") && arg.contains('=') {
        return Err(format!(
            "setting git's environment is not allowed ('{}')",
            arg.split('=').next().unwrap_or(arg)
        ));
    }
    let mut values = vec![arg];
    if let Some((_, v)) = arg.split_once('=') {
        values.push(v);
    }
    for v in values {
        if v.starts_with("/dev/") {
            if HARMLESS_DEVICES.contains(&v) || v.starts_with("/dev/fd/") {
                continue;
            }
            return Err(format!("device access is not allowed ('{v}')"));
        }
        if v.starts_with('/') || v.starts_with('~') || v.split('/').any(|c| c == "..") {
            check_path_from(v, &ctx.cwd, ctx.root, false)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
