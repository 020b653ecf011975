//! Every way a job ends, grants, and cancels.

use super::*;

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
