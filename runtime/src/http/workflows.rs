//! `POST /v1/workflows`, `GET /v1/workflows`, `GET /v1/workflows/{name}[/graph]`: workflow
//! definitions, versioned by name. Runs are in `runs.rs`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiError, AppState};
use crate::store::{WorkflowRecord, now_ms};
use crate::workflow::{Definition, DefinitionError};

/// One version of a workflow definition.
#[derive(Serialize, ToSchema)]
pub(crate) struct WorkflowView {
    name: String,
    version: i64,
    created_at: i64,
    /// The definition, as stored (JSON).
    #[schema(value_type = Definition)]
    definition: Value,
}

impl From<WorkflowRecord> for WorkflowView {
    fn from(w: WorkflowRecord) -> WorkflowView {
        WorkflowView {
            name: w.name,
            version: w.version,
            created_at: w.created_at,
            definition: w.definition,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct WorkflowList {
    workflows: Vec<WorkflowView>,
}

/// Definitions up to this size are parsed on the request's own task; larger ones on a
/// blocking thread.
const PARSE_INLINE_BYTES: usize = 16 << 10;

/// Parses and validates a definition's text, with the answer the API gives for each failure.
fn parse_definition(body: &[u8]) -> Result<Definition, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("the definition is not UTF-8 text: {e}")))?;
    let definition = Definition::parse(text)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_definition", e.to_string()))?;
    let validated = definition.validate().map_err(|e| match e {
        DefinitionError::Invalid(_) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_workflow",
            e.to_string(),
        ),
        DefinitionError::Parse(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_definition", e.to_string())
        }
    })?;
    Ok(validated.definition)
}

/// Create a workflow, or a new version of it. Same definition as the latest version: 200 and
/// that version.
#[utoipa::path(
    post,
    path = "/workflows",
    operation_id = "createWorkflow",
    tag = "workflows",
    request_body(
        content = crate::workflow::Definition,
        description = "The definition, as JSON or YAML (`application/yaml`)",
        example = json!({"name": "wordcount", "nodes": [{"name": "split", "module": "splitter"}, {"name": "count", "module": "wordfreq", "needs": ["split"], "for_each": {"items": "/chunks", "concurrency": 4}}]})
    ),
    responses(
        (status = 201, description = "Stored as a new version", body = crate::http::openapi::WorkflowView),
        (status = 200, description = "Same as the latest version", body = crate::http::openapi::WorkflowView),
        (status = 400, description = "Not JSON or YAML, or not a definition", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Cycles, unknown needs or modules, bad conditions, duplicate names: each named", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<WorkflowView>), ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    // Parsing is linear in the text and bounded, but a large text still takes a while: off
    // the API's threads, so that it delays no other request.
    let definition = if body.len() > PARSE_INLINE_BYTES {
        tokio::task::spawn_blocking(move || parse_definition(&body))
            .await
            .map_err(ApiError::internal)??
    } else {
        parse_definition(&body)?
    };
    for module in definition.modules() {
        crate::service::storable("module", module)?;
    }
    state.workflows.check_nodes(&definition)?;
    let mut unknown = Vec::new();
    for module in definition.modules() {
        if state.service.store.get_module(module).await?.is_none() {
            unknown.push(format!("{module:?}"));
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_module",
            format!(
                "invalid workflow definition: unknown module{} {}: upload {} first (POST /v1/modules)",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", "),
                if unknown.len() == 1 { "it" } else { "them" },
            ),
        ));
    }
    let json = serde_json::to_string(&definition).map_err(ApiError::internal)?;
    if json.len() > state.config.max_definition_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the definition is {} bytes as stored (JSON): at most {} are allowed (max_definition_bytes)",
                json.len(),
                state.config.max_definition_bytes
            ),
        ));
    }
    let (record, created) = state
        .workflows
        .runs()
        .put_workflow(&definition.name, &json, now_ms())
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record.into())))
}

/// The latest version of every workflow.
#[utoipa::path(
    get,
    path = "/workflows",
    operation_id = "listWorkflows",
    tag = "workflows",
    responses(
        (status = 200, description = "The workflows", body = crate::http::openapi::WorkflowList),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<WorkflowList>, ApiError> {
    let all = state.workflows.runs().list_workflows().await?;
    Ok(Json(WorkflowList {
        workflows: all.into_iter().map(WorkflowView::from).collect(),
    }))
}

#[derive(Deserialize)]
pub(super) struct VersionQuery {
    version: Option<String>,
}

async fn find(
    state: &AppState,
    name: &str,
    version: Option<&str>,
) -> Result<WorkflowRecord, ApiError> {
    let version = version
        .map(|v| {
            v.parse::<i64>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "invalid version {v:?}: expected a positive integer"
                ))
            })
        })
        .transpose()?;
    state
        .workflows
        .runs()
        .get_workflow(name, version)
        .await?
        .ok_or_else(|| match version {
            Some(v) => ApiError::not_found(format!("workflow {name:?} has no version {v}")),
            None => ApiError::not_found(format!("workflow {name:?} not found")),
        })
}

/// One workflow: its latest version, or `?version=N`.
#[utoipa::path(
    get,
    path = "/workflows/{name}",
    operation_id = "getWorkflow",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name"),
        ("version" = Option<i64>, Query, minimum = 1, description = "A version (default: the latest)"),
    ),
    responses(
        (status = 200, description = "The workflow", body = crate::http::openapi::WorkflowView),
        (status = 400, description = "Bad version", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow or version", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<VersionQuery>,
) -> Result<Json<WorkflowView>, ApiError> {
    Ok(Json(
        find(&state, &name, q.version.as_deref()).await?.into(),
    ))
}

#[derive(Deserialize)]
pub(super) struct GraphQuery {
    version: Option<String>,
    format: Option<String>,
}

/// The workflow's graph as Mermaid (default) or Graphviz DOT text.
#[utoipa::path(
    get,
    path = "/workflows/{name}/graph",
    operation_id = "getWorkflowGraph",
    tag = "workflows",
    params(
        ("name" = String, Path, description = "The workflow's name"),
        ("version" = Option<i64>, Query, minimum = 1, description = "A version (default: the latest)"),
        ("format" = Option<String>, Query, description = "`mermaid` (default) or `dot`"),
    ),
    responses(
        (status = 200, description = "The graph", content_type = "text/plain", body = String),
        (status = 400, description = "Bad version or format", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such workflow or version", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn graph(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<GraphQuery>,
) -> Result<axum::response::Response, ApiError> {
    let format = q.format.as_deref().unwrap_or("mermaid");
    if !matches!(format, "mermaid" | "dot") {
        return Err(ApiError::bad_request(format!(
            "invalid format {format:?}: expected mermaid or dot"
        )));
    }
    let record = find(&state, &name, q.version.as_deref()).await?;
    let definition: Definition = serde_json::from_value(record.definition).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("stored definition: {e}"),
        )
    })?;
    let text = if format == "dot" {
        definition.dot()
    } else {
        definition.mermaid()
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}
