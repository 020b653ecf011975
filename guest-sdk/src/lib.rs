//! `wasmjobs-guest`: write wasmjobs jobs in Rust.
//!
//! A job is a function from an input to a result. Export it with [`export_job!`] and build the
//! crate for `wasm32-wasip2` (`wasmjobs build`, or `cargo build --release --target
//! wasm32-wasip2`); the `.wasm` file in `target/wasm32-wasip2/release/` is the component to
//! run or upload.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use std::collections::BTreeMap;
//!
//! #[derive(Deserialize)]
//! struct Input {
//!     text: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Output {
//!     words: usize,
//!     counts: BTreeMap<String, usize>,
//! }
//!
//! fn count(input: Input) -> Result<Output, String> {
//!     if input.text.is_empty() {
//!         // An error ends the attempt `failed` with this message.
//!         return Err("text is empty".to_string());
//!     }
//!     let mut counts = BTreeMap::new();
//!     let words: Vec<&str> = input.text.split_whitespace().collect();
//!     for (i, word) in words.iter().enumerate() {
//!         *counts.entry(word.to_lowercase()).or_insert(0) += 1;
//!         wasmjobs_guest::progress(i as u64 + 1, words.len() as u64);
//!     }
//!     wasmjobs_guest::info!("counted {} words", words.len());
//!     Ok(Output { words: words.len(), counts })
//! }
//!
//! wasmjobs_guest::export_job!(count);
//! ```
//!
//! - The input is JSON, decoded into the function's argument type with serde; input that does
//!   not decode ends the attempt `failed` with serde's message.
//! - The `Ok` value is encoded as JSON and becomes the job's output.
//! - The `Err` value (anything that implements `Display`) ends the attempt `failed` with its text,
//!   and the job is retried as its retry policy says. An error that retrying cannot fix (bad
//!   input, a request refused for good) can be made permanent with [`permanent`]: the job then
//!   ends `failed` at once, without its remaining attempts.
//! - A panic ends the attempt `trapped`, with the panic message in the attempt's error.
//!
//! For raw bytes in and out, use [`export_raw_job!`] with `fn(Vec<u8>) -> Result<Vec<u8>, E>`.
//! [`input_bytes`], [`set_output`], [`log`] and [`progress`] are also available directly.

// The generated bindings name this crate by its public path, which inside it needs an alias.
extern crate self as wasmjobs_guest;

use std::fmt::Display;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[doc(hidden)]
pub mod __bindings {
    wit_bindgen::generate!({
        path: "wit",
        world: "job",
        pub_export_macro: true,
        export_macro_name: "__export_job_world",
        default_bindings_module: "::wasmjobs_guest::__bindings",
        runtime_path: "::wasmjobs_guest::__wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen as __wit_bindgen;

use __bindings::wasmjobs::job::{io, outcome, report};

/// Log levels for [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// The job's raw input bytes.
pub fn input_bytes() -> Vec<u8> {
    io::input()
}

/// The job's input decoded from JSON.
pub fn input<T: DeserializeOwned>() -> Result<T, serde_json::Error> {
    serde_json::from_slice(&io::input())
}

/// Sets the job's output bytes; a later call replaces them. Output over the attempt's cap ends
/// the attempt `output_too_large`.
pub fn set_output(bytes: &[u8]) {
    io::output(bytes)
}

/// Sets the job's output to `value` encoded as JSON.
pub fn set_output_json<T: Serialize + ?Sized>(value: &T) -> Result<(), serde_json::Error> {
    io::output(&serde_json::to_vec(value)?);
    Ok(())
}

/// Records a log line; clients following the job see it live. Never fails: past the attempt's
/// log cap lines are dropped and the attempt is flagged `logs_truncated`.
pub fn log(level: Level, message: &str) {
    let level = match level {
        Level::Trace => report::Level::Trace,
        Level::Debug => report::Level::Debug,
        Level::Info => report::Level::Info,
        Level::Warn => report::Level::Warn,
        Level::Error => report::Level::Error,
    };
    report::log(level, message)
}

/// Marks this attempt's failure as permanent and gives back `message`, for the `Err` the job
/// returns: the job then ends `failed` at this attempt, whatever its retry policy has left.
///
/// ```no_run
/// fn fetch(input: serde_json::Value) -> Result<serde_json::Value, String> {
///     let Some(url) = input["url"].as_str() else {
///         // No attempt can succeed on this input: do not retry it.
///         return Err(wasmjobs_guest::permanent("the input has no url"));
///     };
///     Ok(serde_json::json!({ "url": url }))
/// }
/// # wasmjobs_guest::export_job!(fetch);
/// ```
///
/// It marks the attempt, not the value: returning `Ok` afterwards succeeds as usual. (In the
/// WIT contract this is `wasmjobs:job/outcome.fail-permanently`, added in 0.1.1; any language
/// calls it before returning its error.)
pub fn permanent(message: impl Into<String>) -> String {
    outcome::fail_permanently();
    message.into()
}

/// Reports progress: `done` of `total` units (`total` 0 when unknown).
pub fn progress(done: u64, total: u64) {
    report::progress(done, total)
}

/// `info!("read {} rows", n)`: a formatted [`log`] line at info level.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log($crate::Level::Info, &::std::format!($($arg)*)) };
}

/// `warn!(...)`: a formatted [`log`] line at warn level.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log($crate::Level::Warn, &::std::format!($($arg)*)) };
}

/// `error!(...)`: a formatted [`log`] line at error level.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log($crate::Level::Error, &::std::format!($($arg)*)) };
}

/// `debug!(...)`: a formatted [`log`] line at debug level.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log($crate::Level::Debug, &::std::format!($($arg)*)) };
}

#[doc(hidden)]
pub fn __run_json<I, O, E, F>(f: F) -> Result<(), String>
where
    I: DeserializeOwned,
    O: Serialize,
    E: Display,
    F: FnOnce(I) -> Result<O, E>,
{
    let input: I =
        serde_json::from_slice(&io::input()).map_err(|e| format!("invalid input: {e}"))?;
    let out = f(input).map_err(|e| e.to_string())?;
    let bytes =
        serde_json::to_vec(&out).map_err(|e| format!("cannot encode output as JSON: {e}"))?;
    io::output(&bytes);
    Ok(())
}

#[doc(hidden)]
pub fn __run_raw<E, F>(f: F) -> Result<(), String>
where
    E: Display,
    F: FnOnce(Vec<u8>) -> Result<Vec<u8>, E>,
{
    let out = f(io::input()).map_err(|e| e.to_string())?;
    io::output(&out);
    Ok(())
}

/// Exports `fn(I) -> Result<O, E>` as the job: `I` decoded from the JSON input, `O` encoded as
/// the JSON output, `E: Display` the failure message. Use once per crate.
#[macro_export]
macro_rules! export_job {
    ($handler:path) => {
        struct __WasmjobsJob;
        impl $crate::__bindings::Guest for __WasmjobsJob {
            fn run() -> ::core::result::Result<(), ::std::string::String> {
                $crate::__run_json($handler)
            }
        }
        $crate::__bindings::__export_job_world!(__WasmjobsJob with_types_in $crate::__bindings);
    };
}

/// Exports `fn(Vec<u8>) -> Result<Vec<u8>, E>` as the job: raw input bytes in, raw output bytes
/// out. Use once per crate.
#[macro_export]
macro_rules! export_raw_job {
    ($handler:path) => {
        struct __WasmjobsJob;
        impl $crate::__bindings::Guest for __WasmjobsJob {
            fn run() -> ::core::result::Result<(), ::std::string::String> {
                $crate::__run_raw($handler)
            }
        }
        $crate::__bindings::__export_job_world!(__WasmjobsJob with_types_in $crate::__bindings);
    };
}
