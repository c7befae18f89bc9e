//! Cron schedules: a job per tick with `metadata.schedule_id`; exactly one job per tick
//! with two engines on one database and across restarts; the missed-tick policy; pause,
//! resume and delete; bad input refused naming its field, with nothing stored.

use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::processors::noop::Noop;
use batchforge::{Application, Engine, EngineConfig, ServeConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn every_second(job: Value) -> Value {
    json!({"cron": "* * * * * *", "job": job})
}

fn noop_job() -> Value {
    json!({"type": "noop", "items": [{"id": 1}, {"id": 2}], "metadata": {"team": "ops"}})
}

/// One engine with its HTTP server on the database in `dir`, stoppable without signals.
struct Node {
    address: String,
    engine: Engine,
    server: actix_web::dev::ServerHandle,
}

async fn start_node(dir: &Path) -> Node {
    let workspace = dir.join("ws");
    std::fs::create_dir_all(&workspace).unwrap();
    let config = ServeConfig {
        engine: EngineConfig {
            database_url: database_url(dir, "jobs.db"),
            workspace,
            mcp: batchforge::mcp::McpConfig {
                server_binary: Some(env!("CARGO_BIN_EXE_batchforge").into()),
                ..Default::default()
            },
            ..Default::default()
        },
        bind: "127.0.0.1:0".into(),
        shutdown_grace: Duration::from_secs(1),
        http_workers: Some(1),
    };
    let app = Application::build_with(config, |b| b.processor(Noop))
        .await
        .expect("engine starts");
    let node = Node {
        address: format!("http://127.0.0.1:{}", app.port()),
        engine: app.engine().clone(),
        server: app.server_handle(),
    };
    actix_web::rt::spawn(app.run_until_stopped());
    node
}

impl Node {
    async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string().into_bytes());
        send(
            &client(),
            method,
            &format!("{}{path}", self.address),
            body.as_deref(),
        )
        .await
    }

    async fn stop(self) {
        self.engine.shutdown(Duration::from_millis(200)).await;
        self.server.stop(true).await;
    }
}

/// The schedule's jobs by tick (`metadata.scheduled_for`), each checked for its key and
/// metadata; panics on two jobs for one tick.
async fn jobs_by_tick(address: &str, schedule_id: &str) -> BTreeMap<i64, Value> {
    let (status, page) = send(
        &client(),
        "GET",
        &format!("{address}/batch/jobs?limit=1000"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut by_tick = BTreeMap::new();
    for job in page["jobs"].as_array().unwrap() {
        if job["metadata"]["schedule_id"] != schedule_id {
            continue;
        }
        let tick = job["metadata"]["scheduled_for"]
            .as_i64()
            .unwrap_or_else(|| panic!("no scheduled_for: {job}"));
        assert_eq!(
            job["idempotency_key"],
            format!("schedule:{schedule_id}:{tick}"),
            "{job}"
        );
        if let Some(other) = by_tick.insert(tick, job.clone()) {
            panic!("two jobs for tick {tick}: {other} and {job}");
        }
    }
    by_tick
}

async fn wait_ticks(
    address: &str,
    schedule_id: &str,
    what: &str,
    done: impl Fn(&BTreeMap<i64, Value>) -> bool,
) -> BTreeMap<i64, Value> {
    wait_for(Duration::from_secs(10), what, || async {
        let jobs = jobs_by_tick(address, schedule_id).await;
        done(&jobs).then_some(jobs)
    })
    .await
}

/// Waits until the wall clock passes `t`, polling (the scheduler works meanwhile).
async fn wait_until(t: f64) {
    wait_for(Duration::from_secs(10), "the clock", || async {
        (unix_now() > t).then_some(())
    })
    .await
}

#[actix_web::test]
async fn a_schedule_creates_one_job_per_tick_carrying_its_id() {
    let app = spawn_app_with(AppOptions::default(), |b| b.processor(Noop)).await;
    let before = unix_now();
    let (status, created) = app
        .post(
            "/batch/schedules",
            &json!({"name": "heartbeat", "cron": "* * * * * *", "timezone": "Europe/Berlin",
                    "job": noop_job()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("sched-"), "{created}");
    assert_eq!(created["name"], "heartbeat");
    assert_eq!(created["cron"], "* * * * * *");
    assert_eq!(created["timezone"], "Europe/Berlin");
    assert_eq!(created["job"], noop_job());
    assert_eq!(created["paused"], false);
    assert!(created["last_run_at"].is_null() && created["last_job_id"].is_null());
    let next = created["next_run_at"].as_f64().unwrap();
    assert!(next > before && next <= before + 2.0, "{created}");

    let jobs = wait_ticks(&app.address, &id, "three ticks", |j| j.len() >= 3).await;
    for (tick, job) in &jobs {
        assert!(*tick as f64 >= next, "a tick before the first one: {job}");
        assert_eq!(job["type"], "noop");
        assert_eq!(
            job["metadata"]["team"], "ops",
            "the template's metadata is kept"
        );
        assert!(job["run_at"].is_null());
    }
    let first = jobs.values().next().unwrap()["job_id"].as_str().unwrap();
    let done = app.wait_finished(first, Duration::from_secs(10)).await;
    assert_eq!(done["status"], "completed", "{done}");

    let (status, one) = app.get(&format!("/batch/schedules/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let last_run = one["last_run_at"].as_f64().unwrap();
    assert!(last_run >= *jobs.keys().last().unwrap() as f64, "{one}");
    assert!(one["next_run_at"].as_f64().unwrap() > last_run, "{one}");
    assert!(
        one["last_job_id"].is_string() && one["last_error"].is_null(),
        "{one}"
    );
    let (status, list) = app.get("/batch/schedules").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 1);
    assert_eq!(list["schedules"][0]["id"], id.as_str());

    // The same name and definition again: the existing schedule (200); another one: 409.
    let (status, again) = app
        .post(
            "/batch/schedules",
            &json!({"name": "heartbeat", "cron": "* * * * * *", "timezone": "Europe/Berlin",
                    "job": noop_job()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], id.as_str());
    let (status, conflict) = app
        .post(
            "/batch/schedules",
            &json!({"name": "heartbeat", "cron": "*/2 * * * * *", "job": noop_job()}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(app.get("/batch/schedules").await.1["total"], 1);
}

#[actix_web::test]
async fn two_engines_on_one_database_create_exactly_one_job_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    let _db = TestDb::create(dir.path(), "jobs.db");
    let a = start_node(dir.path()).await;
    let b = start_node(dir.path()).await;
    let (status, created) = a
        .call("POST", "/batch/schedules", Some(&every_second(noop_job())))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // Both nodes see it.
    let (status, seen) = b.call("GET", &format!("/batch/schedules/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{seen}");

    let jobs = wait_ticks(&a.address, &id, "five ticks", |j| j.len() >= 5).await;
    a.stop().await;
    b.stop().await;
    // Unique keys were checked while reading; the ticks are consecutive: none lost.
    let ticks: Vec<i64> = jobs.keys().copied().collect();
    assert_eq!(
        ticks,
        (ticks[0]..=*ticks.last().unwrap()).collect::<Vec<_>>(),
        "consecutive ticks"
    );
    let job_ids: BTreeSet<&str> = jobs
        .values()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(job_ids.len(), jobs.len());
}

/// Sets columns of a schedule directly in the database, as a crash or a long stop leaves
/// them.
fn rewind(dir: &Path, sql: &str) {
    use diesel::RunQueryDsl;
    let url = batchforge::store::DatabaseUrl::parse(&database_url(dir, "jobs.db")).unwrap();
    let store = batchforge::store::Store::open(&url).unwrap();
    let sql = sql.to_string();
    store
        .write_blocking(move |conn| Ok(diesel::sql_query(sql).execute(conn)?))
        .unwrap();
}

async fn schedule(node: &Node, id: &str) -> Value {
    let (status, s) = node
        .call("GET", &format!("/batch/schedules/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{s}");
    s
}

/// Waits until the schedule's next tick is after `t`.
async fn wait_advanced(node: &Node, id: &str, t: f64) -> Value {
    wait_for(
        Duration::from_secs(10),
        "the schedule to advance",
        || async {
            let s = schedule(node, id).await;
            (s["next_run_at"].as_f64().unwrap() > t).then_some(s)
        },
    )
    .await
}

#[actix_web::test]
async fn restarts_neither_duplicate_a_tick_nor_replay_every_missed_one() {
    let dir = tempfile::tempdir().unwrap();
    let _db = TestDb::create(dir.path(), "jobs.db");
    let a = start_node(dir.path()).await;
    let mut ids = Vec::new();
    for cron in ["0 3 * * *", "0 4 * * *", "* * * * * *"] {
        let (status, s) = a
            .call(
                "POST",
                "/batch/schedules",
                Some(&json!({"cron": cron, "job": noop_job()})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{s}");
        ids.push(s["id"].as_str().unwrap().to_string());
    }
    let (daily3, daily4, secondly) = (&ids[0], &ids[1], &ids[2]);
    let before = wait_ticks(&a.address, secondly, "two ticks", |j| j.len() >= 2).await;
    a.stop().await;

    // The last tick of 03:00 and of 04:00 UTC, and the same three days earlier.
    let now = unix_now() as i64;
    let latest = |hour: i64| {
        let t = now - now.rem_euclid(86_400) + hour * 3600;
        if t > now {
            t - 86_400
        } else {
            t
        }
    };
    let (t3, t4) = (latest(3), latest(4));
    // daily3 is due now; daily4 missed four ticks (three days ago … today).
    rewind(
        dir.path(),
        &format!("UPDATE schedules SET next_run_at = {t3} WHERE id = '{daily3}'"),
    );
    rewind(
        dir.path(),
        &format!(
            "UPDATE schedules SET next_run_at = {} WHERE id = '{daily4}'",
            t4 - 3 * 86_400
        ),
    );
    let b = start_node(dir.path()).await;
    let s3 = wait_advanced(&b, daily3, now as f64).await;
    let s4 = wait_advanced(&b, daily4, now as f64).await;
    assert_eq!(s3["last_run_at"], json!(t3 as f64), "{s3}");
    assert_eq!(s3["next_run_at"], json!((t3 + 86_400) as f64), "{s3}");
    // Only the latest missed tick ran; the older ones were skipped.
    assert_eq!(s4["last_run_at"], json!(t4 as f64), "{s4}");
    assert_eq!(s4["next_run_at"], json!((t4 + 86_400) as f64), "{s4}");
    let jobs4 = jobs_by_tick(&b.address, daily4).await;
    assert_eq!(jobs4.keys().copied().collect::<Vec<_>>(), vec![t4]);
    let jobs3 = jobs_by_tick(&b.address, daily3).await;
    assert_eq!(jobs3.keys().copied().collect::<Vec<_>>(), vec![t3]);
    let job3 = jobs3[&t3]["job_id"].clone();
    assert_eq!(s3["last_job_id"], job3);
    // The every-second schedule went on without repeating a tick (checked while reading).
    let after = wait_ticks(&b.address, secondly, "ticks after the restart", |j| {
        j.len() >= before.len() + 2
    })
    .await;
    assert!(before.keys().all(|t| after.contains_key(t)));
    b.stop().await;

    // A crash between a tick's submission and its advance: the tick is due again at the
    // next start, and finds its job instead of creating another.
    rewind(
        dir.path(),
        &format!(
            "UPDATE schedules SET next_run_at = {t3}, last_job_id = NULL WHERE id = '{daily3}'"
        ),
    );
    let c = start_node(dir.path()).await;
    let s3 = wait_advanced(&c, daily3, now as f64).await;
    assert_eq!(
        s3["last_job_id"], job3,
        "the tick's job was found, not made again"
    );
    let jobs3 = jobs_by_tick(&c.address, daily3).await;
    assert_eq!(jobs3.len(), 1, "{jobs3:?}");
    c.stop().await;
}

#[actix_web::test]
async fn pause_stops_ticks_resume_restarts_them_and_delete_removes_the_schedule() {
    let app = spawn_app_with(AppOptions::default(), |b| b.processor(Noop)).await;
    let (_, created) = app
        .post("/batch/schedules", &every_second(noop_job()))
        .await;
    let id = created["id"].as_str().unwrap().to_string();
    wait_ticks(&app.address, &id, "a tick", |j| !j.is_empty()).await;

    let (status, paused) = app
        .post(&format!("/batch/schedules/{id}/pause"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    assert_eq!(paused["paused"], true);
    let paused_at = paused["paused_at"].as_f64().unwrap();
    // Pausing again changes nothing.
    let (_, again) = app
        .post(&format!("/batch/schedules/{id}/pause"), &json!({}))
        .await;
    assert_eq!(again["paused_at"], json!(paused_at));
    // Two whole ticks' time later, no tick after the pause has a job (a tick being fired
    // as the pause came in may still finish).
    wait_until(paused_at + 2.5).await;
    let jobs = jobs_by_tick(&app.address, &id).await;
    assert!(
        jobs.keys().all(|t| (*t as f64) <= paused_at),
        "a tick after the pause ran: {:?}",
        jobs.keys()
    );

    let (status, resumed) = app
        .post(&format!("/batch/schedules/{id}/resume"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["paused"], false);
    assert!(resumed["paused_at"].is_null());
    let resumed_at = unix_now();
    assert!(
        resumed["next_run_at"].as_f64().unwrap() > paused_at + 2.0,
        "{resumed}"
    );
    let jobs = wait_ticks(&app.address, &id, "a tick after resume", |j| {
        j.keys().any(|t| *t as f64 > resumed_at - 1.0)
    })
    .await;
    // The ticks of the pause were not made up for.
    assert!(
        !jobs
            .keys()
            .any(|t| (*t as f64) > paused_at && (*t as f64) < resumed_at - 1.0),
        "{:?}",
        jobs.keys()
    );

    let (status, deleted) = app.delete(&format!("/batch/schedules/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    assert_eq!(deleted, json!({"id": id, "deleted": true}));
    let deleted_at = unix_now();
    let (status, _) = app.get(&format!("/batch/schedules/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.delete(&format!("/batch/schedules/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for action in ["pause", "resume"] {
        let (status, _) = app
            .post(&format!("/batch/schedules/{id}/{action}"), &json!({}))
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{action}");
    }
    assert_eq!(app.get("/batch/schedules").await.1["total"], 0);
    // Its jobs stay; no tick after the deletion makes one.
    wait_until(deleted_at + 1.5).await;
    let jobs = jobs_by_tick(&app.address, &id).await;
    assert!(!jobs.is_empty());
    assert!(
        jobs.keys().all(|t| (*t as f64) <= deleted_at),
        "{:?}",
        jobs.keys()
    );
}

#[actix_web::test]
async fn bad_schedules_are_refused_naming_the_field_and_nothing_is_stored() {
    let app = spawn_app_with(AppOptions::default(), |b| b.processor(Noop)).await;
    let validation = |extra: Value| {
        let mut job = json!({"type": "batch_validation", "items": [{"id": "a", "path": "a"}],
                             "check_command": "true"});
        for (k, v) in extra.as_object().unwrap() {
            job[k] = v.clone();
        }
        job
    };
    let cases = [
        (json!({"cron": "not a cron", "job": noop_job()}), "cron"),
        (json!({"cron": "* * *", "job": noop_job()}), "cron"),
        (json!({"cron": "61 * * * *", "job": noop_job()}), "cron"),
        (json!({"cron": "0 0 30 2 *", "job": noop_job()}), "cron"),
        (json!({"cron": "* * * * * * *", "job": noop_job()}), "cron"),
        (json!({"job": noop_job()}), "cron"),
        (
            json!({"cron": "* * * * *", "timezone": "Mars/Olympus", "job": noop_job()}),
            "timezone",
        ),
        (
            json!({"cron": "* * * * *", "timezone": "", "job": noop_job()}),
            "timezone",
        ),
        (json!({"cron": "* * * * *"}), "job"),
        (json!({"cron": "* * * * *", "job": [1]}), "job"),
        (
            json!({"cron": "* * * * *", "job": {"type": "nope", "items": [1]}}),
            "job.type",
        ),
        (
            json!({"cron": "* * * * *", "job": {"items": [1]}}),
            "job.type",
        ),
        (
            json!({"cron": "* * * * *", "job": {"type": "noop", "items": []}}),
            "job.items",
        ),
        (
            json!({"cron": "* * * * *", "job": {"type": "noop", "items": [1], "parallel": 0}}),
            "job.parallel",
        ),
        (
            json!({"cron": "* * * * *", "job": validation(json!({"check_command": "no-such-program-x"}))}),
            "job.check_command",
        ),
        (
            json!({"cron": "* * * * *", "job": validation(json!({"timeout_seconds": -1}))}),
            "job.timeout_seconds",
        ),
        (
            json!({"cron": "* * * * *", "job": {"type": "noop", "items": [1], "run_at": 1}}),
            "job.run_at",
        ),
        (
            json!({"cron": "* * * * *", "job": {"type": "noop", "items": [1], "idempotency_key": "k"}}),
            "job.idempotency_key",
        ),
        (
            json!({"cron": "* * * * *", "name": " ", "job": noop_job()}),
            "name",
        ),
        (
            json!({"cron": "* * * * *", "tz": "UTC", "job": noop_job()}),
            "tz",
        ),
        (json!({"cron": 5, "job": noop_job()}), "cron"),
    ];
    for (body, field) in cases {
        let (status, error) = app.post("/batch/schedules", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {error}");
        assert_eq!(error["field"], field, "{body} → {error}");
        assert!(
            error["detail"].as_str().unwrap().len() > field.len() + 2,
            "{error}"
        );
    }
    let (status, error) = app.post_raw("/batch/schedules", b"{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let (_, list) = app.get("/batch/schedules").await;
    assert_eq!(list, json!({"schedules": [], "total": 0}));
}

async fn cli(address: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
        .args(["--server", address])
        .args(args)
        .output()
        .await
        .expect("the CLI runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn the_cli_adds_lists_pauses_resumes_and_deletes_schedules() {
    let app = spawn_app_with(AppOptions::default(), |b| b.processor(Noop)).await;
    let file = app.dir.path().join("job.json");
    std::fs::write(&file, noop_job().to_string()).unwrap();
    let file = file.to_str().unwrap();
    let (code, out, err) = cli(
        &app.address,
        &[
            "--json",
            "schedule",
            "add",
            "--cron",
            "0 6 * * MON-FRI",
            "--timezone",
            "Europe/Berlin",
            "--name",
            "weekday-mornings",
            "--file",
            file,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let created: Value = serde_json::from_str(&out).unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["timezone"], "Europe/Berlin");

    let (code, out, _) = cli(&app.address, &["schedules"]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("SCHEDULE") && out.contains(&id), "{out}");
    assert!(
        out.contains("weekday-mornings") && out.contains("active"),
        "{out}"
    );
    assert!(out.contains("1 schedules"), "{out}");

    let (code, out, _) = cli(&app.address, &["schedule", "pause", &id]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(&id) && out.contains("paused"), "{out}");
    let (code, out, _) = cli(&app.address, &["schedule", "resume", &id]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("active") && out.contains("next run"), "{out}");
    let (code, out, _) = cli(&app.address, &["--json", "schedules"]).await;
    assert_eq!(code, Some(0));
    let list: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(list["schedules"][0]["paused"], false);

    // A bad expression: exit 2 with the server's reason.
    let (code, _, err) = cli(
        &app.address,
        &["schedule", "add", "--cron", "every day", "--file", file],
    )
    .await;
    assert_eq!(code, Some(2));
    assert!(err.contains("cron"), "{err}");

    let (code, out, _) = cli(&app.address, &["schedule", "delete", &id]).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("deleted {id}")), "{out}");
    let (code, _, err) = cli(&app.address, &["schedule", "show", &id]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("404"), "{err}");
}

fn open_store(dir: &Path) -> batchforge::store::Store {
    let url = batchforge::store::DatabaseUrl::parse(&database_url(dir, "jobs.db")).unwrap();
    batchforge::store::Store::open(&url).unwrap()
}

fn stored_schedule(
    id: &str,
    job: Value,
    next_run_at: f64,
) -> batchforge::store::schedules::ScheduleRecord {
    batchforge::store::schedules::ScheduleRecord {
        id: id.into(),
        name: None,
        cron: "0 0 * * *".into(),
        timezone: "UTC".into(),
        job: job.to_string(),
        paused_at: None,
        next_run_at,
        last_run_at: None,
        last_job_id: None,
        last_error: None,
        created_at: next_run_at - 100.0,
    }
}

#[actix_web::test]
async fn submissions_may_not_take_a_schedule_tick_key() {
    let dir = tempfile::tempdir().unwrap();
    let _db = TestDb::create(dir.path(), "jobs.db");
    let node = start_node(dir.path()).await;
    let (status, s) = node
        .call("POST", "/batch/schedules", Some(&every_second(noop_job())))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    // Claiming a future tick's key would make that tick "find" the claimer's job.
    let future = format!("schedule:{id}:{}", unix_now() as i64 + 3600);
    let mut body = noop_job();
    body["idempotency_key"] = json!(future);
    let (status, err) = node.call("POST", "/batch/jobs", Some(&body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["field"], "idempotency_key", "{err}");
    assert!(
        err["detail"].as_str().unwrap().contains("schedule:"),
        "{err}"
    );
    // Through the header too.
    let resp = client()
        .post(format!("{}/batch/jobs", node.address))
        .insert_header(("Idempotency-Key", future.as_str()))
        .insert_header(("content-type", "application/json"))
        .send_body(noop_job().to_string())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    // Other keys still work, and the scheduler still keys its own jobs.
    let mut body = noop_job();
    body["idempotency_key"] = json!("nightly-schedule:1");
    let (status, job) = node.call("POST", "/batch/jobs", Some(&body)).await;
    assert!(status.is_success(), "{job}");
    wait_ticks(&node.address, &id, "a tick", |jobs| !jobs.is_empty()).await;
    node.stop().await;
}

#[actix_web::test]
async fn a_paused_or_deleted_schedule_is_neither_due_nor_advanced() {
    use batchforge::store;
    let dir = tempfile::tempdir().unwrap();
    let _db = TestDb::create(dir.path(), "jobs.db");
    let store = open_store(dir.path());
    let (paused_due, paused_advanced, resumed_due, deleted_due) = store
        .write_blocking(|c| {
            store::schedules::insert_schedule(c, &stored_schedule("sched-p", noop_job(), 1000.0))?;
            assert!(store::schedules::schedule_still_due(c, "sched-p", 1000.0)?);
            assert!(!store::schedules::schedule_still_due(c, "sched-p", 999.0)?);
            // Paused between the read of the due schedules and the submission.
            store::schedules::pause_schedule(c, "sched-p", 1001.0)?;
            let paused_due = store::schedules::schedule_still_due(c, "sched-p", 1000.0)?;
            let paused_advanced = store::schedules::advance_schedule(
                c,
                "sched-p",
                1000.0,
                2000.0,
                1000.0,
                Some("job"),
                None,
            )?;
            store::schedules::resume_schedule(c, "sched-p", 1000.0)?;
            let resumed_due = store::schedules::schedule_still_due(c, "sched-p", 1000.0)?;
            store::schedules::delete_schedule(c, "sched-p")?;
            let deleted_due = store::schedules::schedule_still_due(c, "sched-p", 1000.0)?;
            Ok((paused_due, paused_advanced, resumed_due, deleted_due))
        })
        .unwrap();
    assert!(!paused_due);
    assert!(!paused_advanced, "a paused schedule was advanced");
    assert!(resumed_due);
    assert!(!deleted_due);
}

#[actix_web::test]
async fn a_tick_that_fails_for_a_passing_reason_stays_due_and_a_bad_template_is_skipped() {
    use batchforge::store;
    let dir = tempfile::tempdir().unwrap();
    let _db = TestDb::create(dir.path(), "jobs.db");
    let node = start_node(dir.path()).await;
    let due = (unix_now() - 5.0).floor();
    let store = open_store(dir.path());
    store
        .write_blocking(move |c| {
            // Its kind is not registered on this node (yet): not a reason to lose the tick.
            store::schedules::insert_schedule(
                c,
                &stored_schedule(
                    "sched-nokind",
                    json!({"type": "not_here", "items": [{"id": 1}]}),
                    due,
                ),
            )?;
            // A template that can never be submitted: skipped for good.
            store::schedules::insert_schedule(
                c,
                &stored_schedule("sched-bad", json!({"type": "noop", "items": []}), due),
            )
        })
        .unwrap();
    let bad = wait_advanced(&node, "sched-bad", due).await;
    assert_eq!(bad["last_run_at"].as_f64(), Some(due), "{bad}");
    assert_eq!(bad["last_job_id"], Value::Null, "{bad}");
    assert!(
        bad["last_error"].as_str().unwrap().contains("items"),
        "{bad}"
    );
    let nokind = wait_for(Duration::from_secs(10), "the failure noted", || async {
        let s = schedule(&node, "sched-nokind").await;
        s["last_error"].is_string().then_some(s)
    })
    .await;
    assert!(
        nokind["last_error"].as_str().unwrap().contains("not_here"),
        "{nokind}"
    );
    // Still due after a few retries: not advanced, nothing created.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let nokind = schedule(&node, "sched-nokind").await;
    assert_eq!(nokind["next_run_at"].as_f64(), Some(due), "{nokind}");
    assert_eq!(nokind["last_run_at"], Value::Null, "{nokind}");
    assert!(jobs_by_tick(&node.address, "sched-nokind").await.is_empty());
    node.stop().await;
}

#[actix_web::test]
async fn a_template_the_ticks_would_refuse_is_refused_at_creation() {
    let app = spawn_app_configured(
        AppOptions::default(),
        Vec::new(),
        batchforge::agent::AgentConfig::default(),
        |config| {
            config.concurrency_groups = [("gpu".to_string(), 1)].into();
        },
        |b| b.processor(Noop),
    )
    .await;
    let job = |extra: Value| {
        let mut job = json!({"type": "noop", "items": [{"id": "a"}]});
        for (k, v) in extra.as_object().unwrap() {
            job[k] = v.clone();
        }
        json!({"cron": "* * * * *", "job": job})
    };
    let cases = [
        (
            job(json!({"concurrency_group": "tpu"})),
            "job.concurrency_group",
        ),
        (job(json!({"max_attempts": 0})), "job.max_attempts"),
        (job(json!({"depends_on": "x"})), "job.depends_on"),
        (job(json!({"deadline": "tomorrow"})), "job.deadline"),
        (
            job(json!({"item_timeout_seconds": 0})),
            "job.item_timeout_seconds",
        ),
        (job(json!({"deadline": "a\u{0}b"})), "job.options"),
        (
            json!({"cron": "* * * * *", "job": {"type": "noop", "items": [{"id": "a\u{0}"}]}}),
            "job.items[0].id",
        ),
    ];
    for (body, field) in cases {
        let (status, error) = app.post("/batch/schedules", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body} → {error}");
        assert_eq!(error["field"], field, "{body} → {error}");
    }
    let (_, error) = app
        .post(
            "/batch/schedules",
            &job(json!({"concurrency_group": "tpu"})),
        )
        .await;
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains("(configured: gpu)"),
        "{error}"
    );
    let (_, list) = app.get("/batch/schedules").await;
    assert_eq!(list, json!({"schedules": [], "total": 0}));
    // The configured group is accepted.
    let (status, created) = app
        .post(
            "/batch/schedules",
            &job(json!({"concurrency_group": "gpu"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
}
