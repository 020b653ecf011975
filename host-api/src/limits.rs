//! What one attempt may use (`Limits`) and what it may touch outside the sandbox (`Grants`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::units;

/// The budget of one attempt. Every field is enforced; none can be switched off.
///
/// In JSON, sizes and durations may be numbers (bytes, milliseconds) or human-readable strings:
/// `{"memory_bytes": "64MiB", "timeout_ms": "5s"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Instruction budget (wasmtime fuel; roughly one unit per wasm instruction).
    pub fuel: u64,
    /// Bytes of all linear memories and tables of the instance together.
    #[serde(deserialize_with = "size")]
    pub memory_bytes: u64,
    /// Wall-clock time for the attempt, enforced by epoch interruption and, while the guest is
    /// blocked in a host call, by the host's own timer.
    #[serde(rename = "timeout_ms", with = "millis")]
    pub timeout: Duration,
    /// Largest output the job may set; more ends the attempt `output_too_large`.
    #[serde(deserialize_with = "size")]
    pub max_output_bytes: u64,
    /// Log bytes kept (report.log, stdout, stderr together); the rest is dropped and flagged.
    #[serde(deserialize_with = "size")]
    pub max_log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel: 10_000_000_000,
            memory_bytes: 128 * 1024 * 1024,
            timeout: Duration::from_secs(30),
            max_output_bytes: 4 * 1024 * 1024,
            max_log_bytes: 256 * 1024,
        }
    }
}

/// A host directory made visible to the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirGrant {
    /// Directory on the host.
    pub host: PathBuf,
    /// Path the guest sees it at, e.g. `/data`.
    pub guest: String,
    /// Read-only unless this is true.
    #[serde(default)]
    pub writable: bool,
}

/// Capabilities beyond the locked-down default (no directories, no environment, no sockets).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    pub dirs: Vec<DirGrant>,
    pub env: BTreeMap<String, String>,
}

impl Grants {
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.env.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(u64),
    Text(String),
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrText::deserialize(d)? {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(t) => units::parse_size(&t).map_err(serde::de::Error::custom),
    }
}

mod millis {
    use super::*;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => Ok(Duration::from_millis(n)),
            NumberOrText::Text(t) => units::parse_duration(&t).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_accept_numbers_and_human_text() {
        let l: Limits =
            serde_json::from_str(r#"{"memory_bytes": "64MiB", "timeout_ms": "5s", "fuel": 7}"#)
                .expect("valid limits");
        assert_eq!(l.memory_bytes, 64 << 20);
        assert_eq!(l.timeout, Duration::from_secs(5));
        assert_eq!(l.fuel, 7);
        assert_eq!(l.max_output_bytes, Limits::default().max_output_bytes);
        let l: Limits = serde_json::from_str(r#"{"timeout_ms": 250}"#).expect("valid limits");
        assert_eq!(l.timeout, Duration::from_millis(250));
    }

    #[test]
    fn bad_limits_name_the_problem() {
        let e = serde_json::from_str::<Limits>(r#"{"memory_bytes": "huge"}"#).unwrap_err();
        assert!(e.to_string().contains("huge"), "{e}");
        let e = serde_json::from_str::<Limits>(r#"{"fuel_units": 1}"#).unwrap_err();
        assert!(e.to_string().contains("fuel_units"), "{e}");
    }
}
