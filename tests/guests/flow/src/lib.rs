//! A workflow step for the test suite: what it does depends only on its input, so a workflow
//! can steer every node through the data it passes along.
//!
//! - `{"n": k, …}` → the same object with `n` = k + 1, after sleeping `sleep_ms` if given;
//!   fails when k + 1 equals `fail_at`. A chain started on `{"n": 0}` ends on `{"n": length}`.
//! - a number x → 2x; a negative number fails (a `for_each` element that fails).
//! - an array → `{"count": len, "items": array}` (a fan-in).
//! - anything else → `{"got": input}` (a join of several upstreams, or no input at all).

use serde_json::{Value, json};

fn step(input: Value) -> Result<Value, String> {
    match input {
        Value::Object(mut m) if m.get("n").is_some_and(Value::is_i64) => {
            let n = m["n"].as_i64().unwrap_or(0) + 1;
            if m.get("fail_at").and_then(Value::as_i64) == Some(n) {
                return Err(format!("step {n} fails on purpose"));
            }
            if let Some(ms) = m.get("sleep_ms").and_then(Value::as_u64) {
                std::thread::sleep(std::time::Duration::from_millis(ms));
            }
            wasmjobs_guest::info!("step {n}");
            wasmjobs_guest::progress(1, 1);
            m.insert("n".into(), json!(n));
            Ok(Value::Object(m))
        }
        Value::Number(x) => match x.as_i64() {
            Some(x) if x < 0 => Err(format!("element {x} is negative")),
            Some(x) => Ok(json!(x * 2)),
            None => Ok(json!(x.as_f64().unwrap_or(0.0) * 2.0)),
        },
        Value::Array(items) => Ok(json!({ "count": items.len(), "items": items })),
        other => Ok(json!({ "got": other })),
    }
}

fn run(bytes: Vec<u8>) -> Result<Vec<u8>, String> {
    let input: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).map_err(|e| format!("input is not JSON: {e}"))?
    };
    Ok(step(input)?.to_string().into_bytes())
}

wasmjobs_guest::export_raw_job!(run);
