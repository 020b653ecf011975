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

use crate::policy::{AdmissionPolicy, OverCap};
use crate::store::{Job, NewJob, RetryPolicy, Store, StoreError, now_ms};

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
    OverCap(#[from] OverCap),
    #[error("unknown module {0:?}: upload it first (POST /v1/modules)")]
    UnknownModule(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Reply = oneshot::Sender<Result<(Job, bool), ServiceError>>;

/// A validated submission on its way to a group commit: the module as the request named it
/// (name or digest; the group resolves it) and the job, whose digest is set then.
type Pending = (String, NewJob, Reply);

#[derive(Clone)]
pub struct JobService {
    pub store: Arc<dyn Store>,
    pub policy: Arc<AdmissionPolicy>,
    /// Wakes the followers of one job when it changes (SSE streams, `?wait=`).
    pub watchers: crate::watch::JobWatchers,
    inserts: mpsc::Sender<Pending>,
}

impl JobService {
    /// Must be called inside a tokio runtime: it starts the task that commits submissions and
    /// the one that routes the store's notices to each job's followers.
    pub fn new(store: Arc<dyn Store>, policy: AdmissionPolicy) -> JobService {
        let (inserts, rx) = mpsc::channel(4096);
        tokio::spawn(group_commit(store.clone(), rx));
        let watchers = crate::watch::JobWatchers::start(store.subscribe());
        JobService {
            store,
            policy: Arc::new(policy),
            watchers,
            inserts,
        }
    }

    /// Validates and stores a job; nothing is stored when it is refused. Returns the job and
    /// whether it was created (`false`: an earlier job with the same idempotency key).
    pub async fn submit(&self, req: SubmitJob) -> Result<(Job, bool), ServiceError> {
        let answer = self.enqueue(req).await?;
        wait_stored(answer).await
    }

    /// Validates and stores many jobs, answering each on its own, in order: a refused job is
    /// that job's error and does not stop the others. Every accepted job is durable when this
    /// returns, as with [`JobService::submit`]; the jobs go into the same group commits as
    /// single submissions, so a batch is not one transaction (it may be split across groups).
    pub async fn submit_many(
        &self,
        reqs: Vec<SubmitJob>,
    ) -> Vec<Result<(Job, bool), ServiceError>> {
        let mut answers = Vec::with_capacity(reqs.len());
        for req in reqs {
            answers.push(self.enqueue(req).await);
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(match answer {
                Ok(answer) => wait_stored(answer).await,
                Err(e) => Err(e),
            });
        }
        results
    }

    /// Validates a submission and hands it to the group commit; the receiver gets the stored
    /// job once its group committed.
    async fn enqueue(&self, req: SubmitJob) -> Result<Answer, ServiceError> {
        let input = input_bytes(req.input.as_ref(), req.input_base64.as_deref())?;
        if req.module.trim().is_empty() {
            return Err(ServiceError::Invalid(
                "module is required: a module name or sha256 digest".into(),
            ));
        }
        let limits = req.limits.unwrap_or(self.policy.defaults);
        let grants = req.grants.unwrap_or_default();
        self.policy.admit(&limits, input.len(), &grants)?;
        let retry = req.retry.unwrap_or_default();
        retry.validate().map_err(ServiceError::Invalid)?;
        if req
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.is_empty() || k.len() > 200)
        {
            return Err(ServiceError::Invalid(
                "idempotency_key must be 1 to 200 characters".into(),
            ));
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
            idempotency_key: req.idempotency_key,
            deadline_at,
            workflow_ref: req.workflow_ref,
            input_from: None,
        };
        let (reply, answer) = oneshot::channel();
        if self.inserts.send((req.module, job, reply)).await.is_err() {
            return Err(ServiceError::Invalid("the server is shutting down".into()));
        }
        Ok(answer)
    }
}

type Answer = oneshot::Receiver<Result<(Job, bool), ServiceError>>;

/// The group commit's answer for one job.
async fn wait_stored(answer: Answer) -> Result<(Job, bool), ServiceError> {
    match answer.await {
        Ok(result) => result,
        Err(_) => Err(ServiceError::Invalid("the server is shutting down".into())),
    }
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
/// 512 on Postgres (fewer transactions, each flushed), docs/performance.md.
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
async fn group_commit(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch = Vec::new();
    let mut modules = Modules::default();
    while rx.recv_many(&mut batch, GROUP_MOST).await > 0 {
        let mut group: Vec<Pending> = std::mem::take(&mut batch);
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
                    let _ = reply.send(store.insert_job(job, now_ms()).await.map_err(Into::into));
                }
                break;
            }
            match store
                .insert_jobs_named(jobs.clone(), &names, now_ms())
                .await
            {
                Ok(Some(results)) => {
                    for (result, (_, reply)) in results.into_iter().zip(replies) {
                        let _ = reply.send(Ok(result));
                    }
                    break;
                }
                // A name moved since it was resolved, and nothing was stored.
                Ok(None) => {}
                Err(e) => tracing::warn!("group insert of {} jobs failed: {e}", jobs.len()),
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
                    let _ = reply.send(Err(e.into()));
                    continue;
                }
            },
        };
        let Some(digest) = digest else {
            let _ = reply.send(Err(ServiceError::UnknownModule(module)));
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
