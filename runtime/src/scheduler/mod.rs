//! The worker side of the scheduler: claims jobs in batches, runs each attempt in the sandbox,
//! completes attempts in batches, renews leases (and acts on cancel requests), rescues jobs of
//! dead nodes, fires cron schedules, and prunes old jobs. One [`Node`] per process; any number
//! of nodes may share a Postgres store.

mod attempt;
mod cron;
mod dispatch;
mod live;
mod modules;
mod upkeep;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::FutureExt;
use serde_json::json;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use wasmjobs_host::{AllowedDirs, CancelHandle, Event, Limits, RunRequest, Sandbox};

pub use cron::{Target, WorkflowTarget, next_after, next_ticks, parse as cron_parse, parse_tz};
pub use live::MAX_EVENTS_PER_ATTEMPT;
pub use modules::ModuleCache;

use attempt::run_attempt;
use dispatch::*;
use upkeep::{complete, heartbeat, host_name, prune, rescue, rescue_predecessors, tidy};

use crate::service::JobService;
use crate::store::{Claimed, Completion, JobId, NewEvent, Notice, Rescue, Store, now_ms};

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
    /// Most jobs claimed ahead: held by this node (leased, `running` in the store) while they
    /// wait for a free slot. How many it really holds adapts to how long attempts take: only
    /// what its slots get through in about [`CLAIM_AHEAD_WINDOW`], so long jobs are not
    /// held from idle nodes. 0 claims only for free slots.
    pub claim_ahead: usize,
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
            claim_batch: 512,
            claim_ahead: 1024,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            maintenance: true,
        }
    }
}

/// How much work, in time, a node claims ahead of its free slots (see
/// [`NodeConfig::claim_ahead`]): a job claimed ahead waits about this long at most, if attempts
/// take as long as they recently did.
pub const CLAIM_AHEAD_WINDOW: Duration = Duration::from_millis(20);

/// `hostname-pid-random`: unique per process.
pub fn default_node_id() -> String {
    format!(
        "{}-{}-{:04x}",
        host_name(),
        std::process::id(),
        fastrand::u16(..)
    )
}

/// A running worker node. Dropping the returned handle does not stop it; call [`Node::shutdown`].
pub struct Node {
    shutdown: CancellationToken,
    shared: Arc<Shared>,
    /// The dispatcher, apart from the other tasks: [`Node::drain`] waits for it to stop first.
    dispatcher: Option<tokio::task::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    guests: Option<tokio::runtime::Runtime>,
}

struct Shared {
    store: Arc<dyn Store>,
    /// The admission policy in force, which every attempt is checked against again.
    policy: Arc<crate::admission::AdmissionPolicy>,
    /// The directories grants may name, resolved; attempts open their grants beneath them.
    allowed_dirs: Arc<AllowedDirs>,
    sandbox: Sandbox,
    modules: ModuleCache,
    config: NodeConfig,
    /// Jobs this node holds (claimed and not yet completed: waiting for a slot or running),
    /// with their cancel handles; the heartbeat renews their leases.
    running: Mutex<HashMap<JobId, HeldJob>>,
    /// Jobs whose completion was sent to the completer and is not written yet: the node's
    /// own rescuer leaves them alone, even when their leases ran out while the store was
    /// refusing writes.
    pending: Mutex<std::collections::HashSet<JobId>>,
    /// What the readiness check reports of this node.
    health: Arc<NodeHealth>,
    /// Set when a shutdown's grace ran out: attempts cancelled from now on are the node's
    /// doing, and their jobs go back to the queue uncharged instead of ending `cancelled`.
    releasing: std::sync::atomic::AtomicBool,
    completions: mpsc::UnboundedSender<Completion>,
    /// Completions sent to the completer and not yet written (or given up on).
    uncommitted: std::sync::atomic::AtomicUsize,
    /// Cancelled to stop claiming (a child of `shutdown`; [`Node::drain`] cancels it first).
    claiming: CancellationToken,
    /// Held jobs not started yet, in claim order, for the runners (one per slot, on the guest
    /// runtime); `to_run_added` wakes the idle ones.
    to_run: Mutex<std::collections::VecDeque<Held>>,
    to_run_added: Notify,
    /// Signalled when a held job is done and the dispatcher may claim again.
    released: Notify,
    /// The recent pace of attempts in µs (0: none yet; see [`next_pace`]): how far ahead to
    /// claim.
    attempt_us: Arc<std::sync::atomic::AtomicU64>,
    /// The recent pace of each queue's attempts in µs: how far ahead to claim from it (a
    /// queue of slow jobs is never claimed ahead, however short another queue's are).
    queue_pace: Mutex<HashMap<String, u64>>,
    shutdown: CancellationToken,
    /// The runtime the node was started on, where the store is used: a runner reaches the
    /// store through it, so that no database connection is tied to the guest runtime.
    main: tokio::runtime::Handle,
}

/// What the node keeps of a job it holds, for its heartbeat, its shutdown and its rescuer.
struct HeldJob {
    cancel: CancelHandle,
    /// When it was claimed.
    since: std::time::Instant,
    /// The attempt it was claimed for.
    attempt: u32,
    /// The queue it was claimed from.
    queue: String,
}

/// What the readiness check sees of a node: whether it claims, and why not when it does not.
#[derive(Debug, Default)]
pub struct NodeHealth {
    /// Why the node does not claim now (the store refuses its writes), if it does not.
    blocked: Mutex<Option<String>>,
}

impl NodeHealth {
    /// Why the node cannot take work now; `None` when it can.
    pub fn not_ready(&self) -> Option<String> {
        lock(&self.blocked).clone()
    }

    fn block(&self, why: String) {
        *lock(&self.blocked) = Some(why);
    }

    fn unblock(&self) -> bool {
        lock(&self.blocked).take().is_some()
    }

    fn is_blocked(&self) -> bool {
        lock(&self.blocked).is_some()
    }
}

/// A job this node holds: claimed, waiting for a runner or running.
struct Held {
    job: Claimed,
    cancel: CancelHandle,
}

impl Node {
    /// Starts the node's tasks on the current tokio runtime. With `maintenance` on, it fires
    /// cron schedules: those that start workflow runs through `workflows`.
    pub fn start(
        service: JobService,
        workflows: Option<crate::workflow::WorkflowService>,
        sandbox: Sandbox,
        modules: ModuleCache,
        config: NodeConfig,
    ) -> Node {
        let shutdown = CancellationToken::new();
        let (guests, guest_handle) = guest_runtime(config.concurrency);
        let (tx, rx) = mpsc::unbounded_channel();
        let slots = config.concurrency.max(1);
        crate::telemetry::slots(slots);
        let shared = Arc::new(Shared {
            store: service.store.clone(),
            policy: service.policy.clone(),
            allowed_dirs: service.allowed_dirs.clone(),
            sandbox,
            modules,
            to_run: Mutex::default(),
            to_run_added: Notify::new(),
            config,
            running: Mutex::new(HashMap::new()),
            pending: Mutex::default(),
            health: Arc::new(NodeHealth::default()),
            releasing: std::sync::atomic::AtomicBool::new(false),
            released: Notify::new(),
            attempt_us: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            queue_pace: Mutex::default(),
            completions: tx,
            uncommitted: std::sync::atomic::AtomicUsize::new(0),
            claiming: shutdown.child_token(),
            shutdown: shutdown.clone(),
            main: tokio::runtime::Handle::current(),
        });
        // Where guests run: a runtime of its own, so that a guest burning its CPU budget never
        // delays the API, the database or the timers of this node.
        for _ in 0..slots {
            guest_handle.spawn(runner(shared.clone()));
        }
        let dispatcher = Some(tokio::spawn(dispatch(shared.clone())));
        let mut tasks = vec![
            tokio::spawn(complete(shared.clone(), rx)),
            tokio::spawn(heartbeat(shared.clone())),
            tokio::spawn(rescue(shared.clone())),
            tokio::spawn(tidy(shared.clone())),
        ];
        if shared.config.maintenance {
            tasks.push(tokio::spawn(cron::fire(
                service,
                workflows,
                shared.shutdown.clone(),
            )));
            tasks.push(tokio::spawn(prune(shared.clone())));
        }
        Node {
            shutdown,
            shared,
            dispatcher,
            tasks,
            guests,
        }
    }

    /// What the readiness check reports of this node.
    pub fn health(&self) -> Arc<NodeHealth> {
        self.shared.health.clone()
    }

    /// Shuts down gracefully: stops claiming and starting held jobs, gives back at once the
    /// jobs claimed ahead that no slot started, lets the running attempts finish and their
    /// completions commit for up to `grace`, then cancels what still runs and gives those jobs
    /// back too — back in the queue, their attempt not charged ([`Store::release`]) — and does
    /// [`Node::shutdown`]. A node with nothing running is gone within milliseconds.
    pub async fn drain(mut self, grace: Duration) {
        self.shared.claiming.cancel();
        let until = tokio::time::Instant::now() + grace;
        // A claim in flight still hands its jobs to this node: count them only once the
        // dispatcher has stopped, or they would be left `running` until their leases expire.
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = tokio::time::timeout_at(until, dispatcher).await;
        }
        let waiting: Vec<Held> = lock(&self.shared.to_run).drain(..).collect();
        let unstarted: Vec<(JobId, u32)> =
            waiting.iter().map(|h| (h.job.id, h.job.attempt)).collect();
        give_back(&self.shared, unstarted).await;
        // Until no job is held and the completer has written every completion it was sent (a
        // job's completion is counted before the job stops being held).
        let busy =
            |s: &Shared| !lock(&s.running).is_empty() || s.uncommitted.load(Ordering::Relaxed) > 0;
        while busy(&self.shared) && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let left: Vec<(JobId, u32)> = {
            let running = lock(&self.shared.running);
            if !running.is_empty() {
                self.shared.releasing.store(true, Ordering::Relaxed);
                for held in running.values() {
                    held.cancel.cancel();
                }
            }
            running.iter().map(|(id, h)| (*id, h.attempt)).collect()
        };
        give_back(&self.shared, left).await;
        self.shutdown().await;
    }

    /// Stops claiming and cancels running attempts at once; their jobs, and those claimed ahead,
    /// return to the queue when their leases expire (or are ended `cancelled`/`lost` by whoever
    /// sees them first). [`Node::drain`] lets them finish first.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        for t in self.dispatcher.into_iter().chain(self.tasks) {
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

impl Shared {
    /// How many jobs this node may hold now (see [`hold_limit`]).
    fn hold_limit(&self) -> usize {
        hold_limit(
            self.config.concurrency,
            self.attempt_us.load(Ordering::Relaxed),
            self.config.claim_ahead,
        )
    }
}

/// How many jobs a node with `slots` may hold: its slots, plus what they get through in
/// [`CLAIM_AHEAD_WINDOW`] when attempts take `mean_us` (0: not known yet, so nothing ahead),
/// and never more than `claim_ahead` beyond its slots.
fn hold_limit(slots: usize, mean_us: u64, claim_ahead: usize) -> usize {
    let slots = slots.max(1);
    if mean_us == 0 {
        return slots;
    }
    let window_us = u64::try_from(CLAIM_AHEAD_WINDOW.as_micros()).unwrap_or(u64::MAX);
    let ahead = usize::try_from(window_us / mean_us)
        .unwrap_or(usize::MAX)
        .saturating_mul(slots);
    slots + ahead.min(claim_ahead)
}

/// The recent pace of attempts after one that took `took_us`: an attempt slower than the pace
/// sets it at once (so that a node stops claiming ahead as soon as jobs grow long); faster
/// ones bring it down by 1/16 of the difference each.
fn next_pace(pace_us: u64, took_us: u64) -> u64 {
    let took_us = took_us.max(1);
    if took_us >= pace_us {
        took_us
    } else {
        pace_us - (pace_us - took_us) / 16
    }
}

/// The most queues whose pace a node keeps; past it, it starts over (a queue it forgot is
/// claimed without claiming ahead until its attempts set its pace again).
const QUEUE_PACES_KEPT: usize = 1024;

/// Folds one attempt's duration into its queue's pace.
fn queue_attempt_took(s: &Shared, queue: &str, took: Duration) {
    let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let mut paces = lock(&s.queue_pace);
    if let Some(pace) = paces.get_mut(queue) {
        *pace = next_pace(*pace, took_us);
        return;
    }
    if paces.len() >= QUEUE_PACES_KEPT {
        paces.clear();
    }
    paces.insert(queue.to_owned(), next_pace(0, took_us));
}

/// Folds one attempt's duration into the node's pace.
fn attempt_took(pace_us: &std::sync::atomic::AtomicU64, took: Duration) {
    let took_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
    let _ = pace_us.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        Some(next_pace(old, took_us))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use upkeep::gone_predecessors;

    #[test]
    fn only_provably_gone_predecessors_are_taken_for_gone() {
        let alive = |pid: u32| pid == 100;
        let workers = [
            "me",             // this node's own id: an earlier process under it
            "vm-100-abcd",    // this host, process alive
            "vm-200-beef",    // this host, process gone
            "other-200-beef", // another host
            "w1",             // a chosen id: nothing to prove it gone
            "vm-x-beef",      // not a pid
            "vm-300-zzzz",    // not the default form
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            gone_predecessors("me", "vm", workers, alive),
            ["me", "vm-200-beef"]
        );
    }

    #[test]
    fn a_node_claims_ahead_only_what_its_slots_get_through_in_the_window() {
        // Nothing known yet: only the slots.
        assert_eq!(hold_limit(2, 0, 128), 2);
        // 10 ms attempts, 20 ms window: two more per slot.
        assert_eq!(hold_limit(2, 10_000, 128), 6);
        // Attempts longer than the window: only the slots.
        assert_eq!(hold_limit(2, 300_000, 128), 2);
        assert_eq!(hold_limit(4, 20_001, 128), 4);
        // Very short attempts: capped by claim_ahead; 0 turns claiming ahead off.
        assert_eq!(hold_limit(2, 50, 128), 130);
        assert_eq!(hold_limit(2, 50, 0), 2);
        assert_eq!(hold_limit(0, 50, 0), 1);
    }

    #[test]
    fn a_node_claims_for_an_idle_slot_or_when_half_its_room_is_free() {
        // Two slots, 130 jobs allowed: a slot about to go idle always claims.
        assert!(may_claim(0, 2, 130));
        assert!(may_claim(1, 2, 130));
        // Slots busy and jobs waiting: only once half of the limit is free again, so that
        // claims stay large instead of one job per attempt's end.
        assert!(!may_claim(130, 2, 130));
        assert!(!may_claim(66, 2, 130));
        assert!(may_claim(65, 2, 130));
        // Nothing claimed ahead (limit = slots): claim as soon as one slot is free.
        assert!(!may_claim(2, 2, 2));
        assert!(may_claim(1, 2, 2));
    }

    #[test]
    fn the_pace_jumps_to_a_slow_attempt_and_comes_down_slowly() {
        assert_eq!(next_pace(0, 40), 40);
        assert_eq!(next_pace(40, 300_000), 300_000);
        // One fast attempt after a slow one barely moves it: the node goes on claiming only
        // for its slots until many fast attempts have shown the jobs are short again.
        let after_one = next_pace(300_000, 40);
        assert_eq!(after_one, 300_000 - (300_000 - 40) / 16);
        assert!(hold_limit(2, after_one, 128) == 2);
        let mut pace = 300_000;
        let mut fast = 0;
        while hold_limit(2, pace, 128) == 2 {
            pace = next_pace(pace, 40);
            fast += 1;
        }
        assert!((20..60).contains(&fast), "{fast} fast attempts");
        assert_eq!(next_pace(0, 0), 1, "never 0, which means unknown");
    }
}
