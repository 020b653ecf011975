//! `wasmjobs-host`: the wasmjobs sandbox — runs WASM job components under fuel, memory and
//! wall-clock limits and reports exactly one outcome per attempt.
//!
//! This crate has no database and no HTTP: it is what the wasmjobs server uses for every
//! attempt and what an edge host embeds directly.
//!
//! # Example
//!
//! ```no_run
//! # #[cfg(feature = "compiler")]
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use wasmjobs_host::{Limits, RunRequest, Sandbox, SandboxConfig};
//!
//! // One sandbox (one wasmtime engine and its epoch ticker) per process.
//! let sandbox = Sandbox::new(&SandboxConfig::default())?;
//! // Load once: validates the component and prepares it for fast instantiation.
//! let job = sandbox.load(&std::fs::read("wordfreq.wasm")?)?;
//! // Run many times, each attempt in a fresh instance.
//! let report = sandbox
//!     .run(&job, RunRequest::new(br#"{"text": "a b a"}"#.to_vec()).limits(Limits::default()))
//!     .await;
//! println!("{}: {}", report.outcome, String::from_utf8_lossy(&report.output));
//! # Ok(())
//! # }
//! ```
//!
//! # Runtime only (the edge profile)
//!
//! Built with `default-features = false` there is no compiler: load artifacts made by
//! `wasmjobs compile` (or [`Sandbox::precompile`]) and run them with per-call limits and an
//! event sink. `examples/edge-host` in the repository is a whole HTTP server built this way.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::path::Path;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use wasmjobs_host::{Event, Limits, Outcome, RunRequest, Sandbox, SandboxConfig};
//!
//! let sandbox = Sandbox::new(&SandboxConfig::default())?;
//! // Maps the artifact into memory; fails with `LoadError::IncompatibleArtifact` if another
//! // wasmtime version, other settings or another CPU made it.
//! // SAFETY: an artifact we made with `wasmjobs compile` and deployed ourselves.
//! # #[allow(unsafe_code)]
//! let render = unsafe { sandbox.load_artifact_file(Path::new("markdown.cwasm"))? };
//! let limits = Limits {
//!     memory_bytes: 32 << 20,
//!     timeout: Duration::from_secs(1),
//!     ..Limits::default()
//! };
//! for page in ["# One", "# Two"] {
//!     let request = RunRequest::new(page.as_bytes().to_vec())
//!         .limits(limits)
//!         .events(Arc::new(|event: Event| eprintln!("{event:?}")));
//!     let report = sandbox.run(&render, request).await;
//!     match report.outcome {
//!         Outcome::Succeeded => println!("{}", String::from_utf8_lossy(&report.output)),
//!         Outcome::TimedOut => eprintln!("too slow"),
//!         other => eprintln!("{other}: {}", report.error.unwrap_or_default()),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/embedding.md` in the repository for the whole embedding API.

mod bindings;
#[cfg(feature = "compiler")]
mod cache;
mod capture;
mod config;
mod events;
mod grants;
mod host;
mod limiter;
mod limits;
mod module;
mod outcome;
mod run;
mod sandbox;
pub mod units;

#[cfg(feature = "compiler")]
pub use cache::{ArtifactCache, CacheStatus};
pub use config::SandboxConfig;
pub use events::{Event, EventSink, LogLevel, LogLine, NoEvents};
pub use grants::{AllowedDirs, GrantError, ResolvedGrant};
pub use limits::{DirGrant, Grants, Limits};
pub use module::{JobModule, LoadError, ModuleInfo, World, sha256_digest};
pub use outcome::{AttemptReport, Outcome, TrapKind};
pub use run::{CancelHandle, RunRequest};
pub use sandbox::{Sandbox, SandboxError};
