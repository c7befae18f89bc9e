//! The web dashboard: the embedded page and assets as HTTP answers, the page mounted under
//! a scope, and the page itself driven end to end in headless Chromium
//! (`tests/browser/dashboard.mjs`, with `playwright-core`).

use crate::helpers::*;
use actix_web::{test, web, App};
use awc::http::StatusCode;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// GETs a path of the app: status, headers and body.
async fn fetch(app: &TestApp, path: &str) -> (StatusCode, awc::http::header::HeaderMap, String) {
    let mut resp = client()
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .expect("request");
    let body = resp.body().limit(4 * 1024 * 1024).await.expect("body");
    (
        resp.status(),
        resp.headers().clone(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn header<'a>(headers: &'a awc::http::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header in {headers:?}"))
}

#[actix_web::test]
async fn the_dashboard_page_and_its_assets_are_served_with_their_types_and_policy() {
    let app = spawn_app().await;

    let (status, headers, html) = fetch(&app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
    let csp = header(&headers, "content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} missing from {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert!(html.contains("data-testid=\"jobs-view\""), "{html}");
    // Relative asset URLs (the page works under a scope) and no inline script.
    assert!(html.contains("src=\"ui/app.js\""), "{html}");
    assert!(html.contains("href=\"ui/style.css\""), "{html}");
    assert!(
        !html.contains("src=\"/") && !html.contains("href=\"/"),
        "{html}"
    );
    for script in html.split("<script").skip(1) {
        let tag = script.split('>').next().unwrap();
        assert!(tag.contains("src="), "inline script: <script{tag}>");
    }

    for (asset, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ] {
        let (status, headers, body) = fetch(&app, &format!("/ui/{asset}")).await;
        assert_eq!(status, StatusCode::OK, "{asset}");
        assert_eq!(header(&headers, "content-type"), content_type, "{asset}");
        assert_eq!(header(&headers, "cache-control"), "no-cache", "{asset}");
        assert!(!header(&headers, "etag").is_empty());
        assert!(!body.is_empty(), "{asset}");
    }

    // The script builds the page from text nodes and talks to the API relative to itself.
    let (_, _, js) = fetch(&app, "/ui/app.js").await;
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    for absolute in ["'/batch", "\"/batch", "`/batch", "'/health", "`/health"] {
        assert!(
            !js.contains(absolute),
            "app.js has an absolute API path {absolute}"
        );
    }

    // A client holding the asset gets a 304.
    let (_, headers, _) = fetch(&app, "/ui/style.css").await;
    let etag = header(&headers, "etag").to_string();
    let resp = client()
        .get(format!("{}/ui/style.css", app.address))
        .insert_header(("if-none-match", etag.as_str()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);

    let (status, body) = app.get("/ui/nope.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body["detail"].as_str().unwrap().contains("nope.js"),
        "{body}"
    );
    let (status, _) = app.get("/ui/..%2Fmod.rs").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn the_dashboard_works_under_a_scope() {
    let svc = test::init_service(
        App::new().service(web::scope("/engine").configure(batchforge::api::dashboard::configure)),
    )
    .await;
    // The bare scope path redirects to the page, so its relative URLs resolve in the scope.
    let resp = test::call_service(&svc, test::TestRequest::get().uri("/engine").to_request()).await;
    assert_eq!(resp.status(), StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.headers().get("location").unwrap(), "/engine/");
    let resp =
        test::call_service(&svc, test::TestRequest::get().uri("/engine/").to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().contains_key("content-security-policy"));
    let resp = test::call_service(
        &svc,
        test::TestRequest::get()
            .uri("/engine/ui/app.js")
            .to_request(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers().get("content-type").unwrap(),
        "text/javascript; charset=utf-8"
    );
}

/// Node, Chromium and `playwright-core`, or why the browser test cannot run.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    if !chromium.exists() {
        return Err(format!(
            "no Chromium at {} (apt-get install chromium, or set CHROMIUM)",
            chromium.display()
        ));
    }
    match std::process::Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        _ => return Err("no `node` on PATH".into()),
    }
    if !dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        return Err(format!(
            "playwright-core is not installed (npm ci --prefix {})",
            dir.display()
        ));
    }
    Ok((dir.join("dashboard.mjs"), chromium))
}

/// Whether this runs in CI (`CI` set, as CI services and `.ci/run`'s caller do), where a
/// missing browser is a failure rather than a skip.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

#[actix_web::test]
async fn the_dashboard_in_a_browser_shows_progress_cancels_and_shows_a_failed_items_stderr() {
    let app = spawn_app().await;
    run_browser_test(&app.address, &app.workspace, None).await;
}

/// Runs `tests/browser/dashboard.mjs` against the server at `address` (sending `token`,
/// and answering the page's question for it, when given); skips without a browser.
pub async fn run_browser_test(address: &str, workspace: &Path, token: Option<&str>) {
    let (script, chromium) = match browser_tools() {
        Ok(tools) => tools,
        Err(why) if in_ci() => {
            panic!("the dashboard browser test cannot run in CI: {why}; .ci/run installs these")
        }
        Err(why) => {
            eprintln!("SKIPPED the dashboard browser test: {why}");
            return;
        }
    };
    let mut child = tokio::process::Command::new("node");
    if let Some(token) = token {
        child.env("BATCHFORGE_TOKEN", token);
    }
    child
        .arg(&script)
        .arg(format!("{address}/"))
        .arg(workspace)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    // Screenshots for a person to look at: under target/ unless told elsewhere.
    let shots = std::env::var("DASHBOARD_SCREENSHOTS").unwrap_or_else(|_| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard-screenshots");
        let dir = if token.is_some() {
            dir.join("with-token")
        } else {
            dir
        };
        dir.display().to_string()
    });
    child.env("DASHBOARD_SCREENSHOTS", shots);
    let out = tokio::time::timeout(Duration::from_secs(270), child.output())
        .await
        .expect("the browser test finishes within 270 s")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// The timeline the items' own finish times give, bucketed as the endpoint says:
/// `(bucket start, succeeded, failed)`.
fn expected_timeline(items: &[serde_json::Value], n: f64) -> Vec<(f64, u64, u64)> {
    let mut buckets: std::collections::BTreeMap<i64, (u64, u64)> = Default::default();
    for item in items {
        let at = item["finished_at"].as_f64().expect("finished item");
        let b = buckets.entry((at / n).floor() as i64).or_default();
        match item["status"].as_str() {
            Some("succeeded") => b.0 += 1,
            Some("failed") => b.1 += 1,
            other => panic!("unexpected status {other:?}"),
        }
    }
    buckets
        .into_iter()
        .map(|(k, (s, f))| (k as f64 * n, s, f))
        .collect()
}

fn timeline_of(body: &serde_json::Value) -> Vec<(f64, u64, u64)> {
    body["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            assert_eq!(b["other"], 0, "{b}");
            (
                b["start"].as_f64().unwrap(),
                b["succeeded"].as_u64().unwrap(),
                b["failed"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[actix_web::test]
async fn a_jobs_timeline_counts_its_finished_items_per_bucket_by_outcome() {
    let app = spawn_app().await;
    for i in 0..6 {
        app.write_file(&format!("f{i}.txt"), if i % 3 == 0 { "" } else { "x" });
    }
    let targets: Vec<_> = (0..6)
        .map(|i| serde_json::json!({"id": format!("t{i}"), "path": format!("f{i}.txt")}))
        .collect();
    // A little sleep per item spreads the finish times over more than one second.
    let id = app
        .submit(
            "/batch/validation",
            &serde_json::json!({"targets": targets, "check_command": "sh -c 'sleep 0.3; test -s \"$0\"'", "parallel": 1}),
        )
        .await;
    app.wait_finished(&id, Duration::from_secs(60)).await;
    let items = app.all_items(&id, 100).await;
    for n in [1u64, 2, 86_400] {
        let (status, body) = app
            .get(&format!("/batch/jobs/{id}/timeline?bucket_seconds={n}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["job_id"], id.as_str());
        assert_eq!(body["bucket_seconds"], n);
        assert_eq!(
            timeline_of(&body),
            expected_timeline(&items, n as f64),
            "bucket {n}"
        );
    }
    let (_, day) = app
        .get(&format!("/batch/jobs/{id}/timeline?bucket_seconds=86400"))
        .await;
    let total: (u64, u64) = timeline_of(&day)
        .iter()
        .fold((0, 0), |a, b| (a.0 + b.1, a.1 + b.2));
    assert_eq!(total, (4, 2));
    // The default bucket is a second.
    let (_, default) = app.get(&format!("/batch/jobs/{id}/timeline")).await;
    assert_eq!(default["bucket_seconds"], 1);

    for (query, field) in [
        ("bucket_seconds=0", "bucket_seconds"),
        ("bucket_seconds=86401", "bucket_seconds"),
        ("bucket_seconds=abc", "bucket_seconds"),
        ("bucket_seconds=", "bucket_seconds"),
        ("width=5", "width"),
    ] {
        let (status, body) = app.get(&format!("/batch/jobs/{id}/timeline?{query}")).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["field"], field, "{query}: {body}");
    }
    let (status, body) = app.get("/batch/jobs/nope/timeline").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("nope"), "{body}");
}

#[actix_web::test]
async fn jobs_are_searched_by_id_kind_idempotency_key_and_metadata() {
    let app = spawn_app().await;
    let submit = |extra: serde_json::Value| {
        let mut body =
            serde_json::json!({"targets": [{"id": "a", "path": "."}], "check_command": "true"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let app = &app;
        async move { app.submit("/batch/validation", &body).await }
    };
    let tagged = submit(serde_json::json!({"metadata": {"team": "Needle_Team"}})).await;
    let keyed = submit(serde_json::json!({"idempotency_key": "nightly:Run-42"})).await;
    let plain = submit(serde_json::json!({})).await;
    let ids = |q: &str| {
        let app = &app;
        let q = q.to_string();
        async move {
            let (status, body) = app.get(&format!("/batch/jobs?q={q}")).await;
            assert_eq!(status, StatusCode::OK, "{q}: {body}");
            let mut ids: Vec<String> = body["jobs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|j| j["job_id"].as_str().unwrap().to_string())
                .collect();
            ids.sort();
            assert_eq!(body["total"], ids.len(), "{q}: {body}");
            ids
        }
    };
    assert_eq!(ids("needle_team").await, [tagged.as_str()]);
    assert_eq!(ids("NIGHTLY%3Arun-4").await, [keyed.as_str()]);
    assert_eq!(
        ids(&plain[plain.len() - 6..].to_uppercase()).await,
        [plain.as_str()]
    );
    let mut all = vec![tagged.clone(), keyed.clone(), plain.clone()];
    all.sort();
    assert_eq!(ids("BATCH_VALID").await, all);
    // `%` and `_` are text, not wildcards.
    assert!(ids("needle%25team").await.is_empty());
    assert!(ids("batch_validation_").await.is_empty());
    // With the other filters.
    let (_, body) = app.get("/batch/jobs?q=needle&job_type=batch_tests").await;
    assert_eq!(body["total"], 0, "{body}");
    let (status, body) = app.get("/batch/jobs?q=a%00b").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "q", "{body}");
}

async fn post_bulk(app: &TestApp, body: &serde_json::Value) -> (StatusCode, serde_json::Value) {
    app.post("/batch/jobs/bulk", body).await
}

#[actix_web::test]
async fn bulk_cancel_and_retry_answer_one_outcome_per_id_and_bad_bodies_change_nothing() {
    let app = spawn_app().await;
    let slow = serde_json::json!({"targets": [{"id": "s", "path": "."}], "check_command": "sh -c 'sleep 30'"});
    let a = app.submit("/batch/validation", &slow).await;
    let b = app.submit("/batch/validation", &slow).await;
    app.write_file("empty.txt", "");
    let failing = app
        .submit(
            "/batch/validation",
            &serde_json::json!({"targets": [{"id": "e", "path": "empty.txt"}, {"id": "d", "path": "."}], "check_command": "test -s"}),
        )
        .await;
    app.wait_finished(&failing, Duration::from_secs(30)).await;

    // Refused bodies, each naming its field; the jobs stay as they were.
    for (body, field) in [
        (
            serde_json::json!({"action": "explode", "ids": [a]}),
            "action",
        ),
        (serde_json::json!({"ids": [a]}), "action"),
        (serde_json::json!({"action": "cancel", "ids": []}), "ids"),
        (serde_json::json!({"action": "cancel", "ids": a}), "ids"),
        (
            serde_json::json!({"action": "cancel", "ids": [a, 3]}),
            "ids[1]",
        ),
        (
            serde_json::json!({"action": "cancel", "ids": [a, " "]}),
            "ids[1]",
        ),
        (
            serde_json::json!({"action": "cancel", "ids": [a, b, a]}),
            "ids[2]",
        ),
        (
            serde_json::json!({"action": "cancel", "ids": [a], "failed_only": true}),
            "failed_only",
        ),
        (
            serde_json::json!({"action": "retry", "ids": [a], "failed_only": "yes"}),
            "failed_only",
        ),
        (
            serde_json::json!({"action": "cancel", "ids": [a], "force": true}),
            "force",
        ),
    ] {
        let (status, answer) = post_bulk(&app, &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }
    let too_many: Vec<String> = (0..1001).map(|i| format!("j{i}")).collect();
    let (status, answer) = post_bulk(
        &app,
        &serde_json::json!({"action": "cancel", "ids": too_many}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "ids");
    let (status, _) = app.post_raw("/batch/jobs/bulk", b"{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for id in [&a, &b] {
        assert_ne!(app.job(id).await["status"], "cancelled");
    }

    let (status, answer) = post_bulk(
        &app,
        &serde_json::json!({"action": "cancel", "ids": [a, "nope", failing, b]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["action"], "cancel");
    let outcomes: Vec<(String, u64, String)> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["status"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            (a.clone(), 200, "cancelled".to_string()),
            ("nope".to_string(), 404, "not_found".to_string()),
            (failing.clone(), 409, "conflict".to_string()),
            (b.clone(), 200, "cancelled".to_string()),
        ]
    );
    assert!(answer["results"][2]["detail"]
        .as_str()
        .unwrap()
        .contains("already"));
    assert_eq!(
        (answer["done"].clone(), answer["refused"].clone()),
        (2.into(), 2.into())
    );
    for id in [&a, &b] {
        let job = app.wait_finished(id, Duration::from_secs(30)).await;
        assert_eq!(job["status"], "cancelled");
    }

    // Retry: only the failed item of `failing`; the cancelled jobs' cancelled items too
    // unless `failed_only`.
    let (status, answer) = post_bulk(
        &app,
        &serde_json::json!({"action": "retry", "ids": [failing, a], "failed_only": true}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["results"][0]["status"], 200, "{answer}");
    assert_eq!(answer["results"][0]["requeued"], 1, "{answer}");
    assert_eq!(answer["results"][1]["status"], 409, "{answer}");
    app.wait_finished(&failing, Duration::from_secs(30)).await;
    let items = app.all_items(&failing, 10).await;
    let retried = items.iter().find(|i| i["id"] == "e").unwrap();
    assert_eq!(
        retried["attempt_errors"].as_array().unwrap().len(),
        1,
        "{retried}"
    );
    let (_, answer) = post_bulk(&app, &serde_json::json!({"action": "retry", "ids": [b]})).await;
    assert_eq!(answer["results"][0]["status"], 200, "{answer}");
    assert_eq!(answer["results"][0]["requeued"], 1, "{answer}");
    app.delete(&format!("/batch/jobs/{b}")).await;
}

#[actix_web::test]
async fn a_jobs_webhook_deliveries_are_listed_with_their_attempts() {
    let app = spawn_app().await;
    let plain = app
        .submit(
            "/batch/validation",
            &serde_json::json!({"targets": [{"id": "a", "path": "."}], "check_command": "true"}),
        )
        .await;
    app.wait_finished(&plain, Duration::from_secs(30)).await;
    let (status, body) = app.get(&format!("/batch/jobs/{plain}/webhooks")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deliveries"], serde_json::json!([]));

    // A receiver that is not there: the delivery is attempted and its error kept.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/hook?token=s3cret");
    let hooked = app
        .submit(
            "/batch/validation",
            &serde_json::json!({"targets": [{"id": "a", "path": "."}], "check_command": "true", "callback_url": url}),
        )
        .await;
    app.wait_finished(&hooked, Duration::from_secs(30)).await;
    let delivery = wait_for(Duration::from_secs(30), "a failed attempt", || async {
        let (_, body) = app.get(&format!("/batch/jobs/{hooked}/webhooks")).await;
        let d = body["deliveries"][0].clone();
        (d["attempts"].as_u64() >= Some(1) && d["last_error"].is_string()).then_some(d)
    })
    .await;
    assert!(delivery["delivered_at"].is_null(), "{delivery}");
    assert!(delivery["url"]
        .as_str()
        .unwrap()
        .contains(&format!("127.0.0.1:{port}/hook")));
    let (status, _) = app.get("/batch/jobs/nope/webhooks").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn the_operator_endpoints_work_under_a_scope_with_a_token() {
    use batchforge::api::guard::SecurityConfig;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "scope.db");
    let engine = batchforge::EngineBuilder::new(batchforge::EngineConfig {
        database_url: db.url.clone(),
        workspace: dir.path().to_path_buf(),
        ..batchforge::EngineConfig::default()
    })
    .start()
    .await
    .unwrap();
    let security = SecurityConfig {
        tokens: vec!["tok-3e1f".into()],
        ..Default::default()
    };
    let svc = test::init_service(App::new().service(
        web::scope("/engine").configure(batchforge::api::secured_routes(engine.clone(), security)),
    ))
    .await;
    let call = |method: &str, uri: &str, token: Option<&str>, body: Option<serde_json::Value>| {
        let mut req = match method {
            "POST" => test::TestRequest::post(),
            _ => test::TestRequest::get(),
        }
        .uri(uri);
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        if let Some(b) = body {
            req = req.set_json(b);
        }
        req.to_request()
    };
    let (tok, none) = (Some("tok-3e1f"), None);
    let submit = call(
        "POST",
        "/engine/batch/validation",
        tok,
        Some(
            serde_json::json!({"targets": [{"id": "a", "path": "."}], "check_command": "true",
                                "metadata": {"who": "scoped-one"}}),
        ),
    );
    let job: serde_json::Value = test::call_and_read_body_json(&svc, submit).await;
    let id = job["job_id"].as_str().expect("job_id").to_string();
    wait_for(Duration::from_secs(30), "the scoped job", || async {
        let req = call("GET", &format!("/engine/batch/jobs/{id}"), tok, None);
        let job: serde_json::Value = test::call_and_read_body_json(&svc, req).await;
        (job["status"] == "completed").then_some(())
    })
    .await;
    let timeline = format!("/engine/batch/jobs/{id}/timeline?bucket_seconds=60");
    let webhooks = format!("/engine/batch/jobs/{id}/webhooks");
    let bulk = serde_json::json!({"action": "retry", "ids": [id], "failed_only": true});
    for (method, uri, body) in [
        ("GET", timeline.as_str(), None),
        ("GET", webhooks.as_str(), None),
        ("GET", "/engine/batch/jobs?q=SCOPED-ONE", None),
        ("POST", "/engine/batch/jobs/bulk", Some(bulk.clone())),
    ] {
        let resp = test::call_service(&svc, call(method, uri, none, body.clone())).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {uri}");
        let resp = test::call_service(&svc, call(method, uri, tok, body)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{method} {uri}");
        let body: serde_json::Value = test::read_body_json(resp).await;
        match uri {
            u if u == timeline => {
                assert_eq!(body["buckets"][0]["succeeded"], 1, "{body}")
            }
            u if u == webhooks => assert_eq!(body["deliveries"], serde_json::json!([])),
            "/engine/batch/jobs/bulk" => {
                // Nothing failed: the one id is refused as the single retry would be.
                assert_eq!(body["results"][0]["status"], 409, "{body}")
            }
            _ => assert_eq!(body["jobs"][0]["job_id"], id.as_str(), "{body}"),
        }
    }
    engine.shutdown(Duration::from_secs(1)).await;
}
