//! Per-job change signals for whoever follows one job (SSE streams, `?wait=`).
//!
//! The store announces every change on one broadcast channel. Following a job by listening to
//! that channel directly wakes every follower on every change of every job: with hundreds of
//! live streams that is most of the server's work. [`JobWatchers`] listens once and wakes only
//! the followers of the job that changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{broadcast, watch};

use crate::store::{JobId, Notice};

#[derive(Default)]
struct Registry {
    /// A change counter per followed job, and how many follow it.
    jobs: HashMap<JobId, (watch::Sender<u64>, usize)>,
}

/// Routes the store's notices to the followers of each job.
#[derive(Clone, Default)]
pub struct JobWatchers {
    registry: Arc<Mutex<Registry>>,
}

impl JobWatchers {
    /// Starts routing `notices` (must be called inside a tokio runtime). The routing task ends
    /// when the store's channel closes.
    pub fn start(mut notices: broadcast::Receiver<Notice>) -> JobWatchers {
        let watchers = JobWatchers::default();
        let registry = watchers.registry.clone();
        tokio::spawn(async move {
            loop {
                match notices.recv().await {
                    Ok(Notice::Events(id)) => {
                        let reg = registry.lock().unwrap_or_else(PoisonError::into_inner);
                        if let Some((tx, _)) = reg.jobs.get(&id) {
                            tx.send_modify(|n| *n += 1);
                        }
                    }
                    Ok(
                        Notice::JobsAvailable
                        | Notice::Ended(_)
                        | Notice::Run(_)
                        | Notice::RunRequest(_),
                    ) => {}
                    // Missed some: wake everyone, they re-read the store.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let reg = registry.lock().unwrap_or_else(PoisonError::into_inner);
                        for (tx, _) in reg.jobs.values() {
                            tx.send_modify(|n| *n += 1);
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        watchers
    }

    /// Follows job `id`: [`JobWatch::changed`] returns after its next change. Changes between
    /// two calls are not lost (they make the next call return at once).
    pub fn watch(&self, id: JobId) -> JobWatch {
        let mut reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = reg
            .jobs
            .entry(id)
            .or_insert_with(|| (watch::channel(0).0, 0));
        entry.1 += 1;
        let mut rx = entry.0.subscribe();
        rx.mark_unchanged();
        JobWatch {
            id,
            rx,
            registry: self.registry.clone(),
        }
    }
}

/// One follower of one job; stops following when dropped.
pub struct JobWatch {
    id: JobId,
    rx: watch::Receiver<u64>,
    registry: Arc<Mutex<Registry>>,
}

impl JobWatch {
    /// Waits for the job's next change (or returns at once if it changed since the last call).
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The sender is kept while any follower lives; never reached, but do not spin.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for JobWatch {
    fn drop(&mut self) {
        let mut reg = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = reg.jobs.get_mut(&self.id) {
            entry.1 -= 1;
            if entry.1 == 0 {
                reg.jobs.remove(&self.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn wakes_only_the_followers_of_the_changed_job_and_loses_nothing() {
        let (tx, rx) = broadcast::channel(16);
        let watchers = JobWatchers::start(rx);
        let mut one = watchers.watch(1);
        let mut two = watchers.watch(2);
        tx.send(Notice::Events(1)).expect("send");
        tokio::time::timeout(Duration::from_secs(5), one.changed())
            .await
            .expect("job 1's follower wakes");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), two.changed())
                .await
                .is_err(),
            "job 2's follower sleeps on"
        );
        // A change while nobody waits is kept for the next wait.
        tx.send(Notice::Events(2)).expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        tokio::time::timeout(Duration::from_secs(5), two.changed())
            .await
            .expect("the change was kept");
        drop(one);
        drop(two);
        assert!(
            watchers.registry.lock().expect("lock").jobs.is_empty(),
            "followers that left are forgotten"
        );
    }
}
