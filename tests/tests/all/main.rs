//! The one integration-test binary of wasmjobs (one binary: each extra one re-links wasmtime).
//! One module per area.

mod api;
mod cli;
mod e2e;
mod edge;
mod examples;
mod recovery;
mod sandbox;
mod security;
mod store;
mod workflows;
