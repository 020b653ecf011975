//! The workflow service: DAGs of jobs, a node's output becoming its successors' input.
//!
//! A separate service on top of jobs (its own module, tables, routes and CLI verb): a job
//! knows only an opaque `workflow_ref`. Built so far: definitions — parsing, validation and
//! drawing ([`definition`]) — stored and versioned by name (`workflows` table, routes in
//! `http/workflows.rs`). Runs (the engine, their tables, routes and CLI) are next (issue 5).

pub mod definition;

pub use definition::{Condition, Definition, DefinitionError, ForEach, Node, OnFailure, Validated};
