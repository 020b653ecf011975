//! The worker side of the scheduler: claims jobs in batches, runs each attempt in the sandbox,
//! completes attempts in batches, renews leases (and acts on cancel requests), rescues jobs of
//! dead nodes, fires cron schedules, and prunes old jobs. One [`Node`] per process; any number
//! of nodes may share a Postgres store.

mod cron;
mod modules;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use wasmjobs_host::{CancelHandle, Event, Limits, RunRequest, Sandbox};

pub use cron::{next_after, parse as cron_parse};
pub use modules::ModuleCache;

use crate::service::JobService;
use crate::store::{Claimed, Completion, JobId, NewEvent, Notice, Store, now_ms};

/// How a node runs jobs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's name in leases and attempts.
    pub node_id: String,
    /// Attempts running at once.
    pub concurrency: usize,
    /// How long a claim holds a job without renewal.
    pub lease: Duration,
    /// How often leases are renewed and cancel requests looked for.
    pub heartbeat: Duration,
    /// Look for work at least this often even without a notice.
    pub poll: Duration,
    /// Most jobs claimed in one transaction.
    pub claim_batch: u32,
    /// Finished jobs older than this are deleted; `None` keeps them.
    pub retention: Option<Duration>,
    /// Whether this node fires cron schedules and prunes (any number may; each tick fires once).
    pub maintenance: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node_id: default_node_id(),
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            lease: Duration::from_secs(15),
            heartbeat: Duration::from_millis(250),
            poll: Duration::from_secs(1),
            claim_batch: 64,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            maintenance: true,
        }
    }
}

/// `hostname-pid-random`: unique per process.
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into());
    format!("{host}-{}-{:04x}", std::process::id(), fastrand::u16(..))
}

/// A running worker node. Dropping the returned handle does not stop it; call [`Node::shutdown`].
pub struct Node {
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    guests: Option<tokio::runtime::Runtime>,
}

struct Shared {
    store: Arc<dyn Store>,
    sandbox: Sandbox,
    modules: ModuleCache,
    config: NodeConfig,
    running: Mutex<HashMap<JobId, (CancelHandle, std::time::Instant)>>,
    completions: mpsc::UnboundedSender<Completion>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
    /// Where guests run: a runtime of its own, so that a guest burning its CPU budget never
    /// delays the API, the database or the timers of this node.
    guests: tokio::runtime::Handle,
}

impl Node {
    /// Starts the node's tasks on the current tokio runtime.
    pub fn start(
        service: JobService,
        sandbox: Sandbox,
        modules: ModuleCache,
        config: NodeConfig,
    ) -> Node {
        let shutdown = CancellationToken::new();
        let (guests, guest_handle) = guest_runtime(config.concurrency);
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            store: service.store.clone(),
            sandbox,
            modules,
            slots: Arc::new(Semaphore::new(config.concurrency.max(1))),
            config,
            running: Mutex::new(HashMap::new()),
            completions: tx,
            shutdown: shutdown.clone(),
            guests: guest_handle,
        });
        let mut tasks = vec![
            tokio::spawn(dispatch(shared.clone())),
            tokio::spawn(complete(shared.clone(), rx)),
            tokio::spawn(heartbeat(shared.clone())),
            tokio::spawn(rescue(shared.clone())),
        ];
        if shared.config.maintenance {
            tasks.push(tokio::spawn(cron::fire(service, shared.shutdown.clone())));
            tasks.push(tokio::spawn(prune(shared.clone())));
        }
        Node {
            shutdown,
            tasks,
            guests,
        }
    }

    /// Stops claiming and cancels running attempts; their jobs return to the queue when their
    /// leases expire (or are ended `cancelled`/`lost` by whoever sees them first).
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(rt) = self.guests {
            rt.shutdown_background();
        }
    }
}

/// A multi-threaded runtime for guests, one thread per core (at most one per concurrent attempt).
fn guest_runtime(concurrency: usize) -> (Option<tokio::runtime::Runtime>, tokio::runtime::Handle) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(concurrency.clamp(1, cores))
        .thread_name("wasmjobs-guest")
        // A spinning guest is polled once per epoch tick; look at timers after every poll so
        // that a sleeping guest's timeout is not held up by a busy neighbour.
        .event_interval(1)
        .enable_all()
        .build();
    match built {
        Ok(rt) => {
            let handle = rt.handle().clone();
            (Some(rt), handle)
        }
        Err(e) => {
            tracing::error!("cannot start the guest runtime ({e}); guests share the main runtime");
            (None, tokio::runtime::Handle::current())
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Claims while there are free slots; sleeps on a notice, the next scheduled time or the poll.
async fn dispatch(s: Arc<Shared>) {
    let mut notices = s.store.subscribe();
    loop {
        if s.shutdown.is_cancelled() {
            return;
        }
        let free = s
            .slots
            .available_permits()
            .min(s.config.claim_batch as usize) as u32;
        let mut claimed_any = false;
        if free > 0 {
            let lease_ms = i64::try_from(s.config.lease.as_millis()).unwrap_or(i64::MAX);
            match s
                .store
                .claim(&s.config.node_id, free, now_ms(), lease_ms)
                .await
            {
                Ok(jobs) => {
                    claimed_any = !jobs.is_empty() && jobs.len() as u32 == free;
                    for job in jobs {
                        let Ok(permit) = s.slots.clone().acquire_owned().await else {
                            return;
                        };
                        let s2 = s.clone();
                        tokio::spawn(async move {
                            run_attempt(&s2, job).await;
                            drop(permit);
                        });
                    }
                }
                Err(e) => {
                    tracing::error!("claim failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        if claimed_any {
            continue;
        }
        // Wait for something to do: a notice, a freed slot, a scheduled job coming due.
        let wake_at = match s.store.next_scheduled_at().await {
            Ok(Some(at)) => {
                Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)).min(s.config.poll)
            }
            _ => s.config.poll,
        };
        if s.slots.available_permits() > free as usize {
            // A slot freed while we were claiming: claim again rather than sleep on it.
            continue;
        }
        let free_before = free as usize;
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(wake_at) => {}
            _ = wait_jobs_available(&mut notices) => {}
            _ = wait_slot_freed(&s.slots, free_before) => {}
        }
    }
}

async fn wait_jobs_available(notices: &mut tokio::sync::broadcast::Receiver<Notice>) {
    loop {
        match notices.recv().await {
            Ok(Notice::JobsAvailable)
            | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
            Ok(Notice::Events(_) | Notice::Ended(_) | Notice::Run(_) | Notice::RunRequest(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                std::future::pending::<()>().await
            }
        }
    }
}

async fn wait_slot_freed(slots: &Semaphore, free_before: usize) {
    if free_before > 0 {
        // Slots were free and nothing was claimed: no point waking on slots.
        return std::future::pending().await;
    }
    // Acquire and immediately release one permit: returns once a slot is free.
    if let Ok(p) = slots.acquire().await {
        drop(p);
    }
}

/// Runs one claimed attempt and hands its completion to the completer.
async fn run_attempt(s: &Shared, job: Claimed) {
    let started = now_ms();
    let cancel = CancelHandle::new();
    lock(&s.running).insert(job.id, (cancel.clone(), std::time::Instant::now()));
    let buffered: Arc<Mutex<Vec<NewEvent>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = buffered.clone();
    let events = Arc::new(move |e: Event| {
        let ev = match e {
            Event::Log(l) => NewEvent {
                kind: "log",
                data: json!({ "level": l.level, "source": l.source, "message": l.message, "at_ms": l.at_ms }),
            },
            Event::Progress { done, total } => NewEvent {
                kind: "progress",
                data: json!({ "done": done, "total": total }),
            },
        };
        lock(&sink).push(ev);
    });

    let mut limits: Limits = job.limits;
    if let Some(deadline) = job.deadline_at {
        let left = Duration::from_millis(u64::try_from(deadline - started).unwrap_or(0));
        limits.timeout = limits.timeout.min(left);
    }
    // (A job whose input is another job's output got that output from its claim.)
    let module = s
        .modules
        .get(&*s.store, &s.sandbox, &job.module_digest)
        .await;
    let report = match module {
        Ok(module) => {
            let req = RunRequest::new(job.input)
                .limits(limits)
                .grants(job.grants.clone())
                .cancel(cancel.clone())
                .events(events);
            let sandbox = s.sandbox.clone();
            let run = s
                .guests
                .spawn(async move { sandbox.run(&module, req).await });
            // Flush live events while the attempt runs, so followers see logs as they happen.
            tokio::pin!(run);
            loop {
                tokio::select! {
                    report = &mut run => break report.unwrap_or_else(|e| {
                        wasmjobs_host::AttemptReport::failed_before_start(format!("the attempt's task failed: {e}"))
                    }),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        let batch = std::mem::take(&mut *lock(&buffered));
                        if !batch.is_empty() {
                            match s.store.append_events(job.id, &s.config.node_id, job.attempt, &batch, now_ms()).await {
                                Ok(true) => {}
                                Ok(false) => cancel.cancel(), // we lost the job: stop working on it
                                Err(e) => tracing::warn!("cannot write events of job {}: {e}", job.id),
                            }
                        }
                    }
                }
            }
        }
        Err(message) => wasmjobs_host::AttemptReport::failed_before_start(message),
    };
    lock(&s.running).remove(&job.id);
    // The attempt records what really happened, even when a cancel arrived as it ended on its
    // own (out_of_fuel, failed, …): `store::policy::decide` still ends a job whose cancel was
    // requested `cancelled`, and a completion for a lease we lost is refused by the store.
    let outcome = report.outcome;
    let mut events = std::mem::take(&mut *lock(&buffered));
    if report.logs_truncated {
        events.push(NewEvent { kind: "log", data: json!({ "level": "warn", "source": "wasmjobs", "message": "logs truncated at the log limit" }) });
    }
    let _ = s.completions.send(Completion {
        job_id: job.id,
        attempt: job.attempt,
        worker: s.config.node_id.clone(),
        outcome,
        trap: report.trap.map(|t| t.as_str().to_string()),
        error: report.error,
        output: report.output,
        fuel_consumed: report.fuel_consumed,
        peak_memory_bytes: report.peak_memory_bytes,
        wall_time_us: u64::try_from(report.wall_time.as_micros()).unwrap_or(u64::MAX),
        events,
    });
}

/// Writes completions in batches: whatever has arrived since the last commit goes in one
/// transaction (group commit).
async fn complete(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::new();
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, 512) => n,
            _ = s.shutdown.cancelled() => 0,
        };
        if n == 0 {
            return;
        }
        let mut attempt = 0u32;
        loop {
            match s.store.complete(batch.clone(), now_ms()).await {
                Ok(_) => break,
                Err(e) => {
                    attempt += 1;
                    tracing::error!(
                        "completing {} attempts failed (try {attempt}): {e}",
                        batch.len()
                    );
                    if s.shutdown.is_cancelled() || attempt >= 20 {
                        // The leases will expire and the rescuer will record the attempts lost.
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        }
        batch.clear();
    }
}

/// Renews leases; cancels local attempts whose job asked to be cancelled or was taken away.
async fn heartbeat(s: Arc<Shared>) {
    let lease_ms = i64::try_from(s.config.lease.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => {
                for (c, _) in lock(&s.running).values() {
                    c.cancel();
                }
                return;
            }
            _ = tokio::time::sleep(s.config.heartbeat) => {}
        }
        let renewed_at = std::time::Instant::now();
        let ids: Vec<JobId> = lock(&s.running).keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        match s
            .store
            .heartbeat(&s.config.node_id, &ids, now_ms(), lease_ms)
            .await
        {
            Ok(held) => {
                let held: HashMap<JobId, bool> = held.into_iter().collect();
                for (id, (cancel, since)) in lock(&s.running).iter() {
                    let requested = held.get(id).copied().unwrap_or(false);
                    // Not held any more (lease taken away): only for attempts that started before
                    // this renewal, since a fresh claim may have committed after it.
                    let lost = !held.contains_key(id) && *since < renewed_at;
                    if (requested || lost) && !cancel.is_cancelled() {
                        cancel.cancel();
                    }
                }
            }
            Err(e) => tracing::warn!("lease renewal failed: {e}"),
        }
    }
}

/// Records attempts of dead nodes as `lost` and requeues their jobs.
async fn rescue(s: Arc<Shared>) {
    let every = (s.config.lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match s.store.rescue_expired(now_ms()).await {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!("rescued {} jobs with expired leases: {ids:?}", ids.len())
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("rescuer: {e}"),
        }
    }
}

/// Deletes finished jobs past the retention age, once a minute.
async fn prune(s: Arc<Shared>) {
    let Some(retention) = s.config.retention else {
        return;
    };
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        let before = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        match s.store.prune(before).await {
            Ok(n) if n > 0 => tracing::info!("pruned {n} finished jobs"),
            Ok(_) => {}
            Err(e) => tracing::warn!("pruning: {e}"),
        }
    }
}
