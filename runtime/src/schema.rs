//! OpenAPI schemas of the values the API shares with the services, whose types cannot describe
//! themselves: `wasmjobs-host`'s `Limits` and `Grants` (that crate does not depend on utoipa)
//! and the retry policy, whose sizes and durations parse from several forms. The request types
//! that carry them (`service::SubmitJob`, `workflow::Node`) and the API's document
//! (`http/openapi.rs`) both point here, so the services never depend on `http`.
//!
//! These types are never built: the document derives from them.
#![allow(dead_code)]

use std::collections::BTreeMap;

use utoipa::ToSchema;

/// How an attempt ended.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum OutcomeDoc {
    Succeeded,
    Failed,
    Trapped,
    OutOfFuel,
    TimedOut,
    OutOfMemory,
    OutputTooLarge,
    Cancelled,
    Lost,
}

/// Which wasm trap ended a `trapped` attempt.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum TrapKindDoc {
    Unreachable,
    StackOverflow,
    MemoryOutOfBounds,
    TableOutOfBounds,
    IndirectCallToNull,
    BadSignature,
    IntegerOverflow,
    IntegerDivisionByZero,
    BadConversionToInteger,
    HeapMisaligned,
    NullReference,
    ComponentModel,
    Other,
}

/// A size: bytes, or text such as `"64MiB"`.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum SizeDoc {
    Bytes(u64),
    Text(String),
}

/// A duration: milliseconds, or text such as `"5s"`.
#[derive(ToSchema, serde::Serialize)]
#[serde(untagged)]
pub(crate) enum DurationDoc {
    Millis(u64),
    Text(String),
}

/// Limits of one attempt; each omitted field takes the server's default.
#[derive(ToSchema)]
pub(crate) struct LimitsDoc {
    fuel: Option<u64>,
    memory_bytes: Option<SizeDoc>,
    timeout_ms: Option<DurationDoc>,
    max_output_bytes: Option<SizeDoc>,
    max_log_bytes: Option<SizeDoc>,
}

/// The retry policy.
#[derive(ToSchema)]
pub(crate) struct RetryDoc {
    max_attempts: Option<u32>,
    /// Attempts that may end `lost` (a node died) before the job fails; default 5. They do
    /// not count in `max_attempts`.
    max_lost: Option<u32>,
    initial_backoff_ms: Option<DurationDoc>,
    multiplier: Option<f64>,
    max_backoff_ms: Option<DurationDoc>,
    /// 0 to 1.
    jitter: Option<f64>,
    /// The outcomes that are retried; default: all but the deterministic ones
    /// (`out_of_fuel`, `out_of_memory`, `output_too_large`) and `cancelled`.
    retry_on: Option<Vec<OutcomeDoc>>,
    /// Of `trapped` attempts, retry only those that ended in one of these traps; default all.
    retry_on_traps: Option<Vec<TrapKindDoc>>,
}

#[derive(ToSchema)]
pub(crate) struct DirGrantDoc {
    host: String,
    guest: String,
    writable: Option<bool>,
}

/// Directories and environment variables the job may see.
#[derive(ToSchema)]
pub(crate) struct GrantsDoc {
    dirs: Option<Vec<DirGrantDoc>>,
    env: Option<BTreeMap<String, String>>,
}

/// A job's state (docs/state-machine.md).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub(crate) enum JobStateDoc {
    Scheduled,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}
