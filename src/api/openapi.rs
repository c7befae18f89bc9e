//! The OpenAPI 3 document, generated from the handlers' annotations and the request and
//! response types, served at `/openapi.json`; Swagger UI, embedded in the binary (no CDN),
//! at `/docs/`.

use super::error::ErrorBody;
use super::responses::{
    CancelResponse, HealthResponse, ItemList, ItemResponse, JobList, JobResponse, KindList,
    ResultLine, RetryResponse, StatsResponse,
};
use crate::model::{ItemStatus, JobStatus, QueueStats};
use crate::queue::messages::KindInfo;
use crate::queue::tracker::Progress;
use crate::submission::{
    AgentTask, AgentTasksRequest, GenericJobRequest, McpOperation, McpOperationType, McpRequest,
    PathTarget, RetryRequest, TestsRequest, ValidationRequest,
};
use actix_web::web::{self, ServiceConfig};
use actix_web::{HttpRequest, HttpResponse};
use std::sync::OnceLock;
use utoipa::OpenApi;

/// The document's source: every path and schema of the REST API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "batchforge",
        description = "A durable batch job engine for coding-agent workloads: submit thousands of \
validation commands, test runs, MCP operations or agent tasks as one job, watch them run, \
read every result.\n\nEvery error answers `{\"detail\": …}`, plus `field` when one request \
field is at fault.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        super::health,
        super::metrics,
        openapi_json,
        super::submit::submit_validation,
        super::submit::submit_tests,
        super::submit::submit_agent_tasks,
        super::submit::submit_mcp,
        super::submit::submit_llm,
        super::submit::submit_generic,
        super::list_jobs,
        super::get_job,
        super::cancel_job,
        super::pause_job,
        super::resume_job,
        super::retry_job,
        super::list_kinds,
        super::pause_kind,
        super::resume_kind,
        super::list_items,
        super::results_jsonl,
        super::job_events,
        super::operator::job_timeline,
        super::operator::job_webhooks,
        super::operator::bulk_jobs,
        super::all_events,
        super::stats,
        super::schedules::create_schedule,
        super::schedules::list_schedules,
        super::schedules::get_schedule,
        super::schedules::delete_schedule,
        super::schedules::pause_schedule,
        super::schedules::resume_schedule,
        super::v1::upload_file,
        super::v1::list_files,
        super::v1::get_file,
        super::v1::delete_file,
        super::v1::file_content,
        super::v1::create_batch,
        super::v1::list_batches,
        super::v1::get_batch,
        super::v1::cancel_batch,
    ),
    components(schemas(
        ErrorBody,
        PathTarget,
        ValidationRequest,
        TestsRequest,
        AgentTask,
        AgentTasksRequest,
        McpOperation,
        McpOperationType,
        McpRequest,
        crate::submission::LlmRequestItem,
        crate::submission::LlmBatchRequest,
        GenericJobRequest,
        JobResponse,
        JobList,
        ItemResponse,
        ItemList,
        CancelResponse,
        KindList,
        KindInfo,
        RetryRequest,
        RetryResponse,
        HealthResponse,
        StatsResponse,
        QueueStats,
        ResultLine,
        Progress,
        JobStatus,
        ItemStatus,
        super::schedules::ScheduleRequest,
        super::schedules::ScheduleResponse,
        super::schedules::ScheduleList,
        super::schedules::ScheduleDeleted,
        super::operator::TimelineResponse,
        crate::engine::TimelineBucket,
        super::operator::WebhookList,
        crate::engine::WebhookDelivery,
        super::operator::BulkRequest,
        super::operator::BulkResponse,
        super::operator::BulkOutcome,
    )),
    tags(
        (name = "submit", description = "Submit a batch: one job of many items"),
        (name = "jobs", description = "Read, page and cancel jobs and their items"),
        (name = "events", description = "Live progress as Server-Sent Events"),
        (name = "schedules", description = "Cron schedules that submit a job per tick"),
        (name = "operations", description = "Health, metrics and this document"),
        (name = "openai", description = "OpenAI-compatible Batch API (files and batches) over batch_llm jobs"),
    )
)]
pub struct ApiDoc;

/// The document as generated from the types, built once.
pub fn document() -> &'static utoipa::openapi::OpenApi {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    DOC.get_or_init(ApiDoc::openapi)
}

/// The document as served at `/openapi.json`: [`document`] with what the types cannot
/// say written in (see `openapi_fix`), built once.
pub fn served() -> &'static serde_json::Value {
    static DOC: OnceLock<serde_json::Value> = OnceLock::new();
    DOC.get_or_init(|| super::openapi_fix::tightened(document()))
}

/// `GET /openapi.json`. When the API is mounted under a prefix (an embedding app's
/// scope), the document's server is that prefix, so "Try it out" reaches the right URL.
#[utoipa::path(
    get, path = "/openapi.json", tag = "operations",
    description = "This OpenAPI 3 document.",
    responses((status = 200, description = "The document", content_type = "application/json", body = Object))
)]
pub(super) async fn openapi_json(req: HttpRequest) -> HttpResponse {
    let prefix = req.path().strip_suffix("/openapi.json").unwrap_or("");
    if prefix.is_empty() {
        return HttpResponse::Ok().json(served());
    }
    let mut doc = served().clone();
    doc["servers"] = serde_json::json!([{"url": prefix}]);
    HttpResponse::Ok().json(doc)
}

/// Swagger UI at `/docs/` (and `/docs`, redirected), reading `../openapi.json` relative
/// to itself so it also works under a prefix.
pub(super) fn mount_docs(cfg: &mut ServiceConfig) {
    cfg.route(
        "/docs",
        web::get().to(|| async {
            HttpResponse::PermanentRedirect()
                .insert_header(("location", "docs/"))
                .finish()
        }),
    )
    .service(
        utoipa_swagger_ui::SwaggerUi::new("/docs/{_:.*}")
            .config(utoipa_swagger_ui::Config::new(["../openapi.json"])),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mounted_route_is_documented_and_nothing_else() {
        let doc = document();
        let mut documented = Vec::new();
        for (path, item) in &doc.paths.paths {
            let methods = [
                ("get", item.get.is_some()),
                ("post", item.post.is_some()),
                ("delete", item.delete.is_some()),
                ("put", item.put.is_some()),
                ("patch", item.patch.is_some()),
            ];
            for (m, present) in methods {
                if present {
                    documented.push((m.to_string(), path.clone()));
                }
            }
        }
        let mut mounted: Vec<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        documented.sort();
        mounted.sort();
        assert_eq!(documented, mounted);
    }

    #[test]
    fn the_documented_mcp_operation_types_are_the_accepted_ones() {
        let doc = serde_json::to_value(document()).unwrap();
        let listed = &doc["components"]["schemas"]["McpOperationType"]["enum"];
        assert_eq!(
            listed,
            &serde_json::json!(crate::submission::MCP_OPERATIONS)
        );
    }
}
