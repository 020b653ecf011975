//! The workflow service: DAGs of jobs, a node's output becoming its successors' input.
//!
//! A separate service on top of jobs (its own module, tables, routes and CLI verb): a job
//! knows only an opaque `workflow_ref` (its run's id). Definitions — parsing, validation and
//! drawing ([`definition`]) — are stored and versioned by name; [`service`] starts, cancels and
//! reads runs; [`plan`] decides a run's next step (a pure function); [`engine`] reads what
//! it needs, writes the step and steps runs forward as their jobs end. Routes in `http/workflows.rs`,
//! the CLI verb in `cli/workflow.rs`.

pub mod definition;
pub mod engine;
pub mod plan;
pub mod service;

pub use definition::{Condition, Definition, DefinitionError, ForEach, Node, OnFailure, Validated};
pub use service::WorkflowService;
