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
    if let Ok(dir) = std::env::var("DASHBOARD_SCREENSHOTS") {
        child.env("DASHBOARD_SCREENSHOTS", dir);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), child.output())
        .await
        .expect("the browser test finishes within 180 s")
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
