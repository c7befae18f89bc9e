//! The CLI client as a child process against a live server.

use crate::helpers::*;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[actix_web::test]
async fn submit_wait_prints_the_summary_and_exits_non_zero_on_failed_items() {
    let app = spawn_app().await;
    app.write_file("a.txt", "x");
    app.write_file("empty.txt", "");
    let out = run_cli(
        &app.address,
        &[
            "submit",
            "validation",
            "--command",
            "test -s",
            "a.txt",
            "empty.txt",
            "--wait",
        ],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(
        stdout.contains("completed: 2 items, 1 succeeded, 1 failed"),
        "{stdout}"
    );

    let out = run_cli(
        &app.address,
        &["submit", "tests", "--command", "true", "a.txt", "--wait"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("completed: 1 items, 1 succeeded, 0 failed"));

    let out = run_cli(&app.address, &["--json", "jobs"]).await;
    assert_eq!(out.status.code(), Some(0));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["total"], 2);

    let id = page["jobs"][1]["job_id"].as_str().unwrap().to_string();
    let out = run_cli(&app.address, &["export", &id]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().count(), 2);
    let out = run_cli(&app.address, &["items", &id, "--status", "failed"]).await;
    assert!(
        text(&out.stdout).contains("empty.txt"),
        "{}",
        text(&out.stdout)
    );
}

#[actix_web::test]
async fn the_cli_names_the_url_when_the_server_cannot_be_reached() {
    let out = run_cli("http://127.0.0.1:9", &["stats"]).await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("cannot reach http://127.0.0.1:9/batch/stats"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[actix_web::test]
async fn the_cli_reports_an_unknown_job_with_the_servers_detail() {
    let app = spawn_app().await;
    let out = run_cli(&app.address, &["show", "batch_validation-000000000000"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not found"));
}

#[actix_web::test]
async fn the_cli_sets_job_semantics_and_pauses_resumes_and_retries_jobs() {
    let app = spawn_app().await;
    app.write_file("a.txt", "x");
    // Fails once (exit 1: an ordinary failure), so a manual retry has something to do.
    let flaky = "sh -c 'if [ -e \"$0.seen\" ]; then exit 0; fi; touch \"$0.seen\"; exit 1'";
    let out = run_cli(
        &app.address,
        &[
            "--json",
            "submit",
            "validation",
            "a.txt",
            "--command",
            flaky,
            "--priority",
            "-3",
            "--max-attempts",
            "2",
            "--idempotency-key",
            "cli-1",
            "--wait",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let jobs = app.get("/batch/jobs").await.1;
    let job = &jobs["jobs"][0];
    let id = job["job_id"].as_str().unwrap().to_string();
    assert_eq!(job["priority"], -3);
    assert_eq!(job["idempotency_key"], "cli-1");
    assert_eq!(job["options"]["max_attempts"], 2);

    let out = run_cli(&app.address, &["retry", &id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 items requeued"),
        "{}",
        text(&out.stdout)
    );
    let done = app
        .wait_finished(&id, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(done["result"]["summary"]["successful"], 1, "{done}");

    // A job that waits for a slow one (so it cannot finish meanwhile), paused and resumed
    // from the CLI; cancelling the slow one lets it run, as it runs on failure.
    let out = run_cli(
        &app.address,
        &[
            "submit",
            "validation",
            "a.txt",
            "--command",
            "sh -c 'sleep 30'",
        ],
    )
    .await;
    let slow = text(&out.stdout).trim().to_string();
    let out = run_cli(
        &app.address,
        &[
            "submit",
            "tests",
            "a.txt",
            "--command",
            "true",
            "--depends-on",
            &slow,
            "--run-on-failure",
            "--run-at",
            "0",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let second = text(&out.stdout).trim().to_string();
    let out = run_cli(&app.address, &["pause", &second]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("paused"),
        "{}",
        text(&out.stdout)
    );
    let out = run_cli(&app.address, &["resume", &second]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("resumed"));
    let out = run_cli(&app.address, &["cancel", &slow]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let done = app
        .wait_finished(&second, std::time::Duration::from_secs(60))
        .await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["options"]["depends_on"], serde_json::json!([slow]));

    let out = run_cli(&app.address, &["kinds"]).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("batch_validation"));
    let out = run_cli(&app.address, &["retry", "batch_validation-000000000000"]).await;
    assert_eq!(out.status.code(), Some(2));
}
