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
use crate::store::queues::check_queue_name;
use crate::store::{
    Concurrency, DEFAULT_QUEUE, Job, NewJob, RetryPolicy, Store, StoreError, now_ms,
};
use wasmjobs_host::AllowedDirs;

mod group_commit;

use group_commit::{Gathered, Pending, Reply, group_commit, shutting_down};

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
    #[schema(value_type = Option<crate::schema::LimitsDoc>)]
    pub limits: Option<Limits>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::RetryDoc>)]
    pub retry: Option<RetryPolicy>,
    /// The queue the job waits in (`default` if none): its name, 1 to 64 ASCII letters,
    /// digits, `_`, `-` and `.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = r"^[A-Za-z0-9_.-]{1,64}$")]
    pub queue: Option<String>,
    /// Orders the jobs of a queue: higher first.
    #[serde(default)]
    pub priority: i64,
    /// At most `concurrency_limit` jobs with this key run at once, across every node (1 to
    /// 200 bytes, e.g. a customer's id). A job holds one of the key's places from submission
    /// until it ends; one that finds none free waits, without holding a slot, and takes a
    /// place by priority, then `run_at`, then age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// How many jobs of `concurrency_key` may run at once (1 to 1000000; 1 when a key is given
    /// without one: one at a time, in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub concurrency_limit: Option<u32>,
    /// Not before this time (milliseconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::schema::GrantsDoc>)]
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
        let queue = req.queue.unwrap_or_else(|| DEFAULT_QUEUE.to_owned());
        check_queue_name(&queue).map_err(ServiceError::Invalid)?;
        let concurrency = concurrency(req.concurrency_key, req.concurrency_limit)?;
        let job = NewJob {
            module_digest: String::new(),
            input,
            limits,
            retry,
            grants,
            queue,
            priority: req.priority,
            run_at: req.run_at,
            idempotency_key: key,
            deadline_at,
            workflow_ref: req.workflow_ref,
            input_from: None,
            concurrency,
        };
        Ok((req.module, job))
    }
}

/// A submission's concurrency key and limit, checked: a limit needs a key; a key alone has
/// limit 1.
pub fn concurrency(
    key: Option<String>,
    limit: Option<u32>,
) -> Result<Option<Concurrency>, ServiceError> {
    let Some(key) = key else {
        return match limit {
            Some(_) => Err(ServiceError::Invalid(
                "concurrency_limit needs a concurrency_key: the key whose jobs it limits".into(),
            )),
            None => Ok(None),
        };
    };
    crate::store::keys::check_key(&key).map_err(ServiceError::Invalid)?;
    storable("concurrency_key", &key)?;
    let limit = limit.unwrap_or(1);
    crate::store::keys::check_limit(limit).map_err(ServiceError::Invalid)?;
    Ok(Some(Concurrency { key, limit }))
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
