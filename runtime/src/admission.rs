//! The admission policy: what a submission may ask for. Requests over a cap are refused before
//! anything is stored, with a message naming the cap; what was stored under an older policy is
//! checked again when it runs ([`AdmissionPolicy::recheck`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmjobs_host::{AllowedDirs, Grants, Limits};

use crate::store::RetryPolicy;

/// Caps on submissions, and the limits a job gets when it asks for none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionPolicy {
    pub defaults: Limits,
    pub max_fuel: u64,
    pub max_memory_bytes: u64,
    pub max_timeout_ms: u64,
    pub max_output_bytes: u64,
    pub max_log_bytes: u64,
    pub max_input_bytes: u64,
    /// Most attempts a retry policy may ask for.
    pub max_attempts: u32,
    /// Longest backoff a retry policy may ask for, in milliseconds.
    pub max_backoff_ms: u64,
    /// Priorities lie between `-max_priority` and `max_priority`.
    pub max_priority: i64,
    /// Host directories (and their subdirectories) a job may be granted; empty: none. Each is
    /// resolved (symlinks followed) when the server starts; a grant must resolve inside one.
    pub allowed_dirs: Vec<PathBuf>,
    /// Whether a job may be granted directories read-write.
    pub allow_writable_dirs: bool,
    /// Environment variable names a job may be granted; empty: none.
    pub allowed_env: Vec<String>,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        AdmissionPolicy {
            defaults: Limits::default(),
            max_fuel: 100_000_000_000,
            max_memory_bytes: 1 << 30,
            max_timeout_ms: 15 * 60 * 1000,
            max_output_bytes: 16 << 20,
            max_log_bytes: 4 << 20,
            max_input_bytes: 16 << 20,
            max_attempts: 100,
            max_backoff_ms: 24 * 3600 * 1000,
            max_priority: 1_000_000,
            allowed_dirs: Vec::new(),
            allow_writable_dirs: false,
            allowed_env: Vec::new(),
        }
    }
}

/// Why the policy refuses a request: names the field, what was asked and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{field} = {asked} is over the policy's cap of {cap}")]
    OverCap {
        field: &'static str,
        asked: String,
        cap: String,
    },
    #[error("{field}: {message}")]
    NotAllowed {
        field: &'static str,
        message: String,
    },
}

fn over(field: &'static str, asked: impl ToString, cap: impl ToString) -> Refusal {
    Refusal::OverCap {
        field,
        asked: asked.to_string(),
        cap: cap.to_string(),
    }
}

impl AdmissionPolicy {
    /// The allowed directories, resolved, and those that could not be (they allow nothing).
    pub fn resolve_dirs(&self) -> (AllowedDirs, Vec<(PathBuf, std::io::Error)>) {
        AllowedDirs::new(&self.allowed_dirs)
    }

    /// Checks limits, input size and grants against the caps.
    pub fn admit(
        &self,
        limits: &Limits,
        input_len: usize,
        grants: &Grants,
        dirs: &AllowedDirs,
    ) -> Result<(), Refusal> {
        if input_len as u64 > self.max_input_bytes {
            return Err(over("input", input_len, self.max_input_bytes));
        }
        self.recheck(limits, grants, dirs)
    }

    /// Checks what a stored job asks for — its limits and grants — against the policy in
    /// force: a job admitted under an older, looser policy runs only if this one allows it.
    pub fn recheck(
        &self,
        limits: &Limits,
        grants: &Grants,
        dirs: &AllowedDirs,
    ) -> Result<(), Refusal> {
        let check = |field: &'static str, asked: u64, cap: u64| {
            if asked > cap {
                Err(over(field, asked, cap))
            } else {
                Ok(())
            }
        };
        check("limits.fuel", limits.fuel, self.max_fuel)?;
        check(
            "limits.memory_bytes",
            limits.memory_bytes,
            self.max_memory_bytes,
        )?;
        check(
            "limits.timeout_ms",
            u64::try_from(limits.timeout.as_millis()).unwrap_or(u64::MAX),
            self.max_timeout_ms,
        )?;
        check(
            "limits.max_output_bytes",
            limits.max_output_bytes,
            self.max_output_bytes,
        )?;
        check(
            "limits.max_log_bytes",
            limits.max_log_bytes,
            self.max_log_bytes,
        )?;
        for dir in &grants.dirs {
            dirs.check(&dir.host).map_err(|e| Refusal::NotAllowed {
                field: "grants.dirs",
                message: e.to_string(),
            })?;
            if dir.writable && !self.allow_writable_dirs {
                return Err(over(
                    "grants.dirs.writable",
                    dir.host.display(),
                    "read-only directories",
                ));
            }
        }
        for key in grants.env.keys() {
            if !self.allowed_env.contains(key) {
                return Err(over(
                    "grants.env",
                    key,
                    format!("allowed variables {:?}", self.allowed_env),
                ));
            }
        }
        Ok(())
    }

    /// Checks a retry policy: valid values, and no more attempts or longer backoff than the
    /// caps.
    pub fn check_retry(&self, retry: &RetryPolicy) -> Result<(), Refusal> {
        retry.validate().map_err(|message| Refusal::NotAllowed {
            field: "retry",
            message,
        })?;
        if retry.max_attempts > self.max_attempts {
            return Err(over(
                "retry.max_attempts",
                retry.max_attempts,
                self.max_attempts,
            ));
        }
        if retry.max_lost > self.max_attempts {
            return Err(over("retry.max_lost", retry.max_lost, self.max_attempts));
        }
        for (field, ms) in [
            ("retry.initial_backoff_ms", retry.initial_backoff_ms),
            ("retry.max_backoff_ms", retry.max_backoff_ms),
        ] {
            if ms > self.max_backoff_ms {
                return Err(over(field, ms, self.max_backoff_ms));
            }
        }
        Ok(())
    }

    /// Checks a priority against `±max_priority`.
    pub fn check_priority(&self, priority: i64) -> Result<(), Refusal> {
        if priority.unsigned_abs() > self.max_priority.unsigned_abs() {
            return Err(over(
                "priority",
                priority,
                format!("±{}", self.max_priority.unsigned_abs()),
            ));
        }
        Ok(())
    }

    pub fn max_timeout(&self) -> Duration {
        Duration::from_millis(self.max_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_counts_backoffs_and_priorities_are_bounded() {
        let p = AdmissionPolicy::default();
        let many = RetryPolicy {
            max_attempts: u32::MAX,
            ..RetryPolicy::default()
        };
        assert!(
            p.check_retry(&many)
                .unwrap_err()
                .to_string()
                .contains("retry.max_attempts")
        );
        let slow = RetryPolicy {
            max_backoff_ms: u64::MAX,
            ..RetryPolicy::default()
        };
        assert!(
            p.check_retry(&slow)
                .unwrap_err()
                .to_string()
                .contains("retry.max_backoff_ms")
        );
        let bad = RetryPolicy {
            multiplier: -5.0,
            ..RetryPolicy::default()
        };
        assert!(
            p.check_retry(&bad)
                .unwrap_err()
                .to_string()
                .contains("multiplier")
        );
        p.check_retry(&RetryPolicy::default()).expect("defaults");
        assert!(p.check_priority(i64::MAX).is_err());
        assert!(p.check_priority(i64::MIN).is_err());
        p.check_priority(-1_000_000).expect("at the bound");
    }

    #[test]
    fn a_stored_job_is_checked_again_under_a_tighter_policy() {
        let loose = AdmissionPolicy::default();
        let limits = Limits {
            fuel: loose.max_fuel,
            ..Limits::default()
        };
        let dirs = AllowedDirs::default();
        loose
            .recheck(&limits, &Grants::default(), &dirs)
            .expect("admitted");
        let tight = AdmissionPolicy {
            max_fuel: 1_000,
            ..AdmissionPolicy::default()
        };
        let e = tight
            .recheck(&limits, &Grants::default(), &dirs)
            .unwrap_err();
        assert!(e.to_string().contains("limits.fuel"), "{e}");
    }
}
