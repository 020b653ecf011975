//! The value grammar every verb shares, so that `--fuel 1e9`, `--memory 64MiB`,
//! `--timeout 5s` and `--input @file` mean the same in `run`, `job submit`, `schedule add` and
//! `workflow run`, and a bad value is refused before anything runs or is sent.

use std::io::Read;
use std::time::Duration;

use anyhow::Context;
use serde_json::{Value, json};
use wasmjobs_host::units::{parse_duration, parse_size};

/// Fuel: a whole number of instructions, `1000000`, `1_000_000` or `1e9`.
pub(super) fn fuel(text: &str) -> Result<u64, String> {
    let cleaned = text.replace('_', "");
    if let Ok(n) = cleaned.parse::<u64>() {
        return Ok(n);
    }
    match cleaned.parse::<f64>() {
        Ok(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 && f.fract() == 0.0 => {
            Ok(f as u64)
        }
        _ => Err(format!(
            "invalid fuel {text:?}: expected a whole number of instructions, e.g. 1000000 or 1e9"
        )),
    }
}

/// A size in bytes: `65536`, `64KiB`, `64MiB`, `1GB`.
pub(super) fn size(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// A duration: `250ms`, `5s`, `10m`.
pub(super) fn duration(text: &str) -> Result<Duration, String> {
    parse_duration(text).map_err(|e| e.to_string())
}

/// An input as given on the command line: literal text, `@path` for a file's bytes, `@-` for
/// standard input; nothing when not given.
pub(super) fn read_input(arg: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match arg {
        None => Ok(Vec::new()),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read the input from stdin")?;
            Ok(buf)
        }
        Some(text) => match text.strip_prefix('@') {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("cannot read the input file {path}"))
            }
            None => Ok(text.as_bytes().to_vec()),
        },
    }
}

/// Puts an input into a request body: as `input` when it is JSON, else as `input_base64`, so
/// that a job gets text and bytes alike; nothing when it is empty.
pub(super) fn put_input(body: &mut Value, input: &[u8]) {
    if input.is_empty() {
        return;
    }
    match serde_json::from_slice::<Value>(input) {
        Ok(v) => body["input"] = v,
        Err(_) => {
            use base64::Engine as _;
            body["input_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(input));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_alike_and_bad_ones_are_named() {
        assert_eq!(fuel("1e9"), Ok(1_000_000_000));
        assert_eq!(fuel("1_000"), Ok(1000));
        assert!(fuel("lots").unwrap_err().contains("lots"));
        assert!(fuel("1.5").is_err());
        assert_eq!(size("64MiB"), Ok(64 << 20));
        assert!(size("64 potatoes").unwrap_err().contains("potatoes"));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(duration("soon").unwrap_err().contains("soon"));
        let mut body = json!({});
        put_input(&mut body, br#"{"a": 1}"#);
        assert_eq!(body, json!({"input": {"a": 1}}));
        let mut body = json!({});
        put_input(&mut body, b"plain text");
        assert_eq!(body, json!({"input_base64": "cGxhaW4gdGV4dA=="}));
    }
}
