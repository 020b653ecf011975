//! A failed run retried from where it failed: succeeded nodes keep their jobs, the failed node
//! and those skipped behind it run again (the failed one on a new input, when given), and of a
//! `for_each` node only the elements that did not succeed.

use super::*;

async fn post(api: &Api, path: &str) -> (u16, Value) {
    api.send(reqwest::Method::POST, path, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_is_retried_from_where_it_failed() {
    for (backend, store, _db) in test_stores("wf_retry").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;

        // A chain that runs past its timeout: the first node succeeded, the second is stopped,
        // the run fails. A retry counts the timeout from the retry: the second node alone fits.
        let mut def = chain("retried", 2);
        def["timeout"] = json!("2s");
        api.define(def).await;
        let id = api
            .start("retried", json!({ "n": 0, "sleep_ms": 1200 }))
            .await;
        let failed = api.wait(id).await;
        assert_eq!(failed["state"], "failed", "{backend}: {failed}");
        // The stopped node's job was cut by the run's deadline (its timeout) or cancelled.
        assert_eq!(
            node(&failed, "s0")["state"],
            "succeeded",
            "{backend}: {failed}"
        );
        assert_ne!(
            node(&failed, "s1")["state"],
            "succeeded",
            "{backend}: {failed}"
        );
        let middle = node(&failed, "s1")["job"].as_i64().expect("s1 ran");
        let first = node(&failed, "s0")["job"].clone();

        let (status, v) = post(&api, &format!("/v1/workflow-runs/{id}/retry")).await;
        assert_eq!(status, 202, "{backend}: {v}");
        assert_eq!(v["state"], "running", "{backend}: {v}");
        let run = api.wait(id).await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        assert_eq!(run["output"]["n"], 2, "{backend}: {run}");
        assert_eq!(node(&run, "s0")["job"], first, "{backend}: s0 ran again");
        assert_ne!(node(&run, "s1")["job"].as_i64(), Some(middle), "{backend}");
        assert_eq!(run["error"], Value::Null, "{backend}");
        // The run's events say it was retried, and which nodes ran again.
        let events = run_events(&api, id).await;
        let retried = events
            .iter()
            .find(|e| e["reason"] == "retried")
            .unwrap_or_else(|| panic!("{backend}: no retry event in {events:?}"));
        assert_eq!(retried["nodes"], json!(["s1"]), "{backend}");

        // Only a failed or cancelled run can be retried.
        let (status, v) = post(&api, &format!("/v1/workflow-runs/{id}/retry")).await;
        assert_eq!(status, 409, "{backend}: {v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("succeeded"),
            "{v}"
        );
        let (status, _) = post(&api, "/v1/workflow-runs/999999/retry").await;
        assert_eq!(status, 404, "{backend}");

        // A for_each node cut by the run's timeout: of its elements, only those that did not
        // succeed run again.
        api.define(json!({ "name": "fanned", "timeout": "2s", "nodes": [
            { "name": "each", "module": "flow", "for_each": { "items": "/items", "concurrency": 1 } },
        ]}))
        .await;
        let item = json!({ "n": 0, "sleep_ms": 800 });
        let id = api
            .start("fanned", json!({ "items": [item, item, item] }))
            .await;
        let failed = api.wait(id).await;
        assert_eq!(failed["state"], "failed", "{backend}: {failed}");
        let before = node(&failed, "each")["items"]["elements"].clone();
        let done = |e: &Value| e["state"] == "succeeded";
        let kept: Vec<usize> = (0..3).filter(|&i| done(&before[i])).collect();
        assert!(!kept.is_empty() && kept.len() < 3, "{backend}: {before}");
        let (status, v) = post(&api, &format!("/v1/workflow-runs/{id}/retry")).await;
        assert_eq!(status, 202, "{backend}: {v}");
        let run = api.wait(id).await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        let after = node(&run, "each")["items"]["elements"].clone();
        for i in 0..3 {
            if kept.contains(&i) {
                assert_eq!(
                    after[i]["job"], before[i]["job"],
                    "{backend}: element {i} ran again"
                );
            } else {
                assert_ne!(
                    after[i]["job"], before[i]["job"],
                    "{backend}: element {i} did not"
                );
            }
        }
        let expected = json!({ "n": 1, "sleep_ms": 800 });
        assert_eq!(
            run["output"],
            json!([expected, expected, expected]),
            "{backend}"
        );
        server.stop().await;
    }
}

/// A node that failed on its input runs again on a new one given with the retry; a new input
/// for a node that is not run again, or for no node of the workflow, is refused and changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gives_the_failed_node_a_new_input() {
    for (backend, store, _db) in test_stores("wf_retry_input").await {
        let server = TestServer::start(store, ApiConfig::default(), 2).await;
        let api = Api::new(&server).await;
        api.define(chain("fixable", 3)).await;
        // s1 fails on what s0 hands it ({"n": 1, "fail_at": 2}).
        let id = api.start("fixable", json!({ "n": 0, "fail_at": 2 })).await;
        let failed = api.wait(id).await;
        assert_eq!(failed["state"], "failed", "{backend}: {failed}");
        assert_eq!(
            node(&failed, "s1")["state"],
            "failed",
            "{backend}: {failed}"
        );
        let path = format!("/v1/workflow-runs/{id}/retry");
        for (inputs, status, says) in [
            (
                json!({ "s0": { "n": 5 } }),
                409,
                "not run again from its start",
            ),
            (json!({ "nope": { "n": 5 } }), 422, "no node \"nope\""),
        ] {
            let (got, v) = api
                .send(
                    reqwest::Method::POST,
                    &path,
                    Some(json!({ "inputs": inputs })),
                )
                .await;
            assert_eq!(got, status, "{backend}: {inputs} -> {v}");
            assert!(
                v["detail"].as_str().is_some_and(|d| d.contains(says)),
                "{backend}: {v}"
            );
            let (_, still) = api
                .send(
                    reqwest::Method::GET,
                    &format!("/v1/workflow-runs/{id}"),
                    None,
                )
                .await;
            assert_eq!(
                still["state"], "failed",
                "{backend}: a refused retry changed the run"
            );
        }
        let (status, v) = api
            .send(
                reqwest::Method::POST,
                &path,
                Some(json!({ "inputs": { "s1": { "n": 1 } } })),
            )
            .await;
        assert_eq!(status, 202, "{backend}: {v}");
        let run = api.wait(id).await;
        assert_eq!(run["state"], "succeeded", "{backend}: {run}");
        // s1 ran on {"n": 1} (no fail_at), s2 on s1's output.
        assert_eq!(run["output"], json!({ "n": 3 }), "{backend}: {run}");
        let events = run_events(&api, id).await;
        let retried = events
            .iter()
            .find(|e| e["reason"] == "retried")
            .unwrap_or_else(|| panic!("{backend}: no retry event in {events:?}"));
        let mut again: Vec<&str> = retried["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        again.sort_unstable();
        assert_eq!(
            (again, &retried["new_input"]),
            (vec!["s1", "s2"], &json!(["s1"])),
            "{backend}: {retried}"
        );
        server.stop().await;
    }
}

async fn run_events(api: &Api, id: i64) -> Vec<Value> {
    let r = api
        .http
        .get(format!("{}/v1/workflow-runs/{id}/events", api.url))
        .send()
        .await
        .expect("events");
    let text = r.text().await.expect("body");
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}
