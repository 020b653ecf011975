//! Named queues: their settings (weight, limits, pause), rates and token buckets, and the
//! weighted fair share by which a claim takes jobs from the queues that have work. Both
//! drivers use this Rust; what they keep in SQL is only how they find and take the jobs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The queue of a job whose submission names none.
pub const DEFAULT_QUEUE: &str = "default";

/// The longest queue name.
pub const MAX_QUEUE_NAME: usize = 64;

/// Whether `name` may name a queue: 1 to 64 ASCII letters, digits, `_`, `-`, `.` (it appears
/// in URLs, metrics labels and config tables as it is).
pub fn check_queue_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_QUEUE_NAME {
        return Err(format!(
            "queue name {name:?} must be 1 to {MAX_QUEUE_NAME} characters long"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!(
            "queue name {name:?} has {c:?}: use ASCII letters, digits, '_', '-' and '.'"
        ));
    }
    Ok(())
}

/// A rate limit: at most `count` starts per `per_ms` milliseconds, across every node, with
/// bursts of up to [`Rate::burst`] starts. Written `"100/s"`, `"5000/min"`, `"10/h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per_ms: u64,
}

impl Rate {
    /// Starts allowed per millisecond.
    pub fn per_millisecond(self) -> f64 {
        f64::from(self.count) / self.per_ms as f64
    }

    /// How many starts a full bucket allows at once: one second's worth, at least one.
    pub fn burst(self) -> f64 {
        (self.per_millisecond() * 1000.0).ceil().max(1.0)
    }

    /// When a bucket that holds `left` tokens at `now` next holds a whole one.
    pub fn next_token_at(self, left: f64, now: i64) -> i64 {
        if left >= 1.0 {
            return now;
        }
        now + ((1.0 - left) / self.per_millisecond()).ceil() as i64
    }

    /// The tokens in a bucket that held `tokens` at `at`, refilled up to `now`.
    pub fn refill(self, tokens: f64, at: i64, now: i64) -> f64 {
        let elapsed = now.saturating_sub(at).max(0) as f64;
        (tokens + elapsed * self.per_millisecond()).min(self.burst())
    }
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Rate, String> {
        let bad = |why: &str| {
            format!("rate {s:?} {why}: write a count per unit, such as \"100/s\" or \"5000/min\"")
        };
        let (count, unit) = s.split_once('/').ok_or_else(|| bad("has no '/'"))?;
        let count: u32 = count
            .trim()
            .parse()
            .map_err(|_| bad("does not start with a whole number"))?;
        if count == 0 {
            return Err(bad("allows nothing (pause the queue instead)"));
        }
        let per_ms = match unit.trim() {
            "s" | "sec" | "second" => 1_000,
            "m" | "min" | "minute" => 60_000,
            "h" | "hour" => 3_600_000,
            _ => return Err(bad("has an unknown unit (use s, min or h)")),
        };
        Ok(Rate { count, per_ms })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_ms {
            1_000 => "s",
            60_000 => "min",
            3_600_000 => "h",
            ms => return write!(f, "{}/{ms}ms", self.count),
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Rate, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A queue's settings. A queue no process declared and nobody paused has the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueSettings {
    pub name: String,
    /// Its share of a node's slots among the queues with work: `weight / Σ weights`.
    pub weight: u32,
    /// At most this many of its jobs run at once, across every node.
    pub max_running: Option<u32>,
    /// At most this many of its jobs start per unit of time, across every node.
    pub rate: Option<Rate>,
    /// Nothing is claimed from it; submissions are still taken.
    pub paused: bool,
}

impl QueueSettings {
    pub fn defaults(name: &str) -> QueueSettings {
        QueueSettings {
            name: name.to_owned(),
            weight: 1,
            max_running: None,
            rate: None,
            paused: false,
        }
    }

    /// Whether claims from it must look at the store's running jobs or its token bucket.
    pub fn is_limited(&self) -> bool {
        self.max_running.is_some() || self.rate.is_some()
    }

    /// How many jobs a claim may take from this queue now, at most `want`: none when paused,
    /// what `max_running` leaves beside its `running` jobs, and the whole tokens of its bucket
    /// (`tokens`, already refilled to now).
    pub fn room(&self, want: u32, running: u64, tokens: Option<f64>) -> u32 {
        if self.paused {
            return 0;
        }
        let mut room = u64::from(want);
        if let Some(max) = self.max_running {
            room = room.min(u64::from(max).saturating_sub(running));
        }
        if let (Some(_), Some(tokens)) = (self.rate, tokens) {
            room = room.min(tokens.max(0.0).floor() as u64);
        }
        u32::try_from(room).unwrap_or(want)
    }
}

/// When a claim should look again for the jobs a rate held back: the earliest time a
/// rate-limited queue that used all its room (so more of its jobs may wait) has its next
/// token. Each claim sets it; the dispatcher wakes by then ([`super::QueueStore::next_scheduled_at`]).
#[derive(Debug, Default)]
pub struct NextToken(std::sync::atomic::AtomicI64);

impl NextToken {
    pub fn set(&self, at: Option<i64>) {
        self.0
            .store(at.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
    }

    /// The earlier of `next` and the next token.
    pub fn earliest(&self, next: Option<i64>) -> Option<i64> {
        let token = self.0.load(std::sync::atomic::Ordering::Relaxed);
        match (next, token) {
            (next, 0) => next,
            (Some(n), t) => Some(n.min(t)),
            (None, t) => Some(t),
        }
    }
}

/// A claim took `taken` of rate-limited queue `settings`'s `room`, its bucket holding `tokens`
/// (refilled to `now`): the tokens left, and when the queue should be looked at again for
/// [`NextToken`] — when it used all its room (so more of its jobs may wait) and has less than
/// a token left.
pub fn draw(
    settings: &QueueSettings,
    tokens: f64,
    room: u32,
    taken: usize,
    now: i64,
) -> (f64, Option<i64>) {
    let left = tokens - taken as f64;
    let again = settings
        .rate
        .filter(|_| !settings.paused && taken >= room as usize && left < 1.0)
        .map(|rate| rate.next_token_at(left, now));
    (left, again)
}

/// The earlier of two times, either of which may be missing.
pub fn earlier(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A queue as `GET /v1/queues` shows it: its settings and its jobs that have not ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    #[serde(flatten)]
    pub settings: QueueSettings,
    pub queued: u64,
    pub scheduled: u64,
    pub running: u64,
}

impl QueueInfo {
    /// Queue `settings`, with no jobs counted yet.
    pub fn new(settings: QueueSettings) -> QueueInfo {
        QueueInfo {
            settings,
            queued: 0,
            scheduled: 0,
            running: 0,
        }
    }
}

/// What a node that claims holds, for its claim's shares and caps.
#[derive(Debug, Clone, Default)]
pub struct Holding {
    /// How many jobs of each queue it holds.
    pub held: Vec<(String, u32)>,
    /// The most it may take of each queue it names, now (its slots, plus what it claims
    /// ahead of a queue whose attempts are short, less what it holds of it).
    pub room: Vec<(String, u32)>,
    /// The most it may take of a queue `room` does not name; no cap if `None`.
    pub other_room: Option<u32>,
}

impl Holding {
    pub fn held_of(&self, queue: &str) -> u64 {
        self.held
            .iter()
            .find(|(q, _)| q == queue)
            .map_or(0, |(_, n)| u64::from(*n))
    }

    /// The most a claim of up to `limit` may take of `queue` for this node.
    pub fn room_of(&self, queue: &str, limit: u32) -> u32 {
        let room = match self.room.iter().find(|(q, _)| q == queue) {
            Some((_, n)) => Some(*n),
            None => self.other_room,
        };
        room.map_or(limit, |r| r.min(limit))
    }
}

/// Weighted fair share: picks up to `want` jobs from the queues' candidates (each queue's in
/// its claim order), one at a time from the queue whose `(held + taken + 1) / weight` is least
/// (ties by name). `held` is what the claiming node holds of that queue already. A queue with
/// no candidates takes no share: the others use it.
///
/// Returns the picked ids with the index of their queue in `queues`, in the order picked.
/// Postgres computes the same order in its claim statement (`(held + row_number) / weight`).
pub fn fair_pick(queues: &[FairQueue<'_>], want: usize) -> Vec<(usize, i64)> {
    let mut taken = vec![0usize; queues.len()];
    let mut picked = Vec::with_capacity(want);
    while picked.len() < want {
        let next = queues
            .iter()
            .enumerate()
            .filter(|(i, q)| taken[*i] < q.candidates.len())
            .min_by(|(i, a), (j, b)| {
                let va = (a.held + taken[*i] as u64 + 1) as f64 / f64::from(a.weight.max(1));
                let vb = (b.held + taken[*j] as u64 + 1) as f64 / f64::from(b.weight.max(1));
                va.total_cmp(&vb).then_with(|| a.name.cmp(b.name))
            })
            .map(|(i, _)| i);
        let Some(i) = next else { break };
        picked.push((i, queues[i].candidates[taken[i]]));
        taken[i] += 1;
    }
    picked
}

/// One queue's part in [`fair_pick`].
pub struct FairQueue<'a> {
    pub name: &'a str,
    pub weight: u32,
    pub held: u64,
    /// Job ids in claim order.
    pub candidates: Vec<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print() {
        let r: Rate = "50/s".parse().unwrap();
        assert_eq!(
            r,
            Rate {
                count: 50,
                per_ms: 1000
            }
        );
        assert_eq!(r.to_string(), "50/s");
        assert_eq!("5000/min".parse::<Rate>().unwrap().burst(), 84.0);
        assert_eq!("1/h".parse::<Rate>().unwrap().burst(), 1.0);
        for bad in ["fast", "0/s", "10/fortnight", "/s", "-1/s"] {
            let e = bad.parse::<Rate>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn a_bucket_refills_at_the_rate_up_to_a_burst() {
        let r: Rate = "10/s".parse().unwrap();
        assert_eq!(r.refill(0.0, 0, 500), 5.0);
        assert_eq!(r.refill(0.0, 0, 60_000), 10.0);
        assert_eq!(r.refill(3.0, 1000, 900), 3.0);
        assert_eq!(r.next_token_at(0.5, 1000), 1050);
        let mut s = QueueSettings::defaults("q");
        s.rate = Some(r);
        // Used all its room and has less than a token left: look again at the next one.
        assert_eq!(draw(&s, 2.5, 2, 2, 1000), (0.5, Some(1050)));
        // Took less than its room: it has no more jobs waiting.
        assert_eq!(draw(&s, 2.5, 2, 1, 1000), (1.5, None));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_queue_name("bulk-2.eu_west").is_ok());
        for bad in ["", "a b", "ü", &"x".repeat(65)] {
            assert!(check_queue_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fair_pick_shares_by_weight_and_gives_idle_shares_away() {
        let q = |name, weight, held, n: i64, base: i64| FairQueue {
            name,
            weight,
            held,
            candidates: (base..base + n).collect(),
        };
        // Equal weights, one already held of `bulk`: `default` comes first.
        let ids = |p: Vec<(usize, i64)>| p.into_iter().map(|(_, id)| id).collect::<Vec<_>>();
        let picked = fair_pick(&[q("bulk", 1, 1, 10, 100), q("default", 1, 0, 10, 200)], 3);
        assert_eq!(ids(picked), [200, 100, 201]);
        // Weight 3 to 1.
        let picked = fair_pick(&[q("a", 3, 0, 10, 100), q("b", 1, 0, 10, 200)], 8);
        assert_eq!(picked.iter().filter(|(q, _)| *q == 1).count(), 2);
        // A queue with little work: the rest goes to the other.
        let picked = fair_pick(&[q("a", 1, 0, 1, 100), q("b", 1, 0, 10, 200)], 5);
        assert_eq!(ids(picked), [100, 200, 201, 202, 203]);
    }

    #[test]
    fn room_counts_pause_running_and_tokens() {
        let mut s = QueueSettings::defaults("q");
        assert_eq!(s.room(8, 100, None), 8);
        s.max_running = Some(3);
        assert_eq!(s.room(8, 1, None), 2);
        assert_eq!(s.room(8, 5, None), 0);
        s.rate = Some("10/s".parse().unwrap());
        assert_eq!(s.room(8, 0, Some(1.7)), 1);
        s.paused = true;
        assert_eq!(s.room(8, 0, Some(10.0)), 0);
    }
}
