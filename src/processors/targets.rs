//! How an item's `path` of a command kind becomes the words appended to its command.
//!
//! The original ran `f"{command} {path}"` through a shell, so a target was whatever the
//! tool understood: a file, a pytest node id, `./pkg/...`, `-p NAME`. batchforge runs no
//! shell and confines targets to the workspace, by one of two rules the job picks with
//! `target_kind`:
//! - `path` (default): the target names something in the workspace, possibly in a tool's
//!   own syntax: a pytest node id (`file::Class::test[param]`) is confined by its file
//!   part, before the first `::` (unless the whole target is an existing file), and passed
//!   whole. The file part must stay inside the workspace (`..`, absolute paths elsewhere
//!   and symlinks out are refused, naming the path) but need not exist: a missing file is
//!   the command's business, as it was the original's. One argv word, spaces and all: the
//!   resolved path (symlinks followed), not the submitted words. A regular file with more
//!   than one hard link is refused (the command would reach its other names).
//! - `argument`: the target is split into words as the command is (quotes group, nothing
//!   is expanded) and each word is appended as it is, unconfined, except that a word that
//!   is a path which could escape (absolute, or with a `..` component), or an option's
//!   value written `--name=VALUE` that is, must stay inside the workspace like a path.

use crate::processor::FieldError;
use crate::sandbox::confine::Root;
use serde_json::Value;
use std::path::{Component, Path};

/// The job option that picks the rule.
pub const TARGET_KIND_OPTION: &str = "target_kind";

/// What a job's targets are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A path in the workspace, or a node id whose file part is one.
    Path,
    /// Words for the command, confined only where they are escaping paths.
    Argument,
}

impl TargetKind {
    /// The job's `target_kind`, checked (absent or null: [`TargetKind::Path`]).
    pub fn from_options(options: &Value) -> Result<Self, FieldError> {
        match options.get(TARGET_KIND_OPTION) {
            None | Some(Value::Null) => Ok(TargetKind::Path),
            Some(Value::String(s)) if s == "path" => Ok(TargetKind::Path),
            Some(Value::String(s)) if s == "argument" => Ok(TargetKind::Argument),
            Some(other) => Err(FieldError::new(
                TARGET_KIND_OPTION,
                format!("must be \"path\" or \"argument\", got {other}"),
            )),
        }
    }
}

/// The words `target` adds to the command under `kind`, or why it is refused (naming the
/// path).
pub fn target_words(root: Root, target: &str, kind: TargetKind) -> Result<Vec<String>, String> {
    match kind {
        TargetKind::Path => path_target(root, target).map(|w| vec![w]),
        TargetKind::Argument => argument_words(root, target),
    }
}

fn path_target(root: Root, target: &str) -> Result<String, String> {
    // A file whose own name holds `::` stays a path; otherwise `::` starts a node id.
    let (file, rest) = match target.find("::") {
        Some(i) if i > 0 && root.resolve_existing(target).is_err() => target.split_at(i),
        _ => (target, ""),
    };
    let relative = root.resolve_inside(file)?;
    root.check_single_link(&relative, file)?;
    let arg = relative.to_string_lossy();
    // `./` keeps a file named like an option (`-rf`) from being read as one.
    let arg = if arg.starts_with('-') {
        format!("./{arg}")
    } else {
        arg.into_owned()
    };
    Ok(arg + rest)
}

fn argument_words(root: Root, target: &str) -> Result<Vec<String>, String> {
    let words =
        shell_words::split(target).map_err(|e| format!("cannot parse target '{target}': {e}"))?;
    if words.is_empty() {
        return Err(format!("target '{target}' has no words"));
    }
    for word in &words {
        let value = word
            .strip_prefix('-')
            .and_then(|w| w.split_once('='))
            .map(|(_, v)| v);
        for candidate in std::iter::once(word.as_str()).chain(value) {
            if could_escape(candidate) {
                root.resolve_inside(candidate)
                    .map_err(|e| format!("argument '{word}': {e}"))?;
            }
        }
    }
    Ok(words)
}

/// Whether a word, read as a path, could lead out of the workspace by its text.
fn could_escape(word: &str) -> bool {
    let p = Path::new(word);
    p.is_absolute() || p.components().any(|c| c == Component::ParentDir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::path::PathBuf;

    fn workspace() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("tests")).unwrap();
        std::fs::write(root.join("tests/test_x.py"), "").unwrap();
        std::fs::write(root.join("odd::name.py"), "").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
        (dir, root)
    }

    #[test]
    fn node_ids_keep_their_suffix_and_are_confined_by_their_file() {
        let (_dir, root) = workspace();
        let words = |t: &str| target_words(Root::new(&root), t, TargetKind::Path);
        for t in [
            "tests/test_x.py::test_a",
            "tests/test_x.py::Class::test",
            "tests/test_x.py::test[param-1]",
            "tests/absent.py::test_a",
            "odd::name.py",
        ] {
            assert_eq!(words(t).unwrap(), vec![t.to_string()]);
        }
        assert_eq!(
            words("tests/../tests/test_x.py::t").unwrap(),
            vec!["tests/test_x.py::t".to_string()]
        );
        assert_eq!(words("-rf").unwrap(), vec!["./-rf".to_string()]);
        for (t, path) in [
            ("../x.py::t", "../x.py"),
            ("/etc/passwd::x", "/etc/passwd"),
            ("out/passwd::x", "out/passwd"),
            ("../x.py", "../x.py"),
        ] {
            assert_eq!(
                words(t).unwrap_err(),
                format!("path '{path}' is outside the workspace root")
            );
        }
    }

    #[test]
    fn arguments_pass_as_words_unless_they_are_escaping_paths() {
        let (_dir, root) = workspace();
        let words = |t: &str| target_words(Root::new(&root), t, TargetKind::Argument);
        assert_eq!(words("./pkg/...").unwrap(), vec!["./pkg/..."]);
        assert_eq!(words("-p my-crate").unwrap(), vec!["-p", "my-crate"]);
        assert_eq!(words("pkg.module").unwrap(), vec!["pkg.module"]);
        assert_eq!(
            words("-- --grep 'a b'").unwrap(),
            vec!["--", "--grep", "a b"]
        );
        let inside = root.join("tests/test_x.py");
        assert_eq!(
            words(inside.to_str().unwrap()).unwrap(),
            vec![inside.to_str().unwrap()]
        );
        assert_eq!(words("tests/../tests").unwrap(), vec!["tests/../tests"]);
        for (t, word) in [
            ("../x", "../x"),
            ("/etc/passwd", "/etc/passwd"),
            ("--rootdir=/etc", "--rootdir=/etc"),
            ("-p ../../x", "../../x"),
        ] {
            let e = words(t).unwrap_err();
            assert!(
                e.starts_with(&format!("argument '{word}': path '")),
                "{t}: {e}"
            );
            assert!(e.ends_with("is outside the workspace root"), "{t}: {e}");
        }
        assert!(words("  ").unwrap_err().contains("no words"));
        assert!(words("'open").unwrap_err().contains("cannot parse"));
    }

    #[test]
    fn target_kind_is_path_or_argument() {
        let kind = |v: Value| TargetKind::from_options(&v);
        assert_eq!(kind(json!({})).unwrap(), TargetKind::Path);
        assert_eq!(
            kind(json!({"target_kind": null})).unwrap(),
            TargetKind::Path
        );
        assert_eq!(
            kind(json!({"target_kind": "argument"})).unwrap(),
            TargetKind::Argument
        );
        let e = kind(json!({"target_kind": "word"})).unwrap_err();
        assert_eq!(e.field, "target_kind");
        assert!(e.message.contains("\"word\""), "{e}");
        assert!(kind(json!({"target_kind": 1})).is_err());
    }
}
