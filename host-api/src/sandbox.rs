//! The [`Sandbox`]: one wasmtime engine (fuel, epochs, pooling allocator, bounded stack), its
//! epoch ticker, and the linker with WASI and the `wasmjobs:job` imports. Built once per process.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings::Job;
use crate::config::SandboxConfig;
use crate::host::HostState;

/// Runs job components. Cheap to clone; clones share the engine, ticker and instance slots.
#[derive(Clone)]
pub struct Sandbox {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<HostState>,
    pub(crate) config: SandboxConfig,
    /// One permit per pooling-allocator instance slot: attempts past the pool's size wait.
    pub(crate) slots: Arc<Semaphore>,
}

/// Why a sandbox could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the sandbox engine: {0}")]
pub struct SandboxError(String);

impl Sandbox {
    /// Builds the engine, starts the epoch ticker thread and links the host API.
    pub fn new(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let engine =
            Engine::new(&engine_config(config)?).map_err(|e| SandboxError(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| SandboxError(format!("{e:#}")))?;
        Job::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(|e| SandboxError(format!("{e:#}")))?;
        start_ticker(&engine, config.epoch_tick);
        Ok(Sandbox {
            inner: Arc::new(Inner {
                engine,
                linker,
                config: config.clone(),
                slots: Arc::new(Semaphore::new(config.max_instances as usize)),
            }),
        })
    }

    /// The wasmtime engine, for hosts that need to share it.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// A key that changes whenever compiled artifacts of this engine stop being loadable by
    /// another: wasmtime's version and every setting that affects code generation. Use it with
    /// the module digest to key a cache of compiled artifacts.
    #[cfg(feature = "compiler")]
    pub fn compatibility_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.inner
            .engine
            .precompile_compatibility_hash()
            .hash(&mut h);
        format!("wasmtime-{}-{:016x}", env!("CARGO_PKG_VERSION"), h.finish())
    }
}

fn engine_config(cfg: &SandboxConfig) -> Result<Config, SandboxError> {
    let mut c = Config::new();
    if let Some(target) = &cfg.target {
        c.target(target)
            .map_err(|e| SandboxError(format!("target {target:?}: {e:#}")))?;
    }
    c.wasm_component_model(true);
    c.consume_fuel(true);
    c.epoch_interruption(true);
    c.max_wasm_stack(cfg.max_wasm_stack_bytes);
    // The fiber stack must hold the wasm stack plus the host frames below it.
    c.async_stack_size(cfg.max_wasm_stack_bytes + (512 << 10));
    c.memory_init_cow(true);
    if cfg.max_memory_bytes < (4 << 30) {
        // Smaller slots let many more instances live at once (the address space is finite).
        c.memory_reservation(cfg.max_memory_bytes);
    }

    let n = cfg.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_core_instances_per_component(32)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_memory_size(usize::try_from(cfg.max_memory_bytes).unwrap_or(usize::MAX))
        .table_elements(cfg.max_table_elements as usize)
        .linear_memory_keep_resident(cfg.keep_resident_bytes)
        .table_keep_resident(cfg.keep_resident_bytes)
        .async_stack_keep_resident(cfg.keep_resident_bytes)
        // Reset only the pages an instance dirtied (Linux 6.7+; ignored elsewhere).
        .pagemap_scan(Enabled::Auto);
    c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Ok(c)
}

/// Increments the engine's epoch every `tick` until the engine is dropped.
fn start_ticker(engine: &Engine, tick: Duration) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("wasmjobs-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(tick);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        });
    if let Err(e) = spawned {
        // Without a ticker, in-wasm timeouts would not fire; the host timer still ends every
        // attempt at its deadline, so log and go on.
        tracing::error!("cannot start the epoch ticker thread: {e}");
    }
}
