//! One attempt: runs a claimed job in the sandbox, streams its live events, and hands its
//! completion to the completer.

use super::*;

/// How often a running attempt's live events (logs, progress) are written, at most.
const EVENT_FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Runs one claimed attempt (on the guest runtime) and hands its completion to the completer,
/// in a span with the job, attempt and module, and, once it ended, its outcome and fuel.
pub(super) async fn run_attempt(s: &Arc<Shared>, job: Claimed, cancel: CancelHandle) {
    let span = tracing::debug_span!(
        "attempt",
        job = job.id,
        attempt = job.attempt,
        module = %job.module_digest,
        outcome = tracing::field::Empty,
        fuel = tracing::field::Empty,
    );
    tracing::Instrument::instrument(attempt(s, job, cancel), span).await;
}

async fn attempt(s: &Arc<Shared>, job: Claimed, cancel: CancelHandle) {
    let _busy = BusySlot::take();
    let started = now_ms();
    crate::telemetry::queue_wait(job.started_at - job.ready_at);
    let buffered: Arc<Mutex<live::LiveEvents>> = Arc::default();
    // Rung when the buffer gets its first event: most attempts log nothing, and wait on no
    // timer.
    let bell = Arc::new(Notify::new());
    let (sink, ring) = (buffered.clone(), bell.clone());
    let events = Arc::new(move |e: Event| {
        if lock(&sink).push(e) {
            ring.notify_one();
        }
    });

    let queue = job.queue.clone();
    let mut limits: Limits = job.limits;
    if let Some(deadline) = job.deadline_at {
        let left = Duration::from_millis(u64::try_from(deadline - started).unwrap_or(0));
        limits.timeout = limits.timeout.min(left);
    }
    // (A job whose input is another job's output got that output from its claim.)
    let module = match s.modules.loaded(&job.module_digest) {
        Some(module) => Ok(module),
        None => {
            let (s2, digest) = (s.clone(), job.module_digest.clone());
            s.main
                .spawn(async move { s2.modules.get(&*s2.store, &s2.sandbox, &digest).await })
                .await
                .unwrap_or_else(|e| Err(format!("loading the module failed: {e}")))
        }
    };
    // The job was admitted under the policy of its day: it runs only if today's allows it too.
    let module = module.and_then(|m| {
        s.policy
            .recheck(&job.limits, &job.grants, &s.allowed_dirs)
            .map(|()| m)
            .map_err(|e| format!("refused by the admission policy in force: {e}"))
    });
    let report = match module {
        Ok(module) => {
            let req = RunRequest::new(job.input)
                .limits(limits)
                .grants(job.grants.clone())
                .cancel(cancel.clone())
                .confine_dirs(s.allowed_dirs.clone())
                .events(events);
            let run = std::panic::AssertUnwindSafe(async {
                let started = std::time::Instant::now();
                let report = s.sandbox.run(&module, req).await;
                let took = started.elapsed();
                attempt_took(&s.attempt_us, took);
                queue_attempt_took(s, &queue, took);
                report
            })
            .catch_unwind();
            // Flush live events while the attempt runs, so followers see logs as they happen:
            // one write at a time, so the history keeps their order, and beside the attempt,
            // which goes on running while a write waits on the database.
            tokio::pin!(run);
            let mut writing: Option<tokio::task::JoinHandle<()>> = None;
            let report = loop {
                let flush_due = async {
                    bell.notified().await;
                    tokio::time::sleep(EVENT_FLUSH_EVERY).await;
                };
                tokio::select! {
                    report = &mut run => break report.unwrap_or_else(|_| {
                        wasmjobs_host::AttemptReport::failed_before_start("the attempt panicked".into())
                    }),
                    () = flush_due, if writing.is_none() => {
                        let batch = lock(&buffered).take();
                        if !batch.is_empty() {
                            writing = Some(append_events(s, job.id, job.attempt, batch, cancel.clone()));
                        }
                    }
                    // Events logged meanwhile rang the bell; its permit waits for the next turn.
                    _ = async { writing.as_mut().expect("checked").await }, if writing.is_some() => {
                        writing = None;
                    }
                }
            };
            // The completion's events come after the ones being written.
            if let Some(w) = writing {
                let _ = w.await;
            }
            report
        }
        Err(message) => wasmjobs_host::AttemptReport::failed_before_start(message),
    };
    // The attempt records what really happened, even when a cancel arrived as it ended on its
    // own (out_of_fuel, failed, …): `store::retry::decide` still ends a job whose cancel was
    // requested `cancelled`, and a completion for a lease we lost is refused by the store.
    let outcome = report.outcome;
    let mut events = lock(&buffered).take();
    if report.logs_truncated {
        events.push(NewEvent { kind: "log", data: json!({ "level": "warn", "source": "wasmjobs", "message": "logs truncated at the log limit" }) });
    }
    if outcome == wasmjobs_host::Outcome::Cancelled && s.releasing.load(Ordering::Relaxed) {
        // Cancelled by this node's own shutdown: the job goes back to the queue uncharged
        // (`Node::drain`), not `cancelled`.
        return;
    }
    let span = tracing::Span::current();
    span.record("outcome", outcome.as_str());
    span.record("fuel", report.fuel_consumed);
    crate::telemetry::attempt_finished(&job.module_digest, &report);
    lock(&s.pending).insert(job.id);
    s.uncommitted.fetch_add(1, Ordering::Relaxed);
    let _ = s.completions.send(Completion {
        job_id: job.id,
        attempt: job.attempt,
        worker: s.config.node_id.clone(),
        outcome,
        trap: report.trap.map(|t| t.as_str().to_string()),
        // A guest chooses its error message: a NUL in it is not storable text (Postgres).
        error: report.error.map(|e| e.replace('\0', "\u{FFFD}")),
        output: report.output,
        fuel_consumed: report.fuel_consumed,
        peak_memory_bytes: report.peak_memory_bytes,
        wall_time_us: u64::try_from(report.wall_time.as_micros()).unwrap_or(u64::MAX),
        ended_at: now_ms(),
        submitted_at: Some(job.created_at),
        events,
        permanent: report.permanent,
        keyed: job.keyed,
    });
}

/// A slot running an attempt, counted in the busy-slots gauge while it lives.
struct BusySlot;

impl BusySlot {
    fn take() -> BusySlot {
        crate::telemetry::slot_busy(1);
        BusySlot
    }
}

impl Drop for BusySlot {
    fn drop(&mut self) {
        crate::telemetry::slot_busy(-1);
    }
}

/// Writes a running attempt's live events, on the node's runtime; stops the attempt if its
/// job was taken away.
fn append_events(
    s: &Arc<Shared>,
    job_id: JobId,
    attempt: u32,
    batch: Vec<NewEvent>,
    cancel: CancelHandle,
) -> tokio::task::JoinHandle<()> {
    let s2 = s.clone();
    s.main.spawn(async move {
        match s2
            .store
            .append_events(job_id, &s2.config.node_id, attempt, &batch, now_ms())
            .await
        {
            Ok(true) => {}
            Ok(false) => cancel.cancel(), // we lost the job: stop working on it
            Err(e) => crate::throttle::warn(format!("cannot write events of a running job: {e}")),
        }
    })
}
