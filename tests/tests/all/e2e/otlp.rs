//! OpenTelemetry export: the real binary sends its spans over OTLP/HTTP to a stub collector
//! that decodes them as a collector would.

use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use prost::Message as _;

use super::*;

/// A span as received: its name and its attributes as text.
#[derive(Debug, Clone)]
struct Received {
    name: String,
    attributes: HashMap<String, String>,
    service: Option<String>,
}

fn text(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

/// Listens on a free loopback port for `POST /v1/traces` (protobuf) and keeps every span.
async fn stub_collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let keep = got.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let keep = keep.clone();
            async move {
                let req = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
                let mut spans = keep.lock().expect("lock");
                for rs in req.resource_spans {
                    let service = rs.resource.as_ref().and_then(|r| {
                        r.attributes
                            .iter()
                            .find(|a| a.key == "service.name")
                            .map(|a| text(&a.value))
                    });
                    for ss in rs.scope_spans {
                        for s in ss.spans {
                            spans.push(Received {
                                name: s.name,
                                attributes: s
                                    .attributes
                                    .iter()
                                    .map(|a| (a.key.clone(), text(&a.value)))
                                    .collect(),
                                service: service.clone(),
                            });
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set (and `WASMJOBS_LOG` left at its default), the
/// server's request and attempt spans reach the collector with their attributes, under the
/// service name `wasmjobs`; what the batch still held goes out at SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_collector_with_their_attributes() {
    let (collector, got) = stub_collector().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("o.db").display().to_string();
    let mut server = Process::serve_env(
        dir.path(),
        &db,
        &["--workers", "1"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector),
            // Longer than the test: the spans go out at shutdown.
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    let http = reqwest::Client::new();
    upload(&http, &server.url, guests::TESTJOB, "testjob").await;
    let ids = submit_all(
        &http,
        &server.url,
        vec![json!({"module": "testjob", "input": {"mode": "fail"}, "retry": {"max_attempts": 1}})],
    )
    .await;
    wait_all_final(&http, &server.url, &ids, Duration::from_secs(30)).await;
    assert!(
        got.lock().expect("lock").is_empty(),
        "nothing is sent before the batch is due"
    );
    assert!(
        server.terminate(Duration::from_secs(20)).is_some(),
        "the server did not stop on SIGTERM"
    );
    let spans = got.lock().expect("lock").clone();
    let job = ids[0].to_string();
    assert!(
        spans
            .iter()
            .all(|s| s.service.as_deref() == Some("wasmjobs")),
        "{spans:#?}"
    );
    assert!(
        spans.iter().any(|s| s.name == "http_request"
            && s.attributes.get("method").map(String::as_str) == Some("POST")
            && s.attributes.get("route").map(String::as_str) == Some("/v1/jobs")
            && s.attributes.get("status").map(String::as_str) == Some("201")
            && s.attributes.contains_key("latency_ms")),
        "no request span: {spans:#?}"
    );
    assert!(
        spans.iter().any(|s| s.name == "attempt"
            && s.attributes.get("job") == Some(&job)
            && s.attributes.get("attempt").map(String::as_str) == Some("1")
            && s.attributes.get("outcome").map(String::as_str) == Some("failed")
            && s.attributes
                .get("fuel")
                .and_then(|f| f.parse::<u64>().ok())
                .is_some_and(|f| f > 0)
            && s.attributes
                .get("module")
                .is_some_and(|m| m.starts_with("sha256:"))),
        "no attempt span: {spans:#?}"
    );
}
