//! Live event streams (SSE): logs before the end, resume without loss.

use super::*;

#[tokio::test]
async fn a_running_jobs_logs_reach_its_event_stream_before_it_ends() {
    for (backend, store, _db) in test_stores("api_live_logs").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let (_, job) = submit(
            &server,
            json!({"module": "testjob", "input": {"mode": "logsleep", "lines": 3, "ms": 3000}}),
        )
        .await;
        let url = format!("{}/v1/jobs/{}/events", server.url, job["id"]);
        // queued, running, then the three lines, while the job sleeps for 3 s.
        let started = std::time::Instant::now();
        let head = read_sse(&url, None, Some(5)).await;
        let kinds: Vec<&str> = head.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(kinds, ["state", "state", "log", "log", "log"], "{backend}");
        assert_eq!(
            head[4].2["message"],
            json!("line 2 before the sleep"),
            "{backend}"
        );
        let (_, now) = call(
            server.app(),
            "GET",
            &format!("/v1/jobs/{}", job["id"]),
            Body::empty(),
            None,
        )
        .await;
        assert_eq!(
            now["state"],
            json!("running"),
            "{backend}: the logs came {:?} after the submit, only once the job had ended",
            started.elapsed()
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn events_stream_live_and_resume_without_loss_or_duplicates() {
    for (backend, store, _db) in test_stores("api_sse").await {
        let server = TestServer::start(store, ApiConfig::default(), 1).await;
        upload(&server, guests::TESTJOB, "testjob").await;
        let (_, job) = submit(
            &server,
            json!({"module": "testjob", "input": {"mode": "logflood", "lines": 30}}),
        )
        .await;
        let url = format!("{}/v1/jobs/{}/events", server.url, job["id"]);

        // The stream opens with the reconnect delay for EventSource clients.
        let raw = reqwest::get(&url)
            .await
            .expect("connect")
            .text()
            .await
            .expect("stream");
        assert!(raw.starts_with("retry: 2000\n\n"), "{backend}: {raw:.80}");
        let full = read_sse(&url, None, None).await;
        let kinds: Vec<&str> = full.iter().map(|(_, e, _)| e.as_str()).collect();
        assert_eq!(kinds.first(), Some(&"state"), "{backend}");
        assert_eq!(kinds[kinds.len() - 2..], ["output", "end"], "{backend}");
        assert_eq!(
            full.iter().filter(|(_, e, _)| e == "log").count(),
            60,
            "{backend}: 30 report + 30 stderr lines"
        );
        assert_eq!(
            full.last().map(|(_, _, d)| d["state"].clone()),
            Some(json!("succeeded"))
        );
        let ids: Vec<i64> = full
            .iter()
            .filter_map(|(id, _, _)| id.parse().ok())
            .collect();
        assert_eq!(
            ids,
            (1..=ids.len() as i64).collect::<Vec<_>>(),
            "{backend}: ids are the gapless history"
        );

        // Drop the connection after 5 events, resume from the last id seen.
        let head = read_sse(&url, None, Some(5)).await;
        let last = head.last().map(|(id, _, _)| id.clone()).expect("an event");
        let tail = read_sse(&url, Some(&last), None).await;
        let mut joined: Vec<String> = head
            .iter()
            .chain(tail.iter())
            .map(|(id, _, _)| id.clone())
            .filter(|i| !i.is_empty())
            .collect();
        let all: Vec<String> = full
            .iter()
            .map(|(id, _, _)| id.clone())
            .filter(|i| !i.is_empty())
            .collect();
        assert_eq!(joined, all, "{backend}: resume lost or repeated events");
        joined.dedup();
        assert_eq!(joined.len(), all.len());

        let resp = reqwest::get(format!("{}/v1/jobs/99999/events", server.url))
            .await
            .expect("get");
        assert_eq!(resp.status(), 404);
        let resp = reqwest::Client::new()
            .get(&url)
            .header("last-event-id", "banana")
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 400);
        server.stop().await;
    }
}
