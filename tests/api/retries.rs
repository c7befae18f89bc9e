//! Retries: errors (timeouts, crashed processes) are retried up to the job's
//! `max_attempts` with backoff, ordinary failures never; `POST /batch/jobs/{id}/retry`
//! requeues a finished job's failed items.

use crate::helpers::{spawn_app, TestApp};
use awc::http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// A validation job of one target `f` with this check command and options.
async fn submit(app: &TestApp, command: &str, options: Value) -> String {
    let mut body = json!({"targets": [{"id": "a", "path": "f"}], "check_command": command});
    for (k, v) in options.as_object().unwrap() {
        body[k] = v.clone();
    }
    app.submit("/batch/validation", &body).await
}

async fn only_item(app: &TestApp, id: &str) -> Value {
    app.all_items(id, 10).await.remove(0)
}

#[actix_web::test]
async fn a_timed_out_item_is_retried_and_its_first_error_kept() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    // Hangs (and times out) the first time, passes the second.
    let id = submit(
        &app,
        "sh -c 'if [ -e \"$0.seen\" ]; then exit 0; fi; touch \"$0.seen\"; exec sleep 30'",
        json!({"timeout_seconds": 0.5, "max_attempts": 3, "retry_delay_seconds": 0.2}),
    )
    .await;
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["summary"]["successful"], 1, "{job}");
    let item = only_item(&app, &id).await;
    assert_eq!(item["status"], "succeeded");
    assert_eq!(item["attempts"], 2);
    let errors = item["attempt_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{item}");
    assert!(errors[0].as_str().unwrap().contains("timed out"), "{item}");
}

#[actix_web::test]
async fn an_ordinary_failure_is_never_retried() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let id = submit(&app, "false", json!({"max_attempts": 5})).await;
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["result"]["summary"]["failed"], 1);
    let item = only_item(&app, &id).await;
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["attempt_errors"], json!([]));
}

#[actix_web::test]
async fn errors_stop_being_retried_at_max_attempts() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    // Killed by a signal every time: a crashed process.
    let id = submit(
        &app,
        "sh -c 'kill -9 $$'",
        json!({"max_attempts": 3, "retry_delay_seconds": 0.05, "retry_max_delay_seconds": 0.1}),
    )
    .await;
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["summary"]["failed"], 1);
    let item = only_item(&app, &id).await;
    assert_eq!(item["status"], "failed");
    assert_eq!(item["attempts"], 3);
    assert_eq!(
        item["attempt_errors"].as_array().unwrap().len(),
        2,
        "{item}"
    );
    assert!(
        item["error"].as_str().unwrap().contains("signal 9"),
        "{item}"
    );
}

#[actix_web::test]
async fn bad_retry_options_are_refused_naming_them() {
    let app = spawn_app().await;
    for (options, field) in [
        (json!({"max_attempts": 0}), "max_attempts"),
        (json!({"max_attempts": 51}), "max_attempts"),
        (json!({"max_attempts": "3"}), "max_attempts"),
        (json!({"retry_delay_seconds": 0}), "retry_delay_seconds"),
        (
            json!({"retry_max_delay_seconds": -1}),
            "retry_max_delay_seconds",
        ),
        (
            json!({"retry_delay_seconds": 10, "retry_max_delay_seconds": 5}),
            "retry_max_delay_seconds",
        ),
    ] {
        let mut body = json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true"});
        for (k, v) in options.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, answer) = app.post("/batch/validation", &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{options}: {answer}"
        );
        assert_eq!(answer["field"], field, "{answer}");
    }
    let (_, stats) = app.get("/batch/stats").await;
    assert_eq!(stats["stats"]["total"], 0);
}

#[actix_web::test]
async fn a_finished_jobs_failed_items_can_be_retried() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    app.write_file("g", "x\n");
    let body = json!({
        "targets": [{"id": "ok", "path": "g"}, {"id": "flaky", "path": "f"}],
        // f fails the first time only; g always passes.
        "check_command": "sh -c 'if [ \"$0\" = g ] || [ -e \"$0.seen\" ]; then exit 0; fi; touch \"$0.seen\"; exit 1'",
    });
    let id = app.submit("/batch/validation", &body).await;
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["result"]["summary"]["failed"], 1);

    let (status, answer) = app
        .post(
            &format!("/batch/jobs/{id}/retry"),
            &json!({"status": ["failed"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["requeued"], 1);
    assert!(matches!(
        answer["job"]["status"].as_str(),
        Some("queued" | "running")
    ));
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["summary"]["successful"], 2, "{job}");
    assert_eq!(job["result"]["summary"]["failed"], 0, "{job}");
    let items = app.all_items(&id, 10).await;
    let flaky = items.iter().find(|i| i["id"] == "flaky").unwrap();
    assert_eq!(flaky["status"], "succeeded");
    assert_eq!(flaky["attempt_errors"], json!(["exit code 1"]));

    // Nothing left to retry; bad statuses; unknown jobs.
    let (status, _) = app
        .post(&format!("/batch/jobs/{id}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, answer) = app
        .post(
            &format!("/batch/jobs/{id}/retry"),
            &json!({"status": ["running"]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "status[0]");
    let (status, _) = app
        .post(
            "/batch/jobs/batch_validation-000000000000/retry",
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // A job still running is not retried.
    let slow = json!({"targets": [{"id": "s", "path": "f"}], "check_command": "sh -c 'sleep 5'"});
    let running = app.submit("/batch/validation", &slow).await;
    let (status, _) = app
        .post(&format!("/batch/jobs/{running}/retry"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    app.delete(&format!("/batch/jobs/{running}")).await;
}

#[actix_web::test]
async fn item_timeout_seconds_bounds_any_kind_and_kills_what_the_item_started() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let id = submit(
        &app,
        "sh -c 'sleep 31.4159'",
        json!({"item_timeout_seconds": 0.3, "max_attempts": 2, "retry_delay_seconds": 0.05}),
    )
    .await;
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["result"]["summary"]["failed"], 1);
    let item = only_item(&app, &id).await;
    assert!(
        item["error"]
            .as_str()
            .unwrap()
            .contains("item_timeout_seconds"),
        "{item}"
    );
    assert_eq!(
        item["attempts"], 2,
        "a timeout is an error, retried: {item}"
    );
    crate::helpers::wait_for(LIMIT, "the timed-out commands to be killed", || async {
        crate::helpers::processes_with("31.4159")
            .is_empty()
            .then_some(())
    })
    .await;
    let (status, body) = app
        .post(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true", "item_timeout_seconds": 0}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "item_timeout_seconds");
}

#[actix_web::test]
async fn a_job_past_its_deadline_expires_keeping_its_finished_results() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    app.write_file("g", "x\n");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    // One quick item, then slow ones one at a time: the deadline falls in the middle.
    let body = json!({
        "targets": [{"id": "quick", "path": "g"}, {"id": "slow1", "path": "f"}, {"id": "slow2", "path": "f"}],
        "check_command": "sh -c 'if [ \"$0\" = g ]; then exit 0; fi; exec sleep 31.2718'",
        "parallel": 1,
        "deadline": now + 2.0,
    });
    let id = app.submit("/batch/validation", &body).await;
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["status"], "expired", "{job}");
    assert!(job["error"].as_str().unwrap().contains("deadline"), "{job}");
    let summary = &job["result"]["summary"];
    assert_eq!(summary["successful"], 1, "{job}");
    assert_eq!(summary["cancelled"], 2, "{job}");
    let items = app.all_items(&id, 10).await;
    assert_eq!(items[0]["status"], "succeeded");
    assert!(
        items[1..].iter().all(|i| i["status"] == "cancelled"),
        "{items:?}"
    );
    crate::helpers::wait_for(LIMIT, "the running command to be stopped", || async {
        crate::helpers::processes_with("31.2718")
            .is_empty()
            .then_some(())
    })
    .await;
    let (_, stats) = app.get("/batch/stats").await;
    assert_eq!(stats["stats"]["expired"], 1);
    // Retried, it would expire again at once.
    let (status, body) = app
        .post(
            &format!("/batch/jobs/{id}/retry"),
            &json!({"status": ["cancelled"]}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("deadline"),
        "{body}"
    );
    let (status, body) = app
        .post(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true", "deadline": "soon"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "deadline");
}

#[actix_web::test]
async fn an_item_that_errors_twice_then_succeeds_completes_on_its_third_attempt() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    // Killed by a signal on the first two runs (an error), passes on the third.
    let id = submit(
        &app,
        "sh -c 'n=$(cat \"$0.n\" 2>/dev/null || echo 0); echo $((n+1)) > \"$0.n\"; if [ \"$n\" -ge 2 ]; then exit 0; fi; kill -9 $$'",
        json!({"max_attempts": 3, "retry_delay_seconds": 0.05, "retry_max_delay_seconds": 0.1}),
    )
    .await;
    let job = app.wait_finished(&id, LIMIT).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["summary"]["successful"], 1, "{job}");
    let item = only_item(&app, &id).await;
    assert_eq!(item["status"], "succeeded");
    assert_eq!(item["attempts"], 3);
    let errors = item["attempt_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{item}");
    assert!(
        errors
            .iter()
            .all(|e| e.as_str().unwrap().contains("signal 9")),
        "{item}"
    );
}
