//! Host side of the `wasmjobs:job` imports (`io`, `report`) and the per-attempt store data they
//! work on.

use std::time::Instant;

use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::bindings::wasmjobs::job::{io, outcome, report};
use crate::capture::{Logs, OutputBuffer};
use crate::events::LogLevel;
use crate::limiter::Limiter;

/// Everything one attempt's store holds.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limiter: Limiter,
    pub(crate) input: std::sync::Arc<[u8]>,
    pub(crate) output: OutputBuffer,
    pub(crate) logs: Logs,
    pub(crate) deadline: Instant,
    pub(crate) cancel: CancellationToken,
    /// How long instantiating the component took, once it was instantiated.
    pub(crate) instantiate_time: Option<std::time::Duration>,
    /// The guest called `outcome.fail-permanently`: a failure it returns is not retried.
    pub(crate) permanent: bool,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl io::Host for HostState {
    fn input(&mut self) -> wasmtime::Result<Vec<u8>> {
        Ok(self.input.to_vec())
    }

    fn output(&mut self, data: Vec<u8>) -> wasmtime::Result<()> {
        self.output.replace(data).map_err(wasmtime::Error::new)
    }
}

impl report::Host for HostState {
    fn log(&mut self, level: report::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            report::Level::Trace => LogLevel::Trace,
            report::Level::Debug => LogLevel::Debug,
            report::Level::Info => LogLevel::Info,
            report::Level::Warn => LogLevel::Warn,
            report::Level::Error => LogLevel::Error,
        };
        self.logs.push(level, "report", &message);
        Ok(())
    }

    fn progress(&mut self, done: u64, total: u64) -> wasmtime::Result<()> {
        self.logs.progress(done, total);
        Ok(())
    }
}

impl outcome::Host for HostState {
    fn fail_permanently(&mut self) -> wasmtime::Result<()> {
        self.permanent = true;
        Ok(())
    }
}
