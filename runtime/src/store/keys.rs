//! Concurrency keys: at most `concurrency_limit` jobs with one `concurrency_key` hold a place
//! at once, across every node. What both stores share: checking a key and a limit, and the
//! bookkeeping of a key's places ([`KeyCount`]); each store keeps the counts in a row per key
//! (`concurrency_keys`), locked by whoever admits or ends a job of the key, and keeps the jobs
//! that wait for a place out of its queue (SQLite: `jobs.waits_on_key`, out of the claim's
//! index; Postgres: in `key_waits` instead of `job_queue`).
//!
//! A job takes a place when it is admitted — at submission, or when it is put back in the
//! queue by hand — if its key has fewer admitted jobs than the job's limit and no job waits
//! for the key before it; it keeps the place until it ends, through its retries' waits, so a
//! key of limit 1 runs its jobs one at a time, in order. A job that finds no place waits,
//! holding no slot and standing in front of no other job; each end of an admitted job of the
//! key admits the first waiting job, by priority, then `run_at`, then age.

/// The longest concurrency key, in bytes.
pub const MAX_KEY_LEN: usize = 200;

/// The largest concurrency limit (a limit that large is no limit; it keeps the counts small).
pub const MAX_LIMIT: u32 = 1_000_000;

/// Checks a submission's concurrency key: 1 to [`MAX_KEY_LEN`] bytes, no control characters.
pub fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!(
            "concurrency_key must be 1 to {MAX_KEY_LEN} bytes long (it is {})",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("concurrency_key contains a control character".into());
    }
    Ok(())
}

/// Checks a submission's concurrency limit: 1 to [`MAX_LIMIT`].
pub fn check_limit(limit: u32) -> Result<(), String> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(format!(
            "concurrency_limit must be 1 to {MAX_LIMIT} (it is {limit}): the most jobs of the key that run at once"
        ));
    }
    Ok(())
}

/// A key's jobs that hold a place (`active`: admitted and not ended) and that wait for one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct KeyCount {
    pub active: i64,
    pub waiting: i64,
}

impl KeyCount {
    /// A job of limit `limit` comes to the key: admitted (`true`) when the key has a place for
    /// it and no job waits before it; else it waits.
    pub fn admit(&mut self, limit: u32) -> bool {
        if self.waiting == 0 && self.active < i64::from(limit) {
            self.active += 1;
            true
        } else {
            self.waiting += 1;
            false
        }
    }

    /// `ended` admitted jobs of the key ended: their places are free. Returns how many of the
    /// first waiting jobs may take one ([`KeyCount::promote`] each, in order).
    pub fn release(&mut self, ended: i64) -> i64 {
        self.active = (self.active - ended).max(0);
        ended.min(self.waiting)
    }

    /// The first waiting job, of limit `limit`, takes a place if the key has one for it
    /// (`true`); when it does not, neither do the jobs behind it.
    pub fn promote(&mut self, limit: i64) -> bool {
        if self.active < limit {
            self.active += 1;
            self.waiting = (self.waiting - 1).max(0);
            true
        } else {
            false
        }
    }

    /// A waiting job left without a place (cancelled, or its deadline passed).
    pub fn left_waiting(&mut self) {
        self.waiting = (self.waiting - 1).max(0);
    }

    /// Nothing holds or waits for the key: its row goes.
    pub fn is_empty(&self) -> bool {
        self.active == 0 && self.waiting == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_admits_up_to_its_limit_then_in_order() {
        let mut k = KeyCount::default();
        assert!(k.admit(2));
        assert!(k.admit(2));
        assert!(!k.admit(2));
        assert!(
            !k.admit(5),
            "a job behind a waiting one waits, whatever its limit"
        );
        assert_eq!(
            k,
            KeyCount {
                active: 2,
                waiting: 2
            }
        );
        assert_eq!(k.release(1), 1);
        assert!(k.promote(2));
        assert_eq!(
            k,
            KeyCount {
                active: 2,
                waiting: 1
            }
        );
        assert_eq!(k.release(2), 1, "two places free, one job waits");
        assert!(k.promote(5));
        assert_eq!(k.release(1), 0);
        assert!(k.is_empty());
    }

    #[test]
    fn bad_keys_and_limits_are_named() {
        assert!(check_key("customer-42").is_ok());
        assert!(check_key("").unwrap_err().contains("1 to 200"));
        assert!(check_key(&"k".repeat(201)).is_err());
        assert!(check_key("a\nb").unwrap_err().contains("control"));
        assert!(check_limit(1).is_ok());
        assert!(check_limit(0).unwrap_err().contains("concurrency_limit"));
        assert!(check_limit(MAX_LIMIT + 1).is_err());
    }
}
