//! Workspaces against real git repositories and copies.

use super::*;
use std::os::unix::io::AsRawFd;
use std::process::Stdio;

async fn sh_git(dir: &Path, args: &[&str]) {
    git(dir, args).await.unwrap();
}

#[actix_rt::test]
async fn worktrees_and_copies_are_isolated_and_give_a_patch() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("repo");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/a.txt"), "one\n").unwrap();
    std::fs::write(root.join("old.txt"), "bye\n").unwrap();
    let root = root.canonicalize().unwrap();
    sh_git(&root, &["init", "--quiet"]).await;
    sh_git(&root, &["add", "-A"]).await;
    sh_git(&root, &["commit", "--quiet", "-m", "init"]).await;
    let spaces = Workspaces::new(tmp.path().join("scratch"));
    assert_eq!(spaces.default_mode(&root).await, WorkspaceMode::Worktree);
    for mode in [WorkspaceMode::Worktree, WorkspaceMode::Copy] {
        let mut ws = spaces.create(mode, &root, "t/1").await.unwrap();
        assert_ne!(ws.dir(), root);
        std::fs::write(ws.dir().join("src/a.txt"), "one\ntwo\n").unwrap();
        std::fs::write(ws.dir().join("new file.txt"), "hi\n").unwrap();
        std::fs::remove_file(ws.dir().join("old.txt")).unwrap();
        let c = ws.changes(&[]).await.unwrap();
        assert_eq!(
            c.files_changed,
            ["new file.txt", "old.txt", "src/a.txt"],
            "{mode:?}"
        );
        let patch = c.patch.unwrap();
        assert!(
            patch.contains("+++ b/src/a.txt\n@@ -1 +1,2 @@\n one\n+two\n"),
            "{mode:?}: {patch}"
        );
        assert!(patch.contains("--- a/old.txt\n+++ /dev/null"), "{patch}");
        assert!(patch.contains("+++ b/new file.txt"), "{patch}");
        // The patch applies to the base.
        let check = std::process::Command::new("git")
            .args(["apply", "--check", "-"])
            .current_dir(&root)
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(patch.as_bytes())?;
                c.wait()
            })
            .unwrap();
        assert!(check.success(), "{mode:?}: the patch applies to the base");
        assert_eq!(
            std::fs::read_to_string(root.join("src/a.txt")).unwrap(),
            "one\n"
        );
        let dir = ws.dir().to_path_buf();
        ws.remove().await;
        assert!(!dir.exists(), "{mode:?} removed");
    }
    // A root below the repository's top: the task works in the same subdirectory of
    // its worktree, and the patch is relative to the root.
    let sub = root.join("src");
    let mut ws = spaces
        .create(WorkspaceMode::Worktree, &sub, "sub")
        .await
        .unwrap();
    assert!(ws.dir().ends_with("src"), "{}", ws.dir().display());
    std::fs::write(ws.dir().join("a.txt"), "uno\n").unwrap();
    let c = ws.changes(&[]).await.unwrap();
    assert_eq!(c.files_changed, ["a.txt"]);
    assert!(c
        .patch
        .unwrap()
        .contains("--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-one\n+uno\n"));
    ws.remove().await;

    let list = git(&root, &["worktree", "list", "--porcelain"])
        .await
        .unwrap();
    assert_eq!(list.matches("worktree ").count(), 1, "{list}");
    assert_eq!(
        std::fs::read_dir(tmp.path().join("scratch"))
            .unwrap()
            .count(),
        0
    );

    let plain = tmp.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    assert_eq!(spaces.default_mode(&plain).await, WorkspaceMode::Copy);
    let err = spaces
        .create(WorkspaceMode::Worktree, &plain.canonicalize().unwrap(), "x")
        .await
        .err()
        .unwrap();
    assert!(err.contains("git repository"), "{err}");
}

async fn repo(tmp: &Path) -> PathBuf {
    let root = tmp.join("repo");
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/a.txt"), "one\n").unwrap();
    let root = root.canonicalize().unwrap();
    sh_git(&root, &["init", "--quiet"]).await;
    sh_git(&root, &["add", "-A"]).await;
    sh_git(&root, &["commit", "--quiet", "-m", "init"]).await;
    root
}

fn apply_check(root: &Path, patch: &[u8]) -> bool {
    let mut c = std::process::Command::new("git")
        .args(["apply", "--check", "-"])
        .current_dir(root)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    c.stdin.take().unwrap().write_all(patch).unwrap();
    c.wait().unwrap().success()
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk.iter().fold(0u32, |n, c| {
            (n << 6) | u32::from(if *c == b'=' { 0 } else { value(*c) })
        });
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

#[test]
fn base64_is_standard() {
    assert_eq!(base64_encode(b""), "");
    assert_eq!(base64_encode(b"f"), "Zg==");
    assert_eq!(base64_encode(b"fo"), "Zm8=");
    assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(base64_encode(&[0xff, 0xe9, 0x00, 0x01]), "/+kAAQ==");
    assert_eq!(
        base64_decode(&base64_encode(b"caf\xe9 \x00x")),
        b"caf\xe9 \x00x"
    );
}

#[actix_rt::test]
async fn generated_files_stay_out_and_non_utf8_patches_are_kept_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let root = repo(tmp.path()).await;
    std::fs::create_dir_all(root.join("__pycache__")).unwrap();
    std::fs::write(root.join("__pycache__/old.pyc"), b"\x00old").unwrap();
    let spaces = Workspaces::new(tmp.path().join("scratch"));
    for mode in [WorkspaceMode::Worktree, WorkspaceMode::Copy] {
        let mut ws = spaces.create(mode, &root, "gen").await.unwrap();
        for dir in [
            "__pycache__",
            "src/__pycache__",
            ".pytest_cache",
            "node_modules/x",
            "target",
        ] {
            std::fs::create_dir_all(ws.dir().join(dir)).unwrap();
        }
        std::fs::write(
            ws.dir().join("src/__pycache__/a.cpython-312.pyc"),
            b"\x00\x01",
        )
        .unwrap();
        std::fs::write(ws.dir().join("__pycache__/old.pyc"), b"\x00new").unwrap();
        std::fs::write(ws.dir().join("stray.pyc"), b"\x00").unwrap();
        std::fs::write(ws.dir().join(".pytest_cache/v"), "x").unwrap();
        std::fs::write(ws.dir().join("node_modules/x/i.js"), "x").unwrap();
        std::fs::write(ws.dir().join("target/out"), "x").unwrap();
        // A Latin-1 file: its bytes must survive.
        std::fs::write(ws.dir().join("src/latin1.txt"), b"caf\xe9\n").unwrap();
        let c = ws.changes(&[]).await.unwrap();
        assert_eq!(c.files_changed, ["src/latin1.txt"], "{mode:?}");
        assert_eq!(c.encoding, Some("base64"), "{mode:?}");
        assert!(c.note.as_deref().unwrap().contains("base64"));
        let patch = base64_decode(c.patch.as_deref().unwrap());
        assert!(
            patch.windows(5).any(|w| w == b"+caf\xe9"),
            "{}",
            String::from_utf8_lossy(&patch)
        );
        assert!(
            apply_check(&root, &patch),
            "{mode:?}: the decoded patch applies"
        );
        ws.remove().await;
    }
}

#[actix_rt::test]
async fn an_untracked_root_defaults_to_a_copy_and_stale_entries_are_swept() {
    let tmp = tempfile::tempdir().unwrap();
    let root = repo(tmp.path()).await;
    let untracked = root.join("scratchpad");
    std::fs::create_dir_all(&untracked).unwrap();
    std::fs::write(untracked.join("x.txt"), "x").unwrap();
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    // Left by a killed run: a worktree of the repository, a copy without its lock
    // holder, a lock no one holds.
    let stale_tree = scratch.join("old-0000abcd/tree");
    std::fs::create_dir_all(scratch.join("old-0000abcd")).unwrap();
    sh_git(
        &root,
        &[
            "worktree",
            "add",
            "--detach",
            "--quiet",
            &stale_tree.to_string_lossy(),
            "HEAD",
        ],
    )
    .await;
    std::fs::write(scratch.join("old-0000abcd.lock"), "").unwrap();
    std::fs::create_dir_all(scratch.join("older-copy-12345678/work")).unwrap();
    // Not ours: kept.
    std::fs::create_dir_all(scratch.join("notes")).unwrap();
    // Held by a task of another process: kept.
    let held = scratch.join("busy-0000beef.lock");
    let held_file = std::fs::File::create(&held).unwrap();
    assert_eq!(
        unsafe { libc::flock(held_file.as_raw_fd(), libc::LOCK_EX) },
        0
    );
    std::fs::create_dir_all(scratch.join("busy-0000beef")).unwrap();

    let spaces = Workspaces::new(scratch.clone());
    assert_eq!(spaces.default_mode(&untracked).await, WorkspaceMode::Copy);
    assert_eq!(spaces.default_mode(&root).await, WorkspaceMode::Worktree);
    let err = spaces
        .create(WorkspaceMode::Worktree, &untracked, "u")
        .await
        .err()
        .unwrap();
    assert!(err.contains("not in the repository's last commit"), "{err}");
    let mut ws = spaces
        .create(WorkspaceMode::Worktree, &root, "t")
        .await
        .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(
        &names[..2],
        ["busy-0000beef", "busy-0000beef.lock"],
        "{names:?}"
    );
    assert_eq!(names[2], "notes", "{names:?}");
    let list = git(&root, &["worktree", "list", "--porcelain"])
        .await
        .unwrap();
    assert!(!list.contains("old-0000abcd"), "pruned: {list}");
    ws.remove().await;
    let list = git(&root, &["worktree", "list", "--porcelain"])
        .await
        .unwrap();
    assert_eq!(list.matches("worktree ").count(), 1, "{list}");

    // A workspace whose creation is dropped midway leaves nothing behind.
    drop(held_file);
    let _ = std::fs::remove_dir_all(scratch.join("busy-0000beef"));
    let _ = std::fs::remove_file(&held);
    std::fs::remove_dir(scratch.join("notes")).unwrap();
    let fut = spaces.create(WorkspaceMode::Copy, &root, "dropped");
    let _ = tokio::time::timeout(std::time::Duration::from_millis(1), fut).await;
    let ws = spaces
        .create(WorkspaceMode::Worktree, &root, "dropped2")
        .await
        .unwrap();
    drop(ws);
    // The dropped creation is cleaned up by a background task: on a loaded machine that
    // can take seconds, so the bound is generous.
    for _ in 0..1500 {
        if std::fs::read_dir(&scratch).unwrap().count() == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let list = git(&root, &["worktree", "list", "--porcelain"])
        .await
        .unwrap();
    assert_eq!(list.matches("worktree ").count(), 1, "{list}");
}

#[actix_rt::test]
async fn a_patch_over_the_limit_is_left_out_without_buffering_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = repo(tmp.path()).await;
    let spaces = Workspaces::new(tmp.path().join("scratch"));
    let mut ws = spaces
        .create(WorkspaceMode::Worktree, &root, "big")
        .await
        .unwrap();
    let line = "x".repeat(99) + "\n";
    std::fs::write(
        ws.dir().join("big.txt"),
        line.repeat(MAX_PATCH_BYTES / 100 + 10),
    )
    .unwrap();
    let c = ws.changes(&[]).await.unwrap();
    assert_eq!(c.patch, None);
    assert_eq!(c.files_changed, ["big.txt"]);
    assert!(c.note.unwrap().contains("limit"));
    ws.remove().await;
}
