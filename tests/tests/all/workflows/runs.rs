//! Runs that pass data along: chains, diamonds, conditions, for_each.

use super::*;

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
