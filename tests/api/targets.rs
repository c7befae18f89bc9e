//! Issue 14: targets in a tool's own syntax (pytest node ids, `target_kind: "argument"`),
//! missing files handed to the command, and each kind's summary keys as the Python
//! original named them. pytest runs for real (`.ci/run` installs it).

use crate::helpers::*;
use awc::http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const PYTEST_FILE: &str = "\
import pytest


def test_ok():
    assert True


def test_bad():
    assert 1 == 2


class TestGroup:
    def test_ok(self):
        assert True

    def test_bad(self):
        assert False


@pytest.mark.parametrize('n', [1, 2])
def test_param(n):
    assert n == 1
";

async fn finished(app: &TestApp, endpoint: &str, body: Value) -> Value {
    let id = app.submit(endpoint, &body).await;
    app.wait_finished(&id, Duration::from_secs(120)).await
}

fn by_id<'a>(job: &'a Value, field: &str, id: &str) -> &'a Value {
    job["result"]["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r[field] == id)
        .unwrap_or_else(|| panic!("no result {id} in {job}"))
}

#[actix_web::test]
async fn pytest_node_ids_reach_pytest_and_report_its_own_outcome() {
    let app = spawn_app().await;
    app.write_file("tests/test_x.py", PYTEST_FILE);
    let modules = [
        ("fn-ok", "tests/test_x.py::test_ok"),
        ("fn-bad", "tests/test_x.py::test_bad"),
        ("class-ok", "tests/test_x.py::TestGroup::test_ok"),
        ("class-bad", "tests/test_x.py::TestGroup::test_bad"),
        ("param-ok", "tests/test_x.py::test_param[1]"),
        ("param-bad", "tests/test_x.py::test_param[2]"),
        ("dotdot", "../x.py::t"),
        ("absolute", "/etc/passwd::x"),
    ];
    let body = json!({
        "modules": modules.iter().map(|(id, path)| json!({"id": id, "path": path})).collect::<Vec<_>>(),
        "test_command": "python3 -m pytest -q -p no:cacheprovider",
        "parallel": 4,
    });
    let job = finished(&app, "/batch/tests", body).await;
    for (id, node) in &modules[..6] {
        let r = by_id(&job, "module_id", id);
        let name = node.rsplit("::").next().unwrap();
        let stdout = r["stdout"].as_str().unwrap();
        // pytest's closing line, e.g. `1 failed, 1 warning in 0.1s`.
        let last = stdout.trim_end().lines().last().unwrap_or_default();
        // Exactly the one node ran, not the whole file (six tests, three failing).
        if id.ends_with("-ok") {
            assert_eq!(r["status"], "passed", "{r}");
            assert_eq!(r["exit_code"], 0, "{r}");
            assert!(last.starts_with("1 passed"), "{id}: {stdout}");
            assert!(!last.contains("failed"), "{id}: {stdout}");
        } else {
            assert_eq!(r["status"], "failed", "{r}");
            // pytest's own verdict: 1 is "tests failed", not a usage error or no match.
            assert_eq!(r["exit_code"], 1, "{r}");
            assert!(last.starts_with("1 failed"), "{id}: {stdout}");
            assert!(!last.contains("passed"), "{id}: {stdout}");
            assert!(stdout.contains(name), "pytest names {name}: {stdout}");
        }
        assert_eq!(r["path"], *node);
    }
    for (id, path) in [("dotdot", "../x.py"), ("absolute", "/etc/passwd")] {
        let r = by_id(&job, "module_id", id);
        assert_eq!(r["status"], "error", "{r}");
        assert_eq!(r["exit_code"], Value::Null, "nothing ran: {r}");
        assert_eq!(
            r["error"],
            format!("path '{path}' is outside the workspace root"),
            "{r}"
        );
    }
    let summary = &job["result"]["summary"];
    assert_eq!(summary["total"], 8, "{summary}");
    assert_eq!(summary["passed"], 3, "{summary}");
    assert_eq!(summary["successful"], 3, "{summary}");
    assert_eq!(summary["failed"], 5, "{summary}");
}

#[actix_web::test]
async fn a_missing_file_inside_the_workspace_reaches_the_command() {
    let app = spawn_app().await;
    app.write_file("present.txt", "x");
    std::os::unix::fs::symlink("/etc", app.workspace.join("out")).unwrap();
    let items = json!([
        {"id": "present", "path": "present.txt"},
        {"id": "absent", "path": "absent.txt"},
        {"id": "absent-deep", "path": "no/such/dir/absent.txt"},
        {"id": "dotdot", "path": "../absent.txt"},
        {"id": "symlink-out", "path": "out/absent.txt"}
    ]);
    for (endpoint, field, id_field, command) in [
        ("/batch/tests", "modules", "module_id", "test_command"),
        ("/batch/validation", "targets", "target_id", "check_command"),
    ] {
        let job = finished(
            &app,
            endpoint,
            json!({field: items.clone(), command: "test -f", "parallel": 2}),
        )
        .await;
        assert_eq!(by_id(&job, id_field, "present")["status"], "passed");
        for id in ["absent", "absent-deep"] {
            let r = by_id(&job, id_field, id);
            assert_eq!(r["status"], "failed", "{endpoint}: {r}");
            assert_eq!(r["exit_code"], 1, "{endpoint}: {r}");
        }
        for (id, path) in [
            ("dotdot", "../absent.txt"),
            ("symlink-out", "out/absent.txt"),
        ] {
            let r = by_id(&job, id_field, id);
            assert_eq!(r["status"], "error", "{endpoint}: {r}");
            assert_eq!(
                r["error"],
                format!("path '{path}' is outside the workspace root"),
                "{endpoint}: {r}"
            );
        }
        let summary = &job["result"]["summary"];
        assert_eq!(summary["successful"], 1, "{endpoint}: {summary}");
        assert_eq!(summary["failed"], 4, "{endpoint}: {summary}");
    }
}

#[actix_web::test]
async fn argument_targets_pass_as_words_and_escaping_paths_stay_refused() {
    let app = spawn_app().await;
    // `sh -c 'printf "<%s>" "$@"' argv0` shows each word the target became.
    let job = finished(
        &app,
        "/batch/tests",
        json!({
            "modules": [
                {"id": "go", "path": "./pkg/..."},
                {"id": "cargo", "path": "-p my-crate"},
                {"id": "pyargs", "path": "--pyargs pkg.module"},
                {"id": "npm", "path": "-- --grep 'two words'"},
                {"id": "dotdot", "path": "--rootdir=../elsewhere"},
                {"id": "absolute", "path": "-c /etc/passwd"}
            ],
            "test_command": "sh -c 'printf \"<%s>\" \"$@\"' argv0",
            "target_kind": "argument",
        }),
    )
    .await;
    for (id, words) in [
        ("go", "<./pkg/...>"),
        ("cargo", "<-p><my-crate>"),
        ("pyargs", "<--pyargs><pkg.module>"),
        ("npm", "<--><--grep><two words>"),
    ] {
        let r = by_id(&job, "module_id", id);
        assert_eq!(r["status"], "passed", "{r}");
        assert_eq!(r["stdout"], words, "{r}");
    }
    for (id, word) in [
        ("dotdot", "--rootdir=../elsewhere"),
        ("absolute", "/etc/passwd"),
    ] {
        let r = by_id(&job, "module_id", id);
        assert_eq!(r["status"], "error", "{r}");
        let error = r["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("argument '{word}': ")) && error.contains("outside"),
            "{r}"
        );
    }
    // The same target read as a path (the default) is one confined word.
    let job = finished(
        &app,
        "/batch/tests",
        json!({"modules": [{"id": "cargo", "path": "-p my-crate"}],
               "test_command": "sh -c 'printf \"<%s>\" \"$@\"' argv0"}),
    )
    .await;
    assert_eq!(
        by_id(&job, "module_id", "cargo")["stdout"],
        "<./-p my-crate>"
    );
}

#[actix_web::test]
async fn a_bad_target_kind_is_refused_naming_it_and_stores_nothing() {
    let app = spawn_app().await;
    for (endpoint, field, command, value) in [
        ("/batch/tests", "modules", "test_command", json!("word")),
        ("/batch/validation", "targets", "check_command", json!(true)),
    ] {
        let (status, body) = app
            .post(
                endpoint,
                &json!({field: [{"id": "a", "path": "f"}], command: "true",
                        "target_kind": value}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["field"], "target_kind", "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("\"argument\""),
            "{body}"
        );
    }
    assert_eq!(app.get("/batch/stats").await.1["stats"]["total"], 0);
}

/// The original's `examples/batch_example.py` is not in the seed (only its summary is), so
/// this is its equivalent: the seed's validation, tests, MCP and stats examples, reading
/// the results by the original's keys as its script did.
#[actix_web::test]
async fn the_originals_example_flow_reads_its_own_summary_keys() {
    let app = spawn_app().await;
    app.write_file("src/config.py", "VALUE = 1\n");
    app.write_file("src/broken.py", "def f(:\n");
    app.write_file("tests/test_config.py", "def test_value():\n    assert 1\n");
    app.write_file(
        "tests/test_guardrail.py",
        "def test_guard():\n    assert 0\n",
    );
    // Example 2: batch validation.
    let job = finished(
        &app,
        "/batch/validation",
        json!({"targets": [{"id": "config", "path": "src/config.py"},
                           {"id": "broken", "path": "src/broken.py"}],
               "check_command": "python3 -m py_compile", "parallel": 2}),
    )
    .await;
    let summary = &job["result"]["summary"];
    assert_eq!(
        (
            &summary["total"],
            &summary["successful"],
            &summary["failed"]
        ),
        (&json!(2), &json!(1), &json!(1)),
        "{summary}"
    );
    assert!(summary.get("passed").is_none(), "validation keeps its keys");
    assert_eq!(by_id(&job, "target_id", "config")["status"], "passed");
    // Example 3: batch tests, the original's default command shape.
    let job = finished(
        &app,
        "/batch/tests",
        json!({"modules": [{"id": "test1", "path": "tests/test_config.py"},
                           {"id": "test2", "path": "tests/test_guardrail.py"}],
               "test_command": "pytest -v -p no:cacheprovider", "parallel": 2}),
    )
    .await;
    let summary = &job["result"]["summary"];
    assert_eq!(
        (&summary["total"], &summary["passed"], &summary["failed"]),
        (&json!(2), &json!(1), &json!(1)),
        "{summary}"
    );
    assert_eq!(by_id(&job, "module_id", "test1")["status"], "passed");
    assert_eq!(by_id(&job, "module_id", "test2")["status"], "failed");
    // Example 4: batch MCP operations.
    let job = finished(
        &app,
        "/batch/mcp-operations",
        json!({"operations": [{"type": "read", "path": "src/config.py"},
                              {"type": "list", "path": "src"}], "parallel": 2}),
    )
    .await;
    let summary = &job["result"]["summary"];
    assert_eq!(
        (
            &summary["total"],
            &summary["successful"],
            &summary["failed"]
        ),
        (&json!(2), &json!(2), &json!(0)),
        "{summary}"
    );
    assert!(summary.get("passed").is_none(), "mcp keeps its keys");
    // Example 5: queue statistics.
    let (status, stats) = app.get("/batch/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["stats"]["total"], 3, "{stats}");
}

#[actix_web::test]
async fn a_jsonl_submission_takes_target_kind_in_its_query_string() {
    let app = spawn_app().await;
    let resp = crate::helpers::client()
        .post(format!(
            "{}/batch/tests?test_command=echo&target_kind=argument",
            app.address
        ))
        .insert_header(("content-type", "application/x-ndjson"))
        .send_body("{\"custom_id\": \"cargo\", \"path\": \"-p my-crate\"}\n")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let (_, list) = app.get("/batch/jobs").await;
    let id = list["jobs"][0]["job_id"].as_str().unwrap().to_string();
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["options"]["target_kind"], "argument");
    let r = by_id(&job, "module_id", "cargo");
    assert_eq!(r["stdout"], "-p my-crate\n", "{r}");
    assert_eq!(job["result"]["summary"]["passed"], 1);
}

#[actix_web::test]
async fn a_target_hard_linked_to_another_file_is_refused_before_the_command_runs() {
    let app = spawn_app().await;
    let secret = app.dir.path().join("secret");
    std::fs::write(&secret, "outside secret\n").unwrap();
    std::fs::hard_link(&secret, app.workspace.join("linked.txt")).unwrap();
    app.write_file("plain.txt", "inside\n");
    let job = finished(
        &app,
        "/batch/validation",
        json!({"targets": [{"id": "linked", "path": "linked.txt"}, {"id": "plain", "path": "plain.txt"}],
               "check_command": "cat"}),
    )
    .await;
    let linked = by_id(&job, "target_id", "linked");
    assert_eq!(linked["status"], "error", "{linked}");
    assert!(
        linked["error"]
            .as_str()
            .unwrap()
            .contains("'linked.txt' has 2 hard links"),
        "{linked}"
    );
    assert!(!job.to_string().contains("outside secret"), "{job}");
    let plain = by_id(&job, "target_id", "plain");
    assert_eq!(plain["stdout"], "inside\n", "{plain}");
}
