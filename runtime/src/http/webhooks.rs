//! `POST /v1/webhooks`, `GET /v1/webhooks`, `GET|PATCH|DELETE /v1/webhooks/{id}`,
//! `GET /v1/webhooks/{id}/deliveries`, `POST /v1/webhooks/{id}/deliveries/{delivery}/redeliver`
//! (docs/events.md).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::jobs::parse_id;
use super::{ApiError, AppState};
use crate::store::events::{
    Delivery, DeliveryCall, DeliveryFilter, DeliveryState, NewWebhook, Webhook, WebhookPatch,
};
use crate::store::now_ms;

/// Longest text a webhook's description may be.
const MAX_DESCRIPTION: usize = 1000;
/// Longest URL a webhook may have.
const MAX_URL: usize = 2048;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookRequest {
    /// Where the events are sent: an `http` or `https` URL (private, loopback and link-local
    /// addresses are refused unless the server allows them).
    url: String,
    /// The event types to send: `job.<state>` (`job.succeeded`, `job.failed`, …), `run.<state>`,
    /// or `job.*` / `run.*` for all of a kind.
    events: Vec<String>,
    /// Only jobs of this module (a name, as it points now, or a `sha256:` digest).
    module: Option<String>,
    /// Only jobs and runs of this workflow.
    workflow: Option<String>,
    /// Only jobs of this queue.
    queue: Option<String>,
    description: Option<String>,
    /// Put the job's output in the payloads of its events (up to `[webhooks]
    /// max_output_bytes`). Default false.
    #[serde(default)]
    include_output: bool,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookUpdate {
    url: Option<String>,
    events: Option<Vec<String>>,
    description: Option<String>,
    include_output: Option<bool>,
    /// Enable or disable it. Enabling one that was disabled for failing starts it afresh.
    enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookView {
    id: i64,
    url: String,
    events: Vec<String>,
    module: Option<String>,
    workflow: Option<String>,
    queue: Option<String>,
    description: Option<String>,
    include_output: bool,
    enabled: bool,
    /// Why it was disabled, when the server disabled it for failing.
    disabled_reason: Option<String>,
    /// Its deliveries have all failed since then (ms since the epoch).
    failing_since: Option<i64>,
    created_at: i64,
    updated_at: i64,
    /// The signing secret (`whsec_…`): in the answer to its creation only.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl WebhookView {
    fn of(w: Webhook, with_secret: bool) -> WebhookView {
        WebhookView {
            id: w.id,
            url: w.url,
            events: w.events,
            module: w.module,
            workflow: w.workflow,
            queue: w.queue,
            description: w.description,
            include_output: w.include_output,
            enabled: w.enabled,
            disabled_reason: w.disabled_reason,
            failing_since: w.failing_since,
            created_at: w.created_at,
            updated_at: w.updated_at,
            secret: with_secret.then_some(w.secret),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct WebhookList {
    webhooks: Vec<WebhookView>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryView {
    id: i64,
    webhook: i64,
    /// The event's id, as sent in `webhook-id`: the same at every call and redelivery.
    event_id: String,
    /// `job.succeeded`, `run.failed`, ….
    event_type: String,
    state: DeliveryState,
    /// Calls made so far.
    attempts: i64,
    /// When a pending delivery is next due (ms since the epoch).
    next_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    /// Each call: its response's status, latency and error.
    calls: Vec<DeliveryCall>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id,
            webhook: d.webhook_id,
            event_id: crate::events::event_id(d.event_id),
            event_type: d.event_type,
            state: d.state,
            attempts: d.attempts,
            next_at: (d.state == DeliveryState::Pending).then_some(d.next_at),
            created_at: d.created_at,
            updated_at: d.updated_at,
            calls: d.calls,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct DeliveryList {
    deliveries: Vec<DeliveryView>,
    /// Pass as `cursor` for the next page; none on the last.
    next_cursor: Option<String>,
}

fn invalid(field: &str, m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", m).at(field)
}

fn check_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    if url.len() > MAX_URL {
        return Err(invalid(
            "url",
            format!("url is longer than {MAX_URL} bytes"),
        ));
    }
    crate::events::target::check_url(url, state.config.allow_private_webhook_targets)
        .map(|_| ())
        .map_err(|m| invalid("url", m))
}

fn check_text(field: &str, text: &str, max: usize) -> Result<(), ApiError> {
    crate::service::storable(field, text).map_err(|e| invalid(field, e.to_string()))?;
    if text.is_empty() || text.len() > max {
        return Err(invalid(field, format!("{field} must be 1 to {max} bytes")));
    }
    Ok(())
}

/// Create a webhook. The answer holds its signing secret, shown this once.
#[utoipa::path(
    post,
    path = "/webhooks",
    operation_id = "createWebhook",
    tag = "webhooks",
    request_body(
        content = WebhookRequest,
        example = json!({"url": "https://example.com/hooks/wasmjobs", "events": ["job.failed", "run.*"], "description": "alerts"})
    ),
    responses(
        (status = 201, description = "Created; `secret` is shown only here", body = crate::http::openapi::WebhookView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad URL (or a private target), an unknown event type, or a bad filter", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn create(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    super::error::require_json(&headers)?;
    let req: WebhookRequest = super::error::parse_json(&body)?;
    check_url(&state, &req.url)?;
    let events = crate::events::check_events(&req.events).map_err(|m| invalid("events", m))?;
    for (field, value) in [
        ("module", &req.module),
        ("workflow", &req.workflow),
        ("queue", &req.queue),
    ] {
        if let Some(v) = value {
            check_text(field, v, 200)?;
        }
    }
    if let Some(q) = &req.queue {
        crate::store::queues::check_queue_name(q).map_err(|m| invalid("queue", m))?;
    }
    if let Some(d) = &req.description {
        check_text("description", d, MAX_DESCRIPTION)?;
    }
    let secret = crate::events::new_secret().map_err(ApiError::internal)?;
    let webhook = state
        .service
        .store
        .create_webhook(
            NewWebhook {
                url: req.url,
                events,
                module: req.module,
                workflow: req.workflow,
                queue: req.queue,
                description: req.description,
                include_output: req.include_output,
                secret,
            },
            now_ms(),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(WebhookView::of(webhook, true))))
}

/// Every webhook, by id (without their secrets).
#[utoipa::path(
    get,
    path = "/webhooks",
    operation_id = "listWebhooks",
    tag = "webhooks",
    responses(
        (status = 200, description = "The webhooks", body = crate::http::openapi::WebhookList),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<WebhookList>, ApiError> {
    let webhooks = state.service.store.webhooks().await?;
    Ok(Json(WebhookList {
        webhooks: webhooks
            .into_iter()
            .map(|w| WebhookView::of(w, false))
            .collect(),
    }))
}

async fn find(state: &AppState, id: &str) -> Result<Webhook, ApiError> {
    let id = parse_id("webhook", id)?;
    state
        .service
        .store
        .webhook(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("webhook {id} not found")))
}

/// A webhook (without its secret).
#[utoipa::path(
    get,
    path = "/webhooks/{id}",
    operation_id = "getWebhook",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The webhook's id")),
    responses(
        (status = 200, description = "The webhook", body = crate::http::openapi::WebhookView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(WebhookView::of(find(&state, &id).await?, false)))
}

/// Change a webhook: its URL, events, description, whether payloads carry outputs, and
/// whether it is enabled.
#[utoipa::path(
    patch,
    path = "/webhooks/{id}",
    operation_id = "updateWebhook",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The webhook's id")),
    request_body(content = WebhookUpdate, example = json!({"enabled": false})),
    responses(
        (status = 200, description = "The webhook as changed", body = crate::http::openapi::WebhookView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over the size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "A bad URL or event type", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<WebhookView>, ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    super::error::require_json(&headers)?;
    let req: WebhookUpdate = super::error::parse_json(&body)?;
    let webhook = find(&state, &id).await?;
    if let Some(url) = &req.url {
        check_url(&state, url)?;
    }
    let events = match &req.events {
        Some(e) => Some(crate::events::check_events(e).map_err(|m| invalid("events", m))?),
        None => None,
    };
    if let Some(d) = &req.description {
        check_text("description", d, MAX_DESCRIPTION)?;
    }
    let changed = webhook.patched(
        WebhookPatch {
            url: req.url,
            events,
            description: req.description,
            include_output: req.include_output,
            enabled: req.enabled,
        },
        now_ms(),
    );
    if !state.service.store.update_webhook(&changed).await? {
        return Err(ApiError::not_found(format!(
            "webhook {} not found",
            changed.id
        )));
    }
    Ok(Json(WebhookView::of(changed, false)))
}

/// Delete a webhook and its deliveries.
#[utoipa::path(
    delete,
    path = "/webhooks/{id}",
    operation_id = "deleteWebhook",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The webhook's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("webhook", &id)?;
    if state.service.store.delete_webhook(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("webhook {id} not found")))
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DeliveryQuery {
    /// Only deliveries in this state: `pending`, `delivered` or `dead`.
    state: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A webhook's deliveries, newest first, each with its calls.
#[utoipa::path(
    get,
    path = "/webhooks/{id}/deliveries",
    operation_id = "listWebhookDeliveries",
    tag = "webhooks",
    params(("id" = i64, Path, description = "The webhook's id"), DeliveryQuery),
    responses(
        (status = 200, description = "The deliveries", body = crate::http::openapi::DeliveryList),
        (status = 400, description = "Bad request (a bad state, limit or cursor)", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn deliveries(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<DeliveryQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let webhook = find(&state, &id).await?;
    let filter = DeliveryFilter {
        state: q
            .state
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(|m: String| ApiError::bad_request(m).at("state"))?,
        before: super::page_cursor(q.cursor.as_deref())?,
        limit: super::page_limit(q.limit.as_deref())?,
    };
    let found = state.service.store.deliveries(webhook.id, &filter).await?;
    let next_cursor = (found.len() == filter.limit as usize)
        .then(|| found.last().map(|d| d.id.to_string()))
        .flatten();
    Ok(Json(DeliveryList {
        deliveries: found.into_iter().map(DeliveryView::from).collect(),
        next_cursor,
    }))
}

/// Send a delivery again (a dead one, say): pending, due now, with a new retry period. The
/// receiver sees the same event id.
#[utoipa::path(
    post,
    path = "/webhooks/{id}/deliveries/{delivery}/redeliver",
    operation_id = "redeliverWebhookDelivery",
    tag = "webhooks",
    params(
        ("id" = i64, Path, description = "The webhook's id"),
        ("delivery" = i64, Path, description = "The delivery's id"),
    ),
    responses(
        (status = 202, description = "Pending again", body = crate::http::openapi::DeliveryView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such webhook or delivery", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn redeliver(
    State(state): State<AppState>,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<(StatusCode, Json<DeliveryView>), ApiError> {
    let webhook = find(&state, &id).await?;
    let delivery = parse_id("delivery", &delivery)?;
    let d = state
        .service
        .store
        .redeliver(webhook.id, delivery, now_ms())
        .await?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "delivery {delivery} of webhook {} not found",
                webhook.id
            ))
        })?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryView::from(d))))
}
