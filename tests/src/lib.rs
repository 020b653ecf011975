//! Shared helpers for the end-to-end tests: paths of the guest programs built from source by
//! `build.rs`, and small utilities.

/// Paths of the `.wasm` components built by `build.rs`.
pub mod guests {
    include!(concat!(env!("OUT_DIR"), "/guests.rs"));
}

/// Reads a guest component built by `build.rs`.
pub fn guest_bytes(path: &str) -> Vec<u8> {
    std::fs::read(path)
        .unwrap_or_else(|e| panic!("guest {path} should have been built by build.rs: {e}"))
}

/// Resident set size of this process in bytes (Linux), for memory-flatness checks.
pub fn rss_bytes() -> u64 {
    rss_of("self")
}

/// Resident set size of process `pid` in bytes (Linux), 0 when it cannot be read.
pub fn rss_bytes_of(pid: u32) -> u64 {
    rss_of(&pid.to_string())
}

fn rss_of(proc_dir: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{proc_dir}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Path of the `wasmjobs` binary, built (once per test run) from the current sources.
pub fn wasmjobs_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = std::path::Path::new(guests::ROOT);
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args(["build", "--quiet", "-p", "wasmjobs", "--bin", "wasmjobs"])
                .current_dir(root)
                .status()
                .expect("run cargo build for the wasmjobs binary");
        assert!(status.success(), "building the wasmjobs binary failed");
        // The test executable lives in target/<profile>/deps/; the binary in target/debug/.
        let exe = std::env::current_exe().expect("current exe");
        let target = exe.ancestors().nth(3).expect("target dir");
        let bin = target.join("debug").join("wasmjobs");
        assert!(bin.is_file(), "no wasmjobs binary at {}", bin.display());
        bin
    })
    .clone()
}

/// The store backends a test runs against: SQLite always (a fresh file), and Postgres in a
/// fresh schema when `WASMJOBS_TEST_POSTGRES` names a database. When it does not, says so
/// loudly on stderr.
pub async fn test_stores(
    tag: &str,
) -> Vec<(
    &'static str,
    std::sync::Arc<dyn wasmjobs::store::Backend>,
    TempDb,
)> {
    let (sqlite, db) = fresh_store("sqlite", tag).await;
    let mut stores = vec![("sqlite", sqlite, db)];
    if postgres_url().is_some() {
        let (pg, db) = fresh_store("postgres", tag).await;
        stores.push(("postgres", pg, db));
    } else {
        eprintln!("SKIPPED: the Postgres half of {tag} (set WASMJOBS_TEST_POSTGRES to run it)")
    }
    stores
}

/// The Postgres server of the tests, from `WASMJOBS_TEST_POSTGRES`, if it names one.
pub fn postgres_url() -> Option<String> {
    std::env::var("WASMJOBS_TEST_POSTGRES")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A new, empty store of `backend` (`sqlite`: a fresh file; `postgres`: a fresh schema
/// `t_<tag>_<pid>_<suffix>` on [`postgres_url`]'s server, which must be set).
pub async fn fresh_store(
    backend: &str,
    tag: &str,
) -> (std::sync::Arc<dyn wasmjobs::store::Backend>, TempDb) {
    match backend {
        "sqlite" => {
            let dir = tempfile::tempdir().expect("tempdir");
            let store =
                wasmjobs::store::open(dir.path().join("test.db").to_str().expect("utf-8 path"))
                    .await
                    .expect("open sqlite");
            (store, TempDb { _dir: Some(dir) })
        }
        "postgres" => {
            let url = postgres_url().expect("WASMJOBS_TEST_POSTGRES");
            drop_stale_schemas(&url, tag).await;
            let schema = format!("t_{}_{}_{}", tag, std::process::id(), fastrand_suffix());
            let store = wasmjobs::store::open_postgres_schema(&url, &schema)
                .await
                .expect("open postgres");
            (store, TempDb { _dir: None })
        }
        other => panic!("no backend {other:?}"),
    }
}

/// Drops the schemas (`t_<tag>_<pid>…`) that earlier test processes, no longer running, made
/// for `tag`: each test's schema stays after it (for a look after a failure) until the next run
/// of that test.
pub async fn drop_stale_schemas(url: &str, tag: &str) {
    use sqlx::Executor;
    let Ok(pool) = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
    else {
        return;
    };
    let prefix = format!("t_{tag}_");
    let names: Vec<String> =
        sqlx::query_scalar("SELECT nspname::text FROM pg_namespace WHERE starts_with(nspname, $1)")
            .bind(&prefix)
            .fetch_all(&pool)
            .await
            .unwrap_or_default();
    for name in names {
        // t_<tag>_<pid>_<suffix>: only schemas of processes that are gone.
        let Some(pid) = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split('_').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        let valid = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !alive && valid {
            let _ = pool
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE"
                )))
                .await;
        }
    }
    pool.close().await;
}

/// Keeps a test database alive for as long as it is held.
pub struct TempDb {
    _dir: Option<tempfile::TempDir>,
}

fn fastrand_suffix() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:x}")
}

/// A wasmjobs API and worker node running in this process on a real loopback socket, on one of
/// the test stores.
pub struct TestServer {
    pub url: String,
    pub state: wasmjobs::http::AppState,
    node: Option<wasmjobs::scheduler::Node>,
    server: tokio::task::JoinHandle<()>,
    engine: Option<wasmjobs::workflow::engine::Engine>,
}

impl TestServer {
    /// Starts the API (with `api` settings) and a worker node (`workers` at once) on `store`.
    pub async fn start(
        store: std::sync::Arc<dyn wasmjobs::store::Backend>,
        api: wasmjobs::http::ApiConfig,
        workers: usize,
    ) -> TestServer {
        Self::start_with(
            store,
            api,
            workers,
            wasmjobs::admission::AdmissionPolicy::default(),
            wasmjobs::http::ConnectionLimits::default(),
        )
        .await
    }

    /// [`TestServer::start`] with an admission policy and connection limits of its own.
    pub async fn start_with(
        store: std::sync::Arc<dyn wasmjobs::store::Backend>,
        api: wasmjobs::http::ApiConfig,
        workers: usize,
        policy: wasmjobs::admission::AdmissionPolicy,
        limits: wasmjobs::http::ConnectionLimits,
    ) -> TestServer {
        use wasmjobs::scheduler::{ModuleCache, Node, NodeConfig};
        let sandbox = wasmjobs_host::Sandbox::new(&wasmjobs_host::SandboxConfig {
            max_instances: 64,
            ..Default::default()
        })
        .expect("sandbox");
        let service = wasmjobs::service::JobService::new(store.clone(), policy);
        let modules = ModuleCache::new(None);
        let workflows = wasmjobs::workflow::WorkflowService::new(service.clone(), store);
        let engine = Some(wasmjobs::workflow::engine::start(workflows.clone()));
        let state = wasmjobs::http::AppState::new(
            service.clone(),
            workflows.clone(),
            sandbox.clone(),
            modules.clone(),
            api,
        );
        let node = (workers > 0).then(|| {
            Node::start(
                service,
                Some(workflows.clone()),
                sandbox,
                modules,
                NodeConfig {
                    concurrency: workers,
                    heartbeat: std::time::Duration::from_millis(100),
                    ..NodeConfig::default()
                },
            )
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let st = state.clone();
        let server = tokio::spawn(async move {
            let _ = wasmjobs::http::serve(listener, st, limits, None, std::future::pending()).await;
        });
        TestServer {
            url,
            state,
            node,
            server,
            engine,
        }
    }

    pub fn app(&self) -> axum::Router {
        wasmjobs::http::app(self.state.clone())
    }

    pub async fn stop(self) {
        self.stop_with(None).await;
    }

    /// Stops as `wasmjobs serve` does on SIGTERM: the node drains for up to `grace` first.
    pub async fn stop_gracefully(self, grace: std::time::Duration) {
        self.stop_with(Some(grace)).await;
    }

    async fn stop_with(mut self, grace: Option<std::time::Duration>) {
        if let Some(engine) = self.engine.take() {
            engine.shutdown().await;
        }
        if let Some(node) = self.node.take() {
            match grace {
                Some(grace) => node.drain(grace).await,
                None => node.shutdown().await,
            }
        }
        self.server.abort();
    }
}

/// A `wasmjobs` process (serve or worker) started from the real binary; killed with SIGKILL when
/// dropped.
pub struct Process {
    pub child: std::process::Child,
    pub url: String,
}

impl Process {
    /// `wasmjobs serve` on a free loopback port, in `dir` (which holds its config). Its
    /// stderr goes to `dir/serve-<test process id>.log`.
    pub fn serve(dir: &std::path::Path, db: &str, extra: &[&str]) -> Process {
        Process::serve_env(dir, db, extra, &[])
    }

    /// [`Process::serve`] with these environment variables besides.
    pub fn serve_env(
        dir: &std::path::Path,
        db: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut args = vec!["serve", "--db", db, "--addr"];
        let addr = format!("127.0.0.1:{port}");
        args.push(&addr);
        args.extend_from_slice(extra);
        let child = spawn(dir, &args, env);
        let p = Process { child, url };
        p.wait_healthy();
        p
    }

    /// `wasmjobs worker` on `db`.
    pub fn worker(dir: &std::path::Path, db: &str, node_id: &str) -> Process {
        Self::worker_with(dir, db, node_id, &[])
    }

    /// `wasmjobs worker` on `db` with `extra` arguments.
    pub fn worker_with(dir: &std::path::Path, db: &str, node_id: &str, extra: &[&str]) -> Process {
        Self::worker_env(dir, db, node_id, extra, &[])
    }

    /// [`Process::worker_with`] with these environment variables besides.
    pub fn worker_env(
        dir: &std::path::Path,
        db: &str,
        node_id: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let mut args = vec!["worker", "--db", db, "--node-id", node_id, "--workers", "2"];
        args.extend_from_slice(extra);
        let child = spawn(dir, &args, env);
        Process {
            child,
            url: String::new(),
        }
    }

    /// SIGTERM, then waits for the process to exit: how long it took (`None` if it had not
    /// exited within `within`, when it is killed).
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<std::time::Duration> {
        let started = std::time::Instant::now();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        while started.elapsed() < within {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Some(started.elapsed());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.kill9();
        None
    }

    fn wait_healthy(&self) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let addr = self.url.trim_start_matches("http://").to_string();
        while std::time::Instant::now() < until {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("wasmjobs serve did not start listening on {addr}");
    }

    /// SIGKILL: no shutdown, no flushing.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    std::process::Command::new(wasmjobs_bin())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .env("WASMJOBS_CACHE_DIR", dir.join("cache"))
        .stdout(std::process::Stdio::null())
        .stderr(
            std::fs::File::create(dir.join(format!("{}-{}.log", args[0], std::process::id())))
                .map_or(std::process::Stdio::null(), std::process::Stdio::from),
        )
        .spawn()
        .expect("start wasmjobs")
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Path of the example edge host (`examples/edge-host`), built once per test run on its own,
/// in the `edge` profile, so that its `wasmjobs-host` has no compiler — as users build it —
/// rather than the compiler the rest of the workspace unifies into it.
pub fn edge_host_bin() -> std::path::PathBuf {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let root = std::path::Path::new(guests::ROOT);
        let status =
            std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "build",
                    "--quiet",
                    "-p",
                    "wasmjobs-edge-host",
                    "--profile",
                    "edge",
                ])
                .current_dir(root)
                .status()
                .expect("run cargo build for the edge host");
        assert!(status.success(), "building the edge host failed");
        let exe = std::env::current_exe().expect("current exe");
        let target = exe.ancestors().nth(3).expect("target dir");
        let bin = target.join("edge").join("wasmjobs-edge-host");
        assert!(bin.is_file(), "no edge host binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A running edge host (`examples/edge-host`) on a free loopback port; killed when dropped.
pub struct EdgeHost {
    pub child: std::process::Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
}

impl EdgeHost {
    /// Starts `bin --config config --listen 127.0.0.1:0` and waits for its "listening on" line.
    pub fn start(bin: &std::path::Path, config: &std::path::Path) -> EdgeHost {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new(bin)
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the edge host");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let Some(url) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
        else {
            let _ = child.kill();
            let out = child.wait_with_output().expect("edge host output");
            panic!(
                "the edge host did not start: {line}{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        EdgeHost {
            url: url.to_string(),
            child,
        }
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for EdgeHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A sandbox, and `wasm` (a guest built by `build.rs`) stored as module `name` and compiled
/// into a fresh module cache: what a node needs to run jobs of it at once (benchmarks).
pub async fn install_guest(
    store: &dyn wasmjobs::store::Store,
    wasm: &str,
    name: &str,
    max_instances: u32,
) -> (wasmjobs_host::Sandbox, wasmjobs::scheduler::ModuleCache) {
    install_component(store, guest_bytes(wasm), name, max_instances).await
}

/// As [`install_guest`], for a component given as its bytes.
pub async fn install_component(
    store: &dyn wasmjobs::store::Store,
    bytes: Vec<u8>,
    name: &str,
    max_instances: u32,
) -> (wasmjobs_host::Sandbox, wasmjobs::scheduler::ModuleCache) {
    let digest = wasmjobs_host::sha256_digest(&bytes);
    let sandbox = wasmjobs_host::Sandbox::new(&wasmjobs_host::SandboxConfig {
        max_instances,
        ..wasmjobs_host::SandboxConfig::default()
    })
    .expect("sandbox");
    let modules = wasmjobs::scheduler::ModuleCache::new(None);
    modules
        .insert(&sandbox, &digest, bytes.clone())
        .await
        .expect("module");
    store
        .put_module(
            wasmjobs::store::NewModule {
                digest,
                world: "wasmjobs:job/job".into(),
                imports: vec![],
                bytes,
                name: Some(name.into()),
                owner: None,
                may_move: true,
            },
            wasmjobs::store::now_ms(),
        )
        .await
        .expect("put module");
    (sandbox, modules)
}

/// A CA and a certificate it signed for `localhost` and `127.0.0.1`, written as PEM files
/// `ca.pem`, `server.pem` and `server.key` in `dir`.
pub fn make_certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "wasmjobs test CA");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca.pem");
    std::fs::write(dir.join("server.pem"), cert.pem()).expect("write server.pem");
    std::fs::write(dir.join("server.key"), key.serialize_pem()).expect("write server.key");
}
