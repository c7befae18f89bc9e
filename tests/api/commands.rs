//! Commands run without a shell, confined to the workspace, bounded in time and output.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn one_result(app: &TestApp, body: Value) -> Value {
    let id = app.submit("/batch/validation", &body).await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    job["result"]["results"][0].clone()
}

#[actix_web::test]
async fn the_command_runs_without_a_shell_and_gets_the_path_as_its_own_argument() {
    let app = spawn_app().await;
    app.write_file("dir with space/a b.py", "");
    // A shell would expand `$HOME` and split the path; argv keeps both literal.
    let r = one_result(
        &app,
        json!({"targets": [{"id": "x", "path": "dir with space/a b.py"}], "check_command": "echo '$HOME' ;"}),
    )
    .await;
    assert_eq!(r["status"], "passed", "{r}");
    assert_eq!(r["stdout"], "$HOME ; dir with space/a b.py\n");
}

#[actix_web::test]
async fn paths_outside_the_workspace_fail_only_their_own_item() {
    let app = spawn_app().await;
    app.write_file("ok.py", "");
    std::os::unix::fs::symlink("/etc", app.workspace.join("escape")).unwrap();
    let outside = app.dir.path().join("secret.txt");
    std::fs::write(&outside, "secret").unwrap();
    let id = app
        .submit(
            "/batch/validation",
            &json!({
                "targets": [
                    {"id": "dotdot", "path": "../../etc/passwd"},
                    {"id": "absolute", "path": outside.to_str().unwrap()},
                    {"id": "symlink", "path": "escape/passwd"},
                    {"id": "missing", "path": "nope.py"},
                    {"id": "fine", "path": "ok.py"}
                ],
                "check_command": "cat"
            }),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    let results = job["result"]["results"].as_array().unwrap();
    for r in &results[..3] {
        assert_eq!(r["status"], "error", "{r}");
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains("outside the workspace root"),
            "{r}"
        );
        assert_eq!(r["stdout"], "", "nothing may be read outside the root: {r}");
    }
    // A missing file inside the workspace is the command's business (issue 14): `cat`
    // runs and fails on it, as the original's shell command did.
    assert_eq!(results[3]["status"], "failed", "{}", results[3]);
    assert_eq!(results[3]["exit_code"], 1, "{}", results[3]);
    assert!(results[3]["stderr"].as_str().unwrap().contains("nope.py"));
    assert_eq!(results[4]["status"], "passed");
    assert_eq!(job["result"]["summary"]["failed"], 4);
    assert_eq!(job["result"]["summary"]["successful"], 1);
}

#[actix_web::test]
async fn a_command_past_its_timeout_is_killed_with_its_process_group() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let marker = "3601.4242";
    let started = Instant::now();
    let r = one_result(
        &app,
        json!({
            "targets": [{"id": "slow", "path": "f"}],
            "check_command": format!("sh -c 'sleep {marker} & sleep {marker}'"),
            "timeout_seconds": 0.5
        }),
    )
    .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(r["status"], "error", "{r}");
    assert!(r["error"].as_str().unwrap().contains("timed out"), "{r}");
    wait_for(
        Duration::from_secs(5),
        "the timed-out processes to go",
        || async { processes_with(marker).is_empty().then_some(()) },
    )
    .await;
}

#[actix_web::test]
async fn output_past_the_cap_is_cut_and_flagged() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let r = one_result(
        &app,
        json!({
            "targets": [{"id": "loud", "path": "f"}],
            "check_command": "sh -c 'head -c 300000 /dev/zero | tr \"\\\\0\" x; echo err >&2'",
            "max_output_bytes": 1000
        }),
    )
    .await;
    assert_eq!(r["status"], "passed", "{r}");
    assert_eq!(r["stdout"].as_str().unwrap().len(), 1000);
    assert!(r["stdout"].as_str().unwrap().chars().all(|c| c == 'x'));
    assert_eq!(r["stderr"], "err\n");
    assert_eq!(r["truncated"], true);
}

#[actix_web::test]
async fn a_file_named_like_an_option_is_passed_as_a_path() {
    let app = spawn_app().await;
    app.write_file("-n", "not an option\n");
    let r = one_result(
        &app,
        json!({"targets": [{"id": "dash", "path": "-n"}], "check_command": "cat"}),
    )
    .await;
    assert_eq!(r["status"], "passed", "{r}");
    assert_eq!(r["stdout"], "not an option\n");
    assert_eq!(r["path"], "-n");
}

#[actix_web::test]
async fn output_read_before_an_escaped_descendant_holds_the_pipe_is_kept() {
    // Without a sandbox: under bwrap a descendant cannot escape, it dies with the PID
    // namespace (tests/api/sandbox.rs).
    let app = spawn_app_configured(
        AppOptions::default(),
        Vec::new(),
        Default::default(),
        |c| c.sandbox.mode = batchforge::sandbox::SandboxMode::None,
        |b| b,
    )
    .await;
    app.write_file("f", "");
    let marker = "3605.1717";
    let r = one_result(
        &app,
        json!({"targets": [{"id": "x", "path": "f"}], "check_command": format!("sh -c 'echo hi; setsid sleep {marker} & sleep 0.3'")}),
    )
    .await;
    for pid in processes_with(marker) {
        // SAFETY: killing the test's own escaped process.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    assert_eq!(r["status"], "passed", "{r}");
    assert_eq!(r["stdout"], "hi\n");
    assert_eq!(r["truncated"], true, "output may be incomplete: {r}");
}
