//! Cron schedules: parsing (the `croner` crate: standard 5-field expressions, or 6 with
//! seconds), and the loop that fires due schedules. Each tick submits exactly one job however
//! many nodes run: the store hands a due schedule to one node (row lock) and the job carries an
//! idempotency key naming the schedule and the tick.
//!
//! Ticks missed while every node was down are not replayed one by one: the first node up fires
//! the schedule once, then continues from the next tick after now.

use std::str::FromStr;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use croner::Cron;
use tokio_util::sync::CancellationToken;

use crate::service::{JobService, SubmitJob};
use crate::store::now_ms;

/// Parses a cron expression, with a message naming it when it is not one.
pub fn parse(expr: &str) -> Result<Cron, String> {
    Cron::from_str(expr).map_err(|e| format!("invalid cron expression {expr:?}: {e}"))
}

/// The first tick of `expr` strictly after `after_ms` (UTC), in milliseconds.
pub fn next_after(expr: &str, after_ms: i64) -> Option<i64> {
    let cron = parse(expr).ok()?;
    // Ticks fall on whole seconds: search from the second `after_ms` falls in.
    let start = Utc
        .timestamp_millis_opt(after_ms - after_ms.rem_euclid(1000))
        .single()?;
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// Fires due schedules once a second until shut down.
pub(super) async fn fire(service: JobService, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let due = match service.store.take_due_schedules(now_ms(), next_after).await {
            Ok(due) => due,
            Err(e) => {
                crate::throttle::warn(format!("cron: {e}"));
                continue;
            }
        };
        for schedule in due {
            let mut req: SubmitJob = match serde_json::from_value(schedule.target.clone()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(
                        "schedule {}: stored target is not a job submission: {e}",
                        schedule.id
                    );
                    continue;
                }
            };
            // The tick's key is in the server's own namespace: no client can take it first.
            req.idempotency_key = None;
            if let Err(e) = service
                .submit_scheduled(req, schedule.id, schedule.next_run_at)
                .await
            {
                tracing::error!("schedule {} could not submit its job: {e}", schedule.id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tick() {
        // 2026-01-01T00:00:00Z
        let t0 = 1_767_225_600_000;
        assert_eq!(next_after("0 * * * *", t0), Some(t0 + 3_600_000));
        assert_eq!(next_after("*/5 * * * *", t0 + 1), Some(t0 + 300_000));
        assert!(
            parse("every tuesday")
                .unwrap_err()
                .contains("every tuesday")
        );
    }
}
