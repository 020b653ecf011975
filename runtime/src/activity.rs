//! A process's report of itself to the store, for the dashboard's overview across every node:
//! every [`REPORT_EVERY`] it writes its slots, how many are busy, and the jobs it ended since
//! its last report by minute ([`crate::store::QueueStore::report_activity`]). The ends are
//! tallied in memory where they happen ([`crate::telemetry::job_ended`]), so the job path
//! writes nothing more; a crash loses at most one interval's tally, and a report the store
//! refuses is kept for the next.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store::{ActivityReport, JobState, MinuteEnds, Store, now_ms};

/// How often a process reports.
pub const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Ends by minute not yet reported.
static ENDED: Mutex<BTreeMap<i64, MinuteEnds>> = Mutex::new(BTreeMap::new());
static SLOTS: AtomicU64 = AtomicU64::new(0);
static BUSY: AtomicI64 = AtomicI64::new(0);

fn ended() -> std::sync::MutexGuard<'static, BTreeMap<i64, MinuteEnds>> {
    ENDED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Adds `ends` to the tally of its minute.
fn add(ended: &mut BTreeMap<i64, MinuteEnds>, ends: MinuteEnds) {
    let m = ended.entry(ends.minute).or_insert(MinuteEnds {
        minute: ends.minute,
        ..MinuteEnds::default()
    });
    m.succeeded += ends.succeeded;
    m.failed += ends.failed;
    m.cancelled += ends.cancelled;
}

/// A job ended now in `state` (a final state).
pub fn job_ended(state: JobState) {
    let now = now_ms();
    let mut one = MinuteEnds {
        minute: now - now.rem_euclid(60_000),
        ..MinuteEnds::default()
    };
    match state {
        JobState::Succeeded => one.succeeded = 1,
        JobState::Failed => one.failed = 1,
        JobState::Cancelled => one.cancelled = 1,
        JobState::Scheduled | JobState::Queued | JobState::Running => return,
    }
    add(&mut ended(), one);
}

/// This process's slots.
pub fn slots(total: usize) {
    SLOTS.store(total as u64, Ordering::Relaxed);
}

/// A slot taken (`+1`) or given back (`-1`).
pub fn slot_busy(delta: i64) {
    BUSY.fetch_add(delta, Ordering::Relaxed);
}

/// The report to send now, taking the tally.
fn take(node: &str) -> ActivityReport {
    ActivityReport {
        node: node.to_string(),
        slots: SLOTS.load(Ordering::Relaxed),
        busy: u64::try_from(BUSY.load(Ordering::Relaxed)).unwrap_or(0),
        minutes: std::mem::take(&mut *ended()).into_values().collect(),
    }
}

/// Puts a report's ends back, to go with the next one.
fn put_back(report: ActivityReport) {
    let mut ended = ended();
    for m in report.minutes {
        add(&mut ended, m);
    }
}

/// The running reporter of a process.
pub struct Reporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Reporter {
    /// Reports `node` to `store` every [`REPORT_EVERY`], starting now.
    pub fn start(store: Arc<dyn Store>, node: String) -> Reporter {
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                send(&*store, &node).await;
                tokio::select! {
                    _ = until.cancelled() => break,
                    _ = tokio::time::sleep(REPORT_EVERY) => {}
                }
            }
            // The last ends, and the slots now idle.
            send(&*store, &node).await;
        });
        Reporter { stop, task }
    }

    /// Sends a last report and stops.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn send(store: &dyn Store, node: &str) {
    let report = take(node);
    if let Err(e) = store.report_activity(&report, now_ms()).await {
        crate::throttle::warn(format!("cannot report this node's activity: {e}"));
        put_back(report);
    }
}
