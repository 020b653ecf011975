//! The example edge host (`examples/edge-host`), built runtime-only (no compiler) and run as a
//! real process over a real socket, serving artifacts precompiled by this test's own sandbox.

use std::path::Path;

use wasmjobs_host::{Sandbox, SandboxConfig};
use wasmjobs_tests::{EdgeHost, edge_host_bin, guest_bytes, guests};

const CONFIG: &str = r#"
[[route]]
path = "/render"
artifact = "markdown.cwasm"
content_type = "text/html; charset=utf-8"
max_input = "64KiB"
limits = { timeout_ms = "5s", memory_bytes = "32MiB", fuel = 2_000_000_000 }

[[route]]
path = "/thumbnail"
artifact = "thumbnail.cwasm"
content_type = "image/png"
limits = { timeout_ms = "10s", memory_bytes = "256MiB" }

# The misbehaving test job: its input's "mode" picks what it does.
[[route]]
path = "/job"
artifact = "testjob.cwasm"
content_type = "application/json"
max_input = "1KiB"
limits = { timeout_ms = "400ms", memory_bytes = "16MiB", fuel = 50_000_000_000, max_output_bytes = "4KiB" }

[[route]]
path = "/job-small-fuel"
artifact = "testjob.cwasm"
limits = { fuel = 5_000_000 }
"#;

/// Writes the artifacts the config names into `dir`, compiled by an engine with default
/// settings — what `wasmjobs compile` uses — and the config beside them.
fn prepare(dir: &Path, config: &str) -> std::path::PathBuf {
    let sandbox = Sandbox::new(&SandboxConfig {
        max_instances: 4,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    for (name, wasm) in [
        ("markdown", guests::MARKDOWN),
        ("thumbnail", guests::THUMBNAIL),
        ("testjob", guests::TESTJOB),
    ] {
        let artifact = sandbox.precompile(&guest_bytes(wasm)).expect("precompile");
        std::fs::write(dir.join(format!("{name}.cwasm")), artifact).expect("write artifact");
    }
    let path = dir.join("edge.toml");
    std::fs::write(&path, config).expect("write config");
    path
}

fn start() -> (tempfile::TempDir, EdgeHost) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = prepare(dir.path(), CONFIG);
    let host = EdgeHost::start(&edge_host_bin(), &config);
    (dir, host)
}

async fn post(url: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .body(body)
        .send()
        .await
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_host_serves_the_example_jobs_from_artifacts() {
    let (_dir, host) = start();

    let r = post(
        &format!("{}/render", host.url),
        "# Hello\n\n* one\n* ~~two~~\n",
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "text/html; charset=utf-8",
        "the route's content type"
    );
    assert_eq!(r.headers()["x-wasmjobs-outcome"], "succeeded");
    let fuel: u64 = r.headers()["x-wasmjobs-fuel"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number");
    assert!(fuel > 0, "fuel is reported");
    let html = r.text().await.expect("body");
    assert!(html.contains("<h1>Hello</h1>"), "{html}");
    assert!(html.contains("<del>two</del>"), "{html}");

    let png = std::fs::read(format!("{}/examples/data/gradient.png", guests::ROOT))
        .expect("examples/data/gradient.png");
    let r = post(&format!("{}/thumbnail", host.url), png).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    let thumb = r.bytes().await.expect("body");
    assert!(thumb.starts_with(b"\x89PNG"), "a PNG comes back");

    // What the host serves is listed with the digests of the artifacts.
    let health: serde_json::Value = reqwest::get(format!("{}/healthz", host.url))
        .await
        .expect("healthz")
        .json()
        .await
        .expect("json");
    let paths: Vec<&str> = health["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .filter_map(|r| r["path"].as_str())
        .collect();
    assert_eq!(paths, ["/render", "/thumbnail", "/job", "/job-small-fuel"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_host_maps_every_outcome_to_a_status() {
    let (_dir, host) = start();
    let job = format!("{}/job", host.url);
    let cases: [(&str, &str, u16, &str); 9] = [
        (
            "/job",
            r#"{"mode": "greet", "name": "edge"}"#,
            200,
            "succeeded",
        ),
        ("/job", r#"{"mode": "fail"}"#, 422, "failed"),
        ("/job", r#"{"mode": "panic"}"#, 500, "trapped"),
        ("/job", r#"{"mode": "recurse"}"#, 500, "trapped"),
        ("/job", r#"{"mode": "spin"}"#, 504, "timed_out"),
        (
            "/job",
            r#"{"mode": "sleep", "ms": 60000}"#,
            504,
            "timed_out",
        ),
        ("/job", r#"{"mode": "membomb"}"#, 507, "out_of_memory"),
        (
            "/job",
            r#"{"mode": "bigout", "size": 100000}"#,
            502,
            "output_too_large",
        ),
        ("/job-small-fuel", r#"{"mode": "spin"}"#, 429, "out_of_fuel"),
    ];
    for (path, input, status, outcome) in cases {
        let r = post(&format!("{}{path}", host.url), input).await;
        assert_eq!(r.status().as_u16(), status, "{input} on {path}");
        assert_eq!(r.headers()["x-wasmjobs-outcome"], outcome, "{input}");
        if status != 200 {
            let body: serde_json::Value = r.json().await.expect("a JSON error");
            assert_eq!(body["error"]["code"], outcome, "{input}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{input}: {body}"
            );
        } else {
            let body: serde_json::Value = r.json().await.expect("JSON output");
            assert_eq!(body["greeting"], "hello, edge");
        }
    }
    let r = post(&job, r#"{"mode": "recurse"}"#).await;
    let body: serde_json::Value = r.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("stack_overflow")),
        "the trap is named: {body}"
    );

    // Requests the host refuses before any job runs.
    let r = post(&job, vec![b' '; 2048]).await;
    assert_eq!(r.status(), 413, "over the route's max_input");
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "input_too_large");
    let r = post(&format!("{}/nowhere", host.url), "x").await;
    assert_eq!(r.status(), 404);
    let r = reqwest::get(&job).await.expect("get");
    assert_eq!(r.status(), 405, "routes take POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_host_keeps_serving_while_one_route_is_attacked() {
    let (_dir, mut host) = start();
    let client = reqwest::Client::new();
    let attacks = ["spin", "membomb", "recurse", "panic", "sleep"];
    let mut hostile = Vec::new();
    for round in 0..8 {
        for mode in attacks {
            let (client, url) = (client.clone(), format!("{}/job", host.url));
            hostile.push(tokio::spawn(async move {
                let body = format!(r#"{{"mode": "{mode}", "ms": 60000, "round": {round}}}"#);
                client.post(url).body(body).send().await.map(|r| r.status())
            }));
        }
    }
    // While 40 hostile requests are in flight, the other route answers every request.
    for i in 0..40 {
        let r = client
            .post(format!("{}/render", host.url))
            .body(format!("request *{i}*"))
            .send()
            .await
            .expect("render request");
        assert_eq!(r.status(), 200);
        let html = r.text().await.expect("body");
        assert!(html.contains(&format!("<em>{i}</em>")), "{html}");
    }
    for h in hostile {
        let status = h.await.expect("task").expect("hostile request answered");
        assert!(
            status.is_server_error() || status == 429,
            "every attack ends as an error status, got {status}"
        );
    }
    assert!(host.is_alive(), "the host survived");
    let r = client
        .post(format!("{}/job", host.url))
        .body(r#"{"mode": "greet", "name": "after"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(
        r.status(),
        200,
        "the attacked route serves good requests after"
    );
}

#[test]
fn edge_host_refuses_bad_configs_with_the_reason() {
    let bin = edge_host_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    prepare(dir.path(), CONFIG);
    std::fs::write(
        dir.path().join("markdown.wasm"),
        guest_bytes(guests::MARKDOWN),
    )
    .expect("write wasm");
    let aarch64 = Sandbox::new(&SandboxConfig {
        max_instances: 1,
        target: Some("aarch64-unknown-linux-gnu".into()),
        ..SandboxConfig::default()
    })
    .expect("a cross-compiling sandbox")
    .precompile(&guest_bytes(guests::MARKDOWN))
    .expect("cross-compile");
    std::fs::write(dir.path().join("aarch64.cwasm"), aarch64).expect("write");

    let route = |artifact: &str, extra: &str| {
        format!("[[route]]\npath = \"/r\"\nartifact = \"{artifact}\"\n{extra}\n")
    };
    let cases = [
        (route("missing.cwasm", ""), "missing.cwasm"),
        (route("markdown.wasm", ""), "wasmjobs compile"),
        (route("aarch64.cwasm", ""), "incompatible"),
        (route("edge.toml", ""), "not a precompiled"),
        (
            route("markdown.cwasm", "limits = { memory_bytes = \"lots\" }"),
            "lots",
        ),
        (route("markdown.cwasm", "colour = 1"), "colour"),
        (
            route("markdown.cwasm", "max_input = \"1 parsec\""),
            "max_input",
        ),
        (String::new(), "no [[route]]"),
        (
            format!(
                "{}{}",
                route("markdown.cwasm", ""),
                route("markdown.cwasm", "")
            ),
            "twice",
        ),
    ];
    for (config, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, &config).expect("write config");
        let out = std::process::Command::new(&bin)
            .arg("--config")
            .arg(&path)
            .args(["--listen", "127.0.0.1:0"])
            .output()
            .expect("run the edge host");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config}\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{config}: expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// `tls_cert` and `tls_key` in the config (relative to it): the host serves HTTPS, which a
/// client trusting the CA reaches and one that does not is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_host_serves_https_with_the_configured_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    wasmjobs_tests::make_certificates(dir.path());
    let config = prepare(
        dir.path(),
        &format!("tls_cert = \"server.pem\"\ntls_key = \"server.key\"\n{CONFIG}"),
    );
    let host = EdgeHost::start(&edge_host_bin(), &config);
    assert!(host.url.starts_with("https://"), "{}", host.url);
    let ca =
        reqwest::Certificate::from_pem(&std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"))
            .expect("CA");
    let trusting = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .expect("client");
    let r = trusting
        .post(format!("{}/render", host.url))
        .body("# Over TLS")
        .send()
        .await
        .expect("request over TLS");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("<h1>Over TLS</h1>"));
    let refused = reqwest::Client::new()
        .get(format!("{}/healthz", host.url))
        .send()
        .await;
    assert!(refused.is_err(), "a client without the CA was served");
}
