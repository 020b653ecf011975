//! Edge-host benchmark: the embedding figures of `examples/edge-host`, each printed beside the
//! bare-wasmtime floor measured in the same run.
//!
//! - per-request sandbox overhead (wasmjobs-host with a route's limits vs bare wasmtime), native
//!   and through Pulley, the portable interpreter;
//! - requests/s and latency over loopback, from a keep-alive HTTP/1.1 load generator;
//! - cold start: process start → first job response, with a precompiled artifact;
//! - RSS at idle and under load;
//! - size of the stripped runtime-only binary.
//!
//! Run with: `cargo bench -p wasmjobs-tests --bench edge` (`-- --quick` for a short run). It
//! builds the runtime-only edge host itself (`cargo build --release -p wasmjobs-edge-host`), or
//! uses the binary named by `WASMJOBS_EDGE_BIN`.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use wasmjobs_host::{Limits, Sandbox, SandboxConfig};
use wasmjobs_tests::{free_port, guest_bytes, guests, rss_bytes_of};

mod common;
use common::{cores, cpu_model, floor_us_per_job, per_job_us};

const CONFIG: &str = r#"
[[route]]
path = "/trivial"
artifact = "trivial.cwasm"
limits = { timeout_ms = "1s", memory_bytes = "16MiB", fuel = 100_000_000 }

[[route]]
path = "/render"
artifact = "markdown.cwasm"
content_type = "text/html; charset=utf-8"
limits = { timeout_ms = "2s", memory_bytes = "32MiB", fuel = 2_000_000_000 }
"#;

/// The Markdown rendered by `/render`: the repository's README, a realistic page.
fn markdown_doc() -> Vec<u8> {
    std::fs::read(format!("{}/README.md", guests::ROOT)).expect("README.md")
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: usize = if quick { 2_000 } else { 20_000 };
    let load_secs = if quick { 1.5 } else { 5.0 };
    let starts = if quick { 5 } else { 20 };

    println!("wasmjobs edge-host benchmark");
    println!("machine: {} cores, {}", cores(), cpu_model());
    println!("wasmtime 48.0.8{}", if quick { " (--quick)" } else { "" });
    println!();

    let bin = edge_binary();
    let dir = tempfile::tempdir().expect("tempdir");
    let trivial = common::trivial_component();
    let markdown = guest_bytes(guests::MARKDOWN);
    let compiler = Sandbox::new(&SandboxConfig::default()).expect("sandbox");
    for (name, wasm) in [("trivial", &trivial), ("markdown", &markdown)] {
        let artifact = compiler.precompile(wasm).expect("precompile");
        std::fs::write(dir.path().join(format!("{name}.cwasm")), artifact).expect("write");
    }
    let config = dir.path().join("edge.toml");
    std::fs::write(&config, CONFIG).expect("write config");

    // (1) Per-request sandbox overhead, in process.
    let floor = floor_us_per_job(&trivial, n);
    let limits = Limits {
        timeout: Duration::from_secs(1),
        memory_bytes: 16 << 20,
        fuel: 100_000_000,
        ..Limits::default()
    };
    let artifact = |s: &Sandbox, name: &str| {
        // SAFETY: an artifact this benchmark compiled into its own temporary directory.
        #[allow(unsafe_code)]
        let loaded = unsafe { s.load_artifact_file(&dir.path().join(format!("{name}.cwasm"))) };
        loaded.expect("artifact loads")
    };
    let native = Sandbox::new(&SandboxConfig::default()).expect("sandbox");
    let host = per_job_us(&native, &artifact(&native, "trivial"), limits, n, 1);
    println!("per-request sandbox overhead, trivial component, 1 thread:");
    println!("  (a) floor: bare wasmtime, instantiate + call     {floor:>8.2} µs");
    println!(
        "  (b) wasmjobs-host from a .cwasm, route limits     {host:>8.2} µs   b/a = {:.2}  (target ≤ 2)",
        host / floor
    );
    let doc = markdown_doc();
    let render_native = render_us(&native, &artifact(&native, "markdown"), &doc, n / 20);
    let pulley = SandboxConfig {
        target: Some("pulley64".into()),
        ..SandboxConfig::default()
    };
    let pulley = Sandbox::new(&pulley).expect("pulley sandbox");
    let p_trivial = pulley.load(&trivial).expect("pulley trivial");
    let p_markdown = pulley.load(&markdown).expect("pulley markdown");
    let host_pulley = per_job_us(&pulley, &p_trivial, limits, n, 1);
    let render_pulley = render_us(&pulley, &p_markdown, &doc, n / 20);
    println!(
        "  (c) same through Pulley (interpreter, no JIT)    {host_pulley:>8.2} µs   c/b = {:.2}",
        host_pulley / host
    );
    println!(
        "Markdown render of README.md ({} bytes) in the sandbox:",
        doc.len()
    );
    println!("      native (Cranelift)                          {render_native:>8.1} µs");
    println!(
        "      Pulley                                      {render_pulley:>8.1} µs   slowdown {:.1}×",
        render_pulley / render_native
    );
    println!();

    // (2) Binary size.
    let size = std::fs::metadata(&bin).expect("binary").len();
    let stripped = dir.path().join("edge-stripped");
    std::fs::copy(&bin, &stripped).expect("copy binary");
    let strip_ok = Command::new("strip")
        .arg(&stripped)
        .status()
        .is_ok_and(|s| s.success());
    println!("binary: {}", bin.display());
    println!("  as built {:>6.2} MB", size as f64 / 1e6);
    if strip_ok {
        let s = std::fs::metadata(&stripped).expect("stripped").len();
        println!("  stripped {:>6.2} MB   (target < 10 MB)", s as f64 / 1e6);
    } else {
        println!("  stripped: `strip` not available");
    }
    println!();

    // (3) Cold start: process start → first /render response.
    let mut cold = Vec::new();
    for _ in 0..starts {
        let port = free_port();
        let t0 = Instant::now();
        let mut child = spawn(&bin, &config, port);
        let body = first_response(port, "/render", b"# cold\n");
        let elapsed = t0.elapsed();
        assert!(
            body.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&body)
        );
        cold.push(elapsed.as_secs_f64() * 1e3);
        let _ = child.kill();
        let _ = child.wait();
    }
    cold.sort_by(f64::total_cmp);
    println!(
        "cold start, process start → first /render response (precompiled artifact, {starts} starts):"
    );
    println!(
        "  median {:>6.2} ms   max {:>6.2} ms   (target < 10 ms; floor: bare wasmtime instantiate + call {:.3} ms)",
        cold[cold.len() / 2],
        cold[cold.len() - 1],
        floor / 1e3
    );
    println!();

    // (4) Loopback throughput and RSS.
    let port = free_port();
    let mut child = spawn(&bin, &config, port);
    let _ = first_response(port, "/healthz", b"");
    let pid = child.id();
    let idle_start = rss_bytes_of(pid);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "loopback HTTP/1.1, keep-alive, 32 connections, {load_secs} s per route (load generator on the same 2 cores):"
    );
    let mut peak = 0;
    for (path, body, floor_note) in [
        ("/trivial", Vec::new(), format!("floor {floor:.2} µs/job")),
        (
            "/render",
            doc.clone(),
            format!("in-process render {render_native:.1} µs"),
        ),
    ] {
        let sampler = RssSampler::start(pid);
        let r = rt.block_on(load(
            port,
            path,
            body,
            32,
            Duration::from_secs_f64(load_secs),
        ));
        peak = peak.max(sampler.stop());
        println!(
            "  {path:<9} {:>8.0} req/s   p50 {:>6.3} ms   p99 {:>6.3} ms   errors {}   ({floor_note})",
            r.rps, r.p50_ms, r.p99_ms, r.errors
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle_after = rss_bytes_of(pid);
    println!("RSS of the edge host:");
    println!(
        "  idle after start {:>6.1} MiB   under load (peak) {:>6.1} MiB   idle after load {:>6.1} MiB",
        idle_start as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        idle_after as f64 / 1048576.0
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// The runtime-only release binary: `WASMJOBS_EDGE_BIN`, or built now.
fn edge_binary() -> PathBuf {
    if let Ok(p) = std::env::var("WASMJOBS_EDGE_BIN") {
        return PathBuf::from(p);
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "-p", "wasmjobs-edge-host"])
        .current_dir(guests::ROOT)
        .status()
        .expect("cargo build");
    assert!(status.success(), "building the edge host failed");
    let exe = std::env::current_exe().expect("current exe");
    let bin = exe
        .ancestors()
        .nth(3)
        .expect("target dir")
        .join("release")
        .join("wasmjobs-edge-host");
    assert!(bin.is_file(), "no binary at {}", bin.display());
    bin
}

fn render_us(sandbox: &Sandbox, module: &wasmjobs_host::JobModule, doc: &[u8], n: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let input: std::sync::Arc<[u8]> = doc.into();
    let once = || async {
        let r = sandbox
            .run(module, wasmjobs_host::RunRequest::new(input.clone()))
            .await;
        assert_eq!(r.outcome, wasmjobs_host::Outcome::Succeeded, "{r:?}");
    };
    rt.block_on(async {
        for _ in 0..n.div_ceil(10) {
            once().await;
        }
        let t = Instant::now();
        for _ in 0..n {
            once().await;
        }
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    })
}

fn spawn(bin: &Path, config: &Path, port: u16) -> Child {
    Command::new(bin)
        .arg("--config")
        .arg(config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the edge host")
}

/// Connects as soon as the port accepts, sends one request, returns the whole response.
fn first_response(port: u16, path: &str, body: &[u8]) -> Vec<u8> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > until => panic!("edge host never listened: {e}"),
            Err(_) => std::thread::sleep(Duration::from_micros(100)),
        }
    };
    let method = if body.is_empty() { "GET" } else { "POST" };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write");
    stream.write_all(body).expect("write");
    let mut out = Vec::new();
    stream.read_to_end(&mut out).expect("read");
    out
}

struct LoadResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

/// `conns` keep-alive connections, each sending `POST path` back to back for `duration`.
async fn load(
    port: u16,
    path: &str,
    body: Vec<u8>,
    conns: usize,
    duration: Duration,
) -> LoadResult {
    let request: std::sync::Arc<[u8]> = {
        let mut r = format!(
            "POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(&body);
        r.into()
    };
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut buf = Vec::with_capacity(64 << 10);
            while Instant::now() < end {
                let t = Instant::now();
                stream.write_all(&request).await.expect("write");
                let status = read_response(&mut stream, &mut buf).await;
                latencies.push(t.elapsed());
                if status != 200 {
                    errors += 1;
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("load task");
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
    LoadResult {
        rps: all.len() as f64 / elapsed,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        errors,
    }
}

/// Reads one HTTP/1.1 response with a content-length body; returns its status.
async fn read_response(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> u16 {
    buf.clear();
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head
                .get(9..12)
                .and_then(|s| s.parse().ok())
                .expect("status line");
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.expect("read body");
                assert!(n > 0, "connection closed mid-body");
                buf.extend_from_slice(&chunk[..n]);
            }
            return status;
        }
        let n = stream.read(&mut chunk).await.expect("read head");
        assert!(n > 0, "connection closed mid-head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Samples a process's RSS every 20 ms on a thread; `stop` returns the peak.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_bytes_of(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        RssSampler { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap_or(0)
    }
}
