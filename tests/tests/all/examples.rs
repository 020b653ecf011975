//! The example jobs in `examples/`, built from source and run in the sandbox with the inputs in
//! `examples/data/`, each checked for the answer a user would expect.

use std::path::Path;

use serde_json::{Value, json};
use wasmjobs_host::{Limits, Outcome, RunRequest, Sandbox, SandboxConfig};
use wasmjobs_tests::{guest_bytes, guests};

async fn run(wasm: &str, input: Vec<u8>) -> Vec<u8> {
    let sandbox = Sandbox::new(&SandboxConfig {
        max_instances: 8,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let module = sandbox.load(&guest_bytes(wasm)).expect("example loads");
    let limits = Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    let r = sandbox
        .run(&module, RunRequest::new(input).limits(limits))
        .await;
    assert_eq!(r.outcome, Outcome::Succeeded, "{wasm}: {r:?}");
    r.output
}

fn data(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(guests::ROOT).join("examples/data").join(name)).expect("example data")
}

#[tokio::test]
async fn wordfreq_counts_words() {
    let out = run(guests::WORDFREQ, data("tale.json")).await;
    let v: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(v["words"], 85);
    assert_eq!(v["top"][0], json!({"word": "the", "count": 11}));
    assert_eq!(v["top"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn csvstats_summarises_columns() {
    let out = run(guests::CSVSTATS, data("weather.json")).await;
    let v: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(v["rows"], 8);
    let temp = &v["columns"][2];
    assert_eq!(temp["name"], "temp_c");
    assert_eq!(temp["numeric"], true);
    assert_eq!(
        (temp["min"].as_f64(), temp["max"].as_f64()),
        (Some(-3.4), Some(25.2))
    );
    assert!((temp["mean"].as_f64().unwrap_or_default() - 12.225).abs() < 1e-9);
    assert_eq!(
        v["columns"][1],
        json!({"name": "city", "count": 8, "numeric": false, "distinct": 3})
    );
}

#[tokio::test]
async fn thumbnail_shrinks_an_image_to_fit_128() {
    let out = run(guests::THUMBNAIL, data("gradient.png")).await;
    assert!(out.starts_with(b"\x89PNG\r\n\x1a\n"), "output is a PNG");
    // IHDR: width and height are the first two big-endian u32s after the chunk header.
    let width = u32::from_be_bytes([out[16], out[17], out[18], out[19]]);
    let height = u32::from_be_bytes([out[20], out[21], out[22], out[23]]);
    assert_eq!((width, height), (128, 80), "320x200 shrinks to 128x80");
}

#[tokio::test]
async fn markdown_renders_html() {
    let out = run(
        guests::MARKDOWN,
        b"# Jobs\n\n| a | b |\n|---|---|\n| 1 | ~~2~~ |\n".to_vec(),
    )
    .await;
    let html = String::from_utf8(out).expect("UTF-8");
    assert!(html.starts_with("<h1>Jobs</h1>"), "{html}");
    assert!(
        html.contains("<table>") && html.contains("<del>2</del>"),
        "{html}"
    );
}

#[tokio::test]
async fn linecount_is_a_plain_command() {
    let out = run(guests::LINECOUNT, b"a b\nc\n".to_vec()).await;
    let v: Value = serde_json::from_slice(&out).expect("JSON");
    assert_eq!(v, json!({"lines": 2, "words": 3, "bytes": 6}));
}
