//! Metrics: what the node and the API count and time, through the `metrics` facade where it
//! happens, rendered in Prometheus's text format at `GET /metrics` by the exporter installed
//! here (once per process). Label values stay few: outcomes, trap kinds, route templates,
//! methods and statuses, never an id or a module.
//!
//! Every metric's name and help is in [`describe`], so the list in `docs/observability.md`
//! has one source.

use std::sync::OnceLock;
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
/// HTTP requests, by `method`, `route` (its template, e.g. `/v1/jobs/{id}`) and `status`.
pub const HTTP_REQUESTS: &str = "wasmjobs_http_requests_total";
/// Time to answer an HTTP request (to its first byte), by `method` and `route`, in seconds.
pub const HTTP_SECONDS: &str = "wasmjobs_http_request_duration_seconds";

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
        RESCUED,
        "Attempts of dead nodes recorded lost and put back by this node."
    );
    describe_counter!(
        RETRIES,
        "Jobs whose attempt failed and that will be tried again."
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

/// An attempt ended.
pub fn attempt_finished(
    outcome: wasmjobs_host::Outcome,
    trap: Option<&str>,
    wall: Duration,
    fuel: u64,
    peak_memory: u64,
) {
    let Some(h) = HANDLES.get() else { return };
    let known = wasmjobs_host::Outcome::ALL
        .iter()
        .position(|o| *o == outcome)
        .and_then(|i| h.attempts.get(i));
    match (trap, known) {
        (None, Some(attempts)) => attempts.increment(1),
        // Traps are few: their counters are looked up by label.
        (trap, _) => counter!(ATTEMPTS, "outcome" => outcome.as_str(), "trap" => trap.unwrap_or("none").to_string())
            .increment(1),
    }
    h.attempt_seconds.record(wall.as_secs_f64());
    h.attempt_fuel.record(fuel as f64);
    h.attempt_memory.record(peak_memory as f64);
}

/// A node's slots, at its start.
pub fn slots(total: usize) {
    if let Some(h) = HANDLES.get() {
        h.slots.set(total as f64);
    }
}

/// An attempt took (`+1`) or gave back (`-1`) a slot.
pub fn slot_busy(delta: f64) {
    if let Some(h) = HANDLES.get() {
        h.slots_busy.increment(delta);
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

/// An HTTP request answered.
pub fn http_request(method: &str, route: &str, status: u16, took: Duration) {
    counter!(HTTP_REQUESTS, "method" => method.to_string(), "route" => route.to_string(), "status" => status.to_string())
        .increment(1);
    histogram!(HTTP_SECONDS, "method" => method.to_string(), "route" => route.to_string())
        .record(took.as_secs_f64());
}
