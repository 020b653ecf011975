//! A job's settings — its limits, retry policy and grants — kept once for all the jobs that
//! share them in `job_settings`, under a key that names their texts: the SHA-256 of the three
//! JSON texts (docs/decisions/009). Every job refers to its settings by key; jobs submitted
//! together nearly always share one.

use super::StoreError;
use super::lifecycle::json;
use super::model::{JobId, NewJob};
use super::retry::RetryPolicy;
use wasmjobs_host::{Grants, Limits};

/// How long past the retention age settings no job refers to are kept: on Postgres, far more
/// than twice the interval at which a submission touches the settings it relies on
/// (`postgres::TOUCH_EVERY_MS`), for clocks that disagree by minutes.
pub(super) const SETTINGS_GRACE_MS: i64 = 60 * 60 * 1000;

/// A job's settings as stored (their JSON texts) and their key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub key: [u8; 32],
    pub limits: String,
    pub retry: String,
    pub grants: String,
}

impl Settings {
    /// The settings of a job to insert.
    pub fn of(j: &NewJob) -> Settings {
        Settings::of_parts(&j.limits, &j.retry, &j.grants)
    }

    /// The settings of these limits, retry policy and grants (a job retried by hand gets new
    /// settings: its old ones with a raised retry budget).
    pub fn of_parts(limits: &Limits, retry: &RetryPolicy, grants: &Grants) -> Settings {
        Settings::from_texts(json(limits), json(retry), json(grants))
    }

    fn from_texts(limits: String, retry: String, grants: String) -> Settings {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        // JSON text never holds a raw NUL, so NULs separate the parts unambiguously.
        for part in ["wasmjobs-policy-1", &limits, &retry, &grants] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        Settings {
            key: h.finalize().into(),
            limits,
            retry,
            grants,
        }
    }
}

/// The error for a job that refers to settings `job_settings` does not hold.
pub(super) fn settings_not_stored(job: JobId) -> StoreError {
    StoreError::Corrupt(format!("job {job}: its settings are not stored"))
}
