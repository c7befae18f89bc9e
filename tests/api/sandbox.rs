//! The sandbox, through real jobs over HTTP: what a command under bwrap cannot touch,
//! the resource limits that end an item (never the engine), and the job options that may
//! only tighten it. Skipped, with the reason printed, only where bubblewrap is unusable
//! (CI installs it and never skips).

use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::sandbox::SandboxMode;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

/// Whether bubblewrap works here; prints why not (and fails in CI, which installs it).
fn bwrap_usable() -> bool {
    let out = std::process::Command::new("bwrap")
        .args(batchforge::sandbox::bwrap::PROBE_ARGS)
        .arg("true")
        .output();
    let why = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run bwrap: {e}"),
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI needs a working bubblewrap: {why}");
    }
    eprintln!("SKIPPED: bubblewrap is unusable here ({why})");
    false
}

async fn app_in(mode: SandboxMode) -> TestApp {
    spawn_app_configured(
        AppOptions::default(),
        Vec::new(),
        Default::default(),
        |c| c.sandbox.mode = mode,
        |b| b,
    )
    .await
}

/// A bwrap app, or `None` (skipped) where bubblewrap is unusable.
async fn bwrap_app() -> Option<TestApp> {
    if !bwrap_usable() {
        return None;
    }
    let app = app_in(SandboxMode::Bwrap).await;
    let (_, health) = app.get("/health").await;
    assert_eq!(health["sandbox"], "bwrap", "{health}");
    Some(app)
}

/// Runs one validation job of `targets` (written as empty files) with `options`, and
/// answers its results.
async fn run(app: &TestApp, targets: &[&str], options: Value) -> Vec<Value> {
    let mut body = json!({
        "targets": targets.iter().map(|t| json!({"id": t, "path": t})).collect::<Vec<_>>(),
    });
    for t in targets {
        if !app.workspace.join(t).exists() {
            app.write_file(t, "");
        }
    }
    for (k, v) in options.as_object().unwrap() {
        body[k] = v.clone();
    }
    let id = app.submit("/batch/validation", &body).await;
    let job = app.wait_finished(&id, Duration::from_secs(120)).await;
    job["result"]["results"].as_array().unwrap().clone()
}

fn real_home() -> PathBuf {
    PathBuf::from(std::env::var("HOME").expect("HOME is set"))
}

/// Removes a planted file however the test ends.
struct Planted(PathBuf);

impl Drop for Planted {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[actix_web::test]
async fn writes_outside_the_workspace_change_nothing() {
    let Some(app) = bwrap_app().await else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let etc = PathBuf::from(format!("/etc/batchforge-{tag}"));
    let home = real_home().join(format!("batchforge-{tag}"));
    let _cleanup = (Planted(etc.clone()), Planted(home.clone()));
    let script = format!(
        "touch {etc}; echo etc=$?; touch ~/batchforge-{tag} {home}; echo home=$?; touch inside-{tag}",
        etc = etc.display(),
        home = home.display()
    );
    let r = &run(
        &app,
        &["f"],
        json!({"check_command": format!("sh -c '{script}'")}),
    )
    .await[0];
    assert!(
        r["stdout"].as_str().unwrap().contains("etc=1"),
        "writing /etc must fail: {r}"
    );
    assert!(!etc.exists(), "{r}");
    assert!(!home.exists(), "the real home must not change: {r}");
    assert!(
        app.workspace.join(format!("inside-{tag}")).exists(),
        "the workspace is writable: {r}"
    );
}

#[actix_web::test]
async fn a_file_planted_in_home_cannot_be_read() {
    let Some(app) = bwrap_app().await else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let secret = real_home().join(format!("batchforge-secret-{tag}"));
    std::fs::write(&secret, format!("secret-{tag}")).unwrap();
    let _cleanup = Planted(secret.clone());
    let r = &run(
        &app,
        &["f"],
        json!({"check_command": format!("cat {}", secret.display())}),
    )
    .await[0];
    assert_eq!(r["status"], "failed", "{r}");
    assert!(!r["stdout"].as_str().unwrap().contains(&tag), "{r}");
    assert!(
        r["stderr"].as_str().unwrap().contains("No such file"),
        "{r}"
    );
}

#[actix_web::test]
async fn the_network_is_there_only_when_the_job_asks() {
    let Some(app) = bwrap_app().await else { return };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            if stream.is_ok() {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let connect = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=10); print('connected')\""
    );
    let r = &run(&app, &["f"], json!({"check_command": connect})).await[0];
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    let r = &run(
        &app,
        &["f"],
        json!({"check_command": connect, "network": true}),
    )
    .await[0];
    assert_eq!(r["status"], "passed", "{r}");
    assert_eq!(r["stdout"], "connected\n");
    wait_for(Duration::from_secs(10), "the connection", || {
        let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
        async move { (n == 1).then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn the_engines_database_is_hidden() {
    if std::env::var("BATCHFORGE_TEST_DATABASE").as_deref() == Ok("postgres") {
        eprintln!("skipped: on PostgreSQL the engine has no database file to hide");
        return;
    }
    let Some(app) = bwrap_app().await else { return };
    let db = app.dir.path().join("jobs.db");
    assert!(db.exists());
    let script = format!(
        "ls -a {dir}; test -e {db} && echo db-visible; true",
        dir = app.dir.path().display(),
        db = db.display()
    );
    let r = &run(
        &app,
        &["f"],
        json!({"check_command": format!("sh -c '{script}'")}),
    )
    .await[0];
    assert_eq!(r["status"], "passed", "{r}");
    let out = r["stdout"].as_str().unwrap();
    assert!(
        !out.contains("jobs.db") && !out.contains("db-visible"),
        "{r}"
    );
    assert!(out.contains("ws"), "the workspace stays visible: {r}");
}

#[actix_web::test]
async fn the_environment_is_the_allowlist_plus_the_jobs() {
    let Some(app) = bwrap_app().await else { return };
    let r = &run(
        &app,
        &["f"],
        json!({"check_command": "sh -c env", "env": {"JOB_VAR": "from the job"}}),
    )
    .await[0];
    let out = r["stdout"].as_str().unwrap();
    assert!(out.contains("JOB_VAR=from the job\n"), "{r}");
    assert!(out.contains("HOME=/tmp/home\n"), "{r}");
    for (name, _) in std::env::vars() {
        let allowed = batchforge::sandbox::bwrap::ENV_ALLOWLIST.contains(&name.as_str())
            || name.starts_with("LC_")
            || batchforge::sandbox::bwrap::TOOL_ENV.contains(&name.as_str())
            // `sh` sets these itself.
            || ["HOME", "TMPDIR", "PWD", "OLDPWD", "SHLVL", "_"].contains(&name.as_str());
        if !allowed {
            assert!(!out.contains(&format!("\n{name}=")), "{name} leaked: {out}");
        }
    }
}

#[actix_web::test]
async fn an_escaped_descendant_dies_with_its_sandbox() {
    let Some(app) = bwrap_app().await else { return };
    let marker = "3607.2929";
    let r = &run(
        &app,
        &["f"],
        json!({"check_command": format!("sh -c 'setsid sleep {marker} & echo hi'")}),
    )
    .await[0];
    assert_eq!(r["status"], "passed", "{r}");
    wait_for(
        Duration::from_secs(10),
        "the escaped sleep to die",
        || async { processes_with(marker).is_empty().then_some(()) },
    )
    .await;
}

#[actix_web::test]
async fn each_limit_ends_its_item_with_an_error_naming_it() {
    let Some(app) = bwrap_app().await else { return };
    let cases = [
        (
            json!({"memory_mb": 256, "check_command": "python3 -c 'x = bytearray(1024 * 1024 * 1024)'"}),
            "memory limit of 256 MB reached",
        ),
        (
            json!({"max_processes": 16, "check_command": "sh -c 'for i in $(seq 200); do sleep 30 & done; wait'"}),
            "process limit of 16 reached",
        ),
        (
            json!({"cpu_seconds": 1, "check_command": "sh -c 'while :; do :; done'"}),
            "CPU time limit of 1 s reached",
        ),
        (
            json!({"max_file_mb": 1, "check_command": "sh -c 'head -c 3000000 /dev/zero > big'"}),
            "file size limit of 1 MB reached",
        ),
    ];
    for (options, message) in cases {
        let r = &run(&app, &["f"], options.clone()).await[0];
        assert_eq!(r["status"], "error", "{options} → {r}");
        assert_eq!(r["error"], message, "{options} → {r}");
    }
    // The same limits hold without bwrap (the process watcher and the rlimits).
    let plain = app_in(SandboxMode::None).await;
    let r = &run(
        &plain,
        &["f"],
        json!({"max_processes": 8, "check_command": "sh -c 'for i in $(seq 100); do sleep 30 & done; wait'"}),
    )
    .await[0];
    assert_eq!(r["error"], "process limit of 8 reached", "{r}");
}

#[actix_web::test]
async fn a_fork_bomb_and_a_memory_hog_leave_the_engine_and_the_batch_going() {
    let Some(app) = bwrap_app().await else { return };
    app.write_file("bomb.sh", "while :; do sleep 60 & done\n");
    app.write_file(
        "hog.sh",
        "exec python3 -c 'b = []\nwhile True: b.append(bytearray(10 ** 7))'\n",
    );
    for i in 0..4 {
        app.write_file(&format!("ok{i}.sh"), "echo fine\n");
    }
    let results = run(
        &app,
        &["bomb.sh", "hog.sh", "ok0.sh", "ok1.sh", "ok2.sh", "ok3.sh"],
        json!({"check_command": "sh", "max_processes": 32, "memory_mb": 256, "timeout_seconds": 60}),
    )
    .await;
    assert_eq!(
        results[0]["error"], "process limit of 32 reached",
        "{results:?}"
    );
    assert_eq!(
        results[1]["error"], "memory limit of 256 MB reached",
        "{results:?}"
    );
    for r in &results[2..] {
        assert_eq!(r["status"], "passed", "{r}");
        assert_eq!(r["stdout"], "fine\n");
    }
    let (status, health) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK, "{health}");
    let r = &run(&app, &["ok0.sh"], json!({"check_command": "sh"})).await[0];
    assert_eq!(r["status"], "passed", "the engine keeps running jobs: {r}");
}

#[actix_web::test]
async fn a_job_may_only_tighten_the_sandbox() {
    let Some(app) = bwrap_app().await else { return };
    app.write_file("f", "");
    let (_, kinds) = app.get("/batch/kinds").await;
    assert_eq!(kinds["sandbox"], "bwrap", "{kinds}");
    for (extra, field) in [
        (json!({"sandbox": "none"}), "sandbox"),
        (json!({"sandbox": "docker"}), "sandbox"),
        (json!({"network": "yes"}), "network"),
        (json!({"env": {"A": 1}}), "env.A"),
        (json!({"memory_mb": 0}), "memory_mb"),
        (json!({"cpu_seconds": "2"}), "cpu_seconds"),
    ] {
        let mut body = json!({"targets": [{"id": "f", "path": "f"}], "check_command": "true"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = app.post("/batch/validation", &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {answer}"
        );
        assert_eq!(answer["field"], field, "{body} → {answer}");
    }
    let (_, jobs) = app.get("/batch/jobs").await;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(0), "{jobs}");

    let plain = app_in(SandboxMode::None).await;
    plain.write_file("f", "");
    let (_, health) = plain.get("/health").await;
    assert_eq!(health["sandbox"], "none", "{health}");
    let (status, answer) = plain
        .post(
            "/batch/validation",
            &json!({"targets": [{"id": "f", "path": "f"}], "check_command": "true", "sandbox": "bwrap"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "sandbox");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("sandbox mode is none"),
        "{answer}"
    );
}

#[actix_web::test]
async fn an_agents_test_file_cannot_delete_home_or_reach_the_network() {
    if !bwrap_usable() {
        return;
    }
    use crate::fake_llm::{call, Chat, FakeLlm, Reply};
    let scratch = tempfile::tempdir().unwrap();
    let agent = batchforge::agent::AgentConfig {
        scratch_dir: Some(scratch.path().to_path_buf()),
        ..Default::default()
    };
    let app = spawn_app_configured(
        AppOptions::default(),
        Vec::new(),
        agent,
        |c| c.sandbox.mode = SandboxMode::Bwrap,
        |b| b,
    )
    .await;
    app.write_file("README.md", "# project\n");
    for args in [
        &["init", "--quiet"][..],
        &["add", "-A"],
        &[
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@l",
            "commit",
            "--quiet",
            "-m",
            "initial",
        ],
    ] {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(&app.workspace)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let canary = real_home().join(format!("batchforge-canary-{tag}"));
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("keep"), "keep").unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Remove(canary.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    // What a model might write: a "test" that wipes the home directory (here only the
    // canary in it, so a broken sandbox cannot wipe the machine's) and phones home.
    let test_file = format!(
        "import os, shutil, socket\n\
         shutil.rmtree(os.environ['HOME'], ignore_errors=True)\n\
         try:\n    shutil.rmtree({canary:?}); print('deleted')\n\
         except OSError as e:\n    print('delete failed:', e.__class__.__name__)\n\
         try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')\n\
         except OSError as e:\n    print('connect failed:', e.__class__.__name__)\n",
        canary = canary.to_str().unwrap()
    );
    let llm = FakeLlm::start(move |chat: &Chat| match chat.replies() {
        0 => Reply::Calls(vec![
            (
                "write_file",
                json!({"path": "test_evil.py", "content": test_file}),
            ),
            ("run_command", json!({"command": "python3 test_evil.py"})),
        ]),
        _ => call("finish", json!({})),
    });
    let id = app
        .submit(
            "/batch/agent-tasks",
            &json!({
                "tasks": [{"id": "evil", "description": "Write a test"}],
                "llm_url": llm.url, "check_command": "python3 test_evil.py"
            }),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    let r = &job["result"]["results"][0];
    let tool_output = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool" && m["name"] == "run_command")
        .map(|m| m["content"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let check_output = r["validator"]["output"].as_str().unwrap_or_default();
    for out in [tool_output.as_str(), check_output] {
        assert!(out.contains("delete failed"), "{out} in {r}");
        assert!(out.contains("connect failed"), "{out} in {r}");
    }
    assert!(
        canary.join("keep").exists(),
        "the home directory is untouched"
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection may reach the test's server"
    );
    // The user's checkout is as it was: the test file exists only in the patch.
    assert!(!app.workspace.join("test_evil.py").exists());
    assert!(
        r["patch"]
            .as_str()
            .unwrap_or_default()
            .contains("test_evil.py"),
        "{r}"
    );
}

#[actix_web::test]
async fn the_builtin_mcp_servers_commands_run_in_the_sandbox() {
    let Some(app) = bwrap_app().await else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let home = real_home().join(format!("batchforge-mcp-{tag}"));
    let _cleanup = Planted(home.clone());
    let id = app
        .submit(
            "/batch/mcp-operations",
            &json!({"operations": [
                {"id": "write", "type": "command",
                 "command": format!("sh -c 'touch {} /etc/batchforge-{tag}; touch made-{tag}'", home.display())},
                {"id": "db", "type": "command",
                 "command": format!("ls -a {}", app.dir.path().display())},
            ]}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    let results = job["result"]["results"].as_array().unwrap();
    assert!(!home.exists(), "{results:?}");
    assert!(!PathBuf::from(format!("/etc/batchforge-{tag}")).exists());
    assert!(
        app.workspace.join(format!("made-{tag}")).exists(),
        "{results:?}"
    );
    let listing = results[1].to_string();
    assert!(!listing.contains("jobs.db"), "{listing}");
}

#[actix_web::test]
async fn serve_probes_bubblewrap_refusing_a_forced_bwrap_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    // A PATH without bwrap: `auto` falls back to none with a warning, `bwrap` refuses.
    let empty = dir.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    let db = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
        .args(["serve", "--bind", "127.0.0.1:0", "--sandbox", "bwrap"])
        .args(["--database-url", &db])
        .arg("--workspace")
        .arg(&ws)
        .env("PATH", &empty)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--sandbox bwrap: bubblewrap is unusable: no 'bwrap' on PATH"),
        "{stderr}"
    );
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let (_child, address) = {
        let args = [
            std::ffi::OsStr::new("--sandbox"),
            std::ffi::OsStr::new("auto"),
            std::ffi::OsStr::new("--database-url"),
            std::ffi::OsStr::new(&db),
            std::ffi::OsStr::new("--workspace"),
            ws.as_os_str(),
        ];
        spawn_serve_in_env(&args, log, &[("PATH", empty.as_os_str())]).await
    };
    let (status, health) = send(&client(), "GET", &format!("{address}/health"), None).await;
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(health["sandbox"], "none", "{health}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(log.contains("bubblewrap is unusable"), "{log}");
}

#[actix_web::test]
async fn root_in_the_sandbox_cannot_remount_unmount_or_write_sysctls() {
    let Some(app) = bwrap_app().await else { return };
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let etc = PathBuf::from(format!("/etc/batchforge-{tag}"));
    let secret = real_home().join(format!("batchforge-secret-{tag}"));
    std::fs::write(&secret, format!("secret-{tag}")).unwrap();
    let _cleanup = (Planted(etc.clone()), Planted(secret.clone()));
    // Rewrites core_pattern with its own value: harmless if the sandbox let it through.
    let script = format!(
        "mount -o remount,bind,rw / /; touch {etc}; umount {home}; umount /root; cat {secret}; \
         cat /proc/sys/kernel/core_pattern > /tmp/cp; cat /tmp/cp > /proc/sys/kernel/core_pattern; \
         echo sysctl=$?; ls -a /run/postgresql /run/mysqld; true",
        etc = etc.display(),
        home = real_home().display(),
        secret = secret.display()
    );
    let r = &run(
        &app,
        &["f"],
        json!({"check_command": format!("sh -c '{script}'")}),
    )
    .await[0];
    let out = r["stdout"].as_str().unwrap();
    assert!(!etc.exists(), "a remount must not make / writable: {r}");
    assert!(!out.contains(&tag), "the home stays hidden: {r}");
    assert!(
        out.contains("sysctl=") && !out.contains("sysctl=0"),
        "sysctls are read-only: {r}"
    );
    assert!(
        !out.contains(".s.PGSQL") && !out.contains("mysqld.sock"),
        "local services' sockets are hidden: {r}"
    );
}

#[actix_web::test]
async fn auto_is_the_default_and_the_usual_test_commands_work_in_it() {
    if !bwrap_usable() {
        return;
    }
    assert_eq!(
        batchforge::EngineConfig::default().sandbox.mode,
        SandboxMode::Auto
    );
    let app = spawn_app().await;
    let (_, health) = app.get("/health").await;
    assert_eq!(health["sandbox"], "bwrap", "{health}");
    let (_, kinds) = app.get("/batch/kinds").await;
    assert_eq!(kinds["sandbox"], "bwrap", "{kinds}");
    app.write_file("test_ok.py", "def test_ok():\n    assert 1 + 1 == 2\n");
    app.write_file(
        "Cargo.toml",
        "[package]\nname = \"demo\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
    );
    app.write_file(
        "src/lib.rs",
        "#[test]\nfn adds() {\n    assert_eq!(1 + 1, 2);\n}\n",
    );
    for (command, target, says) in [
        ("pytest -q", "test_ok.py", "1 passed"),
        ("python3 -m pytest -q", "test_ok.py", "1 passed"),
        ("sh -c 'cargo test 2>&1'", "Cargo.toml", "test adds ... ok"),
    ] {
        let r = &run(&app, &[target], json!({"check_command": command})).await[0];
        assert_eq!(r["status"], "passed", "{command} → {r}");
        assert!(
            r["stdout"].as_str().unwrap().contains(says),
            "{command} → {r}"
        );
    }
}

#[actix_web::test]
async fn a_tool_under_home_runs_while_secrets_and_the_token_file_stay_hidden() {
    if !bwrap_usable() {
        return;
    }
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // A pyenv-style install: a shim on PATH that runs the tool from its root's libexec.
    let root = real_home().join(format!(".batchforge-tool-{tag}"));
    struct RemoveDir(PathBuf);
    impl Drop for RemoveDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _root = RemoveDir(root.clone());
    std::fs::create_dir_all(root.join("shims")).unwrap();
    std::fs::create_dir_all(root.join("libexec")).unwrap();
    let tool = format!("bftool-{tag}");
    let write_exe = |path: PathBuf, text: String| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write_exe(
        root.join("shims").join(&tool),
        format!("#!/bin/sh\nexec {}/libexec/impl \"$@\"\n", root.display()),
    );
    write_exe(
        root.join("libexec/impl"),
        "#!/bin/sh\necho tool-ran\n".into(),
    );
    let secret = real_home().join(format!("batchforge-secret-{tag}"));
    std::fs::write(&secret, format!("secret-{tag}")).unwrap();
    let _secret = Planted(secret.clone());
    // Outside /tmp and $HOME, so only the engine's own hiding keeps it from commands.
    let tokens = tempfile::tempdir_in("/var/tmp").unwrap();
    let token = format!("token-{tag}");
    let token_file = tokens.path().join("tokens");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::write(ws.join("f"), "").unwrap();
    let db = format!("sqlite://{}", dir.path().join("jobs.db").display());
    let path = std::env::join_paths(
        std::iter::once(root.join("shims"))
            .chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let args = [
        std::ffi::OsStr::new("--database-url"),
        std::ffi::OsStr::new(&db),
        std::ffi::OsStr::new("--workspace"),
        ws.as_os_str(),
        std::ffi::OsStr::new("--token-file"),
        token_file.as_os_str(),
    ];
    let (_child, address) = spawn_serve_in_env(&args, log, &[("PATH", path.as_os_str())]).await;
    let client = client();
    let call = |method: &'static str, url: String, body: Option<Value>| {
        let client = client.clone();
        let token = token.clone();
        async move {
            let req = client
                .request(method.parse().unwrap(), url)
                .insert_header(("Authorization", format!("Bearer {token}")));
            let mut res = match body {
                Some(b) => req.send_json(&b).await,
                None => req.send().await,
            }
            .unwrap();
            let bytes = res.body().await.unwrap();
            (
                res.status(),
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    };
    let (_, health) = call("GET", format!("{address}/health"), None).await;
    assert_eq!(health["sandbox"], "bwrap", "the default is auto: {health}");
    let script = format!(
        "{tool}; cat {secret}; cat {tokens}; echo end",
        secret = secret.display(),
        tokens = token_file.display()
    );
    let (status, job) = call(
        "POST",
        format!("{address}/batch/validation"),
        Some(json!({"targets": [{"id": "f", "path": "f"}], "check_command": format!("sh -c '{script}'")})),
    )
    .await;
    assert!(status.is_success(), "{job}");
    let id = job["job_id"].as_str().unwrap().to_string();
    let job = wait_for(Duration::from_secs(60), "the job to finish", || {
        let get = call("GET", format!("{address}/batch/jobs/{id}"), None);
        async move {
            let (_, job) = get.await;
            (job["status"] == "completed").then_some(job)
        }
    })
    .await;
    let r = &job["result"]["results"][0];
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("tool-ran\n"),
        "the tool under $HOME runs: {r}"
    );
    assert!(out.ends_with("end\n"), "{r}");
    assert!(!out.contains(&format!("secret-{tag}")), "{r}");
    assert!(!out.contains(&token), "the token file is hidden: {r}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    let bound = log
        .lines()
        .find(|l| l.contains("tool roots bound read-only"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(bound.contains(root.to_str().unwrap()), "{bound}");
}
