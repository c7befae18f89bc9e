//! Cancelling a job stops its running processes and is final.

use crate::helpers::*;
use awc::http::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[actix_web::test]
async fn cancelling_a_job_kills_its_running_processes_and_the_job_stays_cancelled() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let marker = "3602.5151";
    let targets: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
        .collect();
    let id = app
        .submit(
            "/batch/validation",
            &json!({
                "targets": targets,
                // A child and a grandchild: both must go.
                "check_command": format!("sh -c 'echo started >> started; sleep {marker} & sleep {marker}'"),
                "parallel": 2
            }),
        )
        .await;
    let started_file = app.workspace.join("started");
    wait_for(Duration::from_secs(20), "two items to start", || async {
        (lines(&started_file).len() >= 2 && processes_with(marker).len() >= 4).then_some(())
    })
    .await;

    let (status, body) = app.delete(&format!("/batch/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"status": "cancelled", "job_id": id}));
    let cancelled_at = Instant::now();
    wait_for(
        Duration::from_secs(5),
        "the cancelled processes to go",
        || async { processes_with(marker).is_empty().then_some(()) },
    )
    .await;
    let took = cancelled_at.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "processes took {took:?} to die"
    );

    let job = app.wait_finished(&id, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["result"]["summary"]["cancelled"], 6);
    let items = app.all_items(&id, 100).await;
    assert!(
        items.iter().all(|i| i["status"] == "cancelled"),
        "{items:?}"
    );
    assert_eq!(
        lines(&started_file).len(),
        2,
        "queued items must never start"
    );

    // Nothing later turns it into a completed job.
    actix_web::rt::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.job(&id).await["status"], "cancelled");
    let (status, body) = app.delete(&format!("/batch/jobs/{id}")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("already cancelled"),
        "{body}"
    );
}

#[actix_web::test]
async fn cancelling_a_queued_job_cancels_every_item_and_other_jobs_go_on() {
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), 1)].into(),
        },
        |b| b,
    )
    .await;
    app.write_file("f", "");
    let blocker = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "b", "path": "f"}], "check_command": "sh -c 'sleep 0.5'"}),
        )
        .await;
    let queued = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "q1", "path": "f"}, {"id": "q2", "path": "f"}], "check_command": "true"}),
        )
        .await;
    let (status, _) = app.delete(&format!("/batch/jobs/{queued}")).await;
    assert_eq!(status, StatusCode::OK);
    let job = app.wait_finished(&queued, Duration::from_secs(10)).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["result"]["summary"]["cancelled"], 2);
    let done = app.wait_finished(&blocker, Duration::from_secs(20)).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"]["summary"]["successful"], 1);
    let (_, stats) = app.get("/batch/stats").await;
    assert_eq!(stats["stats"]["cancelled"], 1);
    assert_eq!(stats["stats"]["completed"], 1);
}
