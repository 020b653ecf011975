//! kill -9 under load on both backends, and a workflow run across a crash.

use super::*;

/// Rounds of `kill -9` of a lone SQLite server under a stream of acknowledged submissions:
/// every acknowledged job ends once, with its history whole, and after each restart the dead
/// process's running jobs are taken back at once — within 5 s of the restart, though their
/// leases (30 s) are far from over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_rounds_lose_nothing_and_restarts_rescue_at_once_sqlite() {
    const ROUNDS: usize = 3;
    const JOBS: usize = 1800;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("wasmjobs.toml"), "lease = \"30s\"\n").expect("config");
    let db = dir.path().join("jobs.db").display().to_string();
    let http = reqwest::Client::new();

    let mut server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &server.url, guests::NOOP, "noop").await;
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let mut accepted: Vec<i64> = Vec::new();
    let mut restarts: Vec<i64> = Vec::new();
    for round in 0..ROUNDS {
        let url = server.url.clone();
        let batch = JOBS / (ROUNDS + 1);
        let submitter = {
            let http = http.clone();
            tokio::spawn(async move {
                submit_all(
                    &http,
                    &url,
                    (0..batch).map(|i| job_body(i + round)).collect(),
                )
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        wait_some_running(&http, &server.url).await;
        server.kill9();
        accepted.extend(submitter.await.expect("submitter"));
        restarts.push(wasmjobs::store::now_ms());
        server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    }
    let needed = JOBS - accepted.len();
    accepted.extend(submit_all(&http, &server.url, (0..needed).map(job_body).collect()).await);
    assert_eq!(accepted.len(), JOBS);
    wait_all_final(&http, &server.url, &accepted, Duration::from_secs(240)).await;
    let outcomes = check_histories(&http, &server.url, &accepted).await;
    assert!(
        outcomes.get("succeeded").copied().unwrap_or(0) >= JOBS * 8 / 10,
        "{outcomes:?}"
    );

    check_outputs(&http, &server.url, &accepted).await;
    let lost = lost_attempts(&http, &server.url, &accepted).await;
    assert!(
        !lost.is_empty(),
        "no attempt was running at a kill: {outcomes:?}"
    );
    for (id, worker, finished_at) in &lost {
        let after = restarts
            .iter()
            .rev()
            .find(|r| **r <= *finished_at)
            .copied()
            .unwrap_or(0);
        assert!(
            finished_at - after <= 5_000,
            "job {id}: the attempt {worker} left running was taken back {} ms after the restart",
            finished_at - after
        );
    }
    eprintln!(
        "RESCUE {} lost attempts over {ROUNDS} restarts, each taken back within {} ms of its restart",
        lost.len(),
        lost.iter()
            .map(|(_, _, f)| f - restarts
                .iter()
                .rev()
                .find(|r| **r <= *f)
                .copied()
                .unwrap_or(0))
            .max()
            .unwrap_or(0)
    );
}

/// Nodes on one Postgres: `serve` and two workers. A worker killed and restarted under its id,
/// and `serve` killed and restarted (a new id, the old process gone from this host), have their
/// running jobs taken back within 5 s of the restart; a worker killed for good has its jobs
/// taken back by the others once its lease ran out (a lease and a third at most, the rescuer's
/// period). Every job ends once, succeeded, with its history whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_nodes_jobs_are_rescued_on_restart_or_after_a_lease_postgres() {
    let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES") else {
        eprintln!(
            "SKIPPED: killed_nodes_jobs_are_rescued_on_restart_or_after_a_lease_postgres (set WASMJOBS_TEST_POSTGRES to run it)"
        );
        return;
    };
    const LEASE_MS: i64 = 12_000;
    let db = fresh_database(&pg, "nodes");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("wasmjobs.toml"),
        format!("lease = \"{LEASE_MS}ms\"\n"),
    )
    .expect("config");
    let http = reqwest::Client::new();
    let mut api = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &api.url, guests::TESTJOB, "testjob").await;
    let mut w1 = Process::worker(dir.path(), &db, "w1");
    let mut w2 = Process::worker(dir.path(), &db, "w2");
    let bodies = (0..400)
        .map(|_| json!({"module": "testjob", "input": {"mode": "sleep", "ms": 100}}))
        .collect();
    let ids = submit_all(&http, &api.url, bodies).await;
    assert_eq!(ids.len(), 400);

    // Round 1: w1 dies and comes back under its id.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w1.kill9();
    let w1_back = wasmjobs::store::now_ms();
    w1 = Process::worker(dir.path(), &db, "w1");
    // Round 2: serve dies and comes back (a new node id; the old process is gone).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    api.kill9();
    let serve_back = wasmjobs::store::now_ms();
    api = Process::serve(dir.path(), &db, &["--workers", "2"]);
    // Round 3: w2 dies for good.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    w2.kill9();
    let w2_dead = wasmjobs::store::now_ms();

    wait_all_final(&http, &api.url, &ids, Duration::from_secs(180)).await;
    check_histories(&http, &api.url, &ids).await;
    for &id in &ids {
        let j = job(&http, &api.url, id).await;
        assert_eq!(j["state"], "succeeded", "{j}");
    }
    let lost = lost_attempts(&http, &api.url, &ids).await;
    let (mut on_restart, mut on_lease) = (0, 0);
    for (id, worker, finished_at) in &lost {
        let (since, within, what) = match worker.as_str() {
            "w1" => (w1_back, 5_000, "after w1 came back"),
            "w2" => (w2_dead, LEASE_MS + LEASE_MS / 3 + 3_000, "after w2 died"),
            _ => (serve_back, 5_000, "after serve came back"),
        };
        assert!(
            finished_at - since <= within,
            "job {id}: {worker}'s attempt taken back {} ms {what} (at most {within})",
            finished_at - since
        );
        if worker == "w2" {
            on_lease += 1;
        } else {
            on_restart += 1;
        }
    }
    assert!(
        on_restart >= 1 && on_lease >= 1,
        "the killed nodes had jobs in flight: {lost:?}"
    );
    eprintln!(
        "RESCUE {on_restart} attempts taken back on restart, {on_lease} after the dead node's lease"
    );

    // Live events across processes: a worker writes them, the API node streams them (NOTIFY).
    let r = http
        .post(format!("{}/v1/jobs", api.url))
        .json(&json!({"module": "testjob", "input": {"mode": "sleep", "ms": 800}}))
        .send()
        .await
        .expect("submit");
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_i64()
        .expect("id");
    let started = Instant::now();
    let live = events(&http, &api.url, id).await;
    let kinds: Vec<String> = live
        .iter()
        .map(|(_, e, d)| format!("{e}:{}", d["state"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("end:succeeded"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"state:running".to_string()), "{kinds:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "the stream did not wait: {kinds:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stream ended late: {:?}",
        started.elapsed()
    );
    drop((w1, w2, api));
    drop_database(&pg, &db);
}

/// `kill -9` of the server in the middle of workflow runs, then a restart on the same store:
/// every run finishes, and a node that had finished keeps its job (same id, one attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_workflow_resumes_without_rerunning_finished_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut dbs = vec![("sqlite", dir.path().join("wf.db").display().to_string())];
    match std::env::var("WASMJOBS_TEST_POSTGRES") {
        Ok(pg) if !pg.is_empty() => dbs.push(("postgres", fresh_database(&pg, "wf_crash"))),
        _ => eprintln!(
            "SKIPPED: the Postgres half of kill_9_mid_workflow_resumes_without_rerunning_finished_nodes (set WASMJOBS_TEST_POSTGRES to run it)"
        ),
    }
    std::fs::write(dir.path().join("wasmjobs.toml"), "lease = \"2s\"\n").expect("config");
    let http = reqwest::Client::new();
    for (backend, db) in dbs {
        let mut server = Process::serve(dir.path(), &db, &["--workers", "2"]);
        upload(&http, &server.url, guests::FLOW, "flow").await;
        let definition = json!({ "name": "crash", "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "b", "module": "flow", "needs": ["a"] },
            { "name": "fan", "module": "flow", "needs": ["b"],
              "for_each": { "items": "/items", "concurrency": 2 } },
            { "name": "d", "module": "flow", "needs": ["fan"] },
        ]});
        let r = http
            .post(format!("{}/v1/workflows", server.url))
            .json(&definition)
            .send()
            .await
            .expect("define");
        assert!(r.status().is_success(), "{backend}: define {}", r.status());
        let input = json!({ "n": 0, "sleep_ms": 400, "items": (1..=10).collect::<Vec<i64>>() });
        let mut runs = Vec::new();
        for _ in 0..3 {
            let v: Value = http
                .post(format!("{}/v1/workflows/crash/runs", server.url))
                .json(&json!({ "input": input }))
                .send()
                .await
                .expect("start")
                .json()
                .await
                .expect("json");
            runs.push(v["id"].as_i64().expect("run id"));
        }
        let get = |url: String| {
            let http = http.clone();
            async move {
                http.get(url)
                    .send()
                    .await
                    .expect("get")
                    .json::<Value>()
                    .await
                    .expect("json")
            }
        };
        let node_of = |run: &Value, name: &str| -> Value {
            run["nodes"]
                .as_array()
                .and_then(|ns| ns.iter().find(|n| n["name"] == name))
                .cloned()
                .unwrap_or(Value::Null)
        };
        // Kill it once every run's first node finished, with jobs of the runs still running.
        let until = Instant::now() + Duration::from_secs(30);
        let done_before: Vec<Vec<(String, i64)>> = loop {
            let mut all = Vec::new();
            let mut running = false;
            for id in &runs {
                let run = get(format!("{}/v1/workflow-runs/{id}", server.url)).await;
                running |= run["state"] == "running";
                let done: Vec<(String, i64)> = ["a", "b", "d"]
                    .iter()
                    .filter(|n| node_of(&run, n)["state"] == "succeeded")
                    .map(|n| {
                        (
                            n.to_string(),
                            node_of(&run, n)["job"].as_i64().expect("job"),
                        )
                    })
                    .collect();
                all.push(done);
            }
            if all.iter().all(|d| d.iter().any(|(n, _)| n == "a")) {
                assert!(running, "{backend}: every run ended before the kill");
                break all;
            }
            assert!(
                Instant::now() < until,
                "{backend}: the runs never got past a"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        server.kill9();

        let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
        for (id, done) in runs.iter().zip(&done_before) {
            let until = Instant::now() + Duration::from_secs(90);
            let run = loop {
                let run = get(format!("{}/v1/workflow-runs/{id}", server.url)).await;
                if ["succeeded", "failed", "cancelled"]
                    .contains(&run["state"].as_str().unwrap_or(""))
                {
                    break run;
                }
                assert!(
                    Instant::now() < until,
                    "{backend}: run {id} did not finish: {run}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(run["state"], "succeeded", "{backend}: {run}");
            let doubled: Vec<i64> = (1..=10).map(|x| x * 2).collect();
            assert_eq!(
                run["output"],
                json!({ "count": 10, "items": doubled }),
                "{backend}"
            );
            // Every node that had finished before the kill kept its job, which ran once.
            for (name, job_id) in done {
                assert_eq!(
                    node_of(&run, name)["job"].as_i64(),
                    Some(*job_id),
                    "{backend}: {name} kept its job"
                );
                let j = job(&http, &server.url, *job_id).await;
                assert_eq!(
                    j["attempts"].as_array().map(Vec::len),
                    Some(1),
                    "{backend}: a finished node never runs again: {j}"
                );
            }
        }
        drop(server);
        if backend == "postgres"
            && let Ok(pg) = std::env::var("WASMJOBS_TEST_POSTGRES")
        {
            drop_database(&pg, &db);
        }
    }
}

/// A run whose pinned definition can no longer be used after a restart (here: edited in the
/// database to one that does not validate) fails with a message saying so, instead of being
/// stepped for ever; its running job is stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_definition_became_unusable_fails_and_says_why() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("bad.db").display().to_string();
    std::fs::write(dir.path().join("wasmjobs.toml"), "lease = \"2s\"\n").expect("config");
    let http = reqwest::Client::new();
    let mut server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    upload(&http, &server.url, guests::FLOW, "flow").await;
    let r = http
        .post(format!("{}/v1/workflows", server.url))
        .json(&json!({ "name": "doomed", "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "b", "module": "flow", "needs": ["a"] },
        ]}))
        .send()
        .await
        .expect("define");
    assert!(r.status().is_success());
    let run: Value = http
        .post(format!("{}/v1/workflows/doomed/runs", server.url))
        .json(&json!({ "input": { "n": 0, "sleep_ms": 20_000 } }))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let id = run["id"].as_i64().expect("id");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let v: Value = http
            .get(format!("{}/v1/workflow-runs/{id}", server.url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        if let Some(j) = v["nodes"][0]["job"].as_i64()
            && job(&http, &server.url, j).await["state"] == "running"
        {
            break;
        }
        assert!(Instant::now() < until, "a never ran: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill9();
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{db}"))
        .await
        .expect("open the database");
    sqlx::query("UPDATE workflows SET definition = '{\"name\": \"doomed\", \"nodes\": []}'")
        .execute(&pool)
        .await
        .expect("edit");
    pool.close().await;

    let server = Process::serve(dir.path(), &db, &["--workers", "2"]);
    let until = Instant::now() + Duration::from_secs(30);
    let run = loop {
        let v: Value = http
            .get(format!("{}/v1/workflow-runs/{id}", server.url))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .unwrap_or(Value::Null);
        if v["state"] == "failed" {
            break v;
        }
        assert!(Instant::now() < until, "the run did not fail: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = run["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the run's definition cannot be used") && error.contains("no nodes"),
        "{error}"
    );
    // The job that was running at the kill is not run again to completion: it ends cancelled.
    let a_job = run["nodes"][0]["job"].as_i64().expect("a's job");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let j = job(&http, &server.url, a_job).await;
        if j["state"] == "cancelled" {
            break;
        }
        assert!(Instant::now() < until, "a's job was not stopped: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
