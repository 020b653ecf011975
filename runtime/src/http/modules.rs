//! `POST /v1/modules` (raw wasm), `GET /v1/modules`, `GET /v1/modules/{name-or-digest}`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wasmjobs_host::sha256_digest;

use super::{ApiError, AppState};
use crate::caller::Caller;
use crate::store::{ModuleRecord, NewModule, now_ms};

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    name: Option<String>,
}

/// A stored module.
#[derive(Serialize, ToSchema)]
pub(crate) struct ModuleView {
    /// `sha256:<hex>`
    digest: String,
    /// The name it was uploaded under (or its first name).
    name: Option<String>,
    names: Vec<String>,
    size: u64,
    /// `wasmjobs:job/job` or `wasi:cli/command`
    world: String,
    imports: Vec<String>,
    /// Milliseconds since the Unix epoch.
    created_at: i64,
}

impl ModuleView {
    /// `m` as the API shows it, under `name` (its first name without one).
    fn of(m: ModuleRecord, name: Option<String>) -> ModuleView {
        ModuleView {
            name: name.or_else(|| m.names.first().cloned()),
            digest: m.digest,
            names: m.names,
            size: m.size,
            world: m.world,
            imports: m.imports,
            created_at: m.created_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ModuleList {
    modules: Vec<ModuleView>,
}

/// Validates (and compiles) the component, then stores it. Same bytes again: `200` with the
/// same digest; new: `201`.
/// Upload a component. Same bytes again answer 200 with the same digest.
#[utoipa::path(
    post,
    path = "/modules",
    operation_id = "uploadModule",
    tag = "modules",
    params(("name" = Option<String>, Query, description = "A name to point at this digest (moves it if it pointed elsewhere; a name set by another token only an admin may move)")),
    request_body(content = crate::http::openapi::WasmBytes, content_type = "application/wasm", description = "The component's wasm bytes"),
    responses(
        (status = 201, description = "Stored", body = crate::http::openapi::ModuleView),
        (status = 200, description = "Already stored", body = crate::http::openapi::ModuleView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this, or the name was set by another token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 413, description = "Over the module size limit", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not wasm, a core module, another world, imports the policy never grants, or compiling took too long", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 507, description = "The module quota is reached", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<UploadQuery>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<ModuleView>), ApiError> {
    let body = body.map_err(super::error::body_rejection)?;
    if let Some(name) = &q.name
        && (name.is_empty()
            || name.len() > 128
            || name.starts_with("sha256:")
            || name.chars().any(|c| c.is_whitespace() || c.is_control()))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            format!(
                "invalid module name {name:?}: 1 to 128 characters, no spaces or control characters, not starting with sha256:"
            ),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "the request body is empty: send the component's wasm bytes",
        ));
    }
    let digest = sha256_digest(&body);
    check_quota(&state, &digest, body.len() as u64).await?;
    let module = compile(&state, &digest, body.clone()).await?;
    let info = module.info();
    let new = NewModule {
        digest: digest.clone(),
        world: info.world.as_str().to_string(),
        imports: info.imports.clone(),
        bytes: body.to_vec(),
        name: q.name.clone(),
        owner: caller.token.clone(),
        may_move: caller.is_admin(),
    };
    let (record, created) = state.service.store.put_module(new, now_ms()).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(ModuleView::of(record, q.name))))
}

/// Refuses an upload of new bytes once the store holds `max_modules` modules or
/// `max_stored_module_bytes` of them (`507`); the same bytes again are always accepted.
async fn check_quota(state: &AppState, digest: &str, size: u64) -> Result<(), ApiError> {
    let config = &state.config;
    let stored = state.service.store.list_modules().await?;
    if stored.iter().any(|m| m.digest == digest) {
        return Ok(());
    }
    let total: u64 = stored.iter().map(|m| m.size).sum();
    let refuse = |what: String| {
        Err(ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "module_quota",
            format!(
                "{what}: the module store is full; an operator can raise the quota ([modules] in wasmjobs.toml)"
            ),
        ))
    };
    if stored.len() >= config.max_modules {
        return refuse(format!(
            "{} modules are stored, the most allowed (max_modules = {})",
            stored.len(),
            config.max_modules
        ));
    }
    if total.saturating_add(size) > config.max_stored_module_bytes {
        return refuse(format!(
            "storing {size} more bytes would take the modules past max_stored_bytes = {} ({total} stored)",
            config.max_stored_module_bytes
        ));
    }
    Ok(())
}

/// Compiles an upload (or loads its cached artifact) with at most `max_concurrent_compiles`
/// compiles at once, refusing a module whose compile takes longer than `compile_timeout`.
/// A compile past its deadline goes on to its end in the background (compiling cannot be
/// interrupted) and keeps its permit until then, so slow uploads cannot pile up.
async fn compile(
    state: &AppState,
    digest: &str,
    bytes: Bytes,
) -> Result<std::sync::Arc<wasmjobs_host::JobModule>, ApiError> {
    let permit = state
        .compiles
        .clone()
        .acquire_owned()
        .await
        .map_err(ApiError::internal)?;
    let (modules, sandbox, digest2) = (
        state.modules.clone(),
        state.sandbox.clone(),
        digest.to_string(),
    );
    let task = tokio::spawn(async move {
        let _permit = permit;
        modules.insert(&sandbox, &digest2, bytes.to_vec()).await
    });
    let timeout = state.config.compile_timeout;
    match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "compile_timeout",
            format!(
                "compiling module {digest} took longer than the compile timeout of {}: it is refused",
                humantime::format_duration(timeout)
            ),
        )),
        Ok(Err(e)) => Err(ApiError::internal(format!("compiling {digest}: {e}"))),
        Ok(Ok(loaded)) => {
            loaded.map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_module", e))
        }
    }
}

/// Every stored module.
#[utoipa::path(
    get,
    path = "/modules",
    operation_id = "listModules",
    tag = "modules",
    responses(
        (status = 200, description = "The modules", body = crate::http::openapi::ModuleList),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<ModuleList>, ApiError> {
    let modules = state.service.store.list_modules().await?;
    Ok(Json(ModuleList {
        modules: modules
            .into_iter()
            .map(|m| ModuleView::of(m, None))
            .collect(),
    }))
}

/// One module by name or digest.
#[utoipa::path(
    get,
    path = "/modules/{key}",
    operation_id = "getModule",
    tag = "modules",
    params(("key" = String, Path, description = "A module name or `sha256:…` digest")),
    responses(
        (status = 200, description = "The module", body = crate::http::openapi::ModuleView),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such module", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn get(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<ModuleView>, ApiError> {
    let m = state
        .service
        .store
        .get_module(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("module {key:?} not found")))?;
    Ok(Json(ModuleView::of(m, None)))
}

/// The module's wasm bytes (for `wasmjobs job replay` and for mirroring).
/// The module's wasm bytes (what `wasmjobs job replay` runs).
#[utoipa::path(
    get,
    path = "/modules/{key}/wasm",
    operation_id = "getModuleWasm",
    tag = "modules",
    params(("key" = String, Path, description = "A module name or `sha256:…` digest")),
    responses(
        (status = 200, description = "The wasm bytes", content_type = "application/wasm", body = crate::http::openapi::WasmBytes),
        (status = 400, description = "Bad request", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No or unknown bearer token", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token's scope does not allow this", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such module", body = crate::http::openapi::Problem, content_type = "application/problem+json"),
    )
)]
pub(super) async fn wasm(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<([(axum::http::HeaderName, &'static str); 1], Vec<u8>), ApiError> {
    let store = &state.service.store;
    let m = store
        .get_module(&key)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("module {key:?} not found")))?;
    let bytes = store
        .module_bytes(&m.digest)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("module {key:?} has no bytes")))?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/wasm")],
        bytes,
    ))
}
