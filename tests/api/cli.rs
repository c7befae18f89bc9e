//! The CLI client as a child process against a live server.

use crate::helpers::*;
use std::process::Output;

async fn cli(app_address: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
        .args(["--server", app_address])
        .args(args)
        .output()
        .await
        .expect("the CLI runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[actix_web::test]
async fn submit_wait_prints_the_summary_and_exits_non_zero_on_failed_items() {
    let app = spawn_app().await;
    app.write_file("a.txt", "x");
    app.write_file("empty.txt", "");
    let out = cli(
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

    let out = cli(
        &app.address,
        &["submit", "tests", "--command", "true", "a.txt", "--wait"],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("completed: 1 items, 1 succeeded, 0 failed"));

    let out = cli(&app.address, &["--json", "jobs"]).await;
    assert_eq!(out.status.code(), Some(0));
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(page["total"], 2);

    let id = page["jobs"][1]["job_id"].as_str().unwrap().to_string();
    let out = cli(&app.address, &["export", &id]).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).lines().count(), 2);
    let out = cli(&app.address, &["items", &id, "--status", "failed"]).await;
    assert!(
        text(&out.stdout).contains("empty.txt"),
        "{}",
        text(&out.stdout)
    );
}

#[actix_web::test]
async fn the_cli_names_the_url_when_the_server_cannot_be_reached() {
    let out = cli("http://127.0.0.1:9", &["stats"]).await;
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
    let out = cli(&app.address, &["show", "batch_validation-000000000000"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not found"));
}
