//! Job semantics: idempotency keys, `run_at`, priorities, pausing jobs and kinds.

use crate::helpers::{client, spawn_app, spawn_app_with, AppOptions, TestApp};
use awc::http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

fn quick(n: usize) -> Value {
    let targets: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
        .collect();
    json!({"targets": targets, "check_command": "true"})
}

fn slow(n: usize, seconds: f64) -> Value {
    let targets: Vec<Value> = (0..n)
        .map(|i| json!({"id": format!("s{i}"), "path": "f"}))
        .collect();
    json!({"targets": targets, "check_command": format!("sh -c 'sleep {seconds}'"), "parallel": 1})
}

fn with(mut body: Value, extra: Value) -> Value {
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// POSTs with extra headers; returns status, replay header, body.
async fn post_with_header(
    app: &TestApp,
    path: &str,
    header: (&str, &str),
    body: &Value,
) -> (StatusCode, bool, Value) {
    let mut resp = client()
        .post(format!("{}{path}", app.address))
        .insert_header(("content-type", "application/json"))
        .insert_header(header)
        .send_body(body.to_string())
        .await
        .unwrap();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
    (resp.status(), replayed, body)
}

#[actix_web::test]
async fn an_idempotency_key_returns_the_job_it_created_instead_of_a_duplicate() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let (status, replayed, first) = post_with_header(
        &app,
        "/batch/validation",
        ("Idempotency-Key", "nightly-1"),
        &quick(2),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(!replayed);
    assert_eq!(first["idempotency_key"], "nightly-1");
    let id = first["job_id"].as_str().unwrap();

    // The same key again, as header or as field, even with another body: the same job.
    let (status, replayed, again) = post_with_header(
        &app,
        "/batch/validation",
        ("Idempotency-Key", "nightly-1"),
        &quick(5),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(replayed, "a replay is marked");
    assert_eq!(again["job_id"], id);
    let (status, field) = app
        .post(
            "/batch/validation",
            &with(quick(1), json!({"idempotency_key": "nightly-1"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(field["job_id"], id);
    app.wait_finished(id, LIMIT).await;
    let (_, stats) = app.get("/batch/stats").await;
    assert_eq!(stats["stats"]["total"], 1, "no duplicate was created");

    // The key names a job of another kind: a conflict, nothing stored.
    let (status, _, body) = post_with_header(
        &app,
        "/batch/tests",
        ("Idempotency-Key", "nightly-1"),
        &json!({"modules": [{"id": "m", "path": "f"}], "test_command": "true"}),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(id), "{body}");

    // Header and field that disagree, and keys that are no keys.
    let (status, _, body) = post_with_header(
        &app,
        "/batch/validation",
        ("Idempotency-Key", "a"),
        &with(quick(1), json!({"idempotency_key": "b"})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "idempotency_key");
    for bad in [json!(""), json!(5), json!("x".repeat(256))] {
        let (status, body) = app
            .post(
                "/batch/validation",
                &with(quick(1), json!({"idempotency_key": bad})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["field"], "idempotency_key");
    }
    let (_, stats) = app.get("/batch/stats").await;
    assert_eq!(
        stats["stats"]["total"], 1,
        "refused submissions store nothing"
    );
}

#[actix_web::test]
async fn nothing_of_a_job_starts_before_its_run_at() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let run_at = now + 3.0;
    let id = app
        .submit(
            "/batch/validation",
            &with(quick(3), json!({"run_at": run_at})),
        )
        .await;
    let job = app.job(&id).await;
    assert_eq!(job["status"], "queued");
    assert!(
        (job["run_at"].as_f64().unwrap() - run_at).abs() < 1e-3,
        "{job}"
    );
    // A job without run_at submitted after it runs first.
    let other = app.submit("/batch/validation", &quick(1)).await;
    let other = app.wait_finished(&other, LIMIT).await;
    assert_eq!(
        app.job(&id).await["status"],
        "queued",
        "it waits for run_at"
    );
    assert!(other["completed_at"].as_f64().unwrap() < run_at);

    app.wait_finished(&id, LIMIT).await;
    for item in app.all_items(&id, 100).await {
        let started = item["started_at"].as_f64().unwrap();
        assert!(
            started >= run_at,
            "item started at {started}, before run_at {run_at}"
        );
    }

    // RFC 3339 with an offset is read too; bad times are refused naming the field.
    let (status, job) = app
        .post(
            "/batch/validation",
            &with(quick(1), json!({"run_at": "2020-01-01T01:00:00+01:00"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["run_at"].as_f64().unwrap(), 1_577_836_800.0);
    for bad in [
        json!("tomorrow"),
        json!("2026-13-01T00:00:00Z"),
        json!(-5),
        json!([1]),
    ] {
        let (status, body) = app
            .post("/batch/validation", &with(quick(1), json!({"run_at": bad})))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["field"], "run_at");
    }
}

#[actix_web::test]
async fn higher_priority_jobs_run_first() {
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), 1)].into(),
        },
        |b| b,
    )
    .await;
    app.write_file("f", "x\n");
    // The one slot is busy while both jobs arrive.
    let blocker = app.submit("/batch/validation", &slow(1, 1.5)).await;
    app.wait_job(&blocker, LIMIT, |j| j["status"] == "running")
        .await;
    let low = app
        .submit(
            "/batch/validation",
            &with(quick(3), json!({"priority": -5})),
        )
        .await;
    let high = app
        .submit("/batch/validation", &with(quick(3), json!({"priority": 7})))
        .await;
    assert_eq!(app.job(&high).await["priority"], 7);
    app.wait_finished(&low, LIMIT).await;
    app.wait_finished(&high, LIMIT).await;
    let last_high = app
        .all_items(&high, 100)
        .await
        .iter()
        .map(|i| i["finished_at"].as_f64().unwrap())
        .fold(0.0, f64::max);
    // One slot: items run one after another, so finishing order is running order.
    let first_low = app
        .all_items(&low, 100)
        .await
        .iter()
        .map(|i| i["finished_at"].as_f64().unwrap())
        .fold(f64::MAX, f64::min);
    assert!(
        last_high <= first_low,
        "a low-priority item finished at {first_low}, before the high-priority job's last at {last_high}"
    );
    for bad in [json!(1001), json!(-1001), json!(1.5), json!("high")] {
        let (status, body) = app
            .post(
                "/batch/validation",
                &with(quick(1), json!({"priority": bad})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["field"], "priority");
    }
}

async fn running_items(app: &TestApp, id: &str) -> u64 {
    let (_, page) = app
        .get(&format!("/batch/jobs/{id}/items?status=running"))
        .await;
    page["total"].as_u64().unwrap()
}

#[actix_web::test]
async fn a_paused_job_finishes_its_running_items_and_starts_nothing_until_resumed() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let id = app.submit("/batch/validation", &slow(4, 0.3)).await;
    app.wait_job(&id, LIMIT, |j| {
        j["metadata"]["progress"]["processed"].as_u64() >= Some(1)
    })
    .await;
    let (status, paused) = app
        .post(&format!("/batch/jobs/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    // Pausing twice changes nothing.
    let (status, _) = app
        .post(&format!("/batch/jobs/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);

    crate::helpers::wait_for(LIMIT, "the running item to finish", || async {
        (running_items(&app, &id).await == 0).then_some(())
    })
    .await;
    let before = app.job(&id).await["metadata"]["progress"]["processed"]
        .as_u64()
        .unwrap();
    // The engine keeps working meanwhile: another job of the kind runs to its end.
    let other = app.submit("/batch/validation", &quick(3)).await;
    app.wait_finished(&other, LIMIT).await;
    let job = app.job(&id).await;
    assert_eq!(job["metadata"]["progress"]["processed"], before, "{job}");
    assert_eq!(job["paused"], true);
    assert!(before < 4);
    let (_, queued) = app
        .get(&format!("/batch/jobs/{id}/items?status=queued"))
        .await;
    assert_eq!(queued["total"].as_u64().unwrap(), 4 - before);

    let (status, resumed) = app
        .post(&format!("/batch/jobs/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(resumed["paused"], false);
    let done = app.wait_finished(&id, LIMIT).await;
    assert_eq!(done["status"], "completed");
    assert_eq!(done["result"]["summary"]["successful"], 4);

    // Finished and unknown jobs.
    let (status, _) = app
        .post(&format!("/batch/jobs/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = app
        .post(
            "/batch/jobs/batch_validation-000000000000/resume",
            &json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn a_paused_kind_starts_nothing_until_resumed() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let (status, kind) = app
        .post("/batch/kinds/batch_validation/pause", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{kind}");
    assert_eq!(kind["paused"], true);
    let id = app.submit("/batch/validation", &quick(3)).await;
    // Other kinds run meanwhile.
    let tests = app
        .submit(
            "/batch/tests",
            &json!({"modules": [{"id": "m", "path": "f"}], "test_command": "true"}),
        )
        .await;
    app.wait_finished(&tests, LIMIT).await;
    let job = app.job(&id).await;
    assert_eq!(job["status"], "queued", "{job}");
    let (_, kinds) = app.get("/batch/kinds").await;
    let listed = kinds["kinds"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "batch_validation")
        .unwrap()
        .clone();
    assert_eq!(listed["paused"], true);

    let (status, kind) = app
        .post("/batch/kinds/batch_validation/resume", &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(kind["paused"], false);
    assert_eq!(app.wait_finished(&id, LIMIT).await["status"], "completed");

    let (status, body) = app
        .post("/batch/kinds/no_such_kind/pause", &json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[actix_web::test]
async fn a_job_starts_only_after_the_jobs_it_depends_on_complete() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let first = app.submit("/batch/validation", &slow(1, 0.4)).await;
    let then = app
        .submit(
            "/batch/validation",
            &with(quick(2), json!({"depends_on": [first]})),
        )
        .await;
    assert_eq!(app.job(&then).await["status"], "queued");
    let first_done = app.wait_finished(&first, LIMIT).await;
    let done = app.wait_finished(&then, LIMIT).await;
    assert_eq!(done["status"], "completed");
    let first_end = first_done["completed_at"].as_f64().unwrap();
    for item in app.all_items(&then, 10).await {
        assert!(item["started_at"].as_f64().unwrap() >= first_end, "{item}");
    }
    // Depending on a job already completed: runs at once.
    let after = app
        .submit(
            "/batch/validation",
            &with(quick(1), json!({"depends_on": [first, then]})),
        )
        .await;
    assert_eq!(
        app.wait_finished(&after, LIMIT).await["status"],
        "completed"
    );
}

#[actix_web::test]
async fn a_dependent_of_a_cancelled_job_is_cancelled_unless_it_runs_on_failure() {
    let app = spawn_app().await;
    app.write_file("f", "x\n");
    let first = app.submit("/batch/validation", &slow(1, 30.0)).await;
    let strict = app
        .submit(
            "/batch/validation",
            &with(quick(1), json!({"depends_on": [first]})),
        )
        .await;
    let lenient = app
        .submit(
            "/batch/validation",
            &with(
                quick(1),
                json!({"depends_on": [first], "run_on_failure": true}),
            ),
        )
        .await;
    // A chain: cancelling the first cancels the strict one, which cancels this one.
    let chained = app
        .submit(
            "/batch/validation",
            &with(quick(1), json!({"depends_on": [strict]})),
        )
        .await;
    let (status, _) = app.delete(&format!("/batch/jobs/{first}")).await;
    assert_eq!(status, StatusCode::OK);
    let strict_end = app.wait_finished(&strict, LIMIT).await;
    assert_eq!(strict_end["status"], "cancelled");
    assert!(
        strict_end["error"].as_str().unwrap().contains(&first),
        "{strict_end}"
    );
    assert_eq!(
        app.wait_finished(&chained, LIMIT).await["status"],
        "cancelled"
    );
    let lenient_end = app.wait_finished(&lenient, LIMIT).await;
    assert_eq!(lenient_end["status"], "completed");
    assert_eq!(lenient_end["result"]["summary"]["successful"], 1);
}

#[actix_web::test]
async fn bad_dependencies_are_refused_at_submission() {
    let app = spawn_app().await;
    let known = app.submit("/batch/validation", &quick(1)).await;
    for (deps, field) in [
        (json!(["batch_validation-000000000000"]), "depends_on[0]"),
        (json!([known, "nope"]), "depends_on[1]"),
        (json!("x"), "depends_on"),
        (json!([5]), "depends_on[0]"),
        (json!([""]), "depends_on[0]"),
    ] {
        let (status, body) = app
            .post(
                "/batch/validation",
                &with(quick(1), json!({"depends_on": deps})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{deps}: {body}");
        assert_eq!(body["field"], field, "{body}");
    }
    let (status, body) = app
        .post(
            "/batch/validation",
            &with(
                quick(1),
                json!({"depends_on": [known], "run_on_failure": "yes"}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["field"], "run_on_failure");
    let (_, stats) = app.get("/batch/stats").await;
    assert_eq!(
        stats["stats"]["total"], 1,
        "refused submissions store nothing"
    );
}

#[actix_web::test]
async fn a_concurrency_group_limit_holds_across_jobs_and_kinds() {
    let app = crate::helpers::spawn_app_configured(
        AppOptions::default(),
        Vec::new(),
        batchforge::agent::AgentConfig::default(),
        |config| {
            config.concurrency_groups = [("gpu".to_string(), 2)].into();
        },
        |b| b,
    )
    .await;
    app.write_file("f", "x\n");
    std::fs::create_dir_all(app.workspace.join("running")).unwrap();
    let probe =
        "sh -c 'f=$(mktemp running/item.XXXXXX); ls running | wc -l >> counts; sleep 0.15; rm $f'";
    let targets: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
        .collect();
    let a = app
        .submit(
            "/batch/validation",
            &json!({"targets": targets, "check_command": probe, "parallel": 6, "concurrency_group": "gpu"}),
        )
        .await;
    let b = app
        .submit(
            "/batch/tests",
            &json!({"modules": targets, "test_command": probe, "parallel": 6, "concurrency_group": "gpu"}),
        )
        .await;
    for id in [&a, &b] {
        let job = app.wait_finished(id, LIMIT).await;
        assert_eq!(job["result"]["summary"]["successful"], 6, "{job}");
    }
    let max = crate::helpers::lines(&app.workspace.join("counts"))
        .iter()
        .map(|l| l.trim().parse::<usize>().unwrap())
        .max()
        .unwrap();
    assert!(
        max <= 2,
        "{max} items of group gpu ran at once with a limit of 2"
    );
    assert!(max >= 2, "the group's two slots were used ({max})");

    let (status, body) = app
        .post(
            "/batch/validation",
            &with(quick(1), json!({"concurrency_group": "tpu"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "concurrency_group");
    assert!(body["detail"].as_str().unwrap().contains("gpu"), "{body}");
}
