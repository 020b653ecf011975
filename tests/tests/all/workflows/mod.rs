//! Workflow runs over HTTP on a real socket, on both store backends: data passing along
//! chains and diamonds, every kind of condition and the skips that follow, fan-out and fan-in
//! (empty, fail-fast, collect-all), a failure in the middle, cascading cancel, the run's
//! timeout, a failed run retried, the live event stream, and bad requests. Crash-resume with the real binary is in
//! `e2e/crashes.rs`. The steps are the `flow` test guest: what it does depends only on its input.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use wasmjobs::http::ApiConfig;
use wasmjobs_tests::{TestServer, guest_bytes, guests, test_stores};

mod control;
mod retry;
mod runs;

pub(super) struct Api {
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

pub(super) fn node<'a>(run: &'a Value, name: &str) -> &'a Value {
    run["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in {run}"))
}

pub(super) fn states(run: &Value) -> Vec<(String, String)> {
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

pub(super) fn chain(name: &str, length: usize) -> Value {
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
