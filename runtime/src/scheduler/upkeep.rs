//! A node's upkeep: the completer (group commit of completions), the heartbeat (leases and
//! cancel requests), the rescuer (attempts of dead nodes and expired leases), the queue's
//! tidying and pruning.

use super::*;

/// Writes completions in batches: whatever has arrived since the last commit goes in one
/// transaction (group commit), written at the time its last attempt ended.
///
/// A batch the store cannot take for now (`StoreError::Unavailable`: disk full, database
/// unreachable, a read-only file) is kept and tried again, every second at most, for as long as
/// it takes: meanwhile the node stops claiming ([`NodeHealth`]) and its rescuer leaves these
/// jobs alone, so a finished attempt is never given up and run again. A batch refused for
/// another reason (a bug of ours, or one completion the store cannot hold) is written one
/// completion at a time, so one bad completion costs only its own job, which the rescuer then
/// ends `lost`.
pub(super) async fn complete(s: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Completion>) {
    let mut batch = Vec::new();
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, 512) => n,
            _ = s.shutdown.cancelled() => 0,
        };
        if n == 0 {
            return;
        }
        write_completions(&s, &batch).await;
        {
            let mut pending = lock(&s.pending);
            for c in &batch {
                pending.remove(&c.job_id);
            }
        }
        s.uncommitted.fetch_sub(batch.len(), Ordering::Relaxed);
        batch.clear();
    }
}

/// Writes one batch of completions (see [`complete`]); returns once each is written or given
/// up, or the node shuts down.
async fn write_completions(s: &Shared, batch: &[Completion]) {
    let at = |b: &[Completion]| b.iter().map(|c| c.ended_at).max().unwrap_or_else(now_ms);
    let mut tries = 0u32;
    loop {
        match s.store.complete(batch, at(batch)).await {
            Ok(results) => {
                report_endings(batch, &results);
                if s.health.unblock() {
                    tracing::info!("the store takes writes again: claiming again");
                }
                return;
            }
            Err(e) if e.is_unavailable() => {
                s.health.block(format!("the store refuses writes ({e})"));
                crate::throttle::error(format!(
                    "completing attempts failed, kept to be written once the store takes writes ({e}); not claiming meanwhile"
                ));
                if s.shutdown.is_cancelled() {
                    // Going away: the rescuer of whichever node runs next ends these `lost`.
                    return;
                }
                tries = tries.saturating_add(1);
                let wait = Duration::from_millis(100 * u64::from(tries.min(10)));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = s.shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                crate::throttle::error(format!(
                    "completing attempts failed ({e}): writing them one at a time"
                ));
                for c in batch {
                    if let Err(e) = s.store.complete(std::slice::from_ref(c), c.ended_at).await {
                        crate::throttle::error(format!(
                            "cannot complete an attempt of job {} ({e}): its lease will run out and it will be rescued",
                            c.job_id
                        ));
                    }
                }
                return;
            }
        }
    }
}

/// Says how each attempt left its job: at info for a job that ended other than `succeeded`
/// (with its outcome and error), at debug for every other change of state; counts the jobs
/// that ended and the failed attempts whose job will be tried again.
fn report_endings(batch: &[Completion], results: &[crate::store::Completed]) {
    use crate::store::{Completed, JobState};
    let mut retried = 0;
    for (c, result) in batch.iter().zip(results) {
        match result {
            Completed::Applied(state) if state.is_final() => {
                crate::telemetry::job_ended(*state, c.submitted_at.map(|at| c.ended_at - at));
            }
            Completed::Applied(JobState::Queued | JobState::Scheduled)
                if c.outcome != wasmjobs_host::Outcome::Succeeded =>
            {
                retried += 1;
            }
            _ => {}
        }
        match result {
            Completed::Applied(state @ (JobState::Failed | JobState::Cancelled)) => tracing::info!(
                job = c.job_id,
                attempt = c.attempt,
                outcome = c.outcome.as_str(),
                error = c.error.as_deref().unwrap_or(""),
                "job {} ended {state}",
                c.job_id
            ),
            Completed::Applied(state) => tracing::debug!(
                job = c.job_id,
                attempt = c.attempt,
                outcome = c.outcome.as_str(),
                "job {} is {state}",
                c.job_id
            ),
            Completed::Refused => tracing::debug!(
                job = c.job_id,
                attempt = c.attempt,
                "job {}: the attempt's completion was refused (its lease had moved on)",
                c.job_id
            ),
        }
    }
    crate::telemetry::retries(retried);
}

/// Renews leases; cancels local attempts whose job asked to be cancelled or was taken away.
pub(super) async fn heartbeat(s: Arc<Shared>) {
    let lease_ms = i64::try_from(s.config.lease.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => {
                for held in lock(&s.running).values() {
                    held.cancel.cancel();
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
                for (id, HeldJob { cancel, since, .. }) in lock(&s.running).iter() {
                    let requested = held.get(id).copied().unwrap_or(false);
                    // Not held any more (lease taken away): only for attempts that started before
                    // this renewal, since a fresh claim may have committed after it.
                    let lost = !held.contains_key(id) && *since < renewed_at;
                    if (requested || lost) && !cancel.is_cancelled() {
                        cancel.cancel();
                    }
                }
            }
            Err(e) => crate::throttle::warn(format!("lease renewal failed: {e}")),
        }
    }
}

/// Records attempts of dead nodes as `lost` and requeues their jobs, for every node whose leases
/// run out, a third of a lease at most after they did (this node's own jobs excepted: their
/// completions wait to be written). The nodes known to be gone are rescued before the first
/// claim ([`rescue_predecessors`], from `dispatch`).
pub(super) async fn rescue(s: Arc<Shared>) {
    let every = (s.config.lease / 3).max(Duration::from_millis(100));
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = s.shutdown.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
        first = false;
        if s.health.is_blocked() {
            continue;
        }
        let keep: Vec<JobId> = {
            let mut keep: Vec<JobId> = lock(&s.running).keys().copied().collect();
            keep.extend(lock(&s.pending).iter().copied());
            keep
        };
        match s
            .store
            .rescue(Rescue::Expired { keep: &keep }, now_ms())
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                crate::telemetry::rescued(ids.len() as u64);
                tracing::warn!("rescued {} jobs with expired leases: {ids:?}", ids.len());
                report_rescued(&s, &ids).await;
            }
            Ok(_) => {}
            Err(e) => crate::throttle::warn(format!("rescuer: {e}")),
        }
    }
}

/// The rescued jobs whose lost attempt was their last (`max_lost`): logged at info and
/// counted as ended, as every job that ends is. Read back once after the rescue, which says
/// only which jobs it took.
async fn report_rescued(s: &Shared, ids: &[JobId]) {
    for &id in ids {
        if let Ok(Some(job)) = s.store.get_job(id).await
            && job.state == crate::store::JobState::Failed
            && job.outcome == Some(wasmjobs_host::Outcome::Lost)
        {
            tracing::info!(
                job = id,
                outcome = "lost",
                error = job.error.as_deref().unwrap_or(""),
                "job {id} ended failed"
            );
            crate::telemetry::job_ended(job.state, None);
        }
    }
}

/// Ends at once the attempts of this node's predecessors that are provably gone: a node that
/// ran under this node's id (a restart: two live nodes must never share an id), and nodes of
/// the default id form on this host (`host-pid-xxxx`) whose process no longer exists. Their
/// jobs run again now instead of a lease later.
pub(super) async fn rescue_predecessors(s: &Shared) {
    let workers = match s.store.running_workers().await {
        Ok(w) => w,
        Err(e) => {
            crate::throttle::warn(format!("cannot list the nodes holding jobs: {e}"));
            return;
        }
    };
    let gone = gone_predecessors(&s.config.node_id, &host_name(), workers, process_exists);
    if gone.is_empty() {
        return;
    }
    match s.store.rescue(Rescue::Workers(&gone), now_ms()).await {
        Ok(ids) if !ids.is_empty() => {
            crate::telemetry::rescued(ids.len() as u64);
            tracing::warn!(
                "took back {} jobs of nodes that are gone ({}): they run again",
                ids.len(),
                gone.join(", ")
            );
            report_rescued(s, &ids).await;
        }
        Ok(_) => {}
        Err(e) => crate::throttle::warn(format!("rescuing the jobs of gone nodes: {e}")),
    }
}

/// Of `workers` (nodes holding running jobs), those provably gone, seen from node `me` on
/// host `host`: `me` itself (an earlier process under the same id), and ids of the default
/// form `host-pid-xxxx` of this host whose process `exists` says is gone.
pub(super) fn gone_predecessors(
    me: &str,
    host: &str,
    workers: Vec<String>,
    exists: impl Fn(u32) -> bool,
) -> Vec<String> {
    workers
        .into_iter()
        .filter(|w| {
            if w == me {
                return true;
            }
            let mut parts = w.rsplitn(3, '-');
            let (Some(tag), Some(pid), Some(on)) = (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            let default_form =
                tag.len() == 4 && tag.chars().all(|c| c.is_ascii_hexdigit()) && on == host;
            match (default_form, pid.parse::<u32>()) {
                (true, Ok(pid)) => pid != std::process::id() && !exists(pid),
                _ => false,
            }
        })
        .collect()
}

/// This host's name, as [`default_node_id`] writes it.
pub(super) fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "node".into())
}

/// Whether process `pid` exists on this host. Where that cannot be known, it is assumed to
/// exist: a node is taken for gone only when it provably is.
fn process_exists(pid: u32) -> bool {
    if cfg!(target_os = "linux") {
        std::path::Path::new(&format!("/proc/{pid}")).exists()
    } else {
        true
    }
}

/// Deletes finished jobs past the retention age, once a minute.
pub(super) async fn prune(s: Arc<Shared>) {
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
            Err(e) => crate::throttle::warn(format!("pruning: {e}")),
        }
    }
}

/// How often the node asks the store whether its queue needs tidying.
const TIDY_EVERY: Duration = Duration::from_millis(250);

/// Asks the store to tidy its queue ([`Store::tidy_queue`]: on Postgres, a vacuum of the
/// queue's tables once this node has taken 2,000 rows off them) until the node shuts down. A
/// tidying that did work is followed by a pause nine times as long, so it never takes more than
/// a tenth of the time. A failure is logged once: claims slow down as dead rows pile up, unless
/// autovacuum keeps up.
pub(super) async fn tidy(s: Arc<Shared>) {
    let mut warned = false;
    loop {
        tokio::select! {
            _ = s.shutdown.cancelled() => return,
            _ = tokio::time::sleep(TIDY_EVERY) => {}
        }
        let started = std::time::Instant::now();
        match s.store.tidy_queue().await {
            Ok(true) => {
                tokio::select! {
                    _ = s.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(started.elapsed() * 9) => {}
                }
            }
            Ok(false) => {}
            Err(e) if !warned => {
                warned = true;
                tracing::warn!(
                    "cannot tidy the job queue ({e}); claims slow down as dead rows pile up \
                     unless autovacuum keeps up"
                );
            }
            Err(_) => {}
        }
    }
}
