//! Recovering and failing loudly, with the real binary: a graceful shutdown gives unfinished
//! jobs back uncharged and an idle one is quick; readiness says when the store takes no
//! writes; a full disk keeps finished attempts until it takes them, without running them
//! again; a damaged database file is refused at start.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmjobs_tests::{Process, guest_bytes, guests};

async fn upload(http: &reqwest::Client, url: &str, wasm: &str, name: &str) {
    let r = http
        .post(format!("{url}/v1/modules?name={name}"))
        .body(guest_bytes(wasm))
        .send()
        .await
        .expect("upload");
    assert!(r.status().is_success(), "upload {name}: {}", r.status());
}

async fn submit(http: &reqwest::Client, url: &str, body: Value) -> reqwest::Response {
    http.post(format!("{url}/v1/jobs"))
        .json(&body)
        .send()
        .await
        .expect("submit")
}

async fn job(http: &reqwest::Client, url: &str, id: i64) -> Value {
    http.get(format!("{url}/v1/jobs/{id}"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

async fn wait_state(
    http: &reqwest::Client,
    url: &str,
    id: i64,
    states: &[&str],
    within: Duration,
) -> Value {
    let until = Instant::now() + within;
    loop {
        let j = job(http, url, id).await;
        if states.contains(&j["state"].as_str().unwrap_or("")) {
            return j;
        }
        assert!(
            Instant::now() < until,
            "job {id} not {states:?} within {within:?}: {j}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM lets running attempts finish within the grace, then gives what is left back to the
/// queue, uncharged: after a restart those jobs run as their first attempt. An idle server
/// exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_gives_unfinished_jobs_back_uncharged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("jobs.db").display().to_string();
    let http = reqwest::Client::new();

    let mut idle = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &idle.url, guests::TESTJOB, "testjob").await;
    let took = idle
        .terminate(Duration::from_secs(10))
        .expect("an idle server exits");
    eprintln!("SHUTDOWN an idle serve exited {took:?} after SIGTERM");
    assert!(
        took < Duration::from_secs(2),
        "an idle server took {took:?} to exit"
    );

    let mut server = Process::serve(
        dir.path(),
        &db,
        &["--workers", "2", "--shutdown-grace", "500ms"],
    );
    let quick = submit(
        &http,
        &server.url,
        json!({"module": "testjob", "input": {"mode": "sleep", "ms": 200}}),
    )
    .await;
    let quick = quick.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let mut slow = Vec::new();
    for _ in 0..3 {
        let r = submit(
            &http,
            &server.url,
            json!({"module": "testjob", "input": {"mode": "sleep", "ms": 3000}}),
        )
        .await;
        slow.push(
            r.json::<Value>().await.expect("json")["id"]
                .as_i64()
                .expect("id"),
        );
    }
    wait_state(
        &http,
        &server.url,
        quick,
        &["succeeded"],
        Duration::from_secs(30),
    )
    .await;
    wait_state(
        &http,
        &server.url,
        slow[0],
        &["running"],
        Duration::from_secs(30),
    )
    .await;
    let took = server
        .terminate(Duration::from_secs(20))
        .expect("a busy server exits after its grace");
    assert!(
        took < Duration::from_secs(5),
        "took {took:?} with a 500 ms grace"
    );

    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    for &id in &slow {
        let j = wait_state(
            &http,
            &server.url,
            id,
            &["succeeded", "failed", "cancelled"],
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(j["state"], "succeeded", "{j}");
        assert_eq!(
            j["attempt_count"], 1,
            "the attempt cut short was not charged: {j}"
        );
        let outcomes: Vec<&str> = j["attempts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["outcome"].as_str())
            .collect();
        assert_eq!(outcomes, ["succeeded"], "{j}");
    }
    let events = http
        .get(format!("{}/v1/jobs/{}/events", server.url, slow[0]))
        .send()
        .await
        .expect("events")
        .text()
        .await
        .expect("text");
    assert!(events.contains("released_by"), "{events}");
}

/// Whether this process may mount a tmpfs (root with the capability): the disk-full test needs
/// one.
fn mount_tmpfs(at: &std::path::Path, size: &str) -> bool {
    std::fs::create_dir_all(at).is_ok()
        && std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success())
}

fn umount(at: &std::path::Path) {
    let _ = std::process::Command::new("umount").arg(at).status();
}

/// Fills the small file system at `dir` with a file until it is full. Writes at most 64 MiB:
/// more means `dir` is not the small tmpfs the test mounted, and it stops rather than fill a
/// real disk.
fn fill(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0u8; 64 << 10];
    let mut written = 0usize;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len();
        if written > 64 << 20 {
            drop(f);
            let _ = std::fs::remove_file(&path);
            panic!("{} is not the small tmpfs the test mounted", dir.display());
        }
    }
    let _ = f.sync_all();
    path
}

/// On a full disk: readiness says so, submissions get `503` with `Retry-After`, and an attempt
/// that finished meanwhile is kept and written once there is room again — it is not run again,
/// and its end is recorded when it ended. (SQLite reuses its WAL file's space, so a full disk
/// refuses only writes larger than what the WAL already holds: the test's submission and
/// output are a megabyte or two.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_loudly_and_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("disk");
    if !mount_tmpfs(&disk, "16m") {
        eprintln!(
            "SKIPPED: a_full_disk_refuses_loudly_and_drops_nothing: this machine does not let the tests mount a tmpfs (run as root with CAP_SYS_ADMIN to run it)"
        );
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            umount(&self.0);
        }
    }
    let _unmount = Unmount(disk.clone());
    let db = disk.join("jobs.db").display().to_string();
    let http = reqwest::Client::new();
    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let ready = http
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    let r = submit(
        &http,
        &server.url,
        // Its output (2 MB) will not fit in what the full disk leaves.
        json!({"module": "testjob", "input": {"mode": "sleepbig", "ms": 1500, "size": 2_000_000}}),
    )
    .await;
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    wait_state(
        &http,
        &server.url,
        id,
        &["running"],
        Duration::from_secs(30),
    )
    .await;
    let filler = fill(&disk);

    let r = submit(
        &http,
        &server.url,
        json!({"module": "testjob", "input": {"mode": "sleep", "ms": 1, "name": "x".repeat(1_000_000)}}),
    )
    .await;
    assert_eq!(r.status(), 503, "a submission on a full disk");
    assert!(r.headers().contains_key("retry-after"));
    let body: Value = r.json().await.expect("json");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|m| m.contains("disk is full")),
        "{body}"
    );
    // The attempt ends meanwhile; its completion cannot be written.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let ready = http
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let why: Value = ready.json().await.expect("json");
    assert!(why["reasons"].to_string().contains("disk is full"), "{why}");
    let freed_at = wasmjobs::store::now_ms();
    std::fs::remove_file(&filler).expect("free the disk");

    let j = wait_state(
        &http,
        &server.url,
        id,
        &["succeeded", "failed"],
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(j["state"], "succeeded", "{j}");
    assert_eq!(
        j["attempt_count"], 1,
        "the finished attempt was not run again: {j}"
    );
    let finished = j["finished_at"].as_i64().expect("finished_at");
    assert!(
        finished < freed_at,
        "recorded when it ended ({finished}), not when the disk had room ({freed_at})"
    );
    let ready = http
        .get(format!("{}/readyz", server.url))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200, "ready again");
    let log = std::fs::read_to_string(
        std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "log"))
            .expect("the server's log"),
    )
    .expect("log");
    let repeats = log
        .lines()
        .filter(|l| l.contains("completing attempts failed"))
        .count();
    assert!(
        repeats <= 3,
        "the same failure was logged {repeats} times:\n{log}"
    );

    // On a file system that takes no write at all (remounted read-only), a server does not
    // start, and says what to do.
    drop(server);
    let remounted = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&disk)
        .status()
        .is_ok_and(|s| s.success());
    assert!(remounted, "remount the tmpfs read-only");
    let mut refused = std::process::Command::new(wasmjobs_tests::wasmjobs_bin())
        .args(["serve", "--db", &db, "--addr", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env("WASMJOBS_CACHE_DIR", dir.path().join("cache"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = refused.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > until {
            let _ = refused.kill();
            panic!("serve started on a read-only file system");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = refused.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    assert!(!status.success(), "{err}");
    assert!(
        err.contains("does not take writes") || err.contains("cannot open"),
        "{err}"
    );
}

/// A database file damaged in the middle is refused at start, with what to do; so is a store
/// that takes no write.
#[tokio::test]
async fn a_damaged_database_file_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jobs.db");
    let store = wasmjobs::store::open(path.to_str().expect("utf-8"))
        .await
        .expect("open");
    for i in 0..200 {
        store
            .put_module(
                wasmjobs::store::NewModule {
                    digest: format!("sha256:{i:064x}"),
                    world: "wasmjobs:job/job".into(),
                    imports: vec![],
                    bytes: vec![i as u8; 4096],
                    name: Some(format!("m{i}")),
                    owner: None,
                    may_move: true,
                },
                1,
            )
            .await
            .expect("put");
    }
    drop(store);
    // Everything into the file itself, then scribble over pages in the middle of it.
    rusqlite::Connection::open(&path)
        .and_then(|c| c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)"))
        .expect("checkpoint");
    let mut bytes = std::fs::read(&path).expect("read");
    assert!(bytes.len() > 64 << 10, "{} bytes", bytes.len());
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 8192] {
        *b = 0xA5;
    }
    let _ = std::fs::remove_file(dir.path().join("jobs.db-wal"));
    let _ = std::fs::remove_file(dir.path().join("jobs.db-shm"));
    std::fs::write(&path, &bytes).expect("write");
    let err = wasmjobs::store::open(path.to_str().expect("utf-8"))
        .await
        .err()
        .expect("a damaged file is refused");
    let message = err.to_string();
    assert!(
        message.contains("damaged") && message.contains("backup"),
        "{message}"
    );
}

/// A token entry that could never match, or two tokens with one name, stop the server at start
/// with a message naming the entry.
#[test]
fn bad_token_entries_are_refused_at_start() {
    for (toml, says) in [
        (
            "[[tokens]]\nname = \"ci\"\nsha256 = \"abc123\"\nscope = \"submit\"\n",
            "\"ci\": sha256 must be 64 hex digits",
        ),
        (
            "[[tokens]]\nname = \"ci\"\nsha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\nscope = \"submit\"\nexpires = \"never\"\n",
            "expires",
        ),
        (
            "[[tokens]]\nname = \"a b\"\nsha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\nscope = \"read\"\n",
            "token name \"a b\"",
        ),
        (
            "[[tokens]]\nname = \"ci\"\nsha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"\nscope = \"read\"\n[[tokens]]\nname = \"ci\"\nsha256 = \"00000000000000000000000000000000000000000000000000000000000000bb\"\nscope = \"admin\"\n",
            "two tokens are named \"ci\"",
        ),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("wasmjobs.toml"), toml).expect("config");
        let out = std::process::Command::new(wasmjobs_tests::wasmjobs_bin())
            .args(["serve", "--db", "x.db", "--addr", "127.0.0.1:0"])
            .current_dir(dir.path())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml}: started");
        assert!(err.contains(says), "{toml}: {err}");
    }
}
