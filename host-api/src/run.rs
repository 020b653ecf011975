//! Running one attempt: a fresh store with every limit set, the call raced against the wall
//! clock and the cancel handle, and the result turned into exactly one [`Outcome`].

use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use wasmtime::component::ResourceTable;
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtxBuilder};

use crate::capture::{Killed, LogStream, Logs, OutputBuffer, Stdio};
use crate::events::{EventSink, NoEvents};
use crate::grants::{AllowedDirs, path_of_open_dir};
use crate::host::HostState;
use crate::limiter::Limiter;
use crate::limits::{Grants, Limits};
use crate::module::{JobModule, World};
use crate::outcome::{AttemptReport, Outcome, TrapKind};
use crate::sandbox::Sandbox;

/// Fuel units between write-backs of the fuel counter (see `Sandbox::run`).
const FUEL_SYNC: u64 = 10_000_000;

/// Stops a running attempt: the attempt ends `cancelled` within about one epoch tick, even
/// when the guest is blocked in a host call. Clone it to hand it to another task.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(CancellationToken);

impl CancelHandle {
    pub fn new() -> CancelHandle {
        CancelHandle::default()
    }

    pub fn cancel(&self) {
        self.0.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}

/// Everything one attempt needs besides the module.
pub struct RunRequest {
    input: Arc<[u8]>,
    limits: Limits,
    grants: Grants,
    cancel: CancelHandle,
    events: Arc<dyn EventSink>,
    confine: Option<Arc<AllowedDirs>>,
}

impl RunRequest {
    /// An attempt with this input, default limits, no grants and no event sink.
    pub fn new(input: impl Into<Arc<[u8]>>) -> RunRequest {
        RunRequest {
            input: input.into(),
            limits: Limits::default(),
            grants: Grants::default(),
            cancel: CancelHandle::new(),
            events: Arc::new(NoEvents),
            confine: None,
        }
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn grants(mut self, grants: Grants) -> Self {
        self.grants = grants;
        self
    }

    pub fn cancel(mut self, cancel: CancelHandle) -> Self {
        self.cancel = cancel;
        self
    }

    /// Grants directories only inside `allowed`: each granted directory is checked and
    /// opened beneath the allowed directory that holds it when the attempt starts, so that a
    /// path or symlink changed since the job was admitted cannot lead elsewhere. A grant
    /// outside them ends the attempt `failed` before it starts. Without this, granted
    /// directories are opened as the host sees them (`wasmjobs run` on one's own machine).
    pub fn confine_dirs(mut self, allowed: Arc<AllowedDirs>) -> Self {
        self.confine = Some(allowed);
        self
    }

    /// Receives logs and progress as they happen.
    pub fn events(mut self, events: Arc<dyn EventSink>) -> Self {
        self.events = events;
        self
    }
}

/// How the call itself ended, before it is classified.
enum Ended {
    Returned(Result<(), String>),
    CommandExit(Result<(), ()>),
    Error(wasmtime::Error),
}

impl Sandbox {
    /// Runs one attempt of `module` in a fresh instance. Never fails: every way the attempt can
    /// end, including a hostile guest, is an [`Outcome`] in the report.
    pub async fn run(&self, module: &JobModule, req: RunRequest) -> AttemptReport {
        let started = Instant::now();
        let deadline = started + req.limits.timeout;
        let logs = Logs::new(req.limits.max_log_bytes, started, req.events.clone());
        let output = OutputBuffer::new(req.limits.max_output_bytes);
        let stdout_log = LogStream::new(logs.clone(), Stdio::Stdout);
        let stderr_log = LogStream::new(logs.clone(), Stdio::Stderr);

        let wasi = match build_wasi(module.world(), &req, &output, &stdout_log, &stderr_log) {
            Ok(w) => w,
            Err(message) => return AttemptReport::failed_before_start(message),
        };
        let cfg = &self.inner.config;
        let mut store = Store::new(
            &self.inner.engine,
            HostState {
                wasi,
                table: ResourceTable::new(),
                limiter: Limiter::new(
                    req.limits.memory_bytes,
                    cfg.max_memory_bytes,
                    u64::from(cfg.max_table_elements),
                ),
                input: req.input.clone(),
                output: output.clone(),
                logs: logs.clone(),
                deadline,
                cancel: req.cancel.0.clone(),
                instantiate_time: None,
                permanent: false,
            },
        );
        store.limiter(|s| &mut s.limiter);
        // A new store has no fuel and an epoch deadline already passed: set both.
        // Compiled code keeps its fuel counter in a register and writes it back only at calls
        // and exits, so an attempt stopped by an epoch (timeout, cancel) would report the fuel of
        // its last write-back. Yielding every FUEL_SYNC units writes it back regularly: the
        // reported figure is then short by less than FUEL_SYNC.
        let fuel_set = store
            .fuel_async_yield_interval(Some(FUEL_SYNC))
            .and_then(|()| store.set_fuel(req.limits.fuel));
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(|ctx| {
            let state = ctx.data();
            if state.cancel.is_cancelled() {
                return Err(wasmtime::Error::new(Killed::Cancelled));
            }
            if Instant::now() >= state.deadline {
                return Err(wasmtime::Error::new(Killed::TimedOut));
            }
            // Let the executor poll the host timer and cancel handle, then keep running.
            Ok(UpdateDeadline::Yield(1))
        });
        if let Err(e) = fuel_set {
            return AttemptReport::failed_before_start(format!("cannot set fuel: {e:#}"));
        }

        let ended = {
            let call = call(self, module, &mut store);
            tokio::select! {
                biased;
                _ = req.cancel.0.cancelled() => Ended::Error(wasmtime::Error::new(Killed::Cancelled)),
                _ = tokio::time::sleep_until(deadline.into()) => Ended::Error(wasmtime::Error::new(Killed::TimedOut)),
                ended = call => ended,
            }
        };
        let wall_time = started.elapsed();

        stdout_log.finish();
        stderr_log.finish();
        let fuel_consumed = req
            .limits
            .fuel
            .saturating_sub(store.get_fuel().unwrap_or(0));
        let peak_memory_bytes = store.data().limiter.peak;
        let instantiate_time = store.data().instantiate_time.unwrap_or_default();
        let marked_permanent = store.data().permanent;
        let refused = store.data_mut().limiter.refused.take();
        drop(store);

        let (outcome, trap, error) = classify(ended, refused);
        let (logs, logs_truncated) = logs.take();
        let error = error.map(|e| match trap {
            Some(TrapKind::Unreachable) => with_panic_message(e, &logs),
            _ => e,
        });
        let output = match outcome {
            Outcome::Succeeded | Outcome::Failed => output.take(),
            _ => Vec::new(),
        };
        AttemptReport {
            outcome,
            trap,
            error,
            output,
            logs,
            logs_truncated,
            fuel_consumed,
            peak_memory_bytes,
            wall_time,
            instantiate_time,
            // Only a failure the guest returned is its to call permanent.
            permanent: marked_permanent && outcome == Outcome::Failed,
        }
    }
}

/// Waits for an instance slot, instantiates and calls the component's entry point.
async fn call(sandbox: &Sandbox, module: &JobModule, store: &mut Store<HostState>) -> Ended {
    let _slot = match sandbox.inner.slots.clone().acquire_owned().await {
        Ok(permit) => permit,
        Err(_) => return Ended::Error(wasmtime::Error::msg("the sandbox is shutting down")),
    };
    // The instantiation futures are boxed: a future is as large as its largest state, and
    // inline they would make every attempt's task ~0.9 KB larger for as long as it lives
    // (a guest asleep in a WASI call keeps it), though instantiation is over in microseconds.
    let started = Instant::now();
    if let Some(pre) = module.job_pre() {
        let job = match Box::pin(pre.instantiate_async(&mut *store)).await {
            Ok(job) => job,
            Err(e) => return Ended::Error(e),
        };
        store.data_mut().instantiate_time = Some(started.elapsed());
        match job.call_run(&mut *store).await {
            Ok(result) => Ended::Returned(result),
            Err(e) => Ended::Error(e),
        }
    } else if let Some(pre) = module.command_pre() {
        let command = match Box::pin(pre.instantiate_async(&mut *store)).await {
            Ok(c) => c,
            Err(e) => return Ended::Error(e),
        };
        store.data_mut().instantiate_time = Some(started.elapsed());
        match command.wasi_cli_run().call_run(&mut *store).await {
            Ok(result) => Ended::CommandExit(result),
            Err(e) => Ended::Error(e),
        }
    } else {
        Ended::Error(wasmtime::Error::msg("module has no entry point"))
    }
}

/// WASI for one attempt: nothing but what the grants name. No sockets, no environment, no
/// directories; stdout/stderr go to the log (a command's stdout is its output).
fn build_wasi(
    world: World,
    req: &RunRequest,
    output: &OutputBuffer,
    stdout_log: &LogStream,
    stderr_log: &LogStream,
) -> Result<wasmtime_wasi::WasiCtx, String> {
    let mut b = WasiCtxBuilder::new();
    // `wasi:random/random` straight from the OS generator (getrandom): as unpredictable as a
    // seeded ChaCha, and stateless, so a live instance carries no generator state (~0.3 KiB).
    b.secure_random(rand::rand_core::UnwrapErr(rand::rngs::SysRng));
    b.allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    b.socket_addr_check(|_, _| Box::pin(async { false }));
    b.stderr(stderr_log.clone());
    match world {
        World::Job => {
            b.stdout(stdout_log.clone());
        }
        World::Command => {
            b.stdin(MemoryInputPipe::new(req.input.to_vec()));
            b.stdout(output.clone());
            b.arg("job");
        }
    }
    for (k, v) in &req.grants.env {
        b.env(k, v);
    }
    for dir in &req.grants.dirs {
        let perms = if dir.writable {
            FsPerms::ReadWrite
        } else {
            FsPerms::ReadOnly
        };
        let cannot = |e: &dyn std::fmt::Display| {
            format!(
                "cannot grant directory {} as {}: {e}",
                dir.host.display(),
                dir.guest
            )
        };
        match &req.confine {
            Some(allowed) => {
                // Opened here, beneath its allowed root, and handed to WASI by what names the
                // open directory: WASI's own open of that name cannot be redirected.
                let opened = allowed.open(&dir.host).map_err(|e| cannot(&e))?;
                let path = path_of_open_dir(&opened, &dir.host);
                b.preopened_dir(&path, &dir.guest, perms)
                    .map_err(|e| cannot(&format_args!("{e:#}")))?;
            }
            None => {
                b.preopened_dir(&dir.host, &dir.guest, perms)
                    .map_err(|e| cannot(&format_args!("{e:#}")))?;
            }
        }
    }
    Ok(b.build())
}

/// Turns how the call ended into exactly one outcome, the trap kind, and a message.
fn classify(
    ended: Ended,
    refused_growth: Option<String>,
) -> (Outcome, Option<TrapKind>, Option<String>) {
    let err = match ended {
        Ended::Returned(Ok(())) | Ended::CommandExit(Ok(())) => {
            return (Outcome::Succeeded, None, None);
        }
        Ended::Returned(Err(message)) => return (Outcome::Failed, None, Some(message)),
        Ended::CommandExit(Err(())) => {
            return (
                Outcome::Failed,
                None,
                Some("the command exited with a failure status".into()),
            );
        }
        Ended::Error(e) => e,
    };
    if let Some(killed) = err.downcast_ref::<Killed>() {
        let outcome = match killed {
            Killed::TimedOut => Outcome::TimedOut,
            Killed::Cancelled => Outcome::Cancelled,
            Killed::OutputTooLarge { .. } => Outcome::OutputTooLarge,
        };
        return (outcome, None, Some(killed.to_string()));
    }
    // WASI 0.2's `exit` carries only success or failure (any failing code arrives as 1), so
    // the message says failure and invents no code.
    if let Some(exit) = err.downcast_ref::<I32Exit>() {
        return match exit.0 {
            0 => (Outcome::Succeeded, None, None),
            _ => (
                Outcome::Failed,
                None,
                Some("the command exited with a failure status".into()),
            ),
        };
    }
    // A trap after a refused growth is the guest reacting to running out of memory (a Rust
    // guest aborts with `unreachable`): the limiter's record says so, not the trap's message.
    if let Some(reason) = refused_growth {
        return (Outcome::OutOfMemory, None, Some(reason));
    }
    if let Some(trap) = err.downcast_ref::<Trap>() {
        return match trap {
            Trap::OutOfFuel => (
                Outcome::OutOfFuel,
                None,
                Some("the attempt used up its fuel".into()),
            ),
            Trap::Interrupt => (Outcome::TimedOut, None, Some(Killed::TimedOut.to_string())),
            other => {
                let kind = TrapKind::from_trap(*other);
                (Outcome::Trapped, Some(kind), Some(other.to_string()))
            }
        };
    }
    (Outcome::Failed, None, Some(format!("{err:#}")))
}

/// A Rust guest that panics prints `panicked at FILE:LINE:COL:` and the message to stderr, then
/// traps with `unreachable`; put that message in the error where people look first.
fn with_panic_message(error: String, logs: &[crate::events::LogLine]) -> String {
    let stderr: Vec<&str> = logs
        .iter()
        .filter(|l| l.source == "stderr")
        .map(|l| l.message.as_str())
        .collect();
    match stderr.iter().position(|l| l.contains("panicked at")) {
        Some(i) => {
            let location = stderr[i]
                .split("panicked at")
                .nth(1)
                .unwrap_or("")
                .trim()
                .trim_end_matches(':');
            let message = stderr.get(i + 1).copied().unwrap_or("");
            format!("panicked at {location}: {message} ({error})")
        }
        None => error,
    }
}
