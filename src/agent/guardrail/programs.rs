//! The guardrail's rules for particular programs: `rm`, `git`, and the wrappers (`env`,
//! `timeout`, `xargs`, …) whose inner command is checked in turn.

/// The git subcommands an agent may run: local reading and committing in its workspace.
const GIT_ALLOWED: &[&str] = &[
    "status",
    "diff",
    "log",
    "show",
    "add",
    "rm",
    "mv",
    "commit",
    "restore",
    "ls-files",
    "grep",
    "blame",
    "rev-parse",
    "apply",
];
/// The command a wrapper (`env`, `timeout`, `nice`, `xargs`, …) runs.
pub(super) fn wrapped_command(
    program: &str,
    args: &[String],
) -> Result<Option<Vec<String>>, String> {
    let skip_opts = |args: &[String], with_value: &[&str], positional: usize| {
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if with_value.contains(&a) {
                i += 2;
            } else if a.starts_with('-') && a.len() > 1 {
                i += 1;
            } else {
                break;
            }
        }
        args.get(i + positional..)
            .filter(|r| !r.is_empty())
            .map(<[String]>::to_vec)
    };
    Ok(match program {
        "env" => env_command(args)?,
        "timeout" => skip_opts(args, &["-s", "-k", "--signal", "--kill-after"], 1),
        "nice" => skip_opts(args, &["-n", "--adjustment"], 0),
        "ionice" => skip_opts(args, &["-c", "-n", "-p"], 0),
        "nohup" | "time" | "command" | "exec" | "stdbuf" | "setsid" | "unbuffer" | "chrt"
        | "taskset" | "flock" | "watch" | "strace" | "ltrace" => skip_opts(args, &[], 0),
        "xargs" => skip_opts(args, &["-I", "-n", "-P", "-L", "-d", "-E", "-s", "-a"], 0),
        _ => None,
    })
}

/// The command `env` runs, with `-S`/`--split-string` split as env splits it.
fn env_command(args: &[String]) -> Result<Option<Vec<String>>, String> {
    let split = |s: &str, rest: &[String]| -> Result<Option<Vec<String>>, String> {
        let mut words =
            shell_words::split(s).map_err(|e| format!("env -S string cannot be checked: {e}"))?;
        words.extend(rest.iter().cloned());
        // What follows is env's own argument list again (assignments, then the command).
        env_command(&words)
    };
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            i += 1;
            break;
        }
        if a == "-S" || a == "--split-string" {
            let s = args.get(i + 1).map(String::as_str).unwrap_or_default();
            return split(s, args.get(i + 2..).unwrap_or_default());
        }
        if let Some(s) = a.strip_prefix("--split-string=") {
            return split(s, &args[i + 1..]);
        }
        if matches!(a, "-u" | "-C" | "--unset" | "--chdir") {
            i += 2;
            continue;
        }
        if a.starts_with("--") {
            i += 1;
            continue;
        }
        if a == "-" {
            i += 1;
            continue;
        }
        if let Some(flags) = a.strip_prefix('-') {
            // Bundled short flags: `-iS 'cmd'`, `-vSrm -rf x`, `-uNAME`.
            let mut takes_next = false;
            for (pos, c) in flags.char_indices() {
                let rest = &flags[pos + 1..];
                match c {
                    'S' => {
                        return if rest.is_empty() {
                            let s = args.get(i + 1).map(String::as_str).unwrap_or_default();
                            split(s, args.get(i + 2..).unwrap_or_default())
                        } else {
                            split(rest, &args[i + 1..])
                        };
                    }
                    'u' | 'C' => {
                        takes_next = rest.is_empty();
                        break;
                    }
                    _ => {}
                }
            }
            i += if takes_next { 2 } else { 1 };
            continue;
        }
        break;
    }
    let rest = args.get(i..).unwrap_or_default();
    let Some(start) = rest.iter().position(|a| !a.contains('=')) else {
        return Ok(None);
    };
    Ok(Some(rest[start..].to_vec()))
}

pub(super) fn check_rm(args: &[String]) -> Result<(), String> {
    let (mut recursive, mut force) = (false, false);
    for a in args {
        match a.as_str() {
            "--recursive" => recursive = true,
            "--force" => force = true,
            "--no-preserve-root" => return Err("rm --no-preserve-root is not allowed".into()),
            "--" => break,
            s if s.starts_with('-') && !s.starts_with("--") => {
                recursive |= s.contains('r') || s.contains('R');
                force |= s.contains('f');
            }
            _ => {}
        }
    }
    if recursive && force {
        return Err("rm -rf is not allowed".into());
    }
    if recursive
        && args.iter().any(|a| {
            matches!(
                a.as_str(),
                "/" | "/*" | "." | ".." | "*" | "~" | "./" | "../"
            )
        })
    {
        return Err("recursively deleting the workspace or / is not allowed".into());
    }
    Ok(())
}

/// git: a few global options, then only [`GIT_ALLOWED`] subcommands. A worktree shares
/// `.git` (branches, tags, config, stashes, remotes) with the user's own checkout.
pub(super) fn check_git(args: &[String]) -> Result<(), String> {
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if !a.starts_with('-') {
            break;
        }
        match a {
            "-C" => {
                // The directory is checked with the other arguments.
                i += 2;
                continue;
            }
            "--no-pager" | "-P" | "-p" | "--paginate" | "--no-replace-objects"
            | "--literal-pathspecs" | "--glob-pathspecs" | "--noglob-pathspecs"
            | "--icase-pathspecs" | "--no-optional-locks" | "--no-lazy-fetch" | "--no-advice"
            | "--version" | "-v" | "--help" | "-h" | "--exec-path" | "--html-path"
            | "--man-path" | "--info-path" => {}
            "-c" | "--config-env" => {
                return Err(format!(
                    "git {a} is not allowed: configuration (aliases, hooks, helpers) can run any program"
                ))
            }
            other if other.starts_with("--config-env=") => {
                return Err(
                    "git --config-env is not allowed: configuration can run any program".into(),
                )
            }
            other => {
                return Err(format!(
                    "git option '{other}' is not allowed: the agent's git works on its own workspace only"
                ))
            }
        }
        i += 1;
    }
    let Some(sub) = args.get(i).map(String::as_str) else {
        return Ok(());
    };
    if !GIT_ALLOWED.contains(&sub) {
        return Err(format!(
            "git {sub} is not allowed: only the local subcommands {} may run (the repository's branches, tags, config, stashes and remotes are shared with the user's checkout)",
            GIT_ALLOWED.join(", ")
        ));
    }
    let rest = &args[i + 1..];
    match sub {
        "grep"
            if rest
                .iter()
                .any(|a| a.starts_with("-O") || a.starts_with("--open-files-in-pager")) =>
        {
            Err("git grep --open-files-in-pager runs a program; not allowed".into())
        }
        "apply" if rest.iter().any(|a| a == "--unsafe-paths") => {
            Err("git apply --unsafe-paths is not allowed".into())
        }
        _ => Ok(()),
    }
}
