//! The guardrail's rules for code a command carries: shell scripts (`sh -c`, script
//! files, `#!` scripts), interpreters' inline code (`python -c`, `perl -e`, …) and awk
//! programs.

use super::{check_argument, check_argv, check_path_from, is_program, program_name, Ctx};
use super::{HARMLESS_DEVICES, SHELLS};
use crate::sandbox::confine::{real_path, Root};
use std::path::Path;

/// Largest script file read to be checked.
const MAX_SCRIPT_BYTES: u64 = 1024 * 1024;

/// Text that is refused wherever it appears in an inline script.
const SCRIPT_PATTERNS: &[(&str, &str)] = &[
    ("rm -rf", "rm -rf is not allowed"),
    ("rm -fr", "rm -rf is not allowed"),
    ("rmtree('/", "deleting / is not allowed"),
    ("rmtree(\"/", "deleting / is not allowed"),
    (":(){", "a fork bomb is not allowed"),
    ("sudo ", "sudo is not allowed"),
    ("mkfs", "mkfs is not allowed"),
    ("shutdown", "shutdown is not allowed"),
    ("reboot", "reboot is not allowed"),
    ("of=/dev/", "writes to /dev are not allowed"),
    ("> /dev/sd", "writes to /dev are not allowed"),
    (">/dev/sd", "writes to /dev are not allowed"),
];

/// What inline interpreter code may not contain (lowercase, looked for with the
/// whitespace taken out): deleting files and running other programs.
const CODE_PATTERNS: &[&str] = &[
    "rmtree",
    "unlink",
    "rmdir",
    "removedirs",
    "os.remove",
    "fs.rm",
    "rmsync",
    "rimraf",
    "rm_rf",
    "rm_r",
    "rm_f",
    "fileutils",
    "system",
    "popen",
    "subprocess",
    "child_process",
    "exec",
    "spawn",
    "passthru",
    "proc_open",
    "__import__",
    "eval",
    ".git/",
    ".git'",
    ".git\"",
    ".git)",
];

/// A shell's arguments: the `-c` script, or the script file it runs.
pub(super) fn check_shell(args: &[String], ctx: &Ctx, depth: usize) -> Result<(), String> {
    let mut command_mode = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            i += 1;
            break;
        }
        if matches!(a, "-o" | "+o" | "-O" | "+O") {
            i += 2;
            continue;
        }
        if matches!(a, "--rcfile" | "--init-file") {
            if let Some(f) = args.get(i + 1) {
                check_script_file(f, ctx, depth)?;
            }
            i += 2;
            continue;
        }
        if (a.starts_with('-') || a.starts_with('+')) && a.len() > 1 {
            if !a.starts_with("--") && a.contains('c') {
                command_mode = true;
            }
            i += 1;
            continue;
        }
        break;
    }
    let Some(first) = args.get(i) else {
        return Ok(());
    };
    if command_mode {
        check_script(first, ctx, depth + 1)
    } else {
        check_script_file(first, ctx, depth)
    }
}

/// Reads a script file of the workspace (`None` when it is not there, or outside: the
/// argument check refuses the latter).
pub(super) fn read_script(file: &str, ctx: &Ctx) -> Result<Option<String>, String> {
    let p = Path::new(file);
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        ctx.cwd.join(p)
    };
    let real = real_path(&joined);
    if !Root::new(ctx.root).contains(&real) {
        return Ok(None);
    }
    let Ok(meta) = std::fs::metadata(&real) else {
        return Ok(None);
    };
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > MAX_SCRIPT_BYTES {
        return Err(format!(
            "the script '{file}' is too large to be checked ({} bytes)",
            meta.len()
        ));
    }
    let bytes =
        std::fs::read(&real).map_err(|e| format!("cannot read the script '{file}': {e}"))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// A shell script file is held to the rules of `sh -c`.
pub(super) fn check_script_file(file: &str, ctx: &Ctx, depth: usize) -> Result<(), String> {
    match read_script(file, ctx)? {
        Some(text) => check_script(&text, ctx, depth + 1)
            .map_err(|e| format!("the script '{file}' is refused: {e}")),
        None => Ok(()),
    }
}

/// A program named by path (`./run.sh`) that is a shell script of the workspace.
pub(super) fn check_shebang_script(arg0: &str, ctx: &Ctx, depth: usize) -> Result<(), String> {
    let Some(text) = read_script(arg0, ctx)? else {
        return Ok(());
    };
    let Some(line) = text.lines().next().and_then(|l| l.strip_prefix("#!")) else {
        // No `#!`: execvp runs it with /bin/sh.
        return check_script(&text, ctx, depth + 1)
            .map_err(|e| format!("the script '{arg0}' is refused: {e}"));
    };
    let mut words = line.split_whitespace();
    let mut interpreter = words.next().map(program_name).unwrap_or_default();
    if interpreter == "env" {
        interpreter = words
            .find(|w| !w.starts_with('-'))
            .map(program_name)
            .unwrap_or_default();
    }
    if is_program(interpreter, SHELLS) {
        check_script(&text, ctx, depth + 1)
            .map_err(|e| format!("the script '{arg0}' is refused: {e}"))?;
    }
    Ok(())
}

/// The value of option `short` (`-f X`, `-fX`) or `long` (`--file X`, `--file=X`).
pub(super) fn option_value(args: &[String], short: &str, long: &str) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == short || a == long {
            return it.next().cloned();
        }
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            return Some(v.to_string());
        }
        if let Some(v) = a.strip_prefix(short) {
            if !a.starts_with("--") && !v.is_empty() {
                return Some(v.to_string());
            }
        }
    }
    None
}

pub(super) fn is_awk(program: &str) -> bool {
    matches!(program, "awk" | "gawk" | "mawk" | "nawk")
}

/// The inline code an interpreter is given: `python -c`, `perl -e`/`-E`, `ruby -e`,
/// `node -e`/`-p`/`--eval`/`--print`, `php -r`, an `awk` program. Liberal on purpose:
/// any flag with the code letter counts, wherever it is.
pub(super) fn inline_code(program: &str, args: &[String]) -> Vec<String> {
    let (letters, longs): (&[char], &[&str]) = if is_program(program, &["python", "pypy"]) {
        (&['c'], &[])
    } else if is_program(program, &["perl"]) {
        (&['e', 'E'], &[])
    } else if is_program(program, &["ruby"]) {
        (&['e'], &[])
    } else if is_program(program, &["node", "nodejs", "bun"]) {
        (&['e', 'p'], &["--eval", "--print"])
    } else if is_program(program, &["php"]) {
        (&['r', 'B', 'R', 'E'], &[])
    } else if is_awk(program) {
        return awk_program(args).into_iter().collect();
    } else {
        return Vec::new();
    };
    let mut code = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if longs.contains(&a) {
            if let Some(v) = args.get(i + 1) {
                code.push(v.clone());
            }
        } else if let Some(v) = longs.iter().find_map(|l| a.strip_prefix(&format!("{l}="))) {
            code.push(v.to_string());
        } else if a.starts_with('-') && !a.starts_with("--") {
            if let Some(pos) = a.find(|c: char| letters.contains(&c)) {
                let rest = &a[pos + 1..];
                if !rest.is_empty() {
                    code.push(rest.to_string());
                } else if let Some(v) = args.get(i + 1) {
                    code.push(v.clone());
                }
            }
        }
        i += 1;
    }
    code
}

/// An awk program: after `-e`/`--source`, or the first operand when no `-f` is given.
fn awk_program(args: &[String]) -> Vec<String> {
    let mut code = Vec::new();
    let mut has_file = false;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        match a {
            "-e" | "--source" => {
                if let Some(v) = args.get(i + 1) {
                    code.push(v.clone());
                }
                i += 2;
                continue;
            }
            "-f" | "--file" => {
                has_file = true;
                i += 2;
                continue;
            }
            "-F" | "-v" | "--assign" | "--field-separator" => {
                i += 2;
                continue;
            }
            "--" => {
                i += 1;
                break;
            }
            _ if a.starts_with('-') && a.len() > 1 => {
                has_file |= a.starts_with("-f") && !a.starts_with("--");
                i += 1;
                continue;
            }
            _ => break,
        }
    }
    if !has_file && code.is_empty() {
        if let Some(p) = args.get(i) {
            code.push(p.clone());
        }
    }
    code
}

/// Inline interpreter code: the script patterns, then deleting files and running programs.
pub(super) fn check_code(code: &str) -> Result<(), String> {
    check_script_text(code)?;
    let compact: String = code
        .to_ascii_lowercase()
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    if let Some(p) = CODE_PATTERNS.iter().find(|p| compact.contains(**p)) {
        return Err(format!(
            "inline code that deletes files, runs other programs or touches .git is not allowed ('{p}'); write a file and run it, or use the tools"
        ));
    }
    Ok(())
}

/// What awk programs may not do beyond [`check_code`]: pipes to and from commands, and
/// writes to absolute paths.
pub(super) fn check_awk(code: &str) -> Result<(), String> {
    let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    for p in ["|getline", "|\"", "|&", ">\"/", ">>\"/", "\"|"] {
        if compact.contains(p) {
            return Err(format!(
                "an awk program that runs commands or writes outside the workspace is not allowed ('{p}')"
            ));
        }
    }
    Ok(())
}

fn check_script_text(script: &str) -> Result<(), String> {
    let lower = script.to_ascii_lowercase();
    let squeezed = lower.split_whitespace().collect::<Vec<_>>().join(" ");
    for (pattern, reason) in SCRIPT_PATTERNS {
        if squeezed.contains(pattern) {
            return Err(reason.to_string());
        }
    }
    if (squeezed.contains("curl") || squeezed.contains("wget"))
        && ["| sh", "|sh", "| bash", "|bash"]
            .iter()
            .any(|p| squeezed.contains(p))
    {
        return Err("piping a download into a shell is not allowed".into());
    }
    Ok(())
}

/// Checks a shell script: its text, then each simple command in it, then the targets of
/// its redirections.
fn check_script(script: &str, ctx: &Ctx, depth: usize) -> Result<(), String> {
    check_script_text(script)?;
    let mut flat = script.to_string();
    for sep in [
        "&&", "||", "$(", "`", ";", "|", "&", "\n", "(", ")", "{", "}",
    ] {
        flat = flat.replace(sep, "\n");
    }
    for segment in flat.lines() {
        let segment = segment.trim();
        if segment.starts_with('#') {
            continue;
        }
        let words = shell_words::split(segment)
            .unwrap_or_else(|_| segment.split_whitespace().map(str::to_string).collect());
        let mut argv: Vec<String> = Vec::new();
        let mut redirect_next = false;
        for w in words {
            if redirect_next {
                check_redirect(&w, ctx)?;
                redirect_next = false;
                continue;
            }
            let target = w
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .trim_start_matches(['>', '<']);
            let is_redirect = w
                .trim_start_matches(|c: char| c.is_ascii_digit())
                .starts_with(['>', '<']);
            if is_redirect {
                if target.is_empty() {
                    redirect_next = true;
                } else {
                    check_redirect(target, ctx)?;
                }
                continue;
            }
            // Leading `VAR=value` assignments are not the program, but are checked.
            if argv.is_empty() && w.contains('=') && !w.starts_with('=') {
                check_argument(&w, ctx)?;
                continue;
            }
            argv.push(w);
        }
        // Shell keywords in front of a command.
        while argv.first().is_some_and(|w| {
            matches!(
                w.as_str(),
                "then" | "do" | "else" | "elif" | "if" | "while" | "until" | "!" | "time"
            )
        }) {
            argv.remove(0);
        }
        check_argv(&argv, ctx, depth)?;
    }
    Ok(())
}

fn check_redirect(target: &str, ctx: &Ctx) -> Result<(), String> {
    if target.starts_with('&') {
        return Ok(()); // 2>&1
    }
    if target.starts_with("/dev/") {
        if HARMLESS_DEVICES.contains(&target) {
            return Ok(());
        }
        return Err(format!("writes to /dev are not allowed ('{target}')"));
    }
    check_path_from(target, &ctx.cwd, ctx.root, true)
}
