//! The job service: validates a submission (module, input, limits, retry, grants) against the
//! admission policy and stores it. Used by the HTTP API and by cron schedules alike, so every
//! way in obeys the same rules.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use wasmjobs_host::{Grants, Limits};

use crate::admission::{AdmissionPolicy, Refusal};
use crate::caller::Caller;
use crate::store::{Job, NewJob, RetryPolicy, Store, StoreError, now_ms};
use wasmjobs_host::AllowedDirs;

/// A job submission, as `POST /v1/jobs` takes it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitJob {
    /// Module name or `sha256:…` digest. The job pins the digest.
    pub module: String,
    /// Input as JSON (sent to the job as its JSON text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Input as raw bytes, base64-encoded. Exclusive with `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::openapi::LimitsDoc>)]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::openapi::RetryDoc>)]
    pub retry: Option<RetryPolicy>,
    #[serde(default)]
    pub priority: i64,
    /// Not before this time (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::openapi::GrantsDoc>)]
    pub grants: Option<Grants>,
    /// Overall deadline from submission, e.g. `"10m"`: no attempt starts after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Opaque reference for services built on jobs (workflows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_ref: Option<String>,
}

/// Why a submission or request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("unknown module {0:?}: upload it first (POST /v1/modules)")]
    UnknownModule(String),
    /// An idempotency key already names a job submitted with a different request.
    #[error("{0}")]
    KeyReused(String),
    /// The caller's scope or token does not allow this.
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Stored = Result<(Job, bool), ServiceError>;

/// Where a group commit's answer for one job goes: the submitter of that job alone, or its
/// place in the answer of a batch, sent whole once every job of the batch has its answer (one
/// channel and one wake-up per batch, not per job).
enum Reply {
    One(oneshot::Sender<Stored>),
    Many(Arc<std::sync::Mutex<Gathered>>, usize),
}

/// A batch's answers as they come, and where they go once all have come.
struct Gathered {
    answers: Vec<Option<Stored>>,
    left: usize,
    to: Option<oneshot::Sender<Vec<Stored>>>,
}

impl Gathered {
    /// Gathers `n` answers; the receiver gets them all at once.
    fn start(
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
    fn send(self, stored: Stored) {
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

fn shutting_down() -> ServiceError {
    ServiceError::Invalid("the server is shutting down".into())
}

/// A validated submission on its way to a group commit: the module as the request named it
/// (name or digest; the group resolves it) and the job, whose digest is set then.
type Pending = (String, NewJob, Reply);

#[derive(Clone)]
pub struct JobService {
    pub store: Arc<dyn Store>,
    pub policy: Arc<AdmissionPolicy>,
    /// The policy's allowed directories, resolved once at start.
    pub allowed_dirs: Arc<AllowedDirs>,
    /// Wakes the followers of one job when it changes (SSE streams, `?wait=`).
    pub watchers: crate::watch::JobWatchers,
    /// Submissions to the group commit: one job, or a batch's jobs together.
    inserts: mpsc::Sender<Vec<Pending>>,
}

impl JobService {
    /// Must be called inside a tokio runtime: it starts the task that commits submissions and
    /// the one that routes the store's notices to each job's followers.
    pub fn new(store: Arc<dyn Store>, policy: AdmissionPolicy) -> JobService {
        let (inserts, rx) = mpsc::channel(4096);
        tokio::spawn(group_commit(store.clone(), rx));
        let watchers = crate::watch::JobWatchers::start(store.subscribe());
        let (allowed_dirs, missing) = policy.resolve_dirs();
        for (dir, e) in missing {
            tracing::warn!(
                "allowed directory {} cannot be resolved ({e}): nothing under it can be granted",
                dir.display()
            );
        }
        JobService {
            store,
            policy: Arc::new(policy),
            allowed_dirs: Arc::new(allowed_dirs),
            watchers,
            inserts,
        }
    }

    /// Validates and stores a job; nothing is stored when it is refused. Returns the job and
    /// whether it was created (`false`: an earlier job with the same idempotency key).
    pub async fn submit(
        &self,
        req: SubmitJob,
        caller: &Caller,
    ) -> Result<(Job, bool), ServiceError> {
        let key = scoped_key(caller, req.idempotency_key.as_deref())?;
        self.submit_keyed(req, key).await
    }

    /// Submits a schedule's job for one tick: its idempotency key (`sys/schedule/ID/TICK`) is
    /// in the server's own namespace, which no client's key can reach.
    pub async fn submit_scheduled(
        &self,
        req: SubmitJob,
        schedule: i64,
        tick: i64,
    ) -> Result<(Job, bool), ServiceError> {
        self.submit_keyed(req, Some(format!("sys/schedule/{schedule}/{tick}")))
            .await
    }

    async fn submit_keyed(
        &self,
        req: SubmitJob,
        key: Option<String>,
    ) -> Result<(Job, bool), ServiceError> {
        let (module, job) = self.validate(req, key)?;
        let (reply, answer) = oneshot::channel();
        self.enqueue(vec![(module, job, Reply::One(reply))]).await?;
        answer.await.unwrap_or_else(|_| Err(shutting_down()))
    }

    /// Validates and stores many jobs, answering each on its own, in order: a refused job is
    /// that job's error and does not stop the others. Every accepted job is durable when this
    /// returns, as with [`JobService::submit`]. The valid jobs go to the group commit together
    /// and are answered together, but they are not one transaction: a job whose insert fails
    /// alone is that job's error (see [`group_commit`]).
    pub async fn submit_many(&self, reqs: Vec<SubmitJob>, caller: &Caller) -> Vec<Stored> {
        let mut results: Vec<Option<Stored>> = Vec::with_capacity(reqs.len());
        let mut valid = Vec::with_capacity(reqs.len());
        // A refused job's answer now; a valid one's (`None` here) from the group commit, in order.
        for req in reqs {
            let checked = scoped_key(caller, req.idempotency_key.as_deref())
                .and_then(|key| self.validate(req, key));
            match checked {
                Ok((module, job)) => {
                    valid.push((module, job));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        let mut answers = Vec::new().into_iter();
        if !valid.is_empty() {
            let (gathered, answer) = Gathered::start(valid.len());
            let pending = valid
                .into_iter()
                .enumerate()
                .map(|(k, (module, job))| (module, job, Reply::Many(gathered.clone(), k)))
                .collect();
            drop(gathered);
            if self.enqueue(pending).await.is_ok() {
                answers = answer.await.unwrap_or_default().into_iter();
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| answers.next().unwrap_or_else(|| Err(shutting_down()))))
            .collect()
    }

    /// Hands validated submissions to the group commit, which answers each through its
    /// [`Reply`] once its group committed.
    async fn enqueue(&self, pending: Vec<Pending>) -> Result<(), ServiceError> {
        self.inserts
            .send(pending)
            .await
            .map_err(|_| shutting_down())
    }

    /// Checks a submission as [`JobService::submit`] would, without storing anything (for
    /// what is stored to be submitted later: a schedule's job).
    pub fn check(&self, req: &SubmitJob) -> Result<(), ServiceError> {
        self.validate(req.clone(), None).map(|_| ())
    }

    /// Checks a submission against the admission policy and makes it the job to store (its
    /// module's digest is set by the group commit). `key` is the idempotency key as stored
    /// (in its caller's namespace).
    fn validate(
        &self,
        req: SubmitJob,
        key: Option<String>,
    ) -> Result<(String, NewJob), ServiceError> {
        let input = input_bytes(req.input.as_ref(), req.input_base64.as_deref())?;
        if req.module.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "module is required: a module name or sha256 digest".into(),
            ));
        }
        storable("module", &req.module)?;
        let limits = req.limits.unwrap_or(self.policy.defaults);
        let grants = req.grants.unwrap_or_default();
        storable_grants(&grants)?;
        self.policy
            .admit(&limits, input.len(), &grants, &self.allowed_dirs)?;
        let retry = req.retry.unwrap_or_default();
        self.policy.check_retry(&retry)?;
        self.policy.check_priority(req.priority)?;
        if let Some(r) = &req.workflow_ref {
            storable("workflow_ref", r)?;
        }
        let deadline_at = deadline_after(now_ms(), "deadline", req.deadline.as_deref())?;
        let job = NewJob {
            module_digest: String::new(),
            input,
            limits,
            retry,
            grants,
            priority: req.priority,
            run_at: req.run_at,
            idempotency_key: key,
            deadline_at,
            workflow_ref: req.workflow_ref,
            input_from: None,
        };
        Ok((req.module, job))
    }
}

/// The idempotency key a client sent, as stored: checked, and in the caller's namespace, so
/// that one token's keys never match another's (nor the server's own).
fn scoped_key(caller: &Caller, key: Option<&str>) -> Result<Option<String>, ServiceError> {
    let Some(key) = key else { return Ok(None) };
    if key.is_empty() || key.len() > 200 {
        return Err(ServiceError::Invalid(
            "idempotency_key must be 1 to 200 characters".into(),
        ));
    }
    storable("idempotency_key", key)?;
    Ok(Some(format!("{}{key}", caller.key_namespace())))
}

/// The idempotency key as its client sent it, from the key as stored (see [`scoped_key`]);
/// the server's own keys (`sys/…`) are shown whole.
pub fn client_key(stored: &str) -> &str {
    if let Some(rest) = stored.strip_prefix("token/") {
        return rest.split_once('/').map_or(rest, |(_, key)| key);
    }
    stored.strip_prefix("local/").unwrap_or(stored)
}

/// Refuses text no store can keep: a NUL character (Postgres text cannot hold one).
pub fn storable(field: &str, text: &str) -> Result<(), ServiceError> {
    if text.contains('\0') {
        return Err(ServiceError::Invalid(format!(
            "{field} contains a NUL character (\\u0000), which cannot be stored"
        )));
    }
    Ok(())
}

fn storable_grants(grants: &Grants) -> Result<(), ServiceError> {
    for dir in &grants.dirs {
        storable("grants.dirs.host", &dir.host.to_string_lossy())?;
        storable("grants.dirs.guest", &dir.guest)?;
    }
    for (k, v) in &grants.env {
        storable("grants.env", k)?;
        storable("grants.env", v)?;
    }
    Ok(())
}

/// A job stored, or the first job its idempotency key named if that was submitted with the
/// same request; a different request under a used key is refused.
fn same_request(job: &NewJob, stored: (Job, bool)) -> Stored {
    match stored {
        (first, false) => match differs(job, &first) {
            Some(field) => Err(ServiceError::KeyReused(format!(
                "idempotency_key {:?} was first used for job {} with a different {field}: use a new key for a different request",
                job.idempotency_key
                    .as_deref()
                    .map(client_key)
                    .unwrap_or_default(),
                first.id
            ))),
            None => Ok((first, false)),
        },
        created => Ok(created),
    }
}

/// Where a job submitted again under an idempotency key differs from the job first submitted
/// under it, if it does: the first field that differs.
fn differs(new: &NewJob, first: &Job) -> Option<&'static str> {
    if new.module_digest != first.module {
        return Some("module");
    }
    if new.input != first.input && first.input_from.is_none() {
        return Some("input");
    }
    if new.limits != first.limits {
        return Some("limits");
    }
    if new.retry != first.retry {
        return Some("retry");
    }
    if new.grants != first.grants {
        return Some("grants");
    }
    if new.priority != first.priority {
        return Some("priority");
    }
    if new.run_at.is_some_and(|at| at != first.run_at) {
        return Some("run_at");
    }
    if new.workflow_ref != first.workflow_ref {
        return Some("workflow_ref");
    }
    None
}

/// The input a request gives as JSON (`input`) or as base64 bytes (`input_base64`), as bytes;
/// empty when it gives neither.
pub fn input_bytes(json: Option<&Value>, base64: Option<&str>) -> Result<Vec<u8>, ServiceError> {
    match (json, base64) {
        (Some(_), Some(_)) => Err(ServiceError::Invalid(
            "give either input or input_base64, not both".into(),
        )),
        (Some(v), None) => {
            serde_json::to_vec(v).map_err(|e| ServiceError::Invalid(format!("input: {e}")))
        }
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| ServiceError::Invalid(format!("input_base64 is not valid base64: {e}"))),
        (None, None) => Ok(Vec::new()),
    }
}

/// `now` plus a duration given as text (`"10m"`), or `None` without one; a bad duration is an
/// error naming `field`.
pub fn deadline_after(
    now: i64,
    field: &str,
    text: Option<&str>,
) -> Result<Option<i64>, ServiceError> {
    text.map(|t| {
        let d = wasmjobs_host::units::parse_duration(t)
            .map_err(|e| ServiceError::Invalid(format!("{field}: {e}")))?;
        Ok(now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
    })
    .transpose()
}

/// The most submissions one group commit stores. A group takes whatever waits, so this binds
/// only under a flood; there, 1,024 stored 50,000 jobs in batches of 1,000 ~15 % faster than
/// 512 on Postgres (fewer transactions, each flushed), docs/performance.md. A batch is never
/// split: it goes whole into a group that has room for it, or starts one (a batch larger than
/// this is a group of its own).
const GROUP_MOST: usize = 1024;

/// Commits submissions in groups: whatever arrived while the previous group was being written
/// goes into the next transaction. Each submitter is answered only after its transaction
/// committed, so an acknowledged job is durable; one transaction per group instead of per job
/// is what lets the store keep up with many submitters.
///
/// A job names its module by name or digest and is stored with the digest. The group resolves
/// each reference once and keeps what it found ([`Modules`]): a digest means the same module
/// for good (modules are never deleted), and a name is checked by the insert itself, in its
/// transaction, to still point at the digest it was resolved to. When one moved, nothing was
/// stored: the group forgets what it knew and resolves every reference again. (Looking each
/// name up before each group was a round trip per group: without it, one job per submit ran
/// 13–17 % faster on Postgres, docs/performance.md.)
async fn group_commit(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Vec<Pending>>) {
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

/// What a group commit knows of module references: the digest each one resolved to.
#[derive(Default)]
struct Modules {
    digests: HashMap<String, String>,
}

/// The group's jobs with their module digests set, each one's module reference and reply, and
/// the names among the references with the digest each stands for (for the insert to check).
/// A job whose module is unknown, or whose lookup failed, is answered here and left out.
async fn resolve(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn message(stored: &Stored) -> String {
        match stored {
            Ok((job, _)) => format!("job {}", job.id),
            Err(e) => e.to_string(),
        }
    }

    /// A batch's answer goes out once, in the batch's order, when its last job is answered;
    /// and a batch whose replies are dropped unanswered still gets the answers it had.
    #[tokio::test]
    async fn a_batch_is_answered_whole_in_order_even_when_replies_are_dropped() {
        let batch = |n: usize| {
            let (gathered, answer) = Gathered::start(n);
            let replies: Vec<Reply> = (0..n).map(|k| Reply::Many(gathered.clone(), k)).collect();
            (replies, answer)
        };

        let (mut replies, mut answer) = batch(3);
        let third = replies.pop().expect("three");
        let second = replies.pop().expect("two");
        let first = replies.pop().expect("one");
        third.send(Err(ServiceError::Invalid("c".into())));
        first.send(Err(ServiceError::Invalid("a".into())));
        assert!(answer.try_recv().is_err(), "not before the last answer");
        second.send(Err(ServiceError::Invalid("b".into())));
        let answers = answer.await.expect("answered");
        assert_eq!(
            answers.iter().map(message).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );

        let (mut replies, answer) = batch(2);
        let second = replies.pop().expect("two");
        let first = replies.pop().expect("one");
        first.send(Err(ServiceError::Invalid("stored".into())));
        drop(second);
        let answers = answer.await.expect("answered when the last reply went");
        assert_eq!(
            answers.iter().map(message).collect::<Vec<_>>(),
            ["stored", "the server is shutting down"]
        );
    }
}
