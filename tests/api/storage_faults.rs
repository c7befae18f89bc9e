//! Storage faults through the real binary: a full disk (a small tmpfs) answers 507 naming
//! the database, `/health` says `degraded` with 503, and both recover without a restart.

use crate::helpers::*;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

/// Runs a set-up command; `false` (with the reason printed) where this machine does not
/// allow it, so the test skips.
fn run_or_skip(cmd: &mut std::process::Command, what: &str) -> bool {
    match cmd.output() {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "skipping: {what} is not possible here: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("skipping: cannot run {what}: {e}");
            false
        }
    }
}

/// Mounts a tmpfs of `size` on `dir`; `false` (with the reason printed) where not allowed.
fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    run_or_skip(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir),
        "mounting a tmpfs",
    )
}

/// Unmounts the tmpfs when dropped, so a failing test leaves no mount behind.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

async fn submit(address: &str, n: usize) -> (awc::http::StatusCode, Value) {
    let targets: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "path": format!("f{i}"), "payload": "x".repeat(2000)}))
        .collect();
    let body = json!({"targets": targets, "check_command": "true"});
    send(
        &client(),
        "POST",
        &format!("{address}/batch/validation"),
        Some(body.to_string().as_bytes()),
    )
    .await
}

#[actix_web::test]
async fn a_full_disk_answers_507_naming_the_database_and_recovers_without_restart() {
    if on_postgres() {
        eprintln!("skipping: disk full is a SQLite-file fault");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    if !mount_tmpfs(&mnt, "4m") {
        return;
    }
    let _mount = Mount(mnt.clone());
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let db = mnt.join("jobs.db");
    let log = std::fs::File::create(dir.path().join("server.log")).unwrap();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--database-url".as_ref(),
        db.as_os_str(),
        "--workspace".as_ref(),
        workspace.as_os_str(),
    ];
    let (_child, address) = spawn_serve(&args, log).await;
    let (status, _) = submit(&address, 5).await;
    assert!(status.is_success(), "a first submit works: {status}");

    // Fill what is left of the tmpfs.
    let filler = mnt.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
    }
    let (status, body) = wait_for(
        Duration::from_secs(60),
        "a submit refused for a full disk",
        || {
            let address = address.clone();
            async move {
                let (status, body) = submit(&address, 200).await;
                (!status.is_success()).then_some((status, body))
            }
        },
    )
    .await;
    assert_eq!(status.as_u16(), 507, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("disk is full"), "{detail}");
    assert!(detail.contains(db.to_str().unwrap()), "{detail}");
    let (status, health) = send(&client(), "GET", &format!("{address}/health"), None).await;
    assert_eq!(status.as_u16(), 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert!(
        health["reason"].as_str().unwrap().contains("disk is full"),
        "{health}"
    );

    // The fault clears: submits are accepted again and health is back to ok.
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        Duration::from_secs(60),
        "a submit accepted after space is freed",
        || {
            let address = address.clone();
            async move { submit(&address, 5).await.0.is_success().then_some(()) }
        },
    )
    .await;
    let (status, health) = send(&client(), "GET", &format!("{address}/health"), None).await;
    assert_eq!(status.as_u16(), 200, "{health}");
    assert_eq!(health["status"], "ok");
}

/// Sets (`+i`) or clears (`-i`) the immutable flag on the database's files; `false` (with
/// the reason printed) where the filesystem or the user cannot.
fn chattr(flag: &str, db: &Path) -> bool {
    let files: Vec<std::path::PathBuf> = ["", "-wal", "-shm"]
        .iter()
        .map(|s| std::path::PathBuf::from(format!("{}{s}", db.display())))
        .filter(|p| p.exists())
        .collect();
    run_or_skip(
        std::process::Command::new("chattr").arg(flag).args(&files),
        &format!("chattr {flag}"),
    )
}

/// Clears the immutable flag when dropped, so a failing test leaves a removable file.
struct Immutable(std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        chattr("-i", &self.0);
    }
}

#[actix_web::test]
async fn database_files_made_immutable_answer_503_and_recover_once_writable() {
    if on_postgres() {
        eprintln!("skipping: an immutable database file is a SQLite-file fault");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let db = dir.path().join("jobs.db");
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let args: Vec<&std::ffi::OsStr> = vec![
        "--database-url".as_ref(),
        db.as_os_str(),
        "--workspace".as_ref(),
        workspace.as_os_str(),
    ];
    let (mut child, address) = spawn_serve(&args, log).await;
    let (status, _) = submit(&address, 5).await;
    assert!(status.is_success(), "a first submit works: {status}");

    if !chattr("+i", &db) {
        return;
    }
    let guard = Immutable(db.clone());
    for _ in 0..3 {
        let (status, body) = submit(&address, 5).await;
        assert_eq!(status.as_u16(), 503, "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(db.to_str().unwrap()), "{detail}");
    }
    let (status, health) = send(&client(), "GET", &format!("{address}/health"), None).await;
    assert_eq!(status.as_u16(), 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert!(
        child.try_wait().unwrap().is_none(),
        "the server survives writes to an immutable database"
    );

    // Writable again: the next submits are accepted without a restart.
    drop(guard);
    wait_for(
        Duration::from_secs(60),
        "a submit accepted once the files are writable",
        || {
            let address = address.clone();
            async move { submit(&address, 5).await.0.is_success().then_some(()) }
        },
    )
    .await;
    let (status, health) = send(&client(), "GET", &format!("{address}/health"), None).await;
    assert_eq!(status.as_u16(), 200, "{health}");
    let log = std::fs::read_to_string(&log_path).unwrap();
    let checkpoint_lines = log.matches("WAL checkpoint failed").count();
    assert!(
        checkpoint_lines <= 2,
        "checkpoint failures are logged once, not per attempt: {checkpoint_lines}\n{log}"
    );
}
