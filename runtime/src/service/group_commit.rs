//! The group commit: submissions that arrive while one transaction is being written go into
//! the next, each submitter answered once its own transaction committed.

use super::*;

/// Where a group commit's answer for one job goes: the submitter of that job alone, or its
/// place in the answer of a batch, sent whole once every job of the batch has its answer (one
/// channel and one wake-up per batch, not per job).
pub(super) enum Reply {
    One(oneshot::Sender<Stored>),
    Many(Arc<std::sync::Mutex<Gathered>>, usize),
}

/// A batch's answers as they come, and where they go once all have come.
pub(super) struct Gathered {
    answers: Vec<Option<Stored>>,
    left: usize,
    to: Option<oneshot::Sender<Vec<Stored>>>,
}

impl Gathered {
    /// Gathers `n` answers; the receiver gets them all at once.
    pub(super) fn start(
        n: usize,
    ) -> (
        Arc<std::sync::Mutex<Gathered>>,
        oneshot::Receiver<Vec<Stored>>,
    ) {
        let (to, answer) = oneshot::channel();
        let gathered = Gathered {
            answers: (0..n).map(|_| None).collect(),
            left: n,
            to: Some(to),
        };
        (Arc::new(std::sync::Mutex::new(gathered)), answer)
    }

    /// Sends the answers gathered, those missing as errors.
    fn send(&mut self) {
        if let Some(to) = self.to.take() {
            let answers = std::mem::take(&mut self.answers)
                .into_iter()
                .map(|a| a.unwrap_or_else(|| Err(shutting_down())))
                .collect();
            let _ = to.send(answers);
        }
    }
}

impl Drop for Gathered {
    /// A batch whose last reply was dropped unanswered (the group commit stopped) still gets
    /// the answers it has, and an error for each of the others.
    fn drop(&mut self) {
        self.send();
    }
}

impl Reply {
    pub(super) fn send(self, stored: Stored) {
        match self {
            Reply::One(to) => {
                let _ = to.send(stored);
            }
            Reply::Many(gathered, at) => {
                let mut g = gathered.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = g.answers.get_mut(at)
                    && slot.is_none()
                {
                    *slot = Some(stored);
                    g.left -= 1;
                }
                if g.left == 0 {
                    g.send();
                }
            }
        }
    }
}

pub(super) fn shutting_down() -> ServiceError {
    ServiceError::Invalid("the server is shutting down".into())
}

/// A validated submission on its way to a group commit: the module as the request named it
/// (name or digest; the group resolves it) and the job, whose digest is set then.
pub(super) type Pending = (String, NewJob, Reply);

/// The most submissions one group commit stores. A group takes whatever waits, so this binds
/// only under a flood, where fewer and larger transactions (each one flushed) store more jobs
/// a second; it holds one batch of `POST /v1/jobs/batch` (1,000) with room. A batch is never
/// split: it goes whole into a group that has room for it, or starts one (a batch larger than
/// this is a group of its own).
pub(super) const GROUP_MOST: usize = 1024;

/// Commits submissions in groups: whatever arrived while the previous group was being written
/// goes into the next transaction. Each submitter is answered only after its transaction
/// committed, so an acknowledged job is durable; one transaction per group instead of per job
/// is what lets the store keep up with many submitters.
///
/// A job names its module by name or digest and is stored with the digest. The group resolves
/// each reference once and keeps what it found ([`Modules`]): a digest means the same module
/// for good (modules are never deleted), and a name is checked by the insert itself, in its
/// transaction, to still point at the digest it was resolved to. When one moved, nothing was
/// stored: the group forgets what it knew and resolves every reference again. This spares a
/// lookup, a round trip on Postgres, before every group.
pub(super) async fn group_commit(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Vec<Pending>>) {
    let mut modules = Modules::default();
    // Submissions received and not yet in a group: a batch that would have taken a group past
    // `GROUP_MOST` waits here for the next one.
    let mut waiting: std::collections::VecDeque<Vec<Pending>> = std::collections::VecDeque::new();
    let mut received = Vec::new();
    loop {
        if waiting.is_empty() {
            if rx.recv_many(&mut received, GROUP_MOST).await == 0 {
                break;
            }
            waiting.extend(received.drain(..));
        }
        let mut group: Vec<Pending> = waiting.pop_front().unwrap_or_default();
        while let Some(more) = waiting.pop_front_if(|more| group.len() + more.len() <= GROUP_MOST) {
            group.extend(more);
        }
        // First with what the group commit knew, then resolved afresh, then afresh and one job
        // at a time.
        for pass in 0..3 {
            if pass > 0 {
                modules = Modules::default();
            }
            let (jobs, replies, names) = resolve(&*store, &mut modules, group).await;
            if jobs.is_empty() {
                break;
            }
            if pass == 2 {
                // Nothing of the group was stored. Each job alone, so that one job's problem
                // is that job's answer and not its neighbours'.
                for (job, (_, reply)) in jobs.into_iter().zip(replies) {
                    let stored = store.insert_job(job.clone(), now_ms()).await;
                    if let Ok(stored) = &stored {
                        log_submitted(stored);
                    }
                    reply.send(
                        stored
                            .map_err(Into::into)
                            .and_then(|r| same_request(&job, r)),
                    );
                }
                break;
            }
            match store
                .insert_jobs_named(jobs.clone(), &names, now_ms())
                .await
            {
                Ok(Some(results)) => {
                    for ((result, (_, reply)), job) in results.into_iter().zip(replies).zip(&jobs) {
                        log_submitted(&result);
                        reply.send(same_request(job, result));
                    }
                    break;
                }
                // A name moved since it was resolved, and nothing was stored.
                Ok(None) => {}
                Err(e) => crate::throttle::warn(format!("a group insert of jobs failed: {e}")),
            }
            group = jobs
                .into_iter()
                .zip(replies)
                .map(|(job, (module, reply))| (module, job, reply))
                .collect();
        }
    }
}

/// A job stored (at debug): its first state.
fn log_submitted((job, created): &(crate::store::Job, bool)) {
    if *created {
        tracing::debug!(job = job.id, "job {} is {}", job.id, job.state);
    }
}

/// What a group commit knows of module references: the digest each one resolved to.
#[derive(Default)]
pub(super) struct Modules {
    digests: HashMap<String, String>,
}

/// The group's jobs with their module digests set, each one's module reference and reply, and
/// the names among the references with the digest each stands for (for the insert to check).
/// A job whose module is unknown, or whose lookup failed, is answered here and left out.
pub(super) async fn resolve(
    store: &dyn Store,
    modules: &mut Modules,
    group: Vec<Pending>,
) -> (Vec<NewJob>, Vec<(String, Reply)>, Vec<(String, String)>) {
    let mut jobs = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut names: HashMap<String, String> = HashMap::new();
    // Unknown in this group (a failed lookup is not kept: each job gets its own error).
    let mut unknown = std::collections::HashSet::new();
    for (module, mut job, reply) in group {
        let digest = match modules.digests.get(&module) {
            Some(digest) => Some(digest.clone()),
            None if unknown.contains(&module) => None,
            None => match store.get_module(&module).await {
                Ok(Some(found)) => {
                    modules.digests.insert(module.clone(), found.digest.clone());
                    Some(found.digest)
                }
                Ok(None) => {
                    unknown.insert(module.clone());
                    None
                }
                Err(e) => {
                    reply.send(Err(e.into()));
                    continue;
                }
            },
        };
        let Some(digest) = digest else {
            reply.send(Err(ServiceError::UnknownModule(module)));
            continue;
        };
        if !module.starts_with("sha256:") {
            names.insert(module.clone(), digest.clone());
        }
        job.module_digest = digest;
        jobs.push(job);
        replies.push((module, reply));
    }
    (jobs, replies, names.into_iter().collect())
}
