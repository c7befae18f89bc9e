//! Retention: finished jobs are deleted some time after they finished; open ones never.

use crate::helpers::{spawn_app_configured, wait_for, AppOptions, TestApp, TestDb};
use awc::http::StatusCode;
use batchforge::model::{JobSchedule, NewItem, NewJob};
use batchforge::store::{self, retention::PRUNE_MAX_ITEMS};
use batchforge::store::{DatabaseUrl, Store};
use batchforge::EngineConfig;
use serde_json::json;
use std::time::Duration;

/// An app whose finished jobs are deleted 1 s after they finished, looked for every 100 ms.
async fn spawn_fast_retention() -> TestApp {
    spawn_app_configured(
        AppOptions::default(),
        Vec::new(),
        Default::default(),
        |c: &mut EngineConfig| {
            c.retention = Some(Duration::from_secs(1));
            c.retention_interval = Duration::from_millis(100);
        },
        |b| b,
    )
    .await
}

async fn wait_gone(app: &TestApp, id: &str) {
    wait_for(
        Duration::from_secs(15),
        &format!("job {id} to be pruned"),
        || {
            let path = format!("/batch/jobs/{id}");
            async move {
                let (status, _) = app.get(&path).await;
                (status == StatusCode::NOT_FOUND).then_some(())
            }
        },
    )
    .await
}

fn open_store(app: &TestApp) -> Store {
    Store::open(&DatabaseUrl::parse(&app.db.url).unwrap()).unwrap()
}

async fn stored_items(store: &Store, id: &str) -> u64 {
    let id = id.to_string();
    store
        .read(move |c| Ok(store::items::list_items(c, &id, None, 1, 0)?.1))
        .await
        .unwrap()
}

#[actix_web::test]
async fn finished_jobs_are_pruned_with_their_items_after_the_retention() {
    let app = spawn_fast_retention().await;
    app.write_file("full.txt", "x");
    app.write_file("empty.txt", "");
    let completed = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "full.txt"}, {"id": "b", "path": "empty.txt"}],
                    "check_command": "test -s"}),
        )
        .await;
    let cancelled = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "full.txt"}],
                    "check_command": "test -s", "run_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    let (status, _) = app.delete(&format!("/batch/jobs/{cancelled}")).await;
    assert_eq!(status, StatusCode::OK);
    let job = app.wait_finished(&completed, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "completed");
    let store = open_store(&app);
    assert_eq!(stored_items(&store, &completed).await, 2);

    wait_gone(&app, &completed).await;
    wait_gone(&app, &cancelled).await;
    assert_eq!(stored_items(&store, &completed).await, 0);
    assert_eq!(stored_items(&store, &cancelled).await, 0);
    let (status, _) = app.get(&format!("/batch/jobs/{completed}/items")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/batch/jobs").await;
    assert_eq!(list["total"], 0, "{list}");
}

#[actix_web::test]
async fn running_and_queued_jobs_are_never_pruned() {
    let app = spawn_fast_retention().await;
    app.write_file("f", "x");
    // Running: one item sleeping, one queued behind it (parallel 1).
    let running = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}, {"id": "b", "path": "f"}],
                    "check_command": "sh -c 'sleep 5'", "parallel": 1}),
        )
        .await;
    // Queued until 2099.
    let queued = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "test -s",
                    "run_at": "2099-01-01T00:00:00Z"}),
        )
        .await;
    app.wait_job(&running, Duration::from_secs(10), |j| {
        j["status"] == "running"
    })
    .await;
    // A job that finishes now and is pruned a second later: retention has run meanwhile.
    let quick = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "test -s"}),
        )
        .await;
    app.wait_finished(&quick, Duration::from_secs(20)).await;
    wait_gone(&app, &quick).await;

    assert_eq!(app.job(&running).await["status"], "running");
    assert_eq!(app.job(&queued).await["status"], "queued");
    let store = open_store(&app);
    assert_eq!(stored_items(&store, &running).await, 2);
    assert_eq!(stored_items(&store, &queued).await, 1);
    let (status, _) = app.delete(&format!("/batch/jobs/{running}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn an_idempotency_key_is_reusable_once_its_job_is_pruned() {
    let app = spawn_fast_retention().await;
    app.write_file("f", "x");
    let body = json!({"targets": [{"id": "a", "path": "f"}], "check_command": "test -s",
                      "idempotency_key": "nightly-1"});
    let first = app.submit("/batch/validation", &body).await;
    app.wait_finished(&first, Duration::from_secs(20)).await;
    wait_gone(&app, &first).await;
    let second = app.submit("/batch/validation", &body).await;
    assert_ne!(second, first, "a new job, not a replay of the pruned one");
    let job = app.wait_finished(&second, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "completed");
}

fn job_of(n: usize, callback_url: Option<&str>) -> NewJob {
    let mut spec = json!({"check_command": "test -s"});
    if let Some(url) = callback_url {
        spec["callback_url"] = json!(url);
    }
    NewJob {
        kind: "batch_validation".into(),
        spec,
        parallel: 1,
        metadata: json!({}),
        items: (0..n)
            .map(|i| NewItem::new(format!("k{i}"), json!({"id": i, "path": "f"})))
            .collect(),
        schedule: JobSchedule::default(),
    }
}

#[actix_web::test]
async fn retention_prunes_in_small_transactions_and_spares_open_jobs_and_pending_webhooks() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "p.db");
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    let big = PRUNE_MAX_ITEMS as usize * 2 + 10;
    store
        .write_blocking(|c| {
            store::jobs::insert_job(c, "big", &job_of(big, None), 100.0)?;
            store::job_control::fail_job(c, "big", "stop", 110.0)?;
            for i in 0..12 {
                let id = format!("small{i:02}");
                store::jobs::insert_job(c, &id, &job_of(3, None), 100.0)?;
                store::job_control::fail_job(c, &id, "stop", 120.0 + i as f64)?;
            }
            store::jobs::insert_job(c, "open", &job_of(3, None), 100.0)?;
            store::jobs::insert_job(c, "hooked", &job_of(1, Some("http://127.0.0.1:9/h")), 100.0)?;
            store::job_control::fail_job(c, "hooked", "stop", 105.0)?;
            store::jobs::insert_job(c, "recent", &job_of(1, None), 100.0)?;
            store::job_control::fail_job(c, "recent", "stop", 500.0)
        })
        .unwrap();
    let prune = |max_jobs| {
        store.write_blocking(move |c| store::retention::prune_finished(c, 200.0, max_jobs))
    };
    let count = |id: &'static str| {
        store
            .write_blocking(move |c| Ok(store::items::list_items(c, id, None, 1, 0)?.1))
            .unwrap()
    };
    let exists = |id: &'static str| {
        store
            .write_blocking(move |c| Ok(store::jobs::get_job(c, id)?.is_some()))
            .unwrap()
    };

    // The oldest first: the big job loses its items over three calls, its row last.
    let p = prune(10).unwrap();
    assert_eq!((p.jobs, p.items, p.more), (0, PRUNE_MAX_ITEMS as u64, true));
    assert!(exists("big"));
    assert_eq!(count("big"), big as u64 - PRUNE_MAX_ITEMS as u64);
    let p = prune(10).unwrap();
    assert_eq!((p.jobs, p.items, p.more), (0, PRUNE_MAX_ITEMS as u64, true));
    let p = prune(10).unwrap();
    assert_eq!((p.jobs, p.items, p.more), (10, 10 + 9 * 3, true));
    assert!(!exists("big"));
    assert_eq!(count("big"), 0);
    let p = prune(10).unwrap();
    assert_eq!((p.jobs, p.items, p.more), (3, 9, false));
    assert_eq!(prune(10).unwrap(), store::retention::Pruned::default());

    // Spared: the open job, the job whose webhook is pending, the recent one.
    assert!(exists("open") && exists("hooked") && exists("recent"));
    assert_eq!(count("open"), 3);
    // Once its webhook settles, the hooked job goes too, delivery and all.
    let d = store
        .write_blocking(|c| store::outbox::webhook_delivery(c, "hooked"))
        .unwrap()
        .unwrap();
    store
        .write_blocking(move |c| {
            store::outbox::record_webhook_attempt(
                c,
                d.id,
                d.next_attempt_at.unwrap(),
                &store::outbox::WebhookAttempt::GaveUp {
                    error: "unreachable".into(),
                },
                300.0,
            )
        })
        .unwrap();
    let p = prune(10).unwrap();
    assert_eq!((p.jobs, p.items), (1, 1));
    assert!(!exists("hooked"));
    assert!(store
        .write_blocking(|c| store::outbox::webhook_delivery(c, "hooked"))
        .unwrap()
        .is_none());
    assert!(exists("open") && exists("recent"));
}

#[actix_web::test]
async fn retention_prunes_expired_jobs_but_spares_a_dependency_of_an_open_job() {
    use diesel::RunQueryDsl;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "d.db");
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    let depending = |deps: &[&str]| {
        let mut job = job_of(1, None);
        job.spec["depends_on"] = json!(deps);
        job
    };
    store
        .write_blocking(move |c| {
            store::jobs::insert_job(c, "expired", &job_of(2, None), 100.0)?;
            store::job_control::fail_job(c, "expired", "deadline", 110.0)?;
            diesel::sql_query("UPDATE jobs SET status = 'expired' WHERE id = 'expired'")
                .execute(c)?;
            // Named by an open job: kept while that job may still look it up.
            store::jobs::insert_job(c, "needed", &job_of(1, None), 100.0)?;
            store::job_control::fail_job(c, "needed", "stop", 110.0)?;
            store::jobs::insert_job(c, "waiter", &depending(&["other", "needed"]), 100.0)?;
            // Named only by a finished job: free to go.
            store::jobs::insert_job(c, "unneeded", &job_of(1, None), 100.0)?;
            store::job_control::fail_job(c, "unneeded", "stop", 110.0)?;
            store::jobs::insert_job(c, "done_waiter", &depending(&["unneeded"]), 100.0)?;
            store::job_control::fail_job(c, "done_waiter", "stop", 500.0)?;
            Ok(())
        })
        .unwrap();
    let p = store
        .write_blocking(|c| store::retention::prune_finished(c, 200.0, 10))
        .unwrap();
    assert_eq!((p.jobs, p.items, p.more), (2, 3, false), "{p:?}");
    let exists = |id: &'static str| {
        store
            .write_blocking(move |c| Ok(store::jobs::get_job(c, id)?.is_some()))
            .unwrap()
    };
    assert!(!exists("expired"), "an expired job was kept");
    assert!(!exists("unneeded"));
    assert!(exists("needed"), "a dependency of an open job was pruned");
    assert!(exists("waiter") && exists("done_waiter"));
    // Once the waiter is finished, its dependency goes too.
    store
        .write_blocking(|c| store::job_control::fail_job(c, "waiter", "stop", 150.0))
        .unwrap();
    let p = store
        .write_blocking(|c| store::retention::prune_finished(c, 200.0, 10))
        .unwrap();
    assert_eq!(p.jobs, 2, "{p:?}");
    assert!(!exists("needed") && !exists("waiter"));
}
