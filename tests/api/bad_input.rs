//! Bad input gets a clear JSON error naming the problem and changes nothing stored.

use crate::helpers::*;
use awc::http::StatusCode;
use serde_json::json;

#[actix_web::test]
async fn bad_submissions_are_refused_with_the_field_named_and_nothing_stored() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let good = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true"}),
        )
        .await;
    app.wait_finished(&good, std::time::Duration::from_secs(30))
        .await;
    let before = app.get("/batch/jobs").await.1;

    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        ("/batch/validation", "{\"targets\": [".into(), StatusCode::BAD_REQUEST, "not valid JSON"),
        ("/batch/validation", "".into(), StatusCode::BAD_REQUEST, "empty"),
        ("/batch/validation", "[]".into(), StatusCode::UNPROCESSABLE_ENTITY, "body"),
        ("/batch/validation", "{}".into(), StatusCode::UNPROCESSABLE_ENTITY, "targets"),
        ("/batch/validation", r#"{"targets": []}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "targets"),
        ("/batch/validation", r#"{"targets": null}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "targets"),
        ("/batch/validation", r#"{"targets": "f"}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "targets"),
        ("/batch/validation", r#"{"targets": [{"id": 7, "path": "f"}]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "targets[0].id"),
        ("/batch/validation", r#"{"targets": [{"id": "a"}]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "targets[0].path"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}, {"id": "", "path": "f"}]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "targets[1].id"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "parallel": 0}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "parallel"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "parallel": 100000000}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "parallel"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "parallel": "5"}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "parallel"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "check_command": "no-such-program-xyz -q"}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "check_command"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "check_command": "   "}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "check_command"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "check_command": "echo 'open"}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "check_command"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "check_command": 5}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "check_command"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "check_command": "true", "timeout_seconds": -1}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "timeout_seconds"),
        ("/batch/validation", r#"{"targets": [{"id": "a", "path": "f"}], "check_command": "true", "metadata": [1]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "metadata"),
        ("/batch/tests", r#"{"modules": []}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "modules"),
        ("/batch/tests", r#"{"targets": [{"id": "a", "path": "f"}]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "modules"),
        ("/batch/tests", r#"{"modules": [{"id": "a", "path": "f"}], "test_command": "no-such-program-xyz"}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "test_command"),
        ("/batch/mcp-operations", r#"{"operations": [{"type": "explode"}]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "operations[0].type"),
        ("/batch/agent-tasks", r#"{"tasks": [{"id": "t"}]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "tasks[0].description"),
        ("/batch/jobs", r#"{"type": "nope", "items": [1]}"#.into(), StatusCode::UNPROCESSABLE_ENTITY, "type"),
    ];
    for (path, body, status, needle) in cases {
        let (got, answer) = app.post_raw(path, body.as_bytes()).await;
        assert_eq!(got, status, "POST {path} {body} answered {answer}");
        let detail = answer["detail"]
            .as_str()
            .unwrap_or_else(|| panic!("no detail: {answer}"));
        assert!(
            detail.contains(needle),
            "POST {path} {body}: detail {detail:?} should name {needle:?}"
        );
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            assert!(
                answer["field"]
                    .as_str()
                    .unwrap()
                    .contains(needle.split('[').next().unwrap()),
                "{answer}"
            );
        }
    }
    // The server keeps serving, and nothing stored changed.
    let after = app.get("/batch/jobs").await.1;
    assert_eq!(before["total"], 1);
    assert_eq!(before, after);
}

#[actix_web::test]
async fn bad_reads_are_refused_with_the_parameter_named() {
    let app = spawn_app().await;
    let cases = [
        (
            "/batch/jobs/batch_validation-000000000000",
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "/batch/jobs/batch_validation-000000000000/items",
            StatusCode::NOT_FOUND,
            "not found",
        ),
        (
            "/batch/jobs?status=done",
            StatusCode::UNPROCESSABLE_ENTITY,
            "status",
        ),
        (
            "/batch/jobs?limit=0",
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
        ),
        (
            "/batch/jobs?limit=abc",
            StatusCode::UNPROCESSABLE_ENTITY,
            "limit",
        ),
        (
            "/batch/jobs?offset=-1",
            StatusCode::UNPROCESSABLE_ENTITY,
            "offset",
        ),
        (
            "/batch/jobs?colour=red",
            StatusCode::UNPROCESSABLE_ENTITY,
            "colour",
        ),
    ];
    for (path, status, needle) in cases {
        let (got, body) = app.get(path).await;
        assert_eq!(got, status, "GET {path}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(needle),
            "GET {path}: {body}"
        );
    }
    let (status, body) = app
        .delete("/batch/jobs/batch_validation-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    app.write_file("f", "");
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true"}),
        )
        .await;
    app.wait_finished(&id, std::time::Duration::from_secs(30))
        .await;
    let (status, body) = app
        .get(&format!("/batch/jobs/{id}/items?status=finished"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("'finished'"),
        "{body}"
    );
    let (status, body) = app.delete(&format!("/batch/jobs/{id}")).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("already completed"),
        "{body}"
    );
    assert_eq!(app.job(&id).await["status"], "completed");
}

#[actix_web::test]
async fn an_unregistered_kind_is_a_bad_type_field() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/batch/jobs",
            &json!({"type": "no_such_kind", "items": [{"id": 1}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "type");
    assert!(
        body["detail"].as_str().unwrap().contains("no_such_kind"),
        "{body}"
    );
    assert_eq!(app.get("/batch/stats").await.1["stats"]["total"], 0);
}

#[actix_web::test]
async fn nul_characters_in_options_or_ids_are_refused_on_either_backend() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true", "concurrency_group": "a\u{0}b"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "options", "{body}");
    let (status, body) = app
        .post(
            "/batch/validation",
            &json!({"targets": [{"id": "ok", "path": "f"}, {"id": "a\u{0}b", "path": "g"}], "check_command": "true"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "items[1].id", "{body}");
    let (_, list) = app.get("/batch/jobs").await;
    assert_eq!(list["total"], 0, "nothing stored: {list}");
}
