//! Workflow runs over HTTP on a real socket, on both store backends: data passing along
//! chains and diamonds, every kind of condition and the skips that follow, fan-out and fan-in
//! (empty, fail-fast, collect-all), a failure in the middle, cascading cancel, the run's
//! timeout, the live event stream, and bad requests. Crash-resume with the real binary is in
//! `e2e.rs`. The steps are the `flow` test guest: what it does depends only on its input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmjobs::http::ApiConfig;
use wasmjobs_tests::{TestServer, guest_bytes, guests, test_stores};

struct Api {
    http: reqwest::Client,
    url: String,
}

impl Api {
    async fn new(server: &TestServer) -> Api {
        let api = Api {
            http: reqwest::Client::new(),
            url: server.url.clone(),
        };
        let r = api
            .http
            .post(format!("{}/v1/modules?name=flow", api.url))
            .body(guest_bytes(guests::FLOW))
            .send()
            .await
            .expect("upload");
        assert!(r.status().is_success(), "upload: {}", r.status());
        api
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn define(&self, definition: Value) {
        let (status, v) = self
            .send(reqwest::Method::POST, "/v1/workflows", Some(definition))
            .await;
        assert!(status == 201 || status == 200, "define: {status} {v}");
    }

    async fn start(&self, name: &str, input: Value) -> i64 {
        let (status, v) = self
            .send(
                reqwest::Method::POST,
                &format!("/v1/workflows/{name}/runs"),
                Some(json!({ "input": input })),
            )
            .await;
        assert_eq!(status, 201, "start: {v}");
        v["id"].as_i64().expect("run id")
    }

    async fn run(&self, id: i64) -> Value {
        let (status, v) = self
            .send(
                reqwest::Method::GET,
                &format!("/v1/workflow-runs/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v
    }

    async fn wait(&self, id: i64) -> Value {
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.run(id).await;
            if ["succeeded", "failed", "cancelled"].contains(&run["state"].as_str().unwrap_or("")) {
                return run;
            }
            assert!(Instant::now() < until, "run {id} did not end: {run}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn job(&self, id: i64) -> Value {
        self.send(reqwest::Method::GET, &format!("/v1/jobs/{id}"), None)
            .await
            .1
    }
}

fn node<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {run}"))
}

fn states(run: &Value) -> Vec<(String, String)> {
    run["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or("").to_string(),
                n["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn chain(name: &str, length: usize) -> Value {
    let nodes: Vec<Value> = (0..length)
        .map(|i| {
            let mut n = json!({ "name": format!("s{i}"), "module": "flow" });
            if i > 0 {
                n["needs"] = json!([format!("s{}", i - 1)]);
            }
            n
        })
        .collect();
    json!({ "name": name, "nodes": nodes })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_and_diamonds_pass_data_along() {
    for (backend, store, _db) in test_stores("wf_chain").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;

        api.define(chain("chain", 6)).await;
        let id = api.start("chain", json!({ "n": 0, "tag": "x" })).await;
        let run = api.wait(id).await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        assert_eq!(
            run["output"],
            json!({ "n": 6, "tag": "x" }),
            "{backend}: each node got its upstream's output"
        );
        let mut jobs = Vec::new();
        for (name, state) in states(&run) {
            assert_eq!(state, "succeeded", "{backend}: {name}");
            let job = node(&run, &name)["job"].as_i64().expect("job id");
            let j = api.job(job).await;
            assert_eq!(j["state"], "succeeded");
            assert_eq!(
                j["workflow_ref"],
                id.to_string(),
                "the job knows only its run"
            );
            jobs.push(job);
        }
        jobs.dedup();
        assert_eq!(jobs.len(), 6, "one job per node");
        // Outputs are not copied from node to node: each job reads its upstream's output,
        // which stays in the upstream job, when it starts.
        for pair in jobs.windows(2) {
            let (up, down) = (pair[0], pair[1]);
            let j = api.job(down).await;
            assert_eq!(j["input_from"], up, "{backend}: {j}");
            let (_, with_input) = api
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/jobs/{down}?include=input"),
                    None,
                )
                .await;
            use base64::Engine as _;
            let input = base64::engine::general_purpose::STANDARD
                .decode(with_input["input_base64"].as_str().unwrap_or_default())
                .expect("base64");
            let upstream_output = api.job(up).await["output"].clone();
            assert_eq!(
                serde_json::from_slice::<Value>(&input).expect("json input"),
                upstream_output
            );
        }
        assert!(api.job(jobs[0]).await["input_from"].is_null());

        // A diamond: the join gets an object keyed by upstream name.
        api.define(json!({ "name": "diamond", "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "b", "module": "flow", "needs": ["a"] },
            { "name": "c", "module": "flow", "needs": ["a"] },
            { "name": "d", "module": "flow", "needs": ["b", "c"] },
        ]}))
        .await;
        let run = api
            .wait(api.start("diamond", json!({ "n": 10 })).await)
            .await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        assert_eq!(
            run["output"],
            json!({ "got": { "b": { "n": 12 }, "c": { "n": 12 } } }),
            "{backend}"
        );

        // A failure in the middle: the rest of the chain is skipped and the run fails, naming
        // the node.
        let run = api
            .wait(api.start("chain", json!({ "n": 0, "fail_at": 3 })).await)
            .await;
        assert_eq!(run["state"], "failed", "{backend}: {run}");
        let s = states(&run);
        assert_eq!(
            s.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
            [
                "succeeded",
                "succeeded",
                "failed",
                "skipped",
                "skipped",
                "skipped"
            ],
            "{backend}: {s:?}"
        );
        let error = run["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("\"s2\"") && error.contains("step 3 fails on purpose"),
            "{backend}: {error}"
        );
        assert!(run["output"].is_null());

        // A node's own limits and retry policy apply to its job.
        api.define(json!({ "name": "tight", "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "b", "module": "flow", "needs": ["a"],
              "limits": { "fuel": 1000 }, "retry": { "max_attempts": 2, "initial_backoff_ms": 10 } },
        ]}))
        .await;
        let run = api.wait(api.start("tight", json!({ "n": 0 })).await).await;
        assert_eq!(run["state"], "failed", "{backend}: {run}");
        let job = api.job(node(&run, "b")["job"].as_i64().expect("job")).await;
        assert_eq!(job["outcome"], "out_of_fuel", "{backend}: {job}");
        assert_eq!(job["limits"]["fuel"], 1000, "{job}");
        assert_eq!(job["retry"]["max_attempts"], 2, "{job}");
        assert_eq!(
            job["attempts"].as_array().map(Vec::len),
            Some(1),
            "out_of_fuel is not retried by default: {job}"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_of_each_kind_and_the_skips_they_cause() {
    for (backend, store, _db) in test_stores("wf_when").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;
        api.define(json!({ "name": "branches", "nodes": [
            { "name": "a", "module": "flow" },
            { "name": "high", "module": "flow", "needs": ["a"], "when": "/n > 5" },
            { "name": "low", "module": "flow", "needs": ["a"], "when": "/n <= 5" },
            { "name": "after_high", "module": "flow", "needs": ["high"] },
            { "name": "after_high_anyway", "module": "flow", "needs": ["high"], "when": "always" },
            { "name": "on_failure", "module": "flow", "needs": ["a"], "when": "failure" },
            { "name": "tagged", "module": "flow", "needs": ["a"], "when": "/tag == \"blue\"" },
        ]}))
        .await;

        let run = api
            .wait(api.start("branches", json!({ "n": 0 })).await)
            .await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        let expected = [
            ("a", "succeeded"),
            ("high", "skipped"),
            ("low", "succeeded"),
            ("after_high", "skipped"),
            ("after_high_anyway", "succeeded"),
            ("on_failure", "skipped"),
            ("tagged", "skipped"),
        ];
        let got = states(&run);
        for (name, state) in expected {
            assert!(
                got.contains(&(name.to_string(), state.to_string())),
                "{backend}: {name} should be {state}: {got:?}"
            );
        }
        assert!(
            node(&run, "high")["job"].is_null(),
            "a skipped node has no job"
        );
        // `always` after a skipped node runs, and sees why its upstream did not give output.
        let job = node(&run, "after_high_anyway")["job"]
            .as_i64()
            .expect("job");
        assert_eq!(
            api.job(job).await["output"],
            json!({ "got": { "state": "skipped", "error": null } })
        );
        // The run's output: its leaves that succeeded, by name.
        assert_eq!(run["output"]["low"], json!({ "n": 2 }), "{backend}: {run}");

        // The other branches: the predicates flip, and a failed root runs `failure` only.
        let run = api
            .wait(
                api.start("branches", json!({ "n": 9, "tag": "blue" }))
                    .await,
            )
            .await;
        let got = states(&run);
        for (name, state) in [
            ("high", "succeeded"),
            ("low", "skipped"),
            ("tagged", "succeeded"),
        ] {
            assert!(
                got.contains(&(name.to_string(), state.to_string())),
                "{backend}: {name} should be {state}: {got:?}"
            );
        }
        let run = api
            .wait(api.start("branches", json!({ "n": 0, "fail_at": 1 })).await)
            .await;
        assert_eq!(run["state"], "failed", "{backend}: {run}");
        let got = states(&run);
        for (name, state) in [
            ("a", "failed"),
            ("high", "skipped"),
            ("low", "skipped"),
            ("after_high", "skipped"),
            ("after_high_anyway", "succeeded"),
            ("on_failure", "succeeded"),
        ] {
            assert!(
                got.contains(&(name.to_string(), state.to_string())),
                "{backend}: {name} should be {state}: {got:?}"
            );
        }
        let job = node(&run, "on_failure")["job"].as_i64().expect("job");
        let seen = &api.job(job).await["output"]["got"];
        assert_eq!(seen["state"], "failed", "{seen}");
        assert!(
            seen["error"]
                .as_str()
                .unwrap_or_default()
                .contains("step 1 fails on purpose"),
            "the failure handler sees the error: {seen}"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_fans_out_and_gathers_in_order() {
    for (backend, store, _db) in test_stores("wf_fan").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;
        for (name, on_failure) in [("fan", "fail_fast"), ("fan_all", "collect_all")] {
            api.define(json!({ "name": name, "nodes": [
                { "name": "a", "module": "flow" },
                { "name": "each", "module": "flow", "needs": ["a"],
                  "for_each": { "items": "/items", "concurrency": 3, "on_failure": on_failure },
                  "retry": { "max_attempts": 1 } },
                { "name": "sink", "module": "flow", "needs": ["each"] },
            ]}))
            .await;
        }
        let items: Vec<i64> = (1..=20).collect();
        let run = api
            .wait(api.start("fan", json!({ "n": 0, "items": items })).await)
            .await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        let doubled: Vec<i64> = items.iter().map(|x| x * 2).collect();
        assert_eq!(
            run["output"],
            json!({ "count": 20, "items": doubled }),
            "{backend}: outputs gathered in element order"
        );
        let each = &node(&run, "each")["items"];
        assert_eq!(each["total"], 20);
        assert_eq!(each["done"], 20);
        let elements = each["elements"].as_array().expect("elements");
        assert_eq!(elements.len(), 20);
        let mut jobs: Vec<i64> = elements
            .iter()
            .map(|e| e["job"].as_i64().expect("job"))
            .collect();
        jobs.sort_unstable();
        jobs.dedup();
        assert_eq!(jobs.len(), 20, "one job per element");
        // The concurrency cap held: never more than 3 elements' jobs ran at once.
        let mut spans = Vec::new();
        for j in &jobs {
            let job = api.job(*j).await;
            spans.push((
                job["created_at"].as_i64().unwrap_or(0),
                job["finished_at"].as_i64().unwrap_or(0),
            ));
        }
        for (start, _) in &spans {
            let live = spans
                .iter()
                .filter(|(s, f)| s <= start && f > start)
                .count();
            assert!(live <= 3, "{backend}: {live} elements at once: {spans:?}");
        }

        // An empty array: nothing to run, the successor gets [].
        let run = api
            .wait(api.start("fan", json!({ "n": 0, "items": [] })).await)
            .await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        assert_eq!(run["output"], json!({ "count": 0, "items": [] }));

        // Not an array: the node fails and says what it found.
        let run = api
            .wait(api.start("fan", json!({ "n": 0, "items": "many" })).await)
            .await;
        assert_eq!(run["state"], "failed", "{backend}: {run}");
        let e = node(&run, "each")["error"].as_str().unwrap_or_default();
        assert!(e.contains("/items") && e.contains("a string"), "{e}");

        // Fail fast: the first failed element fails the node; the rest are not all run.
        let mut bad: Vec<i64> = (1..=30).collect();
        bad[1] = -2;
        let run = api
            .wait(api.start("fan", json!({ "n": 0, "items": bad })).await)
            .await;
        assert_eq!(run["state"], "failed", "{backend}: {run}");
        let each = node(&run, "each");
        assert_eq!(each["state"], "failed");
        assert!(
            each["error"]
                .as_str()
                .unwrap_or_default()
                .contains("element 1"),
            "{each}"
        );
        assert!(
            each["items"]["submitted"].as_i64().unwrap_or(30) < 30,
            "{backend}: fail-fast stopped submitting: {each}"
        );
        assert_eq!(node(&run, "sink")["state"], "skipped");
        // Collect all: every element runs, the node fails with the count.
        let run = api
            .wait(api.start("fan_all", json!({ "n": 0, "items": bad })).await)
            .await;
        assert_eq!(run["state"], "failed", "{backend}: {run}");
        let each = node(&run, "each");
        assert_eq!(each["items"]["done"], 30, "{each}");
        assert_eq!(each["items"]["failed"], 1, "{each}");
        assert!(
            each["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with("1 of 30 elements failed"),
            "{each}"
        );
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_cascades_and_timeouts_stop_the_run() {
    for (backend, store, _db) in test_stores("wf_cancel").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;
        api.define(chain("slow", 3)).await;
        let id = api
            .start("slow", json!({ "n": 0, "sleep_ms": 30_000 }))
            .await;
        // Wait until the first node's job is running.
        let until = Instant::now() + Duration::from_secs(20);
        let job = loop {
            let run = api.run(id).await;
            if let Some(job) = node(&run, "s0")["job"].as_i64()
                && api.job(job).await["state"] == "running"
            {
                break job;
            }
            assert!(Instant::now() < until, "s0 never ran: {run}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let t = Instant::now();
        let (status, v) = api
            .send(
                reqwest::Method::POST,
                &format!("/v1/workflow-runs/{id}/cancel"),
                None,
            )
            .await;
        assert_eq!(status, 202, "{v}");
        let run = api.wait(id).await;
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{backend}: cancel took {:?}",
            t.elapsed()
        );
        assert_eq!(run["state"], "cancelled", "{backend}: {run}");
        assert_eq!(
            states(&run)
                .iter()
                .map(|(_, s)| s.as_str())
                .collect::<Vec<_>>(),
            ["cancelled", "cancelled", "cancelled"],
            "{backend}"
        );
        assert_eq!(api.job(job).await["state"], "cancelled");
        // Cancelling again: the run already ended.
        let (status, v) = api
            .send(
                reqwest::Method::POST,
                &format!("/v1/workflow-runs/{id}/cancel"),
                None,
            )
            .await;
        assert_eq!(status, 409, "{v}");

        // The run's own timeout: its running job is stopped and the run fails, saying why.
        let mut timed = chain("timed", 2);
        timed["timeout"] = json!("1s");
        api.define(timed).await;
        let t = Instant::now();
        let run = api
            .wait(
                api.start("timed", json!({ "n": 0, "sleep_ms": 30_000 }))
                    .await,
            )
            .await;
        assert_eq!(run["state"], "failed", "{backend}: {run}");
        assert!(
            run["error"]
                .as_str()
                .unwrap_or_default()
                .contains("timeout (1s) passed"),
            "{run}"
        );
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        assert_eq!(node(&run, "s1")["state"], "cancelled");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_shows_node_states_and_logs() {
    for (backend, store, _db) in test_stores("wf_sse").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;
        api.define(chain("watched", 3)).await;
        let id = api
            .start("watched", json!({ "n": 0, "sleep_ms": 50 }))
            .await;
        let events = crate::api::read_sse(
            &format!("{}/v1/workflow-runs/{id}/events", api.url),
            None,
            None,
        )
        .await;
        let node_states: Vec<(String, String)> = events
            .iter()
            .filter(|(_, e, _)| e == "node")
            .map(|(_, _, d)| {
                (
                    d["node"].as_str().unwrap_or("").to_string(),
                    d["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let expected: Vec<(String, String)> = ["s0", "s1", "s2"]
            .iter()
            .flat_map(|n| {
                [
                    (n.to_string(), "running".to_string()),
                    (n.to_string(), "succeeded".to_string()),
                ]
            })
            .collect();
        assert_eq!(node_states, expected, "{backend}: {events:?}");
        let logs: Vec<(String, String)> = events
            .iter()
            .filter(|(_, e, _)| e == "log")
            .filter(|(_, _, d)| d["source"] == "report")
            .map(|(_, _, d)| {
                (
                    d["node"].as_str().unwrap_or("").to_string(),
                    d["message"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        for (i, n) in ["s0", "s1", "s2"].iter().enumerate() {
            assert!(
                logs.contains(&(n.to_string(), format!("step {}", i + 1))),
                "{backend}: {n}'s log: {logs:?}"
            );
        }
        let (_, last, end) = events.last().expect("events");
        assert_eq!(last, "end");
        assert_eq!(end["state"], "succeeded");
        // Run events carry ids in order.
        let ids: Vec<i64> = events
            .iter()
            .filter(|(_, e, _)| e == "node" || e == "run")
            .map(|(id, _, _)| id.parse().expect("id"))
            .collect();
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
        // Reconnecting with Last-Event-ID resumes the run events after it.
        let resumed = crate::api::read_sse(
            &format!("{}/v1/workflow-runs/{id}/events", api.url),
            Some(&ids[2].to_string()),
            None,
        )
        .await;
        let again: Vec<i64> = resumed
            .iter()
            .filter(|(_, e, _)| e == "node" || e == "run")
            .map(|(id, _, _)| id.parse().expect("id"))
            .collect();
        assert_eq!(again, ids[3..], "{backend}");
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_run_requests_are_named() {
    for (backend, store, _db) in test_stores("wf_bad").await {
        let server = TestServer::start(store, ApiConfig::default(), 0).await;
        let api = Api::new(&server).await;
        api.define(chain("ok", 1)).await;
        let post = |path: &'static str, body: &'static str| {
            let http = api.http.clone();
            let url = format!("{}{path}", api.url);
            async move {
                let r = http
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("send");
                let status = r.status().as_u16();
                (status, r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        for (path, body, status, needle) in [
            ("/v1/workflows/ghost/runs", "{}", 404, "ghost"),
            (
                "/v1/workflows/ok/runs",
                "{\"input\": ",
                400,
                "invalid request body",
            ),
            ("/v1/workflows/ok/runs", "{\"inptu\": 1}", 422, "inptu"),
            (
                "/v1/workflows/ok/runs",
                "{\"version\": 7}",
                404,
                "version 7",
            ),
            ("/v1/workflows/ok/runs", "{\"version\": 0}", 422, "version"),
            (
                "/v1/workflows/ok/runs",
                "{\"input\": 1, \"input_base64\": \"AA==\"}",
                422,
                "not both",
            ),
            ("/v1/workflow-runs/abc/cancel", "{}", 400, "abc"),
            ("/v1/workflow-runs/4242/cancel", "{}", 404, "4242"),
        ] {
            let (got, v) = post(path, body).await;
            assert_eq!(got, status, "{backend} {path} {body}: {v}");
            let message = v["error"]["message"].as_str().unwrap_or_default();
            assert!(message.contains(needle), "{backend} {path}: {message}");
        }
        let (status, v) = api
            .send(reqwest::Method::GET, "/v1/workflow-runs/0", None)
            .await;
        assert_eq!(status, 400, "{v}");
        let (status, v) = api
            .send(reqwest::Method::GET, "/v1/workflow-runs/77/events", None)
            .await;
        assert_eq!(status, 404, "{v}");
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_finished_runs_and_keeps_running_ones() {
    for (backend, store, _db) in test_stores("wf_prune").await {
        let server = TestServer::start(store.clone(), ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;
        api.define(chain("short", 2)).await;
        let done = api.wait(api.start("short", json!({ "n": 0 })).await).await;
        let done_id = done["id"].as_i64().expect("id");
        let done_job = node(&done, "s0")["job"].as_i64().expect("job");
        // A run still going, whose first node finished: its job's output is still needed.
        let going = api
            .start("short", json!({ "n": 0, "sleep_ms": 600, "fail_at": 99 }))
            .await;
        let until = Instant::now() + Duration::from_secs(20);
        let going_job = loop {
            let run = api.run(going).await;
            if node(&run, "s0")["state"] == "succeeded" {
                break node(&run, "s0")["job"].as_i64().expect("job");
            }
            assert!(Instant::now() < until, "{backend}: {run}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let pruned = store
            .prune(wasmjobs::store::now_ms() + 1)
            .await
            .expect("prune");
        assert!(pruned >= 2, "{backend}: {pruned}");
        let (status, _) = api
            .send(
                reqwest::Method::GET,
                &format!("/v1/workflow-runs/{done_id}"),
                None,
            )
            .await;
        assert_eq!(status, 404, "{backend}: the finished run is gone");
        let (status, _) = api
            .send(reqwest::Method::GET, &format!("/v1/jobs/{done_job}"), None)
            .await;
        assert_eq!(status, 404, "{backend}: and its jobs");
        assert_eq!(
            api.job(going_job).await["state"],
            "succeeded",
            "{backend}: a going run keeps its finished jobs"
        );
        let run = api.wait(going).await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        assert_eq!(run["output"]["n"], 2);
        server.stop().await;
    }
}
