//! Cancel, timeouts, the run's event stream, bad requests, retention.

use super::*;

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
            let message = v["detail"].as_str().unwrap_or_default();
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

/// `GET /v1/workflow-runs` lists runs newest first, by workflow and by state, a page at a time
/// with string cursors; a bad filter is a 400 naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_listed_by_workflow_and_state_a_page_at_a_time() {
    for (backend, store, _db) in test_stores("wf_list").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;
        api.define(chain("one", 1)).await;
        api.define(chain("two", 1)).await;
        let mut ones = Vec::new();
        for n in 0..3 {
            ones.push(api.start("one", json!({ "n": n })).await);
        }
        let two = api.start("two", json!({ "n": 0 })).await;
        for &id in ones.iter().chain([&two]) {
            assert_eq!(api.wait(id).await["state"], "succeeded", "{backend}");
        }
        let ids = |v: &Value| -> Vec<i64> {
            v["runs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["id"].as_i64())
                .collect()
        };
        let (status, all) = api
            .send(reqwest::Method::GET, "/v1/workflow-runs", None)
            .await;
        assert_eq!(status, 200, "{all}");
        assert_eq!(
            ids(&all),
            [two, ones[2], ones[1], ones[0]],
            "{backend}: newest first"
        );
        assert_eq!(all["runs"][0]["workflow"], "two");
        assert!(all["runs"][0]["nodes"].is_null(), "a list has no nodes");
        let (_, page) = api
            .send(
                reqwest::Method::GET,
                "/v1/workflow-runs?workflow=one&limit=2",
                None,
            )
            .await;
        assert_eq!(ids(&page), [ones[2], ones[1]], "{backend}");
        let cursor = page["next_cursor"]
            .as_str()
            .expect("a string cursor")
            .to_string();
        let (_, rest) = api
            .send(
                reqwest::Method::GET,
                &format!("/v1/workflow-runs?workflow=one&limit=2&cursor={cursor}"),
                None,
            )
            .await;
        assert_eq!(ids(&rest), [ones[0]], "{backend}");
        assert!(rest["next_cursor"].is_null(), "{rest}");
        let (_, running) = api
            .send(
                reqwest::Method::GET,
                "/v1/workflow-runs?state=running",
                None,
            )
            .await;
        assert_eq!(ids(&running), Vec::<i64>::new(), "{backend}");
        let (_, done) = api
            .send(
                reqwest::Method::GET,
                "/v1/workflow-runs?state=succeeded&workflow=two",
                None,
            )
            .await;
        assert_eq!(ids(&done), [two], "{backend}");
        for (query, says) in [
            ("state=finished", "invalid state"),
            ("limit=0", "invalid limit"),
            ("cursor=abc", "invalid cursor"),
        ] {
            let (status, v) = api
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/workflow-runs?{query}"),
                    None,
                )
                .await;
            assert_eq!(status, 400, "{query}: {v}");
            assert!(
                v["detail"].as_str().unwrap_or("").contains(says),
                "{query}: {v}"
            );
        }
        server.stop().await;
    }
}
