//! `wasmjobs`: the WebAssembly-sandboxed job runtime — command line, and (as they land) the
//! store, scheduler, job and workflow services and HTTP API. Touches wasm only through
//! `wasmjobs-host`.

pub mod cli;
pub mod exit;
pub mod store;
