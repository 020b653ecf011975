//! Sandbox benchmark: prints, in one run, the bare-wasmtime floor, `wasmjobs-host` with every
//! limit on, their ratio, µs/job and jobs/s on 1 and 2 threads, and memory per live suspended
//! instance with 10,000 alive at once.
//!
//! Run with: `cargo bench -p wasmjobs-tests --bench sandbox` (`-- --quick` for a short run).

use std::sync::Arc;
use std::time::Duration;

use wasmjobs_host::{Limits, Outcome, RunRequest, Sandbox, SandboxConfig};
use wasmjobs_tests::{guest_bytes, guests, rss_bytes};

mod common;
use common::{cores, cpu_model, floor_us_per_job, per_job_us};

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 2_000 } else { 20_000 };
    let live: usize = if quick { 1_000 } else { 10_000 };
    let trivial = common::trivial_component();

    println!("wasmjobs sandbox benchmark");
    println!("machine: {} cores, {}", cores(), cpu_model());
    println!(
        "wasmtime 48.0.8, {} jobs per measurement{}",
        n,
        if quick { " (--quick)" } else { "" }
    );
    println!();

    let floor = floor_us_per_job(&trivial, n);
    println!("(a) floor: bare wasmtime, pooling allocator, instantiate + call, trivial component");
    println!("    {floor:>8.2} µs/job");

    let sandbox = Sandbox::new(&SandboxConfig::default()).expect("sandbox");
    let trivial_module = sandbox.load(&trivial).expect("trivial loads");
    let noop_module = sandbox
        .load(&guest_bytes(guests::NOOP))
        .expect("noop loads");
    let limits = Limits::default();

    let host_1 = per_job_us(&sandbox, &trivial_module, limits, n, 1);
    println!(
        "(b) wasmjobs-host, every limit on (fuel, epoch deadline + host timer, memory limiter,"
    );
    println!("    output and log capture, locked-down WASI), same trivial component");
    println!(
        "    {host_1:>8.2} µs/job   ratio b/a = {:.2}",
        host_1 / floor
    );
    let noop_1 = per_job_us(&sandbox, &noop_module, limits, n, 1);
    println!(
        "(c) wasmjobs-host, Rust SDK job (tests/guests/noop: WASI linked, input echoed to output)"
    );
    println!("    {noop_1:>8.2} µs/job");
    println!();

    println!("throughput, trivial component, every limit on:");
    for threads in [1, 2] {
        let us = per_job_us(&sandbox, &trivial_module, limits, n, threads);
        println!(
            "    {threads} thread(s): {:>8.2} µs/job per core, {:>9.0} jobs/s",
            us * threads as f64,
            1e6 / us
        );
    }
    println!("throughput, Rust SDK noop job:");
    for threads in [1, 2] {
        let us = per_job_us(&sandbox, &noop_module, limits, n, threads);
        println!(
            "    {threads} thread(s): {:>8.2} µs/job per core, {:>9.0} jobs/s",
            us * threads as f64,
            1e6 / us
        );
    }
    println!();

    let per_instance = live_instance_bytes(live);
    println!(
        "memory: {live} instances alive at once, each suspended in a WASI sleep (tests/guests/sleeper)"
    );
    println!(
        "    {:>8.1} KiB RSS per live instance",
        per_instance / 1024.0
    );
}

/// RSS growth per instance with `count` instances suspended in a WASI sleep at once.
fn live_instance_bytes(count: usize) -> f64 {
    let config = SandboxConfig {
        max_instances: count as u32 + 16,
        max_memory_bytes: 64 << 20,
        keep_resident_bytes: 0,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(&config).expect("sandbox");
    let module = Arc::new(
        sandbox
            .load(&guest_bytes(guests::SLEEPER))
            .expect("sleeper loads"),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        // Warm up once so code and engine state are resident before the baseline.
        let r = sandbox.run(&module, RunRequest::new(&b"1"[..])).await;
        assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        let before = rss_bytes();
        let sleep_ms = 4_000 + count as u64 / 2;
        let limits = Limits {
            timeout: Duration::from_secs(120),
            ..Limits::default()
        };
        let mut tasks = Vec::with_capacity(count);
        for _ in 0..count {
            let (sandbox, module) = (sandbox.clone(), module.clone());
            let input = sleep_ms.to_string().into_bytes();
            tasks.push(tokio::spawn(async move {
                sandbox
                    .run(&module, RunRequest::new(input).limits(limits))
                    .await
            }));
        }
        // Measure while all of them are asleep.
        tokio::time::sleep(Duration::from_millis(sleep_ms / 2)).await;
        let during = rss_bytes();
        for t in tasks {
            let r = t.await.expect("task");
            assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
        }
        during.saturating_sub(before) as f64 / count as f64
    })
}
