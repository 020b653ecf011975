//! How the one wasmtime engine of a [`crate::Sandbox`] is built. See
//! `docs/decisions/001-engine-configuration.md` for why each setting is what it is.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Engine-wide settings, fixed when the [`crate::Sandbox`] is created. Per-attempt budgets are
/// [`crate::Limits`]; these bound what any attempt can be given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// How many instances may be alive at once (pooling allocator slots). Attempts beyond this
    /// wait for a slot instead of failing.
    pub max_instances: u32,
    /// Largest size of any one linear memory (and so the most `Limits::memory_bytes` can grant
    /// one memory).
    pub max_memory_bytes: u64,
    /// Most elements of any one table.
    pub max_table_elements: u32,
    /// Epoch tick: timeouts and cancels take effect within about one tick.
    #[serde(with = "humantime_serde_compat")]
    pub epoch_tick: Duration,
    /// Most native stack wasm may use before trapping with `stack_overflow`.
    pub max_wasm_stack_bytes: usize,
    /// Pages of memory, tables and stacks kept resident between instances in a slot (faster
    /// re-instantiation at the cost of idle RSS).
    pub keep_resident_bytes: usize,
    /// Compile for, and run as, this target instead of the host: a target triple such as
    /// `aarch64-unknown-linux-gnu` (to precompile artifacts for another machine; such a
    /// sandbox cannot run them), or `pulley64` for wasmtime's portable interpreter (needs the
    /// `pulley` feature to run; no native code is generated or mapped executable).
    pub target: Option<String>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_instances: 1000,
            max_memory_bytes: 4 << 30,
            max_table_elements: 100_000,
            epoch_tick: Duration::from_millis(10),
            max_wasm_stack_bytes: 1 << 20,
            keep_resident_bytes: 1 << 20,
            target: None,
        }
    }
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::units::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}
