//! Unit tests of the one confinement, moved from its three callers, plus the cases
//! where their answers differ on purpose.

use super::*;

fn existing(root: &Path, path: &str) -> Result<PathBuf, String> {
    Root::new(root).resolve_existing(path)
}

fn new_file(root: &Path, path: &str) -> Result<PathBuf, String> {
    Root::new(root).resolve_new_file(path)
}

#[test]
fn paths_are_confined_to_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("src")).unwrap();
    std::fs::write(root.join("src/a.py"), "").unwrap();
    std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
    assert_eq!(
        existing(&root, "src/a.py").unwrap(),
        PathBuf::from("src/a.py")
    );
    assert_eq!(
        existing(&root, "src/../src/a.py").unwrap(),
        PathBuf::from("src/a.py")
    );
    assert_eq!(existing(&root, ".").unwrap(), PathBuf::from("."));
    let abs = root.join("src/a.py");
    assert_eq!(
        existing(&root, abs.to_str().unwrap()).unwrap(),
        PathBuf::from("src/a.py")
    );
    assert!(existing(&root, "../../etc/passwd")
        .unwrap_err()
        .contains("outside"));
    assert!(existing(&root, "/etc/passwd")
        .unwrap_err()
        .contains("outside"));
    assert!(existing(&root, "out/passwd")
        .unwrap_err()
        .contains("outside"));
    assert!(existing(&root, "../nope").unwrap_err().contains("outside"));
    assert!(existing(&root, "missing.py")
        .unwrap_err()
        .contains("does not exist"));
    assert!(existing(&root, "").is_err());
}

#[test]
fn new_files_are_confined_to_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let root = root.canonicalize().unwrap();
    std::fs::write(tmp.path().join("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(tmp.path(), root.join("up")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("outside.txt"), root.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nowhere.txt"), root.join("dangling")).unwrap();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::os::unix::fs::symlink(root.join("sub"), root.join("inner")).unwrap();

    assert_eq!(new_file(&root, "a.txt").unwrap(), root.join("a.txt"));
    assert_eq!(
        new_file(&root, "new/deeper/b.txt").unwrap(),
        root.join("new/deeper/b.txt")
    );
    assert!(root.join("new/deeper").is_dir());
    assert_eq!(new_file(&root, "sub/../c.txt").unwrap(), root.join("c.txt"));
    assert_eq!(
        new_file(&root, "inner/d.txt").unwrap(),
        root.join("sub/d.txt")
    );
    let abs = root.join("e.txt");
    assert_eq!(new_file(&root, abs.to_str().unwrap()).unwrap(), abs);

    for bad in [
        "../x.txt",
        "../../etc/passwd",
        "/etc/passwd",
        "up/x.txt",
        "link.txt",
        "up/new/x.txt",
    ] {
        let err = new_file(&root, bad).unwrap_err();
        assert!(err.contains("outside"), "{bad}: {err}");
    }
    assert!(
        !tmp.path().join("new").exists(),
        "nothing is created outside"
    );
    assert!(new_file(&root, "dangling").unwrap_err().contains("symlink"));
    assert_eq!(
        new_file(&root, "gone/../f.txt").unwrap(),
        root.join("f.txt")
    );
    std::fs::write(root.join("plain"), "").unwrap();
    assert!(new_file(&root, "plain/x")
        .unwrap_err()
        .contains("not a directory"));
    assert!(new_file(&root, "sub").unwrap_err().contains("directory"));
    assert!(new_file(&root, ".").unwrap_err().contains("directory"));
    assert!(new_file(&root, "").is_err());
}

/// The same paths through the three questions: where the callers' answers differ, the
/// difference is on purpose (see the module documentation).
#[test]
fn the_three_questions_differ_where_their_callers_need_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let root = root.canonicalize().unwrap();
    std::fs::create_dir(root.join("src")).unwrap();
    std::fs::write(root.join("src/a.py"), "").unwrap();
    std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling_in")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("nowhere"), root.join("dangling_out")).unwrap();
    let r = Root::new(&root);
    let check = |p: &str, a: Access| r.check(p, &root, a);

    // A file that does not exist yet: only reading refuses it.
    assert!(existing(&root, "new.py")
        .unwrap_err()
        .contains("does not exist"));
    assert_eq!(new_file(&root, "new.py").unwrap(), root.join("new.py"));
    assert!(check("new.py", Access::Write).is_ok());

    // The empty word: no path for the runners, the base itself for the guardrail.
    assert!(existing(&root, "").unwrap_err().contains("empty"));
    assert!(new_file(&root, "").unwrap_err().contains("empty"));
    assert!(check("", Access::Read).is_ok());

    // `~` is a plain name to the runners (no shell expands it) but home to the guardrail.
    assert!(existing(&root, "~/x")
        .unwrap_err()
        .contains("does not exist"));
    assert!(check("~/x", Access::Read)
        .unwrap_err()
        .contains("home directory"));

    // A dangling symlink inside: missing to a reader, refused to a writer, and followed
    // lexically by the guardrail, which only asks where it leads.
    assert!(existing(&root, "dangling_in")
        .unwrap_err()
        .contains("does not exist"));
    assert!(new_file(&root, "dangling_in")
        .unwrap_err()
        .contains("symlink"));
    assert!(check("dangling_in", Access::Write).is_ok());
    // Leading out, the guardrail refuses it for that reason.
    assert!(check("dangling_out", Access::Read)
        .unwrap_err()
        .contains("through a symlink"));

    // Writes to the system are named by the guardrail only; all three refuse them.
    assert!(existing(&root, "/etc/passwd")
        .unwrap_err()
        .contains("outside the workspace root"));
    assert!(check("/etc/passwd", Access::Write)
        .unwrap_err()
        .contains("system path /etc"));
    assert!(check("/etc/passwd", Access::Read)
        .unwrap_err()
        .ends_with("is outside the workspace"));

    // `.git`: the guardrail refuses writes there, reads are fine.
    assert!(check(".git/config", Access::Write)
        .unwrap_err()
        .contains(".git"));
    assert!(check(".git/config", Access::Read).is_ok());
    assert!(r.is_in_git(&root.join(".git/config")));
    assert!(!r.is_in_git(&root.join("src/a.py")));

    // Relative to a base inside the root.
    assert!(r.check("a.py", &root.join("src"), Access::Read).is_ok());
    assert!(r
        .check("../../x", &root.join("src"), Access::Read)
        .unwrap_err()
        .contains("outside"));
}

#[test]
fn lexical_normalization_never_climbs_above_the_start() {
    assert_eq!(
        normalize(Path::new("/a/b/../c/./d")),
        Some(PathBuf::from("/a/c/d"))
    );
    assert_eq!(normalize(Path::new("/a/..")), Some(PathBuf::from("/")));
    assert_eq!(normalize(Path::new("/..")), None);
    assert_eq!(normalize(Path::new("a/..")), None);
}

#[test]
fn real_paths_follow_symlinks_also_dangling_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().canonicalize().unwrap();
    std::fs::create_dir(base.join("d")).unwrap();
    std::os::unix::fs::symlink("d", base.join("l")).unwrap();
    std::os::unix::fs::symlink("missing/deeper", base.join("dangling")).unwrap();
    assert_eq!(real_path(&base.join("l/x")), base.join("d/x"));
    assert_eq!(
        real_path(&base.join("dangling/x")),
        base.join("missing/deeper/x")
    );
    assert_eq!(real_path(&base.join("gone/../d")), base.join("d"));
}

#[test]
fn a_target_may_be_missing_but_must_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("src")).unwrap();
    let root = root.canonicalize().unwrap();
    std::os::unix::fs::symlink("/etc", root.join("out")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("gone"), root.join("dangling")).unwrap();
    std::os::unix::fs::symlink(root.join("src"), root.join("alias")).unwrap();
    let inside = |p: &str| Root::new(&root).resolve_inside(p);
    assert_eq!(
        inside("src/absent.py").unwrap(),
        PathBuf::from("src/absent.py")
    );
    assert_eq!(
        inside("src/../absent.py").unwrap(),
        PathBuf::from("absent.py")
    );
    assert_eq!(
        inside("alias/absent.py").unwrap(),
        PathBuf::from("src/absent.py")
    );
    assert_eq!(inside("src").unwrap(), PathBuf::from("src"));
    let abs = root.join("absent.py");
    assert_eq!(
        inside(abs.to_str().unwrap()).unwrap(),
        PathBuf::from("absent.py")
    );
    for escape in [
        "../x.py",
        "src/../../x.py",
        "/etc/passwd",
        "/nowhere/x",
        "out/passwd",
        "out/absent",
        "dangling",
        "dangling/x",
    ] {
        let e = inside(escape).unwrap_err();
        assert_eq!(
            e,
            format!("path '{escape}' is outside the workspace root"),
            "{escape}"
        );
    }
    assert!(inside("").is_err());
}

#[test]
fn files_open_beneath_the_root_and_hard_links_are_refused() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("d")).unwrap();
    let root = root.canonicalize().unwrap();
    std::fs::write(root.join("d/a.txt"), "alpha").unwrap();
    std::fs::write(tmp.path().join("secret"), "secret").unwrap();
    std::fs::hard_link(tmp.path().join("secret"), root.join("hard")).unwrap();
    let r = Root::new(&root);
    let mut text = String::new();
    r.open_existing("d/a.txt", OpenFor::Read)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "alpha");
    assert!(r.open_existing("d", OpenFor::List).is_ok());
    assert_eq!(
        r.open_existing("d/a.txt", OpenFor::List).unwrap_err(),
        "'d/a.txt' is not a directory"
    );
    for purpose in [OpenFor::Read, OpenFor::List] {
        let e = r.open_existing("../secret", purpose).unwrap_err();
        assert!(e.contains("outside the workspace root"), "{e}");
    }
    let e = r.open_existing("hard", OpenFor::Read).unwrap_err();
    assert!(e.contains("has 2 hard links"), "{e}");
    let e = r.open_new_file("hard").unwrap_err();
    assert!(e.contains("refusing to write"), "{e}");
    assert!(r
        .check_single_link(Path::new("hard"), "hard")
        .unwrap_err()
        .contains("hard links"));
    assert!(r.check_single_link(Path::new("d/a.txt"), "d/a.txt").is_ok());
    assert!(r.check_single_link(Path::new("absent"), "absent").is_ok());
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("secret")).unwrap(),
        "secret"
    );
    let (_, rel) = r.open_new_file("new/b.txt").unwrap();
    assert_eq!(rel, PathBuf::from("new/b.txt"));
    assert!(root.join("new/b.txt").is_file());
}

/// What a check cannot see: a directory swapped for a symlink out after it was resolved.
/// Both ways of opening refuse to step through it.
#[test]
fn a_directory_swapped_for_a_symlink_after_the_check_is_not_followed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("d")).unwrap();
    let root = root.canonicalize().unwrap();
    std::fs::create_dir(tmp.path().join("out")).unwrap();
    std::fs::write(tmp.path().join("out/a.txt"), "secret").unwrap();
    std::fs::write(root.join("d/a.txt"), "inside").unwrap();
    let rel = Root::new(&root).resolve_existing("d/a.txt").unwrap();
    std::fs::remove_dir_all(root.join("d")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("out"), root.join("d")).unwrap();
    let dir = open_at(
        libc::AT_FDCWD,
        root.as_os_str().as_bytes(),
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .unwrap();
    let e = openat2_beneath(dir.as_raw_fd(), &rel, libc::O_RDONLY, 0).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EXDEV), "{e}");
    let e = walk_beneath(&dir, &rel, libc::O_RDONLY, 0).unwrap_err();
    assert!(
        matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)),
        "{e}"
    );
    // The last component swapped for a symlink: neither follows it.
    std::fs::remove_file(root.join("d")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("out/a.txt"), root.join("f")).unwrap();
    let f = Path::new("f");
    assert!(openat2_beneath(dir.as_raw_fd(), f, libc::O_RDONLY, 0).is_err());
    assert_eq!(
        walk_beneath(&dir, f, libc::O_RDONLY, 0)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ELOOP)
    );
    // The fallback opens plain paths like openat2 does.
    std::fs::create_dir(root.join("e")).unwrap();
    std::fs::write(root.join("e/b.txt"), "b").unwrap();
    assert!(walk_beneath(&dir, Path::new("e/b.txt"), libc::O_RDONLY, 0).is_ok());
    assert!(walk_beneath(&dir, Path::new("."), libc::O_RDONLY, 0).is_ok());
    assert!(walk_beneath(&dir, Path::new("e/../e/b.txt"), libc::O_RDONLY, 0).is_err());
}
