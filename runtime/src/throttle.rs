//! Logging that a flood cannot turn into a flood of log lines: the same message is logged once
//! per [`INTERVAL`]; the next time it is logged after that, it says how many times it was
//! held back.
//!
//! ```
//! wasmjobs::throttle::error("cannot write: disk full");
//! wasmjobs::throttle::error("cannot write: disk full"); // held back, counted
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// How often one message is logged at most.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// Most distinct messages remembered; past it the oldest are forgotten (and may log again).
const REMEMBERED: usize = 1024;

#[derive(Default)]
struct Seen {
    /// Message → when it was last logged, and how many times it was held back since.
    messages: HashMap<String, (Instant, u64)>,
}

fn seen() -> &'static Mutex<Seen> {
    static SEEN: OnceLock<Mutex<Seen>> = OnceLock::new();
    SEEN.get_or_init(Mutex::default)
}

/// Whether to log `message` now, and how many times it was held back before.
fn admit(message: &str, now: Instant) -> Option<u64> {
    let mut seen = seen().lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((last, held)) = seen.messages.get_mut(message) {
        if now.duration_since(*last) < INTERVAL {
            *held += 1;
            return None;
        }
        let before = *held;
        *last = now;
        *held = 0;
        return Some(before);
    }
    if seen.messages.len() >= REMEMBERED {
        let cutoff = now.checked_sub(INTERVAL).unwrap_or(now);
        seen.messages.retain(|_, (last, _)| *last > cutoff);
        if seen.messages.len() >= REMEMBERED {
            seen.messages.clear();
        }
    }
    seen.messages.insert(message.to_string(), (now, 0));
    Some(0)
}

/// Logs `message` at error level, at most once per [`INTERVAL`].
pub fn error(message: impl AsRef<str>) {
    let message = message.as_ref();
    match admit(message, Instant::now()) {
        Some(0) => tracing::error!("{message}"),
        Some(held) => tracing::error!("{message} (and {held} more times since it was last logged)"),
        None => {}
    }
}

/// Logs `message` at warn level, at most once per [`INTERVAL`].
pub fn warn(message: impl AsRef<str>) {
    let message = message.as_ref();
    match admit(message, Instant::now()) {
        Some(0) => tracing::warn!("{message}"),
        Some(held) => tracing::warn!("{message} (and {held} more times since it was last logged)"),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_message_is_logged_once_per_interval_with_a_count() {
        let t0 = Instant::now();
        let m = "throttle test: the same failure";
        assert_eq!(admit(m, t0), Some(0));
        for _ in 0..500 {
            assert_eq!(admit(m, t0 + Duration::from_secs(1)), None);
        }
        assert_eq!(admit("throttle test: another", t0), Some(0));
        assert_eq!(admit(m, t0 + INTERVAL + Duration::from_secs(1)), Some(500));
        assert_eq!(admit(m, t0 + INTERVAL + Duration::from_secs(2)), None);
    }
}
