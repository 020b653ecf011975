//! Helpers shared by the benchmarks: the bare-wasmtime floor and the machine description.

#![allow(dead_code)]

use std::time::Instant;

use wasmjobs_host::{Limits, Outcome, RunRequest, Sandbox};

/// A trivial `wasmjobs:job` component: imports nothing, `run` returns `ok`.
pub const TRIVIAL_WAT: &str = r#"
(component
  (core module $m
    (memory (export "mem") 1)
    ;; result<_, string> is returned through memory: offset 16 holds discriminant 0 (ok).
    (func (export "run") (result i32) (i32.const 16)))
  (core instance $i (instantiate $m))
  (func $run (result (result (error string)))
    (canon lift (core func $i "run") (memory (core memory $i "mem"))))
  (export "run" (func $run)))
"#;

/// [`TRIVIAL_WAT`] as component bytes.
pub fn trivial_component() -> Vec<u8> {
    wat::parse_str(TRIVIAL_WAT).expect("trivial component WAT")
}

/// Bare wasmtime: same pooling allocator, no fuel, no epochs, no limiter, no WASI, sync call.
pub fn floor_us_per_job(component: &[u8], n: usize) -> f64 {
    use wasmtime::component::{Component, Linker};
    use wasmtime::{
        Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    };
    let mut pool = PoolingAllocationConfig::new();
    pool.linear_memory_keep_resident(1 << 20)
        .table_keep_resident(1 << 20)
        .pagemap_scan(Enabled::Auto);
    let mut config = Config::new();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).expect("engine");
    let component = Component::new(&engine, component).expect("component");
    let linker: Linker<()> = Linker::new(&engine);
    let pre = linker.instantiate_pre(&component).expect("pre");
    let once = || {
        let mut store = Store::new(&engine, ());
        let instance = pre.instantiate(&mut store).expect("instantiate");
        let run = instance
            .get_typed_func::<(), (Result<(), String>,)>(&mut store, "run")
            .expect("run");
        let (r,) = run.call(&mut store, ()).expect("call");
        assert!(r.is_ok());
    };
    for _ in 0..n / 10 {
        once();
    }
    let start = Instant::now();
    for _ in 0..n {
        once();
    }
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

/// Wall µs per job with `threads` OS threads each running jobs back to back.
pub fn per_job_us(
    sandbox: &Sandbox,
    module: &wasmjobs_host::JobModule,
    limits: Limits,
    n: usize,
    threads: usize,
) -> f64 {
    let run_many = |count: usize| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            for _ in 0..count {
                let r = sandbox
                    .run(module, RunRequest::new(&b"{}"[..]).limits(limits))
                    .await;
                assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
            }
        });
    };
    run_many(n / 10);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| run_many(n / threads));
        }
    });
    start.elapsed().as_secs_f64() * 1e6 / n as f64
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// The backends a benchmark runs on, as `(name, url)`: SQLite at `sqlite_path`, and Postgres
/// when `WASMJOBS_TEST_POSTGRES` is set (said when it is not); `WASMJOBS_BENCH_BACKENDS=sqlite`
/// (or `postgres`) keeps one.
pub fn backends(sqlite_path: String) -> Vec<(&'static str, String)> {
    let mut backends = vec![("sqlite", sqlite_path)];
    match std::env::var("WASMJOBS_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => backends.push(("postgres", url)),
        _ => println!("(postgres skipped: set WASMJOBS_TEST_POSTGRES)"),
    }
    let only = std::env::var("WASMJOBS_BENCH_BACKENDS").unwrap_or_default();
    backends
        .into_iter()
        .filter(|(b, _)| only.is_empty() || only.contains(b))
        .collect()
}
