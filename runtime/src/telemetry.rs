//! Metrics: what the node and the API count and time, through the `metrics` facade where it
//! happens, rendered in Prometheus's text format at `GET /metrics` by the exporter installed
//! here (once per process). Label values stay few: outcomes, trap kinds, route templates,
//! methods and statuses, never an id, and a module (its digest) only when the operator opts
//! in ([`set_module_labels`]).
//!
//! Every metric's name and help is in [`describe`], so the list in `docs/observability.md`
//! has one source.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Attempts finished, by `outcome` and `trap` (`none` unless trapped).
pub const ATTEMPTS: &str = "wasmjobs_attempts_total";
/// Wall time of each attempt, in seconds.
pub const ATTEMPT_SECONDS: &str = "wasmjobs_attempt_duration_seconds";
/// Fuel each attempt consumed.
pub const ATTEMPT_FUEL: &str = "wasmjobs_attempt_fuel";
/// Peak memory of each attempt, in bytes.
pub const ATTEMPT_MEMORY: &str = "wasmjobs_attempt_peak_memory_bytes";
/// Jobs this node took off the queue.
pub const CLAIMED: &str = "wasmjobs_jobs_claimed_total";
/// Attempts of dead nodes this node recorded `lost` and put back.
pub const RESCUED: &str = "wasmjobs_leases_rescued_total";
/// Jobs whose attempt failed and that will be tried again.
pub const RETRIES: &str = "wasmjobs_retries_scheduled_total";
/// This node's slots: how many there are, and how many run an attempt now.
pub const SLOTS: &str = "wasmjobs_slots";
pub const SLOTS_BUSY: &str = "wasmjobs_slots_busy";
/// Jobs this node ended, by final `state`: by an attempt, a cancel while waiting, or a
/// deadline passed in the queue.
pub const JOBS_ENDED: &str = "wasmjobs_jobs_ended_total";
/// Time from a job becoming ready (submitted, due, or its backoff over) to its attempt's start.
pub const QUEUE_WAIT: &str = "wasmjobs_queue_wait_seconds";
/// Time from a job's submission to its end, for jobs an attempt of this node ended.
pub const END_TO_END: &str = "wasmjobs_job_end_to_end_seconds";
/// Time to instantiate a component for an attempt.
pub const INSTANTIATE: &str = "wasmjobs_instantiate_duration_seconds";
/// Workflow runs this node's engine ended, by final `state`.
pub const RUNS_ENDED: &str = "wasmjobs_workflow_runs_ended_total";
/// Time from a workflow node's start to its end, by final `state`.
pub const NODE_SECONDS: &str = "wasmjobs_workflow_node_duration_seconds";
/// HTTP requests, by `method`, `route` (its template, e.g. `/v1/jobs/{id}`) and `status`.
pub const HTTP_REQUESTS: &str = "wasmjobs_http_requests_total";
/// Time to answer an HTTP request (to its first byte), by `method` and `route`, in seconds.
pub const HTTP_SECONDS: &str = "wasmjobs_http_request_duration_seconds";
/// Webhook calls this node made, by what followed (`delivered`, `retry`, `dead`).
pub const WEBHOOK_CALLS: &str = "wasmjobs_webhook_calls_total";

/// Buckets of the time histograms, in seconds: 1 ms to 5 min.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// Buckets of fuel: 10⁴ to 10¹¹ instructions.
const FUEL: &[f64] = &[1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11];
/// Buckets of memory: 64 KiB to 4 GiB.
const BYTES: &[f64] = &[
    65_536.0,
    1_048_576.0,
    16_777_216.0,
    67_108_864.0,
    268_435_456.0,
    1_073_741_824.0,
    4_294_967_296.0,
];

/// The exporter's handle: installed on first use, with its upkeep task (which must run inside
/// a tokio runtime). `None` when another recorder was installed first (an embedder's own).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(ATTEMPT_FUEL.into()), FUEL))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(ATTEMPT_MEMORY.into()), BYTES)
                });
            let handle = match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => handle,
                Err(e) => {
                    tracing::warn!("metrics are off: {e}");
                    return None;
                }
            };
            describe();
            let _ = HANDLES.set(Handles::new());
            // Histogram samples wait in the recorder until drained: drain them even when
            // nobody scrapes.
            let upkeep = handle.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    loop {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        upkeep.run_upkeep();
                    }
                });
            }
            Some(handle)
        })
        .as_ref()
}

/// This process's counters and histograms in Prometheus's text format (nothing when another
/// recorder was installed first).
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

/// The metrics recorded for every job, registered once: looking a metric up by name and labels
/// at each record costs a hash and a lock, several times per attempt. Set when the exporter is
/// installed; without it, nothing is recorded.
static HANDLES: OnceLock<Handles> = OnceLock::new();

struct Handles {
    /// By `Outcome::ALL`'s order, with `trap="none"`.
    attempts: Vec<Counter>,
    attempt_seconds: Histogram,
    attempt_fuel: Histogram,
    attempt_memory: Histogram,
    claimed: Counter,
    /// By `JobState::ALL`'s order (the final states are counted).
    ended: Vec<Counter>,
    queue_wait: Histogram,
    end_to_end: Histogram,
    instantiate: Histogram,
    rescued: Counter,
    retries: Counter,
    slots: Gauge,
    slots_busy: Gauge,
}

impl Handles {
    fn new() -> Handles {
        Handles {
            attempts: wasmjobs_host::Outcome::ALL
                .iter()
                .map(|o| counter!(ATTEMPTS, "outcome" => o.as_str(), "trap" => "none"))
                .collect(),
            attempt_seconds: histogram!(ATTEMPT_SECONDS),
            attempt_fuel: histogram!(ATTEMPT_FUEL),
            attempt_memory: histogram!(ATTEMPT_MEMORY),
            claimed: counter!(CLAIMED),
            ended: crate::store::JobState::ALL
                .iter()
                .map(|s| counter!(JOBS_ENDED, "state" => s.as_str()))
                .collect(),
            queue_wait: histogram!(QUEUE_WAIT),
            end_to_end: histogram!(END_TO_END),
            instantiate: histogram!(INSTANTIATE),
            rescued: counter!(RESCUED),
            retries: counter!(RETRIES),
            slots: gauge!(SLOTS),
            slots_busy: gauge!(SLOTS_BUSY),
        }
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(ATTEMPTS, "Attempts finished, by outcome and trap kind.");
    describe_histogram!(ATTEMPT_SECONDS, Unit::Seconds, "Wall time of each attempt.");
    describe_histogram!(ATTEMPT_FUEL, "Fuel each attempt consumed (instructions).");
    describe_histogram!(ATTEMPT_MEMORY, Unit::Bytes, "Peak memory of each attempt.");
    describe_counter!(CLAIMED, "Jobs this node took off the queue.");
    describe_counter!(
        WEBHOOK_CALLS,
        "Webhook calls this node made, by what followed (delivered, retry, dead)."
    );
    describe_counter!(
        RESCUED,
        "Attempts of dead nodes recorded lost and put back by this node."
    );
    describe_counter!(
        RETRIES,
        "Jobs whose attempt failed and that will be tried again."
    );
    describe_counter!(
        JOBS_ENDED,
        "Jobs this node ended, by final state (by an attempt, a cancel while waiting, or a deadline passed in the queue)."
    );
    describe_histogram!(
        QUEUE_WAIT,
        Unit::Seconds,
        "Time from a job becoming ready to its attempt's start."
    );
    describe_histogram!(
        END_TO_END,
        Unit::Seconds,
        "Time from a job's submission to its end, for jobs an attempt of this node ended."
    );
    describe_histogram!(
        INSTANTIATE,
        Unit::Seconds,
        "Time to instantiate a component for an attempt."
    );
    describe_counter!(
        RUNS_ENDED,
        "Workflow runs this node's engine ended, by final state."
    );
    describe_histogram!(
        NODE_SECONDS,
        Unit::Seconds,
        "Time from a workflow node's start to its end, by final state."
    );
    describe_gauge!(SLOTS, "Attempts this node runs at once at most.");
    describe_gauge!(SLOTS_BUSY, "Attempts this node runs now.");
    describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests, by method, route template and status."
    );
    describe_histogram!(
        HTTP_SECONDS,
        Unit::Seconds,
        "Time to answer an HTTP request."
    );
}

/// Whether the attempt metrics carry a `module` label (the digest): off unless the operator
/// opts in (`[metrics] module_labels`), since every module then makes series of its own.
static MODULE_LABELS: AtomicBool = AtomicBool::new(false);

/// Turns the attempt metrics' `module` label on or off (once, at start).
pub fn set_module_labels(on: bool) {
    MODULE_LABELS.store(on, Ordering::Relaxed);
}

/// An attempt of a module (its digest) ended; its instantiation time is recorded only when an
/// instance was made.
pub fn attempt_finished(module: &str, report: &wasmjobs_host::AttemptReport) {
    let Some(h) = HANDLES.get() else { return };
    let outcome = report.outcome;
    let trap = report.trap.map(|t| t.as_str());
    let (wall, fuel, memory) = (
        report.wall_time.as_secs_f64(),
        report.fuel_consumed as f64,
        report.peak_memory_bytes as f64,
    );
    if !report.instantiate_time.is_zero() {
        h.instantiate.record(report.instantiate_time.as_secs_f64());
    }
    if MODULE_LABELS.load(Ordering::Relaxed) {
        let module = module.to_string();
        counter!(ATTEMPTS, "outcome" => outcome.as_str(), "trap" => trap.unwrap_or("none"), "module" => module.clone())
            .increment(1);
        histogram!(ATTEMPT_SECONDS, "module" => module.clone()).record(wall);
        histogram!(ATTEMPT_FUEL, "module" => module.clone()).record(fuel);
        histogram!(ATTEMPT_MEMORY, "module" => module).record(memory);
        return;
    }
    let known = wasmjobs_host::Outcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .and_then(|i| h.attempts.get(i));
    match (trap, known) {
        (None, Some(attempts)) => attempts.increment(1),
        // Traps are few: their counters are looked up by label.
        (trap, _) => {
            counter!(ATTEMPTS, "outcome" => outcome.as_str(), "trap" => trap.unwrap_or("none"))
                .increment(1)
        }
    }
    h.attempt_seconds.record(wall);
    h.attempt_fuel.record(fuel);
    h.attempt_memory.record(memory);
}

/// An attempt started `waited_ms` after its job became ready.
pub fn queue_wait(waited_ms: i64) {
    if let Some(h) = HANDLES.get() {
        h.queue_wait.record(seconds(waited_ms));
    }
}

/// A job ended in `state`; `took_ms` (submission to end) when an attempt ended it. Also
/// tallied for the node's activity report ([`crate::activity`]).
pub fn job_ended(state: crate::store::JobState, took_ms: Option<i64>) {
    crate::activity::job_ended(state);
    let Some(h) = HANDLES.get() else { return };
    if let Some(c) = crate::store::JobState::ALL
        .iter()
        .position(|s| *s == state)
        .and_then(|i| h.ended.get(i))
    {
        c.increment(1);
    }
    if let Some(ms) = took_ms {
        h.end_to_end.record(seconds(ms));
    }
}

/// A job that was waiting ended without an attempt (cancelled while waiting, or its deadline
/// passed in the queue): logged at info, as the ends of attempts are, and counted.
pub fn job_ended_waiting(id: i64, state: crate::store::JobState, why: &str) {
    tracing::info!(job = id, error = why, "job {id} ended {state}: {why}");
    job_ended(state, None);
}

/// A workflow run this node's engine stepped ended.
pub fn run_ended(state: crate::store::RunState) {
    if HANDLES.get().is_some() {
        counter!(RUNS_ENDED, "state" => state.as_str()).increment(1);
    }
}

/// A workflow node ended in `state` after `took_ms`.
pub fn node_ended(state: crate::store::NodeState, took_ms: i64) {
    if HANDLES.get().is_some() {
        histogram!(NODE_SECONDS, "state" => state.as_str()).record(seconds(took_ms));
    }
}

/// Milliseconds as seconds, never negative (clocks of two nodes may disagree a little).
fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// A node's slots, at its start.
pub fn slots(total: usize) {
    crate::activity::slots(total);
    if let Some(h) = HANDLES.get() {
        h.slots.set(total as f64);
    }
}

/// An attempt took (`+1`) or gave back (`-1`) a slot.
pub fn slot_busy(delta: i64) {
    crate::activity::slot_busy(delta);
    if let Some(h) = HANDLES.get() {
        h.slots_busy.increment(delta as f64);
    }
}

/// Jobs claimed by this node.
pub fn claimed(n: usize) {
    if let Some(h) = HANDLES.get() {
        h.claimed.increment(n as u64);
    }
}

/// Attempts of dead nodes rescued by this node.
pub fn rescued(n: u64) {
    if let Some(h) = HANDLES.get() {
        h.rescued.increment(n);
    }
}

/// Retries scheduled after failed attempts.
pub fn retries(n: u64) {
    if n > 0
        && let Some(h) = HANDLES.get()
    {
        h.retries.increment(n);
    }
}

/// A webhook call made: `after` is `delivered`, `retry` or `dead`.
pub fn webhook_call(after: &'static str) {
    counter!(WEBHOOK_CALLS, "after" => after).increment(1);
}

/// An HTTP request answered.
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS, "method" => method.to_string(), "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_SECONDS, "method" => method.to_string(), "route" => route.to_string())
        .record(took.as_secs_f64());
}

/// OpenTelemetry export of the spans (`http_request`, `attempt`, `workflow_step`, with their
/// fields as attributes) over OTLP/HTTP (protobuf), configured by the standard variables:
/// on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set
/// (`OTEL_SERVICE_NAME` defaults to `wasmjobs`; `OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_BSP_SCHEDULE_DELAY` and the rest as the SDK reads them).
#[cfg(feature = "otlp")]
pub mod otlp {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::Layer;

    /// Whether the environment asks for export.
    pub fn wanted() -> bool {
        [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
    }

    /// The exporter (its batch processor runs on a thread of its own, so this must be called
    /// outside any async runtime) and the layer that feeds it wasmjobs's spans, at debug and
    /// above whatever `WASMJOBS_LOG` says. Shut the provider down before exiting: it sends
    /// what it still holds.
    pub fn layer<S>()
    -> anyhow::Result<(SdkTracerProvider, Box<dyn Layer<S> + Send + Sync + 'static>)>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .build()?;
        let mut resource = opentelemetry_sdk::Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("wasmjobs");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let tracer = provider.tracer("wasmjobs");
        let only_ours = tracing_subscriber::filter::Targets::new()
            .with_target("wasmjobs", tracing::Level::DEBUG);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(only_ours)
            .boxed();
        Ok((provider, layer))
    }
}
