//! Loading modules and artifacts, Pulley, and the host's memory under hostile attempts.

use super::*;

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
