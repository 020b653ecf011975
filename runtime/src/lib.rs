//! `wasmjobs`: the WebAssembly-sandboxed job runtime — command line, and (as they land) the
//! store, scheduler, job and workflow services and HTTP API. Touches wasm only through
//! `wasmjobs-host`.

pub mod activity;
pub mod admission;
pub mod caller;
pub mod cli;
pub mod config;
pub mod events;
pub mod exit;
pub mod http;
pub mod notices;
pub mod scheduler;
mod schema;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod throttle;
pub mod watch;
pub mod workflow;
