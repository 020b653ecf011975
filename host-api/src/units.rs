//! Human-readable sizes (`64MiB`, `512 kB`, `1048576`) and durations (`5s`, `250ms`, `1m 30s`),
//! accepted everywhere a limit is given. Errors name the value that could not be read.

use std::time::Duration;

/// A size or duration that could not be parsed, with the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error(
        "invalid size {value:?}: expected a number of bytes with an optional unit, e.g. 64MiB, 512KB, 1048576"
    )]
    Size { value: String },
    #[error("invalid duration {value:?}: expected a number with a unit, e.g. 5s, 250ms, 1m30s")]
    Duration { value: String },
}

/// Parses a byte size: a plain number of bytes, or a number with a unit (`KB`/`MB`/`GB` are
/// powers of 1000, `KiB`/`MiB`/`GiB` powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let trimmed = text.trim();
    if let Ok(n) = trimmed.parse::<u64>() {
        return Ok(n);
    }
    if trimmed.starts_with('-') || trimmed.is_empty() {
        return Err(UnitError::Size {
            value: text.to_string(),
        });
    }
    trimmed
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| UnitError::Size {
            value: text.to_string(),
        })
}

/// Parses a duration such as `5s`, `250ms`, `2m`, `1h 30m`. A bare number is refused: its unit
/// would be a guess.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    humantime::parse_duration(text.trim()).map_err(|_| UnitError::Duration {
        value: text.to_string(),
    })
}

/// Formats a byte count for people: `64 MiB`.
pub fn format_size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("64 MiB"), Ok(64 * 1024 * 1024));
        assert_eq!(parse_size("1KB"), Ok(1000));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert!(matches!(parse_size("lots"), Err(UnitError::Size { .. })));
        assert!(matches!(parse_size("-5MiB"), Err(UnitError::Size { .. })));
        assert!(matches!(parse_size(""), Err(UnitError::Size { .. })));
        let msg = parse_size("12 parsecs").unwrap_err().to_string();
        assert!(msg.contains("12 parsecs"), "{msg}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5").is_err());
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .to_string()
                .contains("soon")
        );
    }
}
