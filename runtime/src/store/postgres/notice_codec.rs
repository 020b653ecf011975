//! How notices travel between nodes as Postgres NOTIFY payloads: each notice is a short token
//! (`a` jobs available, `<id>` events of a job, `e<id>` a job ended, `r<id>` a run's events,
//! `w<id>` a run to step), tokens are joined with commas in payloads of at most
//! [`PER_PAYLOAD`] notices (NOTIFY takes 8,000 bytes at most), and each payload starts with the
//! sending store's origin (`@` and 16 hex digits) so that a store skips its own echo.
//!
//! ```text
//! @00000000deadbeef,a,17,e17,r3
//! ```

use crate::store::Notice;

/// Most notices in one payload: 300 tokens of at most 21 bytes stay far below NOTIFY's limit.
pub(super) const PER_PAYLOAD: usize = 300;

fn token(n: Notice) -> String {
    match n {
        Notice::JobsAvailable => "a".to_string(),
        Notice::Events(id) => id.to_string(),
        Notice::Run(id) => format!("r{id}"),
        Notice::RunRequest(id) => format!("w{id}"),
        Notice::Ended(id) => format!("e{id}"),
    }
}

/// The payloads that carry `notices` from the store of origin `origin`.
pub(super) fn encode(origin: &str, notices: impl IntoIterator<Item = Notice>) -> Vec<String> {
    let tokens: Vec<String> = notices.into_iter().map(token).collect();
    tokens
        .chunks(PER_PAYLOAD)
        .map(|chunk| format!("{origin},{}", chunk.join(",")))
        .collect()
}

/// The notices of a payload, unless it came from `own` (this store's echo). Unknown tokens
/// are skipped: a newer node may send notices this one does not know.
pub(super) fn decode(payload: &str, own: &str) -> Vec<Notice> {
    let mut parts = payload.split(',');
    if payload.starts_with('@') && parts.next() == Some(own) {
        return Vec::new();
    }
    parts
        .filter_map(|part| match part {
            "a" => Some(Notice::JobsAvailable),
            run if run.starts_with('r') => run[1..].parse().ok().map(Notice::Run),
            run if run.starts_with('w') => run[1..].parse().ok().map(Notice::RunRequest),
            ended if ended.starts_with('e') => ended[1..].parse().ok().map(Notice::Ended),
            id => id.parse().ok().map(Notice::Events),
        })
        .collect()
}

/// A fresh origin for a store.
pub(super) fn origin() -> String {
    format!("@{:016x}", fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_round_trip_and_a_store_skips_its_own_echo() {
        let notices = vec![
            Notice::JobsAvailable,
            Notice::Events(17),
            Notice::Ended(17),
            Notice::Run(3),
            Notice::RunRequest(i64::MAX),
        ];
        let payloads = encode("@00000000deadbeef", notices.clone());
        assert_eq!(
            payloads,
            ["@00000000deadbeef,a,17,e17,r3,w9223372036854775807"]
        );
        let heard: Vec<Notice> = payloads
            .iter()
            .flat_map(|p| decode(p, "@0000000000000001"))
            .collect();
        assert_eq!(heard, notices);
        assert!(
            decode(&payloads[0], "@00000000deadbeef").is_empty(),
            "own echo"
        );
        assert_eq!(
            decode("@1,x9,a", "@2"),
            [Notice::JobsAvailable],
            "unknown tokens skipped"
        );
    }

    #[test]
    fn many_notices_are_split_into_payloads_notify_accepts() {
        let many: Vec<Notice> = (0..1000).map(|i| Notice::Ended(i64::MAX - i)).collect();
        let payloads = encode(&origin(), many.clone());
        assert_eq!(payloads.len(), 4);
        assert!(payloads.iter().all(|p| p.len() < 8000), "NOTIFY's limit");
        let heard: Vec<Notice> = payloads.iter().flat_map(|p| decode(p, "@x")).collect();
        assert_eq!(heard, many);
    }
}
