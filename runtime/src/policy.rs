//! The admission policy: what a submission may ask for. Requests over a cap are refused before
//! anything is stored, with a message naming the cap.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmjobs_host::{Grants, Limits};

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
    /// Host directories (and their subdirectories) a job may be granted; empty: none.
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
            allowed_dirs: Vec::new(),
            allow_writable_dirs: false,
            allowed_env: Vec::new(),
        }
    }
}

/// A submission over a cap: names the field, the value asked for and the cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} = {asked} is over the policy's cap of {cap}")]
pub struct OverCap {
    pub field: &'static str,
    pub asked: String,
    pub cap: String,
}

impl AdmissionPolicy {
    /// Checks limits, input size and grants against the caps.
    pub fn admit(&self, limits: &Limits, input_len: usize, grants: &Grants) -> Result<(), OverCap> {
        let check = |field: &'static str, asked: u64, cap: u64| {
            if asked > cap {
                Err(OverCap {
                    field,
                    asked: asked.to_string(),
                    cap: cap.to_string(),
                })
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
        check("input", input_len as u64, self.max_input_bytes)?;
        for dir in &grants.dirs {
            let allowed = self.allowed_dirs.iter().any(|a| dir.host.starts_with(a));
            if !allowed {
                return Err(OverCap {
                    field: "grants.dirs",
                    asked: dir.host.display().to_string(),
                    cap: format!("allowed directories {:?}", self.allowed_dirs),
                });
            }
            if dir.writable && !self.allow_writable_dirs {
                return Err(OverCap {
                    field: "grants.dirs.writable",
                    asked: dir.host.display().to_string(),
                    cap: "read-only directories".into(),
                });
            }
        }
        for key in grants.env.keys() {
            if !self.allowed_env.contains(key) {
                return Err(OverCap {
                    field: "grants.env",
                    asked: key.clone(),
                    cap: format!("allowed variables {:?}", self.allowed_env),
                });
            }
        }
        Ok(())
    }

    pub fn max_timeout(&self) -> Duration {
        Duration::from_millis(self.max_timeout_ms)
    }
}
