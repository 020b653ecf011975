//! The sandbox (`wasmjobs-host`) end to end: real guests built from source produce every
//! outcome, every escape attempt is refused, and the host stays healthy.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmjobs_host::{
    AttemptReport, CancelHandle, DirGrant, Event, Grants, JobModule, Limits, LoadError, Outcome,
    RunRequest, Sandbox, SandboxConfig, TrapKind, World,
};
use wasmjobs_tests::{guest_bytes, guests, rss_bytes};

/// Loading artifacts for the tests: each one either made by these tests in this process or
/// deliberately broken to check that wasmtime refuses it before mapping any of its code.
trait TestArtifacts {
    fn load_artifact_unchecked(&self, bytes: &[u8]) -> Result<wasmjobs_host::JobModule, LoadError>;
}

impl TestArtifacts for Sandbox {
    fn load_artifact_unchecked(&self, bytes: &[u8]) -> Result<wasmjobs_host::JobModule, LoadError> {
        // SAFETY: see the trait: our own artifacts, or broken ones wasmtime's checks refuse.
        #[allow(unsafe_code)]
        unsafe {
            self.load_artifact(bytes)
        }
    }
}

const TICK: Duration = Duration::from_millis(10);

struct Fixture {
    sandbox: Sandbox,
    testjob: JobModule,
    testcmd: JobModule,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let sandbox = Sandbox::new(&SandboxConfig {
            epoch_tick: TICK,
            ..SandboxConfig::default()
        })
        .expect("sandbox builds");
        let testjob = sandbox
            .load(&guest_bytes(guests::TESTJOB))
            .expect("testjob loads");
        let testcmd = sandbox
            .load(&guest_bytes(guests::TESTCMD))
            .expect("testcmd loads");
        Fixture {
            sandbox,
            testjob,
            testcmd,
        }
    })
}

async fn run_job(input: Value, limits: Limits) -> AttemptReport {
    let f = fixture();
    f.sandbox
        .run(
            &f.testjob,
            RunRequest::new(input.to_string().into_bytes()).limits(limits),
        )
        .await
}

fn output_json(r: &AttemptReport) -> Value {
    serde_json::from_slice(&r.output).unwrap_or_else(|e| panic!("output is JSON ({e}): {:?}", r))
}

#[tokio::test]
async fn success_with_output_logs_and_progress() {
    let f = fixture();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let r = f
        .sandbox
        .run(
            &f.testjob,
            RunRequest::new(br#"{"mode":"greet","name":"Ada"}"#.to_vec())
                .events(Arc::new(move |e: Event| sink.lock().expect("lock").push(e))),
        )
        .await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(output_json(&r), json!({"greeting": "hello, Ada"}));
    let messages: Vec<(&str, &str)> = r
        .logs
        .iter()
        .map(|l| (l.source.as_str(), l.message.as_str()))
        .collect();
    assert!(
        messages.contains(&("report", "greeting Ada")),
        "{messages:?}"
    );
    assert!(
        messages.contains(&("stdout", "hello on stdout")),
        "{messages:?}"
    );
    assert!(
        messages.contains(&("stderr", "hello on stderr")),
        "{messages:?}"
    );
    assert!(!r.logs_truncated);
    assert!(r.fuel_consumed > 0 && r.fuel_consumed < Limits::default().fuel);
    assert!(
        r.peak_memory_bytes >= 64 * 1024,
        "peak {}",
        r.peak_memory_bytes
    );
    assert!(r.wall_time > Duration::ZERO);
    let events = events.lock().expect("lock");
    assert!(
        events.contains(&Event::Progress { done: 1, total: 2 }),
        "{events:?}"
    );
    assert!(
        events.contains(&Event::Progress { done: 2, total: 2 }),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Log(l) if l.message == "greeting Ada"))
    );
}

#[tokio::test]
async fn returned_error_is_failed_with_its_message() {
    let r = run_job(json!({"mode": "fail"}), Limits::default()).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(r.error.as_deref(), Some("this job fails on purpose"));
}

#[tokio::test]
async fn bad_input_json_is_failed_naming_the_problem() {
    let f = fixture();
    let r = f
        .sandbox
        .run(&f.testjob, RunRequest::new(b"not json".to_vec()))
        .await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.starts_with("invalid input")),
        "{:?}",
        r.error
    );
}

#[tokio::test]
async fn panic_is_trapped_with_the_panic_message() {
    let r = run_job(json!({"mode": "panic"}), Limits::default()).await;
    assert_eq!(r.outcome, Outcome::Trapped);
    assert_eq!(r.trap, Some(TrapKind::Unreachable));
    let error = r.error.unwrap_or_default();
    assert!(error.contains("boom on purpose"), "{error}");
}

#[tokio::test]
async fn endless_loop_runs_out_of_fuel() {
    let limits = Limits {
        fuel: 50_000_000,
        ..Limits::default()
    };
    let r = run_job(json!({"mode": "spin"}), limits).await;
    assert_eq!(r.outcome, Outcome::OutOfFuel, "{r:?}");
    assert_eq!(r.fuel_consumed, 50_000_000);
}

#[tokio::test]
async fn endless_loop_times_out_within_a_few_ticks() {
    let timeout = Duration::from_millis(200);
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout,
        ..Limits::default()
    };
    let r = run_job(json!({"mode": "spin"}), limits).await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert!(r.wall_time >= timeout, "{:?}", r.wall_time);
    assert!(r.wall_time < timeout + TICK * 10, "took {:?}", r.wall_time);
}

#[tokio::test]
async fn blocked_in_a_host_call_still_times_out() {
    let timeout = Duration::from_millis(150);
    let limits = Limits {
        timeout,
        ..Limits::default()
    };
    let r = run_job(json!({"mode": "sleep", "ms": 60_000}), limits).await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    assert!(r.wall_time < timeout + TICK * 10, "took {:?}", r.wall_time);
}

#[tokio::test]
async fn memory_bomb_is_out_of_memory() {
    let limits = Limits {
        memory_bytes: 32 << 20,
        ..Limits::default()
    };
    let r = run_job(json!({"mode": "membomb"}), limits).await;
    assert_eq!(r.outcome, Outcome::OutOfMemory, "{r:?}");
    assert!(
        r.peak_memory_bytes <= 32 << 20,
        "peak {}",
        r.peak_memory_bytes
    );
    assert!(
        r.peak_memory_bytes > 16 << 20,
        "peak {}",
        r.peak_memory_bytes
    );
}

#[tokio::test]
async fn deep_recursion_is_a_stack_overflow_trap() {
    let r = run_job(json!({"mode": "recurse"}), Limits::default()).await;
    assert_eq!(r.outcome, Outcome::Trapped, "{r:?}");
    assert_eq!(r.trap, Some(TrapKind::StackOverflow));
}

#[tokio::test]
async fn huge_output_is_output_too_large() {
    let limits = Limits {
        max_output_bytes: 1024,
        ..Limits::default()
    };
    let r = run_job(json!({"mode": "bigout", "size": 4096}), limits).await;
    assert_eq!(r.outcome, Outcome::OutputTooLarge, "{r:?}");
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("4096") && e.contains("1024")),
        "{:?}",
        r.error
    );
    assert!(r.output.is_empty());
    // Exactly at the cap is fine.
    let r = run_job(json!({"mode": "bigout", "size": 1024}), limits).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
}

#[tokio::test]
async fn command_stdout_past_the_cap_is_output_too_large() {
    let f = fixture();
    let limits = Limits {
        max_output_bytes: 64 << 10,
        ..Limits::default()
    };
    let r = f
        .sandbox
        .run(
            &f.testcmd,
            RunRequest::new(b"flood".to_vec()).limits(limits),
        )
        .await;
    assert_eq!(r.outcome, Outcome::OutputTooLarge, "{r:?}");
}

#[tokio::test]
async fn log_flood_is_truncated_and_flagged() {
    let limits = Limits {
        max_log_bytes: 64 << 10,
        ..Limits::default()
    };
    let r = run_job(json!({"mode": "logflood", "lines": 5000}), limits).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert!(r.logs_truncated);
    let kept: usize = r.logs.iter().map(|l| l.message.len()).sum();
    assert!(kept <= 64 << 10, "kept {kept} bytes of logs");
    assert!(kept > 32 << 10, "kept {kept} bytes of logs");
    assert_eq!(output_json(&r), json!({"logged": 5000}));
}

#[tokio::test]
async fn escape_attempts_are_all_refused() {
    let r = run_job(json!({"mode": "escape"}), Limits::default()).await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    let out = output_json(&r);
    for key in [
        "read_etc_passwd",
        "list_root",
        "list_cwd",
        "write_tmp",
        "tcp_connect",
        "udp_bind",
    ] {
        let v = out[key].as_str().unwrap_or_default();
        assert!(v.starts_with("refused"), "{key} was not refused: {v}");
    }
    assert_eq!(out["env_vars"], json!(0));
    assert!(!std::path::Path::new("/tmp/wasmjobs-escape").exists());
}

#[tokio::test]
async fn granted_environment_is_visible_and_nothing_else() {
    let f = fixture();
    let grants = Grants {
        env: [("GREETING".to_string(), "hi".to_string())].into(),
        ..Grants::default()
    };
    let r = f
        .sandbox
        .run(
            &f.testjob,
            RunRequest::new(br#"{"mode":"env"}"#.to_vec()).grants(grants),
        )
        .await;
    assert_eq!(output_json(&r), json!([["GREETING", "hi"]]));
}

#[tokio::test]
async fn granted_directory_is_readable_and_writable_only_when_granted() {
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("in.txt"), "hello from the host").expect("write");
    let run = |writable: bool| {
        let grants = Grants {
            dirs: vec![DirGrant {
                host: dir.path().to_path_buf(),
                guest: "/data".into(),
                writable,
            }],
            ..Grants::default()
        };
        f.sandbox.run(
            &f.testjob,
            RunRequest::new(br#"{"mode":"files"}"#.to_vec()).grants(grants),
        )
    };

    let ro = output_json(&run(false).await);
    assert_eq!(ro["read"], json!({"Ok": "hello from the host"}));
    assert!(
        ro["write"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refused"),
        "{ro}"
    );
    assert!(
        ro["escape_parent"]
            .as_str()
            .unwrap_or_default()
            .starts_with("refused"),
        "{ro}"
    );
    assert!(!dir.path().join("out.txt").exists());

    let rw = output_json(&run(true).await);
    assert_eq!(rw["write"], json!("allowed"), "{rw}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).expect("written"),
        "written by the guest"
    );
}

#[tokio::test]
async fn missing_granted_directory_fails_naming_it() {
    let f = fixture();
    let grants = Grants {
        dirs: vec![DirGrant {
            host: "/no/such/dir".into(),
            guest: "/data".into(),
            writable: false,
        }],
        ..Grants::default()
    };
    let r = f
        .sandbox
        .run(
            &f.testjob,
            RunRequest::new(br#"{"mode":"files"}"#.to_vec()).grants(grants),
        )
        .await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("/no/such/dir")),
        "{:?}",
        r.error
    );
}

#[tokio::test]
async fn cancel_stops_a_spinning_guest_within_a_few_ticks() {
    let f = fixture();
    let cancel = CancelHandle::new();
    let limits = Limits {
        fuel: u64::MAX / 2,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    let req = RunRequest::new(br#"{"mode":"spin"}"#.to_vec())
        .limits(limits)
        .cancel(cancel.clone());
    let task = tokio::spawn(async move { fixture().sandbox.run(&fixture().testjob, req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let r = task.await.expect("task");
    let _ = f;
    assert_eq!(r.outcome, Outcome::Cancelled, "{r:?}");
    assert!(
        cancelled_at.elapsed() < TICK * 10,
        "stopped {:?} after cancel",
        cancelled_at.elapsed()
    );
}

#[tokio::test]
async fn cancel_stops_a_guest_blocked_in_a_host_call() {
    let cancel = CancelHandle::new();
    let req = RunRequest::new(br#"{"mode":"sleep","ms":60000}"#.to_vec()).cancel(cancel.clone());
    let task = tokio::spawn(async move { fixture().sandbox.run(&fixture().testjob, req).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let cancelled_at = Instant::now();
    cancel.cancel();
    let r = task.await.expect("task");
    assert_eq!(r.outcome, Outcome::Cancelled, "{r:?}");
    assert!(
        cancelled_at.elapsed() < TICK * 10,
        "stopped {:?} after cancel",
        cancelled_at.elapsed()
    );
}

#[tokio::test]
async fn command_component_reads_stdin_and_writes_stdout() {
    let f = fixture();
    assert_eq!(f.testcmd.world(), World::Command);
    let r = f
        .sandbox
        .run(&f.testcmd, RunRequest::new(b"upper shout this".to_vec()))
        .await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(r.output, b"SHOUT THIS");

    // WASI 0.2's exit carries only success or failure: the error says failure, no code.
    let r = f
        .sandbox
        .run(&f.testcmd, RunRequest::new(b"exit 3".to_vec()))
        .await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(
        r.error.as_deref(),
        Some("the command exited with a failure status"),
        "no invented exit code"
    );
    assert!(
        r.logs.iter().any(|l| l.message == "exiting with 3"),
        "{:?}",
        r.logs
    );

    let r = f
        .sandbox
        .run(&f.testcmd, RunRequest::new(b"panic".to_vec()))
        .await;
    assert_eq!(r.outcome, Outcome::Trapped);
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("command panicked on purpose")),
        "{:?}",
        r.error
    );
}

#[tokio::test]
async fn loading_tells_what_the_bytes_are() {
    let f = fixture();
    assert_eq!(f.testjob.world(), World::Job);
    let caps = f.testjob.info().capabilities();
    assert!(caps.contains(&"wasmjobs:job/io".to_string()), "{caps:?}");
    assert!(
        caps.iter().any(|c| c.starts_with("wasi:sockets/")),
        "testjob uses sockets: {caps:?}"
    );
    assert!(f.testjob.info().digest.starts_with("sha256:"));

    assert_eq!(
        f.sandbox.load(b"hello world").unwrap_err(),
        LoadError::NotWasm
    );
    assert_eq!(
        f.sandbox.load(b"\0asm\x01\0\0\0").unwrap_err(),
        LoadError::CoreModule
    );
    let truncated = &guest_bytes(guests::NOOP)[..200];
    assert!(matches!(
        f.sandbox.load(truncated),
        Err(LoadError::Invalid(_))
    ));
    // A component exporting nothing a job exports.
    let empty_component = b"\0asm\x0d\0\x01\0";
    match f.sandbox.load(empty_component) {
        Err(LoadError::UnsupportedWorld { exports }) => assert!(exports.is_empty()),
        other => panic!("expected UnsupportedWorld, got {other:?}"),
    }
}

#[tokio::test]
async fn precompiled_artifacts_round_trip_and_foreign_ones_are_refused() {
    let f = fixture();
    let artifact = f
        .sandbox
        .precompile(&guest_bytes(guests::NOOP))
        .expect("precompile");
    let module = f
        .sandbox
        .load_artifact_unchecked(&artifact)
        .expect("load artifact");
    let r = f
        .sandbox
        .run(&module, RunRequest::new(b"echo".to_vec()))
        .await;
    assert_eq!(
        (r.outcome, r.output.as_slice()),
        (Outcome::Succeeded, &b"echo"[..])
    );

    // An engine with other settings must refuse it, not run it.
    // (Smaller memory slots change the code wasmtime generates: bounds checks.)
    let other = Sandbox::new(&SandboxConfig {
        max_memory_bytes: 64 << 20,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let other_artifact = other
        .precompile(&guest_bytes(guests::NOOP))
        .expect("precompile");
    match f.sandbox.load_artifact_unchecked(&other_artifact) {
        Err(LoadError::IncompatibleArtifact(msg)) => assert!(!msg.is_empty()),
        other => panic!("expected IncompatibleArtifact, got {other:?}"),
    }
    let mut corrupted = artifact.clone();
    let mid = corrupted.len() / 2;
    corrupted.truncate(mid);
    assert!(f.sandbox.load_artifact_unchecked(&corrupted).is_err());
    assert!(matches!(
        f.sandbox
            .load_artifact_unchecked(&guest_bytes(guests::NOOP)),
        Err(LoadError::NotAnArtifact(_))
    ));
    assert!(matches!(f.sandbox.load(&artifact), Err(LoadError::NotWasm)));
}

#[tokio::test]
async fn pulley_runs_jobs_without_native_code_under_the_same_limits() {
    let pulley = Sandbox::new(&SandboxConfig {
        max_instances: 8,
        target: Some("pulley64".into()),
        ..SandboxConfig::default()
    })
    .expect("a Pulley sandbox");
    let artifact = pulley
        .precompile(&guest_bytes(guests::TESTJOB))
        .expect("compile to Pulley bytecode");
    // Native and Pulley artifacts are not interchangeable.
    assert!(matches!(
        fixture().sandbox.load_artifact_unchecked(&artifact),
        Err(LoadError::IncompatibleArtifact(_))
    ));
    let job = pulley
        .load_artifact_unchecked(&artifact)
        .expect("load Pulley artifact");
    let run = |input: Value, limits: Limits| {
        let (pulley, job) = (&pulley, &job);
        async move {
            pulley
                .run(
                    job,
                    RunRequest::new(input.to_string().into_bytes()).limits(limits),
                )
                .await
        }
    };
    let r = run(
        json!({"mode": "greet", "name": "pulley"}),
        Limits::default(),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{r:?}");
    assert_eq!(output_json(&r)["greeting"], "hello, pulley");
    let r = run(
        json!({"mode": "spin"}),
        Limits {
            fuel: 2_000_000,
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::OutOfFuel, "{r:?}");
    let r = run(
        json!({"mode": "spin"}),
        Limits {
            timeout: Duration::from_millis(200),
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::TimedOut, "{r:?}");
    let r = run(
        json!({"mode": "membomb"}),
        Limits {
            memory_bytes: 16 << 20,
            ..Limits::default()
        },
    )
    .await;
    assert_eq!(r.outcome, Outcome::OutOfMemory, "{r:?}");
}

#[tokio::test]
async fn a_thousand_hostile_attempts_leave_host_memory_flat() {
    let modes = ["membomb", "spin", "panic", "bigout", "logflood", "recurse"];
    let limits = Limits {
        fuel: 20_000_000,
        memory_bytes: 16 << 20,
        max_output_bytes: 1024,
        max_log_bytes: 16 << 10,
        ..Limits::default()
    };
    let run_round = async |n: usize| {
        for i in 0..n {
            let mode = modes[i % modes.len()];
            let r = run_job(json!({"mode": mode, "size": 1 << 20, "lines": 200}), limits).await;
            if mode == "logflood" {
                assert!(r.logs_truncated, "logflood should be truncated");
            } else {
                assert_ne!(r.outcome, Outcome::Succeeded, "{mode} should not succeed");
            }
        }
    };
    run_round(100).await; // warm the pool and allocator
    let before = rss_bytes();
    run_round(1000).await;
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    assert!(
        growth < 32 << 20,
        "RSS grew by {} KiB over 1000 hostile attempts",
        growth / 1024
    );
}

#[tokio::test]
async fn artifact_cache_compiles_once_and_replaces_a_bad_file() {
    use wasmjobs_host::{ArtifactCache, CacheStatus};
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = ArtifactCache::new(dir.path()).expect("cache");
    let wasm = guest_bytes(guests::NOOP);

    let (first, status) = cache.load(&f.sandbox, &wasm).expect("load");
    assert_eq!(status, CacheStatus::Compiled);
    let path = cache.path_for(&f.sandbox, &first.info().digest);
    assert!(path.is_file(), "artifact written at {}", path.display());
    let (second, status) = cache.load(&f.sandbox, &wasm).expect("load");
    assert_eq!(status, CacheStatus::Hit);
    // The cached module is described by the wasm it came from, not by the artifact.
    assert_eq!(second.info().digest, wasmjobs_host::sha256_digest(&wasm));
    let r = f
        .sandbox
        .run(&second, RunRequest::new(b"cached".to_vec()))
        .await;
    assert_eq!(r.output, b"cached");

    std::fs::write(&path, b"garbage").expect("corrupt the cache");
    let (_, status) = cache
        .load(&f.sandbox, &wasm)
        .expect("load after corruption");
    assert_eq!(status, CacheStatus::Compiled);
    let (_, status) = cache.load(&f.sandbox, &wasm).expect("load");
    assert_eq!(status, CacheStatus::Hit);
}

/// Concurrent compiles of one module into one cache (a cold node's first jobs, or two
/// processes) each write a whole artifact under a temporary name of their own and rename it
/// into place: every one succeeds, no temporary file is left, and the artifact loads.
#[test]
fn concurrent_writers_of_one_artifact_do_not_collide() {
    use wasmjobs_host::{ArtifactCache, CacheStatus};
    let f = fixture();
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = guest_bytes(guests::TESTJOB);
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|_| {
                let (sandbox, wasm, dir) = (&f.sandbox, &wasm, dir.path());
                scope.spawn(move || {
                    let cache = ArtifactCache::new(dir).expect("cache");
                    cache.load(sandbox, wasm).map(|(_, s)| s)
                })
            })
            .collect();
        for w in writers {
            w.join()
                .expect("writer")
                .expect("every concurrent load succeeds");
        }
    });
    let left: Vec<String> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 1, "one artifact, no temporary files: {left:?}");
    let cache = ArtifactCache::new(dir.path()).expect("cache");
    let (_, status) = cache.load(&f.sandbox, &wasm).expect("load");
    assert_eq!(status, CacheStatus::Hit);
}
