//! What the client verbs print for people (`--output table`, the default): tables with a
//! header row and aligned columns, names rather than digests where there are names, and times
//! as dates. `--output json` prints the server's JSON as it is.

use comfy_table::{ContentArrangement, Table, presets};
use serde_json::Value;

/// A table: a header row, then one row per item, columns aligned, no borders (as `kubectl get`
/// and `docker ps` print).
pub(super) fn table<const N: usize>(
    header: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> String {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header);
    for row in rows {
        t.add_row(row);
    }
    // The preset pads every cell by one space on each side; a line starts at the margin.
    t.lines().map(|l| l.trim().to_string() + "\n").collect()
}

/// A time in milliseconds since the epoch, as a UTC date and time (`2026-12-07 12:48:17`);
/// `-` when there is none.
pub(super) fn time(ms: &Value) -> String {
    ms.as_i64()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "-".to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        )
}

/// A module digest, shortened as git shortens hashes: `sha256:` and its first 12 digits.
pub(super) fn short_digest(digest: &str) -> String {
    match digest.strip_prefix("sha256:") {
        Some(hex) => format!("sha256:{}", hex.get(..12).unwrap_or(hex)),
        None => digest.to_string(),
    }
}

/// A module's names (from `GET /v1/modules`), joined: `wordfreq, wf`; `None` when it has none.
pub(super) fn module_names(module: &Value) -> Option<String> {
    let names: Vec<&str> = module["names"]
        .as_array()?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    (!names.is_empty()).then(|| names.join(", "))
}

/// A JSON string field, or `-`.
pub(super) fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_under_a_header() {
        let out = table(
            ["ID", "NAME"],
            [
                ["1".to_string(), "wordfreq".to_string()],
                ["10".to_string(), "x".to_string()],
            ],
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(
            lines[0].starts_with("ID") && lines[0].contains("NAME"),
            "{out}"
        );
        assert_eq!(lines[0].find("NAME"), lines[1].find("wordfreq"), "{out}");
        assert_eq!(time(&serde_json::json!(0)), "1970-01-01 00:00:00");
        assert_eq!(time(&Value::Null), "-");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
    }
}
