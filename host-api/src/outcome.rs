//! How an attempt ended (`Outcome`, `TrapKind`) and everything it produced (`AttemptReport`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::events::LogLine;

/// Exactly one per attempt. Names are part of the external contract (SPEC.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// `run` returned `ok`, or a command exited 0.
    Succeeded,
    /// `run` returned `err`, a command exited non-zero, or the component could not be started.
    Failed,
    /// A wasm trap: see [`AttemptReport::trap`] for which.
    Trapped,
    OutOfFuel,
    TimedOut,
    /// The guest asked for more memory (or table space) than its limit.
    OutOfMemory,
    OutputTooLarge,
    Cancelled,
    /// The worker running the attempt died or lost its lease. The sandbox never produces this
    /// itself; the scheduler records it.
    Lost,
}

impl Outcome {
    pub const ALL: [Outcome; 9] = [
        Outcome::Succeeded,
        Outcome::Failed,
        Outcome::Trapped,
        Outcome::OutOfFuel,
        Outcome::TimedOut,
        Outcome::OutOfMemory,
        Outcome::OutputTooLarge,
        Outcome::Cancelled,
        Outcome::Lost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Trapped => "trapped",
            Outcome::OutOfFuel => "out_of_fuel",
            Outcome::TimedOut => "timed_out",
            Outcome::OutOfMemory => "out_of_memory",
            Outcome::OutputTooLarge => "output_too_large",
            Outcome::Cancelled => "cancelled",
            Outcome::Lost => "lost",
        }
    }

    /// Outcomes that would repeat exactly on a retry with the same input and limits; by default
    /// they are not retried.
    pub fn is_deterministic(self) -> bool {
        matches!(
            self,
            Outcome::OutOfFuel | Outcome::OutOfMemory | Outcome::OutputTooLarge
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Outcome::ALL
            .into_iter()
            .find(|o| o.as_str() == s)
            .ok_or_else(|| format!("unknown outcome {s:?}"))
    }
}

/// Which wasm trap ended a `trapped` attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrapKind {
    /// `unreachable` executed — what a Rust `panic!` or `abort` compiles to.
    Unreachable,
    StackOverflow,
    MemoryOutOfBounds,
    TableOutOfBounds,
    IndirectCallToNull,
    BadSignature,
    IntegerOverflow,
    IntegerDivisionByZero,
    BadConversionToInteger,
    HeapMisaligned,
    NullReference,
    /// The component broke a rule of the component model (e.g. invalid string encoding).
    ComponentModel,
    /// A trap wasmtime reports that none of the above names.
    Other,
}

impl TrapKind {
    pub(crate) fn from_trap(trap: wasmtime::Trap) -> TrapKind {
        use wasmtime::Trap as T;
        match trap {
            T::UnreachableCodeReached => TrapKind::Unreachable,
            T::StackOverflow => TrapKind::StackOverflow,
            T::MemoryOutOfBounds => TrapKind::MemoryOutOfBounds,
            T::TableOutOfBounds => TrapKind::TableOutOfBounds,
            T::IndirectCallToNull => TrapKind::IndirectCallToNull,
            T::BadSignature => TrapKind::BadSignature,
            T::IntegerOverflow => TrapKind::IntegerOverflow,
            T::IntegerDivisionByZero => TrapKind::IntegerDivisionByZero,
            T::BadConversionToInteger => TrapKind::BadConversionToInteger,
            T::HeapMisaligned => TrapKind::HeapMisaligned,
            T::NullReference => TrapKind::NullReference,
            T::CannotEnterComponent
            | T::CannotLeaveComponent
            | T::InvalidChar
            | T::CannotBlockSyncTask
            | T::AsyncDeadlock
            | T::NoAsyncResult => TrapKind::ComponentModel,
            _ => TrapKind::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrapKind::Unreachable => "unreachable",
            TrapKind::StackOverflow => "stack_overflow",
            TrapKind::MemoryOutOfBounds => "memory_out_of_bounds",
            TrapKind::TableOutOfBounds => "table_out_of_bounds",
            TrapKind::IndirectCallToNull => "indirect_call_to_null",
            TrapKind::BadSignature => "bad_signature",
            TrapKind::IntegerOverflow => "integer_overflow",
            TrapKind::IntegerDivisionByZero => "integer_division_by_zero",
            TrapKind::BadConversionToInteger => "bad_conversion_to_integer",
            TrapKind::HeapMisaligned => "heap_misaligned",
            TrapKind::NullReference => "null_reference",
            TrapKind::ComponentModel => "component_model",
            TrapKind::Other => "other",
        }
    }
}

impl fmt::Display for TrapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything one attempt produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptReport {
    pub outcome: Outcome,
    /// Which trap, when `outcome` is `trapped`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trap: Option<TrapKind>,
    /// Why the attempt did not succeed, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The job's output (for a command component: its stdout).
    #[serde(with = "output_text")]
    pub output: Vec<u8>,
    pub logs: Vec<LogLine>,
    /// Logs past the attempt's log cap were dropped.
    pub logs_truncated: bool,
    pub fuel_consumed: u64,
    /// Highest total of linear memory and table bytes the instance held.
    pub peak_memory_bytes: u64,
    #[serde(rename = "wall_time_us", with = "micros")]
    pub wall_time: Duration,
    /// How long instantiating the component took (part of `wall_time`); zero when no
    /// instance was made.
    #[serde(rename = "instantiate_us", with = "micros", default)]
    pub instantiate_time: Duration,
    /// A `failed` attempt whose job called `outcome.fail-permanently` before returning its
    /// error: the job is not retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub permanent: bool,
}

impl AttemptReport {
    pub fn succeeded(&self) -> bool {
        self.outcome == Outcome::Succeeded
    }

    /// A `failed` attempt that never started (no instance was made): `error` says why.
    pub fn failed_before_start(error: String) -> AttemptReport {
        AttemptReport {
            outcome: Outcome::Failed,
            trap: None,
            error: Some(error),
            output: Vec::new(),
            logs: Vec::new(),
            logs_truncated: false,
            fuel_consumed: 0,
            peak_memory_bytes: 0,
            wall_time: Duration::ZERO,
            instantiate_time: Duration::ZERO,
            permanent: false,
        }
    }
}

mod micros {
    use super::*;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_micros(u64::deserialize(d)?))
    }
}

/// Output is serialized as text when it is UTF-8 and as `{"base64": …}` otherwise, so that
/// reports stay readable JSON without losing binary output.
mod output_text {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Repr {
        Text(String),
        Binary { base64: String },
    }

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Repr::Text(text.to_string()),
            Err(_) => Repr::Binary {
                base64: STANDARD.encode(bytes),
            },
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        match Repr::deserialize(d)? {
            Repr::Text(t) => Ok(t.into_bytes()),
            Repr::Binary { base64 } => STANDARD.decode(base64).map_err(serde::de::Error::custom),
        }
    }
}
